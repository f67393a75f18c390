//! [IO] `cascade promote`: pin one environment's manifest to what another environment's
//! lockfile built.
//!
//! In order, and refusing at the first step that fails (the manifest untouched):
//! 1. the approval gate (`prod` needs `approve`);
//! 2. the lockfile (the newest of `from`, or the one named): every recorded smoke test
//!    must have passed, and with the target's `require_signature:` every image it
//!    built for the target's components must be signed and attested by one of its keys;
//! 3. each source of the target environment that the lockfile has is resolved at the
//!    lockfile's commit in the *target's* repository: the commit itself in branch mode, a
//!    version tag on that commit in version mode (or on its changelog commit, which
//!    `release tag` makes for a recipe with `changelog:`: one parent, that commit, and
//!    the same exported files);
//! 4. the compatibility matrix against the versions the target will have;
//! 5. the deploy plan: the target's newest lockfile against what it will build
//!    ([`crate::diff_lockfiles`]); a dry run stops here;
//! 6. the manifest is rewritten by replacing exactly the bytes of each changed
//!    `ref:`/`version:` value (comments and layout elsewhere stay as they are), written
//!    atomically, and loaded again; if it does not load, the old bytes are put back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cascade_core::Span;
use cascade_git::{Git, GitError, RevSpec};
use cascade_lock::{LockNode, Lockfile, TestResult};
use cascade_manifest::{Component, Mode, Rev};
use cascade_store::Store;
use miette::{Diagnostic, NamedSource, SourceSpan};

use crate::diff::{diff_lockfiles, distances, LockDiff};
use crate::lockfiles::{newest_lockfile, read_lockfile};
use crate::notify::{notify, EventComponent, EventKind, NotifyEvent};
use crate::pin::{git_filter, locate, spec_of, tag_name, version_tag};
use crate::short_sha;
use crate::{load, Error, LockfileProblem, Project};

/// Environments a promotion to which needs `approve` (the seeds' approval gate).
pub const NEEDS_APPROVAL: [&str; 1] = ["prod"];

pub struct PromoteOptions {
    pub project: PathBuf,
    /// The environment whose newest lockfile is promoted. With `lock`, optional, and
    /// when given it must be the lockfile's environment.
    pub from: Option<String>,
    /// The environment whose manifest is rewritten.
    pub to: String,
    /// Promote this lockfile instead of `from`'s newest.
    pub lock: Option<PathBuf>,
    /// The store: remote repositories are mirrored in `<store>/git`.
    pub store: PathBuf,
    /// Print the plan, write nothing.
    pub dry_run: bool,
    /// Needed to promote to an environment of [`NEEDS_APPROVAL`].
    pub approve: bool,
}

/// What `promote` did (or, with `dry_run`, would do); the `--json` schema.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PromoteReport {
    /// The lockfile's environment.
    pub from: String,
    pub to: String,
    /// The lockfile promoted (as named, or relative to the project).
    pub lockfile: String,
    /// The manifest rewritten, relative to the project.
    pub manifest: String,
    /// The target's mode: `branch` (sources pinned by `ref: <sha>`) or `version`.
    pub mode: Mode,
    pub dry_run: bool,
    /// Whether the manifest was rewritten (false for a dry run, or when it already
    /// pinned every commit).
    pub written: bool,
    /// The target's newest lockfile against what the target will build.
    pub plan: LockDiff,
    /// The target's sources that the lockfile has, in build order.
    pub sources: Vec<PromotedSource>,
    /// The target's sources that the lockfile does not have: left as they are.
    pub kept: Vec<String>,
    /// The lockfile's components that the target does not have.
    pub not_promoted: Vec<String>,
    /// Problems that did not stop the promotion (an unreadable newest lockfile of the
    /// target: the plan then has no baseline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The `promote` event (sent when the manifest was rewritten), as each of the
    /// target's `notify:` hooks took it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<cascade_notify::Delivery>,
}

/// The field of a source that a promotion rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinField {
    /// `ref: <sha>`, in branch mode.
    Ref,
    /// `version: <x.y.z>`, in version mode.
    Version,
}

