//! `cascade plan` and `cascade why`: what a build would do, and why, without running a
//! step.
//!
//! Every node is keyed exactly as `build` keys it, in build order, and looked up in the
//! action cache. A node whose inputs' outputs are not known yet (an upstream must be
//! rebuilt first) is `pending`: its key cannot be known before that upstream has run.
//!
//! The reasons compare each node with a *baseline*: its entry in the newest lockfile
//! of the environment (or `--against FILE`). The lockfile's `key:` is the content
//! address of the node's key manifest in the store (the canonical encoding of every
//! ingredient, `KeyIngredients`), and its `recipe:` that of the normalized recipe, so
//! the old ingredients are decoded and compared field by field. When the store no
//! longer has them, the lockfile's own fields still give coarser reasons.
//!
//! A plan writes nothing but what reading the store may repair (a corrupt entry is
//! discarded) and git mirrors of remote repositories; it takes no lock.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use cascade_core::{
    BlobDigest, Digest, KeyIngredients, NodeKey, OutputDigest, RunnerIdentity, SourceKey,
};
use cascade_exec::Tools;
use cascade_git::Git;
use cascade_image::{OciDigest, OciLayout};
use cascade_lock::{LockNode, LockSource, Lockfile};
use cascade_manifest::{Change, Recipe, Rev};
use cascade_store::Store;

use crate::build::{prepare, Node};
use crate::image::cached_image;
use crate::lockfiles::{newest_lockfile, read_lockfile};
use crate::remote::{RemoteCache, RemoteMode, RemoteOptions};
use crate::short::{short_digest as short, short_sha};
use crate::{pin_all, Error};

pub struct PlanOptions {
    pub project: PathBuf,
    pub env: String,
    pub store: PathBuf,
    /// Where tools are looked up (the caller's PATH), as for `build`.
    pub tools: Tools,
    /// Compare with this lockfile instead of the environment's newest.
    pub against: Option<PathBuf>,
    /// `--remote`: a node the local store lacks is looked up there too (its result's
    /// metadata only: nothing is downloaded).
    pub remote: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub environment: String,
    /// The lockfile the reasons compare with (as given, or relative to the project).
    pub baseline: Option<PathBuf>,
    /// In build order.
    pub nodes: Vec<PlanNode>,
    pub cached: usize,
    /// In the remote cache: a build downloads them and runs no step.
    pub remote: usize,
    pub rebuild: usize,
    pub pending: usize,
    /// Problems that did not stop the plan (an unreadable newest lockfile, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// The key is in the action cache with its whole output: nothing to run.
    Cached,
    /// The key is in the remote cache: downloaded, nothing to run.
    Remote,
    /// The key is known and not in the cache: its steps will run.
    Rebuild,
    /// An input must be rebuilt first, so the key is not known yet.
    Pending,
}

impl fmt::Display for PlanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlanState::Cached => "cached",
            PlanState::Remote => "remote",
            PlanState::Rebuild => "rebuild",
            PlanState::Pending => "pending",
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanNode {
    pub name: String,
    pub state: PlanState,
    /// The component's inputs (upstream components), sorted.
    pub inputs: Vec<String>,
    /// The ref as written (branch mode), absent in version mode.
    #[serde(rename = "ref")]
    pub r#ref: Option<String>,
    pub commit: String,
    pub version: String,
    /// Known unless `pending`.
    pub key: Option<NodeKey>,
    /// The node's key in the baseline lockfile.
    pub baseline_key: Option<NodeKey>,
    /// The output a `cached` node reuses.
    pub output: Option<OutputDigest>,
    /// The manifest digest of a `cached` node's image, when it declares one and the
    /// store has it (what nodes that run their steps in it are keyed by).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<OciDigest>,
    /// For `pending`: the inputs (and the image the steps run in) that must be rebuilt
    /// first.
    pub waits_for: Vec<String>,
    /// For `pending`: true when nothing but those inputs differs from the baseline and
    /// the baseline's result is in the store, so an upstream rebuilt to identical
    /// bytes makes this node a cache hit (early cutoff).
    pub early_cutoff: bool,
    /// Everything that differs from the baseline (for a `cached` node too: it says what
    /// a deploy of this plan would change).
    pub reasons: Vec<Reason>,
}

