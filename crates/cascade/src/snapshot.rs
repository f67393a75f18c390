//! The no-op fast path: what the last successful build of an environment depended on,
//! and what it found.
//!
//! After a build whose nodes all succeeded, cascade records in the store the state of
//! everything the build read to decide its keys: the manifests (with the digest of the
//! text it parsed), every file that decides what a ref of a local repository resolves
//! to, the tools on PATH (with the digest their key used), the options and variables
//! that matter, the cascade binary; and, beside them, what the build found: each node's
//! key, output and commit, the lockfile that records it. The next build with the same
//! options checks those, by `stat` alone where it can: when none changed, every key is
//! the same and in the action cache, and the lockfile would be byte-identical to the
//! newest one, so the build is a no-op, reported as such without loading the graph.
//!
//! Anything else is a miss and the build takes the ordinary path, which records a new
//! snapshot. A stat that changed is not yet a miss for a file whose content the build
//! used (a manifest, a tool): its content is hashed and compared. A file written less
//! than [`RACY`] before the recorded build started may have changed again within the
//! file system's timestamp granularity ("racily clean", as git calls it): it is always
//! compared by content, or counted as changed when its content is not known. The
//! snapshot is a cache: it is written atomically without fsync, and a torn, foreign or
//! unreadable one is ignored.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cascade_core::{Digest, NodeKey, OutputDigest};
use cascade_store::Store;

use crate::build::{BuildOptions, Event, NodeReport, NodeStatus};
use crate::BuildReport;

/// Bumped whenever what is recorded or how it is checked changes.
const FORMAT: u32 = 3;

/// How long before the recorded build's start a file must have been written to be
/// trusted by its `stat` alone (far above any file system's timestamp granularity).
const RACY: i128 = 2_000_000_000;

/// A snapshot of a 10,000-node graph is a few MB; anything far larger is not ours.
const MAX_SIZE: u64 = 256 << 20;

/// What `stat` says about a path: enough to see any change to its content or its
/// place (a rename, a replaced file, a new entry in a directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: i128,
    ctime: i128,
}

/// Follows symlinks: a manifest or tool reached through one is watched where it is.
fn stat(path: &Path) -> Option<Stat> {
    fs::metadata(path).ok().map(|m| Stat::of(&m))
}

