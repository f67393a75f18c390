//! `cascade build --lock FILE [--check]`: build exactly what a lockfile pins.
//!
//! The graph comes from the lockfile alone, not from today's manifests: each node's
//! commit and tree, its recipe and image declaration recovered from the store by the
//! digests the lockfile records, its inputs by name. Every node is keyed again and its
//! key compared with the lockfile's before anything runs: a differing host tool is a
//! reproducibility risk (an error with `--strict`); ingredients that do not give the
//! recorded key mean the lockfile was edited.
//!
//! `--check` builds every node again from scratch, in a temporary store that shares only
//! the real store's git mirrors, recipes and base images, and compares every output and
//! image digest with the lockfile's; `check.rs` names the files that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use cascade_core::{BlobDigest, FileId, KeyIngredients, SourceKey, Span};
use cascade_git::{Git, GitError, PinSpec, RevSpec};
use cascade_lock::{LockImage, LockNode, Lockfile};
use cascade_manifest::{
    Component, ImageBase, ImageDecl, Recipe, Rev, RunnerDecl, RunnerImage, SourceSpec,
};
use cascade_store::Store;
use miette::Diagnostic;

use crate::build::{
    lockfile, prepare, walk, write_lockfile, BuildOptions, BuildReport, Done, Event, Node, Walk,
};
use crate::check::{compare_outputs, Mismatch};
use crate::errors::LockfileProblem;
use crate::pin::{git_filter, locate};
use crate::{Error, Layout, Pinned, Problems};

/// How a lockfile is replayed.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// The lockfile to build.
    pub lock: Option<PathBuf>,
    /// Rebuild everything from scratch and compare with the lockfile.
    pub check: bool,
    /// Write a new lockfile after a successful replay (by default a replay writes none).
    pub write_lock: bool,
    /// A host tool that differs from the lockfile's runner is an error, not a warning.
    pub strict: bool,
}

/// What a replay found, beside the build itself.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    /// The lockfile replayed, as given.
    pub lockfile: PathBuf,
    pub check: bool,
    /// Nodes whose host tools differ from the lockfile's (a reproducibility risk).
    pub risks: Vec<String>,
    /// Outputs or images that differ from the lockfile's.
    pub mismatches: Vec<Mismatch>,
}

struct Locked<'l> {
    path: String,
    text: String,
    lock: &'l Lockfile,
}

impl Locked<'_> {
    fn problem(
        &self,
        node: &str,
        needle: &str,
        message: String,
        label: &str,
        help: Option<String>,
    ) -> Error {
        LockfileProblem::at(&self.path, &self.text, node, needle, message, label, help)
    }
}