/// One reason, as structured fields (`kind` and its details) and as the sentence the
/// text output prints (`message`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reason {
    #[serde(flatten)]
    pub kind: ReasonKind,
    pub message: String,
}

impl Reason {
    fn new(kind: ReasonKind) -> Reason {
        Reason {
            message: kind.to_string(),
            kind,
        }
    }

    /// Whether this reason is about the node itself rather than one of its inputs (or
    /// the component whose image its steps run in).
    pub fn is_own(&self) -> bool {
        !matches!(
            self.kind,
            ReasonKind::Input { .. }
                | ReasonKind::RunnerImage {
                    component: Some(_),
                    ..
                }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReasonKind {
    /// The pinned source differs: repository, ref, commit, dir or version.
    Source {
        component: String,
        from: Box<SourcePoint>,
        to: Box<SourcePoint>,
        /// Whether the exported content differs. A commit that moved but left it
        /// alone (another sub-directory, a filtered-out file) changes no key of format
        /// 2 unless the recipe stamps the commit.
        tree_changed: bool,
        /// Commits reachable from the new commit and not the old, and the reverse,
        /// when both are in the repository.
        ahead: Option<usize>,
        behind: Option<usize>,
    },
    /// A field of the normalized recipe (`steps[1].run`, `env.RUST_LOG`, `outputs`).
    /// `field` is absent when the old recipe is no longer in the store: then only the
    /// digests are known.
    Recipe {
        field: Option<String>,
        change: Change,
        from: Digest,
        to: Digest,
    },
    /// An input's output digest. `to` is absent while that input is pending.
    Input {
        input: String,
        change: InputChange,
        from: Option<OutputDigest>,
        to: Option<OutputDigest>,
    },
    /// A declared tool of the host runner (its content digest).
    Tool {
        tool: String,
        change: Change,
        from: Option<BlobDigest>,
        to: Option<BlobDigest>,
    },
    /// The runner's identity, when the old key manifest is gone (no per-tool detail).
    Runner { from: Digest, to: Digest },
    /// The image the steps run in (a container runner): its manifest digest, `None` on
    /// the host side of a move between host and container. `to` is absent while
    /// `component`, which makes the image, must be rebuilt first (`pending`).
    RunnerImage {
        from: Option<String>,
        to: Option<String>,
        /// The component of the graph whose image it is.
        component: Option<String>,
        pending: bool,
    },
    /// No earlier key for this node: not in the baseline.
    NeverBuilt,
    /// Same key as the baseline, but its result is not in the store (cleared or
    /// collected).
    NotInStore,
    /// Every ingredient is the same as the baseline's but the key is not: the key
    /// manifest was written by another version of cascade.
    KeyFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputChange {
    Added,
    Removed,
    Changed,
    /// The input must be rebuilt first; its output is not known yet.
    Pending,
}

/// A pinned source, as the reasons show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourcePoint {
    pub repo: String,
    #[serde(rename = "ref")]
    pub r#ref: Option<String>,
    pub commit: String,
    pub dir: Option<String>,
    pub version: String,
    /// The exported tree's git id: after the source filter when it is known (from the
    /// key manifest, for a baseline), else the `dir:` sub-tree as the lockfile has it.
    pub tree: String,
}

impl SourcePoint {
    /// The baseline's source; `content`, the filtered tree, when its key manifest
    /// says.
    fn of(s: &LockSource, content: Option<String>) -> SourcePoint {
        SourcePoint {
            repo: s.repo.clone(),
            r#ref: s.r#ref.clone(),
            commit: s.commit.clone(),
            dir: s.dir.clone(),
            version: s.version.clone(),
            tree: content.unwrap_or_else(|| s.tree.clone()),
        }
    }

    /// `develop a1b2c3d` in branch mode, `1.2.0 a1b2c3d` in version mode.
    fn at(&self) -> String {
        format!(
            "{} {}",
            self.r#ref.as_deref().unwrap_or(&self.version),
            short_sha(&self.commit)
        )
    }
}

fn opt_short<T: fmt::Display>(d: &Option<T>) -> String {
    d.as_ref().map_or_else(|| "none".to_string(), short)
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReasonKind::Source {
                component,
                from,
                to,
                tree_changed,
                ahead,
                behind,
            } => {
                write!(f, "source {component}: ")?;
                f.write_str(&source_parts(from, to, *tree_changed, *ahead, *behind).join(", "))
            }
            ReasonKind::Recipe {
                field: Some(field),
                change,
                ..
            } => write!(f, "recipe: {field} {change}"),
            ReasonKind::Recipe {
                field: None,
                from,
                to,
                ..
            } => write!(
                f,
                "recipe: {} → {} (the old recipe is not in the store)",
                short(from),
                short(to)
            ),
            ReasonKind::Input {
                input,
                change,
                from,
                to,
            } => match change {
                InputChange::Added => write!(f, "input {input} added"),
                InputChange::Removed => write!(f, "input {input} removed"),
                InputChange::Changed => write!(
                    f,
                    "input {input}: output {} → {}",
                    opt_short(from),
                    opt_short(to)
                ),
                InputChange::Pending => {
                    write!(f, "input {input}: pending (it must be rebuilt first)")
                }
            },
            ReasonKind::Tool {
                tool,
                change,
                from,
                to,
            } => match change {
                Change::Changed => {
                    write!(f, "tool {tool}: {} → {}", opt_short(from), opt_short(to))
                }
                c => write!(f, "tool {tool} {c}"),
            },
            ReasonKind::Runner { from, to } => {
                write!(f, "runner: {} → {}", short(from), short(to))
            }
            ReasonKind::RunnerImage {
                pending: true,
                component,
                ..
            } => write!(
                f,
                "runner: image pending ({} must be rebuilt first)",
                component.as_deref().unwrap_or("its image")
            ),
            ReasonKind::RunnerImage { from, to, .. } => match (from, to) {
                (Some(a), Some(b)) => write!(f, "runner: image {} → {}", short(a), short(b)),
                (None, Some(b)) => write!(f, "runner: host → image {}", short(b)),
                (Some(a), None) => write!(f, "runner: image {} → host", short(a)),
                (None, None) => f.write_str("runner: host → host"),
            },
            ReasonKind::NeverBuilt => f.write_str("never built"),
            ReasonKind::NotInStore => f.write_str(
                "not in the store (same key as the baseline: the store was cleared or collected)",
            ),
            ReasonKind::KeyFormat => f.write_str(
                "key format changed (the baseline was keyed by another version of cascade)",
            ),
        }
    }
}

/// What differs between two pinned sources, as the parts of a `Source` reason's
/// sentence: the tree, the repository, the dir, the commit (with how far it moved) and
/// the version.
fn source_parts(
    from: &SourcePoint,
    to: &SourcePoint,
    tree_changed: bool,
    ahead: Option<usize>,
    behind: Option<usize>,
) -> Vec<String> {
    let mut parts = Vec::new();
    if tree_changed && from.tree != to.tree {
        parts.push(format!(
            "tree {} → {}",
            short_sha(&from.tree),
            short_sha(&to.tree)
        ));
    }
    if from.repo != to.repo {
        parts.push(format!("repo {} → {}", from.repo, to.repo));
    }
    if from.dir != to.dir {
        let d = |d: &Option<String>| d.clone().unwrap_or_else(|| "(root)".into());
        parts.push(format!("dir {} → {}", d(&from.dir), d(&to.dir)));
    }
    if from.commit != to.commit || from.r#ref != to.r#ref {
        let mut s = if from.r#ref.is_some() && from.r#ref == to.r#ref {
            // Same branch: name it once.
            format!(
                "{} {} → {}",
                from.r#ref.as_deref().unwrap_or_default(),
                short_sha(&from.commit),
                short_sha(&to.commit)
            )
        } else {
            format!("{} → {}", from.at(), to.at())
        };
        if let (Some(a), Some(b)) = (ahead, behind) {
            s.push_str(&match (a, b) {
                (0, 0) => String::new(),
                (a, 0) => format!(" ({a} commit{})", plural(a)),
                (0, b) => format!(" ({b} commit{} back)", plural(b)),
                (a, b) => format!(" ({a} ahead, {b} behind)"),
            });
        }
        parts.push(s);
    }
    // A new commit brings its own version; a version alone changes when a tag lands on
    // the same commit.
    if from.version != to.version && from.commit == to.commit {
        let same = if from.commit == to.commit {
            format!(" (same commit {})", short_sha(&to.commit))
        } else {
            String::new()
        };
        parts.push(format!("version {} → {}{same}", from.version, to.version));
    }
    if !tree_changed && from.commit != to.commit {
        parts.push("commit moved, tree unchanged".into());
    }
    parts
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