impl Stat {
    fn of(m: &fs::Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// A store entry a cache hit read or checked, as it was then, watched as the snapshot
/// watches every entry of a node's output: the walk's own `stat` serves, and recording
/// needs no second one. (Had it changed since, the next check would see that and miss.)
pub(crate) fn seen_entry(path: &Path, m: &fs::Metadata) -> Watched {
    Watched {
        path: path.to_path_buf(),
        stat: Some(Stat::of(m)),
        check: Check::Exact,
    }
}

/// How a watched path is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Check {
    /// Read by the build, content unknown here (a ref, a directory): the same stat,
    /// written well before the build.
    Stat,
    /// Read by the build, which used content with this digest: the same stat, or the
    /// same content.
    Content(Digest),
    /// Replaced, never edited in place (this binary, store entries): the same stat,
    /// however recent.
    Exact,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Watched {
    path: PathBuf,
    stat: Option<Stat>,
    check: Check,
}

impl Watched {
    /// Its state now, with the content's digest when `content` (a file's bytes, a
    /// directory's names).
    fn now(path: PathBuf, content: bool) -> Watched {
        let stat = stat(&path);
        let check = match (stat.is_some() && content)
            .then(|| content_digest(&path))
            .flatten()
        {
            Some(d) => Check::Content(d),
            None => Check::Stat,
        };
        Watched { path, stat, check }
    }

    fn unchanged(&self, started: i128) -> bool {
        let now = stat(&self.path);
        match (self.stat, self.check) {
            // Absent then: absent still.
            (None, _) => now.is_none(),
            (Some(s), Check::Exact) => now == Some(s),
            (Some(s), Check::Stat) => now == Some(s) && !racy(&s, started),
            (Some(s), Check::Content(digest)) => {
                (now == Some(s) && !racy(&s, started))
                    || (now.is_some() && content_digest(&self.path) == Some(digest))
            }
        }
    }
}

fn racy(s: &Stat, started: i128) -> bool {
    s.mtime.max(s.ctime) >= started - RACY
}

/// The blake3 of a file's content (the digest manifests and tools are known by), or of
/// a directory's sorted entry names.
fn content_digest(path: &Path) -> Option<Digest> {
    let mut h = blake3::Hasher::new();
    if fs::metadata(path).ok()?.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .ok()?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .ok()?;
        names.sort();
        for n in names {
            h.update(n.as_encoded_bytes());
            h.update(b"\0");
        }
    } else {
        h.update_reader(fs::File::open(path).ok()?).ok()?;
    }
    Some(Digest::from_hasher(&h))
}

/// One node as the no-op reports it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct SnapNode {
    name: String,
    /// Its inputs' names, sorted, and the ref as written (branch mode): for a plan.
    inputs: Vec<String>,
    #[serde(rename = "ref")]
    r#ref: Option<String>,
    commit: String,
    version: String,
    key: NodeKey,
    output: OutputDigest,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A snapshot as kept: a first line with what decides most misses (the context, the
/// lockfile, the project's directories and the refs: a commit changes a ref), then the
/// rest. A build after a commit reads the first line only; at 10,000 nodes the rest is
/// 12 MB of JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Head {
    format: u32,
    /// The options, variables and binary the build ran with ([`Target::context`]).
    context: Digest,
    /// The same without the build's own options: what a plan must match.
    plan_context: Digest,
    /// When the recorded build started (ns since the epoch, this machine's clock):
    /// only compared with the file system's own timestamps, never recorded elsewhere.
    started: i128,
    /// The environment's newest lockfile, which records this graph.
    lockfile: PathBuf,
    /// What the build saw before it read anything ([`Before`]).
    first: Vec<Watched>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Body {
    /// The tools, this binary, the lockfile.
    watched: Vec<Watched>,
    /// The manifests and every node's store entries ([`NodesPart`]).
    entries: Vec<Watched>,
    nodes: Vec<SnapNode>,
}

#[derive(Debug)]
struct Snapshot {
    head: Head,
    body: Body,
}

/// What a build read before it read it: its start (for the racy-file rule) and the
/// state of the directories and refs it is about to list and resolve. Recorded only
/// when none of it changed by the end, so what is recorded is what the build saw.
pub(crate) struct Before {
    started: i128,
    seen: Vec<Watched>,
    /// A fetched repository: its refs are not watchable.
    unwatchable: bool,
    /// The directories of PATH, listed and hashed on a thread of their own while the
    /// build runs (a few ms for `/usr/bin`, which would otherwise end the build). As
    /// they were when the build resolved its tools: a tool added meanwhile is a miss.
    path_dirs: Option<std::thread::JoinHandle<Vec<Watched>>>,
}

impl Before {
    /// Before the manifests are read: the clock and the project's directories. Nothing
    /// is captured for a build no snapshot can answer (a replay, `--push`, a remote).
    pub(crate) fn start(opts: &BuildOptions) -> Before {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let watchable = eligible(opts);
        let seen = match watchable {
            true => crate::Layout::new(&opts.project)
                .manifest_dirs()
                .into_iter()
                .map(|dir| Watched::now(dir, true))
                .collect(),
            false => Vec::new(),
        };
        let search = opts.tools.search_path().to_os_string();
        let path_dirs = watchable.then(|| {
            std::thread::spawn(move || {
                std::env::split_paths(&search)
                    .filter(|d| d.is_absolute())
                    .map(|dir| Watched::now(dir, true))
                    .collect()
            })
        });
        Before {
            started: d.as_nanos() as i128,
            seen,
            unwatchable: !watchable,
            path_dirs,
        }
    }

    /// Before the sources are pinned: the refs of their repositories.
    pub(crate) fn refs(&mut self, git: &cascade_git::Git, project: &crate::Project) {
        if self.unwatchable {
            return;
        }
        let env_dir = project.environment_dir();
        let locations: Vec<String> = project
            .graph
            .components
            .iter()
            .map(|c| crate::pin::locate(&c.source.repo, &env_dir))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        match git.ref_files(&locations) {
            Some(files) => self
                .seen
                .extend(files.into_iter().map(|p| Watched::now(p, true))),
            None => self.unwatchable = true,
        }
    }
}

/// The snapshot file of `project`'s environment `env` in `store`; what else is kept per
/// project and environment (the resolved graph) is named after it.
pub(crate) fn slot(store: &Path, project: &Path, env: &str) -> PathBuf {
    let root = fs::canonicalize(project).unwrap_or_else(|_| project.to_path_buf());
    let mut e = blake3::Hasher::new();
    e.update(root.as_os_str().as_encoded_bytes());
    e.update(b"\0");
    e.update(env.as_bytes());
    store
        .join("snapshots")
        .join(format!("{}.json", &Digest::from_hasher(&e).hex()[..32]))
}

/// What a snapshot is looked up by: the project, the environment, the store, PATH.
struct Target<'a> {
    project: &'a Path,
    env: &'a str,
    store: &'a Path,
    tools: &'a cascade_exec::Tools,
}

impl<'a> Target<'a> {
    fn of_build(opts: &'a BuildOptions) -> Target<'a> {
        Target {
            project: &opts.project,
            env: &opts.env,
            store: &opts.store,
            tools: &opts.tools,
        }
    }

    fn of_plan(opts: &'a crate::PlanOptions) -> Target<'a> {
        Target {
            project: &opts.project,
            env: &opts.env,
            store: &opts.store,
            tools: &opts.tools,
        }
    }

    /// Where the snapshot of this project and environment lives in the store.
    fn path(&self) -> PathBuf {
        slot(self.store, self.project, self.env)
    }

    /// Everything outside the watched files that decides what a plan finds: the
    /// variables cascade and git read, PATH (where tools are found), this binary's
    /// version and key format; for a build, `build` (its executor and options) too.
    fn context(&self, build: Option<&BuildOptions>) -> Digest {
        let mut parts: Vec<String> = vec![
            format!("format {FORMAT}"),
            format!("cascade {}", env!("CARGO_PKG_VERSION")),
            format!("key {}", cascade_core::KEY_VERSION),
            format!("env {}", self.env),
            format!(
                "store {}",
                fs::canonicalize(self.store)
                    .unwrap_or_else(|_| self.store.to_path_buf())
                    .display()
            ),
            format!("path {}", self.tools.search_path().to_string_lossy()),
        ];
        if let Some(opts) = build {
            parts.push(format!("executor {:?}", opts.executor));
            parts.push(format!("skip_tests {}", opts.publish.skip_tests));
        }
        // BTreeMap: the variables in a fixed order.
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .filter(|(k, _)| {
                k.starts_with("CASCADE_")
                    || k.starts_with("GIT_")
                    || k == "HOME"
                    || k == "XDG_CONFIG_HOME"
            })
            .collect();
        parts.extend(vars.into_iter().map(|(k, v)| format!("var {k}={v}")));
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p.as_bytes());
            h.update(b"\0");
        }
        Digest::from_hasher(&h)
    }

