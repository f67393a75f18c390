//! cascade-store: the local content-addressed store (`cache/` by default).
//!
//! Layout under the root (every file name is a lowercase hex blake3 digest, fanned out
//! by its first two digits):
//!
//! - `blobs/` file contents and logs, named by the blake3 of their bytes
//! - `trees/` output trees (the canonical encoding of one directory), by tree digest
//! - `actions/` action results: node key → output digest + log digest, with a checksum
//! - `keys/` key manifests: the canonical encoding whose blake3 *is* the node key
//! - `images/` image records: image key → the manifest digest it produced, with a checksum
//! - `oci/` an OCI image layout holding every image's blobs (sha256), and `index.json`
//!   naming the newest image of each reference
//! - `locks/` one lock file per node key being built (held with `flock`)
//! - `logs/` the logs of failed nodes, kept under readable names for people
//! - `tmp/` scratch space for builds (work directories live here, on the same disk)
//! - `rootfs/` runner images unpacked for the sandbox (written by `cascade`; `gc` sweeps
//!   those whose manifest it does not keep)
//!
//! Every write goes to a temporary file in the destination directory and is renamed
//! into place, so a reader (or a killed build) sees the old state or the new one. Store
//! entries are not fsynced one by one (thousands a second made a cold build spend most
//! of its time in the kernel). Durability is a group commit: before an action result is
//! written, everything written so far is flushed by one `syncfs(2)`, which every node
//! finishing meanwhile shares ([`Store::sync`]); so no action result, and no lockfile,
//! ever points at data that is not on the disk. An entry a power loss cut short is
//! caught like any other corruption. Every read re-hashes what
//! it read; an entry that does not match its name is removed and reported as
//! [`StoreError::Corrupt`], never returned (a cache hit checks every blob's size).
//! Files outside the entries (lockfiles, histories, logs kept for people) are fsynced
//! with their directory, each.

mod gc;
mod outputs;
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use cascade_core::encode::{DecodeError, Decoder, Encoder};
use cascade_core::{BlobDigest, Digest, EntryKind, NodeKey, OutputDigest, Tree, TreeDigest};

pub use gc::{Corrupt, Count, GcReport, Keep};
pub use outputs::{make_writable, remove_tree, OutputError, Outputs};
pub use stream::BlobReader;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    #[error("store I/O failed at `{path}`: {source}")]
    #[diagnostic(
        code(cascade::store::io),
        help("check that the store directory is writable and the disk is not full")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "corrupt store entry `{path}` (expected {expected}); it was removed and will be rebuilt"
    )]
    #[diagnostic(code(cascade::store::corrupt))]
    Corrupt { path: PathBuf, expected: String },
    #[error("store entry `{0}` is missing")]
    #[diagnostic(code(cascade::store::missing))]
    Missing(PathBuf),
    #[error("there is no store at `{0}`")]
    #[diagnostic(
        code(cascade::store::none),
        help("a build creates the store; pass `--store` (or CASCADE_STORE) when it is elsewhere")
    )]
    NoStore(PathBuf),
}

impl StoreError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Crash-safety tests name a point of the write sequence in `CASCADE_CRASH_AT`
/// (`<point>` or `<point>:<n>`, the n-th time it is reached, default 1): the process
/// aborts there, as a `kill -9` or a power cut would stop it, with no unwinding.
pub fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("CASCADE_CRASH_AT").ok()?;
        Some(match v.rsplit_once(':') {
            Some((p, n)) if n.parse::<usize>().is_ok() => (p.to_string(), n.parse().ok()?),
            _ => (v, 1),
        })
    });
    if let Some((point, n)) = at {
        if point == name && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            std::process::abort();
        }
    }
}

/// The trailing checksum of an entry named by a key: over the key and the body, so an
/// entry moved under another key (two files swapped) is caught, not just a torn one.
pub(crate) fn checksum(key: &Digest, body: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&key.0);
    h.update(body);
    Digest::from_hasher(&h)
}

/// What a successful build of one node recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionResult {
    pub output: OutputDigest,
    pub log: BlobDigest,
}

const ACTION_DOMAIN: &str = "cascade/action";
const ACTION_VERSION: u64 = 1;

