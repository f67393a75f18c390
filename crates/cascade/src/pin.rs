//! [IO] pin: every source to an exact commit and tree, then the compatibility matrix
//! against the versions that pinning revealed. Every problem is collected and pointed
//! at its line in the environment file.

use std::collections::BTreeMap;
use std::path::Path;

use cascade_git::{Filter, Git, GitError, PinSpec, PinnedSource, RevSpec};
use cascade_manifest::{Component, Recipe, Rev, SourceDb, SourceSpec};
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
    source: &SourceSpec,
    message: String,
    label: &str,
    help: Option<String>,
) -> SourceProblem {
    problem_at(db, source.repo_span, message, label, help)
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

/// A source that did not pin, as a diagnostic pointing at the environment file.
enum Unpinned {
    /// Bad input: a ref, version, directory or repository that is not there.
    Bad(Box<dyn Diagnostic + Send + Sync>),
    /// A remote that could not be fetched: the machine's environment.
    Unreachable(Box<dyn Diagnostic + Send + Sync>),
}

/// Where one source is and what it is to be pinned at, for [`pin_source`].
struct SourceAt<'a> {
    component: &'a str,
    source: &'a SourceSpec,
    /// From [`locate`].
    location: &'a str,
    filter: Option<&'a Filter>,
}

