//! `cascade build`: load → pin → (key → cache lookup | execute → store) per node in
//! dependency order, in parallel → lockfile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cascade_core::{
    ContentIdentity, Digest, Encoder, KeyIngredients, NodeKey, OutputDigest, RunnerIdentity,
    SourceIdentity, SourceKey,
};
use cascade_exec::{Outcome, ResolvedTool, Tools};
use cascade_git::Git;
use cascade_image::{OciDigest, OciLayout};
use cascade_lock::{ImageView, LockNode, Lockfile, NodeView, SourceView};
use cascade_manifest::{Component, Rev, RunnerDecl, RunnerImage, Stamp};
use cascade_store::{Store, StoreError};
use miette::Diagnostic;

use crate::execute::{ExecutorKind, Executors};
use crate::image::{build_image, index_images, ImageFailure, ImageRef};
use crate::publish::{self, PublishOptions, PushedImage, TestReport};
use crate::remote::{RemoteCache, RemoteOptions, RemoteReport};
use crate::replay::{ReplayOptions, ReplayReport};
use crate::{pin_all, Error, ExitCode, Pinned, Problems, Project};

/// The timeout of a step whose recipe names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct BuildOptions {
    pub project: PathBuf,
    pub env: String,
    pub store: PathBuf,
    pub jobs: usize,
    pub keep_going: bool,
    /// The UTC stamp for the lockfile's name (`20261123T101500Z`). The clock is read by
    /// the caller: nothing below it depends on time.
    pub stamp: String,
    /// Where tools are looked up (the caller's PATH).
    pub tools: Tools,
    /// Smoke tests, `--load`, `--push`.
    pub publish: PublishOptions,
    /// `--lock FILE`: build what a lockfile pins instead of the manifests.
    pub replay: ReplayOptions,
    /// `--remote-cache`: share results through an OCI registry.
    pub remote: RemoteOptions,
    /// `--executor`: where container steps and smoke tests run.
    pub executor: ExecutorKind,
    /// `--work-dir`: where Actions' work directories go (`store` for the store's disk);
    /// `None` for a roomy tmpfs, else the store ([`crate::workdir`]).
    pub work_dir: Option<PathBuf>,
    /// `--sign`: the key that signs each pushed image (a path from the current
    /// directory, or `env:VAR`); wins over the environment's `sign:`. Only with `push`.
    pub sign: Option<cascade_manifest::KeyLocation>,
    /// The caller's process ends when the build returns (the command line): the graph
    /// and what the walk made are left for the exit to free at once, not freed entry by
    /// entry (milliseconds at 1,000 nodes), as clang's driver does with `-disable-free`.
    pub exiting: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum NodeStatus {
    /// The action cache had this key.
    Cached,
    Built,
    Failed {
        /// What went wrong: `step` (a step failed or timed out), `output` (a declared
        /// output is missing or not allowed), `input` (an input is corrupt in the store),
        /// `source` (the source tree holds its own `inputs/`),
        /// `environment` (disk, store, git objects: not the recipe's fault).
        cause: FailureCause,
        error: String,
        log_tail: Vec<String>,
        log_path: Option<PathBuf>,
    },
    /// An input failed, so this node could not be built.
    Skipped {
        because: String,
    },
    /// The build stopped after a failure before reaching this node.
    NotStarted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    Step,
    Output,
    Input,
    /// The exported source cannot be built as it is (it holds its own `inputs/`).
    Source,
    Environment,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeReport {
    pub name: String,
    #[serde(flatten)]
    pub status: NodeStatus,
    pub commit: String,
    pub version: String,
    pub key: Option<NodeKey>,
    pub output: Option<OutputDigest>,
    /// The node's image, when its recipe declares one and it was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// Its smoke tests, once every node has built.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestReport>,
    /// Cached: found in the remote cache (and now in the local store too).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    /// Built: executed on a REAPI engine's worker (which, and each phase's time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_exec: Option<crate::reapi::RemoteRun>,
    /// Wall time of this node, for people; never hashed or written to a lockfile.
    pub duration_ms: u64,
    /// Store problems met on the way (a corrupt entry discarded, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    pub environment: String,
    pub nodes: Vec<NodeReport>,
    pub built: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub lockfile: Option<PathBuf>,
    pub duration_ms: u64,
    /// With `--lock`: what replaying it found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayReport>,
    /// With a remote cache: what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_cache: Option<RemoteReport>,
    /// With `--push` and a key: the signature made for each pushed image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signed: Vec<crate::sign::Signed>,
    /// A failed build's `build_failed` event, as each `notify:` hook took it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<cascade_notify::Delivery>,
    /// A no-op decided by the snapshot of the last build: nothing it read had changed,
    /// so the graph was not loaded again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_snapshot: bool,
}

impl BuildReport {
    /// `Ok` on success; `Environment` when a node failed because of the machine (disk,
    /// store, git objects); `Failed` for any other failure.
    pub fn exit_code(&self) -> ExitCode {
        if self.success() {
            ExitCode::Ok
        } else if self.nodes.iter().any(|n| {
            matches!(
                n.status,
                NodeStatus::Failed {
                    cause: FailureCause::Environment,
                    ..
                }
            )
        }) {
            ExitCode::Environment
        } else {
            ExitCode::Failed
        }
    }

    /// Every node built or cached, every smoke test passed (or was skipped), and a
    /// replay reproduced every digest of its lockfile.
    pub fn success(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.status.succeeded() && n.tests.iter().all(TestReport::passed))
            && self.replay.as_ref().is_none_or(|r| r.mismatches.is_empty())
    }
}

