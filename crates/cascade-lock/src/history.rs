//! `deployments/<env>.yaml`: the history of what `cascade deploy` ran, oldest first.
//! Written by hand like the lockfile (block style, keys in alphabetical order), read
//! strictly. Pure: the caller reads and writes the file (atomically).

use std::collections::BTreeMap;
use std::sync::Arc;

use miette::NamedSource;
use serde_saphyr::Spanned;

use crate::read::{parse, span};
use crate::write::push_scalar;
use crate::LockError;

/// The value of the history's `format:` line.
pub const HISTORY_FORMAT: &str = "cascade-deployments/1";

/// The deploys of one environment, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct History {
    pub environment: String,
    pub deployments: Vec<Deployment>,
}

/// One deploy, rollback or automatic rollback, as it ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// When it ended, UTC (`20261123T063000Z`); the one place cascade records the clock,
    /// because a history is about when.
    pub at: String,
    /// `deploy`, `rollback` (asked for) or `auto-rollback` (after a failed deploy).
    pub action: String,
    /// `deployed` (this lockfile runs now), `failed` or `interrupted`.
    pub outcome: String,
    /// The lockfile, relative to the project.
    pub lockfile: String,
    /// blake3 of the lockfile's bytes, as the containers' `cascade.lockfile` label says.
    pub lockfile_digest: String,
    /// Component → image digest, of the components deployed.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Host → component → the image digest its containers run once this deploy ended
    /// (a fleet's partial roll shows here host by host). Absent in histories written
    /// before fleets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
}

impl History {
    /// The newest deployment that left its lockfile running.
    pub fn current(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .rev()
            .find(|d| d.outcome == "deployed")
    }

    /// The newest deployed lockfile before the current one that differs from it: what
    /// a rollback goes back to.
    pub fn previous(&self) -> Option<&Deployment> {
        let current = self.current()?;
        let mut seen_current = false;
        self.deployments.iter().rev().find(|d| {
            if std::ptr::eq(*d, current) {
                seen_current = true;
                return false;
            }
            seen_current && d.outcome == "deployed" && d.lockfile_digest != current.lockfile_digest
        })
    }
}

/// The history as text.
pub fn write_history(h: &History) -> String {
    let mut out = String::new();
    out.push_str("format: ");
    out.push_str(HISTORY_FORMAT);
    out.push_str("\nenvironment: ");
    push_scalar(&mut out, &h.environment, false);
    out.push('\n');
    if h.deployments.is_empty() {
        out.push_str("deployments: []\n");
        return out;
    }
    out.push_str("deployments:\n");
    for d in &h.deployments {
        let mut first = true;
        let mut field = |out: &mut String, key: &str| {
            out.push_str(if first { "  - " } else { "    " });
            first = false;
            out.push_str(key);
            out.push(':');
        };
        field(&mut out, "action");
        scalar(&mut out, &d.action);
        field(&mut out, "at");
        scalar(&mut out, &d.at);
        if let Some(detail) = &d.detail {
            field(&mut out, "detail");
            scalar(&mut out, detail);
        }
        if !d.hosts.is_empty() {
            field(&mut out, "hosts");
            out.push('\n');
            for (host, images) in &d.hosts {
                out.push_str("      ");
                push_scalar(&mut out, host, true);
                out.push(':');
                if images.is_empty() {
                    out.push_str(" {}\n");
                    continue;
                }
                out.push('\n');
                for (c, digest) in images {
                    out.push_str("        ");
                    push_scalar(&mut out, c, true);
                    out.push(':');
                    scalar(&mut out, digest);
                }
            }
        }
        field(&mut out, "images");
        if d.images.is_empty() {
            out.push_str(" {}\n");
        } else {
            out.push('\n');
            for (c, digest) in &d.images {
                out.push_str("      ");
                push_scalar(&mut out, c, true);
                out.push(':');
                scalar(&mut out, digest);
            }
        }
        field(&mut out, "lockfile");
        scalar(&mut out, &d.lockfile);
        field(&mut out, "lockfile_digest");
        scalar(&mut out, &d.lockfile_digest);
        field(&mut out, "outcome");
        scalar(&mut out, &d.outcome);
    }
    out
}

