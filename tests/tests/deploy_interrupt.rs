//! An interrupt in the middle of a deploy (what the CLI's SIGINT/SIGTERM handler does:
//! `cascade::interrupt_deploy`) finishes the container swap under way, stops waiting
//! for its health check, and rolls back: the old state runs, never neither. Its own
//! test binary, because the interrupt flag is process-wide. The real signal through
//! the real binary is `crates/cascade-cli/tests/deploy_signal.rs`.

mod deploy_support;

use std::time::{Duration, Instant};

use deploy_support::{http_get, Example};

#[test]
fn an_interrupted_deploy_rolls_back_to_the_old_state() {
    if !cascade_tests::docker() {
        return;
    }
    let ex = Example::new(deploy_support::HEALTH);
    let v1 = ex.build();
    ex.deploy(&[], 0);
    let ids1 = ex.container_ids();

    // v2 takes 5 s to listen, so its health check is still waiting when we interrupt.
    ex.services_variant("slow\n", "SERVICES_STARTUP_DELAY: \"5\"");
    let v2 = ex.build();
    let env = ex.env.clone();
    let v1_image = ex
        .containers()
        .into_iter()
        .find(|c| c.labels["cascade.component"] == "services")
        .unwrap()
        .labels["cascade.image"]
        .clone();
    let interrupter = std::thread::spawn(move || {
        let docker = cascade_docker::Docker::connect().unwrap();
        let start = Instant::now();
        // Once a services container of v2 exists, the swap is done and the health check
        // waits: interrupt then.
        while start.elapsed() < Duration::from_secs(60) {
            let swapped = docker
                .containers_with(&[("cascade.env", &env), ("cascade.component", "services")])
                .unwrap()
                .iter()
                .any(|c| c.labels["cascade.image"] != v1_image);
            if swapped && cascade::interrupt_deploy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let r = ex.deploy(&[], 130);
    assert!(
        interrupter.join().unwrap(),
        "the deploy was never interrupted"
    );
    let j = r.json();
    assert_eq!(j["outcome"], "interrupted", "{}", r.stderr);
    assert!(
        j["failure"]["detail"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{j}"
    );
    assert_eq!(j["rollback"]["outcome"], "deployed", "{j}");
    let version = http_get(ex.port("services"), "/version");
    assert!(version.contains(&v1.services_commit), "{version}");
    assert_eq!(
        ex.container_ids()["explorer"],
        ids1["explorer"],
        "explorer was not reached"
    );
    let outcomes: Vec<(String, String)> = ex
        .history()
        .into_iter()
        .map(|(outcome, action, _)| (outcome, action))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("deployed".into(), "deploy".into()),
            ("interrupted".into(), "deploy".into()),
            ("deployed".into(), "auto-rollback".into()),
        ]
    );
    assert_ne!(v2.lockfile, v1.lockfile);
    ex.assert_labels();
}
