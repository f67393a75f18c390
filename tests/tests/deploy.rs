//! `cascade deploy` on a real Docker Engine (started by .ci/run; these tests fail in CI
//! without one and skip elsewhere, saying so), with the example's services and
//! explorer: only changed containers are replaced, a failing health check rolls back by
//! itself, a slow start passes thanks to backoff, `--dry-run` changes nothing.
//!
//! Each test deploys its own environment (`dt<random>`), whose containers are named
//! after it and publish ports the engine picks on 127.0.0.1, so tests (and another
//! engineer's) never collide; a guard removes every container labelled with that
//! environment, and only those.

mod deploy_support;

use deploy_support::{http_get, Example};

#[test]
fn deploys_replace_only_what_changed_and_dry_runs_change_nothing() {
    if !cascade_tests::docker() {
        return;
    }
    let ex = Example::new(deploy_support::HEALTH);
    let v1 = ex.build();
    let first = ex.deploy(&[], 0);
    assert_eq!(first.json()["outcome"], "deployed", "{}", first.stderr);
    let plan: Vec<(String, String)> = ex.plan_of(&first);
    assert_eq!(
        plan,
        [
            ("services".into(), "added".into()),
            ("explorer".into(), "added".into())
        ],
        "upstream first, as the graph orders them"
    );
    let ids1 = ex.container_ids();
    assert_eq!(ids1.len(), 2, "{ids1:?}");
    assert!(http_get(ex.port("services"), "/version").contains(&v1.services_commit));
    assert!(http_get(ex.port("explorer"), "/").contains("ottochain explorer"));
    ex.assert_labels();
    let status = ex.run(&["status", "--env", &ex.env, "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s = status.json();
    assert_eq!(s["lockfile"], v1.lockfile.as_str(), "{s}");
    for c in s["containers"].as_array().unwrap() {
        assert_eq!(c["health"], "healthy", "{c}");
        assert_eq!(c["state"], "running", "{c}");
    }

    // The same lockfile again: nothing is touched.
    let again = ex.deploy(&[], 0);
    assert!(
        ex.plan_of(&again).iter().all(|(_, c)| c == "unchanged"),
        "{}",
        again.stdout
    );
    assert_eq!(ex.container_ids(), ids1);

    // A new explorer commit: the plan names explorer alone, a dry run changes nothing,
    // the deploy replaces the explorer container only.
    ex.commit("explorer", "EXPLORER_NOTE", "one more line\n");
    let v2 = ex.build();
    assert_ne!(v2.lockfile, v1.lockfile);
    let dry = ex.deploy(&["--dry-run"], 0);
    assert_eq!(dry.json()["outcome"], "dry-run");
    assert_eq!(
        ex.plan_of(&dry),
        [
            ("services".into(), "unchanged".into()),
            ("explorer".into(), "changed".into())
        ]
    );
    assert_eq!(ex.container_ids(), ids1, "a dry run changes nothing");
    let text = ex.run(&["deploy", "--env", &ex.env, "--dry-run"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    insta::assert_snapshot!("dry_run_plan", ex.redact(&text.stderr));
    assert_eq!(ex.history().len(), 2, "a dry run records nothing");
    let second = ex.deploy(&[], 0);
    let ids2 = ex.container_ids();
    assert_eq!(
        ids2["services"], ids1["services"],
        "services is not touched"
    );
    assert_ne!(ids2["explorer"], ids1["explorer"], "explorer is replaced");
    assert_eq!(second.json()["replaced"].as_array().unwrap().len(), 1);

    // A new services commit: services (and explorer, whose image is built on it) are
    // replaced, and /version answers the new commit.
    ex.commit("services", "SERVICES_NOTE", "changed\n");
    let v3 = ex.build();
    assert_ne!(v3.services_commit, v1.services_commit);
    ex.deploy(&[], 0);
    let ids3 = ex.container_ids();
    assert_ne!(ids3["services"], ids2["services"]);
    let version = http_get(ex.port("services"), "/version");
    assert!(version.contains(&v3.services_commit), "{version}");
    let outcomes: Vec<String> = ex.history().iter().map(|d| d.0.clone()).collect();
    assert_eq!(outcomes, ["deployed"; 4]);
    ex.assert_labels();

    // A container cascade did not create under a deployed name is never removed: the
    // deploy stops before touching anything (exit 3).
    let image = ex.containers()[1].image.clone();
    ex.clean();
    let docker = cascade_docker::Docker::connect().unwrap();
    let foreign = docker
        .create_deployed(&cascade_docker::ContainerSpec {
            name: format!("{}-services", ex.env),
            image,
            labels: Default::default(),
            env: vec![],
            ports: vec![],
            binds: vec![],
            restart: "no".into(),
        })
        .unwrap();
    struct Remove<'a>(&'a cascade_docker::Docker, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove(&self.1);
        }
    }
    let _remove = Remove(&docker, foreign.clone());
    let refused = ex.run(&["deploy", "--env", &ex.env]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("did not create"),
        "{}",
        refused.stderr
    );
    assert!(
        docker.container(&foreign).unwrap().is_some(),
        "it is still there"
    );
    assert!(ex.containers().is_empty(), "nothing else was started");
}

#[test]
fn a_failing_health_check_rolls_back_to_the_previous_lockfile() {
    if !cascade_tests::docker() {
        return;
    }
    let ex = Example::new(deploy_support::HEALTH);
    let v1 = ex.build();
    ex.deploy(&[], 0);
    let ids1 = ex.container_ids();

    // The recipe variant: a new commit whose image answers 500 on /health.
    ex.services_variant("broken\n", "SERVICES_UNHEALTHY: \"1\"");
    let v2 = ex.build();
    assert_ne!(v2.services_commit, v1.services_commit);
    let failed = ex.deploy(&[], 1);
    let j = failed.json();
    assert_eq!(j["outcome"], "failed", "{}", failed.stderr);
    assert_eq!(j["failure"]["component"], "services");
    assert!(
        j["failure"]["detail"].as_str().unwrap().contains("500"),
        "{j}"
    );
    assert!(
        !j["failure"]["log_tail"].as_array().unwrap().is_empty(),
        "the failing container's last log lines are shown"
    );
    assert_eq!(j["rollback"]["outcome"], "deployed", "{j}");
    assert_eq!(j["rollback"]["lockfile"], v1.lockfile.as_str());
    // Explorer was never reached, so it was not touched; services runs v1 again.
    let ids = ex.container_ids();
    assert_eq!(ids["explorer"], ids1["explorer"]);
    let version = http_get(ex.port("services"), "/version");
    assert!(version.contains(&v1.services_commit), "{version}");
    let history = ex.history();
    assert_eq!(
        history,
        [
            ("deployed".into(), "deploy".into(), v1.lockfile.clone()),
            ("failed".into(), "deploy".into(), v2.lockfile.clone()),
            (
                "deployed".into(),
                "auto-rollback".into(),
                v1.lockfile.clone()
            ),
        ]
    );
    let text = ex.run(&["deploy", "--env", &ex.env]);
    assert_eq!(text.code, 1);
    assert!(
        text.stderr.contains("rolling back to") && text.stderr.contains("| services"),
        "the log tail is printed:\n{}",
        text.stderr
    );

    // --no-rollback leaves the failed state for debugging; `rollback --deploy` then
    // restores the last good deployment (asking first, or --yes).
    let kept = ex.deploy(&["--no-rollback"], 1);
    assert!(kept.json()["rollback"].is_null());
    let status = ex.run(&["status", "--env", &ex.env, "--json"]).json();
    let services = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "services")
        .cloned()
        .unwrap();
    assert_eq!(services["health"], "unhealthy", "{services}");
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let refused = ex.run(&["rollback", "--env", &ex.env, "--deploy"]);
        assert_eq!(refused.code, 2, "{}", refused.stderr);
        assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    }
    let back = ex.run(&["rollback", "--env", &ex.env, "--deploy", "--yes", "--json"]);
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert_eq!(back.json()["lockfile"], v1.lockfile.as_str());
    let version = http_get(ex.port("services"), "/version");
    assert!(version.contains(&v1.services_commit), "{version}");
    ex.assert_labels();
}

