//! Smoke tests: run an image in a container of its own and probe it until it passes,
//! the container exits, or the deadline comes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures_util::StreamExt;

use crate::error::{describe, is_not_found};
use crate::{Docker, DockerError};

/// Retry delays double from `SmokeTest::interval` up to this.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2);
/// How many of the container's last log lines a failed outcome carries.
pub const LOG_TAIL_LINES: usize = 20;

/// One attempt may take at most this long (and at least the minimum, even right at
/// the deadline, so the last attempt is a real one).
const MAX_ATTEMPT: Duration = Duration::from_secs(10);
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// What is read of an http body or a command's output; the rest is ignored.
pub(crate) const OUTPUT_LIMIT: usize = 1 << 20;
/// How much of a body or output `detail` quotes.
const EXCERPT_CHARS: usize = 200;
/// How much of one log line `log_tail` keeps.
const LOG_LINE_CHARS: usize = 500;

/// What to run and what must be true of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmokeTest {
    /// The test's name, for people; it is also put on the container as a label.
    pub name: String,
    pub probe: Probe,
    pub expect: Expect,
    /// The overall deadline, from the container's start to a pass.
    pub timeout: Duration,
    /// The delay before the first retry; it doubles after each attempt, up to
    /// [`MAX_INTERVAL`].
    pub interval: Duration,
    /// `NAME=value` added to the image's environment.
    pub env: Vec<String>,
    /// Replaces the image's `Cmd` (the entrypoint stays).
    pub cmd: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `GET http://127.0.0.1:<published port><path>`, where the container's `port` is
    /// published on loopback only.
    Http { port: u16, path: String },
    /// `docker exec` of `argv` in the running container.
    Command { argv: Vec<String> },
}

/// What a probe must see. Unset fields take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Http: the status (default 200).
    pub status: Option<u16>,
    /// Http: the body; command: its stdout.
    pub body_contains: Option<String>,
    /// Command: the exit code (default 0).
    pub exit_code: Option<i64>,
}

/// How a smoke test went. A failure here is the image's; problems with the engine are
/// a `DockerError` instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub passed: bool,
    /// Probes made (≥ 1 unless the container exited before the first).
    pub attempts: u32,
    /// What the last probe saw; on failure, why (expected vs got, the exit code, the
    /// deadline).
    pub detail: String,
    /// The container's last [`LOG_TAIL_LINES`] log lines (stdout and stderr), filled
    /// when the test failed.
    pub log_tail: Vec<String>,
    /// The name of the test's container and network (`cascade-smoke-…`); both are
    /// removed by the time the outcome is returned.
    pub resource_name: String,
    /// From creating the network to the outcome.
    pub elapsed: Duration,
}

impl SmokeTest {
    /// An http probe of `path` on `port` expecting status 200, with a 30 s deadline and a
    /// first retry after 100 ms.
    pub fn http(name: impl Into<String>, port: u16, path: impl Into<String>) -> SmokeTest {
        SmokeTest::new(
            name,
            Probe::Http {
                port,
                path: path.into(),
            },
        )
    }

    /// A command probe expecting exit code 0, with the same defaults as [`SmokeTest::http`].
    pub fn command(name: impl Into<String>, argv: Vec<String>) -> SmokeTest {
        SmokeTest::new(name, Probe::Command { argv })
    }

    fn new(name: impl Into<String>, probe: Probe) -> SmokeTest {
        SmokeTest {
            name: name.into(),
            probe,
            expect: Expect::default(),
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(100),
            env: Vec::new(),
            cmd: None,
        }
    }

    /// Checks everything that can be checked without an engine.
    pub fn validate(&self) -> Result<(), DockerError> {
        let bad = |reason: &str| DockerError::InvalidSmokeTest {
            name: self.name.clone(),
            reason: reason.to_string(),
        };
        if self.name.trim().is_empty() {
            return Err(bad("the name is empty"));
        }
        match &self.probe {
            Probe::Http { port, path } => {
                if *port == 0 {
                    return Err(bad("the http port is 0"));
                }
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(bad(
                        "the http path must start with `/` and contain no spaces or control characters",
                    ));
                }
                if self.expect.exit_code.is_some() {
                    return Err(bad("`exit_code` applies to command probes only"));
                }
            }
            Probe::Command { argv } => {
                if argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(bad("the command is empty"));
                }
                if self.expect.status.is_some() {
                    return Err(bad("`status` applies to http probes only"));
                }
            }
        }
        if self.timeout.is_zero() {
            return Err(bad("the timeout is zero"));
        }
        if self.interval.is_zero() {
            return Err(bad("the interval is zero"));
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(bad(&format!("env entry `{e}` is not `NAME=value`")));
        }
        if self.cmd.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(bad("`cmd` is empty (leave it unset to keep the image's)"));
        }
        Ok(())
    }
}

