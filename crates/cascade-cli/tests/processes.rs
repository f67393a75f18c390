//! Many `cascade build` processes at once on one local store and one remote cache (the
//! registry on 127.0.0.1:5000, started by .ci/run): every build succeeds, each changed
//! key is built once and never twice at the same time, the store verifies clean, and a
//! clean machine then gets everything from the registry. A build killed with SIGKILL
//! while it holds a key's lock does not block the next one.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::{cascade, step_writable_dir, verify_clean};

const PROCESSES: usize = 8;
const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// The registry answers `/v2/`. In CI (`CI=true`) it must: .ci/run starts it.
fn registry_up() -> bool {
    let up = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect("127.0.0.1:5000")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:5000\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.ends_with(b"200"))
    })()
    .unwrap_or(false);
    assert!(
        up || std::env::var("CI").is_err(),
        "the registry on 127.0.0.1:5000 is not available in CI; .ci/run starts it"
    );
    if !up {
        eprintln!("skipping: no registry on 127.0.0.1:5000 (run .ci/services/registry.sh)");
    }
    up
}

fn commit(dir: &Path, name: &str, data: &str, time: i64) {
    let path = dir.join("repos").join(name);
    let repo = git2::Repository::open(&path)
        .or_else(|_| git2::Repository::init(&path))
        .unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let mut tb = repo.treebuilder(None).unwrap();
    tb.insert("data", repo.blob(data.as_bytes()).unwrap(), 0o100644)
        .unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(time, 0)).unwrap();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "data", &tree, &parents)
        .unwrap();
}

/// a ← b ← c, a ← d, and e, f on their own. Each step notes that it ran and fails the
/// build of the test (an `overlaps` file) if the same key runs twice at once; a step of
/// `e` waits while the file `hold` exists, to be killed while it holds its key's lock.
fn project(dir: &Path, marks: &Path) {
    fs::create_dir_all(dir.join("graph/environments")).unwrap();
    fs::create_dir_all(dir.join("recipes")).unwrap();
    fs::create_dir_all(marks).unwrap();
    let mut env = String::from("name: test\nmode: branch\nsources:\n");
    for n in NAMES {
        env.push_str(&format!("  {n}: {{ repo: ../../repos/{n}, ref: main }}\n"));
    }
    fs::write(dir.join("graph/environments/test.yaml"), env).unwrap();
    for (i, n) in NAMES.iter().enumerate() {
        let inputs = match *n {
            "b" => "a",
            "c" => "b",
            "d" => "a",
            _ => "",
        };
        let key = "$MARKS/running-$CASCADE_COMPONENT-$CASCADE_COMMIT";
        fs::write(
            dir.join(format!("recipes/{n}.yaml")),
            format!(
                "inputs: [{inputs}]\n\
                 runner: {{ host: {{ tools: [sh, mkdir, rmdir, sleep, cat, touch] }} }}\n\
                 stamp: [commit]\n\
                 env: {{ MARKS: {marks} }}\n\
                 steps:\n  - name: make\n    run: |\n\
                 \x20     mkdir \"{key}\" || echo overlap >> \"$MARKS/overlaps\"\n\
                 \x20     echo ran >> \"$MARKS/ran-$CASCADE_COMPONENT-$CASCADE_COMMIT\"\n\
                 \x20     touch \"$MARKS/started-$CASCADE_COMPONENT\"\n\
                 \x20     while [ -e \"$MARKS/hold-$CASCADE_COMPONENT\" ]; do sleep 0.05; done\n\
                 \x20     sleep 0.2\n\
                 \x20     mkdir -p out\n\
                 \x20     cat data > out/x\n\
                 \x20     rmdir \"{key}\"\n\
                 outputs: [out]\n",
                marks = marks.display()
            ),
        )
        .unwrap();
        commit(dir, n, &format!("{n} {i}\n"), 1_767_225_600);
    }
}

fn spawn_build(dir: &Path, store: &Path, cache: &str) -> Child {
    cascade(dir, store)
        .args(["build", "--env", "test", "--json", "--remote-cache", cache])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn report(child: Child, what: &str) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{stderr}"));
    assert_eq!(
        j["remote_cache"]["errors"], 0,
        "{what}: remote cache errors:\n{stderr}"
    );
    // Racing writers of one key agree (same bytes), so no reproducibility problem.
    assert_eq!(
        j["remote_cache"]["problems"],
        serde_json::json!([]),
        "{what}:\n{stderr}"
    );
    j
}

/// [`PROCESSES`] builds at once on `store` and `cache`; their reports, each checked.
fn eight_builds(dir: &Path, store: &Path, cache: &str, what: &str) -> Vec<serde_json::Value> {
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_build(dir, store, cache))
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(i, c)| report(c, &format!("{what}, build {i}")))
        .collect()
}

fn sum(reports: &[serde_json::Value], field: &str) -> u64 {
    reports.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

fn ran(marks: &Path, component: &str) -> usize {
    fs::read_dir(marks)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("ran-{component}-"))
        })
        .map(|e| fs::read_to_string(e.path()).unwrap().lines().count())
        .sum()
}

fn cache_url() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "oci://127.0.0.1:5000/cascade-processes-{}-{t}",
        std::process::id()
    )
}

