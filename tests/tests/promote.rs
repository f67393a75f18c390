//! `cascade promote`: beta's lockfile pinned into staging's manifest, end to end on
//! temporary git repositories, and every reason to refuse.

use std::fs;

use cascade_tests::{replace_after, Run, TestProject};
use serde_json::Value;

/// Staging, in branch mode, with comments, a blank line, a block mapping and a quoted
/// value: everything but the pinned values must survive byte for byte.
const STAGING: &str = "\
# staging: what we test before prod
name: staging
mode: branch

sources:
  # the core library, then its users
  core:    { repo: ../../repos/core,    ref: main }
  sdk:     { repo: ../../repos/sdk,     ref: main }   # pinned by promote

  app:
    repo: ../../repos/app
    ref: \"main\"
  monitor: { repo: ../../repos/monitor, ref: main }
";

const BETA: &str = "\
name: beta
mode: branch
sources:
  core:  { repo: ../../repos/core,  ref: develop }
  sdk:   { repo: ../../repos/sdk,   ref: develop }
  app:   { repo: ../../repos/app,   ref: develop }
  extra: { repo: ../../repos/extra, ref: develop }
";

/// core → sdk → app, released as v0.1.0 on `main` with one more commit on `develop`;
/// `monitor` only in staging, `extra` only in beta.
fn project(compatibility: &str) -> TestProject {
    let mut p = TestProject::new();
    p.write("graph/environments/staging.yaml", STAGING);
    p.write("graph/environments/beta.yaml", BETA);
    p.write("graph/compatibility.yaml", compatibility);
    p.write("recipes/core.yaml", &recipe(&[], ""));
    p.write("recipes/sdk.yaml", &recipe(&["core"], ""));
    p.write("recipes/app.yaml", &recipe(&["sdk"], ""));
    p.write("recipes/monitor.yaml", &recipe(&[], ""));
    p.write("recipes/extra.yaml", &recipe(&["core"], ""));
    for name in ["core", "sdk", "app"] {
        let data = format!("{name} 0.1.0\n");
        let sha = p.commit(name, "main", &[("data.txt", Some(&data))], "release");
        p.tag(name, "v0.1.0", &sha);
        let data = format!("{name} next\n");
        p.commit(name, "develop", &[("data.txt", Some(&data))], "next");
    }
    p.commit(
        "monitor",
        "main",
        &[("data.txt", Some("monitor\n"))],
        "initial",
    );
    p.commit(
        "extra",
        "develop",
        &[("data.txt", Some("extra\n"))],
        "initial",
    );
    p
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

const SATISFIED: &str = "compatibility:\n  app: { core: \">=0.1.0\" }\n";
/// app needs core at exactly 0.1.0: beta's core is 0.1.1-dev.1.
const VIOLATED: &str = "compatibility:\n  app: { core: \"0.1.0\" }\n";

fn promote(p: &TestProject, args: &[&str], code: i32) -> Run {
    let mut full = vec!["promote"];
    full.extend(args);
    let r = p.run(&full);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn manifest(p: &TestProject, env: &str) -> String {
    fs::read_to_string(p.root.join(format!("graph/environments/{env}.yaml"))).unwrap()
}

fn node<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {j}"))
}

/// Digests and stamps replaced (keys depend on the host's tools, stamps on the clock);
/// commit SHAs are stable (fixed dates).
fn redacted(p: &TestProject, text: &str) -> String {
    let mut s = p.redact(text);
    for prefix in ["blake3:", "sha256:"] {
        s = replace_after(&s, prefix, |c| c.is_ascii_hexdigit(), "[digest]");
    }
    for env in ["beta", "staging", "prod"] {
        let prefix = format!("lockfiles/{env}-");
        s = replace_after(
            &s,
            &prefix,
            |c| c.is_ascii_alphanumeric() || c == '-',
            "[stamp]",
        );
    }
    s
}

#[test]
fn a_violated_compatibility_matrix_is_refused_and_the_manifest_untouched() {
    let p = project(SATISFIED);
    p.build("staging", 0);
    p.build("beta", 0);
    // The matrix tightened since beta was built: staging's core (0.1.0) still holds,
    // beta's (0.1.1-dev.1) does not.
    p.write("graph/compatibility.yaml", VIOLATED);
    p.build("staging", 0);
    let r = promote(&p, &["--from", "beta", "--to", "staging"], 2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    insta::assert_snapshot!(redacted(&p, &r.stderr));
    assert_eq!(manifest(&p, "staging"), STAGING);
    let j = promote(&p, &["--from", "beta", "--to", "staging", "--json"], 2).json();
    assert_eq!(j["error"]["exit_code"], 2);
    assert_eq!(manifest(&p, "staging"), STAGING);
}

#[test]
fn a_promotion_pins_the_lockfiles_commits_and_staging_then_builds_them_all_cached() {
    let p = project(SATISFIED);
    let before = p.build("staging", 0);
    let beta = p.build("beta", 0);
    let r = promote(&p, &["--from", "beta", "--to", "staging", "--json"], 0);
    let j = r.json();
    assert_eq!(j["written"], true);
    assert_eq!(j["kept"], serde_json::json!(["monitor"]));
    assert_eq!(j["not_promoted"], serde_json::json!(["extra"]));

    // Only the three values changed, quotes kept; comments and blank lines as they were.
    let sha = |n: &str| beta.node(n)["commit"].as_str().unwrap().to_string();
    let expected = STAGING
        .replace(
            "core:    { repo: ../../repos/core,    ref: main }",
            &format!(
                "core:    {{ repo: ../../repos/core,    ref: {} }}",
                sha("core")
            ),
        )
        .replace(
            "sdk:     { repo: ../../repos/sdk,     ref: main }",
            &format!(
                "sdk:     {{ repo: ../../repos/sdk,     ref: {} }}",
                sha("sdk")
            ),
        )
        .replace("ref: \"main\"", &format!("ref: \"{}\"", sha("app")));
    assert_eq!(manifest(&p, "staging"), expected);

    // staging now builds exactly beta's commits, to beta's outputs: all cached.
    let after = p.build("staging", 0);
    assert_eq!(after.with_status("cached").len(), 4, "{}", after.stdout);
    for n in ["core", "sdk", "app"] {
        assert_eq!(after.node(n)["commit"], beta.node(n)["commit"], "{n}");
        assert_eq!(after.node(n)["output"], beta.node(n)["output"], "{n}");
        assert_ne!(after.node(n)["commit"], before.node(n)["commit"], "{n}");
    }
    assert_eq!(
        after.node("monitor")["output"],
        before.node("monitor")["output"]
    );

    // The plan compared staging's last build with beta's.
    let plan = &j["plan"];
    assert!(
        plan["from"]
            .as_str()
            .unwrap()
            .starts_with("lockfiles/staging-"),
        "{plan}"
    );
    assert_eq!(
        (
            &plan["changed"],
            &plan["unchanged"],
            &plan["added"],
            &plan["removed"]
        ),
        (
            &Value::from(3),
            &Value::from(0),
            &Value::from(0),
            &Value::from(0)
        )
    );
    assert_eq!(
        node(plan, "core")["commits_apart"],
        serde_json::json!({ "ahead": 1, "behind": 0 })
    );
    insta::assert_snapshot!(redacted(&p, &r.stdout));

    // Promoting the same lockfile again has nothing to write.
    let again = promote(&p, &["--from", "beta", "--to", "staging"], 0);
    assert!(
        again.stdout.contains("already pins the lockfile's commits"),
        "{}",
        again.stdout
    );
    // …and its plan, against staging's build of those commits, changes nothing (the ref
    // written is the commit itself: no change on its own).
    assert!(
        again
            .stdout
            .contains("\n0 changed, 3 unchanged, 0 added, 0 removed\n"),
        "{}",
        again.stdout
    );
    assert_eq!(manifest(&p, "staging"), expected);
}

#[test]
fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let p = project(SATISFIED);
    p.build("staging", 0);
    p.build("beta", 0);
    let r = promote(&p, &["--from", "beta", "--to", "staging", "--dry-run"], 0);
    assert_eq!(manifest(&p, "staging"), STAGING);
    insta::assert_snapshot!(redacted(&p, &r.stdout));
}

#[test]
fn a_never_built_target_gets_a_plan_of_added_nodes() {
    let p = project(SATISFIED);
    p.build("beta", 0);
    let r = promote(
        &p,
        &["--from", "beta", "--to", "staging", "--dry-run", "--json"],
        0,
    );
    let plan = &r.json()["plan"];
    assert_eq!(plan["from"], Value::Null);
    assert_eq!(plan["added"], 3);
}

/// core and sdk released twice on `main` (v0.1.0, v0.2.0); staging pins versions.
fn versioned() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/beta.yaml",
        "name: beta\nmode: branch\nsources:\n\
         \x20 core: { repo: ../../repos/core, ref: main }\n\
         \x20 sdk:  { repo: ../../repos/sdk,  ref: main }\n",
    );
    p.write(
        "graph/environments/staging.yaml",
        "name: staging\nmode: version\nsources:\n\
         \x20 core: { repo: ../../repos/core, version: v0.1.0 }  # released\n\
         \x20 sdk:  { repo: ../../repos/sdk,  version: 0.1.0 }\n",
    );
    p.write("recipes/core.yaml", &recipe(&[], ""));
    p.write("recipes/sdk.yaml", &recipe(&["core"], ""));
    for name in ["core", "sdk"] {
        for v in ["0.1.0", "0.2.0"] {
            let data = format!("{name} {v}\n");
            let sha = p.commit(name, "main", &[("data.txt", Some(&data))], v);
            p.tag(name, &format!("v{v}"), &sha);
        }
    }
    p
}

