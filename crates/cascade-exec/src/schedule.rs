//! The scheduler: a DAG of nodes on a bounded thread pool.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// An input failed (or was itself skipped), so this node could not run.
    Skipped,
    /// Never started: the build stopped after a failure (no `--keep-going`).
    NotStarted,
}

/// At most `n` holders at once: the steps running at a time (`--jobs`), while the
/// scheduler has more threads than that, so that looking nodes up in the cache (a few
/// file reads each, a thousand of them in a build after a commit) goes on while steps
/// run instead of waiting for a free job.
pub struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One of [`Slots`], given back when dropped.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot and holds it.
    pub fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

struct State {
    waiting_on: Vec<usize>,
    ready: BTreeSet<usize>,
    outcome: Vec<Option<Outcome>>,
    running: usize,
    stop: bool,
}

/// Runs every node whose inputs (`deps[i]`, indices of nodes) succeeded, at most
/// `jobs` at a time. `run(i)` returns whether node `i` succeeded. Ready nodes start in
/// index order, so a topologically sorted input gives a stable start order. After a
/// failure no new node starts unless `keep_going`; running ones always finish. Once the
/// process is interrupted ([`crate::interrupt`]), no new node starts.
pub fn schedule<F>(deps: &[Vec<usize>], jobs: usize, keep_going: bool, run: F) -> Vec<Outcome>
where
    F: Fn(usize) -> bool + Sync,
{
    let n = deps.len();
    let mut dependents = vec![Vec::new(); n];
    let mut waiting_on = vec![0; n];
    for (i, ds) in deps.iter().enumerate() {
        let uniq: BTreeSet<usize> = ds.iter().copied().collect();
        waiting_on[i] = uniq.len();
        for d in uniq {
            dependents[d].push(i);
        }
    }
    let ready = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    let state = Mutex::new(State {
        waiting_on,
        ready,
        outcome: vec![None; n],
        running: 0,
        stop: false,
    });
    let cv = Condvar::new();
    let panicked: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);
    let workers = jobs.max(1).min(n.max(1));

    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if !st.stop && !crate::interrupted() {
                            if let Some(i) = st.ready.pop_first() {
                                st.running += 1;
                                break Some(i);
                            }
                        }
                        if st.running == 0 {
                            break None;
                        }
                        st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some(i) = next else {
                    cv.notify_all();
                    return;
                };
                // A panic is a bug in cascade: stop scheduling, let the other workers
                // finish, and re-raise it once they have (exit code 101), never hang.
                let (ok, bug) =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(i))) {
                        Ok(ok) => (ok, false),
                        Err(payload) => {
                            let mut p = panicked.lock().unwrap_or_else(|e| e.into_inner());
                            p.get_or_insert(payload);
                            (false, true)
                        }
                    };
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                if bug {
                    st.stop = true;
                }
                st.running -= 1;
                st.outcome[i] = Some(if ok {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                });
                if ok {
                    for &d in &dependents[i] {
                        st.waiting_on[d] -= 1;
                        if st.waiting_on[d] == 0 && st.outcome[d].is_none() {
                            st.ready.insert(d);
                        }
                    }
                } else {
                    // Everything downstream of a failure is skipped.
                    let mut stack = dependents[i].clone();
                    while let Some(d) = stack.pop() {
                        if st.outcome[d].is_none() {
                            st.outcome[d] = Some(Outcome::Skipped);
                            st.ready.remove(&d);
                            stack.extend(dependents[d].iter().copied());
                        }
                    }
                    if !keep_going {
                        st.stop = true;
                    }
                }
                drop(st);
                cv.notify_all();
            });
        }
    });

    if let Some(payload) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
    let st = state.into_inner().unwrap_or_else(|e| e.into_inner());
    st.outcome
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::NotStarted))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A diamond plus an independent chain: 0 -> {1,2} -> 3 ; 4 -> 5
    fn graph() -> Vec<Vec<usize>> {
        vec![vec![], vec![0], vec![0], vec![1, 2], vec![], vec![4]]
    }

    #[test]
    fn dependencies_run_first() {
        let order = Mutex::new(Vec::new());
        let out = schedule(&graph(), 3, false, |i| {
            order.lock().unwrap().push(i);
            true
        });
        assert!(out.iter().all(|o| *o == Outcome::Succeeded));
        let order = order.into_inner().unwrap();
        let pos = |i| order.iter().position(|&x| x == i).unwrap();
        for (i, ds) in graph().iter().enumerate() {
            for &d in ds {
                assert!(pos(d) < pos(i), "{d} must run before {i}: {order:?}");
            }
        }
    }

    #[test]
    fn parallelism_is_bounded_and_used() {
        let deps = vec![vec![]; 8];
        let now = AtomicUsize::new(0);
        let max = AtomicUsize::new(0);
        schedule(&deps, 3, false, |_| {
            let c = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(c, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            now.fetch_sub(1, Ordering::SeqCst);
            true
        });
        let m = max.load(Ordering::SeqCst);
        assert!(m <= 3, "ran {m} at once with jobs=3");
        assert!(m >= 2, "independent nodes should overlap, max was {m}");
    }

    #[test]
    fn failure_stops_new_work_but_keep_going_continues() {
        // jobs=1 makes the order deterministic: 0 fails first.
        let out = schedule(&graph(), 1, false, |i| i != 0);
        assert_eq!(out[0], Outcome::Failed);
        assert_eq!(&out[1..4], &[Outcome::Skipped; 3]);
        assert_eq!(&out[4..], &[Outcome::NotStarted; 2]);

        let out = schedule(&graph(), 1, true, |i| i != 1);
        assert_eq!(
            out,
            vec![
                Outcome::Succeeded,
                Outcome::Failed,
                Outcome::Succeeded,
                Outcome::Skipped,
                Outcome::Succeeded,
                Outcome::Succeeded
            ]
        );
    }

    #[test]
    fn a_panicking_node_does_not_hang_the_pool() {
        let deps = vec![vec![]; 6];
        let r = std::panic::catch_unwind(|| {
            schedule(&deps, 3, true, |i| {
                if i == 1 {
                    panic!("bug in node {i}");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                true
            })
        });
        assert!(r.is_err(), "the panic is re-raised after the pool stops");
    }

    #[test]
    fn empty_graph() {
        assert!(schedule(&[], 4, false, |_| true).is_empty());
    }
}