/// How the retry loop ended.
struct End {
    passed: bool,
    attempts: u32,
    detail: String,
    removed: bool,
}

impl End {
    fn exited(state: &State, attempts: u32, last: &str) -> End {
        End {
            passed: false,
            attempts,
            detail: exited(state, attempts, last),
            removed: state.removed,
        }
    }
}

/// The result of one probe.
#[derive(Debug)]
pub enum Attempt {
    Pass(String),
    Fail(String),
}

/// The container's state, as one inspect shows it.
pub(crate) struct State {
    pub(crate) running: bool,
    /// Exited and about to be started again by its restart policy (the engine says
    /// `running` meanwhile, with no ports bound).
    pub(crate) restarting: bool,
    /// Gone, or being removed (by `cleanup_all_cascade_resources`, or by hand).
    pub(crate) removed: bool,
    pub(crate) exit_code: Option<i64>,
    pub(crate) oom_killed: bool,
    pub(crate) error: Option<String>,
    /// `container port/tcp` → its host bindings.
    pub(crate) ports: HashMap<String, Vec<PortBinding>>,
    /// When its process last started: a restart changes it.
    pub(crate) started_at: Option<String>,
}

/// Owns a smoke test's (or a step's) container and network: `Drop` removes them,
/// whatever happened.
pub(crate) struct Resources<'a> {
    pub docker: &'a Docker,
    pub container: Option<String>,
    pub network: Option<String>,
}

impl Resources<'_> {
    /// Removes the container, then the network, and reports the first failure.
    pub fn remove(&mut self) -> Result<(), DockerError> {
        let container = match self.container.take() {
            Some(id) => self.docker.remove_container(&id),
            None => Ok(()),
        };
        // A network whose container could not be removed is still in use.
        let network = match self.network.take() {
            Some(id) if container.is_ok() => self.docker.remove_network(&id),
            _ => Ok(()),
        };
        container.and(network)
    }
}

impl Drop for Resources<'_> {
    fn drop(&mut self) {
        // Nothing can be reported from here; what fails stays in the registry for
        // `cleanup_all_cascade_resources`.
        let _ = self.remove();
    }
}

impl Docker {
    /// Runs `image` (a reference or id already in the engine) in a new container on a
    /// new bridge network, both labelled `cascade=1`, and probes it until `test`
    /// passes, the container exits, or `test.timeout` runs out. The container and the
    /// network are removed before this returns (or unwinds).
    pub fn smoke_test(&self, image: &str, test: &SmokeTest) -> Result<TestOutcome, DockerError> {
        test.validate()?;
        // Checked first so that a missing image creates nothing (and is named as such).
        if self.image_id(image)?.is_none() {
            return Err(DockerError::ImageNotFound {
                image: image.to_string(),
            });
        }
        let started = Instant::now();
        let name = unique_name("cascade-smoke");
        let mut resources = Resources {
            docker: self,
            container: None,
            network: None,
        };
        resources.network = Some(self.create_network(&name)?);
        let container = self.create_container(image, &name, test)?;
        resources.container = Some(container.clone());
        self.run(async {
            self.client
                .start_container(&container, None)
                .await
                .map_err(DockerError::engine(format!("start container `{name}`")))
        })?;

        // The service's time starts when its container does, however long the engine
        // took to create the network and the container.
        let deadline = Instant::now() + test.timeout;
        let end = self.probe_until_done(&container, test, deadline)?;
        let (passed, attempts, mut detail) = (end.passed, end.attempts, end.detail);
        // A removed container has no log any more.
        let log_tail = if passed || end.removed {
            Vec::new()
        } else {
            match self.log_tail(&container) {
                Ok(lines) => lines,
                Err(e) => {
                    detail.push_str(&format!(" (the container's log could not be read: {e})"));
                    Vec::new()
                }
            }
        };
        resources.remove()?;
        Ok(TestOutcome {
            passed,
            attempts,
            detail,
            log_tail,
            resource_name: name,
            elapsed: started.elapsed(),
        })
    }

