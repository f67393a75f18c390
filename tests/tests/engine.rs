//! The engine end to end, on temporary git repositories: caching, invalidation,
//! early cutoff, failures, determinism.

use std::fs;

use cascade_tests::TestProject;

/// A diamond (base → left, right → top) plus an independent `solo`.
fn diamond() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 base:  { repo: ../../repos/base,  ref: develop }\n\
         \x20 left:  { repo: ../../repos/left,  ref: develop }\n\
         \x20 right: { repo: ../../repos/right, ref: develop }\n\
         \x20 top:   { repo: ../../repos/top,   ref: develop }\n\
         \x20 solo:  { repo: ../../repos/solo,  ref: develop }\n",
    );
    p.write("recipes/base.yaml", &recipe(&[]));
    p.write("recipes/left.yaml", &recipe(&["base"]));
    p.write("recipes/right.yaml", &recipe(&["base"]));
    p.write("recipes/top.yaml", &recipe(&["left", "right"]));
    p.write("recipes/solo.yaml", &recipe(&[]));
    for name in ["base", "left", "right", "top", "solo"] {
        let data = format!("{name} data\n");
        p.commit(
            name,
            "develop",
            &[("data.txt", Some(&data)), ("notes.txt", Some("notes\n"))],
            "initial",
        );
    }
    p
}

/// A recipe that concatenates its inputs' outputs and its own data.txt.
fn recipe(inputs: &[&str]) -> String {
    let cats: Vec<String> = inputs
        .iter()
        .map(|i| format!("inputs/{i}/out/out.txt"))
        .collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir] }} }}\nsteps:\n  - name: make\n    run: |\n      mkdir -p out\n      cat {} data.txt > out/out.txt\noutputs: [out/out.txt]\n",
        inputs.join(", "),
        cats.join(" ")
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn second_build_runs_no_step_and_writes_an_identical_lockfile() {
    let p = diamond();
    let first = p.build("test", 0);
    assert_eq!(first.json()["built"], 5, "{}", first.stderr);
    let second = p.build("test", 0);
    assert_eq!(second.json()["built"], 0);
    assert_eq!(second.json()["cached"], 5);
    let locks = p.lockfiles();
    assert!(!locks.is_empty());
    let a = fs::read(
        first.json()["lockfile"]
            .as_str()
            .map(|l| p.root.join(l))
            .unwrap(),
    )
    .unwrap();
    let b = fs::read(
        second.json()["lockfile"]
            .as_str()
            .map(|l| p.root.join(l))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a, b, "same inputs, same lockfile bytes");
    let text = String::from_utf8(a).unwrap();
    assert!(text.starts_with("format: cascade-lock/4\n"), "{text}");
    assert!(
        !text.contains(&p.root.display().to_string()),
        "no absolute paths in a lockfile"
    );
}

#[test]
fn commit_in_an_upstream_repo_rebuilds_it_and_its_dependents_only() {
    let mut p = diamond();
    p.build("test", 0);
    p.commit(
        "base",
        "develop",
        &[("data.txt", Some("base data v2\n"))],
        "change",
    );
    let r = p.build("test", 0);
    assert_eq!(
        sorted(r.with_status("built")),
        ["base", "left", "right", "top"]
    );
    assert_eq!(r.with_status("cached"), ["solo"]);

    p.commit(
        "left",
        "develop",
        &[("data.txt", Some("left data v2\n"))],
        "change",
    );
    let r = p.build("test", 0);
    assert_eq!(sorted(r.with_status("built")), ["left", "top"]);
    assert_eq!(sorted(r.with_status("cached")), ["base", "right", "solo"]);
}

#[test]
fn a_change_that_does_not_reach_the_outputs_is_cut_off_early() {
    let mut p = diamond();
    let first = p.build("test", 0);
    p.commit(
        "base",
        "develop",
        &[("notes.txt", Some("new notes\n"))],
        "docs only",
    );
    let r = p.build("test", 0);
    assert_eq!(r.with_status("built"), ["base"], "{}", r.stderr);
    assert_eq!(
        sorted(r.with_status("cached")),
        ["left", "right", "solo", "top"]
    );
    let out = |run: &cascade_tests::Run, name: &str| {
        let n = run.node(name);
        (n["key"].clone(), n["output"].clone())
    };
    assert_ne!(
        out(&first, "base").0,
        out(&r, "base").0,
        "base's key changed"
    );
    assert_eq!(
        out(&first, "base").1,
        out(&r, "base").1,
        "base's output did not"
    );
    assert_eq!(out(&first, "top"), out(&r, "top"), "top's key is unchanged");
}

