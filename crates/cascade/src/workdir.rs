//! [IO] Where Actions' work directories go: a tmpfs when there is a roomy one, else the
//! store's disk.
//!
//! Every step creates and removes its work directory (the exported source, the inputs,
//! its outputs, its log). On ext4, thousands of inodes created and deleted a minute make
//! every new inode's allocation skip over the recently deleted ones: a profile of a cold
//! 1,000-node build spent most of its kernel time in `find_inode_bit` and
//! `recently_deleted`, and its system time doubled from run to run (the tmpfs takes
//! those bad runs away; see the figures in docs/performance.md). On a tmpfs none of
//! that exists (Bazel's `--sandbox_base=/dev/shm` is the same idea). Nothing in a work
//! directory outlives its step: outputs are copied into the store, so the store stays on
//! its disk.
//!
//! `CASCADE_WORK_DIR` (or `--work-dir`) chooses the place; `store` means the store's
//! `tmp/`. By default it is `/dev/shm` when that is a tmpfs with at least
//! [`MIN_TMPFS`] free. A step that fails while that tmpfs is nearly full runs again on
//! the store's disk, so a big build never fails for want of memory-backed space.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use cascade_store::{Store, StoreError};

/// How much room a tmpfs needs to be chosen by default.
pub const MIN_TMPFS: u64 = 4 << 30;
/// Below this much room left, a failed step on a tmpfs is tried again on disk.
const NEARLY_FULL: u64 = 256 << 20;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The directory the work directories of this build go in.
#[derive(Clone, Debug)]
pub(crate) struct WorkBase {
    /// `None`: the store's `tmp/`.
    dir: Option<PathBuf>,
    tmpfs: bool,
}

/// The file system type and the bytes available to us at `path`.
fn statfs(path: &Path) -> Option<(i64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a statfs buffer we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_type as i64, s.f_bavail as u64 * s.f_bsize as u64))
}

impl WorkBase {
    /// Where this build's work directories go: `asked` (`store` for the store's disk),
    /// else a roomy `/dev/shm`, else the store's disk.
    pub(crate) fn choose(asked: Option<&Path>) -> WorkBase {
        let on_disk = WorkBase {
            dir: None,
            tmpfs: false,
        };
        let candidate = match asked {
            Some(p) if p == Path::new("store") => return on_disk,
            Some(p) => p.to_path_buf(),
            None => match statfs(Path::new("/dev/shm")) {
                Some((TMPFS_MAGIC, free)) if free >= MIN_TMPFS => PathBuf::from("/dev/shm"),
                _ => return on_disk,
            },
        };
        // One directory per user, private: other users' steps must not see ours.
        // SAFETY: geteuid cannot fail.
        let dir = candidate.join(format!("cascade-work-{}", unsafe { libc::geteuid() }));
        if fs::create_dir_all(&dir).is_err() {
            return on_disk;
        }
        use std::os::unix::fs::PermissionsExt;
        if fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).is_err() {
            return on_disk;
        }
        sweep_stale(&dir);
        let tmpfs = statfs(&dir).is_some_and(|(t, _)| t == TMPFS_MAGIC);
        WorkBase {
            dir: Some(dir),
            tmpfs,
        }
    }

    /// A fresh directory for one Action, removed when dropped.
    pub(crate) fn temp_dir(&self, store: &Store) -> Result<tempfile::TempDir, StoreError> {
        let Some(dir) = &self.dir else {
            return store.temp_dir();
        };
        tempfile::Builder::new()
            .prefix(&format!("build-{}-", std::process::id()))
            .tempdir_in(dir)
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })
    }

    /// On a tmpfs with little room left: a failure may be for want of it.
    pub(crate) fn nearly_full(&self) -> bool {
        self.tmpfs
            && self
                .dir
                .as_deref()
                .and_then(statfs)
                .is_some_and(|(_, free)| free < NEARLY_FULL)
    }

    pub(crate) fn on_disk(&self) -> bool {
        self.dir.is_none()
    }
}

/// Work directories removed beside the walk instead of on its path: a node whose
/// outputs are in the store hands its directory over and finishes; one thread removes
/// them (a `chmod` and an `unlink` per entry) while the next steps run. [`Reaper::finish`]
/// waits for the last, so none outlives the walk.
#[derive(Default)]
pub(crate) struct Reaper {
    /// Started with the first directory: a walk of cache hits starts no thread.
    to_thread: Mutex<Option<mpsc::Sender<tempfile::TempDir>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Reaper {
    /// Removes `dir` soon, on the reaper's thread (here, when it cannot start).
    pub(crate) fn remove(&self, dir: tempfile::TempDir) {
        let mut to_thread = self.to_thread.lock().unwrap_or_else(|e| e.into_inner());
        if to_thread.is_none() {
            let (tx, rx) = mpsc::channel::<tempfile::TempDir>();
            let started = std::thread::Builder::new()
                .name("cascade-reaper".into())
                .spawn(move || rx.into_iter().for_each(remove_now));
            if let Ok(handle) = started {
                *to_thread = Some(tx);
                *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
            }
        }
        match to_thread.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(dir)) = tx.send(dir) {
                    remove_now(dir);
                }
            }
            None => remove_now(dir),
        }
    }

    /// Waits until every directory handed over is gone.
    pub(crate) fn finish(&self) {
        self.to_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Removes a work directory now; what the steps left read-only included.
pub(crate) fn remove_now(dir: tempfile::TempDir) {
    let _ = cascade_store::remove_tree(dir.path());
}

/// Removes the work directories of builds that are gone (killed: their work directories
/// would hold memory on a tmpfs until the next boot). Named `build-<pid>-…`.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("build-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 checks only whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = cascade_store::remove_tree(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_means_the_store_and_a_dir_gets_a_private_base_swept_of_dead_builds() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        assert!(WorkBase::choose(Some(Path::new("store"))).on_disk());
        let root = tempfile::tempdir().unwrap();
        // A dead build's leftovers (pid 2^22 is above the default pid_max) and a live one.
        let base = root
            .path()
            .join(format!("cascade-work-{}", unsafe { libc::geteuid() }));
        let dead = base.join("build-4194304-x");
        let live = base.join(format!("build-{}-y", std::process::id()));
        fs::create_dir_all(dead.join("work")).unwrap();
        fs::create_dir_all(&live).unwrap();
        let w = WorkBase::choose(Some(root.path()));
        assert!(!w.on_disk());
        assert!(!dead.exists(), "a dead build's work dir is swept");
        assert!(live.exists(), "a live build's is kept");
        let t = w.temp_dir(&store).unwrap();
        assert!(t.path().starts_with(&base));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&base).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    /// Directories handed to the reaper, read-only entries and all, are gone once it
    /// finishes, and one handed over after that is removed too.
    #[test]
    fn the_reaper_leaves_nothing_behind() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        let mut paths = Vec::new();
        for i in 0..20 {
            let dir = tempfile::tempdir_in(root.path()).unwrap();
            let out = dir.path().join(format!("work/out{i}"));
            fs::create_dir_all(&out).unwrap();
            fs::write(out.join("file"), "x").unwrap();
            fs::set_permissions(out.join("file"), fs::Permissions::from_mode(0o444)).unwrap();
            fs::set_permissions(&out, fs::Permissions::from_mode(0o555)).unwrap();
            paths.push(dir.path().to_path_buf());
            reaper.remove(dir);
        }
        reaper.finish();
        let left: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let late = tempfile::tempdir_in(root.path()).unwrap();
        let late_path = late.path().to_path_buf();
        reaper.remove(late);
        drop(reaper);
        assert!(!late_path.exists());
    }
}
