//! The real `cascade` binary: exit codes as a process sees them, and Ctrl-C.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A one-component project whose step runs `run` (with the tools `sh` and `sleep`).
fn project(dir: &Path, run: &str, env: &str) {
    fs::create_dir_all(dir.join("graph/environments")).unwrap();
    fs::create_dir_all(dir.join("recipes")).unwrap();
    fs::write(
        dir.join("graph/environments/test.yaml"),
        "name: test\nmode: branch\nsources:\n  app: { repo: ../../repo, ref: main }\n",
    )
    .unwrap();
    fs::write(
        dir.join("recipes/app.yaml"),
        format!("runner: {{ host: {{ tools: [sh, sleep] }} }}\nenv: {env}\nsteps:\n  - name: run\n    run: '{run}'\noutputs: [out]\n"),
    )
    .unwrap();
    let repo = git2::Repository::init(dir.join("repo")).unwrap();
    let mut tb = repo.treebuilder(None).unwrap();
    tb.insert("a", repo.blob(b"a").unwrap(), 0o100644).unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let sig =
        git2::Signature::new("t", "t@example.com", &git2::Time::new(1_767_225_600, 0)).unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "init", &tree, &[])
        .unwrap();
}

fn cascade(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cascade"));
    c.arg("--project").arg(dir).args(["build", "--env", "test"]);
    c
}

#[test]
fn exit_codes_as_a_process_sees_them() {
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path(), "echo > out", "{}");
    let st = cascade(tmp.path()).stderr(Stdio::null()).status().unwrap();
    assert_eq!(st.code(), Some(0));
    let failing = tempfile::tempdir().unwrap();
    project(failing.path(), "exit 1", "{}");
    let st = cascade(failing.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
    let st = cascade(tmp.path())
        .arg("--bogus")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
    let no_project = tmp.path().join("nothing-here");
    let st = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .arg("--project")
        .arg(&no_project)
        .args(["build", "--env", "x"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}

#[test]
fn interrupt_kills_running_steps_and_writes_no_lockfile() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("step.pid");
    // The step records its pid, then sleeps in a child process of its own.
    project(
        tmp.path(),
        "echo $$ > \"$PIDFILE\"; sleep 60; echo > out",
        &format!("{{ PIDFILE: \"{}\" }}", pidfile.display()),
    );
    // The pid file is outside the work dir, where the write sandbox would refuse it;
    // this test is about interrupts.
    let mut child = cascade(tmp.path())
        .env("CASCADE_SANDBOX", "off")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        if let Some(p) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // The step's shell is gone (killed with its process group), not orphaned.
    let deadline = Instant::now() + Duration::from_secs(5);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "step {pid} survived the interrupt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!tmp.path().join("lockfiles").exists());
}

/// Smoke tests on the docker executor need Docker: without an engine the build stops
/// before building, exit 3, saying what is missing; `--skip-tests` builds anyway and
/// records them as skipped.
#[test]
fn smoke_tests_without_docker_exit_3_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path(), "mkdir -p out && echo hi > out/x", "{}");
    let recipe = tmp.path().join("recipes/app.yaml");
    let mut text = fs::read_to_string(&recipe).unwrap();
    text = text.replace("[sh, sleep]", "[sh, sleep, mkdir]");
    text.push_str(
        "image:\n  base: scratch\n  layers: [{ from: out, to: /out }]\n\
         tests:\n  smoke:\n    command: [cat, /out/x]\n",
    );
    fs::write(&recipe, text).unwrap();
    let nowhere = tmp.path().join("no-docker.sock");
    let out = cascade(tmp.path())
        .env("DOCKER_HOST", format!("unix://{}", nowhere.display()))
        .env("CASCADE_EXECUTOR", "docker")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs a Docker Engine"), "{stderr}");
    assert!(stderr.contains("--skip-tests"), "{stderr}");
    assert!(!tmp.path().join("lockfiles").exists());
    let built = fs::read_dir(tmp.path().join("cache/actions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(built, 0, "nothing was built before the check");

    let out = cascade(tmp.path())
        .env("DOCKER_HOST", format!("unix://{}", nowhere.display()))
        .env("CASCADE_EXECUTOR", "docker")
        .arg("--skip-tests")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = fs::read_dir(tmp.path().join("lockfiles"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = fs::read_to_string(lock).unwrap();
    assert!(
        text.contains("    tests:\n      smoke: skipped\n"),
        "{text}"
    );
    assert!(text.contains("    image:\n      digest: sha256:"), "{text}");
}

/// Whether a Docker Engine answers (the docker CLI asks it); in CI it must.
fn docker_answers() -> bool {
    let ok = Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "no Docker Engine in CI; .ci/services/docker.sh starts one"
        );
        eprintln!("skipping: no Docker Engine (run .ci/services/docker.sh)");
    }
    ok
}

/// Ctrl-C while a step runs in a container: exit 130, no lockfile, the container is
/// gone (nothing with cascade's pid as its `cascade.pid` label, running or not), and
/// the store verifies clean.
#[test]
fn interrupt_during_a_container_step_removes_the_container() {
    if !docker_answers() {
        return;
    }
    interrupt_during_an_image_step("docker");
}

/// The same in the sandbox: the step and everything it started are gone (its pid
/// namespace ended), and the store verifies clean.
#[test]
fn interrupt_during_a_sandboxed_image_step_kills_it() {
    interrupt_during_an_image_step("sandbox");
}

fn interrupt_during_an_image_step(executor: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir_all(dir.join("graph/environments")).unwrap();
    fs::create_dir_all(dir.join("recipes")).unwrap();
    fs::write(
        dir.join("graph/environments/test.yaml"),
        "name: test\nmode: branch\nsources:\n  tc: { repo: ../../repo, ref: main }\n  app: { repo: ../../repo, ref: main }\n",
    )
    .unwrap();
    // The runner image: busybox, built in the graph.
    fs::write(
        dir.join("recipes/tc.yaml"),
        "runner: { host: { tools: [sh, mkdir, ln, cp, busybox] } }\n\
         steps:\n  - name: rootfs\n    run: |\n      mkdir -p rootfs/bin\n      cp \"$(command -v busybox)\" rootfs/bin/busybox\n      for a in sh touch sleep; do ln -s busybox rootfs/bin/$a; done\n\
         outputs: [rootfs]\n\
         image:\n  base: scratch\n  layers: [{ from: rootfs, to: / }]\n  env: { PATH: /bin }\n",
    )
    .unwrap();
    fs::write(
        dir.join("recipes/app.yaml"),
        "runner: { container: { image: tc } }\nsteps:\n  - name: nap\n    run: touch started; sleep 6061 & sleep 6062\noutputs: [out]\n",
    )
    .unwrap();
    let repo = git2::Repository::init(dir.join("repo")).unwrap();
    let mut tb = repo.treebuilder(None).unwrap();
    tb.insert("a", repo.blob(b"a").unwrap(), 0o100644).unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let sig =
        git2::Signature::new("t", "t@example.com", &git2::Time::new(1_767_225_600, 0)).unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "init", &tree, &[])
        .unwrap();

    let mut child = cascade(dir)
        .env("CASCADE_EXECUTOR", executor)
        .env("CASCADE_WORK_DIR", "store")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The step's work directory is `<store>/tmp/<build>/work` (`CASCADE_WORK_DIR=store`),
    // mounted at /work.
    let started = || {
        fs::read_dir(dir.join("cache/tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("work/started").exists())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("cascade ended ({status}) before the step started:\n{err}");
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sleeping = || {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| c.starts_with(b"sleep\x006061") || c.starts_with(b"sleep\x006062"))
    };
    if executor == "sandbox" {
        assert!(sleeping(), "the step is not running");
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130));
        let deadline = Instant::now() + Duration::from_secs(5);
        while sleeping() {
            assert!(Instant::now() < deadline, "the step's processes survived");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.join("lockfiles").exists());
        verify(dir);
        return;
    }
    let containers = || {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=cascade.pid={pid}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        !containers().is_empty(),
        "the step's container is not labelled"
    );
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(containers(), "", "containers left behind");
    assert!(!dir.join("lockfiles").exists());
    verify(dir);
}