#[test]
fn a_failing_step_leaves_the_lockfile_and_the_store_intact() {
    let p = diamond();
    p.build("test", 0);
    let before = p.lockfiles();
    let lock_bytes = fs::read(&before[0]).unwrap();
    p.write(
        "recipes/top.yaml",
        "inputs: [left, right]\nrunner: { host: { tools: [sh] } }\nsteps:\n  - name: boom\n    run: |\n      echo compiling top\n      echo 'error: it broke' >&2\n      exit 7\noutputs: [out/out.txt]\n",
    );
    let r = p.build("test", 1);
    assert_eq!(r.with_status("failed"), ["top"]);
    assert_eq!(p.lockfiles(), before, "no lockfile for a failed build");
    assert_eq!(fs::read(&before[0]).unwrap(), lock_bytes);
    let text = p.run(&["build", "--env", "test"]);
    assert_eq!(text.code, 1);
    assert!(
        text.stderr.contains("step `boom` failed (exit code 7)"),
        "{}",
        text.stderr
    );
    assert!(text.stderr.contains("| error: it broke"), "{}", text.stderr);
    assert!(text.stderr.contains("full log: "), "{}", text.stderr);
    // The store still has everything: restoring the recipe builds nothing.
    p.write("recipes/top.yaml", &recipe(&["left", "right"]));
    let r = p.build("test", 0);
    assert_eq!(r.json()["built"], 0);
}

#[test]
fn keep_going_builds_everything_that_does_not_depend_on_the_failure() {
    let p = diamond();
    p.write(
        "recipes/left.yaml",
        "inputs: [base]\nrunner: { host: { tools: [sh] } }\nsteps:\n  - name: boom\n    run: exit 1\noutputs: [out]\n",
    );
    let r = p.run(&[
        "build",
        "--env",
        "test",
        "--json",
        "--keep-going",
        "-j",
        "1",
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(r.with_status("failed"), ["left"]);
    assert_eq!(r.with_status("skipped"), ["top"]);
    assert_eq!(sorted(r.with_status("built")), ["base", "right", "solo"]);
    assert!(p.lockfiles().is_empty());
}

#[test]
fn a_step_that_runs_too_long_is_killed() {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n  slow: { repo: ../../repos/slow, ref: main }\n",
    );
    p.write(
        "recipes/slow.yaml",
        "runner: { host: { tools: [sh, sleep] } }\ntimeout: 1s\nsteps:\n  - name: nap\n    run: sleep 60\noutputs: [out]\n",
    );
    p.commit("slow", "main", &[("a", Some("a"))], "init");
    let started = std::time::Instant::now();
    let r = p.build("test", 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let j = r.json();
    assert!(
        j["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{j}"
    );
}

#[test]
fn uncommitted_files_never_reach_a_step() {
    let p = diamond();
    p.build("test", 0);
    // Dirty the work tree of a repository: the build reads the object database only.
    fs::write(p.repo_path("base").join("data.txt"), "uncommitted\n").unwrap();
    let r = p.build("test", 0);
    assert_eq!(r.json()["built"], 0);
}

#[test]
fn two_checkouts_in_different_directories_give_identical_lockfiles() {
    let a = diamond();
    let b = diamond();
    let ra = a.build("test", 0);
    let rb = b.build("test", 0);
    let la = fs::read(a.root.join(ra.json()["lockfile"].as_str().unwrap())).unwrap();
    let lb = fs::read(b.root.join(rb.json()["lockfile"].as_str().unwrap())).unwrap();
    assert_eq!(
        String::from_utf8(la).unwrap(),
        String::from_utf8(lb).unwrap()
    );
}

#[test]
fn undeclared_output_is_a_failure_with_a_clear_message() {
    let p = diamond();
    p.write(
        "recipes/solo.yaml",
        "runner: { host: { tools: [sh] } }\nsteps:\n  - name: nothing\n    run: 'true'\noutputs: [out/missing.txt]\n",
    );
    let r = p.build("test", 1);
    let solo = r.node("solo");
    assert_eq!(
        solo["error"],
        "declared output `out/missing.txt` was not produced"
    );
}

/// Every file under a store sub-directory.
fn store_files(p: &TestProject, sub: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.root.join("cache").join(sub)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = fs::read(path).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_action_results_are_reported_discarded_and_rebuilt() {
    let p = diamond();
    p.build("test", 0);
    for f in store_files(&p, "actions") {
        flip_a_byte(&f);
    }
    let r = p.build("test", 0);
    assert_eq!(r.json()["built"], 5, "nothing corrupt is used");
    let warned = r.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["warnings"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w.as_str().unwrap_or("").contains("corrupt"))
            })
        })
        .count();
    assert_eq!(warned, 5, "{}", r.stdout);
    assert_eq!(p.build("test", 0).json()["built"], 0, "and stored again");
}

