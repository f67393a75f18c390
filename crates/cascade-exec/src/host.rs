//! The host runner.
//!
//! A step sees only what the recipe declares: its `env`, the engine's own variables
//! (passed in by the caller), `HOME` = the work directory, and a `PATH` made of one
//! private directory holding a symlink per declared tool, so an undeclared tool is not
//! found even when it lives next to a declared one in `/usr/bin`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use cascade_core::{BlobDigest, Digest};

/// A declared tool as found on the PATH cascade was started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTool {
    pub name: String,
    /// Where it was found on PATH (what the step's symlink points to, so tools that
    /// look at their own name, like gcc, keep working).
    pub path: PathBuf,
    /// The blake3 of the file it resolves to: the tool's part of the runner identity.
    pub digest: BlobDigest,
}

#[derive(Clone, Debug, thiserror::Error, miette::Diagnostic)]
pub enum ToolError {
    #[error("tool `{name}` is not on PATH")]
    #[diagnostic(
        code(cascade::tool::not_found),
        help("install it, or remove it from the recipe's `runner.host.tools`")
    )]
    NotFound { name: String },
    #[error("tool `{name}` at `{path}` could not be read: {message}")]
    #[diagnostic(code(cascade::tool::unreadable))]
    Unreadable {
        name: String,
        path: PathBuf,
        message: String,
    },
}

/// Finds `name` on `search_path` and hashes the file it resolves to.
pub fn resolve_tool(name: &str, search_path: &OsStr) -> Result<ResolvedTool, ToolError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in std::env::split_paths(search_path) {
        if dir.as_os_str().is_empty() || !dir.is_absolute() {
            continue; // a relative PATH entry would make the result depend on the cwd
        }
        let p = dir.join(name);
        let Ok(meta) = fs::metadata(&p) else { continue };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let unreadable = |e: io::Error| ToolError::Unreadable {
            name: name.to_string(),
            path: p.clone(),
            message: e.to_string(),
        };
        let real = fs::canonicalize(&p).map_err(unreadable)?;
        let mut h = blake3::Hasher::new();
        h.update_reader(fs::File::open(&real).map_err(unreadable)?)
            .map_err(unreadable)?;
        return Ok(ResolvedTool {
            name: name.to_string(),
            path: p,
            digest: BlobDigest(Digest::from_hasher(&h)),
        });
    }
    Err(ToolError::NotFound {
        name: name.to_string(),
    })
}

/// Tool resolution, memoized for one run (a tool is hashed once, however many
/// recipes declare it).
pub struct Tools {
    search_path: OsString,
    cache: Mutex<BTreeMap<String, Result<ResolvedTool, ToolError>>>,
}

impl Tools {
    pub fn new(search_path: OsString) -> Self {
        Tools {
            search_path,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// Resolves against the PATH this process was started with.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("PATH").unwrap_or_default())
    }

    /// The PATH tools are looked up on.
    pub fn search_path(&self) -> &OsStr {
        &self.search_path
    }

    pub fn resolve(&self, name: &str) -> Result<ResolvedTool, ToolError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(name.to_string())
            .or_insert_with(|| resolve_tool(name, &self.search_path))
            .clone()
    }
}

/// Process groups of the steps running now, so an interrupted cascade can kill them:
/// they run in their own groups, so the terminal's Ctrl-C does not reach them.
static RUNNING: Mutex<BTreeSet<libc::pid_t>> = Mutex::new(BTreeSet::new());

/// Set once the process is interrupted: no node and no step starts after that.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What a SIGINT/SIGTERM handler does first: no new node or step starts from now on
/// (the scheduler and the runners check [`interrupted`]), and the running steps are
/// killed.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    kill_running_steps();
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Kills every running step's process group (for SIGINT/SIGTERM handling).
pub fn kill_running_steps() {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    for &pgid in running.iter() {
        // SAFETY: plain syscall; a negative pid names the process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub run: String,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RunError {
    #[error("step `{step}` failed ({status})")]
    #[diagnostic(code(cascade::step::failed))]
    Failed { step: String, status: String },
    #[error("step `{step}` timed out after {}s and was killed", after.as_secs_f64())]
    #[diagnostic(
        code(cascade::step::timeout),
        help("raise the recipe's `timeout` if the step is just slow")
    )]
    Timeout { step: String, after: Duration },
    #[error("interrupted before it ran")]
    #[diagnostic(code(cascade::step::interrupted))]
    Interrupted,
    #[error("cancelled, and killed")]
    #[diagnostic(code(cascade::step::cancelled))]
    Cancelled,
    #[error("could not {what}")]
    #[diagnostic(code(cascade::step::setup))]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Setup { what, source }
}