pub fn plan(opts: &PlanOptions) -> Result<Plan, Error> {
    // Nothing changed since the last build, which recorded what it read: all cached.
    if let Some(plan) = crate::snapshot::plan(opts) {
        return Ok(plan);
    }
    std::thread::scope(|s| {
        // The baseline lockfile is parsed while the sources are pinned.
        let base = s.spawn(|| baseline(opts));
        let project = crate::load::load_cached(&opts.project, &opts.env, &opts.store, false)
            .map_err(|e| crate::pin::with_source_problems(e, &opts.store))?;
        // Read-only: a plan before the first build creates no store.
        let store = Store::for_reading(&opts.store);
        // Reads the epochs builds found, writes none.
        let git = Git::reading(store.git_dir());
        let pinned = pin_all(&project, &git)?;
        let nodes = prepare(
            &project.graph.components,
            &pinned,
            &opts.tools,
            Some(&project.db),
        )?;
        let base = base
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        walk(opts, &project, &store, &git, &nodes, base)
    })
}

/// The lockfile the reasons compare with.
struct Baseline {
    /// As given, or relative to the project.
    path: Option<PathBuf>,
    lock: Option<Lockfile>,
    warnings: Vec<String>,
}

fn walk(
    opts: &PlanOptions,
    project: &crate::Project,
    store: &Store,
    git: &Git,
    nodes: &[Node<'_>],
    base: Baseline,
) -> Result<Plan, Error> {
    let Baseline {
        path: baseline,
        lock,
        mut warnings,
    } = base;
    for n in nodes {
        for p in &n.pinned.source.unmatched {
            let w = crate::build::unmatched_pattern(p);
            warnings.push(format!("{}: {w}", n.component.name));
        }
    }

    // The same walk as a build, on all cores: a node is planned once its inputs are
    // (looking up a cached output re-hashes its tree, which is most of the work).
    let graph = &project.graph;
    let deps: Vec<Vec<usize>> = graph.components.iter().map(|c| c.deps()).collect();
    let planned: Vec<OnceLock<PlanNode>> = (0..nodes.len()).map(|_| OnceLock::new()).collect();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Read-only: a plan creates no image layout.
    let layout = store
        .oci_dir()
        .join("oci-layout")
        .exists()
        .then(|| OciLayout::open_or_create(store.oci_dir()).ok())
        .flatten();
    let remote = RemoteCache::new(&RemoteOptions {
        url: opts.remote.clone(),
        mode: RemoteMode::Read,
        exec: false,
    })?;
    let ctx = Ctx {
        store,
        git,
        lock: lock.as_ref(),
        layout: layout.as_ref(),
        remote: remote.as_ref(),
    };
    cascade_exec::schedule(&deps, jobs, true, |i| {
        let node = plan_node(&ctx, &nodes[i], &planned, graph);
        let _ = planned[i].set(node);
        true
    });
    let out: Vec<PlanNode> = planned
        .into_iter()
        // Every closure returns true and keep_going is set, so every node ran.
        .map(|p| p.into_inner().expect("the scheduler plans every node"))
        .collect();
    let count = |s: PlanState| out.iter().filter(|n| n.state == s).count();
    Ok(Plan {
        environment: opts.env.clone(),
        baseline,
        cached: count(PlanState::Cached),
        remote: count(PlanState::Remote),
        rebuild: count(PlanState::Rebuild),
        pending: count(PlanState::Pending),
        nodes: out,
        warnings,
    })
}

struct Ctx<'a> {
    store: &'a Store,
    git: &'a Git,
    lock: Option<&'a Lockfile>,
    layout: Option<&'a OciLayout>,
    remote: Option<&'a RemoteCache>,
}