    /// The retry loop, on this engine's container.
    fn probe_until_done(
        &self,
        container: &str,
        test: &SmokeTest,
        deadline: Instant,
    ) -> Result<End, DockerError> {
        let agent = probe_agent();
        // The state the last liveness check saw: the probe reads the published port from
        // it, as the loop did before, so a container that exits between the two is
        // reported as exited, not as a port the engine no longer shows.
        let state: std::cell::RefCell<Option<State>> = std::cell::RefCell::new(None);
        let end = probe_until(
            test,
            deadline,
            || {
                let s = self.state(container)?;
                let running = s.running;
                *state.borrow_mut() = Some(s);
                Ok(running)
            },
            |budget| match &test.probe {
                Probe::Http { port, path } => {
                    let seen = state.borrow();
                    let Some(s) = seen.as_ref() else {
                        return Ok(Attempt::Fail("no state of the container yet".into()));
                    };
                    let host_port = published_port(container, s, *port)?;
                    Ok(http_probe(&agent, host_port, path, &test.expect, budget))
                }
                Probe::Command { argv } => self.exec_probe(container, argv, &test.expect, budget),
            },
        )?;
        let state = state.into_inner();
        Ok(match (end, state) {
            (ProbeEnd::Stopped { attempts, last }, Some(state)) => {
                End::exited(&state, attempts, &last)
            }
            (end, _) => End::from(end),
        })
    }

