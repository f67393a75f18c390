//! Against the real engine: loading archives cascade-image wrote, and smoke tests that
//! pass, fail by the deadline, fail fast, and always clean up. Skipped without an
//! engine, failed without one when `CI=true` (`.ci/services/docker.sh` starts one).

mod common;

use std::time::{Duration, Instant};

use cascade_docker::{DockerError, Expect, SmokeTest, TestOutcome};
use common::{
    assert_no_leftovers, build_image, engine, find_container_by_env, inspector, loaded_image,
    token, INDEX, VERSION,
};

fn assert_cleaned_up(outcome: &TestOutcome) {
    assert_no_leftovers(&outcome.resource_name);
}

#[test]
fn load_twice_gives_the_config_digest_as_id() {
    let Some(docker) = engine() else { return };
    // Negotiated down to what the engine speaks (1.41 for docker.io 20.10).
    assert!(
        docker.api_version().starts_with("1."),
        "{}",
        docker.api_version()
    );
    let tag = "cascade-docker-test/load-twice:1";
    let image = build_image(tag);
    let first = docker.load_archive(&image.archive).unwrap();
    let second = docker.load_archive(&image.archive).unwrap();
    assert_eq!(first.id, second.id);
    // The classic image store (docker.io 20.10) names an image by its config digest.
    assert_eq!(first.id, image.built.config_digest.to_string());
    assert_eq!(first.tags, vec![tag.to_string()]);
    assert_eq!(docker.image_id(tag).unwrap(), Some(first.id.clone()));
    assert_eq!(docker.image_id(&first.id).unwrap(), Some(first.id.clone()));
    assert_eq!(
        docker
            .image_id("cascade-docker-test/never-loaded:0")
            .unwrap(),
        None
    );
}

#[test]
fn a_broken_archive_is_a_load_error() {
    let Some(docker) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.tar");
    std::fs::write(&path, b"this is not a tar archive").unwrap();
    let err = docker.load_archive(&path).unwrap_err();
    assert!(matches!(err, DockerError::Load { .. }), "{err:?}");
    let err = docker
        .load_archive(&dir.path().join("missing.tar"))
        .unwrap_err();
    assert!(matches!(err, DockerError::Io { .. }), "{err:?}");
}

#[test]
fn http_smoke_test_passes() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let test = SmokeTest {
        expect: Expect {
            status: Some(200),
            body_contains: Some(INDEX.into()),
            ..Expect::default()
        },
        ..SmokeTest::http("index", 8080, "/index.html")
    };
    let outcome = docker.smoke_test(image, &test).unwrap();
    assert!(outcome.passed, "{outcome:?}");
    assert!(outcome.attempts >= 1, "{outcome:?}");
    assert!(outcome.log_tail.is_empty(), "{outcome:?}");
    assert_cleaned_up(&outcome);
}

#[test]
fn a_wrong_body_fails_by_the_deadline_with_what_was_expected_and_the_log() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let timeout = Duration::from_secs(3);
    let test = SmokeTest {
        expect: Expect {
            body_contains: Some("no such text".into()),
            ..Expect::default()
        },
        timeout,
        ..SmokeTest::http("wrong body", 8080, "/version")
    };
    let started = Instant::now();
    let outcome = docker.smoke_test(image, &test).unwrap();
    let elapsed = started.elapsed();
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(12),
        "{elapsed:?}"
    );
    // The first attempt at once, then after 100, 200, 400, 800 ms…: several by 3 s,
    // unless the machine is very busy.
    assert!(outcome.attempts >= 1, "{outcome:?}");
    assert!(
        outcome
            .detail
            .contains("expected a body containing \"no such text\"")
            && outcome.detail.contains(VERSION),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.log_tail.iter().any(|l| l.contains("starting")),
        "{:?}",
        outcome.log_tail
    );
    assert_cleaned_up(&outcome);
}

#[test]
fn a_container_that_exits_fails_fast_with_its_exit_code_and_log() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let test = SmokeTest {
        cmd: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo boom; exit 3".into(),
        ]),
        ..SmokeTest::http("exits", 8080, "/")
    };
    assert_eq!(test.timeout, Duration::from_secs(30));
    let outcome = docker.smoke_test(image, &test).unwrap();
    assert!(!outcome.passed, "{outcome:?}");
    assert!(outcome.elapsed < Duration::from_secs(10), "{outcome:?}");
    assert!(
        outcome.detail.contains("exited with code 3"),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.log_tail.iter().any(|l| l.contains("boom")),
        "{:?}",
        outcome.log_tail
    );
    assert_cleaned_up(&outcome);
}

