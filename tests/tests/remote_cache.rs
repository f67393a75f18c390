//! The remote cache on a real OCI registry (127.0.0.1:5000, started by .ci/run): a clean
//! machine gets everything another one built, modes, and every way of breaking it is
//! survived and said out loud.

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use cascade_tests::{Run, TestProject};

const ENV: &str = "test";

/// base → app; `extra` is more of app's step.
fn project(extra: &str) -> TestProject {
    salted(extra, "")
}

/// `salt` goes into base's data, so its blobs are this test's alone in the registry.
fn salted(extra: &str, salt: &str) -> TestProject {
    cascade_tests::base_app(extra, salt)
}

fn cache_url() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "oci://127.0.0.1:5000/cascade-cache-{}-{t}",
        std::process::id()
    )
}

fn build(p: &TestProject, store: &str, extra: &[&str]) -> Run {
    let mut args = vec!["build", "--env", ENV, "--json", "--store", store];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn store(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

#[test]
fn a_clean_machine_gets_every_node_from_the_remote_cache_and_runs_no_step() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let url = cache_url();
    let dirs = tempfile::tempdir().unwrap();
    let p = project("");
    let first = build(&p, &store(&dirs, "a"), &["--remote-cache", &url]);
    assert_eq!(first.json()["built"], 2);
    assert_eq!(first.json()["remote_cache"]["uploads"], 2);
    // Another checkout of the same sources, another empty store.
    let q = project("");
    let second = build(&q, &store(&dirs, "b"), &["--remote-cache", &url]);
    assert_eq!(second.json()["built"], 0, "{}", second.stderr);
    assert_eq!(second.json()["remote_cache"]["hits"], 2);
    assert_eq!(second.node("app")["remote"], true);
    for n in ["base", "app"] {
        assert_eq!(first.node(n)["output"], second.node(n)["output"]);
    }
    // What came from the registry is in the local store now: a third build is local.
    let third = build(&q, &store(&dirs, "b"), &["--remote-cache", &url]);
    assert_eq!(third.json()["remote_cache"]["hits"], 0);
    assert_eq!(third.json()["cached"], 2);
    let text = q.run(&[
        "build",
        "--env",
        ENV,
        "--store",
        &store(&dirs, "c"),
        "--remote-cache",
        &url,
    ]);
    assert!(text.stderr.contains("(remote cache)"), "{}", text.stderr);
    assert!(
        text.stderr.contains("remote cache: 2 hits"),
        "{}",
        text.stderr
    );
}

#[test]
fn read_mode_never_writes_and_write_mode_never_reads() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let url = cache_url();
    let dirs = tempfile::tempdir().unwrap();
    let p = project("");
    let read = build(
        &p,
        &store(&dirs, "a"),
        &["--remote-cache", &url, "--remote-cache-mode", "read"],
    );
    assert_eq!(read.json()["remote_cache"]["uploads"], 0);
    assert_eq!(read.json()["remote_cache"]["misses"], 2);
    // Nothing was written: another reader misses too.
    let again = build(
        &p,
        &store(&dirs, "b"),
        &["--remote-cache", &url, "--remote-cache-mode", "read"],
    );
    assert_eq!(again.json()["built"], 2);
    let write = build(
        &p,
        &store(&dirs, "c"),
        &["--remote-cache", &url, "--remote-cache-mode", "write"],
    );
    assert_eq!(write.json()["remote_cache"]["uploads"], 2);
    let write_again = build(
        &p,
        &store(&dirs, "d"),
        &["--remote-cache", &url, "--remote-cache-mode", "write"],
    );
    assert_eq!(write_again.json()["built"], 2, "write mode does not read");
    assert_eq!(write_again.json()["remote_cache"]["hits"], 0);
    assert_eq!(
        write_again.json()["remote_cache"]["uploads"],
        0,
        "the first writer won"
    );
}

#[test]
fn a_conflicting_result_is_reported_and_not_overwritten() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let url = cache_url();
    let dirs = tempfile::tempdir().unwrap();
    let p = project("      date +%s%N > out/share/stamp\n");
    let a = build(&p, &store(&dirs, "a"), &["--remote-cache", &url]);
    let b = build(
        &p,
        &store(&dirs, "b"),
        &["--remote-cache", &url, "--remote-cache-mode", "write"],
    );
    assert_ne!(a.node("app")["output"], b.node("app")["output"]);
    let problems = b.json()["remote_cache"]["problems"].to_string();
    assert!(problems.contains("reproducibility: `app`"), "{problems}");
    // The cache kept the first: a reader gets a's output.
    let c = build(&p, &store(&dirs, "c"), &["--remote-cache", &url]);
    assert_eq!(c.node("app")["output"], a.node("app")["output"]);
}

