//! What users read when the world disagrees with the manifests: the diagnostics that
//! need git or the machine (unknown refs, versions against the compatibility matrix,
//! missing tools, unknown environments), rendered by the CLI and snapshotted. The
//! purely textual ones are snapshotted by cascade-manifest's fixtures.

use cascade_tests::TestProject;

/// Both components on `develop` (core derives 0.4.1-dev.1, sdk 0.2.1-dev.1).
const DEVELOP: &str = "name: test\nmode: branch\nsources:\n  core: { repo: ../../repos/core, ref: develop }\n  sdk: { repo: ../../repos/sdk, ref: develop }\n";

fn project(env: &str, compat: Option<&str>) -> TestProject {
    let mut p = TestProject::new();
    p.write("graph/environments/test.yaml", env);
    if let Some(c) = compat {
        p.write("graph/compatibility.yaml", c);
    }
    for name in ["core", "sdk"] {
        let inputs = if name == "sdk" { "[core]" } else { "[]" };
        p.write(
            &format!("recipes/{name}.yaml"),
            &format!(
                "inputs: {inputs}\nrunner: {{ host: {{ tools: [sh] }} }}\nsteps:\n  - name: make\n    run: echo {name} > out\noutputs: [out]\n"
            ),
        );
    }
    let c1 = p.commit("core", "main", &[("a", Some("1"))], "feat: core");
    p.tag("core", "v0.4.0", &c1);
    p.commit("core", "develop", &[("a", Some("2"))], "feat: more core");
    let s1 = p.commit("sdk", "main", &[("a", Some("1"))], "feat: sdk");
    p.tag("sdk", "v0.2.0", &s1);
    p.commit("sdk", "develop", &[("a", Some("2"))], "feat: more sdk");
    p
}

fn check(p: &TestProject, code: i32) -> String {
    let r = p.run(&["build", "--env", "test"]);
    assert_eq!(r.code, code, "{}", r.stderr);
    assert!(p.lockfiles().is_empty(), "nothing written on bad input");
    p.redact(&r.stderr)
}

#[test]
fn unknown_branch_lists_the_closest_refs() {
    let p = project(
        "name: test\nmode: branch\nsources:\n  core: { repo: ../../repos/core, ref: devel0p }\n  sdk: { repo: ../../repos/sdk, ref: develop }\n",
        None,
    );
    insta::assert_snapshot!(check(&p, 2));
}

#[test]
fn unknown_version_in_version_mode() {
    let p = project(
        "name: test\nmode: version\nsources:\n  core: { repo: ../../repos/core, version: 0.4.0 }\n  sdk: { repo: ../../repos/sdk, version: 0.3.0 }\n",
        None,
    );
    insta::assert_snapshot!(check(&p, 2));
}

#[test]
fn missing_repository() {
    let p = project(
        "name: test\nmode: branch\nsources:\n  core: { repo: ../../repos/nope, ref: main }\n  sdk: { repo: ../../repos/sdk, ref: develop }\n",
        None,
    );
    insta::assert_snapshot!(check(&p, 2));
}

#[test]
fn version_violating_the_compatibility_matrix() {
    // core on develop derives 0.4.1-dev.1, which is below the range sdk requires.
    let p = project(
        DEVELOP,
        Some("compatibility:\n  sdk: { core: \">=0.5.0 <1.0.0\" }\n"),
    );
    insta::assert_snapshot!(check(&p, 2));
}

#[test]
fn compatible_pre_release_versions_build() {
    let p = project(
        DEVELOP,
        Some("compatibility:\n  sdk: { core: \">=0.4.0 <1.0.0\" }\n"),
    );
    let r = p.build("test", 0);
    let j = r.json();
    assert_eq!(j["nodes"][0]["version"], "0.4.1-dev.1");
}

#[test]
fn missing_tool_is_an_environment_error() {
    let p = project(DEVELOP, None);
    p.write(
        "recipes/core.yaml",
        "runner: { host: { tools: [sh, no-such-tool-cascade] } }\nsteps:\n  - name: make\n    run: echo > out\noutputs: [out]\n",
    );
    insta::assert_snapshot!(check(&p, 3));
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    let p = project(DEVELOP, None);
    let r = p.run(&["build", "--env", "prod"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(p.redact(&r.stderr));
}

#[test]
fn manifest_errors_exit_2_and_json_reports_them() {
    let p = project(DEVELOP, None);
    p.write("recipes/sdk.yaml", "inputs: [core, ghost]\nrunner: { host: { tools: [sh] } }\nsteps: [{ name: a, run: x }]\noutputs: [/etc/passwd]\n");
    let r = p.run(&["build", "--env", "test", "--json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.json()["error"]["exit_code"], 2);
    insta::assert_snapshot!(p.redact(&r.stderr));
}

#[test]
fn usage_errors_exit_2() {
    let p = TestProject::new();
    assert_eq!(p.run(&["build"]).code, 2, "missing --env");
    assert_eq!(p.run(&["frobnicate"]).code, 2);
    assert_eq!(p.run(&["build", "--env", "x", "--jobs", "0"]).code, 2);
}