    /// The snapshot, when nothing it watched has changed and the environment's newest
    /// lockfile is still the one it recorded.
    fn holding(&self, build: Option<&BuildOptions>) -> Option<Snapshot> {
        use std::io::BufRead;
        let file = fs::File::open(self.path()).ok()?;
        let mut file = std::io::BufReader::new(file.take(MAX_SIZE));
        let mut line = Vec::new();
        file.read_until(b'\n', &mut line).ok()?;
        let head: Head = serde_json::from_slice(&line).ok()?;
        let context = match build {
            Some(_) => head.context,
            None => head.plan_context,
        };
        if head.format != FORMAT || context != self.context(build) {
            return None;
        }
        if crate::newest_lockfile(self.project, self.env).as_deref() != Some(&*head.lockfile) {
            return None;
        }
        if !all_unchanged(&head.first, head.started) {
            return None;
        }
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).ok()?;
        let body: Body = serde_json::from_slice(&rest).ok()?;
        (all_unchanged(&body.watched, head.started) && all_unchanged(&body.entries, head.started))
            .then_some(Snapshot { head, body })
    }
}

/// Whether every watched file is unchanged: the `stat`s (tens of thousands for a big
/// graph, most of a no-op's time) are spread over the machine's threads, and all stop at
/// the first change.
fn all_unchanged(watched: &[Watched], started: i128) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = watched.len().div_ceil(threads).max(1024);
    let changed = AtomicBool::new(false);
    let check = |part: &[Watched]| {
        for w in part {
            if changed.load(Ordering::Relaxed) {
                return;
            }
            if !w.unchanged(started) {
                changed.store(true, Ordering::Relaxed);
                return;
            }
        }
    };
    let mut parts = watched.chunks(chunk);
    let first = parts.next().unwrap_or_default();
    // This thread takes the first part: a small project starts no thread at all.
    std::thread::scope(|s| {
        for part in parts {
            s.spawn(|| check(part));
        }
        check(first);
    });
    !changed.into_inner()
}