/// What every runner runs: a node's steps, their environment, timeout and log.
#[derive(Clone, Copy)]
pub struct Commands<'a> {
    /// The declared env and the engine's variables.
    pub env: &'a BTreeMap<String, String>,
    pub steps: &'a [Step],
    /// Per step.
    pub timeout: Duration,
    /// Where the steps' output goes (stdout and stderr interleaved).
    pub log: &'a Path,
    /// Only the steps' own output in the log, none of cascade's `==>` lines (a REAPI
    /// worker running an Action that is not cascade's: its stdout is its own).
    pub quiet: bool,
    /// Set from another thread to kill the running step (a cancelled lease).
    pub cancel: Option<&'a AtomicBool>,
}

/// One node's steps on the host.
pub struct HostRun<'a> {
    /// The work directory: exported source and materialized inputs; steps write here.
    pub work: &'a Path,
    /// An empty directory outside `work` for the tool symlinks.
    pub tools_dir: &'a Path,
    /// An empty directory outside `work`: the steps' `TMPDIR`.
    pub temp: &'a Path,
    pub tools: &'a [ResolvedTool],
    /// What the steps see besides PATH, HOME and TMPDIR is `commands.env`.
    pub commands: Commands<'a>,
}

impl HostRun<'_> {
    pub fn run(&self) -> Result<(), RunError> {
        for t in self.tools {
            std::os::unix::fs::symlink(&t.path, self.tools_dir.join(&t.name))
                .map_err(setup(format!("link tool `{}`", t.name)))?;
        }
        let sh = self.tools_dir.join("sh");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.commands.log)
            .map_err(setup("open the log"))?;
        // The runner of `CASCADE_SANDBOX=off`, the escape hatch asked for by name.
        if !self.commands.quiet {
            writeln!(
                log,
                "==> sandbox: off (CASCADE_SANDBOX=off): no namespaces, no Landlock; the step runs directly on the host"
            )
            .map_err(setup("write the log"))?;
        }
        for step in self.commands.steps {
            if interrupted() {
                return Err(RunError::Interrupted);
            }
            if !self.commands.quiet {
                writeln!(log, "==> step {}", step.name).map_err(setup("write the log"))?;
            }
            let out = log.try_clone().map_err(setup("open the log"))?;
            let err = log.try_clone().map_err(setup("open the log"))?;
            let mut cmd = Command::new(&sh);
            cmd.arg("-e")
                .arg("-c")
                .arg(&step.run)
                .current_dir(self.work)
                .env_clear()
                .envs(self.commands.env)
                .env("PATH", self.tools_dir)
                .env("HOME", self.work)
                .env("TMPDIR", self.temp)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                // Its own process group, so a timeout kills everything it started.
                .process_group(0);
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0o022);
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(setup(format!("start step `{}`", step.name)))?;
            let pgid = child.id() as libc::pid_t;
            wait_step(
                pgid,
                move || {
                    child.wait().map(|s| match (s.code(), s.signal()) {
                        (Some(c), _) => Ended::Code(c),
                        (None, Some(sig)) => Ended::Signal(sig),
                        _ => Ended::Code(-1),
                    })
                },
                &self.commands,
                step,
                &mut log,
            )?;
        }
        Ok(())
    }
}

