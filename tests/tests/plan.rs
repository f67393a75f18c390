//! `cascade plan`, `why` and `graph` on temporary git repositories: one test per kind
//! of reason, each making exactly that change and asserting exactly that reason.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use cascade_tests::{Run, TestProject};
use serde_json::Value;

const ENV: &str = "test";

/// A chain ottochain → sdk → services → explorer, each in its own repository.
fn chain() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 ottochain: { repo: ../../repos/ottochain, ref: develop }\n\
         \x20 sdk:       { repo: ../../repos/sdk,       ref: develop }\n\
         \x20 services:  { repo: ../../repos/services,  ref: develop }\n\
         \x20 explorer:  { repo: ../../repos/explorer,  ref: develop }\n",
    );
    p.write("recipes/ottochain.yaml", &recipe(&[], ""));
    p.write("recipes/sdk.yaml", &recipe(&["ottochain"], ""));
    p.write("recipes/services.yaml", &recipe(&["sdk"], ""));
    p.write("recipes/explorer.yaml", &recipe(&["services"], ""));
    for name in ["ottochain", "sdk", "services", "explorer"] {
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

/// Concatenates the inputs' outputs and its own data.txt into out/out.txt; `extra` is
/// more of the recipe (after `outputs:`).
fn recipe(inputs: &[&str], extra: &str) -> String {
    let cats: Vec<String> = inputs
        .iter()
        .map(|i| format!("inputs/{i}/out/out.txt"))
        .collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir, grep] }} }}\nsteps:\n  - name: make\n    run: |\n      mkdir -p out\n      cat {} data.txt > out/out.txt\noutputs: [out/out.txt]\n{extra}",
        inputs.join(", "),
        cats.join(" ")
    )
}