impl PinField {
    pub fn as_str(self) -> &'static str {
        match self {
            PinField::Ref => "ref",
            PinField::Version => "version",
        }
    }
}

impl std::fmt::Display for PinField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PromotedSource {
    pub name: String,
    pub field: PinField,
    /// The value as it was written.
    pub before: String,
    /// The value written: the full commit SHA, or the version of the tag on it.
    pub after: String,
    pub commit: String,
    pub version: String,
    /// False when the manifest already pinned this.
    pub changed: bool,
}

/// A promotion problem pointing into the target environment's file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(cascade::promote))]
struct PromoteProblem {
    message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
}

type Problem = Box<dyn Diagnostic + Send + Sync>;

/// Why a promotion was refused: a summary, then each problem as its own diagnostic.
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct Refusal {
    pub summary: String,
    pub problems: Vec<Box<dyn Diagnostic + Send + Sync>>,
}

impl Diagnostic for Refusal {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new("cascade::promote_refused"))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(
            self.problems.iter().map(|d| &**d as &dyn Diagnostic),
        ))
    }
}

fn refused(summary: String, problems: Vec<Problem>) -> Error {
    Error::Promotion(Box::new(Refusal { summary, problems }))
}

fn problem(
    project: &Project,
    span: Span,
    message: String,
    label: &str,
    help: Option<String>,
) -> Problem {
    Box::new(PromoteProblem {
        message,
        src: project.db.named_source(span.file),
        span: (span.offset, span.len).into(),
        label: label.to_string(),
        help,
    })
}

/// One source of the target that the lockfile has, resolved in the target's repository.
struct Target<'a> {
    component: &'a Component,
    field: PinField,
    before: String,
    after: String,
    version: semver::Version,
    /// Whether the manifest pins something else now.
    changed: bool,
    /// The lockfile's node as the target will record it (its repo, ref and dir).
    node: LockNode,
}

/// The lockfile being promoted, as read and checked.
struct Source {
    /// As given, or relative to the project.
    shown: String,
    text: String,
    lock: Lockfile,
}

/// What resolving the targets needs, beside each component.
struct Resolving<'a> {
    git: &'a Git,
    project: &'a Project,
    source: &'a Source,
}

/// The target's sources that the lockfile has, and the ones it lacks (which stay).
struct Targets<'a> {
    targets: Vec<Target<'a>>,
    kept: Vec<String>,
}

/// `cascade promote`; see the module documentation.
pub fn promote(opts: &PromoteOptions) -> Result<PromoteReport, Error> {
    if NEEDS_APPROVAL.contains(&opts.to.as_str()) && !opts.approve && !opts.dry_run {
        return Err(Error::ApprovalRequired {
            env: opts.to.clone(),
        });
    }
    // 1. The lockfile: read, from the right environment, every smoke test passed.
    let source = read_source(opts)?;
    let lock = &source.lock;
    // 2. The target, and the signatures it requires.
    let project = load(&opts.project, &opts.to)?;
    require_signatures(opts, &project, lock)?;
    // 3. Each source of the target at the lockfile's commit, as the target pins it.
    let git = Git::new(crate::layout::store_git_dir(&opts.store));
    let env_dir = project.environment_dir();
    let resolving = Resolving {
        git: &git,
        project: &project,
        source: &source,
    };
    let Targets { targets, kept } = resolve_targets(opts, &resolving)?;
    let not_promoted: Vec<String> = lock
        .nodes
        .keys()
        .filter(|n| project.graph.index_of(n).is_none())
        .cloned()
        .collect();
    // 4. The deploy plan, 5. the rewritten manifest, 6. the notifications.
    let (plan, warnings) = deploy_plan(opts, &git, &env_dir, &source, &targets, &kept);
    let (manifest, written) = rewrite(opts, &project, &targets)?;
    let notifications = if written {
        notify_promotion(opts, &project, &source, &targets)
    } else {
        Vec::new()
    };
    Ok(PromoteReport {
        notifications,
        from: lock.environment.clone(),
        to: opts.to.clone(),
        lockfile: source.shown.clone(),
        manifest,
        mode: project.graph.environment.mode,
        dry_run: opts.dry_run,
        written,
        plan,
        sources: targets
            .iter()
            .map(|t| PromotedSource {
                name: t.component.name.clone(),
                field: t.field,
                before: t.before.clone(),
                after: t.after.clone(),
                commit: t.node.source.commit.clone(),
                version: t.version.to_string(),
                changed: t.changed,
            })
            .collect(),
        kept,
        not_promoted,
        warnings,
    })
}