/// Whether a build with `opts` may be answered from a snapshot at all: not a replay,
/// nothing to publish. (Images, smoke tests and remotes are checked when recording.)
fn eligible(opts: &BuildOptions) -> bool {
    opts.replay.lock.is_none()
        && !opts.publish.load
        && !opts.publish.push
        && opts.remote.url.is_none()
        && !opts.remote.exec
}

/// The no-op's report, when the snapshot of `opts`' environment still holds.
pub(crate) fn check(
    opts: &BuildOptions,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Option<BuildReport> {
    let t0 = Instant::now();
    if !eligible(opts) {
        return None;
    }
    let snap = Target::of_build(opts).holding(Some(opts))?;
    on_event(Event::Scheduled {
        total: snap.body.nodes.len(),
    });
    let nodes: Vec<NodeReport> = snap
        .body
        .nodes
        .into_iter()
        .map(|n| NodeReport {
            name: n.name,
            status: NodeStatus::Cached,
            commit: n.commit,
            version: n.version,
            key: Some(n.key),
            output: Some(n.output),
            image: None,
            tests: Vec::new(),
            remote: false,
            remote_exec: None,
            duration_ms: 0,
            warnings: n.warnings,
        })
        .collect();
    for n in &nodes {
        on_event(Event::Finished(n));
    }
    let store = Store::for_reading(&opts.store);
    crate::cache::record_build(
        &store,
        &crate::cache::BuildStat {
            environment: opts.env.clone(),
            built: 0,
            cached: nodes.len(),
            remote_hits: 0,
        },
    );
    Some(BuildReport {
        environment: opts.env.clone(),
        built: 0,
        cached: nodes.len(),
        failed: 0,
        skipped: 0,
        nodes,
        lockfile: Some(snap.head.lockfile),
        duration_ms: t0.elapsed().as_millis() as u64,
        replay: None,
        remote_cache: None,
        signed: Vec::new(),
        notifications: Vec::new(),
        from_snapshot: true,
    })
}

/// The plan of an environment whose snapshot still holds, compared with the lockfile
/// it recorded: every node cached, nothing changed. Only for a plan against the newest
/// lockfile and without a remote.
pub(crate) fn plan(opts: &crate::PlanOptions) -> Option<crate::Plan> {
    if opts.against.is_some() || opts.remote.is_some() {
        return None;
    }
    let snap = Target::of_plan(opts).holding(None)?;
    let baseline = snap
        .head
        .lockfile
        .strip_prefix(&opts.project)
        .unwrap_or(&snap.head.lockfile)
        .to_path_buf();
    let mut warnings = Vec::new();
    let nodes: Vec<crate::PlanNode> = snap
        .body
        .nodes
        .into_iter()
        .map(|n| {
            warnings.extend(n.warnings.iter().map(|w| format!("{}: {w}", n.name)));
            crate::PlanNode {
                name: n.name,
                state: crate::PlanState::Cached,
                inputs: n.inputs,
                r#ref: n.r#ref,
                commit: n.commit,
                version: n.version,
                key: Some(n.key),
                baseline_key: Some(n.key),
                output: Some(n.output),
                image: None,
                waits_for: Vec::new(),
                early_cutoff: false,
                reasons: Vec::new(),
            }
        })
        .collect();
    Some(crate::Plan {
        environment: opts.env.clone(),
        baseline: Some(baseline),
        cached: nodes.len(),
        remote: 0,
        rebuild: 0,
        pending: 0,
        nodes,
        warnings,
    })
}

/// What a finished build read and found, for [`record`].
pub(crate) struct Recorded<'a> {
    pub project: &'a crate::Project,
    pub nodes: &'a [crate::build::Node<'a>],
    pub done: &'a [std::sync::OnceLock<crate::build::Done>],
    pub report: &'a BuildReport,
    pub store: &'a Store,
}

/// The nodes' part of a snapshot: the manifests and the nodes' store entries as they
/// are, and what the no-op reports of the nodes. The most work of recording (it reads
/// every output's trees and stats every entry), so it is made while the lockfile is
/// written ([`nodes_part`]), spread over the machine's threads.
pub(crate) struct NodesPart {
    watched: Vec<Watched>,
    nodes: Vec<SnapNode>,
}