fn plan_node(
    ctx: &Ctx<'_>,
    node: &Node<'_>,
    planned: &[OnceLock<PlanNode>],
    graph: &cascade_manifest::Graph,
) -> PlanNode {
    let c = node.component;
    let (known, mut waits_for) = known_inputs(&c.inputs, planned, graph);
    // A container of a component's image: keyed by that image once it is known.
    let image_of = |j: usize| planned[j].get().and_then(|p| p.image);
    let runner = node.runner_given(image_of);
    let runner_component = c.runner_image.map(|j| graph.components[j].name.as_str());
    let inputs_pending = waits_for.clone();
    if let Some(r) =
        runner_component.filter(|r| runner.is_none() && !waits_for.iter().any(|w| w == r))
    {
        waits_for.push(r.to_string());
    }
    waits_for.sort();
    let base = ctx.lock.and_then(|l| l.nodes.get(&c.name));
    let key = match &runner {
        Some(r) if waits_for.is_empty() => Some(node.ingredients(&known, r).key()),
        _ => None,
    };
    // Unchanged since the baseline: nothing to compare (the common case, kept cheap),
    // but a commit that moved without changing the key is worth a line.
    let mut reasons = match base {
        Some(b) if key != Some(b.key) => changes(
            node,
            b,
            &known,
            &inputs_pending,
            runner.as_ref(),
            runner_component,
            ctx,
        ),
        Some(b)
            if b.source.commit != node.pinned.source.commit
                || b.source.version != node.pinned.source.version.to_string() =>
        {
            source_change(node, b, ctx).into_iter().collect()
        }
        _ => Vec::new(),
    };
    let (state, output, early_cutoff) = state_of(ctx, &c.recipe.outputs, key, base, &mut reasons);
    let mut inputs: Vec<String> = c
        .inputs
        .iter()
        .map(|&j| graph.components[j].name.clone())
        .collect();
    inputs.sort();
    // The image of a cached node, as the image cache has it (what a node running its
    // steps in it is keyed by).
    let base_image = c.image_base.and_then(image_of);
    let image = match (&c.recipe.image, output, ctx.layout) {
        (Some(decl), Some(o), Some(layout)) => {
            cached_image(ctx.store, layout, node, decl, &o, base_image.as_ref())
        }
        _ => None,
    };
    PlanNode {
        name: c.name.clone(),
        state,
        inputs,
        r#ref: match &c.source.rev {
            Rev::Ref(r) => Some(r.clone()),
            Rev::Version(_) => None,
        },
        commit: node.pinned.source.commit.clone(),
        version: node.pinned.source.version.to_string(),
        key,
        baseline_key: base.map(|b| b.key),
        output,
        image,
        waits_for,
        early_cutoff,
        reasons,
    }
}

