//! [IO] `cascade release plan` and `cascade release tag`: the next version of every
//! component of one lockfile, from the conventional commits since its last release, and
//! the annotated tags that make those versions, on exactly the commits the lockfile
//! built, in every repository at once.
//!
//! `plan`, per component of the lockfile, in build order:
//! 1. the history since the highest release tag reachable from the lockfile's commit
//!    (`Git::history`, by the source's `version_tags:` pattern);
//! 2. each commit read as a conventional commit (`cascade_git::conventional`): merges
//!    count only with a conventional subject of their own, other messages are counted and
//!    ignored; the largest bump wins;
//! 3. the proposal: the commit's own tag when it already has one of the channel (a
//!    released commit stays released: `release tag` twice tags once); else the last
//!    release bumped, and with `--pre CHANNEL` its next `-CHANNEL.N`; else, without a
//!    releasable commit, the lockfile's version, untagged;
//! 4. the proposed set against the compatibility matrix (the rules' spans kept for the
//!    CLI, the conflicts as data).
//!
//! `tag` plans, refuses a plan with conflicts, then checks every tag it would create
//! before creating any: a tag that exists on the same commit is kept, one on another
//! commit refuses the whole release. Tags are then created; if one fails, those already
//! created are deleted (all repositories or none). With `push`, the release's tags are
//! pushed per repository afterwards. Last, the environment's `notify:` hooks get a
//! `release` event.
//!
//! A recipe's `changelog:` file must be left out of its source filter (`plan` reports it
//! otherwise, and `tag` refuses): `tag` then writes the section into it in a commit on
//! top of the built commit, checks that commit exports the built files, tags it instead,
//! and moves the lockfile's branch to it when the branch still points at the built
//! commit and is not checked out. Staging then builds the same trees from the cache. A
//! tag on such a commit ([`cascade_git::Git::is_changelog_commit`]) counts as a tag on
//! the built commit, so a second `tag` writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cascade_git::conventional::{self, Bump, PreMajor};
use cascade_git::{BranchState, Git, TagState};
use cascade_lock::Lockfile;
use cascade_manifest::Component;
use cascade_notify::Delivery;
use miette::{Diagnostic, NamedSource, SourceSpan};
use semver::Version;

use crate::lockfiles::read_lockfile;
use crate::notify::{notify, EventComponent, EventKind, NotifyEvent};
use crate::pin::{git_filter, locate, tag_name};
use crate::{load, short_sha, Error, Project};

pub struct ReleaseOptions {
    pub project: PathBuf,
    /// The environment whose newest lockfile is released; with `lock`, optional, and
    /// then it must be the lockfile's.
    pub env: Option<String>,
    pub lock: Option<PathBuf>,
    /// Remote repositories are mirrored in `<store>/git`.
    pub store: PathBuf,
    /// A pre-release channel (`rc`): `X.Y.Z-rc.N`.
    pub pre: Option<String>,
    pub rules: PreMajor,
}

/// `release plan`'s report; the `--json` schema, and part of `release tag`'s.
#[derive(Debug, serde::Serialize)]
pub struct ReleasePlan {
    pub environment: String,
    pub lockfile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    /// The lockfile's components that the environment has, in build order.
    pub components: Vec<ComponentRelease>,
    /// Rules of the compatibility matrix the proposed versions break.
    pub conflicts: Vec<Conflict>,
    /// The same conflicts as one diagnostic, each rule's range underlined, for the CLI.
    #[serde(skip)]
    pub diagnostics: Option<ReleaseRefusal>,
}