/// What a running build tells its caller, for progress lines.
pub enum Event<'a> {
    /// Sources pinned and tools resolved: `total` nodes are about to be scheduled.
    Scheduled {
        total: usize,
    },
    Started {
        name: &'a str,
    },
    Finished(&'a NodeReport),
    /// After the nodes: an image loaded into Docker, as the engine's image `id`.
    ImageLoaded {
        reference: &'a str,
        id: &'a str,
    },
    /// A smoke test of `node`'s image ended (or was skipped).
    Tested {
        node: &'a str,
        test: &'a TestReport,
    },
    /// An image pushed to its registry.
    Pushed(&'a PushedImage),
    /// An image signed and its provenance attested (`--sign`).
    Signed(&'a crate::sign::Signed),
    /// A replay goes on despite a risk to reproducing the lockfile (`message` says
    /// which).
    ReplayWarning {
        message: &'a str,
    },
    /// A replay built a node's output or image to other bytes than the lockfile's.
    Mismatch(&'a crate::check::Mismatch),
}

/// A node that built or was cached: what the lockfile records beyond the node itself.
pub(crate) struct Done {
    /// The inputs' output digests its key was computed from.
    pub inputs: BTreeMap<String, OutputDigest>,
    /// The runner identity its key was computed from.
    pub runner: RunnerIdentity,
    pub output: OutputDigest,
    pub key: NodeKey,
    pub artifacts: BTreeMap<String, Digest>,
    pub image: Option<ImageRef>,
    /// A cache hit's store entries as its lookup saw them, until the snapshot takes them.
    seen: std::sync::Mutex<Vec<crate::snapshot::Watched>>,
}

impl Done {
    /// The store entries the lookup of a cache hit saw (none for a node built or
    /// fetched), once: the snapshot's record takes them.
    pub(crate) fn take_seen(&self) -> Vec<crate::snapshot::Watched> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl NodeStatus {
    /// Built or cached: its output is known.
    pub fn succeeded(&self) -> bool {
        matches!(self, NodeStatus::Built | NodeStatus::Cached)
    }
}

impl Node<'_> {
    /// A report with this node's identity and `status`; nothing else known yet.
    fn report(&self, status: NodeStatus) -> NodeReport {
        NodeReport {
            name: self.component.name.clone(),
            status,
            commit: self.pinned.source.commit.clone(),
            version: self.pinned.source.version.to_string(),
            key: None,
            output: None,
            image: None,
            tests: Vec::new(),
            remote: false,
            remote_exec: None,
            duration_ms: 0,
            warnings: self.source_warnings(),
        }
    }

    /// What pinning found worth saying: source filter patterns that match nothing.
    pub(crate) fn source_warnings(&self) -> Vec<String> {
        self.pinned
            .source
            .unmatched
            .iter()
            .map(|p| unmatched_pattern(p))
            .collect()
    }

    /// Whether the steps see `what` of the pinned commit. In key format 1 they saw
    /// the commit and the version always (and the commit time as the epoch).
    pub fn stamps(&self, what: Stamp) -> bool {
        self.pinned.key_format == 1 || self.component.recipe.stamp.contains(&what)
    }

    /// `SOURCE_DATE_EPOCH`: the time the exported content last changed; in key format 1,
    /// the pinned commit's time.
    pub fn epoch(&self) -> i64 {
        let s = &self.pinned.source;
        if self.pinned.key_format == 1 {
            s.commit_time
        } else {
            s.epoch
        }
    }
}

/// The warning for a source filter pattern that matches no file of the tree.
pub(crate) fn unmatched_pattern(pattern: &str) -> String {
    format!("the source filter pattern `{pattern}` matches no file of the source tree")
}

/// Everything one node needs, decided before the scheduler starts.
pub(crate) struct Node<'a> {
    pub component: &'a Component,
    pub pinned: &'a Pinned,
    /// The host runner's tools; none for a container runner.
    pub tools: Vec<ResolvedTool>,
    /// The runner identity, when it is known before anything is built: the host's
    /// tools, or a pinned image. `None` when the steps run in the image of a component
    /// of the graph ([`Node::runner_given`]).
    pub runner: Option<RunnerIdentity>,
    pub recipe: Digest,
    /// Where its image is tagged, when it has one: from the environment's `registry:`
    /// and `tag:`, or as a replayed lockfile recorded it.
    pub reference: Option<String>,
}

impl Node<'_> {
    /// The runner identity, given the manifest digests of the images built so far (by
    /// node index): for a container of a component's image, that image's digest.
    pub fn runner_given(
        &self,
        image_of: impl Fn(usize) -> Option<OciDigest>,
    ) -> Option<RunnerIdentity> {
        if let Some(r) = &self.runner {
            return Some(r.clone());
        }
        let image = image_of(self.component.runner_image?)?;
        Some(RunnerIdentity::Container {
            image: image.to_string(),
        })
    }

    /// The ingredients of this node's key, given its inputs' output digests and its
    /// runner.
    pub fn ingredients(
        &self,
        inputs: &BTreeMap<String, OutputDigest>,
        runner: &RunnerIdentity,
    ) -> KeyIngredients {
        let c = self.component;
        let s = &self.pinned.source;
        let source = if self.pinned.key_format == 1 {
            SourceKey::Commit(SourceIdentity {
                repo: c.source.repo.clone(),
                commit: s.commit.clone(),
                tree: s.tree.clone(),
                dir: c.source.dir.clone(),
                version: s.version.to_string(),
                commit_time: s.commit_time,
            })
        } else {
            // Exactly what the steps see (`stamps`, `epoch`): no more, no less.
            SourceKey::Content(ContentIdentity {
                content: s.content.clone(),
                epoch: self.epoch(),
                commit: self.stamps(Stamp::Commit).then(|| s.commit.clone()),
                version: self.stamps(Stamp::Version).then(|| s.version.to_string()),
                commit_time: self.stamps(Stamp::Time).then_some(s.commit_time),
            })
        };
        KeyIngredients {
            component: c.name.clone(),
            recipe: self.recipe,
            source,
            inputs: inputs.clone(),
            runner: runner.clone(),
            env: c.recipe.env.clone(),
        }
    }
}

pub fn build(
    opts: &BuildOptions,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<BuildReport, Error> {
    if let Some(lock) = &opts.replay.lock {
        return crate::replay::replay(opts, lock, on_event);
    }
    let started = Instant::now();
    let mut phases = crate::timings::Phases::start();
    // A no-op answered by the snapshot of the last build: nothing it read has changed.
    if let Some(mut report) = crate::snapshot::check(opts, on_event) {
        report.duration_ms = started.elapsed().as_millis() as u64;
        phases.mark("snapshot");
        return Ok(report);
    }
    phases.mark("snapshot");
    cascade_git::warm_up();
    let mut before = crate::snapshot::Before::start(opts);
    let mut project = crate::load::load_cached(&opts.project, &opts.env, &opts.store, true)
        .map_err(|e| crate::pin::with_source_problems(e, &opts.store))?;
    phases.mark("load");
    let store = Store::open(&opts.store)?;
    // Shared with other builds; keeps a `gc` from collecting what this build writes.
    let _store_lock = store.lock_shared()?;
    project.keep_graph();
    // The normalized recipes and image declarations are kept in the store under their
    // digests (the lockfile's `recipe:` and `image.spec`), so a lockfile can be
    // replayed, and `plan` can name the fields that changed, after a recipe changed.
    // Before git is used: meanwhile libgit2 finishes starting on its own thread.
    for c in &project.graph.components {
        store.put_blob(&c.recipe.canonical())?;
        if let Some(i) = &c.recipe.image {
            store.put_blob(&i.canonical())?;
        }
    }
    let git = Git::new(store.git_dir());
    before.refs(&git, &project);
    let pinned = pin_all(&project, &git)?;
    phases.mark("pin");
    let mut nodes = prepare(
        &project.graph.components,
        &pinned,
        &opts.tools,
        Some(&project.db),
    )?;
    let env = &project.graph.environment;
    for n in &mut nodes {
        if n.component.recipe.image.is_some() {
            n.reference = Some(crate::image::reference(env, n));
        }
    }
    // What publishing needs is checked before anything is built.
    publish::push_target(&opts.publish, env.registry.as_deref(), &opts.env)?;
    // So is the signing key: `--sign`, else the environment's `sign:`.
    let signer = signer(opts, env.sign.as_ref(), &project.environment_dir())?;
    // The flags (--remote, then --remote-cache), else the environment's `remote:`, then
    // its `remote_cache:`.
    let remote_opts = RemoteOptions {
        url: opts
            .remote
            .url
            .clone()
            .or_else(|| env.remote.clone())
            .or_else(|| env.remote_cache.clone()),
        ..opts.remote.clone()
    };
    let remote = RemoteCache::new(&remote_opts)?;
    phases.mark("prepare");
    let (mut report, done) = walk(
        opts,
        &Walk {
            store: &store,
            git: &git,
            components: &project.graph.components,
            nodes: &nodes,
            env_name: &opts.env,
            remote: remote.as_ref(),
            publish: true,
            signer: signer.as_ref(),
        },
        |_| Ok(()),
        |_, _| {},
        on_event,
    )?;
    phases.mark("walk");
    crate::cache::record_build(
        &store,
        &crate::cache::BuildStat {
            environment: opts.env.clone(),
            built: report.built,
            cached: report.cached,
            remote_hits: report.nodes.iter().filter(|n| n.remote).count(),
        },
    );
    record_results(
        opts,
        &Finished {
            project: &project,
            nodes: &nodes,
            store: &store,
            done: &done,
        },
        &mut report,
        before,
        &mut phases,
    )?;
    phases.mark("record");
    if !report.success() {
        report.notifications = notify_failure(&project.graph.environment, &report);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    if opts.exiting {
        // Plain data, no file or lock among it: nothing is lost by not dropping it.
        std::mem::forget(done);
        std::mem::forget(nodes);
        std::mem::forget(pinned);
        std::mem::forget(project);
    }
    Ok(report)
}

/// What a finished walk hands to [`record_results`].
struct Finished<'a> {
    project: &'a Project,
    nodes: &'a [Node<'a>],
    store: &'a Store,
    done: &'a [OnceLock<Done>],
}

/// The lockfile of a successful build, and the snapshot (or the removal of a stale one).
fn record_results(
    opts: &BuildOptions,
    r: &Finished<'_>,
    report: &mut BuildReport,
    before: crate::snapshot::Before,
    phases: &mut crate::timings::Phases,
) -> Result<(), Error> {
    // The snapshot's node part (most of its work) is made while the lockfile is
    // written: that write mostly waits for the disk.
    let (written, nodes_part) = std::thread::scope(|s| {
        let recorded = crate::snapshot::Recorded {
            project: r.project,
            nodes: r.nodes,
            done: r.done,
            report,
            store: r.store,
        };
        let part = s.spawn(move || crate::snapshot::nodes_part(&recorded));
        let written = report
            .success()
            .then(|| {
                let text = lockfile_text(
                    &r.project.graph.environment.name,
                    graph_identity(r.project),
                    r.nodes,
                    r.done,
                    report,
                );
                // What the lockfile names reaches the disk first, in one flush.
                r.store.sync()?;
                write_lockfile_text(&opts.project, &opts.env, &opts.stamp, &text)
            })
            .transpose();
        (written, part.join().ok().flatten())
    });
    report.lockfile = written?;
    phases.mark("lockfile");
    crate::snapshot::record(
        opts,
        before,
        &crate::snapshot::Recorded {
            project: r.project,
            nodes: r.nodes,
            done: r.done,
            report,
            store: r.store,
        },
        nodes_part,
    );
    Ok(())
}

/// The `build_failed` event: the failed nodes, with their commits and versions.
fn notify_failure(
    env: &cascade_manifest::Environment,
    report: &BuildReport,
) -> Vec<cascade_notify::Delivery> {
    use crate::notify::{EventComponent, EventKind, NotifyEvent};
    let failed: Vec<&NodeReport> = report
        .nodes
        .iter()
        .filter(|n| matches!(n.status, NodeStatus::Failed { .. }))
        .collect();
    let mut event = NotifyEvent::new(
        EventKind::BuildFailed,
        &env.name,
        format!(
            "build of {} failed: {}",
            env.name,
            failed
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    event.components = failed
        .iter()
        .map(|n| EventComponent {
            name: n.name.clone(),
            version: Some(n.version.clone()),
            commit: Some(n.commit.clone()),
            tag: None,
        })
        .collect();
    crate::notify::notify(&env.notify, &event)
}

/// The key that signs this build's pushes, loaded before anything is built: `--sign`
/// (from the current directory), else the environment's `sign:` (from its directory).
/// None without `--push`: only pushed images are signed.
pub(crate) fn signer(
    opts: &BuildOptions,
    from_env: Option<&cascade_manifest::KeyLocation>,
    env_dir: &Path,
) -> Result<Option<crate::sign::Signer>, Error> {
    if !opts.publish.push {
        return Ok(None);
    }
    let env_file = format!("`sign:` in `graph/environments/{}.yaml`", opts.env);
    let (loc, base, by) = match (&opts.sign, from_env) {
        (Some(loc), _) => (loc, PathBuf::new(), "--sign".to_string()),
        (None, Some(loc)) => (loc, env_dir.to_path_buf(), env_file),
        (None, None) => return Ok(None),
    };
    crate::sign::Signer::load(loc, &base, &by, &opts.store).map(Some)
}

pub(crate) fn any_tests(components: &[Component]) -> bool {
    components.iter().any(|c| !c.recipe.tests.is_empty())
}

/// The store's image layout, opened only when an image is declared or a step runs in a
/// container, so a build without images leaves no trace.
pub(crate) fn open_layout(
    store: &Store,
    components: &[Component],
) -> Result<Option<OciLayout>, Error> {
    if components.iter().any(|c| {
        c.recipe.image.is_some() || matches!(c.recipe.runner, RunnerDecl::Container { .. })
    }) {
        Ok(Some(
            OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?,
        ))
    } else {
        Ok(None)
    }
}

/// What a build or a replay walks, once its nodes are known (from the manifests or from
/// a lockfile): the one pipeline both feed.
pub(crate) struct Walk<'a> {
    pub store: &'a Store,
    pub git: &'a Git,
    pub components: &'a [Component],
    pub nodes: &'a [Node<'a>],
    pub env_name: &'a str,
    pub remote: Option<&'a RemoteCache>,
    /// Smoke tests, `--load` and `--push` after the nodes (not for `--check`).
    pub publish: bool,
    /// Signs what `--push` pushed.
    pub signer: Option<&'a crate::sign::Signer>,
}

/// Checks what the walk needs (the engine, the executors) before anything runs, then
/// runs every node, then `after_nodes` (a replay's comparison), then, when every node
/// succeeded, publishes. `with_layout` sees the store's image layout first (a check
/// copies pinned base images into its scratch store).
pub(crate) fn walk(
    opts: &BuildOptions,
    w: &Walk<'_>,
    with_layout: impl FnOnce(&OciLayout) -> Result<(), Error>,
    after_nodes: impl FnOnce(&mut BuildReport, &[OnceLock<Done>]),
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(BuildReport, Vec<OnceLock<Done>>), Error> {
    let tests = w.publish && any_tests(w.components) && !opts.publish.skip_tests;
    let docker = if w.publish {
        publish::engine_for(
            &opts.publish,
            tests && opts.executor == ExecutorKind::Docker,
        )?
    } else {
        None
    };
    let layout = open_layout(w.store, w.components)?;
    if let Some(l) = &layout {
        with_layout(l)?;
    }
    let executors = Executors::for_graph(opts.executor, w.components, layout.as_ref(), tests)?;
    let work = crate::workdir::WorkBase::choose(opts.work_dir.as_deref());
    let reaper = crate::workdir::Reaper::default();
    let run = Run {
        store: w.store,
        git: w.git,
        components: w.components,
        nodes: w.nodes,
        layout: layout.as_ref(),
        executors: &executors,
        env_name: w.env_name,
        jobs: opts.jobs,
        steps: cascade_exec::Slots::new(opts.jobs),
        keep_going: opts.keep_going,
        remote: w.remote,
        remote_exec: w
            .remote
            .filter(|_| opts.remote.exec)
            .and_then(RemoteCache::executor),
        work: &work,
        reaper: &reaper,
    };
    let (mut report, done) = run_graph(&run, on_event);
    after_nodes(&mut report, &done);
    if w.publish {
        publish_all(
            opts,
            &run,
            w.signer,
            docker.as_deref(),
            &done,
            &mut report,
            on_event,
        )?;
    }
    Ok((report, done))
}

/// One walk of a graph: what it runs on and how.
pub(crate) struct Run<'a> {
    pub store: &'a Store,
    pub git: &'a Git,
    pub components: &'a [Component],
    pub nodes: &'a [Node<'a>],
    pub layout: Option<&'a OciLayout>,
    /// Where Actions run.
    pub executors: &'a Executors,
    pub env_name: &'a str,
    pub jobs: usize,
    /// `jobs` of them: held by a node while its Action runs (here or on the engine).
    pub steps: cascade_exec::Slots,
    pub keep_going: bool,
    pub remote: Option<&'a RemoteCache>,
    /// `--remote-exec`: the engine whose workers run the Actions.
    pub remote_exec: Option<&'a crate::reapi::ReapiCache>,
    /// Where work directories go.
    pub work: &'a crate::workdir::WorkBase,
    /// What removes them once their outputs are in the store.
    pub reaper: &'a crate::workdir::Reaper,
}