#[test]
fn eight_build_processes_share_one_store_and_one_remote_cache() {
    if !registry_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let marks_dir = step_writable_dir();
    let marks = marks_dir.path().to_path_buf();
    project(&dir, &marks);
    let store = tmp.path().join("store");
    let cache = cache_url();
    // `cargo xtask stress` raises it.
    let rounds: usize = std::env::var("CASCADE_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut expected_runs = [0usize; 6];
    for round in 0..rounds {
        if round > 0 {
            // a and f move: a, b, d and f rebuild; c is spared by early cutoff (b's
            // output does not depend on a's), e is untouched.
            for n in ["a", "f"] {
                commit(
                    &dir,
                    n,
                    &format!("{n} round {round}\n"),
                    1_767_225_600 + round as i64,
                );
            }
        }
        let reports = eight_builds(&dir, &store, &cache, &format!("round {round}"));
        let changed = if round == 0 {
            &[0, 1, 2, 3, 4, 5][..]
        } else {
            &[0, 1, 3, 5][..]
        };
        for &i in changed {
            expected_runs[i] += 1;
        }
        // Each changed key is built by exactly one of the eight (the others wait for its
        // lock and find the result).
        assert_eq!(
            sum(&reports, "built"),
            changed.len() as u64,
            "round {round}: {reports:#?}"
        );
        // Every build saw the same outputs.
        for r in &reports {
            for n in r["nodes"].as_array().unwrap() {
                let name = n["name"].as_str().unwrap();
                let first = reports[0]["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == name)
                    .unwrap();
                assert_eq!(n["output"], first["output"], "round {round}: {name}");
            }
        }
        verify_clean(&dir, &store, &format!("round {round}"));
    }
    assert!(
        !marks.join("overlaps").exists(),
        "a key was built twice at the same time in one store"
    );
    for (i, n) in NAMES.iter().enumerate() {
        assert_eq!(ran(&marks, n), expected_runs[i], "steps run for `{n}`");
    }

    // Another machine: a clean store, eight builds at once, everything from the registry.
    let other = tmp.path().join("other-store");
    let reports = eight_builds(&dir, &other, &cache, "clean machine");
    assert_eq!(sum(&reports, "built"), 0, "{reports:#?}");
    let hits: u64 = reports
        .iter()
        .map(|r| r["remote_cache"]["hits"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        hits,
        NAMES.len() as u64,
        "each key fetched once: {reports:#?}"
    );
    for (i, n) in NAMES.iter().enumerate() {
        assert_eq!(ran(&marks, n), expected_runs[i], "no step ran for `{n}`");
    }
    verify_clean(&dir, &other, "the clean machine");
}

/// A build whose step of `e` waits (holding e's key lock and the store) until the
/// returned `hold` file is removed; returns once that step has started.
fn build_held_in_e(dir: &Path, store: &Path, marks: &Path) -> (Child, std::path::PathBuf) {
    let hold = marks.join("hold-e");
    fs::write(&hold, "").unwrap();
    let started = marks.join("started-e");
    let _ = fs::remove_file(&started);
    let child = cascade(dir, store)
        .args(["build", "--env", "test", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "e never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, hold)
}

/// A build killed (SIGKILL) in the middle of a step holds that key's lock; the lock is
/// released with the process, so the next build neither waits for it nor is confused by
/// what the dead one left behind.
#[test]
fn a_build_killed_while_holding_a_key_lock_does_not_block_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let marks_dir = step_writable_dir();
    let marks = marks_dir.path().to_path_buf();
    project(&dir, &marks);
    let store = tmp.path().join("store");
    let (mut child, hold) = build_held_in_e(&dir, &store, &marks);
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed build's step may still be looping; let it end, then clear what it left.
    fs::remove_file(&hold).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for e in fs::read_dir(&marks).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("running-") {
            let _ = fs::remove_dir(e.path());
        }
    }
    verify_clean(&dir, &store, "after the kill");
    let mut child = cascade(&dir, &store)
        .args(["build", "--env", "test", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A lock that outlived its process would make this wait forever: give up loudly.
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the next build is still waiting for the dead build's lock");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = child.wait_with_output().unwrap();
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&next.stdout).unwrap();
    let e = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "e")
        .cloned()
        .unwrap();
    assert_eq!(e["status"], "built", "{j:#}");
    verify_clean(&dir, &store, "after the next build");
}

/// `gc` never runs beside a build (it could collect what the build wrote and no lockfile
/// references yet): it says so and exits 3. Once no build runs, it also clears what
/// killed builds left in `tmp/`.
#[test]
fn gc_refuses_to_run_beside_a_build_and_clears_leftover_work_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let marks_dir = step_writable_dir();
    let marks = marks_dir.path().to_path_buf();
    project(&dir, &marks);
    let store = tmp.path().join("store");
    // A first build, so gc has a lockfile to keep.
    let first = cascade(&dir, &store)
        .args(["build", "--env", "test", "--json"])
        .output()
        .unwrap();
    assert!(first.status.success());
    commit(&dir, "e", "e moved\n", 1_767_225_700);
    let (child, hold) = build_held_in_e(&dir, &store, &marks);
    let gc = cascade(&dir, &store).args(["gc"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&gc.stderr);
    assert_eq!(gc.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("a build is using the store"), "{stderr}");
    fs::remove_file(&hold).unwrap();
    report_ok(child);

    // What a killed build would leave: a work directory in tmp/.
    let junk = store.join("tmp/build-left-by-a-killed-build");
    fs::create_dir_all(junk.join("src")).unwrap();
    fs::write(junk.join("src/file"), "x".repeat(1000)).unwrap();
    let gc = cascade(&dir, &store)
        .args(["gc", "--json"])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(j["removed"]["tmp"][0], 1, "{j:#}");
    assert!(!junk.exists());
    verify_clean(&dir, &store, "after gc");
}

fn report_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
