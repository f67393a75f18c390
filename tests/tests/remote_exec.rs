//! A REAPI engine (BuildGrid 0.4.4, one of each test's own, `.ci/services/buildgrid.sh`
//! installs it) as the remote cache and as the executor, with `cascade worker`
//! processes: the example builds on two workers to the lockfile of a local build, a
//! clean checkout then gets every node from the engine, and every way of breaking the
//! engine or a worker costs time, never the build.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cascade_tests::engine::{buildgrid, Engine};
use cascade_tests::{cascade, copy_dir, Run, TestProject};

const ENV: &str = "test";

/// A copy of this repository's graph and recipes with freshly generated repositories.
fn example_project(dir: &Path) {
    let root = xtask::workspace_root();
    copy_dir(&root.join("graph"), &dir.join("graph"));
    copy_dir(&root.join("recipes"), &dir.join("recipes"));
    xtask::ecosystem::generate(&root, &dir.join("target/ecosystem")).expect("the ecosystem");
}

fn build_example(project: &Path, store: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = [
        "--project",
        &project.display().to_string(),
        "build",
        "--env",
        "scratch",
        "--json",
        "--skip-tests",
        "--store",
        &store.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = cascade(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn lockfile_bytes(project: &Path, run: &Run) -> Vec<u8> {
    let rel = run.json()["lockfile"]
        .as_str()
        .expect("a lockfile")
        .to_string();
    fs::read(project.join(rel)).expect("the lockfile")
}

fn started(log: &str) -> usize {
    log.lines()
        .filter(|l| l.trim_start().starts_with("started"))
        .count()
}

#[test]
fn the_example_builds_on_two_workers_to_a_local_builds_lockfile_and_a_clean_checkout_gets_every_node_from_the_engine(
) {
    if !buildgrid() {
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let (local, remote, clean) = (
        dirs.path().join("local"),
        dirs.path().join("remote"),
        dirs.path().join("clean"),
    );
    for p in [&local, &remote, &clean] {
        example_project(p);
    }
    let here = build_example(&local, &dirs.path().join("store-local"), &[]);
    assert_eq!(here.json()["built"], 8);

    let engine = Engine::start(60);
    let w1 = engine.worker("w1", dirs.path());
    let w2 = engine.worker("w2", dirs.path());
    let url = engine.url();
    let there = build_example(
        &remote,
        &dirs.path().join("store-remote"),
        &["--remote", &url, "--remote-exec"],
    );
    assert_eq!(there.json()["built"], 8, "{}", there.stderr);
    for n in there.json()["nodes"].as_array().unwrap() {
        let worker = n["remote_exec"]["worker"].as_str().unwrap_or_default();
        assert!(
            worker == "w1" || worker == "w2",
            "`{}` did not run on a worker: {n}",
            n["name"]
        );
    }
    assert_eq!(
        started(&w1.log()) + started(&w2.log()),
        8,
        "w1:\n{}\nw2:\n{}",
        w1.log(),
        w2.log()
    );
    // The same Actions, the same bytes, wherever they ran.
    assert_eq!(
        String::from_utf8_lossy(&lockfile_bytes(&local, &here)),
        String::from_utf8_lossy(&lockfile_bytes(&remote, &there))
    );
    assert!(there.stderr.contains(" on w"), "{}", there.stderr);

    // A clean checkout and store, the engine as cache only: every node from it, no step.
    let before = started(&w1.log()) + started(&w2.log());
    let cached = build_example(
        &clean,
        &dirs.path().join("store-clean"),
        &["--remote", &url],
    );
    assert_eq!(cached.json()["built"], 0, "{}", cached.stderr);
    assert_eq!(
        cached.json()["remote_cache"]["hits"],
        8,
        "{}",
        cached.stderr
    );
    assert_eq!(
        cached.json()["remote_cache"]["errors"],
        0,
        "{}",
        cached.stderr
    );
    assert_eq!(started(&w1.log()) + started(&w2.log()), before);
    assert_eq!(
        lockfile_bytes(&local, &here),
        lockfile_bytes(&clean, &cached)
    );
}

#[test]
fn a_cascade_worker_runs_an_action_that_is_not_cascades() {
    if !buildgrid() {
        return;
    }
    let bgd = cascade_tests::engine::bgd_env("CASCADE_BGD").expect("CASCADE_BGD");
    let dirs = tempfile::tempdir().unwrap();
    let engine = Engine::start(60);
    let w = engine.worker("generic", dirs.path());
    let work = dirs.path().join("client");
    fs::create_dir_all(work.join("input/sub")).unwrap();
    fs::write(work.join("input/sub/words.txt"), "hello from bgd\n").unwrap();
    let out = std::process::Command::new(&bgd)
        .current_dir(&work)
        .args([
            "execute",
            &format!("--remote=http://127.0.0.1:{}", engine.port),
            "command",
            "--output-file",
            "loud.txt",
            "--output-directory",
            "fetched",
            "input",
            "--",
            "/bin/sh",
            "-c",
            "tr a-z A-Z < sub/words.txt > loud.txt",
        ])
        .output()
        .expect("bgd execute");
    assert!(
        out.status.success(),
        "bgd execute failed:\n{}\n{}\nworker:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.log()
    );
    assert_eq!(
        fs::read_to_string(work.join("fetched/loud.txt")).unwrap(),
        "HELLO FROM BGD\n"
    );
    assert_eq!(started(&w.log()), 1, "{}", w.log());
}

/// base → app; `extra` is more of app's step; `salt` makes base's data this test's own.
fn project(extra: &str, salt: &str) -> TestProject {
    cascade_tests::base_app(extra, salt)
}

fn build(p: &TestProject, store: &Path, extra: &[&str]) -> Run {
    let store = store.display().to_string();
    let mut args = vec!["build", "--env", ENV, "--json", "--store", &store];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn salt() -> String {
    format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    )
}

/// A temp directory, an engine of the test's own and a project of its own, or `None`
/// (skipping) where BuildGrid is not installed.
fn engine_and_project(extra: &str) -> Option<(tempfile::TempDir, Engine, TestProject)> {
    if !buildgrid() {
        return None;
    }
    let dirs = tempfile::tempdir().unwrap();
    Some((dirs, Engine::start(60), project(extra, &salt())))
}

#[test]
fn an_engine_that_is_down_costs_only_time_and_says_so_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("grpc://127.0.0.1:{port}");
    let dirs = tempfile::tempdir().unwrap();
    let p = project("", &salt());
    for extra in [
        &["--remote", url.as_str()][..],
        &["--remote", &url, "--remote-exec"],
    ] {
        let store = dirs.path().join(format!("s{}", extra.len()));
        let r = build(&p, &store, extra);
        assert_eq!(r.json()["built"], 2, "{}", r.stderr);
        assert!(r.json()["remote_cache"]["errors"].as_u64().unwrap() >= 1);
        // What a person reads: one loud line naming the engine.
        let store = dirs.path().join(format!("t{}", extra.len()));
        let mut args = vec!["build", "--env", ENV, "--store", store.to_str().unwrap()];
        args.extend(extra);
        let text = p.run(&args);
        assert_eq!(text.code, 0, "{}", text.stderr);
        let loud: Vec<&str> = text
            .stderr
            .lines()
            .filter(|l| l.starts_with("remote cache:") && l.contains("check the remote"))
            .collect();
        assert_eq!(loud.len(), 1, "{}", text.stderr);
        assert!(loud[0].contains(&url), "{}", text.stderr);
    }
}

#[test]
fn an_engine_killed_mid_build_costs_only_time() {
    if !buildgrid() {
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let mut engine = Engine::start(60);
    let w = engine.worker("w", dirs.path());
    // app takes a while, so the engine dies while it runs there.
    let p = project("      sleep 3\n", &salt());
    let url = engine.url();
    let store = dirs.path().join("store");
    let r = std::thread::scope(|s| {
        let b = s.spawn(|| build(&p, &store, &["--remote", &url, "--remote-exec"]));
        let t0 = Instant::now();
        while started(&w.log()) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(60), "{}", w.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        engine.kill();
        b.join().unwrap()
    });
    assert_eq!(r.json()["built"], 2, "{}", r.stderr);
    assert_eq!(r.node("base")["remote_exec"]["worker"], "w", "{}", r.stderr);
    assert!(r.node("app")["remote_exec"].is_null(), "{}", r.stderr);
    let problems = r.json()["remote_cache"]["problems"].to_string();
    assert!(problems.contains("it ran here instead"), "{problems}");
    // Same output as a build that never saw the engine.
    let local = build(&p, &dirs.path().join("local"), &[]);
    assert_eq!(local.node("app")["output"], r.node("app")["output"]);
    // The engine comes back: the worker opens a new session and takes work again.
    engine.restart();
    let q = project("", &salt());
    let again = build(
        &q,
        &dirs.path().join("again"),
        &["--remote", &url, "--remote-exec"],
    );
    assert_eq!(again.json()["built"], 2, "{}", again.stderr);
    for n in ["base", "app"] {
        assert_eq!(again.node(n)["remote_exec"]["worker"], "w", "{}", w.log());
    }
}

#[test]
fn a_worker_killed_mid_action_is_retried_on_another_and_the_build_succeeds() {
    if !buildgrid() {
        return;
    }
    let marks = cascade_tests::step_writable_dir();
    let dirs = tempfile::tempdir().unwrap();
    // Bot sessions expire after 10 s: a vanished worker's lease is requeued then.
    let engine = Engine::start(10);
    let mut first = engine.worker("first", dirs.path());
    let step = format!(
        "      mkdir {}/run-$(cat /proc/sys/kernel/random/uuid)\n      sleep 6\n",
        marks.path().display()
    );
    let p = project(&step, &salt());
    let url = engine.url();
    let store = dirs.path().join("store");
    let runs = || fs::read_dir(marks.path()).map(|d| d.count()).unwrap_or(0);
    let r = std::thread::scope(|s| {
        let b = s.spawn(|| build(&p, &store, &["--remote", &url, "--remote-exec"]));
        let t0 = Instant::now();
        while runs() < 1 {
            assert!(t0.elapsed() < Duration::from_secs(60), "{}", first.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        // app runs on `first`, the only worker: kill it, then start another.
        first.kill();
        let second = engine.worker("second", dirs.path());
        let r = b.join().unwrap();
        (r, second.log())
    });
    let (r, second_log) = r;
    assert_eq!(r.json()["built"], 2, "{}", r.stderr);
    assert_eq!(r.node("base")["remote_exec"]["worker"], "first");
    assert_eq!(
        r.node("app")["remote_exec"]["worker"],
        "second",
        "{}",
        r.stderr
    );
    assert_eq!(runs(), 2, "the step ran once on each worker");
    assert_eq!(started(&second_log), 1, "{second_log}");
    assert_eq!(r.json()["remote_cache"]["errors"], 0, "{}", r.stderr);
}

#[test]
fn a_corrupt_blob_on_the_engine_is_caught_and_the_node_built_here() {
    let Some((dirs, engine, p)) = engine_and_project("") else {
        return;
    };
    let url = engine.url();
    let first = build(&p, &dirs.path().join("a"), &["--remote", &url]);
    assert_eq!(first.json()["remote_cache"]["uploads"], 2);
    // app's out/out.txt as the engine stores it: find it by content, change one byte.
    let objects = engine.dir.path().join("engine/cas/cas/objects");
    let mut corrupted = 0;
    for shard in fs::read_dir(&objects).unwrap().flatten() {
        for blob in fs::read_dir(shard.path()).unwrap().flatten() {
            let bytes = fs::read(blob.path()).unwrap();
            if bytes.starts_with(b"base data") && bytes.windows(8).any(|w| w == b"app data") {
                let mut bad = bytes.clone();
                bad[0] ^= 0x20;
                fs::write(blob.path(), bad).unwrap();
                corrupted += 1;
            }
        }
    }
    assert_eq!(corrupted, 1, "app's output blob on the engine");
    let second = build(
        &p,
        &dirs.path().join("b"),
        &["--remote", &url, "--remote-cache-mode", "read"],
    );
    assert_eq!(
        second.json()["remote_cache"]["hits"],
        1,
        "{}",
        second.stderr
    );
    assert_eq!(second.json()["built"], 1, "{}", second.stderr);
    assert_eq!(second.node("app")["status"], "built");
    let problems = second.json()["remote_cache"]["problems"].to_string();
    assert!(problems.contains("does not match its digest"), "{problems}");
    assert_eq!(second.node("app")["output"], first.node("app")["output"]);
}

#[test]
fn the_first_result_wins_and_a_different_one_is_reported_never_written() {
    let Some((dirs, engine, p)) = engine_and_project("      date +%s%N > out/share/stamp\n") else {
        return;
    };
    let url = engine.url();
    let a = build(&p, &dirs.path().join("a"), &["--remote", &url]);
    assert_eq!(a.json()["remote_cache"]["uploads"], 2);
    let b = build(
        &p,
        &dirs.path().join("b"),
        &["--remote", &url, "--remote-cache-mode", "write"],
    );
    assert_ne!(a.node("app")["output"], b.node("app")["output"]);
    // Nothing written the second time, and the difference said.
    assert_eq!(b.json()["remote_cache"]["uploads"], 0);
    let problems = b.json()["remote_cache"]["problems"].to_string();
    assert!(problems.contains("reproducibility: `app`"), "{problems}");
    let c = build(
        &p,
        &dirs.path().join("c"),
        &["--remote", &url, "--remote-cache-mode", "read"],
    );
    assert_eq!(c.json()["built"], 0);
    assert_eq!(c.node("app")["output"], a.node("app")["output"]);
}

#[test]
fn plan_says_which_nodes_the_engine_has_without_downloading_them() {
    let Some((dirs, engine, p)) = engine_and_project("") else {
        return;
    };
    let url = engine.url();
    build(&p, &dirs.path().join("a"), &["--remote", &url]);
    let clean = dirs.path().join("clean");
    let clean_arg = clean.display().to_string();
    let plan = p.run(&[
        "plan", "--env", ENV, "--json", "--store", &clean_arg, "--remote", &url,
    ]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert_eq!(plan.json()["remote"], 2, "{}", plan.stdout);
    for n in plan.json()["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "remote", "{n}");
    }
    // Read-only: no store was made, nothing fetched.
    assert!(!clean.exists());
    let text = p.run(&[
        "plan", "--env", ENV, "--store", &clean_arg, "--remote", &url,
    ]);
    let shown = format!("{}{}", text.stdout, text.stderr);
    assert!(shown.contains("from the remote cache 2"), "{shown}");
    // Without the engine the same plan rebuilds both.
    let local = p.run(&["plan", "--env", ENV, "--json", "--store", &clean_arg]);
    assert_eq!(local.json()["rebuild"], 1, "{}", local.stdout);
    assert_eq!(local.json()["pending"], 1, "{}", local.stdout);
}
