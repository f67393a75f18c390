//! What a Ctrl-C handler does (`Docker::shut_down`) while a build step runs, against
//! the real engine (skipped without one, failed without one when `CI=true`). A test
//! binary of its own: the sweep removes every container of its process, so it must not
//! share one with other tests.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cascade_docker::{Docker, DockerError, StepEnd, StepSpec};
use common::{engine, loaded_image};

/// What a Ctrl-C handler does while a step runs on another thread: the step's
/// container goes, the step ends as removed, and nothing new starts.
#[test]
fn shut_down_removes_a_running_step_and_starts_nothing_more() {
    if engine().is_none() {
        return;
    }
    // A connection of its own: after `shut_down` it refuses everything.
    let docker = Docker::connect().unwrap();
    let image = loaded_image(&docker);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let s = StepSpec {
        image,
        script: "touch started; sleep 60",
        env: Vec::new(),
        work: &work,
        read_only: Vec::new(),
        user: "65534:65534".into(),
        timeout: Duration::from_secs(60),
        labels: Vec::new(),
    };
    let end = std::thread::scope(|scope| {
        let running = scope.spawn(|| docker.run_step(&s, &mut Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !work.join("started").exists() {
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        docker.shut_down().unwrap();
        let end = running.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(15));
        end
    });
    assert_eq!(end.unwrap(), StepEnd::Removed);
    common::assert_no_containers_of_this_process();
    let err = docker.run_step(&s, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, DockerError::ShuttingDown), "{err}");
}
