//! `cascade release plan` and `cascade release tag`, end to end on temporary git
//! repositories: versions from conventional commits (a table over message shapes), the
//! compatibility matrix, tags in every repository or none, idempotence, pre-release
//! channels, the promotion to a version-mode environment that follows, and `notify:`
//! hooks received by a local HTTP server.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use cascade_tests::{replace_after, Run, TestProject};
use serde_json::Value;

const BETA: &str = "\
name: beta
mode: branch
sources:
  core: { repo: ../../repos/core, ref: develop }
  sdk:  { repo: ../../repos/sdk,  ref: develop }
  app:  { repo: ../../repos/app,  ref: develop }
";

const STAGING: &str = "\
name: staging
mode: version
sources:
  core: { repo: ../../repos/core, version: 0.1.0 }
  sdk:  { repo: ../../repos/sdk,  version: 0.1.0 }
  app:  { repo: ../../repos/app,  version: v0.1.0 }
";

/// app needs core below 1.0.0.
const COMPATIBILITY: &str = "compatibility:\n  app: { core: \">=0.1.0 <1.0.0\" }\n";

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

/// One commit on `develop` of `repo` with `message`, changing `log.txt`.
fn commit(p: &mut TestProject, repo: &str, message: &str) -> String {
    p.commit(repo, "develop", &[("log.txt", Some(message))], message)
}

/// core → sdk → app, each released as v0.1.0 on develop, then:
/// core: a feature, a fix and docs (0.2.0); sdk: a fix on a branch merged with git's
/// own message, and a chore (0.1.1); app: perf, a refactor and a message that is not
/// conventional (0.1.1).
fn project() -> TestProject {
    let mut p = TestProject::new();
    p.write("graph/environments/beta.yaml", BETA);
    p.write("graph/environments/staging.yaml", STAGING);
    p.write("graph/compatibility.yaml", COMPATIBILITY);
    p.write("recipes/core.yaml", &recipe(&[]));
    p.write("recipes/sdk.yaml", &recipe(&["core"]));
    p.write("recipes/app.yaml", &recipe(&["sdk"]));
    for name in ["core", "sdk", "app"] {
        let data = format!("{name}\n");
        let sha = p.commit(
            name,
            "develop",
            &[("data.txt", Some(&data))],
            "chore: initial",
        );
        p.tag(name, "v0.1.0", &sha);
    }
    commit(&mut p, "core", "feat(api): add a route");
    commit(&mut p, "core", "fix: off by one in the router");
    commit(&mut p, "core", "docs: the route");
    let fix = p.commit(
        "sdk",
        "feat/empty",
        &[("log.txt", Some("fix"))],
        "fix(parser): accept empty input",
    );
    commit(&mut p, "sdk", "chore(deps): bump");
    p.merge(
        "sdk",
        "develop",
        &fix,
        "Merge branch 'feat/empty' into develop",
    );
    commit(&mut p, "app", "perf: start faster");
    commit(&mut p, "app", "refactor: split main");
    commit(&mut p, "app", "update the readme");
    p
}

fn run(p: &TestProject, args: &[&str], code: i32) -> Run {
    let r = p.run(args);
    assert_eq!(
        r.code, code,
        "{args:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r
}

fn component<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {plan}"))
}

/// Tag `name` of repository `repo`: the commit it peels to, if it exists.
fn tag_commit(p: &TestProject, repo: &str, name: &str) -> Option<String> {
    let r = git2::Repository::open(p.repo_path(repo)).expect("open");
    let reference = r.find_reference(&format!("refs/tags/{name}")).ok()?;
    let id = reference
        .peel_to_commit()
        .expect("a commit")
        .id()
        .to_string();
    Some(id)
}

fn tag_count(p: &TestProject, repo: &str) -> usize {
    let r = git2::Repository::open(p.repo_path(repo)).expect("open");
    r.tag_names(None).expect("tags").len()
}

/// Stamps of lockfile names replaced (they come from the clock).
fn redacted(p: &TestProject, text: &str) -> String {
    replace_after(
        &p.redact(text),
        "lockfiles/beta-",
        |c| c.is_ascii_alphanumeric() || c == '-',
        "[stamp]",
    )
}