impl ActionResult {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(ACTION_DOMAIN, ACTION_VERSION);
        e.bytes(1, &self.output.0 .0).bytes(2, &self.log.0 .0);
        e.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, ACTION_DOMAIN, ACTION_VERSION)?;
        let digest = |b: &[u8], tag| -> Result<Digest, DecodeError> {
            Ok(Digest(
                b.try_into().map_err(|_| DecodeError::Malformed(tag))?,
            ))
        };
        let output = OutputDigest(digest(d.bytes(1)?, 1)?);
        let log = BlobDigest(digest(d.bytes(2)?, 2)?);
        d.end()?;
        Ok(ActionResult { output, log })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Blob,
    Tree,
    Action,
    Key,
    Image,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Tree => "trees",
            Kind::Action => "actions",
            Kind::Key => "keys",
            Kind::Image => "images",
        }
    }
}

/// Held while a node key is being built; see [`Store::lock_key`].
#[derive(Debug)]
pub struct KeyLock {
    _file: fs::File,
}

/// The whole store, held shared by every build for its duration and exclusively by
/// `gc`, so a collection never removes what a running build just wrote and does not yet
/// reference from a lockfile. A kernel lock (`flock`), like [`KeyLock`].
pub struct StoreLock {
    _file: fs::File,
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Shared by every clone: one build's nodes share their flushes.
    commits: Arc<GroupCommit>,
    /// Action results waiting for the next flush (see [`Store::put_action_batched`]).
    batch: Arc<Mutex<Batch>>,
}

/// Action results whose outputs are written but not yet durable, with the key locks
/// that keep other builds from building them meanwhile.
#[derive(Debug, Default)]
struct Batch {
    pending: Vec<(NodeKey, ActionResult, Option<KeyLock>)>,
    /// A thread will write the batch once its oldest result is [`BATCH_AGE`] old.
    timer: bool,
}

/// A batch is written once it holds this many results (each holds a key lock, an open
/// file) …
const BATCH_SIZE: usize = 64;
/// … or, by a timer thread, once its oldest result has waited this long: a crash
/// loses little, and no key lock is held longer than that whatever the build's
/// threads are doing (waiting for each other's locks across processes, say).
const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(250);