#[test]
fn version_mode_pins_the_version_tagged_on_the_lockfiles_commit() {
    let p = versioned();
    p.build("staging", 0);
    let beta = p.build("beta", 0);
    promote(&p, &["--from", "beta", "--to", "staging"], 0);
    assert_eq!(
        manifest(&p, "staging"),
        "name: staging\nmode: version\nsources:\n\
         \x20 core: { repo: ../../repos/core, version: v0.2.0 }  # released\n\
         \x20 sdk:  { repo: ../../repos/sdk,  version: 0.2.0 }\n"
    );
    let after = p.build("staging", 0);
    assert_eq!(after.with_status("cached").len(), 2, "{}", after.stdout);
    for n in ["core", "sdk"] {
        assert_eq!(after.node(n)["commit"], beta.node(n)["commit"], "{n}");
        assert_eq!(after.node(n)["version"], "0.2.0");
        assert_eq!(after.node(n)["output"], beta.node(n)["output"], "{n}");
    }
}

#[test]
fn version_mode_refuses_a_commit_without_a_version_tag() {
    let mut p = versioned();
    let untagged = p.commit("sdk", "main", &[("data.txt", Some("sdk fix\n"))], "fix");
    let beta = p.build("beta", 0);
    assert_eq!(beta.node("sdk")["version"], "0.2.1-dev.1");
    let before = manifest(&p, "staging");
    let r = promote(&p, &["--from", "beta", "--to", "staging"], 2);
    assert!(r.stderr.contains(&untagged), "{}", r.stderr);
    assert_eq!(manifest(&p, "staging"), before);
    insta::assert_snapshot!(redacted(&p, &r.stderr));
}