/// After every node succeeded: the images are indexed, loaded, tested and pushed.
pub(crate) fn publish_all(
    opts: &BuildOptions,
    run: &Run<'_>,
    signer: Option<&crate::sign::Signer>,
    docker: Option<&cascade_docker::Docker>,
    done: &[OnceLock<Done>],
    report: &mut BuildReport,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(), Error> {
    let Some(l) = run.layout else {
        return Ok(());
    };
    if !report.success() {
        return Ok(());
    }
    let images: Vec<ImageRef> = done
        .iter()
        .filter_map(|d| d.get().and_then(|d| d.image.clone()))
        .collect();
    index_images(l, &images).map_err(Error::Image)?;
    publish_images(opts, run, l, docker, report, on_event)?;
    if report.success() && opts.publish.push {
        for pushed in publish::push(l, &images)? {
            on_event(Event::Pushed(&pushed));
        }
        // Signed once pushed: a signature never names an image the registry lacks.
        if let Some(s) = signer {
            let attested = attested_images(run, done);
            let mut signed = s.sign(&attested)?;
            crate::sign::push_attestations(l, &mut signed)?;
            for signed in signed {
                on_event(Event::Signed(&signed));
                report.signed.push(signed);
            }
        }
    }
    Ok(())
}

/// Each node's image with the provenance statement its attestation carries.
fn attested_images(
    run: &Run<'_>,
    done: &[OnceLock<Done>],
) -> Vec<(ImageRef, crate::provenance::Statement)> {
    let mut out = Vec::new();
    for (i, node) in run.nodes.iter().enumerate() {
        let Some(d) = done[i].get() else { continue };
        let Some(image) = &d.image else { continue };
        let c = node.component;
        let base = match c.recipe.image.as_ref().map(|decl| &decl.base) {
            Some(cascade_manifest::ImageBase::Pinned { name, digest }) => {
                Some(crate::provenance::BaseImage {
                    uri: name.clone(),
                    digest: digest.clone(),
                })
            }
            Some(cascade_manifest::ImageBase::Component(_)) => c
                .image_base
                .and_then(|b| done[b].get())
                .and_then(|b| b.image.as_ref())
                .map(|b| crate::provenance::BaseImage {
                    uri: b.reference.clone(),
                    digest: b.digest.to_string(),
                }),
            Some(cascade_manifest::ImageBase::Scratch) | None => None,
        };
        let lock = lock_node(node, d, BTreeMap::new());
        let statement = crate::provenance::statement(
            run.env_name,
            &c.name,
            &lock,
            &image.reference,
            &image.digest.to_string(),
            c.recipe.env.keys().cloned().collect(),
            base.as_ref(),
        );
        out.push((image.clone(), statement));
    }
    out
}

/// Scheduler threads beyond `--jobs`: they look nodes up while the Actions run.
const LOOKUPS: usize = 2;

/// Runs every node in dependency order on the scheduler: cache lookup or execution,
/// then its image. Returns the report (without lockfile) and what each node made.
pub(crate) fn run_graph(
    run: &Run<'_>,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> (BuildReport, Vec<OnceLock<Done>>) {
    let started = Instant::now();
    let (nodes, components) = (run.nodes, run.components);
    on_event(Event::Scheduled { total: nodes.len() });
    let deps: Vec<Vec<usize>> = components.iter().map(|c| c.deps()).collect();
    let done: Vec<OnceLock<Done>> = (0..nodes.len()).map(|_| OnceLock::new()).collect();
    let reports: Vec<Mutex<Option<NodeReport>>> =
        (0..nodes.len()).map(|_| Mutex::new(None)).collect();

    // 1. Every node, in dependency order, as many at once as the jobs allow: `jobs`
    // Actions at a time (`run.steps`), and LOOKUPS more threads, so that cache hits are
    // found while the Actions run.
    let threads = run.jobs.max(1) + LOOKUPS;
    let outcomes = cascade_exec::schedule(&deps, threads, run.keep_going, |i| {
        let report = node_in_graph(run, i, &done, on_event);
        let ok = report.status.succeeded();
        on_event(Event::Finished(&report));
        *reports[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        ok
    });
    run.reaper.finish();
    // 2. The last batch of action results, failed build or not: what built stays cached.
    // Best effort: a result not recorded only means building that node again later,
    // and the outputs the lockfile names are made durable before it is written anyway.
    let _ = run.store.flush_actions();

    // 3. A report for every node, those that never ran included.
    let mut node_reports = Vec::with_capacity(nodes.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        let r = reports[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        let r = match r {
            Some(r) => r,
            None => {
                let report = nodes[i].report(not_run(components, &outcomes, i, outcome));
                on_event(Event::Finished(&report));
                report
            }
        };
        node_reports.push(r);
    }
    let count = |f: fn(&NodeStatus) -> bool| node_reports.iter().filter(|r| f(&r.status)).count();
    let report = BuildReport {
        environment: run.env_name.to_string(),
        built: count(|s| matches!(s, NodeStatus::Built)),
        cached: count(|s| matches!(s, NodeStatus::Cached)),
        failed: count(|s| matches!(s, NodeStatus::Failed { .. })),
        skipped: count(|s| matches!(s, NodeStatus::Skipped { .. } | NodeStatus::NotStarted)),
        nodes: node_reports,
        lockfile: None,
        duration_ms: started.elapsed().as_millis() as u64,
        replay: None,
        remote_cache: run.remote.map(RemoteCache::report),
        signed: Vec::new(),
        notifications: Vec::new(),
        from_snapshot: false,
    };
    (report, done)
}

/// The status of node `i`, which never ran: skipped for the inputs that did not build,
/// or not started (the build stopped first).
fn not_run(
    components: &[Component],
    outcomes: &[Outcome],
    i: usize,
    outcome: &Outcome,
) -> NodeStatus {
    match outcome {
        Outcome::Skipped => {
            let failed: Vec<&str> = components[i]
                .deps()
                .iter()
                .filter(|&&j| !matches!(outcomes[j], Outcome::Succeeded))
                .map(|&j| components[j].name.as_str())
                .collect();
            NodeStatus::Skipped {
                because: format!("input {} did not build", failed.join(", ")),
            }
        }
        _ => NodeStatus::NotStarted,
    }
}

/// Node `i` of a running graph, its inputs done: cached or built (its image too), its
/// `Done` set for the nodes that take it; the report says how it went.
fn node_in_graph(
    run: &Run<'_>,
    i: usize,
    done: &[OnceLock<Done>],
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> NodeReport {
    let (node, components) = (&run.nodes[i], run.components);
    on_event(Event::Started {
        name: &node.component.name,
    });
    let t0 = Instant::now();
    let inputs: BTreeMap<String, OutputDigest> = node
        .component
        .inputs
        .iter()
        .filter_map(|&j| {
            done[j]
                .get()
                .map(|d| (components[j].name.clone(), d.output))
        })
        .collect();
    let mut warnings = node.source_warnings();
    let image_of = |j: usize| {
        done[j]
            .get()
            .and_then(|d| d.image.as_ref())
            .map(|i| i.digest)
    };
    let base_image = node.component.image_base.and_then(image_of);
    let mut remote_hit = false;
    let mut remote_run = None;
    let result = node
        .runner_given(image_of)
        .ok_or_else(|| {
            let image = node.component.runner_image.map(|j| &components[j].name);
            fail(
                FailureCause::Environment,
                format!(
                    "the image of `{}`, which the steps run in, was not built",
                    image.map_or("?", |n| n.as_str())
                ),
                None,
            )
        })
        .and_then(|runner| {
            let origin = Origin {
                remote_hit: &mut remote_hit,
                remote_run: &mut remote_run,
            };
            run_node(run, node, &inputs, runner, &mut warnings, origin)
        })
        .and_then(|(d, built)| with_image(run.store, run.layout, node, d, base_image, built));
    let (status, key, output, image) = match result {
        Ok((d, built)) => {
            let (k, o, img) = (d.key, d.output, d.image.clone());
            let _ = done[i].set(d);
            let status = if built {
                NodeStatus::Built
            } else {
                NodeStatus::Cached
            };
            (status, Some(k), Some(o), img)
        }
        Err(f) => (f.status, f.key, None, None),
    };
    NodeReport {
        key,
        output,
        image,
        remote: remote_hit,
        remote_exec: remote_run,
        duration_ms: t0.elapsed().as_millis() as u64,
        warnings,
        ..node.report(status)
    }
}

/// Resolves every node's tools and recipe digest up front, so a missing tool is
/// reported before anything runs: at its name in the recipe when `db` holds the
/// recipes (a replay's come from the store, so its problem has no location).
pub(crate) fn prepare<'a>(
    components: &'a [Component],
    pinned: &'a [Pinned],
    tools: &Tools,
    db: Option<&cascade_manifest::SourceDb>,
) -> Result<Vec<Node<'a>>, Error> {
    let mut problems: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    let mut nodes = Vec::new();
    for (c, p) in components.iter().zip(pinned) {
        let (resolved, runner) = match &c.recipe.runner {
            RunnerDecl::Container {
                image: RunnerImage::Pinned { digest, .. },
            } => (
                Vec::new(),
                Some(RunnerIdentity::Container {
                    image: digest.clone(),
                }),
            ),
            // Known once that component's image is built.
            RunnerDecl::Container {
                image: RunnerImage::Component(_),
            } => (Vec::new(), None),
            RunnerDecl::Host {
                tools: declared,
                sets,
            } => {
                // Steps run under `sh`, so it is always part of the runner.
                let mut names: Vec<&str> = declared.iter().map(String::as_str).collect();
                if !names.contains(&"sh") {
                    names.push("sh");
                }
                names.sort_unstable();
                names.dedup();
                let mut resolved = Vec::new();
                for n in &names {
                    match tools.resolve(n) {
                        Ok(t) => resolved.push(t),
                        Err(e) => problems.push(tool_problem(c, n, e, db)),
                    }
                }
                // A set is those of its members this machine has; each is keyed by its
                // own digest, like a declared tool.
                let members: std::collections::BTreeSet<&str> = sets
                    .iter()
                    .filter_map(|s| cascade_manifest::tool_set(s))
                    .flat_map(|m| m.iter().copied())
                    .filter(|m| !names.contains(m))
                    .collect();
                for m in members {
                    if let Ok(t) = tools.resolve(m) {
                        resolved.push(t);
                    }
                }
                resolved.sort_by(|a, b| a.name.cmp(&b.name));
                let runner = RunnerIdentity::Host {
                    tools: resolved
                        .iter()
                        .map(|t| (t.name.clone(), t.digest))
                        .collect(),
                };
                (resolved, Some(runner))
            }
        };
        let recipe = c.recipe.digest();
        nodes.push(Node {
            component: c,
            pinned: p,
            tools: resolved,
            runner,
            recipe,
            reference: None,
        });
    }
    if problems.is_empty() {
        Ok(nodes)
    } else {
        Err(Error::Environment(Problems::new("missing tool", problems)))
    }
}

/// A declared tool this machine lacks, underlined in the recipe when it is a file.
fn tool_problem(
    c: &Component,
    tool: &str,
    e: cascade_exec::ToolError,
    db: Option<&cascade_manifest::SourceDb>,
) -> Box<dyn Diagnostic + Send + Sync> {
    match (e, db, c.tool_spans.get(tool)) {
        (cascade_exec::ToolError::NotFound { .. }, Some(db), Some(span)) => Box::new(MissingTool {
            tool: tool.to_string(),
            component: c.name.clone(),
            src: db.named_source(span.file),
            span: (span.offset, span.len).into(),
        }),
        (e, _, _) => Box::new(ToolProblem {
            component: c.name.clone(),
            source: e,
        }),
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("tool `{tool}` of recipe `{component}` is not on PATH")]
#[diagnostic(
    code(cascade::tool::not_found),
    help(
        "`runner.host.tools` declares the tools a recipe's steps run; each is looked up on the PATH cascade runs with: install `{tool}` there, or remove it from the list"
    )
)]
struct MissingTool {
    tool: String,
    component: String,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("not found on PATH")]
    span: miette::SourceSpan,
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("recipe `{component}` needs a tool this machine lacks")]
#[diagnostic(code(cascade::tool))]
struct ToolProblem {
    component: String,
    #[source]
    #[diagnostic_source]
    source: cascade_exec::ToolError,
}