    fn create_network(&self, name: &str) -> Result<String, DockerError> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(Docker::labels()),
            ..Default::default()
        };
        let _creating = self.creating()?;
        let id = self.run(async {
            self.client
                .create_network(request)
                .await
                .map(|r| r.id)
                .map_err(DockerError::engine(format!("create network `{name}`")))
        })?;
        self.track_network(&id);
        Ok(id)
    }

    fn create_container(
        &self,
        image: &str,
        name: &str,
        test: &SmokeTest,
    ) -> Result<String, DockerError> {
        let mut host_config = HostConfig {
            network_mode: Some(name.to_string()),
            ..Default::default()
        };
        let mut exposed_ports = None;
        if let Probe::Http { port, .. } = &test.probe {
            let key = format!("{port}/tcp");
            // Loopback only, and an ephemeral host port the engine picks (read back by
            // inspect), so parallel tests never collide and nothing is reachable from
            // outside the machine.
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            };
            host_config.port_bindings = Some(HashMap::from([(key.clone(), Some(vec![binding]))]));
            exposed_ports = Some(vec![key]);
        }
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            env: (!test.env.is_empty()).then(|| test.env.clone()),
            cmd: test.cmd.clone(),
            labels: Some({
                let mut labels = Docker::labels();
                labels.insert("cascade.smoke-test".to_string(), test.name.clone());
                labels
            }),
            exposed_ports,
            host_config: Some(host_config),
            ..Default::default()
        };
        self.create_tracked(name, body, image)
    }

    /// Creates a container that cascade removes itself (smoke tests, steps): counted as
    /// being created while the request runs, then tracked for the interrupt sweep.
    pub(crate) fn create_tracked(
        &self,
        name: &str,
        body: ContainerCreateBody,
        image: &str,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let _creating = self.creating()?;
        let id = self.run(async {
            match self.client.create_container(Some(options), body).await {
                Ok(r) => Ok(r.id),
                Err(e) if is_not_found(&e) => Err(DockerError::ImageNotFound {
                    image: image.to_string(),
                }),
                Err(e) => Err(DockerError::engine(format!("create container `{name}`"))(e)),
            }
        })?;
        self.track_container(&id);
        Ok(id)
    }

    pub(crate) fn state(&self, container: &str) -> Result<State, DockerError> {
        self.run(async {
            let inspect = match self.client.inspect_container(container, None).await {
                Ok(i) => i,
                // Removed under us (by `cleanup_all_cascade_resources`, or by hand).
                Err(e) if is_not_found(&e) => {
                    return Ok(State {
                        running: false,
                        restarting: false,
                        removed: true,
                        exit_code: None,
                        oom_killed: false,
                        error: None,
                        ports: HashMap::new(),
                        started_at: None,
                    })
                }
                Err(e) => {
                    return Err(DockerError::engine(format!(
                        "inspect container `{container}`"
                    ))(e))
                }
            };
            let state = inspect.state.unwrap_or_default();
            let ports = inspect
                .network_settings
                .and_then(|n| n.ports)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect();
            let removed = matches!(
                state.status,
                Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD)
            );
            Ok(State {
                running: state.running.unwrap_or(false) && !removed,
                restarting: state.restarting.unwrap_or(false),
                removed,
                exit_code: state.exit_code,
                oom_killed: state.oom_killed.unwrap_or(false),
                error: state.error.filter(|e| !e.is_empty()),
                ports,
                started_at: state.started_at,
            })
        })
    }

    /// One `docker exec` of `argv`, judged by its exit code and stdout. Failures of the
    /// exec itself (no such program, the container stopping) are failed attempts.
    pub(crate) fn exec_probe(
        &self,
        container: &str,
        argv: &[String],
        expect: &Expect,
        budget: Duration,
    ) -> Result<Attempt, DockerError> {
        let shown = argv.join(" ");
        let run = async {
            let options = CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(argv.to_vec()),
                ..Default::default()
            };
            let exec = self
                .client
                .create_exec(container, options)
                .await
                .map_err(|e| describe(e).1)?;
            let mut output = match self.client.start_exec(&exec.id, None).await {
                Ok(StartExecResults::Attached { output, .. }) => output,
                Ok(StartExecResults::Detached) => return Err("the exec was detached".into()),
                Err(e) => return Err(describe(e).1),
            };
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        append_capped(&mut stderr, &message)
                    }
                    Ok(other) => append_capped(&mut stdout, &other.into_bytes()),
                    Err(e) => return Err(describe(e).1),
                }
            }
            // The exit code is recorded just after the output ends.
            for _ in 0..50 {
                let inspect = self
                    .client
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(|e| describe(e).1)?;
                if inspect.running != Some(true) {
                    return Ok((inspect.exit_code, stdout, stderr));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok((None, stdout, stderr))
        };
        let outcome = self.run(async {
            Ok(match tokio::time::timeout(budget, run).await {
                Err(_) => Err(format!(
                    "`{shown}` did not finish within {:.1}s",
                    budget.as_secs_f64()
                )),
                Ok(r) => r,
            })
        })?;
        let (code, stdout, stderr) = match outcome {
            Ok(o) => o,
            Err(message) => return Ok(Attempt::Fail(format!("exec `{shown}`: {message}"))),
        };
        Ok(judge_command(&shown, code, &stdout, &stderr, expect))
    }

    /// The container's last log lines, stdout and stderr interleaved as written.
    pub(crate) fn log_tail(&self, container: &str) -> Result<Vec<String>, DockerError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&LOG_TAIL_LINES.to_string())
            .build();
        let bytes = self.run(async {
            let mut logs = self.client.logs(container, Some(options));
            let mut bytes = Vec::new();
            while let Some(chunk) = logs.next().await {
                let chunk = chunk.map_err(DockerError::engine(format!(
                    "read the log of `{container}`"
                )))?;
                append_capped(&mut bytes, &chunk.into_bytes());
            }
            Ok(bytes)
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text.lines().map(|l| truncate(l, LOG_LINE_CHARS)).collect();
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        Ok(lines.into_iter().skip(skip).collect())
    }
}

/// An http agent for probes: loopback only, so no proxy from the environment; no
/// redirects, so the status is the service's own and nothing else is reached; no pooled
/// connections, so each attempt sees the server as it is now.
pub(crate) fn probe_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .max_idle_connections(0)
        .build()
        .new_agent()
}