/// [`NodesPart`] as the JSON of [`Body::entries`] and [`Body::nodes`]: the bulk of a
/// snapshot's bytes, written while the lockfile is.
pub(crate) struct RenderedNodes {
    entries: Vec<u8>,
    nodes: Vec<u8>,
}

/// [`NodesPart`] of a successful build, rendered; `None` when a node has no key or
/// output, or an output's entries cannot be read (the snapshot is not recorded then).
pub(crate) fn nodes_part(r: &Recorded<'_>) -> Option<RenderedNodes> {
    let part = collect_nodes_part(r)?;
    Some(RenderedNodes {
        entries: serde_json::to_vec(&part.watched).ok()?,
        nodes: serde_json::to_vec(&part.nodes).ok()?,
    })
}

fn collect_nodes_part(r: &Recorded<'_>) -> Option<NodesPart> {
    if !r.report.success() {
        return None;
    }
    let pairs: Vec<_> = r
        .nodes
        .iter()
        .zip(&r.report.nodes)
        .zip(r.done)
        .map(|((n, rep), d)| (n, rep, d.get()))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = pairs.len().div_ceil(threads).max(256);
    let part = |pairs: &[Pair<'_>]| {
        let mut part = NodesPart {
            watched: Vec::new(),
            nodes: Vec::with_capacity(pairs.len()),
        };
        for (n, rep, done) in pairs {
            part.add(r, n, rep, *done)?;
        }
        Some(part)
    };
    let mut chunks = pairs.chunks(chunk);
    let first = chunks.next().unwrap_or_default();
    // This thread takes the first part: a small project starts no thread at all.
    let parts: Vec<Option<NodesPart>> = std::thread::scope(|s| {
        let rest: Vec<_> = chunks.map(|c| s.spawn(move || part(c))).collect();
        let mut parts = vec![part(first)];
        parts.extend(rest.into_iter().map(|h| h.join().ok().flatten()));
        parts
    });
    // Sized once: at 10,000 nodes the entries are tens of thousands of paths, and a
    // growing vector would hold two copies of them at its last step.
    let entries = parts
        .iter()
        .flatten()
        .map(|p| p.watched.len())
        .sum::<usize>();
    let mut all = NodesPart {
        watched: Vec::with_capacity(entries + r.project.db.files().count()),
        nodes: Vec::with_capacity(pairs.len()),
    };
    // The manifests, as parsed (a stat each: on a big graph, thousands).
    let root = &r.project.root;
    for (rel, text) in r.project.db.files() {
        let path = root.join(rel);
        all.watched.push(Watched {
            stat: stat(&path),
            path,
            check: Check::Content(Digest::of(text.as_bytes())),
        });
    }
    for p in parts {
        let p = p?;
        all.watched.extend(p.watched);
        all.nodes.extend(p.nodes);
    }
    Some(all)
}

/// A node, its report and what it made.
type Pair<'a> = (
    &'a crate::build::Node<'a>,
    &'a NodeReport,
    Option<&'a crate::build::Done>,
);

impl NodesPart {
    fn add(
        &mut self,
        r: &Recorded<'_>,
        n: &crate::build::Node<'_>,
        rep: &NodeReport,
        done: Option<&crate::build::Done>,
    ) -> Option<()> {
        let (key, output) = (rep.key?, rep.output?);
        let at = |path: PathBuf| Watched {
            stat: stat(&path),
            path,
            check: Check::Exact,
        };
        // The action result and every tree and blob of the output, as they are: a
        // corrupt, truncated or collected entry (any change to its stat) is a miss, and
        // the ordinary path verifies and rebuilds. A cache hit's lookup saw them all.
        let action = r.store.action_path(&key);
        let mut seen = done.map(|d| d.take_seen()).unwrap_or_default();
        if seen.is_empty() {
            self.watched.push(at(action));
            for p in r.store.output_entries(&output)? {
                self.watched.push(at(p));
            }
        } else {
            // In the order of the listing above: the action result, then by path.
            seen.sort_by(|a, b| {
                (a.path != action)
                    .cmp(&(b.path != action))
                    .then_with(|| a.path.cmp(&b.path))
            });
            seen.dedup_by(|a, b| a.path == b.path);
            self.watched.append(&mut seen);
        }
        let mut inputs: Vec<String> = n
            .component
            .inputs
            .iter()
            .map(|&j| r.project.graph.components[j].name.clone())
            .collect();
        inputs.sort();
        self.nodes.push(SnapNode {
            name: rep.name.clone(),
            inputs,
            r#ref: match &n.component.source.rev {
                cascade_manifest::Rev::Ref(r) => Some(r.clone()),
                cascade_manifest::Rev::Version(_) => None,
            },
            commit: rep.commit.clone(),
            version: rep.version.clone(),
            key,
            output,
            warnings: n.source_warnings(),
        });
        Some(())
    }
}