pub(crate) struct Failure {
    pub status: NodeStatus,
    pub key: Option<NodeKey>,
}

/// Adds the node's image, when its recipe declares one, to what it built or found.
fn with_image(
    store: &Store,
    layout: Option<&OciLayout>,
    node: &Node<'_>,
    mut done: Done,
    base: Option<OciDigest>,
    built: bool,
) -> Result<(Done, bool), Failure> {
    let Some(decl) = &node.component.recipe.image else {
        return Ok((done, built));
    };
    let k = Some(done.key);
    let layout =
        layout.ok_or_else(|| fail(FailureCause::Environment, "no image layout was opened", k))?;
    match build_image(store, layout, node, decl, &done.output, base.as_ref()) {
        Ok(image) => {
            done.image = Some(image);
            Ok((done, built))
        }
        Err(ImageFailure::Output(e)) => Err(fail(FailureCause::Output, format!("image: {e}"), k)),
        Err(ImageFailure::Environment(e)) => {
            Err(fail(FailureCause::Environment, format!("image: {e}"), k))
        }
    }
}

pub(crate) fn fail(
    cause: FailureCause,
    error: impl std::fmt::Display,
    key: Option<NodeKey>,
) -> Failure {
    Failure {
        status: NodeStatus::Failed {
            cause,
            error: error.to_string(),
            log_tail: Vec::new(),
            log_path: None,
        },
        key,
    }
}

