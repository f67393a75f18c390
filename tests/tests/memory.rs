//! Bad input in bounded memory, measured on the real binary. Alone in its own test
//! binary: a child's peak resident set as the kernel reports it starts from the
//! spawning process's own, so a big test process running other tests would blur it.

/// `build --lock` on a 1 GB file of zeros (sparse: no disk used) exits 2 at once, the
/// real binary's peak memory staying under 50 MB: the lockfile is refused after its
/// first chunk, never read whole.
#[test]
fn a_gigabyte_of_zeros_is_refused_in_bounded_memory() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.yaml");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let bin = cascade_tests::engine::cascade_bin();
    let started = std::time::Instant::now();
    // Reaped below by wait4, which is what gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(bin)
        .args(["build", "--lock"])
        .arg(&zeros)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
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
    let elapsed = started.elapsed();
    let status = std::process::ExitStatus::from_raw(status);
    let peak_mb = usage.ru_maxrss as f64 / 1024.0;
    assert_eq!(status.code(), Some(2), "{status:?}");
    // The child's figure includes the memory of this process when it was spawned (the
    // kernel keeps the larger high-water mark across exec): that must be small for the
    // figure to mean anything, hence this test in a binary of its own.
    assert!(
        self_peak_mb() < 40.0,
        "this test process itself peaked at {:.1} MB",
        self_peak_mb()
    );
    assert!(peak_mb < 50.0, "peak RSS {peak_mb:.1} MB");
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
    eprintln!("build --lock on 1 GB of zeros: exit 2, peak RSS {peak_mb:.1} MB in {elapsed:?}");
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