impl ReleasePlan {
    /// The components that get a new tag.
    pub fn releases(&self) -> impl Iterator<Item = &ComponentRelease> {
        self.components
            .iter()
            .filter(|c| c.status == ReleaseStatus::Release)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// A new version, to be tagged on the lockfile's commit (or its changelog commit).
    Release,
    /// The lockfile's commit (or its changelog commit) already carries a version tag of
    /// the channel.
    Released,
    /// No releasable commit since the last release: the version stays, nothing is tagged.
    NoRelease,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ComponentRelease {
    pub name: String,
    /// As the environment writes it.
    pub repo: String,
    /// The lockfile's commit, where the tag goes (for a recipe with `changelog:`, on the
    /// changelog commit made on top of it).
    pub commit: String,
    /// The lockfile's version (derived in branch mode: `0.6.1-dev.3`).
    pub current: String,
    /// The highest release tagged below the commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_release: Option<String>,
    pub next: String,
    pub bump: Bump,
    pub status: ReleaseStatus,
    /// The tag that carries `next` (to create, or found); none for `no_release`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The commits that decided the bump (conventional, with a bump), newest first.
    pub commits: Vec<ReleaseCommit>,
    /// Conventional commits that bump nothing (`chore:`, `docs:`…).
    pub hidden: usize,
    /// Commits whose message is not conventional (merges without a conventional
    /// subject included).
    pub ignored: usize,
    /// The changelog section of this release (Markdown), empty without one.
    pub changelog: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReleaseCommit {
    pub sha: String,
    pub short: String,
    pub subject: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub breaking: bool,
    pub bump: Bump,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Conflict {
    pub component: String,
    pub upstream: String,
    pub range: String,
    pub version: String,
}

/// `release tag`'s report.
#[derive(Debug, serde::Serialize)]
pub struct TagReport {
    pub plan: ReleasePlan,
    /// One per release tag, in build order.
    pub tags: Vec<TagOutcome>,
    /// Each remote pushed to (with `--push`): `scheme://host` of a network URL, a local
    /// path or `file://` URL as it is.
    pub pushed: Vec<String>,
    /// What each `notify:` hook made of the release event.
    pub notifications: Vec<Delivery>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TagOutcome {
    pub component: String,
    pub tag: String,
    /// The commit tagged: the lockfile's, or its changelog commit.
    pub commit: String,
    pub version: String,
    pub action: TagAction,
    /// The changelog written for this release (a recipe's `changelog:`), when this run
    /// wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changelog: Option<ChangelogWrite>,
}

/// A changelog commit `release tag` made: the built commit with the recipe's changelog
/// file updated, and nothing else.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChangelogWrite {
    /// The file, from the repository's root.
    pub file: String,
    /// The lockfile's commit: the changelog commit's one parent.
    pub parent: String,
    pub branch: BranchMove,
}

/// What became of the lockfile's `ref:` after a changelog commit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BranchMove {
    /// Moved from the built commit to the changelog commit.
    Moved { branch: String },
    /// Left alone: it has moved on since the build (the tag still names the changelog
    /// commit, which no branch holds).
    MovedOn { branch: String, head: String },
    /// Left alone: a work tree has it checked out, and moving it would leave the work
    /// tree behind.
    CheckedOut { branch: String },
    /// The lockfile's ref is not a local branch (a tag, a commit, version mode).
    NotABranch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TagAction {
    Created,
    /// The tag was there already, on this commit.
    Existing,
}

/// Why a release was refused: a summary, then each problem as its own diagnostic.
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct ReleaseRefusal {
    /// `cascade::release_refused` (`tag`), `cascade::release_conflicts` (`plan`'s report).
    pub code: &'static str,
    pub summary: String,
    pub problems: Vec<Box<dyn Diagnostic + Send + Sync>>,
}

impl Diagnostic for ReleaseRefusal {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(
            self.problems.iter().map(|d| &**d as &dyn Diagnostic),
        ))
    }
}

/// A release problem pointing into the environment file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(cascade::release))]
struct ReleaseProblem {
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

fn problem(project: &Project, c: &Component, message: String, label: &str, help: &str) -> Problem {
    let span = c.source.repo_span;
    Box::new(ReleaseProblem {
        message,
        src: project.db.named_source(span.file),
        span: (span.offset, span.len).into(),
        label: label.to_string(),
        help: Some(help.to_string()),
    })
}

/// `cascade release plan`; see the module documentation.
pub fn release_plan(opts: &ReleaseOptions) -> Result<ReleasePlan, Error> {
    let git = Git::reading(crate::layout::store_git_dir(&opts.store));
    let (plan, _, _) = plan_with(opts, &git)?;
    Ok(plan)
}

/// The plan, the project it was made against (for `tag`'s diagnostics) and the
/// lockfile's `ref:` of each component (the branch a changelog commit moves).
#[allow(clippy::type_complexity)]
fn plan_with(
    opts: &ReleaseOptions,
    git: &Git,
) -> Result<(ReleasePlan, Project, BTreeMap<String, Option<String>>), Error> {
    if let Some(channel) = opts
        .pre
        .as_deref()
        .filter(|c| !conventional::valid_channel(c))
    {
        return Err(Error::BadChannel {
            channel: channel.to_string(),
        });
    }
    let (lock, shown) = lockfile(opts)?;
    let refs = lock
        .nodes
        .iter()
        .map(|(name, n)| (name.clone(), n.source.r#ref.clone()))
        .collect();
    let project = load(&opts.project, &lock.environment)?;
    // Steps 1 to 3, per component.
    let (components, problems) = proposals(opts, git, &project, &lock);
    if !problems.is_empty() {
        return Err(refused(
            format!(
                "`{shown}` cannot be released: {} source{} cannot be read",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            problems,
        ));
    }
    // 4. The proposed set against the compatibility matrix, and the changelogs `tag`
    // would write.
    let (conflicts, conflict_problems) = conflicts(&project, &components);
    let changelog_problems = changelog_problems(&project, &components);
    let diagnostics = plan_refusal(conflict_problems, changelog_problems);
    Ok((
        ReleasePlan {
            environment: lock.environment.clone(),
            lockfile: shown,
            pre: opts.pre.clone(),
            components,
            conflicts,
            diagnostics,
        },
        project,
        refs,
    ))
}

/// Steps 1 to 3 of the module documentation for each of the lockfile's components the
/// environment has, in build order; a history that cannot be read is a problem.
fn proposals(
    opts: &ReleaseOptions,
    git: &Git,
    project: &Project,
    lock: &Lockfile,
) -> (Vec<ComponentRelease>, Vec<Problem>) {
    let env_dir = project.environment_dir();
    let mut components = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    for c in &project.graph.components {
        let Some(node) = lock.nodes.get(&c.name) else {
            continue;
        };
        let location = locate(&c.source.repo, &env_dir);
        let history = match history(git, &location, c, &node.source.commit) {
            Ok(h) => h,
            Err(e) => {
                problems.push(problem(
                    project,
                    c,
                    format!("the history of `{}` cannot be read: {e}", c.name),
                    "this repository",
                    "the lockfile's commit must be in the repository the environment names",
                ));
                continue;
            }
        };
        components.push(propose(
            c,
            &node.source.commit,
            &node.source.version,
            &history,
            opts,
        ));
    }
    (components, problems)
}

/// Step 1 for one component: the history since the highest release tag reachable from
/// `commit`.
fn history(
    git: &Git,
    location: &str,
    c: &Component,
    commit: &str,
) -> Result<cascade_git::History, cascade_git::GitError> {
    let mut history = git.history(
        location,
        commit,
        c.source.dir.as_deref(),
        c.source.version_tags.as_deref(),
    )?;
    if c.recipe.changelog.is_some() {
        // `release tag` tags the changelog commit on top of the built one: that
        // counts as tagged on the commit, or a second run would propose it again.
        let filter = git_filter(&c.recipe);
        if let Ok(v) = git.released_versions(
            location,
            commit,
            c.source.dir.as_deref(),
            filter.as_ref(),
            c.source.version_tags.as_deref(),
        ) {
            history.on_commit = v;
        }
    }
    Ok(history)
}

/// Step 4: the rules of the compatibility matrix the proposed versions break, as data
/// and as problems.
fn conflicts(project: &Project, components: &[ComponentRelease]) -> (Vec<Conflict>, Vec<Problem>) {
    let versions: BTreeMap<String, Version> = components
        .iter()
        .filter_map(|c| Some((c.name.clone(), Version::parse(&c.next).ok()?)))
        .collect();
    let mut conflicts = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    for rule in &project.graph.compatibility {
        let Some(v) = versions.get(&rule.upstream) else {
            continue;
        };
        if rule.range.matches(v) {
            continue;
        }
        conflicts.push(Conflict {
            component: rule.component.clone(),
            upstream: rule.upstream.clone(),
            range: rule.range.to_string(),
            version: v.to_string(),
        });
        problems.push(conflict_problem(project, rule, v, components));
    }
    (conflicts, problems)
}

/// The changelog files of the components to release that their source filters export.
fn changelog_problems(project: &Project, components: &[ComponentRelease]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for r in components
        .iter()
        .filter(|r| r.status != ReleaseStatus::NoRelease)
    {
        let Some(c) = project
            .graph
            .index_of(&r.name)
            .map(|i| &project.graph.components[i])
        else {
            continue;
        };
        if let Some(p) = changelog_problem(project, c) {
            problems.push(p);
        }
    }
    problems
}

/// The plan's conflicts and changelog problems as one diagnostic, if there are any.
fn plan_refusal(conflicts: Vec<Problem>, changelogs: Vec<Problem>) -> Option<ReleaseRefusal> {
    let n_conflicts = conflicts.len();
    let n_changelogs = changelogs.len();
    let mut problems = conflicts;
    problems.extend(changelogs);
    (!problems.is_empty()).then(|| {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        if n_conflicts > 0 {
            parts.push(format!(
                "the proposed versions break {n_conflicts} rule{} of the compatibility matrix",
                plural(n_conflicts)
            ));
        }
        if n_changelogs > 0 {
            parts.push(format!(
                "{n_changelogs} changelog file{} would change what is built",
                plural(n_changelogs)
            ));
        }
        ReleaseRefusal {
            code: if n_changelogs == 0 {
                "cascade::release_conflicts"
            } else {
                "cascade::release_problems"
            },
            summary: parts.join("; "),
            problems,
        }
    })
}

/// A recipe's `changelog:` that its source filter exports: writing it would give the
/// release commit other content than the lockfile built, so staging would not build
/// from the cache. Underlined in the recipe.
fn changelog_problem(project: &Project, c: &Component) -> Option<Problem> {
    let cl = c.recipe.changelog.as_ref()?;
    // A filter that does not compile was refused when the project loaded.
    let exported = git_filter(&c.recipe).is_none_or(|f| f.keeps(&cl.path).unwrap_or(true));
    if !exported {
        return None;
    }
    let span = cl.span;
    Some(Box::new(ReleaseProblem {
        message: format!(
            "`{}` is part of the source of `{}`, so writing it would change what staging builds",
            cl.path, c.name
        ),
        src: project.db.named_source(span.file),
        span: (span.offset, span.len).into(),
        label: "exported and keyed".to_string(),
        help: Some(format!("add it to `source: {{ exclude: [{}] }}`", cl.path)),
    }))
}

/// One broken rule, underlined in `graph/compatibility.yaml`, naming the commits that
/// made the upstream's bump.
fn conflict_problem(
    project: &Project,
    rule: &cascade_manifest::Constraint,
    version: &Version,
    components: &[ComponentRelease],
) -> Problem {
    let upstream = components.iter().find(|c| c.name == rule.upstream);
    let why = upstream
        .and_then(|u| {
            let top = u.commits.iter().filter(|c| c.bump == u.bump);
            let named: Vec<String> = top
                .map(|c| format!("`{} {}`", c.short, c.subject))
                .collect();
            (!named.is_empty()).then(|| {
                format!(
                    "{} is a {} bump because of {}",
                    version,
                    bump_name(u.bump),
                    named.join(", ")
                )
            })
        })
        .unwrap_or_else(|| format!("{version} is the proposed version"));
    let span = rule.span;
    Box::new(ReleaseProblem {
        message: format!(
            "releasing `{}` {version} breaks the range `{}` that `{}` requires",
            rule.upstream, rule.range, rule.component
        ),
        src: project.db.named_source(span.file),
        span: (span.offset, span.len).into(),
        label: format!(
            "`{}` needs `{}` in this range",
            rule.component, rule.upstream
        ),
        help: Some(format!(
            "{why}; once `{0}` works with it, widen this range (and release `{0}` too)",
            rule.component
        )),
    })
}

fn bump_name(b: Bump) -> &'static str {
    match b {
        Bump::None => "no",
        Bump::Patch => "patch",
        Bump::Minor => "minor",
        Bump::Major => "major",
    }
}

/// The lockfile named, or `env`'s newest, and how it is shown.
fn lockfile(opts: &ReleaseOptions) -> Result<(Lockfile, String), Error> {
    let (path, shown) =
        match (&opts.lock, &opts.env) {
            (Some(l), _) => (l.clone(), l.display().to_string()),
            (None, Some(env)) => crate::lockfiles::newest_shown(&opts.project, env)?,
            (None, None) => return Err(Error::UnknownEnvironment {
                name: String::new(),
                help: "name the environment to release (`--env ENV`) or a lockfile (`--lock FILE`)"
                    .to_string(),
            }),
        };
    let lock = read_lockfile(&path, &shown)?;
    if let Some(env) = opts.env.as_ref().filter(|e| **e != lock.environment) {
        return Err(Error::LockfileEnvironment {
            from: env.clone(),
            lockfile: shown,
            recorded: lock.environment.clone(),
        });
    }
    Ok((lock, shown))
}

/// Step 3 of the module documentation for one component.
fn propose(
    c: &Component,
    commit: &str,
    current: &str,
    history: &cascade_git::History,
    opts: &ReleaseOptions,
) -> ComponentRelease {
    let mut commits = Vec::new();
    let (mut hidden, mut ignored) = (0, 0);
    for info in &history.commits {
        match conventional::parse(&info.message) {
            Some(cc) if cc.bump() > Bump::None => commits.push(ReleaseCommit {
                sha: info.sha.clone(),
                short: short_sha(&info.sha).to_string(),
                subject: info.message.lines().next().unwrap_or_default().to_string(),
                kind: cc.kind.clone(),
                scope: cc.scope.clone(),
                breaking: cc.breaking,
                bump: cc.bump(),
            }),
            Some(_) => hidden += 1,
            None => ignored += 1,
        }
    }
    let bump = commits.iter().map(|c| c.bump).max().unwrap_or(Bump::None);
    let channel = opts.pre.as_deref();
    // A tag of the channel already on the commit: released (stable tags count on every
    // channel; an `rc` tag does not make a stable release).
    let tagged = history
        .on_commit
        .iter()
        .filter(|v| {
            v.pre.is_empty()
                || channel.is_some_and(|ch| v.pre.as_str().split('.').next() == Some(ch))
        })
        .max();
    let base = history
        .release
        .as_ref()
        .map_or_else(|| Version::new(0, 0, 0), |(v, _)| v.clone());
    let pattern = c.source.version_tags.as_deref();
    let (status, next) = match (tagged, bump) {
        (Some(v), _) => (ReleaseStatus::Released, v.clone()),
        (None, Bump::None) => (
            ReleaseStatus::NoRelease,
            Version::parse(current).unwrap_or_else(|_| base.clone()),
        ),
        (None, bump) => {
            let release = conventional::bumped(&base, bump, opts.rules);
            let next = match channel {
                Some(ch) => {
                    conventional::next_pre(&release, ch, &history.pre_releases).unwrap_or(release)
                }
                None => release,
            };
            (ReleaseStatus::Release, next)
        }
    };
    let tag = (status != ReleaseStatus::NoRelease).then(|| tag_name(pattern, &next));
    let changelog = if status == ReleaseStatus::NoRelease {
        String::new()
    } else {
        changelog(&next, &commits)
    };
    ComponentRelease {
        name: c.name.clone(),
        repo: c.source.repo.clone(),
        commit: commit.to_string(),
        current: current.to_string(),
        last_release: history.release.as_ref().map(|(v, _)| v.to_string()),
        next: next.to_string(),
        bump,
        status,
        tag,
        commits,
        hidden,
        ignored,
        changelog,
    }
}

/// A changelog section, release-please's headings in its order: `## <version>`, then
/// breaking changes, features, bug fixes, performance improvements and reverts, each
/// line `* **scope:** subject (short sha)`. No date: the same release gives the same
/// text.
pub fn changelog(version: &Version, commits: &[ReleaseCommit]) -> String {
    let mut s = format!("## {version}\n");
    const TITLES: [&str; 5] = [
        "⚠ BREAKING CHANGES",
        "Features",
        "Bug Fixes",
        "Performance Improvements",
        "Reverts",
    ];
    // Which section a commit goes in: breaking changes first, whatever their type.
    let section = |c: &ReleaseCommit| match c.kind.as_str() {
        _ if c.breaking => Some(0),
        "feat" | "feature" => Some(1),
        "fix" => Some(2),
        "perf" => Some(3),
        "revert" => Some(4),
        _ => None,
    };
    for (i, title) in TITLES.iter().enumerate() {
        let lines: Vec<String> = commits
            .iter()
            .filter(|c| section(c) == Some(i))
            .map(|c| {
                let description = conventional::parse(&c.subject)
                    .map_or_else(|| c.subject.clone(), |p| p.description);
                match &c.scope {
                    Some(scope) => format!("* **{scope}:** {description} ({})\n", c.short),
                    None => format!("* {description} ({})\n", c.short),
                }
            })
            .collect();
        if !lines.is_empty() {
            s.push_str(&format!("\n### {title}\n\n"));
            s.extend(lines);
        }
    }
    s
}

/// A tag `release tag` creates, and the changelog file it writes first (from the
/// repository's root) when the recipe asks for one.
struct Creation<'a> {
    location: String,
    release: &'a ComponentRelease,
    component: &'a Component,
    tag: String,
    changelog: Option<String>,
    /// The lockfile's `ref:` (branch mode), the branch a changelog commit moves.
    built_ref: Option<String>,
}

/// What step 2 wrote so far, to take back if a later write fails.
#[derive(Default)]
struct Undo {
    /// (location, tag)
    tags: Vec<(String, String)>,
    /// (location, branch, built commit, changelog commit)
    branches: Vec<(String, String, String, String)>,
}

impl Undo {
    fn undo(&self, git: &Git) {
        for (l, t) in &self.tags {
            let _ = git.delete_tag(l, t);
        }
        for (l, b, built, new) in &self.branches {
            let _ = git.move_branch(l, b, new, built);
        }
    }
}

/// The lockfile's `ref:` of `name`.
fn lock_ref(nodes: &BTreeMap<String, Option<String>>, name: &str) -> Option<String> {
    nodes.get(name).cloned().flatten()
}

/// Step 2 for one tag: the changelog commit when the recipe asks for one (checked to
/// export what the lockfile built), the tag, then the branch.
fn create(
    git: &Git,
    w: &Creation<'_>,
    done: &mut Undo,
) -> Result<TagOutcome, cascade_git::GitError> {
    let r = w.release;
    let message = format!("{} {}\n\n{}", r.name, r.next, r.changelog);
    let Some(file) = &w.changelog else {
        git.create_tag(&w.location, &w.tag, &r.commit, &message)?;
        done.tags.push((w.location.clone(), w.tag.clone()));
        return Ok(TagOutcome {
            component: r.name.clone(),
            tag: w.tag.clone(),
            commit: r.commit.clone(),
            version: r.next.clone(),
            action: TagAction::Created,
            changelog: None,
        });
    };
    let old = git.read_file(&w.location, &r.commit, file)?;
    let content = prepend_section(old.as_deref(), &r.changelog);
    let commit = git.commit_file(
        &w.location,
        &r.commit,
        file,
        content.as_bytes(),
        &format!("chore(release): {} {}\n", r.name, r.next),
    )?;
    let filter = git_filter(&w.component.recipe);
    // A guard: the plan checked that the filter leaves the file out, so this holds.
    if !git.is_changelog_commit(
        &w.location,
        &commit,
        &r.commit,
        w.component.source.dir.as_deref(),
        filter.as_ref(),
    )? {
        return Err(cascade_git::GitError::CannotCommitFile {
            repo: r.repo.clone(),
            path: file.clone(),
            reason: "the changelog commit would export other files than the lockfile built".into(),
        });
    }
    git.create_tag(&w.location, &w.tag, &commit, &message)?;
    done.tags.push((w.location.clone(), w.tag.clone()));
    let branch = match &w.built_ref {
        None => BranchMove::NotABranch,
        Some(b) => match git.branch_state(&w.location, b)? {
            BranchState::NotABranch => BranchMove::NotABranch,
            BranchState::Head {
                checked_out: true, ..
            } => BranchMove::CheckedOut { branch: b.clone() },
            BranchState::Head { commit: head, .. } if head != r.commit => BranchMove::MovedOn {
                branch: b.clone(),
                head,
            },
            BranchState::Head { .. } => {
                git.move_branch(&w.location, b, &r.commit, &commit)?;
                done.branches.push((
                    w.location.clone(),
                    b.clone(),
                    r.commit.clone(),
                    commit.clone(),
                ));
                BranchMove::Moved { branch: b.clone() }
            }
        },
    };
    Ok(TagOutcome {
        component: r.name.clone(),
        tag: w.tag.clone(),
        commit,
        version: r.next.clone(),
        action: TagAction::Created,
        changelog: Some(ChangelogWrite {
            file: file.clone(),
            parent: r.commit.clone(),
            branch,
        }),
    })
}

/// A changelog file with `section` as its newest entry: after a first `# Changelog`
/// heading when the file starts with one, else at the top; a missing file becomes the
/// heading and the section.
pub fn prepend_section(old: Option<&[u8]>, section: &str) -> String {
    const HEADING: &str = "# Changelog";
    let Some(old) = old else {
        return format!("{HEADING}\n\n{section}");
    };
    let old = String::from_utf8_lossy(old);
    let first = old.lines().next().unwrap_or_default();
    if first.trim_end() == HEADING {
        let rest = old[first.len()..].trim_start_matches(['\r', '\n']);
        if rest.is_empty() {
            return format!("{first}\n\n{section}");
        }
        return format!("{first}\n\n{section}\n{rest}");
    }
    if old.is_empty() {
        return section.to_string();
    }
    format!("{section}\n{old}")
}

fn refused(summary: String, problems: Vec<Problem>) -> Error {
    Error::Release(Box::new(ReleaseRefusal {
        code: "cascade::release_refused",
        summary,
        problems,
    }))
}

/// `cascade release tag`; see the module documentation.
pub fn release_tag(opts: &ReleaseOptions, push: bool) -> Result<TagReport, Error> {
    let git = Git::new(crate::layout::store_git_dir(&opts.store));
    let (mut plan, project, lock_nodes) = plan_with(opts, &git)?;
    if let Some(d) = plan.diagnostics.take() {
        return Err(refused(
            format!("`{}` cannot be released: {}", plan.lockfile, d.summary),
            d.problems,
        ));
    }
    let tagging = Tagging {
        git: &git,
        project: &project,
        env_dir: project.environment_dir(),
        lock_nodes: &lock_nodes,
        push,
    };

    // 1. Every tag checked before any is created.
    let Checked {
        mut outcomes,
        to_create,
        problems,
        ..
    } = tagging.check(&plan);
    if !problems.is_empty() {
        let n = problems.len();
        return Err(refused(
            format!(
                "`{}` cannot be released: {n} tag{} cannot be created; no tag was created",
                plan.lockfile,
                if n == 1 { "" } else { "s" }
            ),
            problems,
        ));
    }

    // 2. Created, or none of them (changelog commits with their tags, and branches put
    // back).
    outcomes.extend(create_all(&git, &to_create)?);
    // Build order, whichever way each tag was found.
    let order: BTreeMap<&str, usize> = plan
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    outcomes.sort_by_key(|o| order.get(o.component.as_str()).copied());

    // 3. Pushed, per repository (created tags stay if a push fails: pushing again is
    // the way on).
    let pushed = if push {
        tagging.push(&outcomes)?
    } else {
        Vec::new()
    };

    // 4. The hooks.
    let notifications = release_notifications(&project, &plan, &outcomes);
    Ok(TagReport {
        plan,
        tags: outcomes,
        pushed,
        notifications,
    })
}

/// What `release tag`'s steps share.
struct Tagging<'a> {
    git: &'a Git,
    project: &'a Project,
    env_dir: PathBuf,
    /// The lockfile's `ref:` of each component.
    lock_nodes: &'a BTreeMap<String, Option<String>>,
    push: bool,
}

/// What step 1 found: the tags already there, the tags to create, and why some cannot
/// be.
#[derive(Default)]
struct Checked<'a> {
    outcomes: Vec<TagOutcome>,
    to_create: Vec<Creation<'a>>,
    problems: Vec<Problem>,
    /// (location, tag) → the commit it is asked for on.
    claimed: BTreeMap<(String, String), String>,
}

impl<'a> Tagging<'a> {
    fn component(&self, name: &str) -> Option<&'a Component> {
        self.project
            .graph
            .index_of(name)
            .map(|i| &self.project.graph.components[i])
    }

    /// Step 1: every tag of the plan checked, then the changelog commits they need.
    fn check(&self, plan: &'a ReleasePlan) -> Checked<'a> {
        let mut checked = Checked::default();
        for r in plan.components.iter().filter(|r| r.tag.is_some()) {
            self.check_one(r, &mut checked);
        }
        self.check_writers(&mut checked);
        checked
    }

    /// Step 1 for one release: its tag asked for once per repository, on a repository
    /// it can be made in, then looked up.
    fn check_one(&self, r: &'a ComponentRelease, checked: &mut Checked<'a>) {
        let (Some(c), Some(tag)) = (self.component(&r.name), r.tag.clone()) else {
            return;
        };
        let location = locate(&c.source.repo, &self.env_dir);
        // Two components of one repository asking for one tag on different commits.
        if let Some(other) = checked
            .claimed
            .insert((location.clone(), tag.clone()), r.commit.clone())
        {
            if other != r.commit {
                checked.problems.push(problem(
                    self.project,
                    c,
                    format!(
                        "tag `{tag}` of `{}` is asked for on two commits of this repository",
                        r.name
                    ),
                    "one repository",
                    "give each component of a monorepo its own `version_tags:` pattern, such as `web-v{version}`",
                ));
            }
            return;
        }
        // A mirror's tags exist only once they are pushed back to its URL.
        if !self.push && cascade_git::is_remote(&location) {
            checked.problems.push(problem(
                self.project,
                c,
                format!(
                    "`{}` is a remote repository: its tag `{tag}` can only be pushed",
                    r.name
                ),
                "a URL",
                "run `cascade release tag --push`, or tag a local clone",
            ));
            return;
        }
        self.look_up(r, c, location, tag, checked);
    }

    /// The release's tag as its repository has it: missing (to create), on the built
    /// commit or its changelog commit (kept), or elsewhere (a problem).
    fn look_up(
        &self,
        r: &'a ComponentRelease,
        c: &'a Component,
        location: String,
        tag: String,
        checked: &mut Checked<'a>,
    ) {
        let filter = git_filter(&c.recipe);
        let existing = |commit: String| TagOutcome {
            component: r.name.clone(),
            tag: tag.clone(),
            commit,
            version: r.next.clone(),
            action: TagAction::Existing,
            changelog: None,
        };
        match self.git.tag_state(&location, &tag) {
            Ok(TagState::Missing) => {
                let changelog = c.recipe.changelog.as_ref().map(|cl| {
                    let dir = c.source.dir.as_deref().map(|d| d.trim_matches('/'));
                    match dir.filter(|d| !d.is_empty() && *d != ".") {
                        Some(d) => format!("{d}/{}", cl.path),
                        None => cl.path.clone(),
                    }
                });
                checked.to_create.push(Creation {
                    location,
                    release: r,
                    component: c,
                    tag,
                    changelog,
                    built_ref: lock_ref(self.lock_nodes, &r.name),
                });
            }
            Ok(TagState::On(commit)) if commit == r.commit => {
                checked.outcomes.push(existing(commit))
            }
            // Made by an earlier `release tag` for a recipe with `changelog:`.
            Ok(TagState::On(commit))
                if c.recipe.changelog.is_some()
                    && self
                        .git
                        .is_changelog_commit(
                            &location,
                            &commit,
                            &r.commit,
                            c.source.dir.as_deref(),
                            filter.as_ref(),
                        )
                        .unwrap_or(false) =>
            {
                checked.outcomes.push(existing(commit))
            }
            Ok(TagState::On(commit)) => checked.problems.push(problem(
                self.project,
                c,
                format!(
                    "tag `{tag}` of `{}` exists on commit `{}`, not on `{}` that the lockfile built",
                    r.name,
                    short_sha(&commit),
                    short_sha(&r.commit)
                ),
                "tag on another commit",
                "a released version is never moved: build the tagged commit, or release the next version",
            )),
            Ok(TagState::NotACommit) => checked.problems.push(problem(
                self.project,
                c,
                format!("tag `{tag}` of `{}` exists and does not name a commit", r.name),
                "tag on another object",
                "a released version is never moved: delete the tag by hand if it is a mistake",
            )),
            Err(e) => checked.problems.push(problem(
                self.project,
                c,
                format!("the tags of `{}` cannot be read: {e}", r.name),
                "this repository",
                "check that the repository is readable",
            )),
        }
    }

    /// One changelog commit per built commit of a repository: two would each need the
    /// built commit as their parent, and the branch can only move to one of them.
    fn check_writers(&self, checked: &mut Checked<'a>) {
        let mut writers: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for w in checked.to_create.iter().filter(|w| w.changelog.is_some()) {
            let key = (w.location.as_str(), w.release.commit.as_str());
            if let Some(first) = writers.insert(key, &w.release.name) {
                checked.problems.push(problem(
                    self.project,
                    w.component,
                    format!(
                        "`{first}` and `{}` would both write a changelog commit on `{}` of this repository",
                        w.release.name,
                        short_sha(&w.release.commit)
                    ),
                    "one repository",
                    "keep `changelog:` in one of their recipes, or release them from different commits",
                ));
            }
        }
    }

    /// Step 3: the tags of `outcomes` pushed, per repository; each remote as shown.
    fn push(&self, outcomes: &[TagOutcome]) -> Result<Vec<String>, Error> {
        let mut pushed = Vec::new();
        // Location → (the repository as written, its tags).
        let mut by_repo: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for o in outcomes {
            if let Some(c) = self.component(&o.component) {
                by_repo
                    .entry(locate(&c.source.repo, &self.env_dir))
                    .or_insert_with(|| (c.source.repo.clone(), BTreeSet::new()))
                    .1
                    .insert(o.tag.clone());
            }
        }
        for (location, (repo, tags)) in by_repo {
            let tags: Vec<String> = tags.into_iter().collect();
            let url = self
                .git
                .push_tags(&location, &tags)
                .map_err(|source| Error::PushTags {
                    repo,
                    tags: tags
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    source: Box::new(source),
                })?;
            // A network URL may carry a token in its path; a local path or `file://`
            // URL does not, and its host part alone would say nothing.
            pushed.push(if url.contains("://") && !url.starts_with("file://") {
                cascade_notify::shown(&url)
            } else {
                url
            });
        }
        Ok(pushed)
    }
}

/// Step 2: every tag created, or none of them (what was written is taken back).
fn create_all(git: &Git, to_create: &[Creation<'_>]) -> Result<Vec<TagOutcome>, Error> {
    let mut outcomes = Vec::new();
    let mut done = Undo::default();
    for w in to_create {
        let r = w.release;
        match create(git, w, &mut done) {
            Ok(outcome) => outcomes.push(outcome),
            Err(source) => {
                done.undo(git);
                return Err(Error::Tagging {
                    component: r.name.clone(),
                    tag: w.tag.clone(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(outcomes)
}

/// Step 4: the environment's `notify:` hooks told of the release, when it created a
/// tag (a second `release tag` is silent).
fn release_notifications(
    project: &Project,
    plan: &ReleasePlan,
    outcomes: &[TagOutcome],
) -> Vec<Delivery> {
    let mut event = NotifyEvent::new(
        EventKind::Release,
        &plan.environment,
        format!(
            "released {}: {}",
            plan.environment,
            outcomes
                .iter()
                .map(|o| format!("{} {}", o.component, o.version))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    event.lockfile = Some(plan.lockfile.clone());
    event.components = outcomes
        .iter()
        .map(|o| EventComponent {
            name: o.component.clone(),
            version: Some(o.version.clone()),
            commit: Some(o.commit.clone()),
            tag: Some(o.tag.clone()),
        })
        .collect();
    if outcomes.iter().any(|o| o.action == TagAction::Created) {
        notify(&project.graph.environment.notify, &event)
    } else {
        // Nothing new was released: a second `release tag` is silent.
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::prepend_section;

    #[test]
    fn sections_go_first_under_the_heading() {
        let section = "## 0.2.0\n\n### Features\n\n* a (abc1234)\n";
        assert_eq!(
            prepend_section(None, section),
            format!("# Changelog\n\n{section}")
        );
        let old = b"# Changelog\n\n## 0.1.0\n\n* first\n";
        assert_eq!(
            prepend_section(Some(old), section),
            format!("# Changelog\n\n{section}\n## 0.1.0\n\n* first\n")
        );
        // No heading: the section on top, the file as it was below.
        assert_eq!(
            prepend_section(Some(b"## 0.1.0\n"), section),
            format!("{section}\n## 0.1.0\n")
        );
        assert_eq!(
            prepend_section(Some(b"# Changelog\n"), section),
            format!("# Changelog\n\n{section}")
        );
    }
}