/// Where a node's result came from, beyond the local store.
struct Origin<'a> {
    /// Found in the remote cache.
    remote_hit: &'a mut bool,
    /// Executed on a REAPI engine's worker.
    remote_run: &'a mut Option<crate::reapi::RemoteRun>,
}

/// Keys one node and either finds it in the action cache or builds it. Returns
/// whether it was built.
fn run_node(
    run: &Run<'_>,
    node: &Node<'_>,
    inputs: &BTreeMap<String, OutputDigest>,
    runner: RunnerIdentity,
    warnings: &mut Vec<String>,
    origin: Origin<'_>,
) -> Result<(Done, bool), Failure> {
    let Origin {
        remote_hit,
        remote_run,
    } = origin;
    let (store, remote) = (run.store, run.remote);
    let c = node.component;
    let ingredients = node.ingredients(inputs, &runner);
    let key = store
        .put_key_manifest(&ingredients.encode())
        .map_err(|e| fail(FailureCause::Environment, e, None))?;
    let done = |output, artifacts, seen| Done {
        inputs: inputs.clone(),
        runner: runner.clone(),
        output,
        key,
        artifacts,
        image: None,
        seen: std::sync::Mutex::new(seen),
    };
    // What a hit's lookup reads and checks, for the snapshot (see `Done::take_seen`).
    let look = || {
        let mut seen = Vec::new();
        let mut note = |p: &Path, m: &std::fs::Metadata| {
            seen.push(crate::snapshot::seen_entry(p, m));
        };
        let found = store.get_action_seen(&key, &mut note).map(|r| {
            r.map(|r| {
                let artifacts = store.check_output_seen(&r.output, &c.recipe.outputs, &mut note);
                (r, artifacts)
            })
        });
        (found, seen)
    };

    // Cache lookup: a hit needs the action result and its whole output tree.
    match look() {
        (Ok(Some((r, artifacts))), seen) => match artifacts {
            Ok(Some(artifacts)) => return Ok((done(r.output, artifacts, seen), false)),
            Ok(None) => warnings.push("cached output incomplete in the store, rebuilding".into()),
            Err(e) => warnings.push(format!("{e}")),
        },
        (Ok(None), _) => {}
        (Err(e @ StoreError::Corrupt { .. }), _) => warnings.push(e.to_string()),
        (Err(e), _) => return Err(fail(FailureCause::Environment, e, Some(key))),
    }
    // One builder per key and store: wait for whoever builds (or downloads) it now,
    // then look again.
    let lock = store
        .lock_key(&key)
        .map_err(|e| fail(FailureCause::Environment, e, Some(key)))?;
    if let (Ok(Some((r, Ok(Some(artifacts))))), seen) = look() {
        return Ok((done(r.output, artifacts, seen), false));
    }
    // The remote cache, verified entry by entry into the local store; under the key's
    // lock, so builds sharing a store download each result once.
    if let Some(r) = remote.and_then(|rc| rc.fetch(store, &key, &c.recipe.outputs, &c.name)) {
        match store.check_output(&r.output, &c.recipe.outputs) {
            Ok(Some(artifacts)) => {
                *remote_hit = true;
                return Ok((done(r.output, artifacts, Vec::new()), false));
            }
            _ => warnings.push("the remote cache's result is incomplete; building".into()),
        }
    }

    // Execute in a fresh directory, on a tmpfs when there is one; a step that fails
    // there while it is nearly full runs again on the store's disk.
    // One of the `--jobs` Actions at a time, from here to its outputs in the store.
    let _slot = run.steps.take();
    let mut attempt = |on_disk: bool| {
        let tmp = match on_disk {
            true => store.temp_dir(),
            false => run.work.temp_dir(store),
        }
        .map_err(|e| fail(FailureCause::Environment, e, Some(key)))?;
        let result =
            crate::execute::execute(run, node, inputs, &runner, key, tmp.path(), remote_run);
        match result {
            // Off this node's path: its dependents may start meanwhile.
            Ok(_) => run.reaper.remove(tmp),
            // Now: on a nearly full tmpfs, the attempt on disk needs the room.
            Err(_) => crate::workdir::remove_now(tmp),
        }
        result
    };
    let (outputs, result) = match attempt(run.work.on_disk()) {
        Err(_) if run.work.nearly_full() => {
            warnings.push(
                "the work directory's tmpfs was nearly full: the steps ran again on the store's disk"
                    .into(),
            );
            attempt(true)
        }
        r => r,
    }?;
    // Durable with the other nodes finished meanwhile; the lock goes with it.
    store
        .put_action_batched(&key, &result, Some(lock))
        .map_err(|e| fail(FailureCause::Environment, e, Some(key)))?;
    Ok((done(outputs.digest, outputs.artifacts, Vec::new()), true))
}