/// The lockfile `--lock` names, or the newest of `--from`; it must be of `--from`, and
/// every smoke test it recorded must have passed.
fn read_source(opts: &PromoteOptions) -> Result<Source, Error> {
    let (path, shown) = match (&opts.lock, &opts.from) {
        (Some(l), _) => (l.clone(), l.display().to_string()),
        (None, Some(from)) => crate::lockfiles::newest_shown(&opts.project, from)?,
        (None, None) => return Err(Error::UnknownEnvironment {
            name: String::new(),
            help:
                "name the environment to promote from (`--from ENV`) or a lockfile (`--lock FILE`)"
                    .to_string(),
        }),
    };
    let text = crate::lockfiles::read_lockfile_text(&path, &shown)?;
    let lock = cascade_lock::read(&shown, &text)?;
    if let Some(from) = opts.from.as_ref().filter(|f| **f != lock.environment) {
        return Err(Error::LockfileEnvironment {
            from: from.clone(),
            lockfile: shown,
            recorded: lock.environment.clone(),
        });
    }
    check_tests(&shown, &text, &lock)?;
    Ok(Source { shown, text, lock })
}

/// The target's `require_signature:`: every image the lockfile built for a component
/// the target has must be signed and attested by one of its keys.
fn require_signatures(
    opts: &PromoteOptions,
    project: &Project,
    lock: &Lockfile,
) -> Result<(), Error> {
    let target_has: BTreeSet<&str> = project
        .graph
        .components
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    crate::sign::require_signatures(
        &opts.to,
        &project.graph.environment.require_signature,
        &project.environment_dir(),
        &opts.store,
        lock,
        &|n| target_has.contains(n),
    )
}

/// Every source of the target the lockfile has, resolved; the others stay, and are
/// pinned only when the compatibility matrix needs their version. Any source that
/// cannot be pinned, or a version outside the matrix, refuses the promotion.
fn resolve_targets<'a>(opts: &PromoteOptions, r: &Resolving<'a>) -> Result<Targets<'a>, Error> {
    let (project, shown) = (r.project, &r.source.shown);
    let env_dir = project.environment_dir();
    let upstreams: BTreeSet<&str> = project
        .graph
        .compatibility
        .iter()
        .map(|r| r.upstream.as_str())
        .collect();
    let mut targets = Vec::new();
    let mut kept = Vec::new();
    let mut versions = BTreeMap::new();
    let mut problems: Vec<Problem> = Vec::new();
    for c in &project.graph.components {
        let location = locate(&c.source.repo, &env_dir);
        match r.source.lock.nodes.get(&c.name) {
            Some(node) => match target(r, c, &location, node) {
                Ok(t) => {
                    versions.insert(c.name.clone(), t.version.clone());
                    targets.push(t);
                }
                Err(p) => problems.push(p),
            },
            None => {
                kept.push(c.name.clone());
                // Its version matters only to the rules it is the upstream of.
                if !upstreams.contains(c.name.as_str()) {
                    continue;
                }
                match kept_version(r, c, &location) {
                    Ok(v) => {
                        versions.insert(c.name.clone(), v);
                    }
                    Err(p) => problems.push(p),
                }
            }
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        return Err(refused(
            format!(
                "`{shown}` cannot be promoted to `{}`: {n} source{} cannot be pinned",
                opts.to,
                if n == 1 { "" } else { "s" },
            ),
            problems,
        ));
    }
    if let Err(d) = cascade_manifest::check_compatibility(&project.db, &project.graph, &versions) {
        let n = d.0.len();
        return Err(refused(
            format!(
                "`{shown}` cannot be promoted to `{}`: {n} version{} outside the compatibility matrix",
                opts.to,
                if n == 1 { " is" } else { "s are" },
            ),
            d.0.into_iter().map(|e| Box::new(e) as Problem).collect(),
        ));
    }
    Ok(Targets { targets, kept })
}

