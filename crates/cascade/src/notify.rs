//! [IO] The events an environment's `notify:` hooks receive (`cascade-event/1`), sent
//! through `cascade-notify`. A hook that fails is reported in the operation's report
//! (`notifications`), never an error: the release, promotion, build or deploy stands.

use cascade_notify::{deliver, Delivery, Retry};

/// The event format's name, the first field of every event.
pub const EVENT_FORMAT: &str = "cascade-event/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `release tag` created (or found) the release's tags.
    Release,
    /// `promote` rewrote an environment's manifest.
    Promote,
    /// `build` ran and a node failed.
    BuildFailed,
    /// `deploy` (or its rollback) changed what runs.
    Deploy,
}

/// One event, POSTed as JSON. Fields are in this order; absent ones are left out.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NotifyEvent {
    pub format: &'static str,
    pub event: EventKind,
    /// The environment whose hooks receive it (for a promotion, the target).
    pub environment: String,
    /// A promotion's source environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The lockfile released, promoted, built or deployed (relative to the project).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockfile: Option<String>,
    /// A deploy's outcome: `deployed`, `failed` (rolled back or not), `interrupted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What the event is about, in build order: the components released, promoted,
    /// failed or deployed.
    pub components: Vec<EventComponent>,
    /// One line for chat hooks (Slack's incoming webhooks show `text`).
    pub text: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EventComponent {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A release's tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl NotifyEvent {
    pub fn new(event: EventKind, environment: &str, text: String) -> Self {
        NotifyEvent {
            format: EVENT_FORMAT,
            event,
            environment: environment.to_string(),
            from: None,
            lockfile: None,
            outcome: None,
            components: Vec::new(),
            text,
        }
    }
}

/// Sends `event` to each of `hooks`; nothing is sent (and nothing returned) without
/// hooks.
pub fn notify(hooks: &[String], event: &NotifyEvent) -> Vec<Delivery> {
    if hooks.is_empty() {
        return Vec::new();
    }
    // Serializing plain structs of strings cannot fail; an empty body would still be
    // reported by the receiver.
    let body = serde_json::to_vec(event).unwrap_or_default();
    deliver(hooks, &body, Retry::default())
}