/// Whether the process of `pidfd` ends within `slice`.
fn ended_within(pidfd: &std::os::fd::OwnedFd, slice: Duration) -> bool {
    let timeout = rustix::event::Timespec {
        tv_sec: slice.as_secs() as i64,
        tv_nsec: i64::from(slice.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => n > 0,
        // Interrupted: the caller polls again.
        Err(_) => false,
    }
}

/// How a step's process ended.
pub(crate) enum Ended {
    Code(i32),
    Signal(i32),
}

/// Waits for a step whose process group is `pgid` (`wait` blocks until it ends), under
/// `timeout`, registered for [`kill_running_steps`]; kills the whole group either way
/// (on timeout, and to reap anything a finished step left running in the background).
pub(crate) fn wait_step(
    pgid: libc::pid_t,
    wait: impl FnOnce() -> io::Result<Ended> + Send + 'static,
    commands: &Commands<'_>,
    step: &Step,
    log: &mut fs::File,
) -> Result<(), RunError> {
    let (timeout, quiet) = (commands.timeout, commands.quiet);
    let started = Instant::now();
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pgid);
    // The step's end is polled on a pidfd (Linux 5.3): no thread per step. Without one,
    // a thread blocks in `wait` and reports through a channel.
    let pidfd = rustix::process::Pid::from_raw(pgid).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    let mut wait = Some(wait);
    let (tx, rx) = mpsc::channel();
    let waiter = match pidfd {
        Some(_) => None,
        None => wait
            .take()
            .map(|wait| std::thread::spawn(move || drop(tx.send(wait())))),
    };
    // In slices, so a cancellation is noticed within a fifth of a second.
    let mut cancelled = false;
    let result = loop {
        let left = timeout.saturating_sub(started.elapsed());
        let slice = left.min(Duration::from_millis(200));
        let ended = match &pidfd {
            Some(fd) => ended_within(fd, slice).then(|| wait.take().map(|w| w())),
            None => match rx.recv_timeout(slice) {
                Ok(r) => Some(Some(r)),
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(None),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            },
        };
        if let Some(r) = ended {
            break r;
        }
        if left.is_zero() {
            break None;
        }
        if commands.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            cancelled = true;
            break None;
        }
    };
    // SAFETY: plain syscall; a negative pid names the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    // Reaps the leader: it was killed just now if it had not ended.
    if let Some(wait) = wait.take() {
        let _ = wait();
    }
    if let Some(waiter) = waiter {
        let _ = waiter.join();
    }
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pgid);
    match result {
        None if cancelled => Err(RunError::Cancelled),
        None => {
            let after = started.elapsed();
            if !quiet {
                let _ = writeln!(
                    log,
                    "==> step {} timed out after {:.1}s; killed",
                    step.name,
                    after.as_secs_f64()
                );
            }
            Err(RunError::Timeout {
                step: step.name.clone(),
                after: timeout,
            })
        }
        Some(Err(e)) => Err(setup(format!("wait for step `{}`", step.name))(e)),
        Some(Ok(Ended::Code(0))) => Ok(()),
        Some(Ok(ended)) => {
            let status = match ended {
                Ended::Code(c) => format!("exit code {c}"),
                Ended::Signal(s) => format!("killed by signal {s}"),
            };
            if !quiet {
                let _ = writeln!(log, "==> step {} failed: {status}", step.name);
            }
            Err(RunError::Failed {
                step: step.name.clone(),
                status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(names: &[&str]) -> Vec<ResolvedTool> {
        let t = Tools::from_env();
        names.iter().map(|n| t.resolve(n).unwrap()).collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        work: PathBuf,
        tools_dir: PathBuf,
        temp: PathBuf,
        log: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let tools_dir = dir.path().join("tools");
        let temp = dir.path().join("tmp");
        for d in [&work, &tools_dir, &temp] {
            fs::create_dir(d).unwrap();
        }
        let log = dir.path().join("log");
        Fixture {
            _dir: dir,
            work,
            tools_dir,
            temp,
            log,
        }
    }

    impl Fixture {
        fn run(
            &self,
            tool_names: &[&str],
            env: &BTreeMap<String, String>,
            run: &str,
            timeout: Duration,
        ) -> Result<(), RunError> {
            let ts = tools(tool_names);
            let steps = step(run);
            HostRun {
                work: &self.work,
                tools_dir: &self.tools_dir,
                temp: &self.temp,
                tools: &ts,
                commands: Commands {
                    env,
                    steps: &steps,
                    timeout,
                    log: &self.log,
                    quiet: false,
                    cancel: None,
                },
            }
            .run()
        }
    }

    fn step(run: &str) -> Vec<Step> {
        vec![Step {
            name: "s".into(),
            run: run.into(),
        }]
    }

    #[test]
    fn clean_env_declared_tools_only_and_umask() {
        let f = fixture();
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hi".to_string());
        std::env::set_var("CASCADE_TEST_LEAK", "leaked");
        f.run(
            &["sh", "cat"],
            &env,
            "echo \"$GREETING\" > a; echo \"${CASCADE_TEST_LEAK:-none}\" >> a; \
             (ls >/dev/null 2>&1 && echo ls-found || echo ls-missing) >> a; \
             [ \"$HOME\" = \"$PWD\" ] && echo home-ok >> a; cat a > b",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(f.work.join("b")).unwrap(),
            "hi\nnone\nls-missing\nhome-ok\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(f.work.join("b")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "umask 022");
    }

    #[test]
    fn failing_step_reports_and_logs() {
        let f = fixture();
        let err = f
            .run(
                &["sh"],
                &BTreeMap::new(),
                "echo about to fail; exit 3",
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(
            matches!(&err, RunError::Failed { status, .. } if status == "exit code 3"),
            "{err}"
        );
        assert!(fs::read_to_string(&f.log)
            .unwrap()
            .contains("about to fail"));
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let f = fixture();
        let started = Instant::now();
        // A background child that would outlive its parent if only the parent died.
        let err = f
            .run(
                &["sh", "sleep"],
                &BTreeMap::new(),
                "sleep 30 & sleep 30",
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_tool_is_an_error() {
        assert!(matches!(
            resolve_tool(
                "definitely-not-a-tool-xyz",
                &std::env::var_os("PATH").unwrap()
            ),
            Err(ToolError::NotFound { .. })
        ));
    }
}