/// The version of a source the lockfile lacks, which stays as the target pins it.
fn kept_version(
    r: &Resolving<'_>,
    c: &Component,
    location: &str,
) -> Result<semver::Version, Problem> {
    let rev = match &c.source.rev {
        Rev::Ref(r) => RevSpec::Ref(r),
        Rev::Version(v) => RevSpec::Version(v),
    };
    match r.git.pin(location, &spec_of(c, rev, None)) {
        Ok(p) => Ok(p.version),
        Err(e) => Err(problem(
            r.project,
            c.source.rev_span,
            format!(
                "`{}` is not in the lockfile and stays as it is, but it cannot be resolved: {e}",
                c.name
            ),
            "needed for the compatibility matrix",
            None,
        )),
    }
}

/// The deploy plan: the target's newest lockfile (less the sources that stay as they
/// are) against the lockfile's nodes as the target will record them; with a warning
/// when that newest lockfile does not read.
fn deploy_plan(
    opts: &PromoteOptions,
    git: &Git,
    env_dir: &Path,
    source: &Source,
    targets: &[Target<'_>],
    kept: &[String],
) -> (LockDiff, Vec<String>) {
    let mut warnings = Vec::new();
    let baseline = match newest_lockfile(&opts.project, &opts.to) {
        None => None,
        Some(p) => {
            let s = shown_in(&opts.project, &p);
            match read_lockfile(&p, &s) {
                Ok(mut l) => {
                    l.nodes.retain(|n, _| !kept.contains(n));
                    Some((s, l))
                }
                Err(e) => {
                    warnings.push(format!(
                        "ignoring the newest lockfile of `{}`: {e}",
                        opts.to
                    ));
                    None
                }
            }
        }
    };
    let mut projected = source.lock.clone();
    projected.environment = opts.to.clone();
    projected.nodes = targets
        .iter()
        .map(|t| (t.component.name.clone(), t.node.clone()))
        .collect();
    let distance = distances(git, env_dir, true);
    let plan = diff_lockfiles(
        baseline.as_ref().map(|(s, l)| (s.as_str(), l)),
        (&source.shown, &projected),
        &*distance,
    );
    (plan, warnings)
}

/// Rewrites the target's environment file where a pin changed (not on a dry run), and
/// checks it reads back; returns its path in the project and whether it was written.
fn rewrite(
    opts: &PromoteOptions,
    project: &Project,
    targets: &[Target<'_>],
) -> Result<(String, bool), Error> {
    let env_file = project.files.environment;
    let manifest = project.db.path(env_file).to_string();
    let original = project.db.text(env_file).to_string();
    let edits: Vec<(Span, String)> = targets
        .iter()
        .filter(|t| t.changed)
        .map(|t| {
            let span = t.component.source.rev_span;
            (span, replacement(&original, span, &t.after))
        })
        .collect();
    let written = !opts.dry_run && !edits.is_empty();
    if written {
        let path = opts.project.join(&manifest);
        let rewritten = apply(&original, &edits);
        Store::write_atomic(&path, rewritten.as_bytes()).map_err(|source| {
            Error::WriteManifest {
                path: PathBuf::from(&manifest),
                source,
            }
        })?;
        if let Err(detail) = reads_back(opts, targets) {
            // Never leave a manifest that does not load: put the old bytes back.
            let _ = Store::write_atomic(&path, original.as_bytes());
            return Err(Error::RewriteInvalid {
                path: PathBuf::from(&manifest),
                detail,
            });
        }
    }
    Ok((manifest, written))
}

/// Tells the target's `notify:` webhooks what was promoted.
fn notify_promotion(
    opts: &PromoteOptions,
    project: &Project,
    source: &Source,
    targets: &[Target<'_>],
) -> Vec<crate::Delivery> {
    let lock = &source.lock;
    let mut event = NotifyEvent::new(
        EventKind::Promote,
        &opts.to,
        format!(
            "promoted {} to {}: {}",
            lock.environment,
            opts.to,
            targets
                .iter()
                .filter(|t| t.changed)
                .map(|t| format!("{} {}", t.component.name, t.version))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    event.from = Some(lock.environment.clone());
    event.lockfile = Some(source.shown.clone());
    event.components = targets
        .iter()
        .map(|t| EventComponent {
            name: t.component.name.clone(),
            version: Some(t.version.to_string()),
            commit: Some(t.node.source.commit.clone()),
            tag: None,
        })
        .collect();
    notify(&project.graph.environment.notify, &event)
}

/// A path as users see it: relative to the project when it is inside it.
fn shown_in(project: &Path, p: &Path) -> String {
    p.strip_prefix(project).unwrap_or(p).display().to_string()
}

/// Every recorded smoke test must have passed; each one that did not is a problem
/// pointing at its line of the lockfile.
fn check_tests(shown: &str, text: &str, lock: &Lockfile) -> Result<(), Error> {
    let mut items: Vec<Problem> = Vec::new();
    for (name, node) in &lock.nodes {
        for (test, result) in &node.tests {
            if *result == TestResult::Passed {
                continue;
            }
            let result = result.as_str();
            items.push(Box::new(LockfileProblem::at(
                shown,
                text,
                name,
                &format!("{test}: {result}"),
                format!("smoke test `{test}` of `{name}` did not pass: it is recorded as `{result}`"),
                "not passed",
                Some(format!(
                    "only a lockfile whose smoke tests all passed can be promoted: build `{}` again with its tests (without --skip-tests) and promote that lockfile",
                    lock.environment
                )),
            )));
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    Err(refused(
        format!(
            "`{shown}` cannot be promoted: {n} smoke test{} did not pass",
            if n == 1 { "" } else { "s" }
        ),
        items,
    ))
}

/// Where one component's lockfile commit is being resolved.
struct At<'a> {
    c: &'a Component,
    /// From [`locate`].
    location: &'a str,
    /// The lockfile's commit, lowercase.
    full_sha: &'a str,
}

/// Resolves the lockfile's commit of `c` in the target's repository, as the target's
/// mode pins it.
fn target<'a>(
    r: &Resolving<'_>,
    c: &'a Component,
    location: &str,
    node: &LockNode,
) -> Result<Target<'a>, Problem> {
    let (version, full_sha) = recorded(r, c, node)?;
    let raw = raw_value(r.project.db.text(c.source.rev_span.file), c.source.rev_span);
    let at = At {
        c,
        location,
        full_sha: &full_sha,
    };
    let (field, after, version, changed) = match &c.source.rev {
        Rev::Ref(current) => by_ref(r, &at, node, current)?,
        Rev::Version(current) => by_version(r, &at, version, current, raw)?,
    };
    let mut projected = node.clone();
    projected.source.repo = c.source.repo.clone();
    projected.source.dir = c.source.dir.clone();
    projected.source.r#ref = (field == PinField::Ref).then(|| after.clone());
    projected.source.version = version.to_string();
    Ok(Target {
        component: c,
        field,
        before: raw.to_string(),
        after,
        version,
        changed,
        node: projected,
    })
}

/// How the target will pin a source: the field, what it will say, the version and
/// whether it changes.
type Pin = (PinField, String, semver::Version, bool);

/// The lockfile's version and full commit SHA of `c`.
fn recorded(
    r: &Resolving<'_>,
    c: &Component,
    node: &LockNode,
) -> Result<(semver::Version, String), Problem> {
    let (shown, text) = (&r.source.shown, &r.source.text);
    let commit = &node.source.commit;
    let full_sha = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    let version = semver::Version::parse(&node.source.version);
    match (version, full_sha) {
        (Ok(v), true) => Ok((v, commit.to_lowercase())),
        (Err(_), true) => Err(lock_problem(
            shown,
            text,
            &c.name,
            &node.source.version,
            format!("the version of `{}` is not a semantic version", c.name),
        )),
        (_, false) => Err(lock_problem(
            shown,
            text,
            &c.name,
            commit,
            format!("the commit of `{}` is not a full commit SHA", c.name),
        )),
    }
}

/// Branch mode: the commit itself, which must be in the target's repository.
fn by_ref(r: &Resolving<'_>, at: &At<'_>, node: &LockNode, current: &str) -> Result<Pin, Problem> {
    let (c, full_sha) = (at.c, at.full_sha);
    let same_repo = if node.source.repo == c.source.repo {
        String::new()
    } else {
        format!(" (the lockfile's is `{}`)", node.source.repo)
    };
    let pinned = match r
        .git
        .pin(at.location, &spec_of(c, RevSpec::Ref(full_sha), None))
    {
        Ok(p) => p,
        Err(GitError::UnknownRef { .. }) => {
            return Err(problem(
                r.project,
                c.source.repo_span,
                format!(
                    "commit `{full_sha}` of `{}` is not in `{}`{same_repo}",
                    c.name, c.source.repo
                ),
                "not in this repository",
                Some(format!(
                "push the commit to this repository, or point `repo:` at the one `{}` built from",
                r.source.lock.environment
            )),
            ))
        }
        Err(e) => return Err(unresolved(r.project, c, e)),
    };
    let changed = current != full_sha;
    Ok((PinField::Ref, full_sha.to_string(), pinned.version, changed))
}

/// Version mode: the version whose tag is the commit, or one released on it since.
fn by_version(
    r: &Resolving<'_>,
    at: &At<'_>,
    mut version: semver::Version,
    current: &semver::Version,
    raw: &str,
) -> Result<Pin, Problem> {
    let (c, full_sha, project) = (at.c, at.full_sha, r.project);
    let no_tag = |found: String, version: &semver::Version| {
        let mut release = version.clone();
        release.pre = semver::Prerelease::EMPTY;
        problem(
            project,
            c.source.rev_span,
            format!(
                "`{}` cannot be pinned by version: commit `{full_sha}` has no version tag ({found})",
                c.name
            ),
            &format!("`{}` pins versions", project.graph.environment.name),
            Some(format!(
                "the lockfile has `{}` at {version}; tag that commit as a release (for example `{}`), build `{}` again and promote that lockfile",
                c.name,
                tag_name(c.source.version_tags.as_deref(), &release),
                r.source.lock.environment
            )),
        )
    };
    let recorded = match r
        .git
        .pin(at.location, &spec_of(c, RevSpec::Version(&version), None))
    {
        Ok(p) if p.commit == full_sha => Ok(()),
        Ok(p) => Err(format!(
            "the tag of {version} is commit `{}`",
            short_sha(&p.commit)
        )),
        Err(GitError::UnknownRef { .. }) => Err(format!(
            "no {}",
            version_tag(c.source.version_tags.as_deref(), &version)
        )),
        Err(e) => return Err(unresolved(project, c, e)),
    };
    if let Err(found) = recorded {
        // Released since the lockfile was written (`cascade release tag`): the
        // highest version tagged on the very commit, or on its changelog commit
        // (one parent, this commit, and the same exported files).
        let filter = git_filter(&c.recipe);
        match r.git.released_versions(
            at.location,
            full_sha,
            c.source.dir.as_deref(),
            filter.as_ref(),
            c.source.version_tags.as_deref(),
        ) {
            Ok(tagged) => match tagged.into_iter().max() {
                Some(v) => version = v,
                None => return Err(no_tag(found, &version)),
            },
            Err(e) => return Err(unresolved(project, c, e)),
        }
    }
    let written = if raw.starts_with('v') {
        format!("v{version}")
    } else {
        version.to_string()
    };
    let changed = *current != version;
    Ok((PinField::Version, written, version, changed))
}

fn unresolved(project: &Project, c: &Component, e: GitError) -> Problem {
    problem(
        project,
        c.source.repo_span,
        format!("the source of `{}` cannot be resolved: {e}", c.name),
        "this repository",
        None,
    )
}

fn lock_problem(shown: &str, text: &str, node: &str, needle: &str, message: String) -> Problem {
    Box::new(LockfileProblem::at(
        shown, text, node, needle, message, "here", None,
    ))
}

/// The value at `span` without the quotes around it, if the span includes them.
fn raw_value(text: &str, span: Span) -> &str {
    let s = text.get(span.offset..span.offset + span.len).unwrap_or("");
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

/// What replaces the bytes at `span` so the file says `value`: in the same quotes as
/// before when the span includes quotes; quoted when a plain scalar would not read as a
/// string (an all-digit SHA is an integer to YAML, `1234e56` a float).
fn replacement(text: &str, span: Span, value: &str) -> String {
    let s = text.get(span.offset..span.offset + span.len).unwrap_or("");
    let quote = ['"', '\'']
        .into_iter()
        .find(|q| s.len() >= 2 && s.starts_with(*q) && s.ends_with(*q));
    let quoted_outside =
        span.offset > 0 && matches!(text.as_bytes().get(span.offset - 1), Some(b'"' | b'\''));
    match quote {
        Some(q) => format!("{q}{value}{q}"),
        None if quoted_outside => value.to_string(),
        None if reads_as_number(value) => format!("\"{value}\""),
        None => value.to_string(),
    }
}

fn reads_as_number(v: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(v)
        || v.split_once(['e', 'E'])
            .is_some_and(|(m, e)| digits(m) && digits(e.trim_start_matches(['+', '-'])))
}

/// `text` with each span replaced (the spans do not overlap).
fn apply(text: &str, edits: &[(Span, String)]) -> String {
    let mut sorted: Vec<&(Span, String)> = edits.iter().collect();
    sorted.sort_by_key(|(s, _)| s.offset);
    let mut out = String::with_capacity(text.len() + 64 * edits.len());
    let mut at = 0;
    for (span, with) in sorted {
        out.push_str(&text[at..span.offset]);
        out.push_str(with);
        at = span.offset + span.len;
    }
    out.push_str(&text[at..]);
    out
}

/// Loads the rewritten target and checks it pins what was written.
fn reads_back(opts: &PromoteOptions, targets: &[Target<'_>]) -> Result<(), String> {
    let project = load(&opts.project, &opts.to).map_err(|e| {
        let mut s = e.to_string();
        if let Some(related) = e.related() {
            for r in related {
                s.push_str(&format!("; {r}"));
            }
        }
        s
    })?;
    for t in targets {
        let c = project
            .graph
            .index_of(&t.component.name)
            .map(|i| &project.graph.components[i]);
        let expected = match t.field {
            PinField::Ref => Rev::Ref(t.after.clone()),
            PinField::Version => Rev::Version(t.version.clone()),
        };
        match c {
            Some(c) if c.source.rev == expected => {}
            _ => {
                return Err(format!(
                    "`{}` does not read back as `{}: {}`",
                    t.component.name, t.field, t.after
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_core::FileId;

    fn span(text: &str, value: &str) -> Span {
        Span::new(FileId(0), text.find(value).unwrap(), value.len())
    }

    #[test]
    fn replacements_keep_quotes_and_quote_what_would_read_as_a_number() {
        let t = "a: { ref: develop }\n";
        assert_eq!(replacement(t, span(t, "develop"), "abc"), "abc");
        let t = "a: { ref: \"develop\" }\n";
        assert_eq!(replacement(t, span(t, "\"develop\""), "abc"), "\"abc\"");
        assert_eq!(replacement(t, span(t, "develop"), "abc"), "abc");
        let t = "a: { ref: develop }\n";
        assert_eq!(
            replacement(t, span(t, "develop"), "1234567890"),
            "\"1234567890\""
        );
        assert_eq!(replacement(t, span(t, "develop"), "1234e56"), "\"1234e56\"");
        assert_eq!(replacement(t, span(t, "develop"), "12a4e56"), "12a4e56");
    }

    #[test]
    fn edits_replace_exactly_their_spans() {
        let t = "# keep\nx: { ref: a }   # note\n\ny: { ref: bb }\n";
        let edits = vec![
            (span(t, "bb"), "cccc".to_string()),
            (
                Span::new(FileId(0), t.find("ref: a").unwrap() + 5, 1),
                "dd".to_string(),
            ),
        ];
        assert_eq!(
            apply(t, &edits),
            "# keep\nx: { ref: dd }   # note\n\ny: { ref: cccc }\n"
        );
    }
}
