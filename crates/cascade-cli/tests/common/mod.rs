//! What the tests that run the real binary share.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// `cascade --project dir` on `store`, with none of the test process's cascade settings.
pub fn cascade(dir: &Path, store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cascade"));
    c.arg("--project").arg(dir);
    c.env("CASCADE_STORE", store);
    c.env_remove("CASCADE_CRASH_AT");
    c.env_remove("CASCADE_REMOTE_CACHE");
    c
}

/// `cascade cache verify` finds nothing corrupt.
pub fn verify_clean(dir: &Path, store: &Path, when: &str) {
    let v = cascade(dir, store)
        .args(["cache", "verify"])
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{when}: the store is not clean:\n{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// A directory that steps may write to, so a test can watch them from outside: the
/// write sandbox confines steps to their work dir, `TMPDIR` and `/dev`, whose `/dev/shm`
/// is allowed for shared memory.
pub fn step_writable_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cascade-test-marks-")
        .tempdir_in("/dev/shm")
        .expect("a directory in /dev/shm")
}