#[test]
fn a_truncated_output_blob_rebuilds_its_node() {
    let p = diamond();
    p.build("test", 0);
    let blobs = store_files(&p, "blobs");
    // The blob holding base's output ("base data\n").
    let base = blobs
        .iter()
        .find(|b| fs::read(b).unwrap() == b"base data\n")
        .unwrap();
    fs::write(base, b"base").unwrap();
    let r = p.build("test", 0);
    assert_eq!(r.with_status("built"), ["base"], "{}", r.stderr);
    assert_eq!(
        fs::read(base).unwrap(),
        b"base data\n",
        "rebuilt and stored again"
    );
}

#[test]
fn a_flipped_byte_in_an_input_is_never_used() {
    let mut p = diamond();
    p.build("test", 0);
    let blobs = store_files(&p, "blobs");
    let base = blobs
        .iter()
        .find(|b| fs::read(b).unwrap() == b"base data\n")
        .unwrap()
        .clone();
    flip_a_byte(&base);
    // left must rebuild and so reads base's output: the corruption is caught there.
    p.commit(
        "left",
        "develop",
        &[("data.txt", Some("left data v2\n"))],
        "change",
    );
    let r = p.build("test", 1);
    let left = r.node("left");
    assert!(
        left["error"]
            .as_str()
            .unwrap()
            .contains("input `base` is corrupt"),
        "{left}"
    );
    // The bad blob was removed, so the next build rebuilds base, then left.
    let r = p.build("test", 0);
    assert_eq!(
        sorted(r.with_status("built")),
        ["base", "left", "top"],
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(&base).unwrap(), b"base data\n");
}

#[test]
fn undeclared_environment_never_reaches_a_key_but_declared_env_does() {
    let p = diamond();
    p.build("test", 0);
    // Variables of the calling shell do not reach steps, so they cannot change keys.
    std::env::set_var("GREETING", "from the caller");
    assert_eq!(p.build("test", 0).json()["built"], 0);
    // A declared one does: exactly solo rebuilds.
    p.write(
        "recipes/solo.yaml",
        &recipe(&[]).replace("steps:", "env: { GREETING: hello }\nsteps:"),
    );
    let r = p.build("test", 0);
    assert_eq!(r.with_status("built"), ["solo"]);
}

/// `--jobs` bounds the steps that run at once, although the scheduler has more threads
/// than that (they look nodes up in the cache meanwhile): each step holds a directory
/// for a moment and notes when another step already held it.
#[test]
fn jobs_bound_the_steps_that_run_at_once() {
    let marks = cascade_tests::step_writable_dir();
    let overlaps = |jobs: &str| -> usize {
        let dir = marks.path().join(format!("jobs-{jobs}"));
        fs::create_dir_all(&dir).unwrap();
        let mut p = TestProject::new();
        let names = ["a", "b", "c", "d", "e", "f"];
        let mut env = String::from("name: test\nmode: branch\nsources:\n");
        for name in names {
            env.push_str(&format!(
                "  {name}: {{ repo: ../../repos/{name}, ref: develop }}\n"
            ));
            p.write(
                &format!("recipes/{name}.yaml"),
                &format!(
                    "runner: {{ host: {{ tools: [sh, mkdir, rmdir, sleep, cat] }} }}\nenv:\n  DIR: {}\nsteps:\n  - name: make\n    run: |\n      if mkdir \"$DIR/running\" 2>/dev/null; then held=1; else echo overlap >> \"$DIR/overlaps\"; held=; fi\n      sleep 0.2\n      if [ -n \"$held\" ]; then rmdir \"$DIR/running\"; fi\n      mkdir -p out\n      cat data.txt > out/out.txt\noutputs: [out/out.txt]\n",
                    dir.display()
                ),
            );
            p.commit(name, "develop", &[("data.txt", Some(name))], "initial");
        }
        p.write("graph/environments/test.yaml", &env);
        let r = p.run(&["build", "--env", "test", "--jobs", jobs, "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.json()["built"], 6, "{}", r.stderr);
        fs::read_to_string(dir.join("overlaps"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(overlaps("1"), 0, "two steps ran at once with --jobs 1");
    // The same check sees steps overlap when they may.
    assert!(
        overlaps("3") > 0,
        "no two steps ever ran at once with --jobs 3"
    );
}
