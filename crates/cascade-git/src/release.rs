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
//!
//! A recipe's `changelog:` adds one more write: a commit on top of the built commit that
//! changes only that file ([`Git::commit_file`], same author rule and time, so the same
//! release makes the same commit twice), and moving the built branch to it
//! ([`Git::move_branch`], compare-and-swap). [`Git::is_changelog_commit`] is the strict
//! test both `release` and `promote` use for such a commit: one parent, the built one,
//! and the same exported content.

use std::path::Path;

use git2::{ConfigLevel, ObjectType, Oid, Repository, Signature, Sort};
use semver::Version;

use crate::location::{classify, git_command, git_failure, redact_message, run_git, Location};
use crate::version::TagPattern;
use crate::{lock, Filter, Git, GitError};

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

/// Where a local branch stands in a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchState {
    /// No local branch of that name (a tag, a commit, or a remote's ref).
    NotABranch,
    /// Its head, and whether a work tree has it checked out (then it is never moved:
    /// the work tree would no longer match it).
    Head { commit: String, checked_out: bool },
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

    /// [`Git::versions_at`], plus the versions tagged on a changelog commit of `commit`
    /// ([`Git::is_changelog_commit`]): what `release tag` tags when the recipe writes a
    /// changelog, which exports the same files as the commit built.
    pub fn released_versions(
        &self,
        location: &str,
        commit: &str,
        dir: Option<&str>,
        filter: Option<&Filter>,
        version_tags: Option<&str>,
    ) -> Result<Vec<Version>, GitError> {
        let pattern = TagPattern::new(version_tags).ok_or_else(|| GitError::BadTagPattern {
            pattern: version_tags.unwrap_or_default().to_string(),
        })?;
        let tags = {
            let repo = self.open(location)?;
            let state = lock(&repo.state);
            tags_of(&state.repo, &pattern).map_err(|e| GitError::git(&repo.display, e))?
        };
        let mut found = Vec::new();
        for (id, version) in tags {
            let id = id.to_string();
            if id == commit || self.is_changelog_commit(location, &id, commit, dir, filter)? {
                found.push(version);
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Whether `candidate` is a changelog commit of `built` (full SHAs): exactly one
    /// parent, `built`, and the same exported content (the tree at `dir`, filtered), so
    /// a build of it is a build of `built`'s files.
    pub fn is_changelog_commit(
        &self,
        location: &str,
        candidate: &str,
        built: &str,
        dir: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<bool, GitError> {
        let compiled = crate::compile(filter.filter(|f| !f.is_empty()))?;
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let git_err = |e| GitError::git(&repo.display, e);
        let (Ok(c), Ok(b)) = (Oid::from_str(candidate), Oid::from_str(built)) else {
            return Ok(false);
        };
        let Ok(c) = r.find_commit(c) else {
            return Ok(false);
        };
        if c.parent_count() != 1 || c.parent_id(0).map_err(git_err)? != b {
            return Ok(false);
        }
        let parent = c.parent(0).map_err(git_err)?;
        let dir = crate::resolve::normalize_dir(dir).unwrap_or_default();
        let mut memo = crate::filter::Memo::new();
        let mut content = |commit: &git2::Commit<'_>| -> Result<Option<Oid>, git2::Error> {
            let tree = commit.tree()?;
            let sub = if dir.is_empty() {
                tree.id()
            } else {
                match tree.get_path(Path::new(&dir)) {
                    Ok(e) if e.kind() == Some(ObjectType::Tree) => e.id(),
                    _ => return Ok(None),
                }
            };
            match &compiled {
                Some(f) => crate::filter::filtered_id(r, sub, f, &mut memo).map(Some),
                None => Ok(Some(sub)),
            }
        };
        let mine = content(&c).map_err(git_err)?;
        let theirs = content(&parent).map_err(git_err)?;
        Ok(mine.is_some() && mine == theirs)
    }

    /// The file at `path` (from the repository's root) in `commit`; `None` when there
    /// is no file there.
    pub fn read_file(
        &self,
        location: &str,
        commit: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let git_err = |e| GitError::git(&repo.display, e);
        let id = Oid::from_str(commit).map_err(git_err)?;
        let tree = r.find_commit(id).and_then(|c| c.tree()).map_err(git_err)?;
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            return Ok(None);
        };
        let content = r.find_blob(entry.id()).ok().map(|b| b.content().to_vec());
        Ok(content)
    }

    /// Writes a commit whose only parent is `parent` and whose tree is `parent`'s with
    /// the file at `path` (from the root, `/`-separated, parents created as needed) set
    /// to `content`; no ref is touched. Author and committer follow the tagger rule of
    /// the module documentation, at `parent`'s committer time. Returns its SHA. Works
    /// in bare repositories: the trees are built in the object database.
    pub fn commit_file(
        &self,
        location: &str,
        parent: &str,
        path: &str,
        content: &[u8],
        message: &str,
    ) -> Result<String, GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let git_err = |e| GitError::git(&repo.display, e);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(GitError::CannotCommitFile {
                repo: repo.display.clone(),
                path: path.to_string(),
                reason: "not a path inside the repository".into(),
            });
        }
        let id = Oid::from_str(parent).map_err(git_err)?;
        let parent = r.find_commit(id).map_err(git_err)?;
        let blob = r.blob(content).map_err(git_err)?;
        let root = parent.tree().map_err(git_err)?;
        let tree = with_file(r, Some(&root), &parts, blob).map_err(|reason| match reason {
            Written::Git(e) => git_err(e),
            Written::InTheWay(at) => GitError::CannotCommitFile {
                repo: repo.display.clone(),
                path: path.to_string(),
                reason: format!("`{at}` is in the way"),
            },
        })?;
        let tree = r.find_tree(tree).map_err(git_err)?;
        let when = parent.committer().when();
        let (user, email) = tagger(r);
        let sig = Signature::new(&user, &email, &when).map_err(git_err)?;
        let commit = r
            .commit(None, &sig, &sig, message, &tree, &[&parent])
            .map_err(git_err)?;
        Ok(commit.to_string())
    }

    /// Where local branch `name` stands; see [`BranchState`].
    pub fn branch_state(&self, location: &str, name: &str) -> Result<BranchState, GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let r = &state.repo;
        let full = format!("refs/heads/{name}");
        let reference = match r.find_reference(&full) {
            Ok(reference) => reference,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(BranchState::NotABranch),
            Err(e) => return Err(GitError::git(&repo.display, e)),
        };
        let Ok(commit) = reference.peel_to_commit() else {
            return Ok(BranchState::NotABranch);
        };
        let checked_out = !r.is_bare()
            && r.find_reference("HEAD")
                .is_ok_and(|h| h.symbolic_target().ok().flatten() == Some(full.as_str()));
        Ok(BranchState::Head {
            commit: commit.id().to_string(),
            checked_out,
        })
    }

    /// Moves local branch `name` from `from` to `to` (full SHAs), only if it is still at
    /// `from` (a branch that moved meanwhile is an error, never overwritten).
    pub fn move_branch(
        &self,
        location: &str,
        name: &str,
        from: &str,
        to: &str,
    ) -> Result<(), GitError> {
        let repo = self.open(location)?;
        let state = lock(&repo.state);
        let git_err = |e| GitError::git(&repo.display, e);
        let from = Oid::from_str(from).map_err(git_err)?;
        let to = Oid::from_str(to).map_err(git_err)?;
        state
            .repo
            .reference_matching(
                &format!("refs/heads/{name}"),
                to,
                true,
                from,
                "cascade release tag",
            )
            .map_err(git_err)?;
        Ok(())
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
        let (dir, target, url) = {
            let state = lock(&repo.state);
            let r = &state.repo;
            // The work tree, or the git dir of a bare repository (a mirror).
            let dir = r.workdir().unwrap_or(r.path()).to_path_buf();
            match classify(location, self.fetch_file_urls) {
                Location::Remote(url) => (dir, url.clone(), url),
                Location::Local(_) => {
                    let remote = r.find_remote("origin").map_err(|e| GitError::NoOrigin {
                        repo: repo.display.clone(),
                        message: e.message().to_string(),
                    })?;
                    let url = remote.url().unwrap_or_default().to_string();
                    (dir, "origin".to_string(), url)
                }
            }
        };
        let failed = |message: String| GitError::PushFailed {
            url: crate::location::redact(&url),
            message,
        };
        let mut command = git_command(&dir);
        command
            .args(["push", "--porcelain", "--", &target])
            .args(names.iter().map(|n| format!("refs/tags/{n}:refs/tags/{n}")));
        // `--porcelain` puts one line per ref on stdout, `!` for a rejected one (the
        // exit status is then non-zero too): those lines are the reason.
        let porcelain = |stdout: &str| -> Vec<String> {
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix('!'))
                .map(|l| {
                    let mut f = l.trim().split('\t');
                    let refs = f.next().unwrap_or_default();
                    let name = refs.split(':').next().unwrap_or(refs);
                    let why = f.next().unwrap_or("rejected").trim();
                    format!("{name}: {why}")
                })
                .collect()
        };
        let out = run_git(command, "tags are pushed").map_err(failed)?;
        let rejected = porcelain(&String::from_utf8_lossy(&out.stdout));
        if !rejected.is_empty() {
            return Err(failed(redact_message(&rejected.join("; "), &url)));
        }
        if !out.status.success() {
            return Err(failed(git_failure(&out, &url)));
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

/// Why [`with_file`] could not build its tree.
enum Written {
    Git(git2::Error),
    /// A path (from the root) that is not a directory where one is needed, or a
    /// directory where the file goes.
    InTheWay(String),
}

impl From<git2::Error> for Written {
    fn from(e: git2::Error) -> Self {
        Written::Git(e)
    }
}

/// The id of `tree` (none: an empty one) with the blob `blob` at `parts`, every tree on
/// the way written to the object database. A file that was there keeps its mode (an
/// executable changelog stays one); a new one is 100644.
fn with_file(
    r: &Repository,
    tree: Option<&git2::Tree<'_>>,
    parts: &[&str],
    blob: Oid,
) -> Result<Oid, Written> {
    let Some((first, rest)) = parts.split_first() else {
        return Err(Written::InTheWay(String::new()));
    };
    let mut builder = r.treebuilder(tree)?;
    let existing = tree.and_then(|t| t.get_name(first));
    let in_the_way = || Written::InTheWay((*first).to_string());
    if rest.is_empty() {
        let mode = match existing {
            Some(e) if e.kind() == Some(ObjectType::Blob) => e.filemode(),
            Some(_) => return Err(in_the_way()),
            None => 0o100644,
        };
        builder.insert(first, blob, mode)?;
    } else {
        let sub = match existing {
            Some(e) if e.kind() == Some(ObjectType::Tree) => Some(r.find_tree(e.id())?),
            Some(_) => return Err(in_the_way()),
            None => None,
        };
        let id = with_file(r, sub.as_ref(), rest, blob).map_err(|e| match e {
            Written::InTheWay(at) => Written::InTheWay(format!("{first}/{at}")),
            other => other,
        })?;
        builder.insert(first, id, 0o040000)?;
    }
    Ok(builder.write()?)
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