/// Pins one source; a problem is located in `db` (the environment file), and a
/// repository that is not there is described relative to `root`.
fn pin_source(
    git: &Git,
    db: &SourceDb,
    root: &Path,
    at: &SourceAt<'_>,
) -> Result<PinnedSource, Unpinned> {
    let source = at.source;
    let rev = match &source.rev {
        Rev::Ref(r) => RevSpec::Ref(r),
        Rev::Version(v) => RevSpec::Version(v),
    };
    let spec = PinSpec {
        rev,
        dir: source.dir.as_deref(),
        filter: at.filter,
        version_tags: source.version_tags.as_deref(),
    };
    git.pin(at.location, &spec).map_err(|e| match e {
        GitError::UnknownRef { closest, .. } => {
            let what = match &source.rev {
                Rev::Ref(r) => format!("ref `{r}`"),
                Rev::Version(v) => format!(
                    "version `{v}` ({})",
                    version_tag(source.version_tags.as_deref(), v)
                ),
            };
            let message = format!("{what} does not exist in `{}`", source.repo);
            Unpinned::Bad(Box::new(cascade_manifest::unknown_ref(
                db, source, message, closest,
            )))
        }
        e @ GitError::FetchFailed { .. } => Unpinned::Unreachable(Box::new(problem(
            db,
            source,
            format!("could not fetch the source of `{}`", at.component),
            "this repository",
            Some(e.to_string()),
        ))),
        GitError::DirNotFound { dir, commit, .. } => Unpinned::Bad(Box::new(problem_at(
            db,
            source.dir_span.unwrap_or(source.repo_span),
            format!(
                "`{dir}` is not a directory of `{}` at commit {commit}",
                source.repo
            ),
            "not a directory of this tree",
            Some("`dir:` is a sub-directory of the repository at the pinned commit".into()),
        ))),
        GitError::NotARepository { .. } => Unpinned::Bad(Box::new(problem(
            db,
            source,
            format!("`{}` is not a git repository", source.repo),
            "no repository here",
            Some(describe_location(at.location, root)),
        ))),
        e => Unpinned::Bad(Box::new(problem(
            db,
            source,
            format!("the source of `{}` cannot be resolved: {e}", at.component),
            "this repository",
            None,
        ))),
    })
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
        let filter = git_filter(&c.recipe);
        let at = SourceAt {
            component: &c.name,
            source: &c.source,
            location: &location,
            filter: filter.as_ref(),
        };
        match pin_source(git, db, &project.root, &at) {
            Ok(source) => pinned.push(Pinned {
                location,
                source,
                key_format: cascade_core::KEY_VERSION,
            }),
            Err(Unpinned::Bad(d)) => bad.push(d),
            Err(Unpinned::Unreachable(d)) => unreachable.push(d),
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

/// When `e` is manifests that did not resolve, pins the environment's valid sources
/// anyway (unfiltered: a recipe's filter changes a tree, never whether the source
/// exists), reading and fetching through the git cache of the store at `store` as a
/// plan does, and reports their problems after the manifests' in one error, still bad
/// input, capped as the manifests' are. Any other error, or sources that all pin, give
/// `e` back as it is.
pub fn with_source_problems(e: Error, store: &Path) -> Error {
    let Error::Unresolved(unloaded) = e else {
        return e;
    };
    let parts = unloaded.into_parts();
    let git = Git::reading(cascade_store::Store::for_reading(store).git_dir());
    let mut problems = Vec::new();
    for declared in &parts.sources {
        let location = locate(&declared.spec.repo, &parts.environment_dir);
        let at = SourceAt {
            component: &declared.component,
            source: &declared.spec,
            location: &location,
            filter: None,
        };
        match pin_source(&git, &parts.db, &parts.root, &at) {
            Ok(_) => {}
            Err(Unpinned::Bad(d) | Unpinned::Unreachable(d)) => problems.push(d),
        }
    }
    if problems.is_empty() {
        return Error::Unresolved(crate::load::Unloaded::from_parts(parts));
    }
    Error::Sources(together(parts.diagnostics, problems))
}

/// The manifests' problems, then the sources': at most
/// [`cascade_manifest::Diagnostics::LIMIT`] in all, the rest counted.
fn together(
    manifests: cascade_manifest::Diagnostics,
    sources: Vec<Box<dyn Diagnostic + Send + Sync>>,
) -> Problems {
    use cascade_manifest::{Diagnostics, ManifestError};
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut more = 0;
    let mut items: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    for d in manifests {
        match d {
            ManifestError::TooMany { more: m } => more += m,
            d => items.push(Box::new(d)),
        }
    }
    let manifest_count = items.len() + more;
    let source_count = sources.len();
    items.extend(sources);
    if items.len() > Diagnostics::LIMIT {
        more += items.len() - Diagnostics::LIMIT;
        items.truncate(Diagnostics::LIMIT);
    }
    if more > 0 {
        items.push(Box::new(ManifestError::TooMany { more }));
    }
    Problems {
        summary: format!(
            "{} and {}",
            plural(
                manifest_count,
                "problem in the manifests",
                "problems in the manifests"
            ),
            plural(source_count, "source problem", "source problems")
        ),
        items,
        code: Some("cascade::manifest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_core::Span;
    use cascade_manifest::{Diagnostics, ManifestError};

    fn unknown(db: &SourceDb, file: cascade_core::FileId, n: usize) -> ManifestError {
        let at = Span::new(file, 0, 1);
        let spec = SourceSpec {
            repo: "r".into(),
            repo_span: at,
            rev: Rev::Ref("x".into()),
            rev_span: at,
            dir: None,
            dir_span: None,
            version_tags: None,
        };
        cascade_manifest::unknown_ref(db, &spec, format!("problem {n}"), Vec::new())
    }

    #[test]
    fn manifest_and_source_problems_are_capped_together() {
        let mut db = SourceDb::new();
        let file = db.add("graph/environments/test.yaml", "x".to_string());
        let boxed = |d: ManifestError| Box::new(d) as Box<dyn Diagnostic + Send + Sync>;

        // Few: all kept, the manifests' first, no count.
        let few = together(
            Diagnostics(vec![unknown(&db, file, 0)]),
            vec![boxed(unknown(&db, file, 1)), boxed(unknown(&db, file, 2))],
        );
        assert_eq!(
            few.summary,
            "1 problem in the manifests and 2 source problems"
        );
        assert_eq!(few.items.len(), 3);
        assert_eq!(few.items[0].to_string(), "problem 0");
        assert_eq!(few.code, Some("cascade::manifest"));

        // Manifests already capped (100 kept, 5 counted) and 3 sources: still 100 shown,
        // the other 8 counted.
        let mut capped: Vec<ManifestError> = (0..Diagnostics::LIMIT)
            .map(|n| unknown(&db, file, n))
            .collect();
        capped.push(ManifestError::TooMany { more: 5 });
        let sources = (0..3)
            .map(|n| boxed(unknown(&db, file, 1000 + n)))
            .collect();
        let many = together(Diagnostics(capped), sources);
        assert_eq!(
            many.summary,
            "105 problems in the manifests and 3 source problems"
        );
        assert_eq!(many.items.len(), Diagnostics::LIMIT + 1);
        assert_eq!(
            many.items.last().map(|d| d.to_string()).as_deref(),
            Some("…and 8 more problems, not shown")
        );
    }
}