/// The output digests of the inputs planned `cached` or `remote`, and the names of the
/// others, which must be rebuilt first.
fn known_inputs(
    inputs: &[usize],
    planned: &[OnceLock<PlanNode>],
    graph: &cascade_manifest::Graph,
) -> (BTreeMap<String, OutputDigest>, Vec<String>) {
    let mut known = BTreeMap::new();
    let mut waits_for = Vec::new();
    for &j in inputs {
        let name = &graph.components[j].name;
        match planned[j].get().map(|p| (p.state, p.output)) {
            Some((PlanState::Cached | PlanState::Remote, Some(o))) => {
                known.insert(name.clone(), o);
            }
            _ => waits_for.push(name.clone()),
        }
    }
    (known, waits_for)
}

/// The node's state, its output when it is cached, and whether it may be a cache hit
/// after all (early cutoff): with a key, cached, remote or rebuild (with why, when
/// nothing else differs); without one, pending.
fn state_of(
    ctx: &Ctx<'_>,
    outputs: &[String],
    key: Option<NodeKey>,
    base: Option<&LockNode>,
    reasons: &mut Vec<Reason>,
) -> (PlanState, Option<OutputDigest>, bool) {
    match key {
        Some(key) => match cached_output(ctx.store, &key, outputs) {
            Some(o) => (PlanState::Cached, Some(o), false),
            None => match ctx.remote.and_then(|r| r.peek(&key, outputs)) {
                Some(o) => (PlanState::Remote, Some(o), false),
                None => {
                    if reasons.is_empty() {
                        reasons.push(Reason::new(match base {
                            None => ReasonKind::NeverBuilt,
                            Some(b) if b.key == key => ReasonKind::NotInStore,
                            Some(_) => ReasonKind::KeyFormat,
                        }));
                    }
                    (PlanState::Rebuild, None, false)
                }
            },
        },
        None => {
            if base.is_none() {
                reasons.insert(0, Reason::new(ReasonKind::NeverBuilt));
            }
            let only_pending = reasons.iter().all(|r| {
                matches!(
                    r.kind,
                    ReasonKind::Input {
                        change: InputChange::Pending,
                        ..
                    } | ReasonKind::RunnerImage { pending: true, .. }
                )
            });
            let cutoff = only_pending
                && base.is_some_and(|b| cached_output(ctx.store, &b.key, outputs).is_some());
            (PlanState::Pending, None, cutoff)
        }
    }
}

