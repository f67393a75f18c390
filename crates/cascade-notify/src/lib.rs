//! cascade-notify: webhooks. [`deliver`] POSTs one JSON body to each URL of an
//! environment's `notify:` list (Slack, Telegram, a CI bot) and says what happened to
//! each, as data: a hook that fails never fails the operation that sent it.
//!
//! - Each URL is tried at most [`Retry::attempts`] times: again after a connection error,
//!   a timeout, a 5xx or a 429, with a delay that doubles from [`Retry::base`] (no
//!   jitter: the few hooks of one event need no spreading). A 2xx is delivered; any other
//!   status is final.
//! - Each attempt is bounded by [`Retry::timeout`] (connect, read and write), so a hook
//!   that hangs costs seconds, not a build.
//! - URLs carry tokens (Slack's and Telegram's are in the path), so nothing here keeps
//!   or returns more of a URL than `scheme://host[:port]` ([`shown`]), and transport
//!   errors are reduced to their kind.

use std::time::Duration;

/// How hard to try one hook.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    /// The delay after the first failed attempt; doubled after each next one.
    pub base: Duration,
    /// Per attempt: connect, each read, each write.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            base: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What happened to one hook.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    /// `scheme://host[:port]` only: never the path or query, which hold tokens.
    pub target: String,
    pub attempts: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The hook answered 2xx.
    Delivered { status: u16 },
    /// The last attempt's answer or error (its kind, never the URL).
    Failed { reason: String },
}

impl Delivery {
    pub fn delivered(&self) -> bool {
        matches!(self.outcome, Outcome::Delivered { .. })
    }
}

/// The part of `url` that may be shown: `scheme://host[:port]`.
pub fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "(not a URL)".to_string(),
    }
}

/// POSTs `body` (JSON) to each of `urls` in order, as [`Retry`] says; one [`Delivery`]
/// per URL, in the same order.
pub fn deliver(urls: &[String], body: &[u8], retry: Retry) -> Vec<Delivery> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Statuses are ours to judge (5xx and 429 retried, others final).
        .http_status_as_error(false)
        .timeout_connect(Some(retry.timeout))
        .timeout_per_read(Some(retry.timeout))
        .timeout_per_write(Some(retry.timeout))
        // A redirect would send the body (and the token's path) elsewhere.
        .max_redirects(0)
        .user_agent(concat!("cascade/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    urls.iter()
        .map(|url| deliver_one(&agent, url, body, retry))
        .collect()
}

fn deliver_one(agent: &ureq::Agent, url: &str, body: &[u8], retry: Retry) -> Delivery {
    let mut delay = retry.base;
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let (outcome, again) = match agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body)
        {
            Ok(response) => {
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    (Outcome::Delivered { status }, false)
                } else {
                    let again = status >= 500 || status == 429;
                    (
                        Outcome::Failed {
                            reason: format!("answered HTTP {status}"),
                        },
                        again,
                    )
                }
            }
            Err(e) => (
                Outcome::Failed {
                    reason: reason(&e).to_string(),
                },
                true,
            ),
        };
        if !again || attempts >= retry.attempts.max(1) {
            break outcome;
        }
        std::thread::sleep(delay);
        delay = delay.saturating_mul(2);
    };
    Delivery {
        target: shown(url),
        attempts,
        outcome,
    }
}

/// A transport error's kind: ureq's messages may quote the URL.
fn reason(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "timed out",
        ureq::Error::ConnectionFailed => "connection failed",
        ureq::Error::HostNotFound => "host not found",
        ureq::Error::Io(_) => "connection error",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS error",
        _ => "HTTP error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_keeps_scheme_and_host_only() {
        assert_eq!(
            shown("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            shown("https://api.telegram.org/bot1:tok/sendMessage?chat_id=2"),
            "https://api.telegram.org"
        );
        assert_eq!(shown("http://127.0.0.1:9/x?y#z"), "http://127.0.0.1:9");
        assert_eq!(shown("https://u:p@h.example/x"), "https://h.example");
    }

    #[test]
    fn nothing_listening_fails_after_every_attempt() {
        // Bind and drop: a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let url = format!("http://127.0.0.1:{port}/hook/secret");
        let retry = Retry {
            attempts: 2,
            base: Duration::from_millis(1),
            timeout: Duration::from_secs(2),
        };
        let d = deliver(&[url], b"{}", retry);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].attempts, 2);
        assert_eq!(d[0].target, format!("http://127.0.0.1:{port}"));
        assert!(!d[0].delivered());
    }
}