/// Group commit of the store's writes: every entry renamed into place is counted; a
/// sync returns once a flush that started after those writes has finished. One caller
/// (the leader) runs `syncfs` for every write counted before it started, the others
/// wait for it; with nothing written since the last flush, nothing runs (a no-op build
/// flushes nothing).
#[derive(Debug, Default)]
struct GroupCommit {
    /// Entries written (renamed into place) through this store so far.
    written: std::sync::atomic::AtomicU64,
    state: Mutex<Commits>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Commits {
    /// Every write up to this count is durable.
    durable: u64,
    /// A flush is running.
    flushing: bool,
    /// How many flushes ran (for the test that they are shared).
    #[cfg(test)]
    flushes: u64,
}

impl GroupCommit {
    fn wrote(&self) {
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn sync(&self, root: &Path) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // What this caller needs durable: everything written before it asked.
        let needed = self.written.load(SeqCst);
        // A panic while the lock was held leaves counters that are still true.
        let lock = || self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = lock();
        loop {
            if s.durable >= needed {
                return Ok(());
            }
            if s.flushing {
                s = self.done.wait(s).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: flush for every write counted so far (each was complete when counted).
            s.flushing = true;
            let covers = self.written.load(SeqCst);
            drop(s);
            let flushed = syncfs(root);
            s = lock();
            s.flushing = false;
            #[cfg(test)]
            {
                s.flushes += 1;
            }
            if flushed.is_ok() {
                s.durable = s.durable.max(covers);
            }
            self.done.notify_all();
            // On failure the waiters try again themselves, and report their own error.
            flushed?;
        }
    }
}

/// `syncfs(2)` of the file system that holds `root`.
fn syncfs(root: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(root).map_err(StoreError::io(root))?;
    // SAFETY: syncfs takes an open file descriptor, which `dir` owns for the call.
    let r = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if r != 0 {
        return Err(StoreError::io(root)(io::Error::last_os_error()));
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["blobs", "trees", "actions", "keys", "logs", "tmp", "git"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        Ok(Store::at(root))
    }

    /// An existing store, for commands that only read or check it: nothing is created,
    /// and a directory that is not a store is [`StoreError::NoStore`].
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        if !root.join("blobs").is_dir() || !root.join("actions").is_dir() {
            return Err(StoreError::NoStore(root));
        }
        Ok(Store::at(root))
    }

    /// A store to look things up in, whether or not it exists yet (a plan before the
    /// first build): nothing is created, and a missing entry is simply absent.
    pub fn for_reading(root: impl Into<PathBuf>) -> Store {
        Store::at(root.into())
    }

    fn at(root: PathBuf) -> Store {
        Store {
            root,
            commits: Arc::default(),
            batch: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where fetched git repositories are mirrored.
    pub fn git_dir(&self) -> PathBuf {
        self.root.join("git")
    }

    /// A fresh scratch directory on the store's disk, removed when dropped.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&tmp)
            .map_err(StoreError::io(&tmp))
    }

    /// Where the action result of `key` lives (present or not).
    pub fn action_path(&self, key: &NodeKey) -> PathBuf {
        self.path(Kind::Action, &key.0)
    }

    fn path(&self, kind: Kind, d: &Digest) -> PathBuf {
        let mut buf = [0; 64];
        let hex = d.hex_str(&mut buf);
        let mut p = PathBuf::with_capacity(self.root.as_os_str().len() + 80);
        p.push(&self.root);
        p.push(kind.dir());
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    /// Writes `bytes` at `dest` atomically (temp file in the same directory, fsync,
    /// rename, fsync of the directory): a reader sees the old file or the new one.
    pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        Self::write_file(dest, bytes, true, Durable::Now).map(|_| ())
    }

    /// Replaces `dest` atomically (temp file in the same directory, rename) without
    /// waiting for the disk: for caches and statistics, which a crash may lose (the
    /// old file or none) but never tear.
    pub fn replace_lazily(dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        Self::write_file(dest, bytes, true, Durable::AtSync).map(|_| ())
    }

    /// Like [`Store::write_atomic`], but never replaces an existing file: returns
    /// `false` when `dest` exists. Two processes racing for one name (lockfiles written
    /// in the same second) cannot overwrite each other.
    pub fn write_new_atomic(dest: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
        Self::write_file(dest, bytes, false, Durable::Now)
    }

    fn write_file(
        dest: &Path,
        bytes: &[u8],
        clobber: bool,
        durable: Durable,
    ) -> Result<bool, StoreError> {
        let mut tmp = Self::temp_beside(dest)?;
        tmp.write_all(bytes).map_err(StoreError::io(dest))?;
        Self::finish_write(tmp, dest, clobber, durable)
    }

    /// Makes every entry written so far (by this process) durable: one `syncfs(2)` of
    /// the store's file system, shared with every caller that comes while it runs
    /// (group commit). Action results and lockfiles are written only after it.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.commits.sync(&self.root)
    }

    /// A temporary file in `dest`'s directory (created if needed), so the final rename
    /// stays on one file system and is atomic.
    pub(crate) fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(StoreError::io(dir))
    }

    /// The end of every write: permissions, fsync (for [`Durable::Now`]), rename into
    /// place (or not, when `clobber` is false and `dest` exists: `Ok(false)`), fsync of
    /// the directory (for `Now`).
    pub(crate) fn finish_write(
        tmp: tempfile::NamedTempFile,
        dest: &Path,
        clobber: bool,
        durable: Durable,
    ) -> Result<bool, StoreError> {
        // tempfile creates 0600: a file being replaced keeps its permissions, a new one
        // (store entries, lockfiles) is 0644, meant to be read by others.
        let permissions = fs::metadata(dest)
            .map(|m| m.permissions())
            .unwrap_or_else(|_| {
                use std::os::unix::fs::PermissionsExt;
                fs::Permissions::from_mode(0o644)
            });
        tmp.as_file()
            .set_permissions(permissions)
            .map_err(StoreError::io(dest))?;
        if durable == Durable::Now {
            tmp.as_file().sync_all().map_err(StoreError::io(dest))?;
        }
        crash_point("write:before-rename");
        if clobber {
            tmp.persist(dest)
                .map_err(|e| StoreError::io(dest)(e.error))?;
        } else {
            match tmp.persist_noclobber(dest) {
                Ok(_) => {}
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(StoreError::io(dest)(e.error)),
            }
        }
        crash_point("write:after-rename");
        if durable == Durable::Now {
            sync_dir(dest.parent().unwrap_or(Path::new(".")));
        }
        Ok(true)
    }