/// The output of `key` if the action cache has it with its whole tree.
fn cached_output(store: &Store, key: &NodeKey, declared: &[String]) -> Option<OutputDigest> {
    let r = store.get_action(key).ok()??;
    store.check_output(&r.output, declared).ok()??;
    Some(r.output)
}

/// The lockfile to compare with: `--against` (an error if unreadable), else the
/// environment's newest (a warning if unreadable: the plan still runs, without reasons).
fn baseline(opts: &PlanOptions) -> Result<Baseline, Error> {
    let found = |path, lock| Baseline {
        path,
        lock,
        warnings: Vec::new(),
    };
    if let Some(path) = &opts.against {
        let lock = read_lockfile(path, &path.display().to_string())?;
        return Ok(found(Some(path.clone()), Some(lock)));
    }
    let Some(path) = newest_lockfile(&opts.project, &opts.env) else {
        return Ok(found(None, None));
    };
    let shown = path
        .strip_prefix(&opts.project)
        .unwrap_or(&path)
        .to_path_buf();
    match read_lockfile(&path, &shown.display().to_string()) {
        Ok(lock) => Ok(found(Some(shown), Some(lock))),
        Err(e) => Ok(Baseline {
            warnings: vec![format!("ignoring the newest lockfile: {e}")],
            ..found(None, None)
        }),
    }
}