#[test]
fn prod_needs_approve() {
    let p = project(SATISFIED);
    let prod = STAGING.replace("staging", "prod");
    p.write("graph/environments/prod.yaml", &prod);
    p.build("beta", 0);
    let r = promote(&p, &["--from", "beta", "--to", "prod"], 2);
    assert!(
        r.stderr.contains("promoting to `prod` needs --approve"),
        "{}",
        r.stderr
    );
    assert_eq!(manifest(&p, "prod"), prod);
    let json = promote(&p, &["--from", "beta", "--to", "prod", "--json"], 2);
    assert_eq!(json.json()["error"]["code"], "cascade::approval_required");
    // A dry run is a review, not a promotion.
    promote(&p, &["--from", "beta", "--to", "prod", "--dry-run"], 0);
    assert_eq!(manifest(&p, "prod"), prod);
    promote(&p, &["--from", "beta", "--to", "prod", "--approve"], 0);
    assert_ne!(manifest(&p, "prod"), prod);
}

/// `web` has an image with a smoke test; beta built with --skip-tests records it as
/// skipped.
fn tested() -> TestProject {
    let mut p = TestProject::new();
    for env in ["beta", "staging"] {
        p.write(
            &format!("graph/environments/{env}.yaml"),
            &format!(
                "name: {env}\nmode: branch\nsources:\n  web: {{ repo: ../../repos/web, ref: main }}\n"
            ),
        );
    }
    p.write(
        "recipes/web.yaml",
        &recipe(
            &[],
            "image:\n  base: scratch\n  layers: [{ from: out/out.txt, to: /srv/out.txt }]\n\
             tests:\n  page:\n    command: [cat, /srv/out.txt]\n    expect: { exit_code: 0 }\n",
        ),
    );
    p.commit("web", "main", &[("data.txt", Some("web\n"))], "initial");
    p
}

