//! `cascade lock diff`: two builds of a small project, with a commit, a component added
//! and one removed in between, compared as text and as JSON.

use std::fs;
use std::path::{Path, PathBuf};

use cascade_tests::{replace_after, Run, TestProject};
use serde_json::Value;

const ENV: &str = "test";

/// core → sdk → app (app has an image), plus `extra`: one component that the second
/// build replaces (`old` → `new`).
fn project(extra: &str) -> TestProject {
    let mut p = TestProject::new();
    write_env(&p, extra);
    p.write("recipes/core.yaml", &recipe(&[], ""));
    p.write("recipes/sdk.yaml", &recipe(&["core"], ""));
    p.write(
        "recipes/app.yaml",
        &recipe(
            &["sdk"],
            "image:\n  base: scratch\n  layers: [{ from: out/out.txt, to: /srv/out.txt }]\n",
        ),
    );
    p.write("recipes/old.yaml", &recipe(&[], ""));
    p.write("recipes/new.yaml", &recipe(&["core"], ""));
    for name in ["core", "sdk", "app", "old", "new"] {
        let data = format!("{name} data\n");
        let sha = p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
        p.tag(name, "v0.1.0", &sha);
    }
    p
}

fn write_env(p: &TestProject, extra: &str) {
    p.write(
        "graph/environments/test.yaml",
        &format!(
            "name: test\nmode: branch\nsources:\n\
             \x20 core: {{ repo: ../../repos/core, ref: develop }}\n\
             \x20 sdk:  {{ repo: ../../repos/sdk,  ref: develop }}\n\
             \x20 app:  {{ repo: ../../repos/app,  ref: develop }}\n\
             \x20 {extra}: {{ repo: ../../repos/{extra}, ref: develop }}\n"
        ),
    );
}

fn recipe(inputs: &[&str], extra: &str) -> String {
    let cats: Vec<String> = inputs
        .iter()
        .map(|i| format!("inputs/{i}/out/out.txt"))
        .collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir] }} }}\nsteps:\n  - name: make\n    run: |\n      mkdir -p out\n      cat {} data.txt > out/out.txt\noutputs: [out/out.txt]\n{extra}",
        inputs.join(", "),
        cats.join(" ")
    )
}

/// The lockfile a `--json` build wrote.
fn lockfile(r: &Run) -> PathBuf {
    PathBuf::from(r.json()["lockfile"].as_str().expect("a lockfile"))
}

/// Two builds: the first with `old`, the second after a commit to sdk and with `new`
/// instead of `old`. Returns both lockfiles.
fn two_builds() -> (TestProject, PathBuf, PathBuf) {
    let mut p = project("old");
    let first = lockfile(&p.build(ENV, 0));
    p.commit(
        "sdk",
        "develop",
        &[("data.txt", Some("sdk data, better\n"))],
        "better",
    );
    write_env(&p, "new");
    let second = lockfile(&p.build(ENV, 0));
    assert_ne!(first, second);
    (p, first, second)
}