#[test]
fn a_plan_proposes_the_next_versions_with_their_reasons_and_changelogs() {
    let p = project();
    let beta = p.build("beta", 0);
    let j = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    assert_eq!(j["environment"], "beta");
    assert_eq!(j["conflicts"], serde_json::json!([]));
    let expect = [
        ("core", "0.2.0", "minor", 2, 1, 0),
        ("sdk", "0.1.1", "patch", 1, 1, 1),
        ("app", "0.1.1", "patch", 1, 1, 1),
    ];
    for (name, next, bump, commits, hidden, ignored) in expect {
        let c = component(&j, name);
        assert_eq!(c["next"], next, "{name}: {c}");
        assert_eq!(c["bump"], bump, "{name}");
        assert_eq!(c["status"], "release", "{name}");
        assert_eq!(c["last_release"], "0.1.0", "{name}");
        assert_eq!(c["tag"], format!("v{next}"), "{name}");
        assert_eq!(c["commit"], beta.node(name)["commit"], "{name}");
        assert_eq!(c["current"], beta.node(name)["version"], "{name}");
        assert_eq!(c["commits"].as_array().unwrap().len(), commits, "{name}");
        assert_eq!(c["hidden"], hidden, "{name}");
        assert_eq!(c["ignored"], ignored, "{name}");
    }
    let core = component(&j, "core");
    assert_eq!(
        core["commits"][0]["subject"],
        "fix: off by one in the router"
    );
    assert_eq!(core["commits"][1]["scope"], "api");
    assert_eq!(core["commits"][1]["type"], "feat");
    // The merge's own message is not conventional; the branch's commit counts.
    assert_eq!(
        component(&j, "sdk")["commits"][0]["subject"],
        "fix(parser): accept empty input"
    );
    // Components in build order.
    let names: Vec<&str> = j["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core", "sdk", "app"]);

    let text = run(&p, &["release", "plan", "--env", "beta"], 0);
    insta::assert_snapshot!(redacted(&p, &text.stdout));
}

/// One repository per case: its history after a root commit (tagged `base` when given)
/// → the proposed version and status.
#[test]
fn message_shapes_give_exactly_the_expected_versions() {
    struct Case {
        base: Option<&'static str>,
        messages: &'static [&'static str],
        /// A branch merged at the end: (the branch's messages, the merge's message).
        merge: Option<(&'static [&'static str], &'static str)>,
        next: &'static str,
        status: &'static str,
    }
    let release = "release";
    let none = "no_release";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        Case { base: Some("v0.1.0"), messages: &["feat: a"], merge: None, next: "0.2.0", status: release },
        Case { base: Some("v0.1.0"), messages: &["fix(scope): a"], merge: None, next: "0.1.1", status: release },
        Case { base: Some("v0.6.1"), messages: &["feat(api)!: drop a route"], merge: None, next: "1.0.0", status: release },
        Case { base: Some("v1.2.3"), messages: &["fix: a\n\nBREAKING CHANGE: the config moved"], merge: None, next: "2.0.0", status: release },
        Case { base: Some("v1.2.3"), messages: &["feat: a", "fix: b\n\nReviewed-by: x\nBREAKING-CHANGE: y\nRefs: #1"], merge: None, next: "2.0.0", status: release },
        Case { base: Some("v1.2.3"), messages: &["chore!: drop node 16"], merge: None, next: "2.0.0", status: release },
        Case { base: Some("v0.1.0"), messages: &["chore: a", "docs: b", "style: c", "test: d", "ci: e", "build: f", "refactor: g"], merge: None, next: "0.1.1-dev.7", status: none },
        Case { base: Some("v0.1.0"), messages: &["Revert \"feat: a\"\n\nThis reverts commit 1234567."], merge: None, next: "0.1.1", status: release },
        Case { base: Some("v0.1.0"), messages: &["revert: fix: a"], merge: None, next: "0.1.1", status: release },
        Case { base: Some("v0.1.0"), messages: &["random message", "WIP", "feat:no space"], merge: None, next: "0.1.1-dev.3", status: none },
        Case { base: Some("v0.1.0"), messages: &["chore: a"], merge: Some((&["feat(ui): from a branch"], "Merge branch 'ui' into develop")), next: "0.2.0", status: release },
        Case { base: Some("v0.1.0"), messages: &[], merge: Some((&["chore: y"], "fix: merged pull request #4")), next: "0.1.1", status: release },
        Case { base: Some("v0.1.0"), messages: &["Feat(UI): capitals"], merge: None, next: "0.2.0", status: release },
        Case { base: Some("v2.0.0"), messages: &["perf: a"], merge: None, next: "2.0.1", status: release },
        Case { base: None, messages: &["feat: a"], merge: None, next: "0.1.0", status: release },
        Case { base: Some("v0.1.0"), messages: &["feat: a"], merge: None, next: "0.2.0", status: release },
    ];
    let mut p = TestProject::new();
    let mut env = "name: beta\nmode: branch\nsources:\n".to_string();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("case{i:02}");
        env.push_str(&format!(
            "  {name}: {{ repo: ../../repos/{name}, ref: develop }}\n"
        ));
        p.write(&format!("recipes/{name}.yaml"), &recipe(&[]));
        let root = p.commit(
            &name,
            "develop",
            &[("data.txt", Some(&name))],
            "chore: initial",
        );
        if let Some(tag) = case.base {
            p.tag(&name, tag, &root);
        }
        for m in case.messages {
            commit(&mut p, &name, m);
        }
        if let Some((branch, merge)) = case.merge {
            let mut tip = String::new();
            for m in branch {
                tip = p.commit(&name, "topic", &[("topic.txt", Some(m))], m);
            }
            p.merge(&name, "develop", &tip, merge);
        }
    }
    // The last case's tip is already released: it stays.
    let last = format!("case{:02}", cases.len() - 1);
    let tip = commit(&mut p, &last, "feat: b");
    p.tag(&last, "v0.3.0", &tip);
    p.write("graph/environments/beta.yaml", &env);
    p.build("beta", 0);
    let j = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("case{i:02}");
        let c = component(&j, &name);
        let (next, status) = if name == last {
            ("0.3.0", "released")
        } else {
            (case.next, case.status)
        };
        assert_eq!(
            (c["next"].as_str(), c["status"].as_str()),
            (Some(next), Some(status)),
            "{name} {:?}: {c}",
            case.messages
        );
    }
    // release-please's bump-minor-pre-major: a breaking change below 1.0.0 is minor.
    let j = run(
        &p,
        &[
            "release",
            "plan",
            "--env",
            "beta",
            "--json",
            "--bump-minor-pre-major",
            "--bump-patch-for-minor-pre-major",
        ],
        0,
    )
    .json();
    assert_eq!(component(&j, "case02")["next"], "0.7.0");
    assert_eq!(component(&j, "case00")["next"], "0.1.1");
    assert_eq!(component(&j, "case03")["next"], "2.0.0");
}