pub(crate) fn replay(
    opts: &BuildOptions,
    lock_path: &Path,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<BuildReport, Error> {
    let started = Instant::now();
    let shown = lock_path
        .strip_prefix(&opts.project)
        .unwrap_or(lock_path)
        .display()
        .to_string();
    let text = crate::lockfiles::read_lockfile_text(lock_path, &shown)?;
    let lock = cascade_lock::read(&shown, &text)?;
    if !opts.env.is_empty() && opts.env != lock.environment {
        return Err(Error::WrongEnvironment {
            given: opts.env.clone(),
            lockfile: shown,
            recorded: lock.environment.clone(),
        });
    }
    let locked = Locked {
        path: shown.clone(),
        text,
        lock: &lock,
    };
    let real = Store::open(&opts.store)?;
    // Shared with other builds; keeps a `gc` from collecting what this replay writes.
    let _store_lock = real.lock_shared()?;
    // Today's manifests, when they still resolve: a fallback for recipes and image
    // declarations a cold store does not have (used only where the digests match).
    let current = crate::load(&opts.project, &lock.environment).ok();
    let git = Git::new(real.git_dir());
    let history = History {
        git: &git,
        project: &opts.project,
    };
    let components = components(&locked, &real, current.as_ref(), &history)?;
    let env_dir = Layout::new(&opts.project).environments();
    // `--sign`, else today's `sign:` of the lockfile's environment.
    let signer = crate::build::signer(
        opts,
        current
            .as_ref()
            .and_then(|p| p.graph.environment.sign.as_ref()),
        &env_dir,
    )?;
    let pinned = pin(&locked, &components, &git, &env_dir)?;
    missing_tools(&locked, &components, &opts.tools)?;
    let mut nodes = prepare(&components, &pinned, &opts.tools, None)?;
    for n in &mut nodes {
        n.reference = lock.nodes[&n.component.name]
            .image
            .as_ref()
            .map(|i| i.reference.clone());
    }
    let risks = verify_keys(&locked, &real, &nodes, opts.replay.strict)?;
    for r in &risks {
        on_event(Event::ReplayWarning { message: r });
    }
    // --check: a fresh store for everything that is built; the real one keeps serving
    // git mirrors (through `git`), and pinned base images are copied over.
    let scratch = if opts.replay.check {
        Some(real.temp_dir()?)
    } else {
        None
    };
    let store = match &scratch {
        Some(dir) => Store::open(dir.path())?,
        None => real.clone(),
    };
    let walked = Walk {
        store: &store,
        git: &git,
        components: &components,
        nodes: &nodes,
        env_name: &lock.environment,
        // A replay checks what this machine makes: no remote results.
        remote: None,
        publish: !opts.replay.check,
        signer: signer.as_ref(),
    };
    let (report, done) = walk(
        opts,
        &walked,
        |l| match opts.replay.check {
            true => copy_pinned_bases(&real, l, &components),
            false => Ok(()),
        },
        |report, done| {
            let mismatches = mismatches(&lock, &nodes, done, &real, &store);
            for m in &mismatches {
                on_event(Event::Mismatch(m));
            }
            report.replay = Some(ReplayReport {
                lockfile: lock_path.to_path_buf(),
                check: opts.replay.check,
                risks,
                mismatches,
            });
        },
        on_event,
    )?;
    let mut report = report;
    if report.success() && opts.replay.write_lock {
        let new = lockfile(&lock.environment, lock.graph, &nodes, &done, &report);
        store.sync()?;
        report.lockfile = Some(write_lockfile(
            &opts.project,
            &lock.environment,
            &opts.stamp,
            &new,
        )?);
    }
    drop(scratch);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Every output and image digest the replay did not reproduce, with the files that
/// differ.
fn mismatches(
    lock: &Lockfile,
    nodes: &[Node<'_>],
    done: &[OnceLock<Done>],
    real: &Store,
    store: &Store,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (node, d) in nodes.iter().zip(done) {
        let Some(d) = d.get() else { continue };
        let ln = &lock.nodes[&node.component.name];
        if d.output != ln.output {
            out.push(compare_outputs(
                &node.component.name,
                real,
                store,
                &ln.output,
                &d.output,
            ));
        }
        if let (Some(was), Some(now)) = (&ln.image, &d.image) {
            if was.digest != now.digest.to_string() {
                out.push(Mismatch::image(
                    &node.component.name,
                    &was.digest,
                    &now.digest.to_string(),
                ));
            }
        }
    }
    out
}

/// The project's own git history, searched for a recipe file whose digest matches.
struct History<'a> {
    git: &'a Git,
    project: &'a Path,
}

/// How many commits of the project's history a replay searches for a lost recipe.
const HISTORY_DEPTH: usize = 2000;

impl History<'_> {
    fn recipe(&self, name: &str, digest: &cascade_core::Digest) -> Option<Recipe> {
        let location = self.project.canonicalize().ok()?.display().to_string();
        let path = Layout::recipe_rel(name);
        self.git
            .file_history(&location, &path, HISTORY_DEPTH)
            .into_iter()
            .find_map(|bytes| {
                let mut db = cascade_manifest::SourceDb::new();
                let file = db.add(path.clone(), String::from_utf8(bytes).ok()?);
                let r = cascade_manifest::recipe_alone(&db, file, name)?;
                (r.digest() == *digest).then_some(r)
            })
    }
}

/// The lockfile's nodes as components, in build order: recipes and image declarations
/// from the store, inputs and image bases as edges.
fn components(
    locked: &Locked<'_>,
    store: &Store,
    current: Option<&crate::Project>,
    history: &History<'_>,
) -> Result<Vec<Component>, Error> {
    let lock = locked.lock;
    let recovery = Recovery {
        locked,
        store,
        current,
        history,
    };
    let mut recipes: BTreeMap<&str, Recipe> = BTreeMap::new();
    for (name, ln) in &lock.nodes {
        recipes.insert(name, recovery.recipe(name, ln)?);
    }
    let (order, left) = crate::lockfiles::build_order(&edges(&recipes));
    if let Some(stuck) = left.first() {
        return Err(locked.problem(
            stuck,
            "inputs:",
            format!("the inputs of `{stuck}` name a component the lockfile lacks, or form a cycle"),
            "here",
            None,
        ));
    }
    let index: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for name in &order {
        let recipe = recipes
            .remove(name.as_str())
            .unwrap_or_else(|| unreachable!());
        out.push(component(name, &lock.nodes[name], recipe, &index));
    }
    Ok(out)
}

/// Where a replay finds the recipes and image declarations its lockfile names by
/// digest: the store, else today's manifests or the project's history when the digests
/// match.
struct Recovery<'a> {
    locked: &'a Locked<'a>,
    store: &'a Store,
    current: Option<&'a crate::Project>,
    history: &'a History<'a>,
}