/// Loads the images that must be in Docker (all with `--load`, else those with tests)
/// and runs the smoke tests, in build order; results go into the node reports.
fn publish_images(
    opts: &BuildOptions,
    run: &Run<'_>,
    layout: &OciLayout,
    docker: Option<&cascade_docker::Docker>,
    report: &mut BuildReport,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(), Error> {
    let (p, store) = (&opts.publish, run.store);
    let smoke = crate::execute::smoke_tests_on(Some(run.executors), docker, store, layout);
    for (node, r) in run.nodes.iter().zip(report.nodes.iter_mut()) {
        let Some(image) = r.image.clone() else {
            continue;
        };
        let tests = &node.component.recipe.tests;
        let in_docker = run.executors.kind == ExecutorKind::Docker;
        let wanted = p.load || (!tests.is_empty() && !p.skip_tests && in_docker);
        if let (true, Some(d)) = (wanted, docker) {
            let id = publish::load(d, store, layout, &image).map_err(|message| Error::Load {
                reference: image.reference.clone(),
                message,
            })?;
            on_event(Event::ImageLoaded {
                reference: &image.reference,
                id: &id,
            });
        }
        let facts = publish::Facts {
            component: &r.name,
            commit: &r.commit,
            version: &r.version,
        };
        r.tests = publish::run_tests(&smoke, &image, tests, &facts, p.skip_tests);
        for test in &r.tests {
            on_event(Event::Tested {
                node: &r.name,
                test,
            });
        }
    }
    Ok(())
}

/// One node as the lockfile records it (and its attestation attests it).
pub(crate) fn lock_node(
    node: &Node<'_>,
    d: &Done,
    tests: BTreeMap<String, cascade_lock::TestResult>,
) -> LockNode {
    let mut lock = lock_view(node, d, Vec::new()).to_node();
    lock.tests = tests;
    lock
}

/// [`lock_node`], borrowed from the node and what it made.
fn lock_view<'a>(
    node: &'a Node<'_>,
    d: &'a Done,
    tests: Vec<(&'a str, cascade_lock::TestResult)>,
) -> NodeView<'a> {
    let c = node.component;
    let s = &node.pinned.source;
    NodeView {
        source: SourceView {
            repo: &c.source.repo,
            r#ref: match &c.source.rev {
                Rev::Ref(r) => Some(r),
                Rev::Version(_) => None,
            },
            commit: &s.commit,
            tree: &s.tree,
            dir: c.source.dir.as_deref(),
            version: s.version.to_string().into(),
        },
        recipe: node.recipe,
        runner: d.runner.digest(),
        inputs: &d.inputs,
        key: d.key,
        output: d.output,
        artifacts: &d.artifacts,
        image: d.image.as_ref().map(|i| ImageView {
            reference: &i.reference,
            digest: i.digest.to_string().into(),
            spec: c.recipe.image.as_ref().map(|decl| decl.digest()),
        }),
        tests,
    }
}

