//! Images meet the world: smoke tests in Docker, `--load`, `--push` to a real registry
//! (with and without auth). Docker and the registries are started by .ci/run; without
//! them these tests fail in CI and skip elsewhere, saying so.

use std::fs;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use cascade_tests::{Run, TestProject};

const ENV: &str = "test";

/// `app`: busybox's httpd serving a page that names the commit, on scratch.
fn project(registry: Option<&str>, expect: &str) -> TestProject {
    let mut p = TestProject::new();
    let registry = registry
        .map(|r| format!("registry: {r}\n"))
        .unwrap_or_default();
    p.write(
        "graph/environments/test.yaml",
        &format!(
            "name: test\nmode: branch\n{registry}sources:\n  app: {{ repo: ../../repos/app, ref: main }}\n"
        ),
    );
    p.write(
        "recipes/app.yaml",
        &format!(
            r#"runner: {{ host: {{ tools: [sh, mkdir, cp, busybox] }} }}
stamp: [commit]
steps:
  - name: make
    run: |
      mkdir -p out/bin out/www
      cp "$(command -v busybox)" out/bin/busybox
      echo "app $CASCADE_COMMIT" > out/www/index.html
outputs: [out]
image:
  base: scratch
  layers:
    - {{ from: out/bin, to: /bin }}
    - {{ from: out/www, to: /www }}
  entrypoint: [/bin/busybox, httpd, -f, -v, -p, "8080", -h, /www]
  ports: [8080]
tests:
  page:
    http: {{ port: 8080, path: /index.html }}
    expect: {{ status: 200, body_contains: "{expect}" }}
    timeout: 8s
"#
        ),
    );
    p.commit("app", "main", &[("README", Some("app\n"))], "initial");
    p
}

fn build(p: &TestProject, extra: &[&str], code: i32) -> Run {
    let mut args = vec!["build", "--env", ENV, "--json"];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn lockfile(p: &TestProject, r: &Run) -> String {
    let rel = r.json()["lockfile"].as_str().unwrap().to_string();
    fs::read_to_string(p.root.join(rel)).unwrap()
}

fn unique(prefix: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{t}", std::process::id())
}

#[test]
fn a_passing_smoke_test_is_recorded_in_the_lockfile() {
    if !cascade_tests::docker() {
        return;
    }
    let p = project(None, "app {commit}");
    let r = build(&p, &[], 0);
    let test = &r.node("app")["tests"][0];
    assert_eq!(test["name"], "page");
    assert_eq!(test["status"], "passed", "{test}");
    assert!(
        r.stderr.contains("tested   app/page  passed"),
        "{}",
        r.stderr
    );
    assert!(lockfile(&p, &r).contains("    tests:\n      page: passed\n"));
}

#[test]
fn a_failing_smoke_test_fails_the_build_with_the_containers_log() {
    if !cascade_tests::docker() {
        return;
    }
    let p = project(None, "something else");
    let r = build(&p, &[], 1);
    let test = &r.node("app")["tests"][0];
    assert_eq!(test["status"], "failed", "{test}");
    let detail = test["detail"].as_str().unwrap();
    assert!(detail.contains("something else"), "{detail}");
    assert!(r.stderr.contains("FAILED   app/page"), "{}", r.stderr);
    assert!(
        r.stderr.contains("lines of the container's log:"),
        "{}",
        r.stderr
    );
    assert!(p.lockfiles().is_empty(), "no lockfile for a failed build");
}

#[test]
fn skip_tests_builds_without_docker_and_records_the_tests_as_skipped() {
    let p = project(None, "app {commit}");
    let r = build(&p, &["--skip-tests"], 0);
    assert_eq!(r.node("app")["tests"][0]["status"], "skipped");
    assert!(lockfile(&p, &r).contains("      page: skipped\n"));
}

#[test]
fn load_gives_the_same_image_id_on_every_rebuild() {
    if !cascade_tests::docker() {
        return;
    }
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let p = project(None, "app {commit}");
            let r = build(&p, &["--load", "--skip-tests"], 0);
            let reference = r.node("app")["image"]["ref"].as_str().unwrap().to_string();
            let out = Command::new("docker")
                .args(["image", "inspect", "--format", "{{.Id}}", &reference])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(r.stderr.contains("loaded   "), "{}", r.stderr);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert!(ids[0].starts_with("sha256:"), "{ids:?}");
    assert_eq!(ids[0], ids[1], "two stores, two checkouts, one image id");
}

#[test]
fn push_sends_blobs_once_and_the_registry_has_our_digest() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let prefix = format!("127.0.0.1:5000/{}", unique("cascade-test"));
    let p = project(Some(&prefix), "app {commit}");
    let first = build(&p, &["--push", "--skip-tests"], 0);
    let reference = first.node("app")["image"]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = first.node("app")["image"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reference.starts_with(&prefix), "{reference}");
    assert!(
        first.stderr.contains("(2 blobs sent, 0 already there)")
            || first.stderr.contains("(3 blobs sent, 0 already there)"),
        "{}",
        first.stderr
    );
    let second = build(&p, &["--push", "--skip-tests"], 0);
    assert!(
        second.stderr.contains("(0 blobs sent,"),
        "a second push sends no blob:\n{}",
        second.stderr
    );
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output();
    match out {
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["Digest"], digest.as_str());
        }
        Err(_) => assert!(std::env::var("CI").is_err(), "skopeo is missing in CI"),
    }
}

#[test]
fn push_needs_a_registry_in_the_environment() {
    let p = project(None, "x");
    let r = build(&p, &["--push", "--skip-tests"], 2);
    assert!(r.stderr.contains("has no `registry:`"), "{}", r.stderr);
    assert!(p.lockfiles().is_empty());
}

/// One function: it sets CASCADE_REGISTRY_AUTH, which only pushes to :5001 read.
#[test]
fn push_to_a_registry_with_auth_needs_credentials_and_never_shows_them() {
    if !cascade_tests::registry("127.0.0.1:5001", 401) {
        return;
    }
    let prefix = format!("127.0.0.1:5001/{}", unique("auth"));
    let p = project(Some(&prefix), "x");
    std::env::remove_var("CASCADE_REGISTRY_AUTH");
    let denied = build(&p, &["--push", "--skip-tests"], 3);
    assert!(
        denied.stderr.contains("CASCADE_REGISTRY_AUTH"),
        "the error says how to log in:\n{}",
        denied.stderr
    );
    assert!(p.lockfiles().is_empty());
    let password = "cascade-test-password";
    std::env::set_var("CASCADE_REGISTRY_AUTH", format!("cascade:{password}"));
    let ok = p.run(&["build", "--env", ENV, "--json", "--push", "--skip-tests"]);
    std::env::remove_var("CASCADE_REGISTRY_AUTH");
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(!ok.stderr.contains(password) && !ok.stdout.contains(password));
    std::env::set_var("CASCADE_REGISTRY_AUTH", "cascade:wrong-secret");
    let wrong = p.run(&["build", "--env", ENV, "--json", "--push", "--skip-tests"]);
    std::env::remove_var("CASCADE_REGISTRY_AUTH");
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("wrong-secret") && !wrong.stdout.contains("wrong-secret"));
}