#[test]
fn a_release_that_breaks_the_matrix_is_reported_on_the_rule_and_never_tagged() {
    let mut p = project();
    commit(&mut p, "core", "feat!: a new wire format");
    p.build("beta", 0);
    let r = run(&p, &["release", "plan", "--env", "beta"], 1);
    assert!(
        r.stdout.contains("core  0.1.0 → 1.0.0  major"),
        "{}",
        r.stdout
    );
    insta::assert_snapshot!(redacted(&p, &r.stderr));
    let j = run(&p, &["release", "plan", "--env", "beta", "--json"], 1).json();
    assert_eq!(
        j["conflicts"],
        serde_json::json!([{ "component": "app", "upstream": "core", "range": ">=0.1.0 <1.0.0", "version": "1.0.0" }])
    );
    let t = run(&p, &["release", "tag", "--env", "beta", "--json"], 2).json();
    assert_eq!(t["error"]["code"], "cascade::release_refused");
    for repo in ["core", "sdk", "app"] {
        assert_eq!(tag_count(&p, repo), 1, "{repo} was tagged");
    }
}

#[test]
fn tags_go_on_the_built_commits_once_and_staging_then_builds_from_cache() {
    let p = project();
    let beta = p.build("beta", 0);
    let r = run(&p, &["release", "tag", "--env", "beta", "--json"], 0).json();
    let tags: Vec<(&str, &str, &str)> = r["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["component"].as_str().unwrap(),
                t["tag"].as_str().unwrap(),
                t["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("core", "v0.2.0", "created"),
            ("sdk", "v0.1.1", "created"),
            ("app", "v0.1.1", "created")
        ]
    );
    for (repo, tag) in [("core", "v0.2.0"), ("sdk", "v0.1.1"), ("app", "v0.1.1")] {
        let commit = beta.node(repo)["commit"].as_str().unwrap().to_string();
        assert_eq!(tag_commit(&p, repo, tag), Some(commit), "{repo}");
    }
    // Annotated, by the documented tagger, at the commit's time, with the changelog.
    let core = git2::Repository::open(p.repo_path("core")).unwrap();
    let tag = core
        .find_reference("refs/tags/v0.2.0")
        .unwrap()
        .peel_to_tag()
        .unwrap();
    let tagger = tag.tagger().unwrap();
    assert_eq!(
        (tagger.name().unwrap(), tagger.email().unwrap()),
        ("cascade", "cascade@localhost")
    );
    let commit = tag.target().unwrap().peel_to_commit().unwrap();
    assert_eq!(tagger.when().seconds(), commit.committer().when().seconds());
    insta::assert_snapshot!(tag.message().unwrap().unwrap());
    let tag_id = tag.id();

    // Twice: nothing changes, the tag objects are the same.
    let again = run(&p, &["release", "tag", "--env", "beta"], 0);
    assert!(
        again.stdout.contains("0 tags created, 3 already there"),
        "{}",
        again.stdout
    );
    assert_eq!(
        core.find_reference("refs/tags/v0.2.0")
            .unwrap()
            .peel_to_tag()
            .unwrap()
            .id(),
        tag_id
    );
    let plan = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    for name in ["core", "sdk", "app"] {
        assert_eq!(component(&plan, name)["status"], "released", "{name}");
    }

    // staging finds every version tagged, and builds beta's trees from the cache.
    run(&p, &["promote", "--from", "beta", "--to", "staging"], 0);
    let staging = std::fs::read_to_string(p.root.join("graph/environments/staging.yaml")).unwrap();
    assert_eq!(
        staging,
        STAGING
            .replace("core, version: 0.1.0", "core, version: 0.2.0")
            .replace("sdk,  version: 0.1.0", "sdk,  version: 0.1.1")
            .replace("app,  version: v0.1.0", "app,  version: v0.1.1")
    );
    let built = p.build("staging", 0);
    assert_eq!(built.with_status("built"), Vec::<String>::new());
    assert_eq!(built.with_status("cached").len(), 3, "{}", built.stdout);
    for n in ["core", "sdk", "app"] {
        assert_eq!(built.node(n)["commit"], beta.node(n)["commit"], "{n}");
        assert_eq!(built.node(n)["output"], beta.node(n)["output"], "{n}");
    }
    assert_eq!(built.node("core")["version"], "0.2.0");
}

