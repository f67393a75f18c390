//! [IO] pin: every source to an exact commit and tree, then the compatibility matrix
//! against the versions that pinning revealed. Every problem is collected and pointed
//! at its line in the environment file.

use std::collections::BTreeMap;
use std::path::Path;

use cascade_git::{Filter, Git, GitError, PinSpec, PinnedSource, RevSpec};
use cascade_manifest::{Component, Recipe, Rev, SourceDb};
use miette::{Diagnostic, NamedSource, SourceSpan};

use crate::{Error, Problems, Project};

/// One component's source, resolved.
#[derive(Clone, Debug)]
pub struct Pinned {
    /// Where git finds the repository: an absolute path or a URL.
    pub location: String,
    pub source: PinnedSource,
    /// The key format the node is keyed in (`cascade_core::KEY_VERSIONS`): the newest
    /// for a build, the lockfile's for a replay. It decides what the steps see of the
    /// source and what the key covers.
    pub key_format: u64,
}

/// A recipe's source filter as git applies it; `None` when it keeps every file.
pub fn git_filter(recipe: &Recipe) -> Option<Filter> {
    (!recipe.filter.is_empty()).then(|| Filter {
        include: recipe.filter.include.clone(),
        exclude: recipe.filter.exclude.clone(),
    })
}

/// How to pin `c` at `rev`: its `dir:` and `version_tags:`, and `filter` (the recipe's,
/// from [`git_filter`], where the content matters).
pub fn spec_of<'a>(c: &'a Component, rev: RevSpec<'a>, filter: Option<&'a Filter>) -> PinSpec<'a> {
    PinSpec {
        rev,
        dir: c.source.dir.as_deref(),
        filter,
        version_tags: c.source.version_tags.as_deref(),
    }
}

/// The tag that releases `v` under a `version_tags:` pattern (`v<version>` by default).
pub fn tag_name(pattern: Option<&str>, v: &semver::Version) -> String {
    pattern
        .unwrap_or("v{version}")
        .replace("{version}", &v.to_string())
}

/// The tag a version names under a source's `version_tags:` pattern, for messages.
pub fn version_tag(pattern: Option<&str>, v: &semver::Version) -> String {
    match pattern {
        Some(p) => format!("tag `{}`", p.replace("{version}", &v.to_string())),
        None => format!("tag `v{v}` or `{v}`"),
    }
}

/// A source problem that is not a missing ref: label on the `repo:` value.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(cascade::source))]
struct SourceProblem {
    message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
}

/// Turns a `repo:` value into something git2 can open: URLs as they are, paths
/// relative to the environment file's directory.
pub fn locate(repo: &str, env_dir: &Path) -> String {
    if repo.contains("://") || Path::new(repo).is_absolute() {
        repo.to_string()
    } else {
        env_dir.join(repo).to_string_lossy().into_owned()
    }
}

fn problem(
    db: &SourceDb,
    c: &Component,
    message: String,
    label: &str,
    help: Option<String>,
) -> SourceProblem {
    problem_at(db, c.source.repo_span, message, label, help)
}

fn problem_at(
    db: &SourceDb,
    span: cascade_core::Span,
    message: String,
    label: &str,
    help: Option<String>,
) -> SourceProblem {
    SourceProblem {
        message,
        src: db.named_source(span.file),
        span: (span.offset, span.len).into(),
        label: label.to_string(),
        help,
    }
}

/// Removes `.` and `..` components without touching the file system, for messages.
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." => {}
            ".." if out.last().is_some_and(|l| !l.is_empty() && *l != "..") => {
                out.pop();
            }
            _ => out.push(part),
        }
    }
    out.join("/")
}

/// Where a repository path led, relative to the project when it is inside it (no
/// machine paths in messages that tests snapshot and users paste).
fn describe_location(location: &str, root: &Path) -> String {
    let loc = normalize(location);
    let root = normalize(&root.to_string_lossy());
    match loc.strip_prefix(&format!("{root}/")) {
        Some(rel) => format!(
            "relative paths start at the environment file's directory; this one is `{rel}` in the project"
        ),
        None => format!("looked at `{loc}`"),
    }
}

/// Pins every component, then checks the compatibility matrix.
pub fn pin_all(project: &Project, git: &Git) -> Result<Vec<Pinned>, Error> {
    let env_dir = project.environment_dir();
    let db = &project.db;
    let mut pinned = Vec::new();
    let mut bad: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    let mut unreachable: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    for c in &project.graph.components {
        let location = locate(&c.source.repo, &env_dir);
        let rev = match &c.source.rev {
            Rev::Ref(r) => RevSpec::Ref(r),
            Rev::Version(v) => RevSpec::Version(v),
        };
        let filter = git_filter(&c.recipe);
        match git.pin(&location, &spec_of(c, rev, filter.as_ref())) {
            Ok(source) => pinned.push(Pinned {
                location,
                source,
                key_format: cascade_core::KEY_VERSION,
            }),
            Err(GitError::UnknownRef { closest, .. }) => {
                let what = match &c.source.rev {
                    Rev::Ref(r) => format!("ref `{r}`"),
                    Rev::Version(v) => format!(
                        "version `{v}` ({})",
                        version_tag(c.source.version_tags.as_deref(), v)
                    ),
                };
                let message = format!("{what} does not exist in `{}`", c.source.repo);
                bad.push(Box::new(cascade_manifest::unknown_ref(
                    db, c, message, closest,
                )));
            }
            Err(e @ GitError::FetchFailed { .. }) => unreachable.push(Box::new(problem(
                db,
                c,
                format!("could not fetch the source of `{}`", c.name),
                "this repository",
                Some(e.to_string()),
            ))),
            Err(GitError::DirNotFound { dir, commit, .. }) => bad.push(Box::new(problem_at(
                db,
                c.source.dir_span.unwrap_or(c.source.repo_span),
                format!(
                    "`{dir}` is not a directory of `{}` at commit {commit}",
                    c.source.repo
                ),
                "not a directory of this tree",
                Some("`dir:` is a sub-directory of the repository at the pinned commit".into()),
            ))),
            Err(GitError::NotARepository { .. }) => bad.push(Box::new(problem(
                db,
                c,
                format!("`{}` is not a git repository", c.source.repo),
                "no repository here",
                Some(describe_location(&location, &project.root)),
            ))),
            Err(e) => bad.push(Box::new(problem(
                db,
                c,
                format!("the source of `{}` cannot be resolved: {e}", c.name),
                "this repository",
                None,
            ))),
        }
    }
    // The epochs found, one cache file per commit, now rather than when `git` is dropped.
    git.flush_epochs();
    if !bad.is_empty() {
        return Err(Error::Sources(Problems::new("source problem", bad)));
    }
    if !unreachable.is_empty() {
        return Err(Error::Environment(Problems::new(
            "unreachable source",
            unreachable,
        )));
    }
    let versions: BTreeMap<String, semver::Version> = project
        .graph
        .components
        .iter()
        .zip(&pinned)
        .map(|(c, p)| (c.name.clone(), p.source.version.clone()))
        .collect();
    cascade_manifest::check_compatibility(db, &project.graph, &versions)?;
    Ok(pinned)
}