/// How a [`probe_until`] loop ended.
#[derive(Debug)]
pub enum ProbeEnd {
    Passed {
        attempts: u32,
        detail: String,
    },
    /// What runs the service stopped; `last` is the last probe's detail.
    Stopped {
        attempts: u32,
        last: String,
    },
    /// The deadline passed; `detail` says so with the last probe's detail.
    TimedOut {
        attempts: u32,
        detail: String,
    },
}

impl From<ProbeEnd> for End {
    fn from(e: ProbeEnd) -> End {
        let (passed, attempts, detail) = match e {
            ProbeEnd::Passed { attempts, detail } => (true, attempts, detail),
            ProbeEnd::TimedOut { attempts, detail } => (false, attempts, detail),
            ProbeEnd::Stopped { attempts, last } => (false, attempts, last),
        };
        End {
            passed,
            attempts,
            detail,
            removed: false,
        }
    }
}

/// The retry loop of a smoke test, whatever runs the service (an engine's container,
/// cascade's sandbox): while `running()` says so, `probe(budget)` until it passes or
/// `deadline`; delays double from `test.interval` up to [`MAX_INTERVAL`].
pub fn probe_until<E>(
    test: &SmokeTest,
    deadline: Instant,
    mut running: impl FnMut() -> Result<bool, E>,
    mut probe: impl FnMut(Duration) -> Result<Attempt, E>,
) -> Result<ProbeEnd, E> {
    let mut delay = test.interval;
    let mut attempts = 0;
    let mut last = String::from("no probe was made");
    loop {
        if !running()? {
            return Ok(ProbeEnd::Stopped { attempts, last });
        }
        attempts += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_ATTEMPT, MAX_ATTEMPT);
        match probe(budget)? {
            Attempt::Pass(detail) => return Ok(ProbeEnd::Passed { attempts, detail }),
            Attempt::Fail(detail) => last = detail,
        }
        let now = Instant::now();
        if now >= deadline {
            // What died during the last attempt is reported as such.
            if !running()? {
                return Ok(ProbeEnd::Stopped { attempts, last });
            }
            let detail = format!(
                "not passed within {:.1}s ({attempts} attempt{}); last: {last}",
                test.timeout.as_secs_f64(),
                if attempts == 1 { "" } else { "s" },
            );
            return Ok(ProbeEnd::TimedOut { attempts, detail });
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(MAX_INTERVAL);
    }
}

/// A command's end, judged by `expect` (exit code 0 unless it says otherwise).
pub fn judge_command(
    shown: &str,
    code: Option<i64>,
    stdout: &[u8],
    stderr: &[u8],
    expect: &Expect,
) -> Attempt {
    let want = expect.exit_code.unwrap_or(0);
    let stdout = String::from_utf8_lossy(stdout);
    if code != Some(want) {
        let got = code.map_or("no exit code".to_string(), |c| format!("exit code {c}"));
        return Attempt::Fail(format!(
            "`{shown}`: expected exit code {want}, got {got} (stdout {}, stderr {})",
            excerpt(&stdout),
            excerpt(&String::from_utf8_lossy(stderr)),
        ));
    }
    if let Some(needle) = &expect.body_contains {
        if !stdout.contains(needle.as_str()) {
            return Attempt::Fail(format!(
                "`{shown}`: expected stdout containing {needle:?}, got {}",
                excerpt(&stdout)
            ));
        }
    }
    Attempt::Pass(format!("`{shown}` exited with {want}"))
}

/// `<prefix>-<pid>-<counter>-<random>`: unique among this process's containers, and
/// against a stale resource left by an earlier process with the same pid.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded randomly per process (and per thread); enough for a suffix.
    let random = RandomState::new().hash_one(n) as u32;
    format!("{prefix}-{}-{n}-{random:08x}", std::process::id())
}

/// Why the test ended with the container not running.
pub(crate) fn exited(state: &State, attempts: u32, last: &str) -> String {
    let mut detail = match state.exit_code {
        _ if state.removed => "the container was removed before the test passed".to_string(),
        Some(code) => format!("the container exited with code {code} before the test passed"),
        None => "the container stopped before the test passed".to_string(),
    };
    if state.oom_killed {
        detail.push_str(" (killed: out of memory)");
    }
    if let Some(error) = &state.error {
        detail.push_str(&format!(" ({error})"));
    }
    if attempts > 0 {
        detail.push_str(&format!("; last probe: {last}"));
    }
    detail
}