#[test]
fn a_tag_on_another_commit_refuses_the_whole_release() {
    let mut p = project();
    p.build("beta", 0);
    // sdk's v0.1.1 already names a commit of another branch.
    let first = p.commit(
        "sdk",
        "hotfix",
        &[("log.txt", Some("hotfix"))],
        "fix: a hotfix",
    );
    p.tag("sdk", "v0.1.1", &first);
    let r = run(&p, &["release", "tag", "--env", "beta"], 2);
    assert!(
        r.stderr.contains("tag `v0.1.1` of `sdk` exists on commit"),
        "{}",
        r.stderr
    );
    insta::assert_snapshot!(redacted(&p, &r.stderr));
    // All repositories or none: core and app were not tagged either.
    assert_eq!(tag_commit(&p, "core", "v0.2.0"), None);
    assert_eq!(tag_commit(&p, "app", "v0.1.1"), None);
    assert_eq!(tag_commit(&p, "sdk", "v0.1.1"), Some(first));
}

#[test]
fn pre_releases_count_up_on_their_channel() {
    let mut p = project();
    p.build("beta", 0);
    let j = run(
        &p,
        &["release", "tag", "--env", "beta", "--pre", "rc", "--json"],
        0,
    )
    .json();
    let versions: Vec<&str> = j["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v0.2.0-rc.1", "v0.1.1-rc.1", "v0.1.1-rc.1"]);
    // A fix on core after rc.1: rc.2 of the same release; the others are released on
    // the channel already.
    commit(&mut p, "core", "fix: a bug the rc found");
    p.build("beta", 0);
    let plan = run(
        &p,
        &["release", "plan", "--env", "beta", "--pre", "rc", "--json"],
        0,
    )
    .json();
    assert_eq!(component(&plan, "core")["next"], "0.2.0-rc.2");
    assert_eq!(component(&plan, "sdk")["status"], "released");
    assert_eq!(component(&plan, "sdk")["next"], "0.1.1-rc.1");
    // Without --pre: the releases themselves.
    let plan = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    assert_eq!(component(&plan, "core")["next"], "0.2.0");
    assert_eq!(component(&plan, "sdk")["next"], "0.1.1");
    assert_eq!(component(&plan, "sdk")["status"], "release");
}

/// A receiver on 127.0.0.1 answering every request with `status`; the bodies it got.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

fn receiver(status: u16) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    // Blocks on accept until the test process ends.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut buf) else { break None };
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    break Some(String::from_utf8_lossy(&data[end + 4..]).to_string());
                }
            };
            seen.lock().unwrap().push(body.unwrap_or_default());
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Receiver { port, bodies }
}

