//! A secret in cascade's own environment goes nowhere (issue #7): not into a step (which
//! starts from an empty environment, in its own pid namespace, so that even reading
//! every `/proc/*/environ` it sees, its parent's included, finds nothing of cascade's),
//! nor the log, the store, the lockfile, the OCI layout, an exported image or anything
//! cascade prints.
//!
//! The secret is planted in this process's environment, which every test of a binary
//! shares, so this file is its own test binary with a single test.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cascade_tests::{Run, TestProject};

/// 16 random bytes as hex.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every regular file under `dir` (symlinks are not followed).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let t = e.file_type().expect("file type");
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// The bytes of a gzip stream, decompressed by `gzip -dc`; `None` when they are not one.
fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("writer");
    assert!(out.status.success(), "gzip -dc failed");
    Some(out.stdout)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Where `needle` occurs: in the files under `dir` as they are, gunzipped (OCI layers),
/// and inside tar archives (an exported image), extracted with `tar` and searched the
/// same way.
fn places(dir: &Path, needle: &str, out: &mut Vec<String>) {
    let mut all = Vec::new();
    files(dir, &mut all);
    for f in all {
        let bytes = fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let shown = f.display().to_string();
        if contains(&bytes, needle.as_bytes()) {
            out.push(shown.clone());
        }
        if let Some(plain) = gunzip(&bytes) {
            if contains(&plain, needle.as_bytes()) {
                out.push(format!("{shown} (gunzipped)"));
            }
        }
        if shown.ends_with(".tar") {
            let into = tempfile::tempdir().expect("temp dir");
            let ok = Command::new("tar")
                .arg("-xf")
                .arg(&f)
                .arg("-C")
                .arg(into.path())
                .status()
                .expect("tar")
                .success();
            assert!(ok, "tar -xf {shown}");
            let mut inner = Vec::new();
            places(into.path(), needle, &mut inner);
            let prefix = into.path().display().to_string();
            out.extend(
                inner
                    .into_iter()
                    .map(|p| format!("{shown}: {}", p.replace(&prefix, ""))),
            );
        }
    }
}

fn in_run(r: &Run, needle: &str) -> bool {
    r.stdout.contains(needle) || r.stderr.contains(needle)
}

#[test]
fn a_secret_in_cascades_environment_reaches_no_step_log_store_lockfile_or_image() {
    let id = random_hex();
    // Two names: one that looks like cascade's own variables, one that does not.
    let planted = [
        (
            format!("CASCADE_TEST_SECRET_{}", id[..8].to_uppercase()),
            format!("cascade-secret-{}", random_hex()),
        ),
        (
            format!("TEST_SECRET_{}", id[8..16].to_uppercase()),
            format!("plain-secret-{}", random_hex()),
        ),
    ];
    for (name, value) in &planted {
        std::env::set_var(name, value);
        assert_eq!(std::env::var(name).as_deref(), Ok(value.as_str()));
    }
    // A marker that is meant to reach the outputs and the image: it shows the search
    // below does look inside the store, the gzipped layers and the exported archive.
    let marker = format!("marker-{}", random_hex());

    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nregistry: 127.0.0.1:5000/secrets\nsources:\n  app: { repo: ../../repos/app, ref: develop }\n",
    );
    p.write(
        "recipes/app.yaml",
        "runner: { host: { tools: [sh, env, mkdir, cp, cat] } }\n\
         steps:\n  - name: make\n    run: |\n      \
         mkdir -p out/bin\n      \
         env\n      \
         for f in /proc/$PPID/environ /proc/[0-9]*/environ; do cat $f 2>&1 || true; done > out/proc-environ.txt\n      \
         cat out/proc-environ.txt\n      \
         env > out/env.txt\n      \
         cp data.txt out/data.txt\n      \
         cp run.sh out/bin/app\n\
         outputs: [out]\n\
         image:\n  base: scratch\n  layers: [{ from: out, to: /app }]\n  entrypoint: [/app/bin/app]\n",
    );
    p.commit(
        "app",
        "develop",
        &[
            ("data.txt", Some(&format!("{marker}\n"))),
            ("run.sh", Some("#!/bin/sh\ncat /app/data.txt\n")),
        ],
        "initial",
    );

    // A build with --json, one in text, a replay of its lockfile and an export.
    let built = p.build("test", 0);
    let again = p.run(&["build", "--env", "test"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let lock = p.lockfiles().pop().expect("a lockfile");
    let lock_s = lock.display().to_string();
    let replay = p.run(&["build", "--lock", &lock_s, "--json"]);
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    let archive = p.root.join("export/app.tar");
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let export = p.run(&[
        "image",
        "export",
        "app",
        "--env",
        "test",
        "--store",
        &p.root.join("cache").display().to_string(),
        "-o",
        &archive.display().to_string(),
        "--json",
    ]);
    assert_eq!(export.code, 0, "{}", export.stderr);

    // The step ran and dumped its environment (out/env.txt, and the log): what it saw
    // is cascade's own variables and nothing from this process.
    let mut dumps = Vec::new();
    files(&p.root.join("cache"), &mut dumps);
    dumps.retain(|f| {
        fs::read_to_string(f).is_ok_and(|t| t.lines().any(|l| l == "CASCADE_COMPONENT=app"))
    });
    assert!(!dumps.is_empty(), "no `env` output in the store");
    for f in &dumps {
        let text = fs::read_to_string(f).unwrap();
        assert!(text.contains("SOURCE_DATE_EPOCH="), "{text}");
        for (name, value) in &planted {
            assert!(
                !text.contains(name.as_str()) && !text.contains(value.as_str()),
                "the step saw {name}:\n{text}"
            );
        }
    }

    // The search reaches the outputs, the gzipped layers and the exported archive.
    let mut seen = Vec::new();
    places(&p.root, &marker, &mut seen);
    assert!(
        seen.iter()
            .any(|s| s.contains("/cache/oci/") && s.ends_with("(gunzipped)")),
        "the marker is in a layer of the OCI layout: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.contains("app.tar: ") && s.ends_with("(gunzipped)")),
        "the marker is in a layer of the exported archive: {seen:#?}"
    );
    assert!(
        seen.iter().any(|s| s.contains("/cache/blobs/")),
        "the marker is in the store's blobs: {seen:#?}"
    );

    for (name, value) in &planted {
        for (what, r) in [
            ("build --json", &built),
            ("build", &again),
            ("replay", &replay),
            ("export", &export),
        ] {
            assert!(!in_run(r, value), "`{what}` printed the secret of {name}");
            assert!(!in_run(r, name), "`{what}` printed the name {name}");
        }
        let text = fs::read_to_string(&lock).unwrap();
        assert!(!text.contains(value.as_str()), "the lockfile holds {name}");
        // Everything on disk: the project, its lockfiles, the whole store (blobs, trees,
        // keys, actions, logs, images, the OCI layout with its layers gunzipped, tmp)
        // and the exported archive (extracted, its layers gunzipped).
        let mut found = Vec::new();
        places(&p.root, value, &mut found);
        places(&p.root, name, &mut found);
        assert!(found.is_empty(), "{name} leaked into: {found:#?}");
    }
    for (name, _) in &planted {
        std::env::remove_var(name);
    }
}