/// Every finished node of the build, by name, as its lockfile records it.
fn lock_views<'a>(
    nodes: &'a [Node<'_>],
    done: &'a [OnceLock<Done>],
    report: &'a BuildReport,
) -> Vec<(&'a str, NodeView<'a>)> {
    let mut views: Vec<(&str, NodeView)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            let d = done[i].get()?;
            // By name; a name given twice keeps its last result, as a map would.
            let tests: BTreeMap<&str, cascade_lock::TestResult> = report.nodes[i]
                .tests
                .iter()
                .map(|t| (t.name.as_str(), t.result()))
                .collect();
            let view = lock_view(node, d, tests.into_iter().collect());
            Some((node.component.name.as_str(), view))
        })
        .collect();
    views.sort_by(|a, b| a.0.cmp(b.0));
    views
}

/// Every node of one build is keyed in one format (a replay keeps its lockfile's).
fn key_format(nodes: &[Node<'_>]) -> u64 {
    nodes
        .first()
        .map_or(cascade_core::KEY_VERSION, |n| n.pinned.key_format)
}

/// The closure of this build as a lockfile value.
pub(crate) fn lockfile(
    environment: &str,
    graph: Digest,
    nodes: &[Node<'_>],
    done: &[OnceLock<Done>],
    report: &BuildReport,
) -> Lockfile {
    Lockfile {
        key_format: key_format(nodes),
        environment: environment.to_string(),
        graph,
        nodes: lock_views(nodes, done, report)
            .into_iter()
            .map(|(name, view)| (name.to_string(), view.to_node()))
            .collect(),
    }
}

/// [`lockfile`] as text, written from the build's own values (the same bytes as
/// `cascade_lock::write` of that value, without copying every node first).
fn lockfile_text(
    environment: &str,
    graph: Digest,
    nodes: &[Node<'_>],
    done: &[OnceLock<Done>],
    report: &BuildReport,
) -> String {
    let header = cascade_lock::Header {
        key_format: key_format(nodes),
        environment,
        graph,
    };
    cascade_lock::write_nodes(&header, lock_views(nodes, done, report))
}

/// The digest of the manifest files this build used: the environment, the
/// compatibility matrix and the recipes of the components in the graph.
fn graph_identity(project: &Project) -> Digest {
    let db = &project.db;
    let mut files = vec![project.files.environment];
    files.extend(project.files.compatibility);
    for c in &project.graph.components {
        files.push(c.recipe_file);
    }
    let mut files: Vec<(&str, &str)> = files.iter().map(|&f| (db.path(f), db.text(f))).collect();
    files.sort();
    let mut e = Encoder::new("cascade/graph", 1);
    e.list(1, files.into_iter(), |e, (path, text)| {
        e.str(0, path).str(1, text);
    });
    Digest::of(e.as_bytes())
}

/// Writes `lockfiles/<env>-<stamp>.yaml` atomically. A same-named file with other
/// bytes (two builds in one second) gets a numbered sibling instead of being replaced;
/// the same bytes as the newest lockfile reuse it.
pub(crate) fn write_lockfile(
    root: &Path,
    env: &str,
    stamp: &str,
    lock: &Lockfile,
) -> Result<PathBuf, Error> {
    write_lockfile_text(root, env, stamp, &cascade_lock::write(lock))
}

/// [`write_lockfile`] of a lockfile already rendered (so the caller can drop the value
/// first: at 10,000 nodes each is megabytes).
pub(crate) fn write_lockfile_text(
    root: &Path,
    env: &str,
    stamp: &str,
    text: &str,
) -> Result<PathBuf, Error> {
    let dir = crate::Layout::new(root).lockfiles();
    // An identical file is reused only when it is the newest: a rollback within the
    // same second must still become the newest lockfile. A no-op build gives the
    // newest lockfile's bytes again: it is the lockfile of this build too.
    let newest = crate::newest_lockfile(root, env);
    if let Some(newest) = &newest {
        if same_bytes(newest, text.as_bytes()) {
            return Ok(newest.clone());
        }
    }
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("{env}-{stamp}.yaml")
        } else {
            format!("{env}-{stamp}-{n}.yaml")
        };
        let path = dir.join(&name);
        match path.symlink_metadata() {
            Ok(_) if newest.as_ref() == Some(&path) && same_bytes(&path, text.as_bytes()) => {
                return Ok(path)
            }
            Ok(_) => n += 1,
            Err(_) => {
                // Another build may take this name between the read and the write
                // (8 builds in one second): then try the next name.
                let created =
                    Store::write_new_atomic(&path, text.as_bytes()).map_err(|source| {
                        Error::WriteLock {
                            path: path.clone(),
                            source,
                        }
                    })?;
                if created {
                    return Ok(path);
                }
                n += 1;
            }
        }
    }
}

/// Whether the file at `path` holds exactly `bytes`: its size first, then its content
/// in chunks (a lockfile of a big graph is megabytes; never read whole).
fn same_bytes(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.metadata().map_or(true, |m| m.len() != bytes.len() as u64) {
        return false;
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return at == bytes.len(),
            Ok(n) if at + n <= bytes.len() && buf[..n] == bytes[at..at + n] => at += n,
            Ok(_) => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}
