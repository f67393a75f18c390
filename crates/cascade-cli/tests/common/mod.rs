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
        "{when}: the store is not clean:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// A directory that steps may write to, so a test can watch them from outside: it is
/// what `CASCADE_SANDBOX_SHARE` (inherited by every `cascade` these tests start) binds
/// into each sandbox. One base per test process, so parallel tests agree on it.
pub fn step_writable_dir() -> tempfile::TempDir {
    static BASE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("cascade-cli-marks-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("the marks directory");
        std::env::set_var("CASCADE_SANDBOX_SHARE", &base);
        base
    });
    tempfile::tempdir_in(base).expect("a marks directory")
}

/// A commit on `main` of `repo` whose tree is the one file `file` holding `text`, at
/// `time` (fixed dates, so SHAs are stable); its SHA.
pub fn commit(repo: &git2::Repository, file: &str, text: &str, time: i64) -> String {
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let mut tb = repo.treebuilder(None).unwrap();
    tb.insert(file, repo.blob(text.as_bytes()).unwrap(), 0o100644)
        .unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(time, 0)).unwrap();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("refs/heads/main"), &sig, &sig, text, &tree, &parents)
        .unwrap()
        .to_string()
}