/// The host port the engine bound for `port`, which must be on 127.0.0.1 only.
fn published_port(container: &str, state: &State, port: u16) -> Result<u16, DockerError> {
    let fail = |reason: String| DockerError::PortNotPublished {
        container: container.to_string(),
        port,
        reason,
    };
    let bindings = state
        .ports
        .get(&format!("{port}/tcp"))
        .filter(|b| !b.is_empty())
        .ok_or_else(|| fail("the engine reports no binding".into()))?;
    if let Some(other) = bindings
        .iter()
        .find(|b| b.host_ip.as_deref() != Some("127.0.0.1"))
    {
        return Err(fail(format!(
            "it is also bound on `{}`",
            other.host_ip.as_deref().unwrap_or("?")
        )));
    }
    bindings
        .iter()
        .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
        .ok_or_else(|| fail("the engine reports no host port".into()))
}

/// One `GET`, judged by status and body.
pub(crate) fn http_probe(
    agent: &ureq::Agent,
    host_port: u16,
    path: &str,
    expect: &Expect,
    budget: Duration,
) -> Attempt {
    let url = format!("http://127.0.0.1:{host_port}{path}");
    let response = agent
        .get(&url)
        .config()
        .timeout_global(Some(budget))
        .build()
        .call();
    let mut response = match response {
        Ok(r) => r,
        Err(e) => return Attempt::Fail(format!("GET {path}: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response
        .body_mut()
        .with_config()
        .limit(OUTPUT_LIMIT as u64)
        .read_to_vec()
    {
        Ok(b) => b,
        // A body over the limit is cut, not an error: the needle is near the start.
        Err(ureq::Error::BodyExceedsLimit(_)) => Vec::new(),
        Err(e) => return Attempt::Fail(format!("GET {path}: status {status}, then {e}")),
    };
    judge_http(path, status, &body, expect)
}

/// A response to `GET path`, judged by `expect` (status 200 unless it says otherwise).
pub fn judge_http(path: &str, status: u16, body: &[u8], expect: &Expect) -> Attempt {
    let body = String::from_utf8_lossy(body);
    let want = expect.status.unwrap_or(200);
    if status != want {
        return Attempt::Fail(format!(
            "GET {path}: expected status {want}, got {status} (body {})",
            excerpt(&body)
        ));
    }
    if let Some(needle) = &expect.body_contains {
        if !body.contains(needle.as_str()) {
            return Attempt::Fail(format!(
                "GET {path}: expected a body containing {needle:?}, got {}",
                excerpt(&body)
            ));
        }
    }
    Attempt::Pass(format!("GET {path}: status {status}"))
}

fn append_capped(buf: &mut Vec<u8>, more: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buf.len());
    buf.extend_from_slice(&more[..more.len().min(room)]);
}

/// The start of `text`, quoted and escaped, marked when cut.
fn excerpt(text: &str) -> String {
    let cut = truncate(text, EXCERPT_CHARS);
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// At most `max` characters of `text`.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> SmokeTest {
        SmokeTest::http("web", 8080, "/")
    }

    #[test]
    fn valid_tests_pass_validation() {
        http().validate().unwrap();
        SmokeTest::command("cat", vec!["cat".into(), "/www/version".into()])
            .validate()
            .unwrap();
    }

    #[test]
    fn invalid_tests_are_refused_before_any_engine_call() {
        let cases: Vec<(SmokeTest, &str)> = vec![
            (
                SmokeTest {
                    name: " ".into(),
                    ..http()
                },
                "name",
            ),
            (SmokeTest::http("web", 0, "/"), "port"),
            (SmokeTest::http("web", 80, "index.html"), "path"),
            (SmokeTest::http("web", 80, "/a b"), "path"),
            (SmokeTest::command("c", vec![]), "command is empty"),
            (
                SmokeTest::command("c", vec![String::new()]),
                "command is empty",
            ),
            (
                SmokeTest {
                    timeout: Duration::ZERO,
                    ..http()
                },
                "timeout",
            ),
            (
                SmokeTest {
                    interval: Duration::ZERO,
                    ..http()
                },
                "interval",
            ),
            (
                SmokeTest {
                    env: vec!["NOEQUALS".into()],
                    ..http()
                },
                "NOEQUALS",
            ),
            (
                SmokeTest {
                    env: vec!["=x".into()],
                    ..http()
                },
                "=x",
            ),
            (
                SmokeTest {
                    cmd: Some(vec![]),
                    ..http()
                },
                "cmd",
            ),
            (
                SmokeTest {
                    expect: Expect {
                        exit_code: Some(0),
                        ..Expect::default()
                    },
                    ..http()
                },
                "exit_code",
            ),
            (
                SmokeTest {
                    expect: Expect {
                        status: Some(200),
                        ..Expect::default()
                    },
                    ..SmokeTest::command("c", vec!["true".into()])
                },
                "status",
            ),
        ];
        for (test, word) in cases {
            let err = test.validate().expect_err(word);
            assert!(
                matches!(err, DockerError::InvalidSmokeTest { .. })
                    && err.to_string().contains(word),
                "{word}: {err}"
            );
        }
    }

    #[test]
    fn names_are_unique_and_docker_safe() {
        let a = unique_name("cascade-smoke");
        let b = unique_name("cascade-smoke");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.starts_with("cascade-smoke-"), "{n}");
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
        }
    }

    #[test]
    fn excerpts_are_quoted_and_cut() {
        assert_eq!(excerpt("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(EXCERPT_CHARS + 10);
        let e = excerpt(&long);
        assert!(e.ends_with('…') && e.len() < long.len() + 5, "{e}");
        assert_eq!(truncate("héllo", 2), "hé");
    }

    #[test]
    fn only_loopback_bindings_are_probed() {
        let state = |bindings: Vec<(&str, &str)>| State {
            running: true,
            restarting: false,
            removed: false,
            exit_code: None,
            oom_killed: false,
            error: None,
            ports: HashMap::from([(
                "8080/tcp".to_string(),
                bindings
                    .into_iter()
                    .map(|(ip, port)| PortBinding {
                        host_ip: Some(ip.into()),
                        host_port: Some(port.into()),
                    })
                    .collect(),
            )]),
            started_at: None,
        };
        assert_eq!(
            published_port("c", &state(vec![("127.0.0.1", "49153")]), 8080).unwrap(),
            49153
        );
        for bad in [
            state(vec![("0.0.0.0", "49153")]),
            state(vec![("127.0.0.1", "49153"), ("::", "49153")]),
            state(vec![]),
            state(vec![("127.0.0.1", "")]),
        ] {
            let err = published_port("c", &bad, 8080).unwrap_err();
            assert!(matches!(err, DockerError::PortNotPublished { .. }), "{err}");
        }
        assert!(published_port("c", &state(vec![("127.0.0.1", "1")]), 9090).is_err());
    }

    /// The guard's `Drop` removes what it owns when the thread unwinds. Needs an engine
    /// (skipped without one, failed without one when `CI=true`).
    #[test]
    fn the_guard_removes_its_resources_during_a_panic() {
        let docker = match Docker::connect() {
            Ok(d) => d,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping: no Docker engine (run .ci/services/docker.sh): {e}");
                return;
            }
            Err(e) => panic!("no Docker engine: {e}; run .ci/services/docker.sh"),
        };
        let name = unique_name("cascade-smoke");
        let id = docker.create_network(&name).unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = Resources {
                docker: &docker,
                container: None,
                network: Some(id.clone()),
            };
            panic!("a bug while the test runs");
        }));
        assert!(unwound.is_err());
        let gone = docker.run(async {
            Ok(match docker.client.inspect_network(&id, None).await {
                Err(e) => is_not_found(&e),
                Ok(_) => false,
            })
        });
        assert!(gone.unwrap(), "network `{name}` is still there");
        assert!(docker.tracked().1.is_empty());
    }

    #[test]
    fn exits_name_the_code() {
        let s = State {
            running: false,
            restarting: false,
            removed: false,
            exit_code: Some(3),
            oom_killed: false,
            error: None,
            ports: HashMap::new(),
            started_at: None,
        };
        let d = exited(&s, 1, "GET /: connection refused");
        assert!(
            d.contains("exited with code 3") && d.contains("connection refused"),
            "{d}"
        );
    }
}
