//! Build steps in containers, against the real engine (skipped without one, failed
//! without one when `CI=true`): what a step sees and may write, and how it ends.
//! `shut_down.rs` (a process of its own: it sweeps every container of its process)
//! interrupts one.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use cascade_docker::{DockerError, StepEnd, StepSpec, LABEL_PID};
use common::{engine, inspector, loaded_image};

/// A work directory any user may write to, holding `src/data.txt`.
fn work(dir: &Path) -> std::path::PathBuf {
    let work = dir.join("work");
    fs::create_dir_all(work.join("src")).unwrap();
    fs::write(work.join("src/data.txt"), "data\n").unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    work
}

fn spec<'a>(image: &'a str, work: &'a Path, script: &'a str, test: &str) -> StepSpec<'a> {
    StepSpec {
        image,
        script,
        env: vec!["GREETING=hello".into(), "HOME=/work".into()],
        work,
        read_only: vec!["src".into()],
        user: "65534:65534".into(),
        timeout: Duration::from_secs(30),
        labels: vec![("cascade.test".into(), test.into())],
    }
}

/// The containers of this process labelled `cascade.test=<test>`, running or not.
fn left(test: &str) -> usize {
    let (rt, client) = inspector();
    rt.block_on(async {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_PID}={}", std::process::id()),
                format!("cascade.test={test}"),
            ],
        )]);
        client
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .len()
    })
}

#[test]
fn a_step_sees_its_env_and_work_dir_writes_its_log_and_ends_with_its_code() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let dir = tempfile::tempdir().unwrap();
    let work = work(dir.path());
    let script = "echo \"$GREETING from $(pwd)\"; echo oops >&2; id -u > uid\n\
                  if echo x >> src/data.txt; then exit 9; fi\n\
                  if echo x > /not-here; then exit 10; fi\n\
                  exit 3";
    let mut log = Vec::new();
    let end = docker
        .run_step(&spec(image, &work, script, "basics"), &mut log)
        .unwrap();
    assert_eq!(end, StepEnd::Exited(3));
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("hello from /work"), "{log}");
    assert!(log.contains("oops"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(fs::read_to_string(work.join("uid")).unwrap(), "65534\n");
    assert_eq!(
        fs::read_to_string(work.join("src/data.txt")).unwrap(),
        "data\n"
    );
    assert_eq!(left("basics"), 0);
    // Never as root.
    let mut root = spec(image, &work, "true", "basics");
    root.user = "0:0".into();
    let err = docker.run_step(&root, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, DockerError::InvalidStep { .. }), "{err}");
}

#[test]
fn a_step_past_its_timeout_is_killed_and_removed() {
    let Some(docker) = engine() else { return };
    let image = loaded_image(&docker);
    let dir = tempfile::tempdir().unwrap();
    let work = work(dir.path());
    let mut s = spec(image, &work, "echo started; sleep 60", "timeout");
    s.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let mut log = Vec::new();
    assert_eq!(docker.run_step(&s, &mut log).unwrap(), StepEnd::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&log).contains("started"));
    assert_eq!(left("timeout"), 0);
}
