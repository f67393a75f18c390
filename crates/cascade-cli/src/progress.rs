//! Build progress on stderr: a live bar (indicatif) on a terminal, plain numbered lines
//! otherwise (CI logs, pipes, `--json`).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use cascade::{Event, Mismatch, TestReport, TestStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::node_line;

pub struct Progress<'m, 'w> {
    /// Where plain lines go when there is no bar.
    err: &'m Mutex<&'w mut (dyn Write + Send)>,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    done: usize,
    running: BTreeSet<String>,
}

impl<'m, 'w> Progress<'m, 'w> {
    /// `live`: draw a bar on the process's stderr (only when it is a terminal).
    pub fn new(err: &'m Mutex<&'w mut (dyn Write + Send)>, live: bool) -> Self {
        let bar = live.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            err,
            bar,
            state: Mutex::new(State::default()),
        }
    }

    pub fn event(&self, e: Event<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::Scheduled { total } => {
                st.total = total;
                if let Some(b) = &self.bar {
                    b.set_length(total as u64);
                }
            }
            Event::Started { name } => {
                st.running.insert(name.to_string());
            }
            Event::Finished(r) => {
                st.running.remove(&r.name);
                st.done += 1;
                let line = node_line(r);
                match &self.bar {
                    Some(b) => {
                        b.println(line);
                        b.inc(1);
                    }
                    None => {
                        // One write per line: stderr is unbuffered.
                        let w = st.total.to_string().len();
                        let text = format!("[{:>w$}/{}]{line}\n", st.done, st.total);
                        let mut err = self.err.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = err.write_all(text.as_bytes());
                    }
                }
            }
            // After the nodes: a line each (`published` says which events these are).
            e => match (published(&e), &self.bar) {
                (None, _) => {}
                (Some(line), Some(b)) => b.println(line),
                (Some(line), None) => {
                    let mut err = self.err.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(err, "{line}");
                }
            },
        }
        if let Some(b) = &self.bar {
            let running: Vec<&str> = st.running.iter().map(String::as_str).collect();
            b.set_message(if running.is_empty() {
                String::new()
            } else {
                format!("running: {}", running.join(", "))
            });
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What happened after the nodes (images loaded, tested, pushed, signed) and what a
/// replay found, as the lines people read; continuation lines line up under the text
/// after the verb.
fn published(e: &Event<'_>) -> Option<String> {
    Some(match e {
        Event::ImageLoaded { reference, id } => format!("  loaded   {reference} as {id}"),
        Event::Tested { node, test } => test_text(node, test),
        Event::Pushed(p) => format!(
            "  pushed   {} {} ({} blobs sent, {} already there)",
            p.reference, p.manifest, p.blobs_uploaded, p.blobs_skipped
        ),
        Event::Signed(s) => format!(
            "  signed   {} {} ({}, key {})\n  attested {} ({}{})",
            s.reference,
            s.digest,
            s.signature.display(),
            s.fingerprint,
            s.reference,
            s.attestation.display(),
            s.attestation_tag
                .as_deref()
                .map(|t| format!(", pushed as {t}"))
                .unwrap_or_default()
        ),
        Event::ReplayWarning { message } => format!("  warning  {message}"),
        Event::Mismatch(m) => mismatch_text(m),
        Event::Scheduled { .. } | Event::Started { .. } | Event::Finished(_) => return None,
    })
}

/// The indent of a published line's continuation lines.
const MORE: &str = "           ";

fn test_text(node: &str, t: &TestReport) -> String {
    let mut s = format!(
        "  {:<8} {node}/{}  {}",
        if t.passed() { "tested" } else { "FAILED" },
        t.name,
        match t.status {
            TestStatus::Passed => format!(
                "passed after {} attempt{} in {:.1}s",
                t.attempts,
                if t.attempts == 1 { "" } else { "s" },
                t.duration_ms as f64 / 1000.0
            ),
            TestStatus::Skipped => format!("skipped ({})", t.detail),
            TestStatus::Failed => t.detail.clone(),
        }
    );
    if !t.log_tail.is_empty() {
        s.push_str(&format!(
            "\n{MORE}last {} lines of the container's log:",
            t.log_tail.len()
        ));
        for l in &t.log_tail {
            s.push_str(&format!("\n{MORE}| {l}"));
        }
    }
    s
}

fn mismatch_text(m: &Mismatch) -> String {
    let short = |d: &str| cascade::short_digest(&d);
    let mut s = format!(
        "  DIFFERS  {} {}: lockfile {}, built {}",
        m.node,
        m.what.as_str(),
        short(&m.expected),
        short(&m.actual)
    );
    if let Some(n) = &m.note {
        s.push_str(&format!("\n{MORE}{n}"));
    }
    for d in &m.files {
        let side = |digest: &Option<String>, size: Option<u64>| match (digest, size) {
            (Some(d), Some(size)) => format!("{} ({size} bytes)", short(d)),
            (Some(d), None) => short(d),
            _ => "absent".to_string(),
        };
        s.push_str(&format!(
            "\n{MORE}{} ({}): {} → {}",
            d.path,
            d.change.as_str(),
            side(&d.expected, d.expected_size),
            side(&d.actual, d.actual_size)
        ));
        for l in &d.diff {
            s.push_str(&format!("\n{MORE}| {l}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade::{FileChange, FileDiff, Mismatched};

    fn test(status: TestStatus, detail: &str, log_tail: &[&str]) -> TestReport {
        TestReport {
            name: "health".into(),
            status,
            attempts: 2,
            detail: detail.into(),
            log_tail: log_tail.iter().map(|l| l.to_string()).collect(),
            duration_ms: 1500,
        }
    }

    /// The lines people read, byte for byte as they were when the library wrote them.
    #[test]
    fn published_lines_keep_their_shape() {
        let tested = |t: &TestReport| {
            published(&Event::Tested {
                node: "web",
                test: t,
            })
        };
        assert_eq!(
            tested(&test(TestStatus::Passed, "ok", &[])).as_deref(),
            Some("  tested   web/health  passed after 2 attempts in 1.5s")
        );
        assert_eq!(
            tested(&test(TestStatus::Skipped, "--skip-tests", &[])).as_deref(),
            Some("  tested   web/health  skipped (--skip-tests)")
        );
        assert_eq!(
            tested(&test(TestStatus::Failed, "got 500", &["boom"])).as_deref(),
            Some(
                "  FAILED   web/health  got 500\n           last 1 lines of the container's log:\n           | boom"
            )
        );
        let (a, b) = (
            format!("blake3:{}", "a".repeat(64)),
            format!("blake3:{}", "b".repeat(64)),
        );
        let m = Mismatch {
            node: "app".into(),
            what: Mismatched::Output,
            expected: a.clone(),
            actual: b.clone(),
            files: vec![FileDiff {
                path: "out/x".into(),
                change: FileChange::Content,
                expected: Some(a.clone()),
                actual: Some(b.clone()),
                expected_size: Some(3),
                actual_size: None,
                diff: vec!["-a".into()],
            }],
            note: Some("a note".into()),
        };
        let (sa, sb) = (cascade::short_digest(&a), cascade::short_digest(&b));
        assert_eq!(
            published(&Event::Mismatch(&m)),
            Some(format!(
                "  DIFFERS  app output: lockfile {sa}, built {sb}\n           a note\n           out/x (content): {sa} (3 bytes) → {sb}\n           | -a"
            ))
        );
        assert_eq!(
            published(&Event::ReplayWarning { message: "risky" }).as_deref(),
            Some("  warning  risky")
        );
        assert_eq!(published(&Event::Started { name: "x" }), None);
    }
}