impl<'a> Recovery<'a> {
    /// Today's component `name`, when today's manifests resolve.
    fn today(&self, name: &str) -> Option<&'a Component> {
        self.current
            .and_then(|p| p.graph.components.iter().find(|c| c.name == name))
    }

    /// The node's recipe, with its inputs checked against the lockfile's and its image
    /// declaration recovered.
    fn recipe(&self, name: &str, ln: &LockNode) -> Result<Recipe, Error> {
        let (mut recipe, found_decl) = self.find_recipe(name, ln)?;
        let recorded: BTreeSet<&str> = ln.inputs.keys().map(String::as_str).collect();
        let declared: BTreeSet<&str> = recipe.inputs.iter().map(String::as_str).collect();
        if recorded != declared {
            return Err(self.locked.problem(
                name,
                "inputs:",
                format!("the inputs of `{name}` do not match its recipe's"),
                "not the recipe's inputs",
                Some("the lockfile was edited; rebuild the environment to get a true one".into()),
            ));
        }
        if let Some(image) = &ln.image {
            recipe.image = Some(self.image_decl(name, image, found_decl)?);
        }
        Ok(recipe)
    }

    /// The recipe the lockfile's digest names, without its image declaration when it
    /// came from a recipe file (that declaration, returned beside it, is checked
    /// against the lockfile's `spec`).
    fn find_recipe(&self, name: &str, ln: &LockNode) -> Result<(Recipe, Option<ImageDecl>), Error> {
        let mut found_decl = None;
        let recipe = self
            .store
            .get_blob(&BlobDigest(ln.recipe))
            .ok()
            .and_then(|b| Recipe::decode_canonical(&b).ok())
            .or_else(|| {
                self.today(name)
                    .map(|c| c.recipe.clone())
                    .filter(|r| r.digest() == ln.recipe)
                    .or_else(|| self.history.recipe(name, &ln.recipe))
                    .map(|r| {
                        // Kept aside: the image declaration is checked against `spec`.
                        found_decl = r.image.clone();
                        Recipe {
                            image: None,
                            tests: Vec::new(),
                            ..r
                        }
                    })
            })
            .ok_or_else(|| {
                self.locked.problem(
                    name,
                    &ln.recipe.to_string(),
                    format!(
                        "the recipe of `{name}` is neither in the store nor in `recipes/{name}.yaml`, today or in the project's git history"
                    ),
                    "no recipe with this digest",
                    Some(
                        "a lockfile replays with a store that built it (recipes are kept there \
                         by digest), or while the recipe file is unchanged; use that store \
                         (--store), or check out the project at the commit that wrote the lockfile"
                            .into(),
                    ),
                )
            })?;
        Ok((recipe, found_decl))
    }

    /// The image declaration the lockfile's `spec` names: from the store, else the one
    /// found with the recipe, else today's.
    fn image_decl(
        &self,
        name: &str,
        image: &LockImage,
        found_decl: Option<ImageDecl>,
    ) -> Result<ImageDecl, Error> {
        image
            .spec
            .and_then(|d| self.store.get_blob(&BlobDigest(d)).ok())
            .and_then(|b| ImageDecl::decode_canonical(&b).ok())
            .or_else(|| {
                let decl = found_decl.or_else(|| self.today(name)?.recipe.image.clone())?;
                (Some(decl.digest()) == image.spec).then_some(decl)
            })
            .ok_or_else(|| {
                self.locked.problem(
                    name,
                    "image:",
                    format!(
                        "the image declaration of `{name}` is neither in the store nor in `recipes/{name}.yaml`, today or in the project's git history"
                    ),
                    "cannot be made again",
                    Some("replay it with the store that built it (--store)".to_string()),
                )
            })
    }
}

