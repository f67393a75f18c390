//! [IO] Smoke tests without a daemon: the image's entrypoint runs in cascade's sandbox
//! (its unpacked image as a read-only root, a private `/tmp`, a network namespace where
//! only loopback is up), and each probe runs inside that namespace: an http probe's
//! connection is made there and handed back (`namespace::connect_inside`), a command
//! probe is started in the sandbox's namespaces (`namespace::exec_inside`). The retry
//! loop and the judgement are cascade-docker's, so both executors report alike.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use cascade_docker::{
    judge_command, judge_http, probe_until, Attempt, Probe, ProbeEnd, SmokeTest, TestOutcome,
};
use cascade_exec::namespace::{self, Bind, Jail, Jailed, Root};
use cascade_image::OciLayout;
use cascade_store::Store;

use crate::image::ImageRef;
use crate::rootfs::Rootfses;

/// How much of a response or a command's output is read.
const OUTPUT_LIMIT: u64 = 1 << 20;
/// How many lines of the service's output a failure shows.
const LOG_TAIL: usize = cascade_docker::LOG_TAIL_LINES;

/// Runs `test` against `image` in the sandbox. `Err` is the machine's problem (no
/// namespaces, the image cannot be unpacked), not the image's.
pub(crate) fn smoke_test(
    store: &Store,
    layout: &OciLayout,
    rootfses: &Rootfses,
    image: &ImageRef,
    test: &SmokeTest,
) -> Result<TestOutcome, String> {
    test.validate().map_err(|e| e.to_string())?;
    namespace::available().map_err(|e| format!("{e}; {}", namespace::Refused::HELP))?;
    let started = Instant::now();
    let rootfs = rootfses.get(store, layout, &image.digest)?;
    let scratch = store.temp_dir().map_err(|e| e.to_string())?;
    let tmp = scratch.path().join("tmp");
    fs::create_dir(&tmp).map_err(|e| e.to_string())?;
    let log_path = scratch.path().join("log");
    let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;

    let config = &rootfs.config;
    let mut env: Vec<String> = config.env.clone();
    for kv in &test.env {
        let name = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(name));
        env.push(kv.clone());
    }
    let mut argv = config.entrypoint.clone();
    argv.extend(test.cmd.clone().unwrap_or_else(|| config.cmd.clone()));
    let Some(program) = argv.first().cloned() else {
        return Ok(failed(
            started,
            "the image has neither an entrypoint nor a cmd".into(),
        ));
    };
    match find_program(&rootfs.tree, &program, &env) {
        Some(p) => argv[0] = p,
        None => return Ok(failed(started, format!("`{program}` is not in the image"))),
    }
    let landlock = cascade_exec::landlock::ruleset_fd(&[&tmp], &[Path::new("/dev/null")])?;
    let jail = Jail {
        root: Root::Dir(rootfs.tree.clone()),
        binds: vec![Bind {
            source: tmp.clone(),
            target: "/tmp".into(),
            writable: true,
        }],
        cwd: if config.working_dir.is_empty() {
            "/".into()
        } else {
            config.working_dir.clone()
        },
        argv,
        env: env.clone(),
        output: OwnedFd::from(log),
        landlock,
        limits: cascade_exec::sandbox::LIMITS,
        // A server that outlives this code: never in a network another process enters.
        network: cascade_exec::namespace::Network::Own,
    };
    let jailed = namespace::spawn(jail, scratch.path()).map_err(|e| e.to_string())?;
    let guard = Killed(&jailed);
    let deadline = Instant::now() + test.timeout;
    let mut exit = None;
    let end = probe_until::<String>(
        test,
        deadline,
        || {
            if exit.is_none() {
                exit = jailed.try_wait().map_err(|e| e.to_string())?;
            }
            Ok(exit.is_none())
        },
        |budget| {
            Ok(match &test.probe {
                Probe::Http { port, path } => http(&jailed, *port, path, &test.expect, budget),
                Probe::Command { argv } => command(
                    &jailed,
                    &rootfs.tree,
                    scratch.path(),
                    argv,
                    &env,
                    &test.expect,
                    budget,
                ),
            })
        },
    )?;
    drop(guard);
    let (passed, attempts, detail) = match end {
        ProbeEnd::Passed { attempts, detail } => (true, attempts, detail),
        ProbeEnd::TimedOut { attempts, detail } => (false, attempts, detail),
        ProbeEnd::Stopped { attempts, last } => {
            let mut d = match exit {
                Some(code) => format!("the service exited with code {code} before the test passed"),
                None => "the service stopped before the test passed".to_string(),
            };
            if attempts > 0 {
                d.push_str(&format!("; last probe: {last}"));
            }
            (false, attempts, d)
        }
    };
    let log_tail = if passed { Vec::new() } else { tail(&log_path) };
    Ok(TestOutcome {
        passed,
        attempts,
        detail,
        log_tail,
        resource_name: "sandbox".into(),
        elapsed: started.elapsed(),
    })
}