#[test]
fn a_lockfile_with_a_test_that_did_not_pass_is_refused() {
    let p = tested();
    let r = p.run(&["build", "--env", "beta", "--skip-tests", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lock = r.json()["lockfile"].as_str().unwrap().to_string();
    let staging = manifest(&p, "staging");
    let refused = promote(&p, &["--from", "beta", "--to", "staging"], 2);
    assert_eq!(manifest(&p, "staging"), staging);
    insta::assert_snapshot!(redacted(&p, &refused.stderr));

    // The same lockfile with the test passed promotes.
    let text = fs::read_to_string(&lock).unwrap();
    assert!(text.contains("      page: skipped\n"), "{text}");
    let passed = p.root.join("passed.yaml");
    fs::write(&passed, text.replace("page: skipped", "page: passed")).unwrap();
    let ok = promote(
        &p,
        &[
            "--lock",
            passed.to_str().unwrap(),
            "--to",
            "staging",
            "--json",
        ],
        0,
    );
    assert_eq!(ok.json()["from"], "beta");
    assert_ne!(manifest(&p, "staging"), staging);
}

#[test]
fn from_must_match_the_lockfile_named_with_lock() {
    let p = tested();
    let r = p.run(&["build", "--env", "beta", "--skip-tests", "--json"]);
    let lock = r.json()["lockfile"].as_str().unwrap().to_string();
    let r = promote(
        &p,
        &[
            "--from", "staging", "--lock", &lock, "--to", "staging", "--json",
        ],
        2,
    );
    assert_eq!(r.json()["error"]["code"], "cascade::lockfile_environment");
    assert!(r.stderr.contains("`beta`"), "{}", r.stderr);
}

#[test]
fn without_a_lockfile_there_is_nothing_to_promote() {
    let p = project(SATISFIED);
    let r = promote(&p, &["--from", "beta", "--to", "staging"], 2);
    assert!(
        r.stderr.contains("environment `beta` has no lockfile yet"),
        "{}",
        r.stderr
    );
    promote(&p, &["--to", "staging"], 2);
}

/// A lockfile of the older format (keys by commit) promotes like a new one: the target
/// pins its commits, and the plan says the key formats differ.
#[test]
fn a_lockfile_of_the_older_format_promotes_too() {
    let p = project(SATISFIED);
    p.build("staging", 0);
    let beta = p.build("beta", 0);
    let rel = beta.json()["lockfile"].as_str().unwrap().to_string();
    let text = fs::read_to_string(p.root.join(&rel)).unwrap();
    assert!(text.starts_with("format: cascade-lock/4\n"));
    let old = p.root.join("old-beta.yaml");
    // `cascade-lock/2` has no node count.
    let text = text.replacen("cascade-lock/4", "cascade-lock/2", 1);
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("node_count: "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&old, text).unwrap();
    let r = promote(
        &p,
        &[
            "--from",
            "beta",
            "--lock",
            old.to_str().unwrap(),
            "--to",
            "staging",
            "--json",
        ],
        0,
    );
    let j = r.json();
    assert_eq!(j["written"], true);
    assert_eq!(j["plan"]["key_formats"], serde_json::json!([2, 1]), "{j}");
    let sha = beta.node("core")["commit"].as_str().unwrap().to_string();
    assert!(manifest(&p, "staging").contains(&sha));
    // staging builds those commits with today's keys: beta's results, all cached.
    let after = p.build("staging", 0);
    assert_eq!(after.with_status("cached").len(), 4, "{}", after.stdout);
}