    fn put(&self, kind: Kind, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.path(kind, d);
        // Content-addressed: an existing entry of the right size holds these bytes (a
        // stat, not a read, keeps no-op builds cheap). A wrong size is a truncated or
        // corrupt entry, which this write repairs; other corruption is caught, and the
        // entry removed, by the verification every read does.
        // Keyed entries (actions, images) are not content-addressed: always rewrite.
        if !matches!(kind, Kind::Action | Kind::Image) {
            if let Ok(m) = fs::metadata(&p) {
                if m.len() == bytes.len() as u64 {
                    return Ok(());
                }
            }
        }
        // A store entry: renamed into place, made durable by the next `sync`.
        Self::write_file(&p, bytes, true, Durable::AtSync)?;
        self.commits.wrote();
        Ok(())
    }

    /// Reads an entry and checks it hashes to its name.
    fn get_verified(&self, kind: Kind, d: &Digest) -> Result<Vec<u8>, StoreError> {
        self.get_verified_seen(kind, d, &mut |_, _| {})
    }

    /// [`Store::get_verified`], telling `seen` what it read.
    fn get_verified_seen(
        &self,
        kind: Kind,
        d: &Digest,
        seen: Seen<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        let p = self.path(kind, d);
        let bytes = match read_entry(&p, seen) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(StoreError::Missing(p)),
            Err(e) => return Err(StoreError::io(&p)(e)),
        };
        if Digest::of(&bytes) != *d {
            return Err(self.discard(p, d.to_string()));
        }
        Ok(bytes)
    }