#[test]
fn a_slow_start_passes_thanks_to_backoff_and_too_few_retries_fail() {
    if !cascade_tests::docker() {
        return;
    }
    // Three seconds before it listens: ten attempts at a steady 100 ms would give up
    // after one second; delays that double up to 1 s reach it within ten.
    // Explorer runs two replicas, health-checked by a command in the container (the
    // services binary it is built on answers `--version`).
    let ex = Example::without_engine();
    ex.set_deploy_with(
        "      env: { SERVICES_STARTUP_DELAY: \"3\" }\n      health: { http: { port: 8080, path: /health }, interval: 1s, retries: 10 }",
        "      replicas: 2\n      health: { command: [/usr/local/bin/services, --version] }",
    );
    let v1 = ex.build();
    let r = ex.deploy(&[], 0);
    let explorers: Vec<(String, u16)> = ex
        .containers()
        .into_iter()
        .filter(|c| c.labels["cascade.component"] == "explorer")
        .map(|c| (c.name.clone(), c.ports[0].2))
        .collect();
    assert_eq!(
        explorers.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            format!("{}-explorer-1", ex.env),
            format!("{}-explorer-2", ex.env)
        ]
    );
    assert_ne!(explorers[0].1, explorers[1].1, "one host port each");
    for (_, port) in &explorers {
        assert!(http_get(*port, "/").contains("ottochain explorer"));
    }
    let explorer_health = &r.json()["replaced"][1]["containers"][1];
    assert_eq!(explorer_health["healthy"], true, "{explorer_health}");
    assert!(
        explorer_health["detail"]
            .as_str()
            .unwrap()
            .contains("--version"),
        "{explorer_health}"
    );
    let services = &r.json()["replaced"][0]["containers"][0];
    assert_eq!(services["healthy"], true, "{}", r.stderr);
    let attempts = services["attempts"].as_u64().unwrap();
    assert!(attempts > 1 && attempts <= 10, "{services}");
    assert!(
        services["duration_ms"].as_u64().unwrap() >= 3000,
        "{services}"
    );
    assert!(http_get(ex.port("services"), "/version").contains(&v1.services_commit));

    // The same start with two retries and no start period fails; with nothing deployed
    // before, the rollback is to no containers.
    ex.set_deploy(
        "      env: { SERVICES_STARTUP_DELAY: \"3\" }\n      health: { http: { port: 8080, path: /health }, interval: 200ms, retries: 2 }",
    );
    ex.clean();
    std::fs::remove_file(ex.root.join(format!("deployments/{}.yaml", ex.env))).unwrap();
    let r = ex.deploy(&[], 1);
    let j = r.json();
    assert_eq!(j["outcome"], "failed", "{}", r.stderr);
    assert!(
        j["no_rollback"].as_str().unwrap().contains("removed"),
        "{j}"
    );
    assert!(
        ex.container_ids().is_empty(),
        "the failed containers are removed"
    );
}

