//! Build progress on stderr: a live bar (indicatif) on a terminal, plain numbered lines
//! otherwise (CI logs, pipes, `--json`).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use cascade::Event;
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
            Event::Published(line) => match &self.bar {
                Some(b) => b.println(line),
                None => {
                    let mut err = self.err.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(err, "{line}");
                }
            },
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