/// Kills the service's sandbox on every path out.
struct Killed<'a>(&'a Jailed);

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        self.0.kill();
        let _ = self.0.wait();
    }
}

fn failed(started: Instant, detail: String) -> TestOutcome {
    TestOutcome {
        passed: false,
        attempts: 0,
        detail,
        log_tail: Vec::new(),
        resource_name: "sandbox".into(),
        elapsed: started.elapsed(),
    }
}

/// The program's path inside the image: as given when it has a `/`, else the first
/// match on the image's `PATH`.
fn find_program(tree: &Path, program: &str, env: &[String]) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .find_map(|d| {
            let inside = format!("{}/{program}", d.trim_end_matches('/'));
            let on_disk = tree.join(inside.trim_start_matches('/'));
            // symlink_metadata: a link is resolved inside the sandbox, not here.
            fs::symlink_metadata(on_disk).ok().map(|_| inside)
        })
}

/// One `GET` over a connection made inside the sandbox's network namespace.
fn http(
    jailed: &Jailed,
    port: u16,
    path: &str,
    expect: &cascade_docker::Expect,
    budget: Duration,
) -> Attempt {
    let mut stream = match namespace::connect_inside(jailed, port) {
        Ok(s) => s,
        Err(e) => return Attempt::Fail(format!("GET {path}: {e}")),
    };
    let _ = stream.set_read_timeout(Some(budget));
    let _ = stream.set_write_timeout(Some(budget));
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Attempt::Fail(format!("GET {path}: {e}"));
    }
    let mut response = Vec::new();
    if let Err(e) = stream.take(OUTPUT_LIMIT).read_to_end(&mut response) {
        if response.is_empty() {
            return Attempt::Fail(format!("GET {path}: {e}"));
        }
    }
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Attempt::Fail(format!("GET {path}: no complete response head"));
    };
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) => judge_http(path, status, &response[split + 4..], expect),
        None => Attempt::Fail(format!("GET {path}: not an http response")),
    }
}

/// A command started in the sandbox's namespaces, killed when `budget` runs out.
fn command(
    jailed: &Jailed,
    tree: &Path,
    scratch: &Path,
    argv: &[String],
    env: &[String],
    expect: &cascade_docker::Expect,
    budget: Duration,
) -> Attempt {
    let shown = argv.join(" ");
    let run = || -> std::io::Result<(Option<i64>, Vec<u8>, Vec<u8>)> {
        let out_path = scratch.join("probe.out");
        let err_path = scratch.join("probe.err");
        let out = fs::File::create(&out_path)?;
        let err = fs::File::create(&err_path)?;
        let mut argv = argv.to_vec();
        // Found on the image's PATH, as `docker exec` would.
        argv[0] = find_program(tree, &argv[0], env).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{}` is not in the image", argv[0]),
            )
        })?;
        let child = namespace::exec_inside(jailed, &argv, env, out.into(), err.into())?;
        let until = Instant::now() + budget;
        let code = loop {
            if let Some(code) = child.try_wait()? {
                break Some(code as i64);
            }
            if Instant::now() >= until {
                child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let read = |p: &Path| -> std::io::Result<Vec<u8>> {
            let mut v = Vec::new();
            fs::File::open(p)?.take(OUTPUT_LIMIT).read_to_end(&mut v)?;
            Ok(v)
        };
        Ok((code, read(&out_path)?, read(&err_path)?))
    };
    match run() {
        Ok((None, ..)) => Attempt::Fail(format!(
            "exec `{shown}`: did not finish within {:.1}s",
            budget.as_secs_f64()
        )),
        Ok((code, stdout, stderr)) => judge_command(&shown, code, &stdout, &stderr, expect),
        Err(e) => Attempt::Fail(format!("exec `{shown}`: {e}")),
    }
}

/// The last lines of the service's output.
fn tail(path: &Path) -> Vec<String> {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().take(500).collect())
        .collect();
    let skip = lines.len().saturating_sub(LOG_TAIL);
    lines.into_iter().skip(skip).collect()
}
