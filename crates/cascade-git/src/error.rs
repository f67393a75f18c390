//! The crate's one error type. Every message names the repository as the user wrote it
//! (credentials stripped), so it can be understood without the manifest at hand; the
//! engine adds the manifest span where it has one (e.g. for `UnknownRef`).

use std::path::PathBuf;

/// Why a source could not be pinned or exported.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GitError {
    #[error("`{location}` is not a git repository")]
    #[diagnostic(
        code(cascade::git::not_a_repository),
        help("a source's `repo` is a path to a git repository (bare or not), a file:// URL or a git URL")
    )]
    NotARepository {
        location: String,
        #[source]
        source: git2::Error,
    },

    #[error("`{rev}` is not a branch, tag or commit of `{repo}`")]
    #[diagnostic(code(cascade::git::unknown_ref), help("{}", closest_help(closest)))]
    UnknownRef {
        repo: String,
        rev: String,
        /// Up to 5 existing branch or tag names, closest (by edit distance) first.
        closest: Vec<String>,
    },

    #[error("`{rev}` is an abbreviated SHA of more than one object in `{repo}`")]
    #[diagnostic(
        code(cascade::git::ambiguous_ref),
        help("write more hex digits of the commit, or all 40")
    )]
    AmbiguousRef { repo: String, rev: String },

    #[error("`{rev}` in `{repo}` does not point at a commit")]
    #[diagnostic(code(cascade::git::not_a_commit))]
    NotACommit { repo: String, rev: String },

    #[error("`{dir}` is not a directory of `{repo}` at commit {commit}")]
    #[diagnostic(
        code(cascade::git::dir_not_found),
        help("`dir` is a path relative to the repository's root, committed at that commit")
    )]
    DirNotFound {
        repo: String,
        commit: String,
        dir: String,
    },

    #[error("`{pattern}` in a source filter is not a valid glob: {reason}")]
    #[diagnostic(
        code(cascade::git::bad_filter),
        help("`*` matches within one path component, `**` across them, e.g. `src/**`")
    )]
    BadFilter { pattern: String, reason: String },

    #[error("`{pattern}` is not a version tag pattern")]
    #[diagnostic(
        code(cascade::git::bad_tag_pattern),
        help("a version tag pattern holds `{{version}}` exactly once, e.g. `web-v{{version}}`")
    )]
    BadTagPattern { pattern: String },

    #[error("fetching `{url}` failed: {message}")]
    #[diagnostic(
        code(cascade::git::fetch_failed),
        help("check that the URL is right and the repository is reachable from this machine")
    )]
    FetchFailed {
        /// The URL without any `user:password@`.
        url: String,
        message: String,
    },

    #[error("`{repo}` has no `origin` remote to push tags to: {message}")]
    #[diagnostic(
        code(cascade::git::no_origin),
        help("add one (`git remote add origin URL`), or tag without --push")
    )]
    NoOrigin { repo: String, message: String },

    #[error("pushing tags to `{url}` failed: {message}")]
    #[diagnostic(
        code(cascade::git::push_failed),
        help("check that the remote is reachable and that you may push tags to it; a tag the remote has on another commit is never replaced")
    )]
    PushFailed {
        /// The URL without any `user:password@`.
        url: String,
        message: String,
    },

    #[error("tree {tree} is not in `{repo}`")]
    #[diagnostic(code(cascade::git::tree_not_found))]
    TreeNotFound { repo: String, tree: String },

    #[error("cannot export `{path}` from `{repo}`: {reason}")]
    #[diagnostic(code(cascade::git::bad_tree_entry))]
    BadTreeEntry {
        repo: String,
        /// The entry's path inside the exported tree.
        path: String,
        reason: String,
    },

    #[error("cannot write `{path}` in `{repo}`: {reason}")]
    #[diagnostic(code(cascade::git::cannot_commit_file))]
    CannotCommitFile {
        repo: String,
        /// The file's path in the repository.
        path: String,
        reason: String,
    },

    #[error("cannot write `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("git failed on `{repo}`")]
    Git {
        repo: String,
        #[source]
        source: git2::Error,
    },
}

impl GitError {
    pub(crate) fn git(repo: &str, source: git2::Error) -> Self {
        GitError::Git {
            repo: repo.to_string(),
            source,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GitError::Io {
            path: path.into(),
            source,
        }
    }
}

fn closest_help(closest: &[String]) -> String {
    if closest.is_empty() {
        "the repository has no branches or tags".to_string()
    } else {
        let names: Vec<String> = closest.iter().map(|n| format!("`{n}`")).collect();
        format!("closest existing: {}", names.join(", "))
    }
}