/// Records the snapshot of a successful build, or removes a stale one when this build
/// cannot be answered from a snapshot (an image, a smoke test, a fetched repository,
/// something that changed while it ran).
pub(crate) fn record(
    opts: &BuildOptions,
    before: Before,
    r: &Recorded<'_>,
    nodes: Option<RenderedNodes>,
) {
    let path = Target::of_build(opts).path();
    let snapshot = nodes.and_then(|nodes| snapshot(opts, before, r, nodes));
    let bytes = snapshot.and_then(|s| s.bytes());
    match bytes {
        Some(bytes) => {
            // A cache: no flush; a torn file does not parse and is ignored.
            let _ = Store::replace_lazily(&path, &bytes);
        }
        None => {
            let _ = fs::remove_file(&path);
        }
    }
}

fn snapshot(
    opts: &BuildOptions,
    before: Before,
    r: &Recorded<'_>,
    nodes: RenderedNodes,
) -> Option<Recording> {
    let env = &r.project.graph.environment;
    let publishes = r.project.graph.components.iter().any(|c| {
        c.recipe.image.is_some() || (!opts.publish.skip_tests && !c.recipe.tests.is_empty())
    });
    if publishes || env.remote.is_some() || env.remote_cache.is_some() || !r.report.success() {
        return None;
    }
    // What was listed or resolved must not have changed since.
    if before.unwatchable || before.seen.iter().any(|w| stat(&w.path) != w.stat) {
        return None;
    }
    let lockfile = r.report.lockfile.clone()?;
    let mut watched = Vec::with_capacity(64);
    let at = |path: PathBuf, check: Check| Watched {
        stat: stat(&path),
        path,
        check,
    };
    // Tools: the directories of PATH (a new one may come first), each tool's content.
    watched.extend(before.path_dirs?.join().ok()?);
    let mut tools = BTreeMap::new();
    for n in r.nodes {
        for t in &n.tools {
            tools.insert(t.path.clone(), t.digest.0);
        }
    }
    for (p, d) in tools {
        watched.push(at(p, Check::Content(d)));
    }
    if let Ok(exe) = std::env::current_exe() {
        watched.push(at(exe, Check::Exact));
    }
    // The lockfile as it is now: this build wrote it, or found it identical.
    watched.push(Watched::now(lockfile.clone(), true));
    let target = Target::of_build(opts);
    Some(Recording {
        head: Head {
            format: FORMAT,
            context: target.context(Some(opts)),
            plan_context: target.context(None),
            started: before.started,
            lockfile,
            first: before.seen,
        },
        watched,
        nodes,
    })
}

/// A snapshot to write: its [`Body`]'s big parts already JSON ([`NodesPart::render`]).
struct Recording {
    head: Head,
    watched: Vec<Watched>,
    nodes: RenderedNodes,
}

impl Recording {
    /// The head's line, then the [`Body`], the pieces joined as serde_json writes a map.
    fn bytes(&self) -> Option<Vec<u8>> {
        let mut bytes = serde_json::to_vec(&self.head).ok()?;
        bytes.push(b'\n');
        bytes.reserve(self.nodes.entries.len() + self.nodes.nodes.len() + 4096);
        bytes.extend_from_slice(b"{\"watched\":");
        serde_json::to_writer(&mut bytes, &self.watched).ok()?;
        bytes.extend_from_slice(b",\"entries\":");
        bytes.extend_from_slice(&self.nodes.entries);
        bytes.extend_from_slice(b",\"nodes\":");
        bytes.extend_from_slice(&self.nodes.nodes);
        bytes.push(b'}');
        Some(bytes)
    }
}