#[test]
fn a_registry_that_is_down_never_fails_a_build_and_says_so_once() {
    let dirs = tempfile::tempdir().unwrap();
    let p = project("");
    // Nothing listens on this port.
    let url = "oci://127.0.0.1:9/cache";
    let r = build(&p, &store(&dirs, "a"), &["--remote-cache", url]);
    assert_eq!(r.json()["built"], 2);
    assert!(r.json()["remote_cache"]["errors"].as_u64().unwrap() > 0);
    let text = p.run(&[
        "build",
        "--env",
        ENV,
        "--store",
        &store(&dirs, "b"),
        "--remote-cache",
        url,
    ]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let loud: Vec<&str> = text
        .stderr
        .lines()
        .filter(|l| l.contains("check the remote"))
        .collect();
    assert_eq!(loud.len(), 1, "said once:\n{}", text.stderr);
    // A malformed address is bad input.
    let bad = p.run(&["build", "--env", ENV, "--remote-cache", "http://x/y"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// The registry's own storage, as .ci/services/registry.sh lays it out.
fn registry_blob(sha_hex: &str) -> Option<PathBuf> {
    let state = std::env::var("CASCADE_SERVICES_DIR").unwrap_or("/tmp/cascade-services".into());
    let p = PathBuf::from(state)
        .join("registry-5000/data/docker/registry/v2/blobs/sha256")
        .join(&sha_hex[..2])
        .join(sha_hex)
        .join("data");
    p.exists().then_some(p)
}

#[test]
fn a_registry_serving_corrupt_bytes_is_caught_and_the_node_built_locally() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let url = cache_url();
    let dirs = tempfile::tempdir().unwrap();
    let salt = format!(" {}", url.rsplit('-').next().unwrap_or_default());
    let p = salted("", &salt);
    let first = build(&p, &store(&dirs, "a"), &["--remote-cache", &url]);
    // The blob of base's out.txt, by its sha256, corrupted where the registry keeps it.
    let content = format!("base data{salt}\n").into_bytes();
    let content = &content[..];
    let sha = {
        let o = std::process::Command::new("sha256sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(content)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let Some(blob) = registry_blob(&sha) else {
        assert!(
            std::env::var("CI").is_err(),
            "the registry's storage is not where .ci/services/registry.sh puts it"
        );
        eprintln!(
            "skipping: the registry on :5000 is not the one .ci/services/registry.sh started"
        );
        return;
    };
    let original = fs::read(&blob).unwrap();
    let mut corrupt = original.clone();
    corrupt[0] ^= 0x20;
    fs::write(&blob, &corrupt).unwrap();
    let second = build(&p, &store(&dirs, "b"), &["--remote-cache", &url]);
    fs::write(&blob, original).unwrap();
    assert!(
        second.json()["remote_cache"]["errors"].as_u64().unwrap() >= 1,
        "{}",
        second.stdout
    );
    assert_eq!(
        second.node("base")["status"],
        "built",
        "never used: built here"
    );
    assert_eq!(second.node("base")["output"], first.node("base")["output"]);
}

/// `gc --remote-cache` deletes the entries no kept lockfile references and keeps the
/// rest: a clean machine still gets the kept build from the registry, while the
/// collected one is built again. `--dry-run` deletes nothing.
#[test]
fn gc_collects_the_remote_cache_down_to_what_kept_lockfiles_reference() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let url = cache_url();
    let dirs = tempfile::tempdir().unwrap();
    let mut p = project("");
    let v1 = build(&p, &store(&dirs, "a"), &["--remote-cache", &url]);
    assert_eq!(v1.json()["remote_cache"]["uploads"], 2);
    // v2: app's recipe changes, base does not. The registry now holds 3 entries.
    p.write(
        "recipes/app.yaml",
        &fs::read_to_string(p.root.join("recipes/app.yaml"))
            .unwrap()
            .replace("outputs: [out]", "env: { V: \"2\" }\noutputs: [out]"),
    );
    p.commit("app", "develop", &[("data.txt", Some("app v2\n"))], "v2");
    let v2 = build(&p, &store(&dirs, "a"), &["--remote-cache", &url]);
    assert_eq!(v2.json()["remote_cache"]["uploads"], 1);

    let store_a = store(&dirs, "a");
    let gc = |extra: &[&str]| {
        let mut args = vec![
            "gc",
            "--keep",
            "1",
            "--store",
            &store_a,
            "--remote-cache",
            &url,
            "--json",
        ];
        args.extend(extra);
        let r = p.run(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()["remote"].clone()
    };
    let dry = gc(&["--dry-run"]);
    assert_eq!(
        (dry["kept"].as_u64(), dry["removed"].as_u64()),
        (Some(2), Some(1))
    );
    let done = gc(&[]);
    assert_eq!(
        (done["kept"].as_u64(), done["removed"].as_u64()),
        (Some(2), Some(1))
    );
    let again = gc(&["--dry-run"]);
    assert_eq!(again["removed"], 0, "the entry is gone");

    // The kept build is still shared; v1's app entry is gone (its base was kept).
    let kept = build(&p, &store(&dirs, "clean"), &["--remote-cache", &url]);
    assert_eq!(kept.json()["remote_cache"]["hits"], 2, "{}", kept.stderr);
    let q = project("");
    let old = build(&q, &store(&dirs, "clean-old"), &["--remote-cache", &url]);
    assert_eq!(old.json()["remote_cache"]["hits"], 1, "{}", old.stderr);
    assert_eq!(old.json()["built"], 1);
}
