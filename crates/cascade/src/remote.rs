//! [IO] The remote cache: action results shared through any OCI registry, or through a
//! REAPI engine ([`crate::reapi`]); both behind [`RemoteCache`], with one [`Tally`] of
//! hits, misses, uploads and errors.
//!
//! On a registry, //! One node key is one OCI artifact in the cache repository, tagged `k-<key hex>`:
//! - its config (`application/vnd.cascade.action.config.v1+json`) names the key, the
//!   output tree and the log;
//! - its layers are every store entry a hit needs (the key manifest, the log, each tree
//!   and each file blob of the output), each annotated with its blake3 digest and kind.
//!
//! A write goes blobs first (the registry's are skipped), then the manifest by digest,
//! then the tag (cascade-registry's push). A read verifies every blob twice: sha256 and
//! size by the client, blake3 against the annotation here, before the local store takes
//! it. The cache is an optimization: every failure is counted, the node is built
//! locally, and the build says so once at the end. After a few errors the remote is not
//! asked again in this build (the budget).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cascade_core::{BlobDigest, Digest, EntryKind, NodeKey, Tree, TreeDigest};
use cascade_image::{Descriptor, OciDigest, OciLayout};
use cascade_registry::{Client, ClientOptions};
use cascade_store::{ActionResult, Store};

use crate::Error;

const CONFIG_TYPE: &str = "application/vnd.cascade.action.config.v1+json";
const ARTIFACT_TYPE: &str = "application/vnd.cascade.action.v1";
const ANNOTATION_BLAKE3: &str = "dev.cascade.blake3";
/// After this many errors the remote is left alone for the rest of the build.
const ERROR_BUDGET: usize = 3;
/// A config document is small; anything bigger is not ours.
const CONFIG_LIMIT: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteMode {
    Read,
    Write,
    #[default]
    ReadWrite,
}

/// Where and how.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// `oci://host[:port]/repository` (a registry) or `grpc[s]://host:port[/instance]`
    /// (a REAPI engine).
    pub url: Option<String>,
    pub mode: RemoteMode,
    /// `--remote-exec`: nodes execute on the engine's workers.
    pub exec: bool,
}

/// What the remote cache did in one build.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoteReport {
    pub url: String,
    pub mode: RemoteMode,
    pub hits: usize,
    pub misses: usize,
    pub uploads: usize,
    pub errors: usize,
    /// The errors (credentials never appear: the registry client scrubs them) and
    /// reproducibility problems (a key with another output in the cache).
    pub problems: Vec<String>,
}

/// What `gc --remote-cache` did to the remote cache.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoteGcReport {
    pub url: String,
    /// Entries that the kept lockfiles reference.
    pub kept: usize,
    /// Entries deleted (or, with `--dry-run`, that would be).
    pub removed: usize,
}

/// The remote cache of a build: an OCI registry or a REAPI engine, one interface.
pub(crate) enum RemoteCache {
    // Boxed: one per build, and the registry client is the bigger of the two.
    Oci(Box<OciCache>),
    Reapi(crate::reapi::ReapiCache),
}

impl RemoteCache {
    /// The backend `opts.url` names (`oci://…` or `grpc[s]://…`), or `None` without one.
    pub fn new(opts: &RemoteOptions) -> Result<Option<RemoteCache>, Error> {
        let Some(url) = opts.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if url.starts_with("grpc://") || url.starts_with("grpcs://") {
            let c = crate::reapi::ReapiCache::new(url, opts.mode).map_err(|e| {
                Error::RemoteCacheUrl {
                    url: url.to_string(),
                    why: e.to_string(),
                }
            })?;
            return Ok(Some(RemoteCache::Reapi(c)));
        }
        if opts.exec {
            return Err(Error::RemoteCacheUrl {
                url: url.to_string(),
                why: "`--remote-exec` needs a REAPI engine (`grpc://HOST:PORT`), not a registry"
                    .into(),
            });
        }
        Ok(OciCache::new(url, opts.mode)?.map(|c| RemoteCache::Oci(Box::new(c))))
    }

