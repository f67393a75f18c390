//! Bad input in bounded memory, measured on the real binary. Alone in its own test
//! binary: a child's peak resident set as the kernel reports it starts from the
//! spawning process's own, so a big test process running other tests would blur it.

/// `build --lock` on a 1 GB file of zeros (sparse: no disk used) exits 2 at once, the
/// real binary's peak memory staying under 50 MB: the lockfile is refused after its
/// first chunk, never read whole.
#[test]
fn a_gigabyte_of_zeros_is_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.yaml");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let mut cmd = std::process::Command::new(cascade_tests::engine::cascade_bin());
    cmd.args(["build", "--lock"])
        .arg(&zeros)
        .current_dir(dir.path());
    let started = std::time::Instant::now();
    let (code, peak_mb) = peak_of(cmd);
    let elapsed = started.elapsed();
    assert_eq!(code, Some(2));
    assert!(peak_mb < 50.0, "peak RSS {peak_mb:.1} MB");
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
    eprintln!("build --lock on 1 GB of zeros: exit 2, peak RSS {peak_mb:.1} MB in {elapsed:?}");
}

/// A step that prints 300 MB: the log is streamed to the store and only its tail kept,
/// so the build's memory does not grow with it.
#[test]
fn a_step_with_a_huge_log_builds_in_bounded_memory() {
    let mut p = cascade_tests::TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n  noisy: { repo: ../../repos/noisy, ref: main }\n",
    );
    p.write(
        "recipes/noisy.yaml",
        "runner: { host: { tools: [sh, yes, head, cat] } }\nsteps:\n  - name: talk\n    run: yes 0123456789abcdef0123456789abcdef | head -c 300000000; cat data > out\noutputs: [out]\n",
    );
    p.commit("noisy", "main", &[("data", Some("x\n"))], "initial");
    let mut cmd = std::process::Command::new(cascade_tests::engine::cascade_bin());
    cmd.arg("--project")
        .arg(&p.root)
        .args(["build", "--env", "test", "--store"])
        .arg(p.root.join("cache"));
    let (code, peak_mb) = peak_of(cmd);
    assert_eq!(code, Some(0));
    assert!(peak_mb < 100.0, "peak RSS {peak_mb:.1} MB for a 300 MB log");
    eprintln!("a 300 MB log: peak RSS {peak_mb:.1} MB");
}

/// Runs `cmd` (output discarded) and returns its exit code and peak RSS in MB.
fn peak_of(mut cmd: std::process::Command) -> (Option<i32>, f64) {
    use std::os::unix::process::ExitStatusExt;
    // The child's figure includes the memory of this process when it was spawned (the
    // kernel keeps the larger high-water mark across exec): that must be small for the
    // figure to mean anything, hence these tests in a binary of their own.
    assert!(
        self_peak_mb() < 40.0,
        "this test process itself peaked at {:.1} MB",
        self_peak_mb()
    );
    // Reaped below by wait4, which is what gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, filled in by wait4 below.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to live locals; it reaps the child,
    // so its peak resident set (ru_maxrss, in KiB on Linux) is exact.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let status = std::process::ExitStatus::from_raw(status);
    (status.code(), usage.ru_maxrss as f64 / 1024.0)
}

/// This process's peak resident set (its memory map's high-water mark, which is what a
/// child spawned from it starts from), in MB.
fn self_peak_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb / 1024.0
}