#[test]
fn notify_hooks_get_the_events_and_a_failing_one_is_retried_and_reported() {
    let ok = receiver(200);
    let failing = receiver(500);
    let p = project();
    let hooks = format!(
        "notify:\n  - http://127.0.0.1:{}/hook/secret-token\n  - http://127.0.0.1:{}/broken/secret-token\n",
        ok.port, failing.port
    );
    p.write(
        "graph/environments/beta.yaml",
        &BETA.replace("sources:\n", &format!("{hooks}sources:\n")),
    );
    p.write(
        "graph/environments/staging.yaml",
        &STAGING.replace("sources:\n", &format!("{hooks}sources:\n")),
    );
    let beta = p.build("beta", 0);
    let r = run(&p, &["release", "tag", "--env", "beta", "--json"], 0);
    let j = r.json();
    assert_eq!(
        j["notifications"],
        serde_json::json!([
            { "target": format!("http://127.0.0.1:{}", ok.port), "attempts": 1, "outcome": "delivered", "status": 200 },
            { "target": format!("http://127.0.0.1:{}", failing.port), "attempts": 3, "outcome": "failed", "reason": "answered HTTP 500" },
        ])
    );
    assert!(
        r.stderr.contains(&format!(
            "warning: notify hook http://127.0.0.1:{} failed after 3 attempts: answered HTTP 500",
            failing.port
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("secret-token") && !r.stdout.contains("secret-token"));
    assert_eq!(failing.bodies.lock().unwrap().len(), 3);

    let events: Vec<Value> = ok
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).expect("a JSON event"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["format"], "cascade-event/1");
    assert_eq!(e["event"], "release");
    assert_eq!(e["environment"], "beta");
    assert_eq!(
        e["lockfile"],
        beta.json()["lockfile"]
            .as_str()
            .map(|l| {
                l.strip_prefix(&format!("{}/", p.root.display()))
                    .unwrap_or(l)
                    .to_string()
            })
            .unwrap()
    );
    assert_eq!(
        e["components"][0],
        serde_json::json!({
            "name": "core", "version": "0.2.0",
            "commit": beta.node("core")["commit"], "tag": "v0.2.0"
        })
    );
    assert_eq!(e["text"], "released beta: core 0.2.0, sdk 0.1.1, app 0.1.1");

    // A second `release tag` releases nothing new: no event.
    run(&p, &["release", "tag", "--env", "beta"], 0);
    assert_eq!(ok.bodies.lock().unwrap().len(), 1);

    // The promotion to staging: a `promote` event to staging's hooks.
    let r = run(&p, &["promote", "--from", "beta", "--to", "staging"], 0);
    assert!(r.stderr.contains("failed after 3 attempts"), "{}", r.stderr);
    let bodies = ok.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let e: Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(
        (&e["event"], &e["environment"], &e["from"]),
        (
            &Value::from("promote"),
            &Value::from("staging"),
            &Value::from("beta")
        )
    );
    assert_eq!(e["components"][2]["version"], "0.1.1");

    // A failed build: a `build_failed` event naming the failed node.
    p.write(
        "recipes/app.yaml",
        &recipe(&["sdk"]).replace("mkdir -p out", "exit 3"),
    );
    p.build("beta", 1);
    let bodies = ok.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    let e: Value = serde_json::from_str(&bodies[2]).unwrap();
    assert_eq!(e["event"], "build_failed");
    assert_eq!(e["components"][0]["name"], "app");
}

#[test]
fn push_sends_the_tags_to_each_repositorys_origin() {
    let p = project();
    let remotes = tempfile::tempdir().unwrap();
    for repo in ["core", "sdk", "app"] {
        let bare = remotes.path().join(format!("{repo}.git"));
        git2::Repository::init_bare(&bare).unwrap();
        git2::Repository::open(p.repo_path(repo))
            .unwrap()
            .remote("origin", bare.to_str().unwrap())
            .unwrap();
    }
    let beta = p.build("beta", 0);
    let j = run(
        &p,
        &["release", "tag", "--env", "beta", "--push", "--json"],
        0,
    )
    .json();
    let core_remote = remotes.path().join("core.git").display().to_string();
    assert_eq!(j["pushed"].as_array().unwrap().len(), 3, "{j}");
    assert!(
        j["pushed"]
            .as_array()
            .unwrap()
            .contains(&Value::from(core_remote)),
        "{j}"
    );
    for (repo, tag) in [("core", "v0.2.0"), ("sdk", "v0.1.1"), ("app", "v0.1.1")] {
        let bare = git2::Repository::open(remotes.path().join(format!("{repo}.git"))).unwrap();
        let pushed = bare
            .find_reference(&format!("refs/tags/{tag}"))
            .unwrap()
            .peel_to_commit()
            .unwrap()
            .id()
            .to_string();
        assert_eq!(
            pushed,
            beta.node(repo)["commit"].as_str().unwrap(),
            "{repo}"
        );
    }
    // Again: nothing created, the same tags pushed again (a no-op for the remote).
    let again = run(
        &p,
        &["release", "tag", "--env", "beta", "--push", "--json"],
        0,
    )
    .json();
    assert_eq!(again["tags"][0]["action"], "existing");
}

/// This repository's example (its graph, recipes and a scratch lockfile of its history,
/// with freshly generated repositories): the commits since each component's last tag
/// are conventional already.
#[test]
fn the_example_releases_what_its_conventional_commits_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path();
    let root = xtask::workspace_root();
    cascade_tests::copy_dir(&root.join("graph"), &project.join("graph"));
    cascade_tests::copy_dir(&root.join("recipes"), &project.join("recipes"));
    std::fs::create_dir_all(project.join("lockfiles")).unwrap();
    std::fs::copy(
        root.join("lockfiles/history/scratch-format3.yaml"),
        project.join("lockfiles/scratch-20260101T000000Z.yaml"),
    )
    .unwrap();
    xtask::ecosystem::generate(&root, &project.join("target/ecosystem")).expect("the ecosystem");
    let store = project.join("cache").display().to_string();
    let release = |what: &str| {
        let args: Vec<String> = [
            "--project",
            &project.display().to_string(),
            "release",
            what,
            "--env",
            "scratch",
            "--store",
            &store,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = cascade_tests::cascade(&args);
        assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
        r.json()
    };
    let plan = release("plan");
    let proposed: Vec<(&str, &str, &str)> = plan["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "no_release")
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["next"].as_str().unwrap(),
                c["bump"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        proposed,
        [
            ("ottochain", "0.8.0", "minor"),
            ("services", "1.1.1", "patch")
        ]
    );
    assert_eq!(
        component(&plan, "ottochain")["commits"][0]["subject"],
        "feat: webhook subscriptions"
    );

    // The example: a `feat!` on ottochain's develop makes it 1.0.0, which sdk's
    // and services' ranges (`<1.0.0`) refuse.
    let ottochain = git2::Repository::open(project.join("target/ecosystem/ottochain.git")).unwrap();
    let built = component(&plan, "ottochain")["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let parent = ottochain
        .find_commit(git2::Oid::from_str(&built).unwrap())
        .unwrap();
    let sig = git2::Signature::new(
        "Test",
        "test@example.com",
        &git2::Time::new(1_800_000_000, 0),
    )
    .unwrap();
    let breaking = ottochain
        .commit(
            None,
            &sig,
            &sig,
            "feat!: snapshots v2\n\nBREAKING CHANGE: old snapshots are refused\n",
            &parent.tree().unwrap(),
            &[&parent],
        )
        .unwrap()
        .to_string();
    let text =
        std::fs::read_to_string(project.join("lockfiles/scratch-20260101T000000Z.yaml")).unwrap();
    assert!(text.contains(&built));
    let edited = project.join("breaking.yaml");
    std::fs::write(&edited, text.replace(&built, &breaking)).unwrap();
    let r = cascade_tests::cascade(
        &[
            "--project",
            &project.display().to_string(),
            "release",
            "plan",
            "--lock",
            &edited.display().to_string(),
            "--store",
            &store,
            "--json",
        ]
        .map(String::from),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    let conflicts: Vec<(&str, &str)> = j["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap(),
                c["range"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(component(&j, "ottochain")["next"], "1.0.0");
    assert_eq!(
        conflicts,
        [("sdk", ">=0.5.0 <1.0.0"), ("services", ">=0.5.0 <1.0.0")]
    );
    assert!(
        r.stderr.contains(
            "releasing `ottochain` 1.0.0 breaks the range `>=0.5.0 <1.0.0` that `sdk` requires"
        ),
        "{}",
        r.stderr
    );

    let tagged = release("tag");
    assert_eq!(tagged["tags"].as_array().unwrap().len(), 2, "{tagged}");
    let commit = ottochain
        .revparse_single("v0.8.0^{commit}")
        .unwrap()
        .id()
        .to_string();
    assert_eq!(
        commit,
        component(&plan, "ottochain")["commit"].as_str().unwrap()
    );
    assert_eq!(
        component(&release("plan"), "ottochain")["status"],
        "released"
    );
}

/// Two components of one repository, each in its directory with its own tag pattern:
/// each counts only the commits that touched its directory, and gets its own tag.
#[test]
fn components_of_a_monorepo_release_by_their_own_directories_and_tags() {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/beta.yaml",
        "name: beta\nmode: branch\nsources:\n\
         \x20 web: { repo: ../../repos/mono, ref: develop, dir: web, version_tags: \"web-v{version}\" }\n\
         \x20 api: { repo: ../../repos/mono, ref: develop, dir: api, version_tags: \"api-v{version}\" }\n",
    );
    p.write("recipes/web.yaml", &recipe(&[]));
    p.write("recipes/api.yaml", &recipe(&[]));
    let root = p.commit(
        "mono",
        "develop",
        &[
            ("web/data.txt", Some("web\n")),
            ("api/data.txt", Some("api\n")),
        ],
        "chore: initial",
    );
    p.tag("mono", "web-v0.1.0", &root);
    p.tag("mono", "api-v1.4.0", &root);
    p.commit(
        "mono",
        "develop",
        &[("web/page.txt", Some("page"))],
        "feat(web): a page",
    );
    p.commit(
        "mono",
        "develop",
        &[("api/fix.txt", Some("fix"))],
        "fix(api): a route",
    );
    p.commit(
        "mono",
        "develop",
        &[("README", Some("x"))],
        "feat: top level only",
    );
    p.build("beta", 0);
    let plan = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    let web = component(&plan, "web");
    assert_eq!(
        (&web["next"], &web["tag"]),
        (&Value::from("0.2.0"), &Value::from("web-v0.2.0"))
    );
    assert_eq!(web["commits"].as_array().unwrap().len(), 1, "{web}");
    let api = component(&plan, "api");
    assert_eq!(
        (&api["next"], &api["tag"]),
        (&Value::from("1.4.1"), &Value::from("api-v1.4.1"))
    );
    run(&p, &["release", "tag", "--env", "beta"], 0);
    let tip = git2::Repository::open(p.repo_path("mono"))
        .unwrap()
        .revparse_single("develop")
        .unwrap()
        .id()
        .to_string();
    assert_eq!(tag_commit(&p, "mono", "web-v0.2.0"), Some(tip.clone()));
    assert_eq!(tag_commit(&p, "mono", "api-v1.4.1"), Some(tip));
}

/// `recipe` with a changelog file, left out of the source or not.
fn recipe_with_changelog(inputs: &[&str], excluded: bool) -> String {
    let mut r = recipe(inputs);
    r.push_str("changelog: CHANGELOG.md\n");
    if excluded {
        r.push_str("source: { exclude: [CHANGELOG.md] }\n");
    }
    r
}

/// The file at `path` on `commit` of repository `repo`.
fn file_at(p: &TestProject, repo: &str, commit: &str, path: &str) -> Option<String> {
    let r = git2::Repository::open(p.repo_path(repo)).expect("open");
    let c = r.revparse_single(commit).ok()?.peel_to_commit().ok()?;
    let entry = c.tree().ok()?.get_path(std::path::Path::new(path)).ok()?;
    let blob = r.find_blob(entry.id()).ok()?;
    Some(String::from_utf8_lossy(blob.content()).into_owned())
}

fn branch_head(p: &TestProject, repo: &str, branch: &str) -> String {
    git2::Repository::open(p.repo_path(repo))
        .expect("open")
        .revparse_single(branch)
        .expect("branch")
        .id()
        .to_string()
}

#[test]
fn a_changelog_is_committed_on_the_built_commit_and_staging_still_builds_from_cache() {
    let mut p = project();
    // core has a changelog already; app gets its first.
    p.write("recipes/core.yaml", &recipe_with_changelog(&[], true));
    p.write("recipes/app.yaml", &recipe_with_changelog(&["sdk"], true));
    let old = "# Changelog\n\n## 0.1.0\n\n* initial\n";
    p.commit(
        "core",
        "develop",
        &[("CHANGELOG.md", Some(old))],
        "docs: a changelog",
    );
    let beta = p.build("beta", 0);
    // core's work tree is on another branch, so `develop` moves; app's has `develop`
    // checked out, so it stays (the work tree would be left behind).
    git2::Repository::open(p.repo_path("core"))
        .unwrap()
        .set_head("refs/heads/main")
        .unwrap();
    let plan = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    let r = run(&p, &["release", "tag", "--env", "beta", "--json"], 0).json();
    let outcome = |name: &str| {
        r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["component"] == name)
            .unwrap_or_else(|| panic!("no tag of {name} in {r}"))
            .clone()
    };

    let cases = [
        ("core", "v0.2.0", Some(old), "moved"),
        ("app", "v0.1.1", None, "checked_out"),
    ];
    for (name, tag, before, branch) in cases {
        let built = beta.node(name)["commit"].as_str().unwrap().to_string();
        let tagged = tag_commit(&p, name, tag).expect("tagged");
        assert_ne!(tagged, built, "{name}");
        let o = outcome(name);
        assert_eq!(o["commit"], tagged.as_str(), "{name}");
        assert_eq!(o["changelog"]["parent"], built.as_str(), "{name}");
        assert_eq!(o["changelog"]["file"], "CHANGELOG.md", "{name}");
        assert_eq!(
            o["changelog"]["branch"],
            serde_json::json!({ "state": branch, "branch": "develop" }),
            "{name}"
        );
        // One commit on top of the built one, the branch moved to it.
        let r = git2::Repository::open(p.repo_path(name)).unwrap();
        let c = r
            .find_commit(git2::Oid::from_str(&tagged).unwrap())
            .unwrap();
        assert_eq!(c.parent_count(), 1);
        assert_eq!(c.parent_id(0).unwrap().to_string(), built);
        assert_eq!(
            c.author().when().seconds(),
            c.parent(0).unwrap().committer().when().seconds()
        );
        assert_eq!(c.author().name().ok(), Some("cascade"));
        let version = tag.trim_start_matches('v');
        assert_eq!(
            c.message().ok(),
            Some(format!("chore(release): {name} {version}\n").as_str())
        );
        let head = if branch == "moved" { &tagged } else { &built };
        assert_eq!(&branch_head(&p, name, "develop"), head, "{name}");
        // The new section first, under the heading; an older one kept below.
        let section = component(&plan, name)["changelog"].as_str().unwrap();
        assert!(section.starts_with(&format!("## {version}\n")), "{section}");
        let expected = match before {
            Some(_) => format!("# Changelog\n\n{section}\n## 0.1.0\n\n* initial\n"),
            None => format!("# Changelog\n\n{section}"),
        };
        assert_eq!(
            file_at(&p, name, &tagged, "CHANGELOG.md").as_deref(),
            Some(expected.as_str()),
            "{name}"
        );
        // Only that file changed.
        let diff = r
            .diff_tree_to_tree(
                Some(&c.parent(0).unwrap().tree().unwrap()),
                Some(&c.tree().unwrap()),
                None,
            )
            .unwrap();
        assert_eq!(diff.deltas().len(), 1, "{name}");
    }
    // sdk writes no changelog: tagged on the built commit, as before.
    assert_eq!(
        tag_commit(&p, "sdk", "v0.1.1").as_deref(),
        beta.node("sdk")["commit"].as_str()
    );
    assert!(outcome("sdk").get("changelog").is_none());

    // Twice: nothing is written, and the plan sees every version released.
    let heads: Vec<String> = ["core", "sdk", "app"]
        .iter()
        .map(|n| branch_head(&p, n, "develop"))
        .collect();
    let again = run(&p, &["release", "tag", "--env", "beta"], 0);
    assert!(
        again.stdout.contains("0 tags created, 3 already there"),
        "{}",
        again.stdout
    );
    let after: Vec<String> = ["core", "sdk", "app"]
        .iter()
        .map(|n| branch_head(&p, n, "develop"))
        .collect();
    assert_eq!(heads, after);
    let plan = run(&p, &["release", "plan", "--env", "beta", "--json"], 0).json();
    for name in ["core", "sdk", "app"] {
        assert_eq!(component(&plan, name)["status"], "released", "{name}");
    }

    // staging pins the tags (on the changelog commits) and builds from the cache.
    run(&p, &["promote", "--from", "beta", "--to", "staging"], 0);
    let built = p.build("staging", 0);
    assert_eq!(built.with_status("built"), Vec::<String>::new());
    assert_eq!(built.with_status("cached").len(), 3, "{}", built.stdout);
    for n in ["core", "sdk", "app"] {
        assert_eq!(built.node(n)["output"], beta.node(n)["output"], "{n}");
    }
    assert_eq!(built.node("core")["version"], "0.2.0");
    assert_eq!(
        built.node("core")["commit"].as_str(),
        tag_commit(&p, "core", "v0.2.0").as_deref()
    );
}

#[test]
fn a_changelog_in_a_sub_directory_is_written_there() {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/beta.yaml",
        "name: beta\nmode: branch\nsources:\n\
         \x20 web: { repo: ../../repos/mono, ref: develop, dir: packages/web, version_tags: \"web-v{version}\" }\n",
    );
    p.write("recipes/web.yaml", &recipe_with_changelog(&[], true));
    let root = p.commit(
        "mono",
        "develop",
        &[
            ("packages/web/data.txt", Some("web\n")),
            ("README", Some("x")),
        ],
        "chore: initial",
    );
    p.tag("mono", "web-v0.1.0", &root);
    p.commit(
        "mono",
        "develop",
        &[("packages/web/page.txt", Some("page"))],
        "feat(web): a page",
    );
    let beta = p.build("beta", 0);
    let built = beta.node("web")["commit"].as_str().unwrap().to_string();
    let out = run(&p, &["release", "tag", "--env", "beta"], 0);
    assert!(
        out.stdout
            .contains("wrote packages/web/CHANGELOG.md in a commit on"),
        "{}",
        out.stdout
    );
    let tagged = tag_commit(&p, "mono", "web-v0.2.0").expect("tagged");
    let text = file_at(&p, "mono", &tagged, "packages/web/CHANGELOG.md").expect("written");
    assert!(text.starts_with("# Changelog\n\n## 0.2.0\n"), "{text}");
    assert_eq!(file_at(&p, "mono", &tagged, "CHANGELOG.md"), None);
    assert_eq!(file_at(&p, "mono", &tagged, "README").as_deref(), Some("x"));
    let r = git2::Repository::open(p.repo_path("mono")).unwrap();
    let c = r
        .find_commit(git2::Oid::from_str(&tagged).unwrap())
        .unwrap();
    assert_eq!(c.parent_id(0).unwrap().to_string(), built);
}

#[test]
fn a_changelog_that_is_part_of_the_source_is_refused() {
    let p = project();
    p.write("recipes/core.yaml", &recipe_with_changelog(&[], false));
    p.build("beta", 0);
    let r = run(&p, &["release", "plan", "--env", "beta"], 1);
    assert!(
        r.stderr
            .contains("`CHANGELOG.md` is part of the source of `core`"),
        "{}",
        r.stderr
    );
    insta::assert_snapshot!(redacted(&p, &r.stderr));
    let t = run(&p, &["release", "tag", "--env", "beta", "--json"], 2).json();
    assert_eq!(t["error"]["code"], "cascade::release_refused");
    // Nothing tagged anywhere, no branch moved.
    for repo in ["core", "sdk", "app"] {
        assert_eq!(tag_count(&p, repo), 1, "{repo} was tagged");
    }
}