    pub fn fetch(
        &self,
        store: &Store,
        key: &NodeKey,
        outputs: &[String],
        node: &str,
    ) -> Option<ActionResult> {
        match self {
            RemoteCache::Oci(c) => c.fetch(store, key, node),
            RemoteCache::Reapi(c) => c.fetch(store, key, outputs, node),
        }
    }

    pub fn upload(
        &self,
        store: &Store,
        key: &NodeKey,
        result: &ActionResult,
        outputs: &[String],
        node: &str,
    ) {
        match self {
            RemoteCache::Oci(c) => c.upload(store, key, result, node),
            RemoteCache::Reapi(c) => c.upload(store, key, result, outputs, node),
        }
    }

    pub fn report(&self) -> RemoteReport {
        match self {
            RemoteCache::Oci(c) => c.tally.report(),
            RemoteCache::Reapi(c) => c.tally.report(),
        }
    }

    /// The output digest the remote cache names for `key`, without downloading
    /// anything (`plan --remote`); `None` on a miss or any failure.
    pub fn peek(&self, key: &NodeKey, outputs: &[String]) -> Option<cascade_core::OutputDigest> {
        let output = match self {
            RemoteCache::Oci(c) => {
                let tag = OciCache::tag(key);
                c.client.manifest_digest(&c.repository, &tag).ok()??;
                c.entry(&tag).ok()?.1.output
            }
            RemoteCache::Reapi(c) => c.peek(key, outputs)?,
        };
        let hex = output.strip_prefix("blake3:")?;
        Some(cascade_core::OutputDigest(Digest::from_hex(hex).ok()?))
    }

    /// `cascade gc --remote-cache`: registries only; an engine evicts by its own rules.
    pub fn collect(
        &self,
        keep: &BTreeSet<NodeKey>,
        dry_run: bool,
    ) -> Result<RemoteGcReport, String> {
        match self {
            RemoteCache::Oci(c) => c.collect(keep, dry_run),
            RemoteCache::Reapi(_) => Err(
                "a REAPI engine's cache is not collected by cascade: the engine evicts by its own policy"
                    .into(),
            ),
        }
    }

    /// The engine, when nodes execute on it.
    pub fn executor(&self) -> Option<&crate::reapi::ReapiCache> {
        match self {
            RemoteCache::Reapi(c) => Some(c),
            RemoteCache::Oci(_) => None,
        }
    }
}

/// What a remote cache counts and how many errors it may still make: the same rules
/// for every backend.
pub(crate) struct Tally {
    errors: AtomicUsize,
    report: Mutex<RemoteReport>,
}

impl Tally {
    pub fn new(url: &str, mode: RemoteMode) -> Tally {
        Tally {
            errors: AtomicUsize::new(0),
            report: Mutex::new(RemoteReport {
                url: url.to_string(),
                mode,
                ..RemoteReport::default()
            }),
        }
    }

    /// Whether the remote is still asked (after [`ERROR_BUDGET`] errors it is not).
    pub fn usable(&self) -> bool {
        self.errors.load(Ordering::Relaxed) < ERROR_BUDGET
    }

    pub fn with(&self, f: impl FnOnce(&mut RemoteReport)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.with(|r| {
            r.errors += 1;
            r.problems.push(what);
        });
    }

    pub fn report(&self) -> RemoteReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn mode(&self) -> RemoteMode {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).mode
    }

    /// Whether to look the remote up now (its mode reads, its budget lasts).
    pub fn reads(&self) -> bool {
        self.mode() != RemoteMode::Write && self.usable()
    }

    /// Whether to write to it now.
    pub fn writes(&self) -> bool {
        self.mode() != RemoteMode::Read && self.usable()
    }

    /// Counts a lookup: a hit, a miss, or an error (`what` says where, spending the
    /// budget).
    pub fn fetched<T>(
        &self,
        r: Result<Option<T>, String>,
        what: impl FnOnce(&str) -> String,
    ) -> Option<T> {
        match r {
            Ok(Some(v)) => {
                self.with(|r| r.hits += 1);
                Some(v)
            }
            Ok(None) => {
                self.with(|r| r.misses += 1);
                None
            }
            Err(e) => {
                self.error(what(&e));
                None
            }
        }
    }

    /// Counts an upload: written, already there (`false`), or an error.
    pub fn uploaded(&self, r: Result<bool, String>, what: impl FnOnce(&str) -> String) {
        match r {
            Ok(true) => self.with(|r| r.uploads += 1),
            Ok(false) => {}
            Err(e) => self.error(what(&e)),
        }
    }
}