/// Every difference between a node as it is now and its baseline, in this order:
/// source, recipe, runner, inputs. `runner_component` is the component whose image the
/// steps run in, if any; `runner` is `None` while it must be rebuilt first.
fn changes(
    node: &Node<'_>,
    base: &LockNode,
    known: &BTreeMap<String, OutputDigest>,
    pending: &[String],
    runner: Option<&RunnerIdentity>,
    runner_component: Option<&str>,
    ctx: &Ctx<'_>,
) -> Vec<Reason> {
    let c = node.component;
    let mut out = Vec::new();

    if let Some(r) = source_change(node, base, ctx) {
        out.push(r);
    }

    if base.recipe != node.recipe {
        let (from, to) = (base.recipe, node.recipe);
        // The old recipe, by digest, from the store (kept there by every build).
        let old = ctx
            .store
            .get_blob(&BlobDigest(from))
            .ok()
            .and_then(|b| Recipe::decode_canonical(&b).ok());
        match &old {
            Some(old) => out.extend(c.recipe.diff(old).into_iter().map(|f| {
                Reason::new(ReasonKind::Recipe {
                    field: Some(f.field),
                    change: f.change,
                    from,
                    to,
                })
            })),
            None => out.push(Reason::new(ReasonKind::Recipe {
                field: None,
                change: Change::Changed,
                from,
                to,
            })),
        }
    }

    if runner.is_none_or(|r| base.runner != r.digest()) {
        // The old runner's tools or image, from the old key manifest (the lockfile's
        // `key:` is its address in the store).
        let old = ctx
            .store
            .get_key_manifest(&base.key)
            .ok()
            .and_then(|b| KeyIngredients::decode(&b).ok());
        match (old, runner) {
            (old, None) => out.push(Reason::new(ReasonKind::RunnerImage {
                from: old.and_then(|o| runner_image(&o.runner)),
                to: None,
                component: runner_component.map(str::to_string),
                pending: true,
            })),
            (Some(old), Some(now)) => {
                out.extend(runner_changes(&old.runner, now, runner_component))
            }
            (None, Some(now)) => out.push(Reason::new(ReasonKind::Runner {
                from: base.runner,
                to: now.digest(),
            })),
        }
    }

    let was = &base.inputs;
    for (name, o) in known {
        match was.get(name) {
            None => out.push(input(name, InputChange::Added, None, Some(*o))),
            Some(w) if w != o => out.push(input(name, InputChange::Changed, Some(*w), Some(*o))),
            Some(_) => {}
        }
    }
    for name in pending {
        let change = if was.contains_key(name) {
            InputChange::Pending
        } else {
            InputChange::Added
        };
        out.push(input(name, change, was.get(name).copied(), None));
    }
    for (name, w) in was {
        if !known.contains_key(name) && !pending.contains(name) {
            out.push(input(name, InputChange::Removed, Some(*w), None));
        }
    }
    out
}

/// How the node's source moved since the baseline, if it did: the commit, and whether
/// the exported tree moved with it.
fn source_change(node: &Node<'_>, base: &LockNode, ctx: &Ctx<'_>) -> Option<Reason> {
    let c = node.component;
    let s = &node.pinned.source;
    // The baseline's exported tree after its filter, from its key manifest (format 2).
    let old_content = ctx
        .store
        .get_key_manifest(&base.key)
        .ok()
        .and_then(|b| KeyIngredients::decode(&b).ok())
        .and_then(|k| match k.source {
            SourceKey::Content(c) => Some(c.content),
            SourceKey::Commit(_) => None,
        });
    let from = SourcePoint::of(&base.source, old_content);
    let to = SourcePoint {
        repo: c.source.repo.clone(),
        r#ref: match &c.source.rev {
            Rev::Ref(r) => Some(r.clone()),
            Rev::Version(_) => None,
        },
        commit: s.commit.clone(),
        dir: c.source.dir.clone(),
        version: s.version.to_string(),
        tree: if from.tree == base.source.tree {
            s.tree.clone()
        } else {
            s.content.clone()
        },
    };
    if from == to {
        return None;
    }
    let tree_changed = from.tree != to.tree;
    let d = (from.commit != to.commit && from.repo == to.repo)
        .then(|| {
            ctx.git
                .distance(&node.pinned.location, &from.commit, &to.commit)
        })
        .flatten();
    Some(Reason::new(ReasonKind::Source {
        component: c.name.clone(),
        from: Box::new(from),
        to: Box::new(to),
        tree_changed,
        ahead: d.map(|d| d.ahead),
        behind: d.map(|d| d.behind),
    }))
}

fn input(
    name: &str,
    change: InputChange,
    from: Option<OutputDigest>,
    to: Option<OutputDigest>,
) -> Reason {
    Reason::new(ReasonKind::Input {
        input: name.to_string(),
        change,
        from,
        to,
    })
}

/// A container runner's image digest.
fn runner_image(r: &RunnerIdentity) -> Option<String> {
    match r {
        RunnerIdentity::Container { image } => Some(image.clone()),
        RunnerIdentity::Host { .. } => None,
    }
}