fn scalar(out: &mut String, v: &str) {
    out.push(' ');
    push_scalar(out, v, false);
    out.push('\n');
}

#[derive(serde::Deserialize)]
struct Probe {
    format: Option<Spanned<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[allow(dead_code)]
    format: String,
    environment: String,
    deployments: Vec<Deployment>,
}

/// Parses a history; `path` names the file in messages.
pub fn read_history(path: &str, text: &str) -> Result<History, LockError> {
    let probe: Probe = parse(path, text)?;
    let src = || Arc::new(NamedSource::new(path, text.to_string()));
    match probe.format {
        None => {
            return Err(LockError::Invalid {
                path: path.to_string(),
                message: format!("no `format: {HISTORY_FORMAT}` line"),
                src: src(),
                span: None,
            })
        }
        Some(f) if f.value != HISTORY_FORMAT => {
            return Err(LockError::Invalid {
                path: path.to_string(),
                message: format!(
                    "format `{}` is not `{HISTORY_FORMAT}`, the one this cascade reads",
                    f.value
                ),
                src: src(),
                span: span(text, &f.referenced),
            })
        }
        Some(_) => {}
    }
    let raw: Raw = parse(path, text)?;
    Ok(History {
        environment: raw.environment,
        deployments: raw.deployments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str, outcome: &str, digest: &str) -> Deployment {
        Deployment {
            at: "20261123T063000Z".into(),
            action: action.into(),
            outcome: outcome.into(),
            lockfile: format!("lockfiles/x-{digest}.yaml"),
            lockfile_digest: format!("blake3:{digest}"),
            images: BTreeMap::from([("web".into(), "sha256:ab".into())]),
            detail: (outcome == "failed").then(|| "health check: \"500\"\nsecond line".into()),
            hosts: if action == "deploy" {
                BTreeMap::from([
                    (
                        "node-1".into(),
                        BTreeMap::from([("web".into(), "sha256:ab".into())]),
                    ),
                    ("node2".into(), BTreeMap::new()),
                ])
            } else {
                BTreeMap::new()
            },
        }
    }

    #[test]
    fn round_trips_and_is_stable() {
        let h = History {
            environment: "scratch".into(),
            deployments: vec![
                record("deploy", "deployed", "a"),
                record("deploy", "failed", "b"),
                record("auto-rollback", "deployed", "a"),
            ],
        };
        let text = write_history(&h);
        assert!(
            text.starts_with("format: cascade-deployments/1\n"),
            "{text}"
        );
        assert_eq!(read_history("h.yaml", &text).unwrap(), h);
        let empty = History {
            environment: "e".into(),
            deployments: vec![],
        };
        assert_eq!(
            read_history("h.yaml", &write_history(&empty)).unwrap(),
            empty
        );
    }

    #[test]
    fn current_and_previous() {
        let h = History {
            environment: "x".into(),
            deployments: vec![
                record("deploy", "deployed", "a"),
                record("deploy", "deployed", "b"),
                record("deploy", "failed", "c"),
                record("auto-rollback", "deployed", "b"),
            ],
        };
        assert_eq!(h.current().unwrap().lockfile_digest, "blake3:b");
        assert_eq!(h.previous().unwrap().lockfile_digest, "blake3:a");
        assert!(History::default().previous().is_none());
    }

    #[test]
    fn other_formats_and_fields_are_refused() {
        let err = read_history("h.yaml", "format: cascade-lock/2\n").unwrap_err();
        assert!(err.to_string().contains("cascade-deployments/1"), "{err}");
        let err = read_history(
            "h.yaml",
            "format: cascade-deployments/1\nenvironment: x\ndeployments: []\nextra: 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