/// The remote cache on an OCI registry.
pub(crate) struct OciCache {
    client: Client,
    repository: String,
    url: String,
    pub(crate) tally: Tally,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    key: String,
    output: String,
    log: String,
}

impl OciCache {
    pub fn new(url: &str, mode: RemoteMode) -> Result<Option<OciCache>, Error> {
        let bad = |why: &str| Error::RemoteCacheUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("oci://")
            .ok_or_else(|| bad("it must start with `oci://`"))?;
        let (registry, repository) = rest
            .split_once('/')
            .filter(|(r, p)| !r.is_empty() && !p.is_empty())
            .ok_or_else(|| bad("expected `oci://host[:port]/repository`"))?;
        let creds = cascade_registry::credentials_for(registry)
            .map_err(|e| bad(&format!("credentials: {e}")))?;
        let client = Client::new(
            registry,
            creds,
            ClientOptions {
                retries: 2,
                initial_backoff: Duration::from_millis(100),
                timeout: Duration::from_secs(10),
            },
        );
        Ok(Some(OciCache {
            client,
            repository: repository.trim_end_matches('/').to_string(),
            url: url.to_string(),
            tally: Tally::new(url, mode),
        }))
    }

    /// `cascade gc --remote-cache`: deletes every entry (`k-<key>` tag and its manifest)
    /// whose key is not in `keep`. The registry frees the blobs in its own garbage
    /// collection. Tags that are not entries are left alone.
    pub fn collect(
        &self,
        keep: &BTreeSet<NodeKey>,
        dry_run: bool,
    ) -> Result<RemoteGcReport, String> {
        let mut report = RemoteGcReport {
            url: self.url.clone(),
            ..RemoteGcReport::default()
        };
        let keep: BTreeSet<String> = keep.iter().map(Self::tag).collect();
        let tags = self
            .client
            .list_tags(&self.repository)
            .map_err(|e| e.to_string())?;
        for tag in tags.iter().filter(|t| t.starts_with("k-")) {
            if keep.contains(tag) {
                report.kept += 1;
                continue;
            }
            report.removed += 1;
            if dry_run {
                continue;
            }
            // Deleted by digest, as the distribution spec asks; gone already is fine
            // (another gc, or a registry that dropped it).
            if let Some(d) = self
                .client
                .manifest_digest(&self.repository, tag)
                .map_err(|e| e.to_string())?
            {
                self.client
                    .delete_manifest(&self.repository, &d)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(report)
    }

    fn tag(key: &NodeKey) -> String {
        format!("k-{}", key.hex())
    }

    /// The manifest and the config of the artifact tagged `tag`.
    fn entry(&self, tag: &str) -> Result<(serde_json::Value, Config), String> {
        let repo = &self.repository;
        let (_, bytes) = self
            .client
            .get_manifest(repo, tag)
            .map_err(|e| e.to_string())?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a manifest: {e}"))?;
        let config = descriptor(&manifest["config"])?;
        let config: Config = serde_json::from_slice(
            &self
                .client
                .get_blob(repo, &config.digest, CONFIG_LIMIT)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("not a cascade action: {e}"))?;
        Ok((manifest, config))
    }

    /// Looks `key` up; on a hit every entry is downloaded, verified and stored, and the
    /// action result is recorded locally. `None` on a miss or any failure.
    pub fn fetch(&self, store: &Store, key: &NodeKey, node: &str) -> Option<ActionResult> {
        if !self.tally.reads() {
            return None;
        }
        let r = self.try_fetch(store, key);
        self.tally
            .fetched(r, |e| format!("`{node}`: reading {}: {e}", self.url))
    }

    fn try_fetch(&self, store: &Store, key: &NodeKey) -> Result<Option<ActionResult>, String> {
        let tag = Self::tag(key);
        let repo = &self.repository;
        if self
            .client
            .manifest_digest(repo, &tag)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Ok(None);
        }
        let (manifest, config) = self.entry(&tag)?;
        if config.key != key.to_string() {
            return Err(format!("tag {tag} names another key ({})", config.key));
        }
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        // One scratch directory for the file blobs downloaded below, made on first need.
        let mut tmp = None;
        for l in &layers {
            let d = descriptor(l)?;
            let kind = l["mediaType"].as_str().unwrap_or_default();
            let want = l["annotations"][ANNOTATION_BLAKE3]
                .as_str()
                .and_then(|s| s.strip_prefix("blake3:"))
                .and_then(|h| Digest::from_hex(h).ok())
                .ok_or("a layer without its blake3 digest")?;
            if have(store, kind, &want) {
                continue;
            }
            let mismatch = || format!("{} does not hash to its blake3 digest", d.digest);
            if kind == BLOB_TYPE {
                // File contents can be big: streamed to disk, never whole in memory.
                let dir = match &mut tmp {
                    Some(d) => d,
                    None => tmp.insert(store.temp_dir().map_err(|e| e.to_string())?),
                };
                let file = dir.path().join("blob");
                self.client
                    .get_blob_to_file(repo, &d.digest, d.size, &file)
                    .map_err(|e| e.to_string())?;
                let (got, _) = store.put_blob_file(&file).map_err(|e| e.to_string())?;
                if got.0 != want {
                    return Err(mismatch());
                }
                continue;
            }
            let bytes = self
                .client
                .get_blob(repo, &d.digest, d.size)
                .map_err(|e| e.to_string())?;
            if Digest::of(&bytes) != want {
                return Err(mismatch());
            }
            put(store, kind, &bytes)?;
        }
        let digest = |s: &str| {
            s.strip_prefix("blake3:")
                .and_then(|h| Digest::from_hex(h).ok())
                .ok_or_else(|| format!("`{s}` is not a digest"))
        };
        let result = ActionResult {
            output: cascade_core::OutputDigest(digest(&config.output)?),
            log: BlobDigest(digest(&config.log)?),
        };
        store.put_action(key, &result).map_err(|e| e.to_string())?;
        Ok(Some(result))
    }

    /// After a node was built: publish its action result, unless the cache already has
    /// one (the first writer wins; another output is reported, never overwritten).
    pub fn upload(&self, store: &Store, key: &NodeKey, result: &ActionResult, node: &str) {
        if !self.tally.writes() {
            return;
        }
        let r = self.try_upload(store, key, result, node);
        self.tally
            .uploaded(r, |e| format!("`{node}`: writing {}: {e}", self.url));
    }

    fn try_upload(
        &self,
        store: &Store,
        key: &NodeKey,
        result: &ActionResult,
        node: &str,
    ) -> Result<bool, String> {
        let tag = Self::tag(key);
        let repo = &self.repository;
        if self
            .client
            .manifest_digest(repo, &tag)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            // Someone wrote this key first: same output is fine, another is a finding.
            let (_, theirs) = self.entry(&tag)?;
            if theirs.output != result.output.to_string() {
                self.tally.with(|r| {
                    r.problems.push(format!(
                        "reproducibility: `{node}` (key {}) is {} in the remote cache but {} here; the cache keeps the first",
                        key.short(12),
                        theirs.output,
                        result.output
                    ))
                });
            }
            return Ok(false);
        }
        let tmp = store.temp_dir().map_err(|e| e.to_string())?;
        let layout = OciLayout::open_or_create(tmp.path()).map_err(|e| e.to_string())?;
        // Small encodings (key manifests, trees) from memory.
        let bytes_layer = |kind: &'static str, bytes: &[u8]| -> Result<Layer, String> {
            let sha = layout.put_blob_bytes(bytes).map_err(|e| e.to_string())?;
            Ok((kind, sha, bytes.len() as u64, Digest::of(bytes)))
        };
        // File contents streamed from the store (verified on the way) to the layout.
        let blob_layer = |d: &BlobDigest| -> Result<Layer, String> {
            let mut r = store.open_blob(d).map_err(|e| e.to_string())?;
            let (sha, size) = layout.put_blob_reader(&mut r).map_err(|e| e.to_string())?;
            Ok((BLOB_TYPE, sha, size, d.0))
        };
        let mut layers = Vec::new();
        let mut add = |(kind, sha, size, blake3): Layer| {
            let mut d = Descriptor::new(kind, sha, size);
            d.annotations
                .insert(ANNOTATION_BLAKE3.to_string(), blake3.to_string());
            layers.push(d);
        };
        add(bytes_layer(
            KEY_TYPE,
            &store.get_key_manifest(key).map_err(|e| e.to_string())?,
        )?);
        add(blob_layer(&result.log)?);
        let mut seen = BTreeSet::new();
        let mut stack = vec![TreeDigest(result.output.0)];
        while let Some(t) = stack.pop() {
            if !seen.insert(t.0) {
                continue;
            }
            let tree = store.get_tree(&t).map_err(|e| e.to_string())?;
            add(bytes_layer(TREE_TYPE, &tree.encode())?);
            for e in tree.entries() {
                match &e.kind {
                    EntryKind::File { digest, .. } => {
                        if seen.insert(digest.0) {
                            add(blob_layer(digest)?);
                        }
                    }
                    EntryKind::Dir { digest } => stack.push(*digest),
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        let config = serde_json::to_vec(&Config {
            key: key.to_string(),
            output: result.output.to_string(),
            log: result.log.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let config_sha = layout.put_blob_bytes(&config).map_err(|e| e.to_string())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": cascade_image::MEDIA_TYPE_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": Descriptor::new(CONFIG_TYPE, config_sha, config.len() as u64),
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let digest = layout.put_blob_bytes(&bytes).map_err(|e| e.to_string())?;
        self.client
            .push(&layout, &digest, repo, &[tag])
            .map_err(|e| e.to_string())?;
        Ok(true)
    }
}

fn descriptor(v: &serde_json::Value) -> Result<Descriptor, String> {
    let digest: OciDigest = v["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("a descriptor without a digest")?;
    let size = v["size"].as_u64().ok_or("a descriptor without a size")?;
    Ok(Descriptor::new(
        v["mediaType"].as_str().unwrap_or_default(),
        digest,
        size,
    ))
}

/// One layer of an entry: media type, sha256, size and the blake3 the store knows it by.
type Layer = (&'static str, OciDigest, u64, Digest);

/// The media types of an entry's layers: what each one holds.
const BLOB_TYPE: &str = "application/vnd.cascade.blob.v1";
const TREE_TYPE: &str = "application/vnd.cascade.tree.v1";
const KEY_TYPE: &str = "application/vnd.cascade.key.v1";

fn have(store: &Store, kind: &str, d: &Digest) -> bool {
    match kind {
        TREE_TYPE => store.get_tree(&TreeDigest(*d)).is_ok(),
        KEY_TYPE => store.get_key_manifest(&NodeKey(*d)).is_ok(),
        _ => store.has_blob(&BlobDigest(*d)),
    }
}

fn put(store: &Store, kind: &str, bytes: &[u8]) -> Result<(), String> {
    match kind {
        TREE_TYPE => {
            let tree = Tree::decode(bytes).map_err(|e| e.to_string())?;
            store.put_tree(&tree).map(|_| ()).map_err(|e| e.to_string())
        }
        KEY_TYPE => store
            .put_key_manifest(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => store.put_blob(bytes).map(|_| ()).map_err(|e| e.to_string()),
    }
}