/// Each node's edges: its inputs, its image's base component and the component whose
/// image its steps run in.
fn edges(recipes: &BTreeMap<&str, Recipe>) -> BTreeMap<String, BTreeSet<String>> {
    recipes
        .iter()
        .map(|(name, r)| {
            let mut d: BTreeSet<String> = r.inputs.iter().cloned().collect();
            if let Some(ImageDecl {
                base: ImageBase::Component(b),
                ..
            }) = &r.image
            {
                d.insert(b.clone());
            }
            if let RunnerDecl::Container {
                image: RunnerImage::Component(c),
            } = &r.runner
            {
                d.insert(c.clone());
            }
            (name.to_string(), d)
        })
        .collect()
}

/// The node `name` as a component, its edges as indexes into the build order.
fn component(
    name: &str,
    ln: &LockNode,
    recipe: Recipe,
    index: &BTreeMap<&str, usize>,
) -> Component {
    let nowhere = Span::new(FileId(0), 0, 0);
    let inputs = recipe
        .inputs
        .iter()
        .filter_map(|i| index.get(i.as_str()).copied())
        .collect();
    let image_base = match &recipe.image {
        Some(ImageDecl {
            base: ImageBase::Component(b),
            ..
        }) => index.get(b.as_str()).copied(),
        _ => None,
    };
    let runner_image = match &recipe.runner {
        RunnerDecl::Container {
            image: RunnerImage::Component(c),
        } => index.get(c.as_str()).copied(),
        _ => None,
    };
    // The rev as recorded (a new lockfile says the same); `pin` below goes by the
    // recorded commit, not by this.
    let rev = match &ln.source.r#ref {
        Some(r) => Rev::Ref(r.clone()),
        None => match semver::Version::parse(&ln.source.version) {
            Ok(v) => Rev::Version(v),
            Err(_) => Rev::Ref(ln.source.commit.clone()),
        },
    };
    Component {
        name: name.to_string(),
        source: SourceSpec {
            repo: ln.source.repo.clone(),
            repo_span: nowhere,
            rev,
            rev_span: nowhere,
            dir: ln.source.dir.clone(),
            dir_span: None,
            // The version is the lockfile's; no tags are looked at.
            version_tags: None,
        },
        recipe,
        recipe_file: FileId(0),
        inputs,
        image_base,
        runner_image,
        tool_spans: Default::default(),
    }
}

