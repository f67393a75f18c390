//! The resolved-graph cache: a build or plan whose manifests are, byte for byte, the
//! ones the last build or plan of the environment resolved takes that graph instead of
//! parsing and resolving them again. On a big graph that parsing is most of the time of
//! a build after a commit (the snapshot answers only when nothing changed at all).
//!
//! The manifests are still read (the diagnostics quote them, and what they say is
//! checked by content, never by a file's date); the key covers their paths and texts,
//! the environment and this binary. One graph per project and environment, beside its
//! snapshot, replaced when the manifests change. A cache: written atomically without
//! fsync, and one that is torn, foreign or from another binary is ignored.
//!
//! In postcard, not JSON: a graph of 1,000 components (800 KB of JSON) took 4 ms to
//! parse, most of what loading costs after a commit; its compact binary form decodes in
//! a fraction of that. postcard (serde's, maintained, non-self-describing: the model's
//! types have no untagged or flattened parts) is enough: the file is only ever read by
//! the binary that wrote it (the key covers it).

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cascade_core::Digest;
use cascade_manifest::{Graph, SourceDb};
use cascade_store::Store;

/// Bumped whenever what the cache holds changes meaning (2: postcard, not JSON).
const FORMAT: &str = "cascade-graph 2";

/// A graph of 10,000 nodes is a few MB; anything far larger is not ours.
const MAX_SIZE: u64 = 256 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    key: Digest,
    graph: Graph,
}

/// This binary, as its file is now: a rebuilt cascade (whose resolver may differ, at
/// the same version) never takes a graph an older one resolved.
fn binary() -> Option<&'static str> {
    static BINARY: OnceLock<Option<String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let m = fs::metadata(std::env::current_exe().ok()?).ok()?;
            Some(format!(
                "{} {} {} {} {}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ))
        })
        .as_deref()
}

/// What a graph resolved from `db` for `env` is known by; `None` when it must not be
/// cached (a file whose bytes are not a manifest's, no identity for this binary).
pub(crate) fn key(env: &str, db: &SourceDb) -> Option<Digest> {
    if db.has_problems() {
        return None;
    }
    let mut h = blake3::Hasher::new();
    for part in [FORMAT, env!("CARGO_PKG_VERSION"), binary()?, env] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for (path, text) in db.files() {
        // Lengths first: no two lists of files hash alike.
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    Some(Digest::from_hasher(&h))
}

/// Where the graph of `project`'s environment `env` is kept in `store`.
pub(crate) fn path(store: &Path, project: &Path, env: &str) -> PathBuf {
    let mut p = crate::snapshot::slot(store, project, env);
    p.set_extension("graph.bin");
    p
}

/// The graph cached at `path` for `key`, if that is what it holds.
pub(crate) fn get(path: &Path, key: &Digest) -> Option<Graph> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_SIZE)
        .read_to_end(&mut bytes)
        .ok()?;
    let cached: Cached = postcard::from_bytes(&bytes).ok()?;
    (cached.key == *key).then_some(cached.graph)
}

/// Keeps `graph` at `path` for `key`; best effort (a cache).
pub(crate) fn put(path: &Path, key: Digest, graph: &Graph) {
    #[derive(serde::Serialize)]
    struct Borrowed<'a> {
        key: Digest,
        graph: &'a Graph,
    }
    if let Ok(bytes) = postcard::to_stdvec(&Borrowed { key, graph }) {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = Store::replace_lazily(path, &bytes);
        // The JSON cache of cascade before 2026-12 beside it is never read again.
        let _ = fs::remove_file(path.with_extension("json"));
    }
}