#[test]
fn an_environment_without_deploy_is_bad_input() {
    let ex = Example::without_engine();
    let r = ex.run(&["deploy", "--env", "scratch-nodeploy", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no `deploy:` section"), "{}", r.stderr);
}

/// `require_signature:` in the environment: a lockfile whose images its key did not
/// sign and attest is refused before anything changes (the running containers and the
/// history stay as they are, exit 1, each image named); the same sources built with
/// `--push --sign` by that key deploy. Needs the registry on 127.0.0.1:5000 too.
#[test]
fn require_signature_refuses_unsigned_images_and_changes_nothing() {
    if !cascade_tests::docker() || !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let ex = Example::new(deploy_support::HEALTH);
    ex.build();
    ex.deploy(&[], 0);
    let ids1 = ex.container_ids();
    let history1 = ex.history();

    let keys = tempfile::tempdir().unwrap();
    let r = cascade_tests::cascade(&[
        "keygen".into(),
        "-o".into(),
        keys.path().display().to_string(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let env_file = ex.root.join(format!("graph/environments/{}.yaml", ex.env));
    let text = std::fs::read_to_string(&env_file).unwrap();
    std::fs::write(
        &env_file,
        text.replacen(
            "\ndeploy:",
            &format!(
                "\nrequire_signature: [{}]\ndeploy:",
                keys.path().join("cascade.pub").display()
            ),
            1,
        ),
    )
    .unwrap();

    ex.commit("explorer", "EXPLORER_NOTE", "unsigned\n");
    ex.build();
    let refused = ex.deploy(&[], 1);
    for needle in [
        "requires images signed",
        "`services`",
        "`explorer`",
        "not signed",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle}: {}",
            refused.stderr
        );
    }
    assert_eq!(ex.container_ids(), ids1, "nothing was replaced");
    assert_eq!(ex.history(), history1, "nothing was recorded");

    // The same sources, pushed and signed by the required key: deployed.
    let key = keys.path().join("cascade.key").display().to_string();
    let signed = ex.run(&[
        "build",
        "--env",
        &ex.env,
        "--json",
        "--skip-tests",
        "--push",
        "--sign",
        &key,
    ]);
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let ok = ex.deploy(&[], 0);
    assert_eq!(ok.json()["outcome"], "deployed", "{}", ok.stderr);
    assert_ne!(ex.container_ids()["explorer"], ids1["explorer"]);
}

/// The example across a fleet: this machine's engine (`node1`) and a second machine
/// reached over ssh (`node2`, `.ci/services/fleet.sh`): services on both, explorer on
/// node2 only, each health-checked where it runs (node2's through ssh).
#[test]
fn the_example_runs_across_a_fleet() {
    let ssh_config = std::env::var_os("CASCADE_SERVICES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/tmp/cascade-services".into())
        .join("fleet/ssh_config");
    let fleet = cascade_docker::Docker::connect_to(deploy_support::FLEET_NODE2).is_ok()
        && ssh_config.exists();
    if !cascade_tests::docker()
        || !cascade_tests::require(
            "the fleet's second machine",
            fleet,
            "run .ci/services/fleet.sh",
        )
    {
        return;
    }
    // The in-process cascade reads it; every test of this binary would set the same.
    std::env::set_var("CASCADE_SSH_CONFIG", &ssh_config);
    let ex = Example::without_engine();
    let env = &ex.env;
    std::fs::write(
        ex.root.join(format!("graph/environments/{env}.yaml")),
        format!(
            "{}deploy:\n  hosts:\n    node1: unix:///var/run/docker.sock\n    node2: ssh://root@10.251.2.2:2222\n  components:\n    services:\n      container: {env}-services\n      ports: [\"8080\"]\n{}\n    explorer:\n      hosts: [node2]\n      container: {env}-explorer\n      ports: [\"8080\"]\n      health: {{ http: {{ port: 8080, path: / }}, interval: 1s }}\n",
            ex.scratch_sources().replace("name: scratch", &format!("name: {env}")),
            deploy_support::HEALTH
        ),
    )
    .unwrap();
    let v1 = ex.build();
    let r = ex.deploy(&[], 0);
    let steps: Vec<(String, String)> = r.json()["replaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("services".to_string(), "node1".to_string()),
            ("services".to_string(), "node2".to_string()),
            ("explorer".to_string(), "node2".to_string())
        ],
        "upstream first, then host by host: {}",
        r.stderr
    );
    // services answers its commit on node1, and every container is healthy where it runs.
    assert!(http_get(ex.port("services"), "/version").contains(&v1.services_commit));
    let status = ex.run(&["status", "--env", env, "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s = status.json();
    let placed: Vec<(String, String, String)> = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["health"], "healthy", "{c}");
            (
                c["host"].as_str().unwrap().to_string(),
                c["component"].as_str().unwrap().to_string(),
                c["lockfile"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(placed.len(), 3, "{s}");
    assert!(placed.iter().all(|(_, _, l)| *l == v1.lockfile), "{s}");
    assert_eq!(s["uniform"], true, "{s}");
}