fn diff(p: &TestProject, args: &[&str], code: i32) -> Run {
    let mut full = vec!["lock", "diff"];
    full.extend(args);
    let r = p.run(&full);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Digests and stamps replaced (keys depend on the host's tools, stamps on the clock);
/// commit SHAs are stable (fixed dates).
fn redacted(p: &TestProject, text: &str) -> String {
    let mut s = p.redact(text);
    for prefix in ["blake3:", "sha256:"] {
        s = replace_after(&s, prefix, |c| c.is_ascii_hexdigit(), "[digest]");
    }
    replace_after(
        &s,
        "test-2",
        |c| c.is_ascii_alphanumeric() || c == '-',
        "[stamp]",
    )
    .replace("test-2[stamp]", "test-[stamp]")
}

fn node<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {j}"))
}

#[test]
fn two_builds_as_text() {
    let (p, first, second) = two_builds();
    let r = diff(&p, &[path(&first), path(&second)], 0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    insta::assert_snapshot!(redacted(&p, &r.stdout));
}

#[test]
fn two_builds_as_json() {
    let (p, first, second) = two_builds();
    let r = diff(&p, &[path(&first), path(&second), "--json"], 0);
    let j = r.json();
    assert_eq!(
        (&j["changed"], &j["unchanged"], &j["added"], &j["removed"]),
        (
            &Value::from(2),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        )
    );
    // Build order of the newer lockfile; `old` where the older one had it.
    let order: Vec<&str> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["core", "new", "old", "sdk", "app"]);
    let sdk = node(&j, "sdk");
    assert_eq!(sdk["change"], "changed");
    assert_eq!(
        sdk["fields"],
        serde_json::json!(["version", "commit", "output"])
    );
    assert_eq!(sdk["before"]["version"], "0.1.0");
    assert_eq!(sdk["after"]["version"], "0.1.1-dev.1");
    assert_eq!(
        sdk["commits_apart"],
        serde_json::json!({ "ahead": 1, "behind": 0 })
    );
    let app = node(&j, "app");
    assert_eq!(app["fields"], serde_json::json!(["output", "image"]));
    assert_eq!(app["commits_apart"], Value::Null);
    assert_eq!(node(&j, "new")["before"], Value::Null);
    assert_eq!(node(&j, "old")["after"], Value::Null);
    insta::assert_snapshot!(redacted(&p, &r.stdout));
}

#[test]
fn env_and_to_compare_the_newest_lockfile_of_the_environment() {
    let (p, first, _) = two_builds();
    // The newest is the second build: going back to the first is the reverse plan.
    let r = diff(&p, &["--env", ENV, "--to", path(&first), "--json"], 0);
    let j = r.json();
    assert!(
        j["from"].as_str().unwrap().starts_with("lockfiles/test-"),
        "{}",
        j["from"]
    );
    assert_eq!(
        (&j["added"], &j["removed"]),
        (&Value::from(1), &Value::from(1))
    );
    assert_eq!(node(&j, "old")["change"], "added");
    assert_eq!(node(&j, "new")["change"], "removed");
    assert_eq!(
        node(&j, "sdk")["commits_apart"],
        serde_json::json!({ "ahead": 0, "behind": 1 })
    );
    let text = diff(&p, &["--env", ENV, "--to", path(&first)], 0);
    assert!(text.stdout.contains("(1 commit back)"), "{}", text.stdout);
}

#[test]
fn the_same_lockfile_is_all_unchanged() {
    let (p, first, _) = two_builds();
    let r = diff(&p, &[path(&first), path(&first)], 0);
    assert!(
        r.stdout
            .ends_with("\n0 changed, 4 unchanged, 0 added, 0 removed\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_repository_that_cannot_be_opened_only_leaves_the_count_out() {
    let (p, first, second) = two_builds();
    fs::remove_dir_all(p.repo_path("sdk")).unwrap();
    let r = diff(&p, &[path(&first), path(&second), "--json"], 0);
    let sdk = node(&r.json(), "sdk").clone();
    assert_eq!(sdk["commits_apart"], Value::Null);
    let text = diff(&p, &[path(&first), path(&second)], 0);
    let line = text.stdout.lines().find(|l| l.contains(" sdk ")).unwrap();
    assert!(!line.contains("commit)"), "{line}");
}

#[test]
fn a_malformed_lockfile_is_exit_2_with_a_diagnostic() {
    let (p, first, _) = two_builds();
    // The newest lockfile of `test`, named relative to the project in the diagnostic.
    let bad = p.root.join("lockfiles/test-29991231T000000Z.yaml");
    let text = fs::read_to_string(&first).unwrap().replacen(
        "environment: test",
        "environment: test\nsurprise: 1",
        1,
    );
    fs::write(&bad, text).unwrap();
    let r = diff(&p, &["--env", ENV, "--to", path(&first)], 2);
    assert!(r.stdout.is_empty());
    insta::assert_snapshot!(redacted(&p, &r.stderr));
    // Named on the command line, and with --json.
    let r = diff(&p, &[path(&first), path(&bad)], 2);
    assert!(
        r.stderr.contains("unknown field `surprise`"),
        "{}",
        r.stderr
    );
    let j = diff(&p, &[path(&bad), path(&first), "--json"], 2).json();
    assert_eq!(j["error"]["exit_code"], 2);
    assert_eq!(j["error"]["code"], "cascade::lock::invalid");
}

#[test]
fn a_missing_lockfile_or_environment_without_one_is_exit_2() {
    let (p, first, _) = two_builds();
    let missing = p.root.join("lockfiles/nope.yaml");
    let r = diff(&p, &[path(&first), missing.to_str().unwrap()], 2);
    assert!(r.stderr.contains("could not read"), "{}", r.stderr);
    let r = diff(&p, &["--env", "staging", "--to", path(&first)], 2);
    assert!(
        r.stderr
            .contains("environment `staging` has no lockfile yet"),
        "{}",
        r.stderr
    );
}

#[test]
fn usage_needs_two_lockfiles_or_env_and_to() {
    let (p, first, _) = two_builds();
    diff(&p, &[path(&first)], 2);
    diff(&p, &["--env", ENV], 2);
    diff(&p, &["--env", ENV, "--to", path(&first), path(&first)], 2);
}

/// Commit distances of a remote source come from the mirrors of the store the command
/// was given (`--store`), never from a fetch and never from another store.
#[test]
fn remote_distances_come_from_the_given_store() {
    let (p, first, second) = two_builds();
    // The same lockfiles, as if sdk came from a remote: only a mirror can count it.
    let url = "https://git.invalid/sdk.git";
    let remote = |from: &Path, name: &str| {
        let text = fs::read_to_string(from).unwrap();
        assert!(text.contains("repo: ../../repos/sdk\n"), "{text}");
        let to = p.root.join(name);
        fs::write(
            &to,
            text.replace("repo: ../../repos/sdk\n", &format!("repo: {url}\n")),
        )
        .unwrap();
        to
    };
    let (old, new) = (remote(&first, "old.yaml"), remote(&second, "new.yaml"));
    let store = tempfile::tempdir().unwrap();
    let hash = cascade_core::Digest::of(url.as_bytes()).to_string();
    let mirror = store
        .path()
        .join("git")
        .join(format!("{}.git", hash.trim_start_matches("blake3:")));
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(path(&p.repo_path("sdk")), &mirror)
        .unwrap();
    let apart = |args: &[&str]| {
        let mut full = vec![path(&old), path(&new), "--json"];
        full.extend(args);
        node(&diff(&p, &full, 0).json(), "sdk")["commits_apart"].clone()
    };
    assert_eq!(
        apart(&["--store", path(store.path())]),
        serde_json::json!({ "ahead": 1, "behind": 0 })
    );
    // The project's default store has no mirror of it, and nothing is fetched.
    assert_eq!(apart(&[]), Value::Null);
    assert!(!p
        .root
        .join("cache/git")
        .join(mirror.file_name().unwrap())
        .exists());
}
