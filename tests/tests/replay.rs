//! `cascade build --lock FILE [--check]`: a lockfile builds exactly what it pins, after
//! the manifests moved on, in a cold store elsewhere, and `--check` names what does not
//! reproduce.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cascade_tests::{Run, TestProject};

const ENV: &str = "test";

/// base → app, each concatenating its input and its data.txt; `extra` goes into app's
/// step.
fn project(extra: &str) -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 base: { repo: ../../repos/base, ref: develop }\n\
         \x20 app:  { repo: ../../repos/app,  ref: develop }\n",
    );
    p.write("recipes/base.yaml", &recipe(&[], ""));
    p.write("recipes/app.yaml", &recipe(&["base"], extra));
    for name in ["base", "app"] {
        let data = format!("{name} data\n");
        p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
    }
    p
}

fn recipe(inputs: &[&str], extra: &str) -> String {
    let cats: Vec<String> = inputs
        .iter()
        .map(|i| format!("inputs/{i}/out/out.txt"))
        .collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir, date] }} }}\nsteps:\n  - name: make\n    run: |\n      mkdir -p out\n      cat {} data.txt > out/out.txt\n{extra}outputs: [out]\n",
        inputs.join(", "),
        cats.join(" ")
    )
}

fn replay(p: &TestProject, lock: &std::path::Path, extra: &[&str], code: i32) -> Run {
    let lock = lock.display().to_string();
    let mut args = vec!["build", "--lock", &lock, "--json"];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn outputs(r: &Run) -> Vec<(String, String)> {
    ["base", "app"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                r.node(n)["output"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_lockfile_replays_after_the_recipe_and_sources_moved_on_and_runs_no_step() {
    let mut p = project("");
    let first = p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    // The recipe and a source change; a build makes something else.
    p.write(
        "recipes/app.yaml",
        &recipe(&["base"], "      echo v2 >> out/out.txt\n"),
    );
    p.commit("base", "develop", &[("data.txt", Some("base v2\n"))], "v2");
    let second = p.build(ENV, 0);
    assert_ne!(outputs(&first), outputs(&second));
    let before = p.lockfiles().len();

    let r = replay(&p, &lock, &[], 0);
    assert_eq!(r.json()["built"], 0, "a warm store runs no step");
    assert_eq!(outputs(&r), outputs(&first));
    assert_eq!(r.json()["replay"]["mismatches"], serde_json::json!([]));
    assert_eq!(r.json()["lockfile"], serde_json::Value::Null);
    assert_eq!(
        p.lockfiles().len(),
        before,
        "no new lockfile without --write-lock"
    );
    let lock_s = lock.display().to_string();
    let text = p.run(&["build", "--lock", &lock_s]);
    assert!(
        text.stderr.contains("every digest reproduced"),
        "{}",
        text.stderr
    );
    assert!(
        text.stderr.contains("no new lockfile written"),
        "{}",
        text.stderr
    );

    // --write-lock writes the same bytes again.
    let w = replay(&p, &lock, &["--write-lock"], 0);
    let written = p.root.join(w.json()["lockfile"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(written).unwrap(),
        fs::read_to_string(&lock).unwrap()
    );
}

#[test]
fn a_cold_store_in_another_directory_rebuilds_the_same_digests() {
    let p = project("");
    let first = p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    let cold = tempfile::tempdir().unwrap();
    let store = cold.path().join("elsewhere/store").display().to_string();
    let r = replay(&p, &lock, &["--store", &store], 0);
    assert_eq!(r.json()["built"], 2);
    assert_eq!(outputs(&r), outputs(&first));
}

#[test]
fn check_passes_on_an_honest_build() {
    let p = project("");
    p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    let r = replay(&p, &lock, &["--check"], 0);
    assert_eq!(r.json()["built"], 2, "--check ignores the cache");
    assert_eq!(r.json()["replay"]["check"], true);
}

#[test]
fn check_names_the_file_that_does_not_reproduce() {
    let p = project("      date +%s%N > out/stamp.txt\n");
    p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    let r = replay(&p, &lock, &["--check"], 1);
    let m = &r.json()["replay"]["mismatches"][0];
    assert_eq!(m["node"], "app");
    assert_eq!(m["what"], "output");
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{m}");
    assert_eq!(files[0]["path"], "out/stamp.txt");
    assert_eq!(files[0]["change"], "content");
    let diff: Vec<&str> = files[0]["diff"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(diff.iter().any(|l| l.starts_with('-')), "{diff:?}");
    assert!(diff.iter().any(|l| l.starts_with('+')), "{diff:?}");
    assert!(
        r.stderr.contains("DIFFERS  app output") && r.stderr.contains("out/stamp.txt (content)"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.json()["replay"]["mismatches"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn an_edited_lockfile_is_a_diagnostic_at_its_line() {
    let p = project("");
    // The version of `app` (the first in the lockfile) is stamped, so its key covers
    // it.
    p.write(
        "recipes/app.yaml",
        &format!("stamp: [version]\n{}", recipe(&["base"], "")),
    );
    p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    let text = fs::read_to_string(&lock).unwrap();
    // A hand-edited version: the recorded key no longer matches.
    let edited = p.root.join("edited.yaml");
    fs::write(
        &edited,
        text.replacen("version: 0.0.0-dev.1", "version: 9.9.9", 1),
    )
    .unwrap();
    let r = replay(&p, &edited, &[], 2);
    assert!(
        r.stderr.contains("does not match its ingredients"),
        "{}",
        r.stderr
    );
    insta::assert_snapshot!("edited", p.redact(&r.stderr));

    // A commit that no longer exists.
    let gone = p.root.join("gone.yaml");
    let commit = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit: "))
        .unwrap()
        .to_string();
    fs::write(&gone, text.replace(&commit, &"1".repeat(40))).unwrap();
    let r = replay(&p, &gone, &[], 2);
    assert!(r.stderr.contains("cannot be found"), "{}", r.stderr);

    // Not a lockfile at all, and the wrong environment.
    fs::write(&gone, "format: cascade-lock/3\nnodes: [").unwrap();
    replay(&p, &gone, &[], 2);
    let lock_s = lock.display().to_string();
    let r = p.run(&["build", "--env", "other", "--lock", &lock_s]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn a_recipe_gone_from_store_and_project_says_so_precisely() {
    let p = project("");
    p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    p.write("recipes/app.yaml", &recipe(&["base"], "      true\n"));
    let cold = tempfile::tempdir().unwrap();
    let store = cold.path().display().to_string();
    let r = replay(&p, &lock, &["--store", &store], 2);
    assert!(
        r.stderr
            .contains("the recipe of `app` is neither in the store"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_different_host_tool_is_a_risk_and_an_error_when_strict() {
    let p = project("      stamp >> out/out.txt\n");
    p.write(
        "recipes/app.yaml",
        &fs::read_to_string(p.root.join("recipes/app.yaml"))
            .unwrap()
            .replace("date]", "date, stamp]"),
    );
    let tools = tempfile::tempdir().unwrap();
    let tool = tools.path().join("stamp");
    fs::write(&tool, "#!/bin/sh\necho stamp\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let opts =
        |p: &TestProject, lock: Option<std::path::PathBuf>, strict: bool| cascade::BuildOptions {
            project: p.root.clone(),
            env: if lock.is_some() {
                String::new()
            } else {
                ENV.into()
            },
            store: p.root.join("cache"),
            jobs: 2,
            keep_going: false,
            stamp: "20260101T000000Z".into(),
            tools: cascade_exec::Tools::new(path.clone().into()),
            publish: cascade::PublishOptions::default(),
            replay: cascade::ReplayOptions {
                lock,
                strict,
                ..Default::default()
            },
            remote: cascade::RemoteOptions::default(),
            executor: cascade::ExecutorKind::default(),
            work_dir: None,
            exiting: false,
            sign: None,
        };
    let built = cascade::build(&opts(&p, None, false), &|_| {}).unwrap();
    assert!(built.success());
    let lock = built.lockfile.clone().unwrap();
    let lock = if lock.is_absolute() {
        lock
    } else {
        std::env::current_dir().unwrap().join(lock)
    };
    // Another `stamp` with the same output: the replay reproduces, but warns.
    fs::write(
        &tool,
        "#!/bin/sh\n# another build of the tool\necho stamp\n",
    )
    .unwrap();
    let r = cascade::build(&opts(&p, Some(lock.clone()), false), &|_| {}).unwrap();
    let replay = r.replay.as_ref().unwrap();
    assert_eq!(replay.risks.len(), 1, "{:?}", replay.risks);
    assert!(
        replay.risks[0].contains("tools stamp"),
        "{:?}",
        replay.risks
    );
    assert!(r.success(), "same outputs: reproduced, with a warning");
    match cascade::build(&opts(&p, Some(lock), true), &|_| {}) {
        Err(e @ cascade::Error::ReproducibilityRisk { .. }) => {
            assert_eq!(e.exit_code(), cascade::ExitCode::Environment)
        }
        other => panic!("--strict must refuse: {:?}", other.map(|r| r.success())),
    }
}

#[test]
fn rollback_replays_the_previous_lockfile_without_a_step_and_makes_it_the_newest() {
    let mut p = project("");
    let none = p.run(&["rollback", "--env", ENV]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    let first = p.build(ENV, 0);
    let l1 = fs::read_to_string(p.lockfiles().pop().unwrap()).unwrap();
    p.commit("base", "develop", &[("data.txt", Some("base v2\n"))], "v2");
    // Two builds of the new state in a row: the previous *different* one is l1.
    let second = p.build(ENV, 0);
    p.build(ENV, 0);
    assert_ne!(outputs(&first), outputs(&second));

    let store = p.root.join("cache").display().to_string();
    let r = p.run(&["rollback", "--env", ENV, "--json", "--store", &store]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["built"], 0, "the store has it all: no step runs");
    assert_eq!(outputs(&r), outputs(&first));
    assert!(r.stderr.contains("rolling back `test`"), "{}", r.stderr);
    let newest = cascade::newest_lockfile(&p.root, ENV).unwrap();
    assert_eq!(
        fs::read_to_string(newest).unwrap(),
        l1,
        "the rollback is now the newest"
    );
    // And a plan against it: today's sources differ from what is current.
    let plan = p.run(&["plan", "--env", ENV, "--json"]);
    assert_eq!(plan.node("base")["reasons"][0]["kind"], "source");
}

fn store_files(p: &TestProject) -> usize {
    fn count(d: &std::path::Path) -> usize {
        fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    ["blobs", "trees", "keys", "actions"]
        .iter()
        .map(|k| count(&p.root.join("cache").join(k)))
        .sum()
}

#[test]
fn gc_keeps_the_newest_lockfiles_reproducible_and_frees_the_rest() {
    let mut p = project("");
    let none = p.run(&["gc"]);
    assert_eq!(
        none.code, 2,
        "no lockfile: nothing is known to be worth keeping"
    );
    p.build(ENV, 0);
    let old = p.lockfiles().pop().unwrap();
    p.commit("base", "develop", &[("data.txt", Some("base v2\n"))], "v2");
    p.build(ENV, 0);
    let new = cascade::newest_lockfile(&p.root, ENV).unwrap();
    let store = p.root.join("cache").display().to_string();

    // Keeping both: nothing to free.
    let both = p.run(&["gc", "--json", "--store", &store]);
    assert_eq!(both.code, 0, "{}", both.stderr);
    assert_eq!(both.json()["removed"], serde_json::json!({}));

    // A dry run of keeping one says what would go, and removes nothing.
    let files = store_files(&p);
    let dry = p.run(&[
        "gc",
        "--keep",
        "1",
        "--dry-run",
        "--json",
        "--store",
        &store,
    ]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.json()["removed"]["trees"][0].as_u64().unwrap() > 0);
    assert_eq!(store_files(&p), files);

    let real = p.run(&["gc", "--keep", "1", "--store", &store]);
    assert_eq!(real.code, 0, "{}", real.stderr);
    assert!(real.stderr.contains("removed "), "{}", real.stderr);
    assert!(store_files(&p) < files);
    // The kept lockfile replays without a step; the collected one must rebuild.
    let kept = replay(&p, &new, &[], 0);
    assert_eq!(kept.json()["built"], 0);
    let gone = replay(&p, &old, &[], 0);
    assert!(gone.json()["built"].as_u64().unwrap() > 0);
}

/// The project's own git history holds the recipe a cold store lacks.
#[test]
fn a_recipe_changed_since_is_recovered_from_the_projects_git_history() {
    let p = project("");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&p.root)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "graph", "recipes"]);
    git(&["commit", "-q", "-m", "graph"]);
    let first = p.build(ENV, 0);
    let lock = p.lockfiles().pop().unwrap();
    p.write(
        "recipes/app.yaml",
        &recipe(&["base"], "      echo v2 >> out/out.txt\n"),
    );
    git(&["commit", "-q", "-am", "app v2"]);
    let cold = tempfile::tempdir().unwrap();
    let store = cold.path().display().to_string();
    let r = replay(&p, &lock, &["--store", &store], 0);
    assert_eq!(r.json()["built"], 2);
    assert_eq!(outputs(&r), outputs(&first));
}