/// Each node at exactly its recorded commit and tree, with its recorded version, keyed
/// in the lockfile's key format (with the recipe's source filter in format 2).
fn pin(
    locked: &Locked<'_>,
    components: &[Component],
    git: &Git,
    env_dir: &Path,
) -> Result<Vec<Pinned>, Error> {
    let mut out = Vec::new();
    for c in components {
        let ln: &LockNode = &locked.lock.nodes[&c.name];
        let s = &ln.source;
        let location = locate(&s.repo, env_dir);
        let key_format = locked.lock.key_format;
        let filter = (key_format >= 2).then(|| git_filter(&c.recipe)).flatten();
        let spec = PinSpec {
            rev: RevSpec::Ref(&s.commit),
            dir: s.dir.as_deref(),
            filter: filter.as_ref(),
            version_tags: None,
        };
        let mut pinned = match git.pin(&location, &spec) {
            Ok(p) => p,
            Err(e @ GitError::FetchFailed { .. }) => {
                return Err(Error::Environment(Problems::new(
                    "unreachable source",
                    vec![Box::new(SourceGone {
                        message: format!("could not fetch the source of `{}`: {e}", c.name),
                    }) as Box<dyn Diagnostic + Send + Sync>],
                )))
            }
            Err(e) => {
                return Err(locked.problem(
                    &c.name,
                    &s.commit,
                    format!(
                        "commit {} of `{}` cannot be found in `{}`",
                        &s.commit, c.name, s.repo
                    ),
                    "no such commit",
                    Some(match e {
                        // The message already names the commit and the repository.
                        GitError::UnknownRef { .. } => "the repository no longer has this commit (history rewritten, or another clone): fetch it, or point the source at a clone that has it".to_string(),
                        e => e.to_string(),
                    }),
                ));
            }
        };
        if pinned.commit != s.commit || pinned.tree != s.tree {
            return Err(locked.problem(
                &c.name,
                &s.tree,
                format!(
                    "the tree of `{}` at {} is {}, not the lockfile's",
                    c.name, &s.commit, pinned.tree
                ),
                "not this commit's tree",
                None,
            ));
        }
        pinned.version = semver::Version::parse(&s.version).map_err(|e| {
            locked.problem(
                &c.name,
                &s.version,
                format!("`{}` is not a version: {e}", s.version),
                "not semver",
                None,
            )
        })?;
        out.push(Pinned {
            location,
            source: pinned,
            key_format,
        });
    }
    Ok(out)
}

/// Every host tool a node's recipe declares (`runner.host.tools`, and `sh`) that this
/// machine lacks, as the ordinary build reports them (exit 3, the machine's
/// environment), but located in the lockfile: it records each node's runner, whose
/// identity covers every tool's name and digest, not the tools' names, so the label
/// goes on the node's `runner:`. Other tool problems are `prepare`'s, as in a build.
fn missing_tools(
    locked: &Locked<'_>,
    components: &[Component],
    tools: &cascade_exec::Tools,
) -> Result<(), Error> {
    let mut problems: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    for c in components {
        let RunnerDecl::Host {
            tools: declared, ..
        } = &c.recipe.runner
        else {
            continue;
        };
        // Steps run under `sh`, so it is always part of the runner.
        let names: BTreeSet<&str> = declared.iter().map(String::as_str).chain(["sh"]).collect();
        let runner = locked.lock.nodes[&c.name].runner.to_string();
        for name in names {
            if let Err(cascade_exec::ToolError::NotFound { .. }) = tools.resolve(name) {
                problems.push(Box::new(MissingLockedTool {
                    tool: name.to_string(),
                    component: c.name.clone(),
                    src: miette::NamedSource::new(&locked.path, locked.text.clone()),
                    span: crate::errors::LockfileProblem::span(&locked.text, &c.name, &runner),
                }));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Environment(Problems::new("missing tool", problems)))
    }
}

/// A tool of a replayed recipe that is not on this machine's PATH.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("tool `{tool}` of recipe `{component}` is not on PATH")]
#[diagnostic(
    code(cascade::tool::not_found),
    help(
        "the recipe this lockfile recorded for `{component}` declares `{tool}` in `runner.host.tools`, and this runner covers its digest; each tool is looked up on the PATH cascade runs with: install `{tool}` there to replay the lockfile"
    )
)]
struct MissingLockedTool {
    tool: String,
    component: String,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("the runner of `{component}`, which runs `{tool}`")]
    span: Option<miette::SourceSpan>,
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(cascade::source))]
struct SourceGone {
    message: String,
}