    /// Removes a corrupt entry so it is rebuilt, and describes it.
    fn discard(&self, path: PathBuf, expected: String) -> StoreError {
        let _ = fs::remove_file(&path);
        StoreError::Corrupt { path, expected }
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobDigest, StoreError> {
        let d = Digest::of(bytes);
        self.put(Kind::Blob, &d, bytes)?;
        Ok(BlobDigest(d))
    }

    pub fn get_blob(&self, d: &BlobDigest) -> Result<Vec<u8>, StoreError> {
        self.get_verified(Kind::Blob, &d.0)
    }

    pub fn has_blob(&self, d: &BlobDigest) -> bool {
        self.path(Kind::Blob, &d.0).is_file()
    }

    pub fn put_tree(&self, tree: &Tree) -> Result<TreeDigest, StoreError> {
        let bytes = tree.encode();
        let d = Digest::of(&bytes);
        self.put(Kind::Tree, &d, &bytes)?;
        Ok(TreeDigest(d))
    }

    pub fn get_tree(&self, d: &TreeDigest) -> Result<Tree, StoreError> {
        self.get_tree_seen(d, &mut |_, _| {})
    }

    fn get_tree_seen(&self, d: &TreeDigest, seen: Seen<'_>) -> Result<Tree, StoreError> {
        let bytes = self.get_verified_seen(Kind::Tree, &d.0, seen)?;
        // It hashed right, so it was written by us; a decode failure means a format bug
        // or a collision, either way not usable.
        Tree::decode(&bytes)
            .map_err(|_| self.discard(self.path(Kind::Tree, &d.0), format!("a tree {}", d)))
    }

    /// Stores a key manifest (the encoding whose blake3 is the node key).
    pub fn put_key_manifest(&self, encoding: &[u8]) -> Result<NodeKey, StoreError> {
        let d = Digest::of(encoding);
        self.put(Kind::Key, &d, encoding)?;
        Ok(NodeKey(d))
    }

    pub fn get_key_manifest(&self, key: &NodeKey) -> Result<Vec<u8>, StoreError> {
        self.get_verified(Kind::Key, &key.0)
    }

    /// Records an action result. The file carries a checksum of its body, since its
    /// name is the node key, not the digest of its content.
    /// Everything it points at is made durable first ([`Store::sync`]).
    pub fn put_action(&self, key: &NodeKey, result: &ActionResult) -> Result<(), StoreError> {
        self.sync()?;
        self.put_checked(Kind::Action, &key.0, &result.encode())
    }

    /// Records an action result together with those of the other nodes finished
    /// meanwhile: one flush makes everything they point at durable, then the results
    /// are written (group commit). `hold`, the key's build lock, is kept until its
    /// result is written, so another build waiting for the key finds it. The batch is
    /// written when it is full or old enough, and by [`Store::flush_actions`], which
    /// every build calls before its lockfile.
    pub fn put_action_batched(
        &self,
        key: &NodeKey,
        result: &ActionResult,
        hold: Option<KeyLock>,
    ) -> Result<(), StoreError> {
        let (full, start_timer) = {
            let mut b = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
            b.pending.push((*key, result.clone(), hold));
            let start_timer = !b.timer;
            b.timer = true;
            (b.pending.len() >= BATCH_SIZE, start_timer)
        };
        if start_timer {
            let store = self.clone();
            let spawned = std::thread::Builder::new()
                .name("cascade-commit".into())
                .spawn(move || {
                    std::thread::sleep(BATCH_AGE);
                    // Best effort: a result not written is only a rebuild later, and
                    // the build's own flush reports the error.
                    let _ = store.flush_actions();
                });
            if spawned.is_err() {
                return self.flush_actions();
            }
        }
        if full {
            self.flush_actions()?;
        }
        Ok(())
    }

    /// Writes every batched action result, after one flush of what they point at.
    pub fn flush_actions(&self) -> Result<(), StoreError> {
        let pending = {
            let mut b = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
            b.timer = false;
            std::mem::take(&mut b.pending)
        };
        if pending.is_empty() {
            return Ok(());
        }
        self.sync()?;
        for (key, result, hold) in pending {
            crash_point("build:before-action");
            self.put_checked(Kind::Action, &key.0, &result.encode())?;
            crash_point("build:after-action");
            drop(hold);
        }
        Ok(())
    }

    /// Looks a node key up. `Ok(None)` is a miss; a corrupt entry is removed and
    /// reported as an error (callers treat it as a miss and say so).
    pub fn get_action(&self, key: &NodeKey) -> Result<Option<ActionResult>, StoreError> {
        self.get_action_seen(key, &mut |_, _| {})
    }

    /// [`Store::get_action`], telling `seen` about the file it read.
    pub fn get_action_seen(
        &self,
        key: &NodeKey,
        seen: Seen<'_>,
    ) -> Result<Option<ActionResult>, StoreError> {
        let expected = || format!("an action result for {key}");
        let Some(body) = self.get_checked(Kind::Action, &key.0, expected, seen)? else {
            return Ok(None);
        };
        match ActionResult::decode(&body) {
            Ok(r) => Ok(Some(r)),
            Err(_) => Err(self.discard(self.path(Kind::Action, &key.0), expected())),
        }
    }

    /// Records which image an image key produced (the manifest's `sha256:` digest), so
    /// an unchanged image is not assembled again.
    pub fn put_image(&self, key: &Digest, manifest: &str) -> Result<(), StoreError> {
        self.put_checked(Kind::Image, key, manifest.as_bytes())
    }

    /// The manifest digest recorded for an image key, if any.
    pub fn get_image(&self, key: &Digest) -> Result<Option<String>, StoreError> {
        let expected = || format!("an image record for {key}");
        let Some(body) = self.get_checked(Kind::Image, key, expected, &mut |_, _| {})? else {
            return Ok(None);
        };
        match String::from_utf8(body) {
            Ok(s) => Ok(Some(s)),
            Err(_) => Err(self.discard(self.path(Kind::Image, key), expected())),
        }
    }

    /// Waits for, then holds, the build lock of `key`, so that builds sharing this
    /// store (threads or processes) never build one key at the same time: the second
    /// finds the first's result once it gets the lock. The lock is the kernel's
    /// (`flock`), released when the guard drops or its process dies, so a killed build
    /// leaves no stale lock behind.
    ///
    /// Keys share 4,096 lock files by their first three hex digits: a file per key
    /// would cost a new inode per node built (in a profile of a cold build, ext4's
    /// inode allocator took a fifth of the kernel's time), and two keys of one stripe
    /// being built at once is rare and only makes one wait.
    pub fn lock_key(&self, key: &NodeKey) -> Result<KeyLock, StoreError> {
        let dir = self.root.join("locks").join("keys");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let path = dir.join(&key.hex()[..3]);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        // Busy: perhaps by this build's own batch (a key built twice in one graph);
        // writing it releases those locks before waiting for the holder.
        if file.try_lock().is_err() {
            self.flush_actions()?;
            file.lock().map_err(StoreError::io(&path))?;
        }
        Ok(KeyLock { _file: file })
    }

    fn store_lock_file(&self) -> Result<fs::File, StoreError> {
        let path = self.root.join("locks").join("store");
        fs::create_dir_all(self.root.join("locks")).map_err(StoreError::io(&path))?;
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))
    }

    /// Held by a build: waits while a `gc` runs, shared with other builds.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        let file = self.store_lock_file()?;
        file.lock_shared()
            .map_err(StoreError::io(&self.root.join("locks/store")))?;
        Ok(StoreLock { _file: file })
    }

    /// Held by `gc`: `None` while any build holds the store.
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, StoreError> {
        let file = self.store_lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(StoreError::io(&self.root.join("locks/store"))(e))
            }
        }
    }

    /// The OCI image layout that holds every image built with this store (blobs named
    /// by sha256, shared between images).
    pub fn oci_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    /// An entry named by a key rather than by its content: the body and a trailing
    /// blake3 of it, so a torn or flipped entry is detected.
    fn put_checked(&self, kind: Kind, key: &Digest, body: &[u8]) -> Result<(), StoreError> {
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(checksum(key, body).0.as_slice());
        self.put(kind, key, &bytes)
    }

    fn get_checked(
        &self,
        kind: Kind,
        key: &Digest,
        expected: impl FnOnce() -> String,
        seen: Seen<'_>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.path(kind, key);
        let mut bytes = match read_entry(&p, seen) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(StoreError::io(&p)(e)),
        };
        if bytes.len() < 32 {
            return Err(self.discard(p, expected()));
        }
        let sum = bytes.split_off(bytes.len() - 32);
        if checksum(key, &bytes).0.as_slice() != sum {
            return Err(self.discard(p, expected()));
        }
        Ok(Some(bytes))
    }

    /// Whether the output tree and every blob it references are present with the right
    /// size, and, in the same walk, the digest of each `declared` path (a file's blob, a
    /// directory's tree, the blake3 of a symlink's target); `None` when something is
    /// missing. Trees are read and verified; blobs are checked by size here (cheap,
    /// catches truncation) and verified byte for byte whenever they are read.
    pub fn check_output(
        &self,
        output: &OutputDigest,
        declared: &[String],
    ) -> Result<Option<BTreeMap<String, Digest>>, StoreError> {
        self.check_output_seen(output, declared, &mut |_, _| {})
    }

    /// [`Store::check_output`], telling `seen` about every tree it read and every blob
    /// it checked (what [`Store::output_entries`] lists).
    pub fn check_output_seen(
        &self,
        output: &OutputDigest,
        declared: &[String],
        seen: Seen<'_>,
    ) -> Result<Option<BTreeMap<String, Digest>>, StoreError> {
        let wanted: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        let mut artifacts = BTreeMap::new();
        let mut stack = vec![(TreeDigest(output.0), String::new())];
        while let Some((t, prefix)) = stack.pop() {
            let tree = match self.get_tree_seen(&t, seen) {
                Ok(t) => t,
                Err(StoreError::Missing(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            for e in tree.entries() {
                let rel = if prefix.is_empty() {
                    e.name.clone()
                } else {
                    format!("{prefix}/{}", e.name)
                };
                let digest = match &e.kind {
                    EntryKind::File { digest, size, .. } => {
                        let p = self.path(Kind::Blob, &digest.0);
                        match fs::metadata(&p) {
                            Ok(m) if m.len() == *size => seen(&p, &m),
                            Ok(_) => return Err(self.discard(p, digest.to_string())),
                            Err(_) => return Ok(None),
                        }
                        digest.0
                    }
                    EntryKind::Dir { digest } => {
                        stack.push((*digest, rel.clone()));
                        digest.0
                    }
                    EntryKind::Symlink { target } => Digest::of(target.as_bytes()),
                };
                if wanted.contains(rel.as_str()) {
                    artifacts.insert(rel, digest);
                }
            }
        }
        Ok(Some(artifacts))
    }

    /// Every entry an output consists of: its trees and the blobs they reference (the
    /// files whose loss or change a cache hit must notice). `None` when one is missing
    /// or unreadable.
    pub fn output_entries(&self, output: &OutputDigest) -> Option<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![TreeDigest(output.0)];
        while let Some(t) = stack.pop() {
            let tree = self.get_tree(&t).ok()?;
            out.push(self.path(Kind::Tree, &t.0));
            for e in tree.entries() {
                match &e.kind {
                    EntryKind::File { digest, .. } => out.push(self.path(Kind::Blob, &digest.0)),
                    EntryKind::Dir { digest } => stack.push(*digest),
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// Keeps a failed node's log (the file at `src`, copied in chunks: a log can be
    /// large) under a readable name and returns its path.
    pub fn keep_log(&self, name: &str, src: &Path) -> Result<PathBuf, StoreError> {
        let p = self.root.join("logs").join(format!("{name}.log"));
        let mut tmp = Self::temp_beside(&p)?;
        let mut from = fs::File::open(src).map_err(StoreError::io(src))?;
        io::copy(&mut from, tmp.as_file_mut()).map_err(StoreError::io(&p))?;
        Self::finish_write(tmp, &p, true, Durable::Now)?;
        Ok(p)
    }
}

/// Told of each store entry a lookup read or checked, with its metadata then: what a
/// caller records about the entries a cache hit relied on (the no-op snapshot) needs no
/// second `stat`.
pub type Seen<'a> = &'a mut dyn FnMut(&Path, &fs::Metadata);

/// The bytes of the entry at `p`, `None` when there is none; `seen` gets its metadata.
/// The system calls of `fs::read`, which also takes the metadata (for its size).
fn read_entry(p: &Path, seen: Seen<'_>) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut f = match fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    let mut bytes = Vec::new();
    // A hint only: an entry bigger than memory fails in the read, not here.
    let _ = bytes.try_reserve_exact(usize::try_from(meta.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    seen(p, &meta);
    Ok(Some(bytes))
}

/// When a write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durable {
    /// Before the call returns: fsync of the file and of its directory.
    Now,
    /// At the next [`Store::sync`] (store entries).
    AtSync,
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; some file systems refuse fsync on directories, which
    // is harmless.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_keeps_the_permissions_of_what_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env.yaml");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        Store::write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let fresh = dir.path().join("new.yaml");
        Store::write_atomic(&fresh, b"x").unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn blob_round_trip_and_flipped_byte_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"hello world").unwrap();
        assert_eq!(store.get_blob(&d).unwrap(), b"hello world");
        let p = store.path(Kind::Blob, &d.0);
        let mut bytes = fs::read(&p).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&p, &bytes).unwrap();
        match store.get_blob(&d) {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("expected corrupt, got {other:?}"),
        }
        assert!(!p.exists(), "a corrupt entry is removed");
        assert!(matches!(store.get_blob(&d), Err(StoreError::Missing(_))));
    }

    #[test]
    fn writing_a_truncated_entry_again_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"some bytes").unwrap();
        let p = store.path(Kind::Blob, &d.0);
        fs::write(&p, b"some").unwrap();
        store.put_blob(b"some bytes").unwrap();
        assert_eq!(store.get_blob(&d).unwrap(), b"some bytes");
    }

    #[test]
    fn action_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = NodeKey(Digest::of(b"key"));
        assert_eq!(store.get_action(&key).unwrap(), None);
        let r = ActionResult {
            output: OutputDigest(Digest::of(b"out")),
            log: BlobDigest(Digest::of(b"log")),
        };
        store.put_action(&key, &r).unwrap();
        assert_eq!(store.get_action(&key).unwrap(), Some(r));
        let p = store.path(Kind::Action, &key.0);
        let mut bytes = fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x80;
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            store.get_action(&key),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            store.get_action(&key).unwrap(),
            None,
            "discarded, then a miss"
        );
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..20u8 {
            store.put_blob(&[i; 100]).unwrap();
        }
        for entry in walk(dir.path()) {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            assert!(!name.starts_with(".tmp-"), "leftover temp file {name}");
        }
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                out.extend(walk(&e));
            } else {
                out.push(e);
            }
        }
        out
    }

    /// Concurrent callers share flushes (group commit), and every one returns only once
    /// a flush that started after its call has finished.
    #[test]
    fn syncs_are_shared_between_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let (store, barrier) = (&store, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..25u8 {
                        store.put_blob(&[t, i]).unwrap();
                        store.sync().unwrap();
                    }
                });
            }
        });
        let s = store.commits.state.lock().unwrap();
        assert_eq!(s.durable, 200, "every write durable");
        assert!(s.flushes >= 1 && s.flushes < 200, "{} flushes", s.flushes);
    }

    /// Nothing written, nothing flushed: a no-op build costs no syncfs.
    #[test]
    fn a_sync_with_nothing_written_flushes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.sync().unwrap();
        assert_eq!(store.commits.state.lock().unwrap().flushes, 0);
        store.put_blob(b"x").unwrap();
        store.sync().unwrap();
        store.sync().unwrap();
        assert_eq!(store.commits.state.lock().unwrap().flushes, 1);
    }
}
