//! Crash safety with the real binary: a build killed at random moments, or aborted at
//! each named point of the write sequence, leaves a store that verifies clean and the
//! previous lockfile untouched, and the next build succeeds with the same outputs. A
//! full disk is a clear error (exit 3) with nothing half-written.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{cascade, verify_clean};

/// Three components; app takes the other two, and writes a bigger output.
fn project(dir: &Path) {
    fs::create_dir_all(dir.join("graph/environments")).unwrap();
    fs::create_dir_all(dir.join("recipes")).unwrap();
    let mut env = String::from("name: test\nmode: branch\nsources:\n");
    for n in ["a", "b", "app"] {
        env.push_str(&format!("  {n}: {{ repo: ../../repos/{n}, ref: main }}\n"));
    }
    fs::write(dir.join("graph/environments/test.yaml"), env).unwrap();
    for (n, inputs, run) in [
        ("a", "", "mkdir -p out && cat data > out/a"),
        ("b", "", "mkdir -p out && cat data data > out/b"),
        (
            "app",
            "a, b",
            "mkdir -p out/d && cat inputs/a/out/a inputs/b/out/b data > out/app && head -c 300000 /dev/zero > out/d/zeros",
        ),
    ] {
        fs::write(
            dir.join(format!("recipes/{n}.yaml")),
            format!("inputs: [{inputs}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir, head] }} }}\nsteps:\n  - name: make\n    run: '{run}'\noutputs: [out]\n"),
        )
        .unwrap();
        let repo = git2::Repository::init(dir.join("repos").join(n)).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        let data = format!("{n} data\n");
        tb.insert("data", repo.blob(data.as_bytes()).unwrap(), 0o100644)
            .unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig =
            git2::Signature::new("t", "t@example.com", &git2::Time::new(1_767_225_600, 0)).unwrap();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "init", &tree, &[])
            .unwrap();
    }
}

/// Mounts a tmpfs of `size` at `at`; false (a skip, except in CI, which runs as root)
/// when this machine cannot.
fn small_tmpfs(at: &Path, size: &str) -> bool {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root and can mount a tmpfs for this test"
        );
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
    }
    mounted
}

fn build(dir: &Path, store: &Path) -> std::process::Output {
    cascade(dir, store)
        .args(["build", "--env", "test", "--json"])
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn outputs(out: &std::process::Output) -> Vec<String> {
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["output"].as_str().unwrap_or("").to_string())
        .collect()
}

fn lockfiles(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join("lockfiles"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Forces the next build to do everything again (a fresh key: another data commit).
fn touch(dir: &Path, round: usize) {
    let repo = git2::Repository::open(dir.join("repos/app")).unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let mut tb = repo.treebuilder(None).unwrap();
    let data = format!("app data {round}\n");
    tb.insert("data", repo.blob(data.as_bytes()).unwrap(), 0o100644)
        .unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let sig = git2::Signature::new(
        "t",
        "t@example.com",
        &git2::Time::new(1_767_225_600 + round as i64 + 1, 0),
    )
    .unwrap();
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "next",
        &tree,
        &[&parent],
    )
    .unwrap();
}

#[test]
fn kill_9_at_random_moments_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir);
    let store = tmp.path().join("store");
    let first = build(&dir, &store);
    assert!(first.status.success());
    // Time one full build to spread the kills over it.
    touch(&dir, 0);
    let t = Instant::now();
    assert!(build(&dir, &store).status.success());
    let span = t.elapsed().as_micros().max(1000) as u64;
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    // `cargo xtask stress` raises it.
    let rounds: usize = std::env::var("CASCADE_STRESS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for round in 1..=rounds {
        touch(&dir, round);
        let before = lockfiles(&dir);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % span);
        let mut child = cascade(&dir, &store)
            .args(["build", "--env", "test", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        verify_clean(
            &dir,
            &store,
            &format!("round {round} (killed after {delay:?})"),
        );
        let after = lockfiles(&dir);
        for (name, bytes) in &before {
            let now = after.iter().find(|(n, _)| n == name).map(|(_, b)| b);
            assert_eq!(now, Some(bytes), "round {round}: lockfile {name} changed");
        }
        let next = build(&dir, &store);
        assert!(
            next.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&next.stderr)
        );
    }
}

#[test]
fn aborting_at_each_point_of_the_write_sequence_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir);
    let store = tmp.path().join("store");
    let reference = {
        let s = tmp.path().join("reference");
        let out = build(&dir, &s);
        assert!(out.status.success());
        outputs(&out)
    };
    for point in [
        "write:before-rename",
        "write:after-rename",
        "build:before-action",
        "build:after-action",
    ] {
        for n in [1, 2, 5, 12] {
            let at = format!("{point}:{n}");
            let before = lockfiles(&dir);
            let crashed = cascade(&dir, &store)
                .env("CASCADE_CRASH_AT", &at)
                .args(["build", "--env", "test", "--json"])
                .output()
                .unwrap();
            verify_clean(&dir, &store, &at);
            let after = lockfiles(&dir);
            if !crashed.status.success() {
                assert_eq!(before, after, "{at}: a crashed build wrote a lockfile");
            }
            let next = build(&dir, &store);
            assert!(
                next.status.success(),
                "{at}: {}",
                String::from_utf8_lossy(&next.stderr)
            );
            assert_eq!(outputs(&next), reference, "{at}");
            // Start the next point from an empty store again.
            let _ = fs::remove_dir_all(&store);
        }
    }
}

#[test]
fn a_full_disk_is_exit_3_with_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir);
    let store = tmp.path().join("small");
    fs::create_dir_all(&store).unwrap();
    // Room for app's work directory (300 KB of zeros) but not for it and its copy in
    // the store as well.
    if !small_tmpfs(&store, "512k") {
        return;
    }
    // The work directory on the same small disk as the store (not a roomy tmpfs).
    let out = cascade(&dir, &store)
        .env("CASCADE_WORK_DIR", "store")
        .args(["build", "--env", "test", "--json"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let verified = cascade(&dir, &store)
        .args(["cache", "verify"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&store).status();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("No space left on device") || stderr.contains("disk is not full"),
        "a clear error: {stderr}"
    );
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(
        !dir.join("lockfiles").exists(),
        "no lockfile for a failed build"
    );
}

/// A step that runs out of room in a small tmpfs work directory runs again on the
/// store's disk, and the build succeeds with the same outputs, saying so.
#[test]
fn a_full_tmpfs_work_dir_falls_back_to_the_store_s_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    project(&dir);
    let reference = outputs(&build(&dir, &tmp.path().join("reference")));
    let small = tmp.path().join("small-work");
    fs::create_dir_all(&small).unwrap();
    // Room for a's and b's work directories, not for app's 300 KB of zeros.
    if !small_tmpfs(&small, "256k") {
        return;
    }
    let store = tmp.path().join("store");
    let out = cascade(&dir, &store)
        .env("CASCADE_WORK_DIR", &small)
        .args(["build", "--env", "test", "--json"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let left: Vec<_> = fs::read_dir(&small)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten().flatten())
        .collect();
    let _ = Command::new("umount").arg(&small).status();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outputs(&out), reference);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "app")
        .unwrap();
    assert!(
        app["warnings"]
            .to_string()
            .contains("ran again on the store's disk"),
        "{app}"
    );
    assert!(left.is_empty(), "work directories left behind: {left:?}");
}
