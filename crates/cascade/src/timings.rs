//! `CASCADE_TIMINGS=1`: the wall time of each phase of a build, on stderr, so where the
//! time of a build goes can be measured again at any time (docs/performance.md). Only
//! printed, never hashed, recorded or written into anything a build produces.

use std::time::Instant;

/// Marks the end of each phase; silent unless `CASCADE_TIMINGS` is set.
pub(crate) struct Phases {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Phases {
    pub(crate) fn start() -> Phases {
        let now = Instant::now();
        Phases {
            on: std::env::var_os("CASCADE_TIMINGS").is_some_and(|v| !v.is_empty() && v != "0"),
            start: now,
            last: now,
        }
    }

    /// The phase called `name` ends now.
    pub(crate) fn mark(&mut self, name: &str) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        eprintln!(
            "cascade timings: {name} {:.1} ms (at {:.1} ms)",
            (now - self.last).as_secs_f64() * 1e3,
            (now - self.start).as_secs_f64() * 1e3
        );
        self.last = now;
    }
}