/// How the runner changed: tool by tool on the host, by image in a container, or
/// between the two.
fn runner_changes(
    old: &RunnerIdentity,
    new: &RunnerIdentity,
    component: Option<&str>,
) -> Vec<Reason> {
    match (old, new) {
        (RunnerIdentity::Host { tools: old }, RunnerIdentity::Host { tools: new }) => {
            tool_changes(old, new)
        }
        (old, new) if old == new => Vec::new(),
        (old, new) => vec![Reason::new(ReasonKind::RunnerImage {
            from: runner_image(old),
            to: runner_image(new),
            component: component.map(str::to_string),
            pending: false,
        })],
    }
}

fn tool_changes(
    old: &BTreeMap<String, BlobDigest>,
    new: &BTreeMap<String, BlobDigest>,
) -> Vec<Reason> {
    let mut out = Vec::new();
    let mut tool = |name: &str, change, from: Option<&BlobDigest>, to: Option<&BlobDigest>| {
        out.push(Reason::new(ReasonKind::Tool {
            tool: name.to_string(),
            change,
            from: from.copied(),
            to: to.copied(),
        }))
    };
    for (name, d) in new {
        match old.get(name) {
            None => tool(name, Change::Added, None, Some(d)),
            Some(o) if o != d => tool(name, Change::Changed, Some(o), Some(d)),
            Some(_) => {}
        }
    }
    for (name, o) in old {
        if !new.contains_key(name) {
            tool(name, Change::Removed, Some(o), None);
        }
    }
    out
}

/// `cascade why NODE`: the node and, recursively, every input whose change it depends
/// on, down to the root causes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Why {
    pub environment: String,
    pub baseline: Option<PathBuf>,
    pub chain: WhyNode,
    /// The nodes of the chain that changed themselves (source, recipe, runner, never
    /// built, …), with those reasons only, in build order.
    pub root_causes: Vec<RootCause>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WhyNode {
    pub name: String,
    pub state: PlanState,
    /// All of its reasons; empty when it is cached and unchanged.
    pub reasons: Vec<Reason>,
    /// The inputs behind its input reasons, each explained the same way. An input
    /// already explained higher up the chain is listed with `see_above` and no details.
    pub because: Vec<WhyNode>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub see_above: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RootCause {
    pub name: String,
    pub reasons: Vec<Reason>,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The chain of reasons for `name`, or `None` when there is no such node.
    pub fn why(&self, name: &str) -> Option<Why> {
        let index: BTreeMap<&str, &PlanNode> =
            self.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut seen = std::collections::BTreeSet::new();
        let chain = explain(index.get(name)?, &index, &mut seen);
        let root_causes = self
            .nodes
            .iter()
            .filter(|n| seen.contains(n.name.as_str()))
            .filter_map(|n| {
                let own: Vec<Reason> = n.reasons.iter().filter(|r| r.is_own()).cloned().collect();
                (!own.is_empty()).then(|| RootCause {
                    name: n.name.clone(),
                    reasons: own,
                })
            })
            .collect();
        Some(Why {
            environment: self.environment.clone(),
            baseline: self.baseline.clone(),
            chain,
            root_causes,
        })
    }
}

fn explain<'p>(
    node: &'p PlanNode,
    index: &BTreeMap<&str, &'p PlanNode>,
    seen: &mut std::collections::BTreeSet<&'p str>,
) -> WhyNode {
    if !seen.insert(&node.name) {
        return WhyNode {
            name: node.name.clone(),
            state: node.state,
            reasons: Vec::new(),
            because: Vec::new(),
            see_above: true,
        };
    }
    let because = node
        .reasons
        .iter()
        .filter_map(|r| match &r.kind {
            ReasonKind::Input {
                input,
                change: InputChange::Changed | InputChange::Pending | InputChange::Added,
                ..
            } => index.get(input.as_str()),
            ReasonKind::RunnerImage {
                component: Some(c), ..
            } => index.get(c.as_str()),
            _ => None,
        })
        .map(|n| explain(n, index, seen))
        .collect();
    WhyNode {
        name: node.name.clone(),
        state: node.state,
        reasons: node.reasons.clone(),
        because,
        see_above: false,
    }
}