#[test]
fn command_probe_passes_and_fails_on_exit_code() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let test = SmokeTest {
        expect: Expect {
            body_contains: Some(VERSION.into()),
            ..Expect::default()
        },
        ..SmokeTest::command("version", vec!["cat".into(), "/www/version".into()])
    };
    let outcome = docker.smoke_test(image, &test).unwrap();
    assert!(outcome.passed, "{outcome:?}");
    assert_cleaned_up(&outcome);

    let test = SmokeTest {
        timeout: Duration::from_secs(1),
        ..SmokeTest::command("missing", vec!["cat".into(), "/www/missing".into()])
    };
    let outcome = docker.smoke_test(image, &test).unwrap();
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .detail
            .contains("expected exit code 0, got exit code 1"),
        "{}",
        outcome.detail
    );
    assert_cleaned_up(&outcome);
}

#[test]
fn an_image_that_is_not_loaded_is_named() {
    let Some(docker) = engine() else { return };
    let err = docker
        .smoke_test(
            "cascade-docker-test/never-loaded:0",
            &SmokeTest::http("missing", 8080, "/"),
        )
        .unwrap_err();
    assert!(matches!(err, DockerError::ImageNotFound { .. }), "{err:?}");
}

#[test]
fn the_port_is_published_on_loopback_only_on_a_private_network() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let token = token("loopback");
    let test = SmokeTest {
        env: vec![token.clone()],
        expect: Expect {
            body_contains: Some("never served".into()),
            ..Expect::default()
        },
        timeout: Duration::from_secs(5),
        ..SmokeTest::http("loopback", 8080, "/")
    };
    let outcome = std::thread::scope(|s| {
        let running = s.spawn(|| docker.smoke_test(image, &test));
        let id = find_container_by_env(&token).expect("the test's container is running");
        let (rt, client) = inspector();
        let inspect = rt.block_on(client.inspect_container(&id, None)).unwrap();
        let name = inspect.name.clone().unwrap_or_default();
        let name = name.trim_start_matches('/');
        assert!(name.starts_with("cascade-smoke-"), "{name}");

        // Published: 8080/tcp, on 127.0.0.1 only, on an ephemeral port.
        let ports = inspect
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.clone())
            .unwrap_or_default();
        let bindings = ports.get("8080/tcp").cloned().flatten().unwrap_or_default();
        assert!(!bindings.is_empty(), "{ports:?}");
        for b in &bindings {
            assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"), "{bindings:?}");
            let port: u16 = b.host_port.as_deref().unwrap_or("").parse().unwrap();
            assert_ne!(port, 8080, "an ephemeral port, not the container's");
        }
        let requested = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.clone())
            .unwrap_or_default();
        for b in requested.values().flatten().flatten() {
            assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"), "{requested:?}");
        }

        // Attached to its own network only, named like the container and labelled.
        let networks = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        assert_eq!(
            networks.keys().collect::<Vec<_>>(),
            vec![&name.to_string()],
            "{networks:?}"
        );
        let network = rt.block_on(client.inspect_network(name, None)).unwrap();
        assert_eq!(network.driver.as_deref(), Some("bridge"));
        assert_eq!(
            network
                .labels
                .unwrap_or_default()
                .get("cascade")
                .map(String::as_str),
            Some("1")
        );
        running.join().unwrap().unwrap()
    });
    assert!(!outcome.passed, "{outcome:?}");
    assert_cleaned_up(&outcome);
}

#[test]
fn cleanup_all_removes_a_running_test_s_container_and_network() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let token = token("cleanup");
    let test = SmokeTest {
        env: vec![token.clone()],
        expect: Expect {
            body_contains: Some("never served".into()),
            ..Expect::default()
        },
        timeout: Duration::from_secs(60),
        ..SmokeTest::http("interrupted", 8080, "/")
    };
    let outcome = std::thread::scope(|s| {
        let running = s.spawn(|| docker.smoke_test(image, &test));
        find_container_by_env(&token).expect("the test's container is running");
        // What a Ctrl-C handler does, while the test is still probing.
        let started = Instant::now();
        docker.cleanup_all_cascade_resources().unwrap();
        let outcome = running.join().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(15));
        outcome
    });
    assert!(!outcome.passed, "{outcome:?}");
    assert!(
        outcome.detail.contains("removed before the test passed"),
        "{}",
        outcome.detail
    );
    assert_cleaned_up(&outcome);
}