fn plan(p: &TestProject, extra: &[&str]) -> Run {
    let mut args = vec!["plan", "--env", ENV, "--json"];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn state(r: &Run, node: &str) -> String {
    r.node(node)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn reasons(r: &Run, node: &str) -> Vec<String> {
    r.node(node)["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["message"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn short(sha: &str) -> &str {
    &sha[..7]
}

fn head(p: &TestProject, repo: &str) -> String {
    let r = git2::Repository::open(p.repo_path(repo)).unwrap();
    let c = r.revparse_single("develop").unwrap().id().to_string();
    c
}

/// The short id of the root tree of `commit` in `repo`.
fn tree(p: &TestProject, repo: &str, commit: &str) -> String {
    let r = git2::Repository::open(p.repo_path(repo)).unwrap();
    let c = r.find_commit(git2::Oid::from_str(commit).unwrap()).unwrap();
    c.tree_id().to_string()[..7].to_string()
}

/// Digests depend on the host's tools (keys) and stamps on the clock: replaced for
/// snapshots. Commit SHAs are stable (fixed dates).
fn redacted(p: &TestProject, text: &str) -> String {
    let text = p.redact(text);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("blake3:") {
        out.push_str(&rest[..i + 7]);
        rest = &rest[i + 7..];
        let n = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        out.push_str("[digest]");
        rest = &rest[n..];
    }
    out.push_str(rest);
    // lockfiles/test-20261123T101500Z(-2).yaml
    let mut s = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("test-2") {
        s.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        s.push_str("[stamp]");
        rest = &rest[n..];
    }
    s.push_str(rest);
    s
}

#[test]
fn a_fresh_environment_was_never_built() {
    let p = chain();
    let r = plan(&p, &[]);
    assert_eq!(r.json()["baseline"], Value::Null);
    assert_eq!(state(&r, "ottochain"), "rebuild");
    assert_eq!(reasons(&r, "ottochain"), ["never built"]);
    assert_eq!(state(&r, "sdk"), "pending");
    assert_eq!(strings(&r.node("sdk")["waits_for"]), ["ottochain"]);
    assert_eq!(reasons(&r, "sdk"), ["never built"]);
    assert_eq!(r.node("sdk")["early_cutoff"], false);
    assert_eq!(r.json()["rebuild"], 1);
    assert_eq!(r.json()["pending"], 3);
}

#[test]
fn a_built_environment_is_all_cached_with_the_outputs_the_build_made() {
    let p = chain();
    let b = p.build(ENV, 0);
    let r = plan(&p, &[]);
    for n in ["ottochain", "sdk", "services", "explorer"] {
        assert_eq!(state(&r, n), "cached", "{n}");
        assert!(reasons(&r, n).is_empty(), "{n}: {:?}", reasons(&r, n));
        assert_eq!(r.node(n)["output"], b.node(n)["output"], "{n}");
        assert_eq!(r.node(n)["key"], b.node(n)["key"], "{n}");
        assert_eq!(r.node(n)["baseline_key"], b.node(n)["key"], "{n}");
    }
    let text = p.run(&["plan", "--env", ENV]);
    assert_eq!(text.code, 0);
    insta::assert_snapshot!(redacted(&p, &text.stdout));
    // `build --dry-run` is the same as `plan`.
    let dry = p.run(&["build", "--env", ENV, "--dry-run"]);
    assert_eq!(dry.stdout, text.stdout);
}

#[test]
fn the_build_prints_numbered_progress_lines_when_not_on_a_terminal() {
    let p = chain();
    let r = p.build(ENV, 0);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 4, "{}", r.stderr);
    assert!(
        lines[0].starts_with("[1/4]  built    ottochain"),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with("[4/4]  built    explorer"),
        "{lines:?}"
    );
}

#[test]
fn a_moved_source_names_the_branch_both_commits_and_the_distance() {
    let mut p = chain();
    p.build(ENV, 0);
    let old = head(&p, "ottochain");
    for i in 0..3 {
        let data = format!("ottochain data {i}\n");
        p.commit("ottochain", "develop", &[("data.txt", Some(&data))], "work");
    }
    let new = head(&p, "ottochain");
    let r = plan(&p, &[]);
    assert_eq!(state(&r, "ottochain"), "rebuild");
    assert_eq!(
        reasons(&r, "ottochain"),
        [format!(
            "source ottochain: tree {} → {}, develop {} → {} (3 commits)",
            tree(&p, "ottochain", &old),
            tree(&p, "ottochain", &new),
            short(&old),
            short(&new)
        )]
    );
    let reason = &r.node("ottochain")["reasons"][0];
    assert_eq!(reason["kind"], "source");
    assert_eq!(reason["from"]["commit"], old.as_str());
    assert_eq!(reason["to"]["commit"], new.as_str());
    assert_eq!(reason["ahead"], 3);
    assert_eq!(reason["behind"], 0);
    assert_eq!(state(&r, "sdk"), "pending");
    assert_eq!(
        reasons(&r, "sdk"),
        ["input ottochain: pending (it must be rebuilt first)"]
    );
}

#[test]
fn an_upstream_rebuilt_to_the_same_bytes_spares_its_dependents() {
    let mut p = chain();
    p.build(ENV, 0);
    // notes.txt is not part of any output: ottochain rebuilds to identical bytes.
    p.commit(
        "ottochain",
        "develop",
        &[("notes.txt", Some("more notes\n"))],
        "docs",
    );
    let r = plan(&p, &[]);
    assert_eq!(state(&r, "ottochain"), "rebuild");
    for n in ["sdk", "services", "explorer"] {
        assert_eq!(state(&r, n), "pending", "{n}");
    }
    assert_eq!(strings(&r.node("sdk")["waits_for"]), ["ottochain"]);
    assert_eq!(r.node("sdk")["early_cutoff"], true);
    let text = p.run(&["plan", "--env", ENV]);
    assert!(
        text.stdout
            .contains("waits for ottochain (early cutoff may spare it)"),
        "{}",
        text.stdout
    );
    // And it does: the build rebuilds ottochain only.
    let b = p.build(ENV, 0);
    assert_eq!(b.with_status("built"), ["ottochain"]);
    assert_eq!(b.with_status("cached").len(), 3);
}

/// Changes sdk's recipe after a build; sdk must rebuild for exactly `expected`.
fn recipe_change(new_recipe: &str, expected: &[&str]) {
    let p = chain();
    p.build(ENV, 0);
    p.write("recipes/sdk.yaml", new_recipe);
    let r = plan(&p, &[]);
    assert_eq!(state(&r, "ottochain"), "cached");
    assert_eq!(state(&r, "sdk"), "rebuild");
    assert_eq!(reasons(&r, "sdk"), expected);
    assert_eq!(state(&r, "services"), "pending");
    let reason = &r.node("sdk")["reasons"][0];
    assert_eq!(reason["kind"], "recipe");
    assert_ne!(reason["from"], reason["to"]);
}

#[test]
fn a_changed_step_is_named_by_its_index_and_field() {
    recipe_change(
        &recipe(&["ottochain"], "").replace("mkdir -p out", "mkdir -p out  # keep"),
        &["recipe: steps[0].run changed"],
    );
}

#[test]
fn an_added_env_variable_is_named() {
    recipe_change(
        &recipe(&["ottochain"], "env:\n  RUST_LOG: debug\n"),
        &["recipe: env.RUST_LOG added"],
    );
}

#[test]
fn changed_outputs_are_named() {
    recipe_change(
        &recipe(&["ottochain"], "").replace("outputs: [out/out.txt]", "outputs: [out]"),
        &["recipe: outputs changed"],
    );
}

#[test]
fn an_input_whose_output_changed_names_both_digests() {
    let mut p = chain();
    // sdk refuses an input that says "bad", so ottochain builds and sdk fails.
    p.write(
        "recipes/sdk.yaml",
        &recipe(&["ottochain"], "").replace(
            "mkdir -p out\n",
            "mkdir -p out\n      if grep -q bad inputs/ottochain/out/out.txt; then exit 3; fi\n",
        ),
    );
    let first = p.build(ENV, 0);
    p.commit(
        "ottochain",
        "develop",
        &[("data.txt", Some("bad data\n"))],
        "oops",
    );
    let failed = p.build(ENV, 1);
    assert_eq!(failed.with_status("built"), ["ottochain"]);
    let (was, now) = (
        first.node("ottochain")["output"].clone(),
        failed.node("ottochain")["output"].clone(),
    );
    assert_ne!(was, now);

    let r = plan(&p, &[]);
    // ottochain is in the store now, but differs from the last good lockfile.
    assert_eq!(state(&r, "ottochain"), "cached");
    assert_eq!(r.node("ottochain")["reasons"][0]["kind"], "source");
    assert_eq!(state(&r, "sdk"), "rebuild");
    let short = |v: &Value| {
        let s = v.as_str().unwrap();
        format!("{}…", &s[..7 + 12])
    };
    assert_eq!(
        reasons(&r, "sdk"),
        [format!(
            "input ottochain: output {} → {}",
            short(&was),
            short(&now)
        )]
    );
    let reason = &r.node("sdk")["reasons"][0];
    assert_eq!(reason["kind"], "input");
    assert_eq!(reason["change"], "changed");
    assert_eq!(reason["from"], was);
    assert_eq!(reason["to"], now);
}

#[test]
fn a_changed_tool_is_named_with_both_digests() {
    let p = chain();
    let tools = tempfile::tempdir().unwrap();
    let tool = tools.path().join("stamp");
    fs::write(&tool, "#!/bin/sh\necho v1\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    p.write(
        "recipes/ottochain.yaml",
        &recipe(&[], "").replace("grep]", "grep, stamp]").replace(
            "data.txt > out/out.txt",
            "data.txt > out/out.txt\n      stamp >> out/out.txt",
        ),
    );
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build = |p: &TestProject| {
        cascade::build(
            &cascade::BuildOptions {
                project: p.root.clone(),
                env: ENV.into(),
                store: p.root.join("cache"),
                jobs: 2,
                keep_going: false,
                stamp: "20260101T000000Z".into(),
                tools: cascade_exec::Tools::new(path.clone().into()),
                publish: cascade::PublishOptions::default(),
                replay: cascade::ReplayOptions::default(),
                remote: cascade::RemoteOptions::default(),
                executor: cascade::ExecutorKind::default(),
                work_dir: None,
                exiting: false,
                sign: None,
            },
            &|_| {},
        )
        .unwrap()
    };
    let report = build(&p);
    assert!(report.success());
    let digest = |bytes: &[u8]| format!("blake3:{}", blake3::hash(bytes).to_hex());
    let v1 = digest(b"#!/bin/sh\necho v1\n");
    fs::write(&tool, "#!/bin/sh\necho v2\n").unwrap();
    let v2 = digest(b"#!/bin/sh\necho v2\n");
    let plan = cascade::plan(&cascade::PlanOptions {
        project: p.root.clone(),
        env: ENV.into(),
        store: p.root.join("cache"),
        tools: cascade_exec::Tools::new(path.clone().into()),
        against: None,
        remote: None,
    })
    .unwrap();
    let otto = plan.node("ottochain").unwrap();
    assert_eq!(otto.state, cascade::PlanState::Rebuild);
    let messages: Vec<&str> = otto.reasons.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        [format!(
            "tool stamp: {}… → {}…",
            &v1[..7 + 12],
            &v2[..7 + 12]
        )]
    );
    let cascade::ReasonKind::Tool { from, to, .. } = &otto.reasons[0].kind else {
        panic!("not a tool reason: {:?}", otto.reasons[0]);
    };
    assert_eq!(from.map(|d| d.to_string()), Some(v1));
    assert_eq!(to.map(|d| d.to_string()), Some(v2));
}

#[test]
fn a_new_component_was_never_built() {
    let mut p = chain();
    p.build(ENV, 0);
    let env = fs::read_to_string(p.root.join("graph/environments/test.yaml")).unwrap();
    p.write(
        "graph/environments/test.yaml",
        &format!("{env}  extra:     {{ repo: ../../repos/extra,     ref: develop }}\n"),
    );
    p.write("recipes/extra.yaml", &recipe(&[], ""));
    p.commit(
        "extra",
        "develop",
        &[("data.txt", Some("extra\n"))],
        "initial",
    );
    let r = plan(&p, &[]);
    assert_eq!(state(&r, "extra"), "rebuild");
    assert_eq!(reasons(&r, "extra"), ["never built"]);
    assert_eq!(state(&r, "explorer"), "cached");
}

#[test]
fn a_cleared_store_says_the_key_is_unchanged_but_missing() {
    let p = chain();
    p.build(ENV, 0);
    let other = tempfile::tempdir().unwrap();
    let store = other.path().display().to_string();
    let r = plan(&p, &["--store", &store]);
    assert_eq!(state(&r, "ottochain"), "rebuild");
    assert_eq!(r.node("ottochain")["reasons"][0]["kind"], "not_in_store");
    assert_eq!(state(&r, "sdk"), "pending");
    // Without the key manifests, the baseline is still the lockfile: nothing else changed.
    assert_eq!(
        reasons(&r, "sdk"),
        ["input ottochain: pending (it must be rebuilt first)"]
    );
    assert_eq!(r.node("sdk")["early_cutoff"], false, "not in that store");
}

#[test]
fn against_compares_with_an_older_lockfile() {
    let mut p = chain();
    p.build(ENV, 0);
    let first = p.lockfiles().pop().unwrap();
    p.commit(
        "services",
        "develop",
        &[("data.txt", Some("services v2\n"))],
        "v2",
    );
    p.build(ENV, 0);
    // Against the newest: nothing changed.
    let r = plan(&p, &[]);
    assert!(reasons(&r, "services").is_empty());
    // Against the first: everything is cached, and services and explorer differ.
    let first = first.display().to_string();
    let r = plan(&p, &["--against", &first]);
    assert_eq!(r.json()["cached"], 4);
    assert_eq!(r.node("services")["reasons"][0]["kind"], "source");
    assert_eq!(r.node("explorer")["reasons"][0]["kind"], "input");
    assert!(reasons(&r, "sdk").is_empty());
    let missing = p.run(&["plan", "--env", ENV, "--against", "nope.yaml"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
}

#[test]
fn why_follows_the_chain_down_to_the_root_cause() {
    let mut p = chain();
    p.build(ENV, 0);
    let old = head(&p, "ottochain");
    p.commit(
        "ottochain",
        "develop",
        &[("data.txt", Some("ottochain v2\n"))],
        "v2",
    );
    let new = head(&p, "ottochain");
    let r = p.run(&["why", "explorer", "--env", ENV, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    // explorer → services → sdk → ottochain: depth 3 below the node asked about.
    let mut names = Vec::new();
    let mut n = &j["chain"];
    loop {
        names.push(n["name"].as_str().unwrap().to_string());
        match n["because"].as_array().and_then(|b| b.first()) {
            Some(next) => n = next,
            None => break,
        }
    }
    assert_eq!(names, ["explorer", "services", "sdk", "ottochain"]);
    assert_eq!(j["root_causes"].as_array().unwrap().len(), 1);
    assert_eq!(j["root_causes"][0]["name"], "ottochain");
    assert_eq!(
        j["root_causes"][0]["reasons"][0]["message"],
        format!(
            "source ottochain: tree {} → {}, develop {} → {} (1 commit)",
            tree(&p, "ottochain", &old),
            tree(&p, "ottochain", &new),
            short(&old),
            short(&new)
        )
    );
    let text = p.run(&["why", "explorer", "--env", ENV]);
    assert_eq!(text.code, 0);
    insta::assert_snapshot!(redacted(&p, &text.stdout));
    insta::assert_snapshot!("why_json", redacted(&p, &r.stdout));
}

#[test]
fn plan_json_shape() {
    let p = chain();
    p.build(ENV, 0);
    p.write(
        "recipes/services.yaml",
        &recipe(&["sdk"], "env:\n  RUST_LOG: debug\n"),
    );
    let r = plan(&p, &[]);
    insta::assert_snapshot!(redacted(&p, &r.stdout));
}

#[test]
fn why_an_unknown_component_suggests_the_closest() {
    let p = chain();
    let r = p.run(&["why", "explorr", "--env", ENV]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(p.redact(&r.stderr));
}

/// Runs no step: every step appends to a file outside the build, which must not grow.
#[test]
fn plan_why_and_graph_run_no_step() {
    let mut p = chain();
    let marks = cascade_tests::step_writable_dir();
    let marker = marks.path().join("steps-ran");
    for (name, inputs) in [
        ("ottochain", vec![]),
        ("sdk", vec!["ottochain"]),
        ("services", vec!["sdk"]),
        ("explorer", vec!["services"]),
    ] {
        p.write(
            &format!("recipes/{name}.yaml"),
            &recipe(&inputs, &format!("env:\n  MARKER: {}\n", marker.display())).replace(
                "mkdir -p out\n",
                "mkdir -p out\n      echo ran >> \"$MARKER\"\n",
            ),
        );
    }
    p.build(ENV, 0);
    let ran = || fs::read_to_string(&marker).unwrap().lines().count();
    assert_eq!(ran(), 4);
    p.commit(
        "ottochain",
        "develop",
        &[("data.txt", Some("ottochain v2\n"))],
        "v2",
    );
    for args in [
        vec!["plan", "--env", ENV],
        vec!["plan", "--env", ENV, "--json"],
        vec!["why", "explorer", "--env", ENV],
        vec!["graph", "--env", ENV],
        vec!["graph", "--env", ENV, "--format", "dot"],
        vec!["build", "--env", ENV, "--dry-run"],
    ] {
        let r = p.run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
    assert_eq!(ran(), 4, "a plan ran a step");
    assert_eq!(p.lockfiles().len(), 1, "a plan wrote a lockfile");
}

#[test]
fn graph_text_lists_nodes_in_build_order_with_their_inputs() {
    let p = chain();
    p.build(ENV, 0);
    p.write(
        "recipes/services.yaml",
        &recipe(&["sdk"], "env:\n  RUST_LOG: debug\n"),
    );
    let r = p.run(&["graph", "--env", ENV]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(r.stdout);
}

/// The DOT output, laid out by Graphviz's own `dot` and read back from its plain
/// format: every node with its state's colour, every edge upstream → downstream.
#[test]
fn graph_dot_is_valid_graphviz_coloured_by_state() {
    if Command::new("dot")
        .arg("-V")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "graphviz `dot` is missing; .ci/run installs it"
        );
        eprintln!("skipping: graphviz `dot` is not installed (apt-get install graphviz)");
        return;
    }
    let p = chain();
    p.build(ENV, 0);
    p.write(
        "recipes/services.yaml",
        &recipe(&["sdk"], "env:\n  RUST_LOG: debug\n"),
    );
    let r = p.run(&["graph", "--env", ENV, "--format", "dot"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plain = run_dot(&r.stdout, "-Tplain", Path::new("."));
    let mut fills = Vec::new();
    let mut edges = Vec::new();
    for line in plain.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"node") => fills.push((f[1].to_string(), f[f.len() - 1].to_string())),
            Some(&"edge") => edges.push((f[1].to_string(), f[2].to_string())),
            _ => {}
        }
    }
    fills.sort();
    edges.sort();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        fills,
        [
            s("explorer", "#fff9c4"),
            s("ottochain", "#c8e6c9"),
            s("sdk", "#c8e6c9"),
            s("services", "#ffcdd2"),
        ]
    );
    assert_eq!(
        edges,
        [
            s("ottochain", "sdk"),
            s("sdk", "services"),
            s("services", "explorer")
        ]
    );
    let svg = run_dot(&r.stdout, "-Tsvg", Path::new("."));
    assert!(svg.contains("<svg"), "{svg}");
}

fn run_dot(input: &str, format: &str, dir: &Path) -> String {
    use std::io::Write;
    let mut child = Command::new("dot")
        .arg(format)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dot rejected the graph: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new tag on the same commit changes only the version: a recipe that does not stamp
/// it stays cached (the plan still says so); one that stamps it rebuilds.
#[test]
fn a_tag_on_the_same_commit_changes_only_the_version() {
    let p = chain();
    p.write(
        "recipes/sdk.yaml",
        &format!("stamp: [version]\n{}", recipe(&["ottochain"], "")),
    );
    p.build(ENV, 0);
    for name in ["ottochain", "sdk"] {
        let sha = head(&p, name);
        p.tag(name, "v0.5.0", &sha);
    }
    let r = plan(&p, &[]);
    assert_eq!(state(&r, "ottochain"), "cached");
    assert_eq!(state(&r, "sdk"), "rebuild");
    for name in ["ottochain", "sdk"] {
        assert_eq!(
            reasons(&r, name),
            [format!(
                "source {name}: version 0.0.0-dev.1 → 0.5.0 (same commit {})",
                short(&head(&p, name))
            )]
        );
    }
}

#[test]
fn version_mode_names_both_versions() {
    let mut p = chain();
    let env = |v: &str| {
        format!(
            "name: test\nmode: version\nsources:\n\
             \x20 ottochain: {{ repo: ../../repos/ottochain, version: {v} }}\n\
             \x20 sdk:       {{ repo: ../../repos/sdk,       version: 1.0.0 }}\n\
             \x20 services:  {{ repo: ../../repos/services,  version: 1.0.0 }}\n\
             \x20 explorer:  {{ repo: ../../repos/explorer,  version: 1.0.0 }}\n"
        )
    };
    for name in ["ottochain", "sdk", "services", "explorer"] {
        let sha = head(&p, name);
        p.tag(name, "v1.0.0", &sha);
    }
    let old = head(&p, "ottochain");
    p.commit(
        "ottochain",
        "develop",
        &[("data.txt", Some("1.0.1\n"))],
        "fix",
    );
    p.commit(
        "ottochain",
        "develop",
        &[("data.txt", Some("1.1.0\n"))],
        "feat",
    );
    let new = head(&p, "ottochain");
    p.tag("ottochain", "v1.1.0", &new);
    p.write("graph/environments/test.yaml", &env("1.0.0"));
    p.build(ENV, 0);
    p.write("graph/environments/test.yaml", &env("1.1.0"));
    let r = plan(&p, &[]);
    assert_eq!(
        reasons(&r, "ottochain"),
        [format!(
            "source ottochain: tree {} → {}, 1.0.0 {} → 1.1.0 {} (2 commits)",
            tree(&p, "ottochain", &old),
            tree(&p, "ottochain", &new),
            short(&old),
            short(&new)
        )]
    );
    assert_eq!(r.node("ottochain")["ref"], Value::Null);
}
