//! End to end on the example ecosystem of this repository: generate its git
//! repositories, build `scratch` twice (the second build runs nothing), build it again
//! in another directory with another umask and store (same lockfile bytes), and run
//! the `services` binary from the store: it answers `/version` with its commit. With the
//! registry, the first build fills a remote cache and a clean third checkout gets every
//! node from it.
//!
//! The C components build in the `toolchain` image the graph makes, in cascade's sandbox:
//! no Docker needed. Where an engine answers, the build elsewhere runs them in Docker
//! instead (`--executor docker`) and must give the same lockfile bytes.
//!
//! One test function on purpose: it changes the process umask, which would disturb
//! tests running beside it in this binary.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cascade_tests::{cascade, copy_dir, Run};

/// A copy of this repository's graph and recipes with freshly generated repositories.
fn example_project(dir: &Path) {
    let root = xtask::workspace_root();
    copy_dir(&root.join("graph"), &dir.join("graph"));
    copy_dir(&root.join("recipes"), &dir.join("recipes"));
    xtask::ecosystem::generate(&root, &dir.join("target/ecosystem"))
        .expect("generate the ecosystem");
}

fn build(project: &Path, store: &Path) -> Run {
    build_with(project, store, &[])
}

fn build_with(project: &Path, store: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "--project".into(),
        project.display().to_string(),
        "build".into(),
        "--env".into(),
        "scratch".into(),
        "--json".into(),
        "--store".into(),
        store.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = cascade(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn lockfile(project: &Path, run: &Run) -> String {
    let rel = run.json()["lockfile"]
        .as_str()
        .expect("a lockfile")
        .to_string();
    fs::read_to_string(project.join(rel)).unwrap()
}

#[test]
fn example_ecosystem_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    example_project(&a);
    let store_a = a.join("cache");

    // CI's machine fills a remote cache as it builds (write only: CI never trusts it).
    let remote = cascade_tests::registry("127.0.0.1:5000", 200).then(|| {
        format!(
            "oci://127.0.0.1:5000/example-cache-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    });
    let first = match &remote {
        Some(url) => build_with(
            &a,
            &store_a,
            &["--remote-cache", url, "--remote-cache-mode", "write"],
        ),
        None => build(&a, &store_a),
    };
    assert_eq!(first.json()["built"], 8, "{}", first.stderr);
    let second = build(&a, &store_a);
    assert_eq!(second.json()["built"], 0, "a second build runs no step");
    assert_eq!(second.json()["cached"], 8);
    let lock_a = lockfile(&a, &first);
    assert_eq!(
        lock_a,
        lockfile(&a, &second),
        "same inputs, same lockfile bytes"
    );

    // Another checkout, another store, a hostile umask, and (where an engine answers)
    // the other executor: the same bytes.
    let b = tmp.path().join("elsewhere/deeper/b");
    let old = unsafe { libc::umask(0o077) };
    example_project(&b);
    let executor = if cascade_tests::docker() {
        "docker"
    } else {
        "sandbox"
    };
    let third = build_with(
        &b,
        &tmp.path().join("other-store"),
        &["--executor", executor],
    );
    unsafe { libc::umask(old) };
    assert_eq!(third.json()["built"], 8);
    assert_eq!(
        lock_a,
        lockfile(&b, &third),
        "a build elsewhere, on {executor}, gives the same lockfile"
    );

    // A developer's clean machine, reading the remote cache: every node comes from it
    // (the bar is 95%), no step runs, and the lockfile is the same.
    if let Some(url) = &remote {
        assert_eq!(
            first.json()["remote_cache"]["uploads"],
            8,
            "{}",
            first.stderr
        );
        let c = tmp.path().join("laptop/c");
        example_project(&c);
        let fourth = build_with(
            &c,
            &tmp.path().join("laptop-store"),
            &["--remote-cache", url, "--remote-cache-mode", "read"],
        );
        let hits = fourth.json()["remote_cache"]["hits"].as_u64().unwrap_or(0);
        assert!(
            hits * 100 >= 95 * 8,
            "{hits} of 8 nodes from the remote cache:\n{}",
            fourth.stderr
        );
        assert_eq!(fourth.json()["built"], 0, "{}", fourth.stderr);
        assert_eq!(fourth.json()["remote_cache"]["uploads"], 0);
        assert_eq!(lock_a, lockfile(&c, &fourth));
        eprintln!("remote cache on the example: {hits} of 8 nodes");
    }

    // The services binary, from the store, answers /version with its commit.
    let lock = cascade_lock::read("lock.yaml", &lock_a).unwrap();
    // The C components ran in the toolchain's image: that image is their runner.
    let toolchain = lock.nodes["toolchain"].image.as_ref().expect("an image");
    let in_toolchain = cascade_core::RunnerIdentity::Container {
        image: toolchain.digest.clone(),
    }
    .digest();
    for c in ["tessellation", "metakit", "ottochain", "services"] {
        assert_eq!(lock.nodes[c].runner, in_toolchain, "{c}");
    }
    assert_ne!(
        lock.nodes["sdk"].runner, in_toolchain,
        "the sdk runs on the host"
    );
    let services = &lock.nodes["services"];
    // Both images are in the lockfile (identical in both checkouts, as compared above),
    // and their smoke tests ran: /version answers the commit, the explorer's page is
    // served by the services image it is based on.
    let image = services.image.as_ref().expect("services has an image");
    assert!(
        image.reference.ends_with(&format!(
            "/services:develop-{}",
            &services.source.commit[..7]
        )),
        "{}",
        image.reference
    );
    assert!(lock.nodes["explorer"].image.is_some());
    assert_eq!(services.tests["version"], cascade_lock::TestResult::Passed);
    assert_eq!(
        lock.nodes["explorer"].tests["page"],
        cascade_lock::TestResult::Passed
    );
    let store = cascade_store::Store::open(&store_a).unwrap();
    let out = tmp.path().join("services-out");
    fs::create_dir(&out).unwrap();
    store.materialize(&services.output, &out).unwrap();
    let mut child = Command::new(out.join("bin/services"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start services");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /version HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .unwrap();
                let mut resp = String::new();
                s.read_to_string(&mut resp).unwrap();
                break resp;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("services never answered: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains(&services.source.commit), "{body}");
    assert!(
        body.contains(&lock.nodes["sdk"].source.version),
        "embeds the sdk version: {body}"
    );
    // Materialized outputs are read-only; make them removable for the temp dir.
    cascade_store::remove_tree(&out).unwrap();
}
