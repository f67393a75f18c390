//! [IO] What `cascade release` needs of git: the commits since a component's last
//! release ([`Git::history`]) and annotated version tags ([`Git::tag_state`],
//! [`Git::create_tag`], [`Git::delete_tag`], [`Git::push_tags`]).
//!
//! Tags are the one thing cascade writes into a user's repository, and only when asked
//! (`cascade release tag`). A tag is annotated; its tagger is the repository's own
//! `user.name` and `user.email` (its local config, never the global one, so a
//! repository gives the same tag objects on every machine), else
//! `cascade <cascade@localhost>`; its time is the tagged commit's committer time, never
//! the clock. The same release therefore makes the same tag object twice.

use std::path::Path;

use git2::{ConfigLevel, ObjectType, Oid, Repository, Signature, Sort};
use semver::Version;

use crate::location::{classify, credentials, redact_message, Location};
use crate::version::TagPattern;
use crate::{lock, Git, GitError};

/// The tagger when the repository's own config names nobody.
pub const DEFAULT_TAGGER: (&str, &str) = ("cascade", "cascade@localhost");

/// A component's history since its last release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The highest release version (no pre-release) tagged on a commit reachable from
    /// the commit, and that commit.
    pub release: Option<(Version, String)>,
    /// Pre-release versions tagged on reachable commits, above `release`, sorted.
    pub pre_releases: Vec<Version>,
    /// Versions tagged on the commit itself, sorted.
    pub on_commit: Vec<Version>,
    /// The commits reachable from the commit but not from the release's (all of them
    /// without a release), newest first; with a `dir`, only those that changed it.
    pub commits: Vec<CommitInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    pub sha: String,
    /// The whole message.
    pub message: String,
    /// More than one parent.
    pub merge: bool,
}

/// Where a tag name stands in a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagState {
    Missing,
    /// It exists and peels to this commit.
    On(String),
    /// It exists and does not peel to a commit.
    NotACommit,
}