/// Before anything runs: every node's key from its recorded ingredients must be the
/// recorded key (else the lockfile was edited), and its host tools should be the
/// recorded ones (else a reproducibility risk, returned; an error with `strict`).
fn verify_keys(
    locked: &Locked<'_>,
    store: &Store,
    nodes: &[crate::build::Node<'_>],
    strict: bool,
) -> Result<Vec<String>, Error> {
    let mut risks = Vec::new();
    for node in nodes {
        let name = &node.component.name;
        let ln = &locked.lock.nodes[name];
        let old = store
            .get_key_manifest(&ln.key)
            .ok()
            .and_then(|b| KeyIngredients::decode(&b).ok());
        // A container of a component's image: that image as the lockfile records it
        // (if the replay makes another, the difference is reported there).
        let runner = node.runner_given(|j| {
            locked.lock.nodes[&nodes[j].component.name]
                .image
                .as_ref()
                .and_then(|i| i.digest.parse().ok())
        });
        let runner_same = runner.as_ref().map(|r| r.digest()) == Some(ln.runner);
        // The ingredients that give the recorded key: from the store when it has them,
        // else ours, with the recorded inputs.
        let edited = match &old {
            Some(o) => {
                let source_differs = match &o.source {
                    SourceKey::Commit(s) => {
                        s.commit != ln.source.commit
                            || s.tree != ln.source.tree
                            || s.version != ln.source.version
                            || s.dir != ln.source.dir
                    }
                    // What format 2 keys of the commit is only what was stamped; the
                    // content is checked against the commit by `pin` above.
                    SourceKey::Content(s) => {
                        s.commit.as_ref().is_some_and(|c| *c != ln.source.commit)
                            || s.version.as_ref().is_some_and(|v| *v != ln.source.version)
                            || s.content != node.pinned.source.content
                    }
                };
                o.source.format() != locked.lock.key_format
                    || source_differs
                    || o.recipe != ln.recipe
                    || o.inputs != ln.inputs
                    || o.runner.digest() != ln.runner
            }
            None => match &runner {
                Some(r) if runner_same => node.ingredients(&ln.inputs, r).key() != ln.key,
                _ => false,
            },
        };
        if edited {
            return Err(locked.problem(
                name,
                &ln.key.to_string(),
                format!("the key of `{name}` does not match its ingredients"),
                "not the key of what this entry records",
                Some(
                    "the lockfile was edited by hand; rebuild the environment to get a true one"
                        .into(),
                ),
            ));
        }
        if !runner_same {
            let detail = match (&old, &runner) {
                (
                    Some(KeyIngredients {
                        runner: cascade_core::RunnerIdentity::Host { tools: was },
                        ..
                    }),
                    Some(cascade_core::RunnerIdentity::Host { tools: now }),
                ) => {
                    let changed: Vec<String> = now
                        .iter()
                        .filter(|(t, d)| was.get(*t) != Some(d))
                        .map(|(t, _)| t.clone())
                        .chain(was.keys().filter(|t| !now.contains_key(*t)).cloned())
                        .collect();
                    format!("tools {}", changed.join(", "))
                }
                (_, Some(cascade_core::RunnerIdentity::Container { image })) => {
                    format!("its runner image ({image})")
                }
                _ => "its runner".to_string(),
            };
            risks.push(format!(
                "`{name}`: {detail} differ from the lockfile's (a reproducibility risk)"
            ));
        }
    }
    if strict && !risks.is_empty() {
        return Err(Error::ReproducibilityRisk { risks });
    }
    Ok(risks)
}

/// `--check` builds in a fresh store: pinned base and runner images come from the real
/// one.
fn copy_pinned_bases(
    real: &Store,
    to: &cascade_image::OciLayout,
    components: &[Component],
) -> Result<(), Error> {
    let from = cascade_image::OciLayout::open_or_create(real.oci_dir()).map_err(Error::Image)?;
    let pinned = components.iter().flat_map(|c| {
        let base = match &c.recipe.image {
            Some(ImageDecl {
                base: ImageBase::Pinned { digest, .. },
                ..
            }) => Some(digest),
            _ => None,
        };
        let runner = match &c.recipe.runner {
            RunnerDecl::Container {
                image: RunnerImage::Pinned { digest, .. },
            } => Some(digest),
            _ => None,
        };
        base.into_iter().chain(runner)
    });
    for digest in pinned {
        let Ok(manifest) = digest.parse::<cascade_image::OciDigest>() else {
            continue;
        };
        // A base that is not (complete) in the store fails the image build, saying so.
        let Ok(blobs) = from.image_blobs(&manifest) else {
            continue;
        };
        for b in blobs {
            let bytes = from.read_blob(&b).map_err(Error::Image)?;
            to.put_blob_bytes(&bytes).map_err(Error::Image)?;
        }
    }
    Ok(())
}