fn verify(dir: &Path) {
    let verify = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .arg("--project")
        .arg(dir)
        .args(["cache", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Where the kernel refuses user namespaces, a build stops before anything runs: exit 3,
/// naming the setting and the other way (`--executor docker`), never an unsandboxed
/// run. The refusal is real: cascade runs in a user namespace whose
/// `user.max_user_namespaces` is 0 (`unshare`, from util-linux).
#[test]
fn refused_namespaces_stop_the_build_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path(), "mkdir out; echo ran > out/x", "{}");
    let recipe = tmp.path().join("recipes/app.yaml");
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("[sh, sleep]", "[sh, mkdir]");
    fs::write(&recipe, text).unwrap();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_cascade"))
        .arg("--project")
        .arg(tmp.path())
        .args(["build", "--env", "test"])
        .output()
        .expect("unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("refuses its namespaces"), "{stderr}");
    assert!(stderr.contains("user.max_user_namespaces"), "{stderr}");
    assert!(stderr.contains("--executor docker"), "{stderr}");
    insta::assert_snapshot!(stderr);
    assert!(!tmp.path().join("lockfiles").exists());
    assert!(
        !tmp.path().join("cache/actions").exists()
            || fs::read_dir(tmp.path().join("cache/actions"))
                .unwrap()
                .next()
                .is_none(),
        "something was built"
    );
}