impl Git {
    /// The history of the component at `commit` (full SHA) in the repository at
    /// `location`, by its `version_tags` pattern; see [`History`].
    pub fn history(
        &self,
        location: &str,
        commit: &str,
        dir: Option<&str>,
        version_tags: Option<&str>,
    ) -> Result<History, GitError> {
        let pattern = TagPattern::new(version_tags).ok_or_else(|| GitError::BadTagPattern {
            pattern: version_tags.unwrap_or_default().to_string(),
        })?;
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let git_err = |e| GitError::git(&repo.display, e);
        let start = Oid::from_str(commit).map_err(git_err)?;
        r.find_commit(start).map_err(|_| GitError::UnknownRef {
            repo: repo.display.clone(),
            rev: commit.to_string(),
            closest: Vec::new(),
        })?;
        let tags = tags_of(r, &pattern).map_err(git_err)?;
        let reachable: Vec<Oid> = {
            let mut walk = r.revwalk().map_err(git_err)?;
            walk.push(start).map_err(git_err)?;
            walk.collect::<Result<_, _>>().map_err(git_err)?
        };
        let mut release: Option<(Version, Oid)> = None;
        let mut pre = Vec::new();
        let mut on_commit = Vec::new();
        for id in &reachable {
            for v in tags.iter().filter(|(c, _)| c == id).map(|(_, v)| v) {
                if *id == start {
                    on_commit.push(v.clone());
                }
                if v.pre.is_empty() {
                    if release.as_ref().is_none_or(|(r, _)| v > r) {
                        release = Some((v.clone(), *id));
                    }
                } else {
                    pre.push(v.clone());
                }
            }
        }
        if let Some((r, _)) = &release {
            pre.retain(|p| p > r);
        }
        pre.sort();
        pre.dedup();
        on_commit.sort();
        on_commit.dedup();

        let mut walk = r.revwalk().map_err(git_err)?;
        // Newest first, parents after children: the order `git log` shows.
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)
            .map_err(git_err)?;
        walk.push(start).map_err(git_err)?;
        if let Some((_, id)) = &release {
            walk.hide(*id).map_err(git_err)?;
        }
        let mut commits = Vec::new();
        for id in walk {
            let id = id.map_err(git_err)?;
            let c = r.find_commit(id).map_err(git_err)?;
            if let Some(dir) = dir.filter(|d| !d.is_empty() && *d != ".") {
                if !touches(&c, dir).map_err(git_err)? {
                    continue;
                }
            }
            commits.push(CommitInfo {
                sha: id.to_string(),
                message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
                merge: c.parent_count() > 1,
            });
        }
        Ok(History {
            release: release.map(|(v, id)| (v, id.to_string())),
            pre_releases: pre,
            on_commit,
            commits,
        })
    }

    /// The versions tagged on `commit` (full SHA) by the `version_tags` pattern, sorted:
    /// what `promote` pins when the lockfile recorded a derived version and the commit
    /// was released since.
    pub fn versions_at(
        &self,
        location: &str,
        commit: &str,
        version_tags: Option<&str>,
    ) -> Result<Vec<Version>, GitError> {
        let pattern = TagPattern::new(version_tags).ok_or_else(|| GitError::BadTagPattern {
            pattern: version_tags.unwrap_or_default().to_string(),
        })?;
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let git_err = |e| GitError::git(&repo.display, e);
        let id = Oid::from_str(commit).map_err(git_err)?;
        let mut found: Vec<Version> = tags_of(&state.repo, &pattern)
            .map_err(git_err)?
            .into_iter()
            .filter(|(c, _)| *c == id)
            .map(|(_, v)| v)
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Whether tag `name` exists in the repository at `location`, and where.
    pub fn tag_state(&self, location: &str, name: &str) -> Result<TagState, GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let reference = match state.repo.find_reference(&format!("refs/tags/{name}")) {
            Ok(r) => r,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(TagState::Missing),
            Err(e) => return Err(GitError::git(&repo.display, e)),
        };
        let found = match reference.peel_to_commit() {
            Ok(c) => TagState::On(c.id().to_string()),
            Err(_) => TagState::NotACommit,
        };
        Ok(found)
    }

    /// Creates the annotated tag `name` on `commit` with `message` (see the module
    /// documentation for its tagger and time). Refuses to replace an existing tag.
    pub fn create_tag(
        &self,
        location: &str,
        name: &str,
        commit: &str,
        message: &str,
    ) -> Result<(), GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let git_err = |e| GitError::git(&repo.display, e);
        let id = Oid::from_str(commit).map_err(git_err)?;
        let target = r
            .find_object(id, Some(ObjectType::Commit))
            .map_err(git_err)?;
        let when = r.find_commit(id).map_err(git_err)?.committer().when();
        let (user, email) = tagger(r);
        let sig = Signature::new(&user, &email, &when).map_err(git_err)?;
        r.tag(name, &target, &sig, message, false)
            .map_err(git_err)?;
        Ok(())
    }

    /// Deletes tag `name` (undoing a [`Git::create_tag`] of a release that failed
    /// elsewhere). A missing tag is not an error.
    pub fn delete_tag(&self, location: &str, name: &str) -> Result<(), GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        match state.repo.tag_delete(name) {
            Err(e) if e.code() != git2::ErrorCode::NotFound => Err(GitError::git(&repo.display, e)),
            _ => Ok(()),
        }
    }

    /// Pushes tags `names` from the repository at `location`: a local repository to its
    /// `origin` remote, a fetched one (a URL) back to that URL. Never forced: a remote
    /// tag on another object is refused by the remote.
    pub fn push_tags(&self, location: &str, names: &[String]) -> Result<String, GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let (mut remote, url) = match classify(location, self.fetch_file_urls) {
            Location::Remote(url) => (
                r.remote_anonymous(&url)
                    .map_err(|e| GitError::git(&repo.display, e))?,
                url,
            ),
            Location::Local(_) => {
                let remote = r.find_remote("origin").map_err(|e| GitError::NoOrigin {
                    repo: repo.display.clone(),
                    message: e.message().to_string(),
                })?;
                let url = remote.url().unwrap_or_default().to_string();
                (remote, url)
            }
        };
        let specs: Vec<String> = names
            .iter()
            .map(|n| format!("refs/tags/{n}:refs/tags/{n}"))
            .collect();
        let mut callbacks = credentials();
        let rejected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = rejected.clone();
        callbacks.push_update_reference(move |name, status| {
            if let Some(s) = status {
                lock(&seen).push(format!("{name}: {s}"));
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        let failed = |message: String| GitError::PushFailed {
            url: crate::location::redact(&url),
            message,
        };
        remote
            .push(&specs, Some(&mut options))
            .map_err(|e| failed(redact_message(e.message(), &url)))?;
        let rejected = lock(&rejected).join("; ");
        if !rejected.is_empty() {
            return Err(failed(rejected));
        }
        Ok(crate::location::redact(&url))
    }
}

/// Every tag of `pattern` that peels to a commit, as (commit, version).
fn tags_of(r: &Repository, pattern: &TagPattern) -> Result<Vec<(Oid, Version)>, git2::Error> {
    let mut out = Vec::new();
    for reference in r.references_glob("refs/tags/*")? {
        let reference = reference?;
        let Some(name) = reference
            .name()
            .ok()
            .and_then(|n| n.strip_prefix("refs/tags/"))
        else {
            continue;
        };
        let Some(version) = pattern.parse(name) else {
            continue;
        };
        if let Ok(c) = reference.peel_to_commit() {
            out.push((c.id(), version));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `c` changed `dir` against its first parent (a root commit: whether it has it).
fn touches(c: &git2::Commit<'_>, dir: &str) -> Result<bool, git2::Error> {
    let at = |tree: git2::Tree<'_>| tree.get_path(Path::new(dir)).ok().map(|e| e.id());
    let mine = at(c.tree()?);
    let parent = match c.parent(0) {
        Ok(p) => at(p.tree()?),
        Err(_) => None,
    };
    Ok(mine != parent)
}

/// The repository's own `user.name` and `user.email`, else [`DEFAULT_TAGGER`].
fn tagger(r: &Repository) -> (String, String) {
    let local = r
        .config()
        .and_then(|c| c.open_level(ConfigLevel::Local))
        .ok();
    let get = |key: &str| local.as_ref().and_then(|c| c.get_string(key).ok());
    match (get("user.name"), get("user.email")) {
        (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => (n, e),
        _ => (DEFAULT_TAGGER.0.to_string(), DEFAULT_TAGGER.1.to_string()),
    }
}
