//! cascade-git: the `pin` stage and tree export, the only place that talks to git.
//!
//! `pin` turns a source as the user wrote it (a repository location plus a branch, tag,
//! commit or version) into a [`PinnedSource`]: the exact commit, the tree that will be
//! built (the commit's root tree or a sub-directory's), the commit time and the
//! component's version. `export` writes a tree, by id, from the object database into a
//! directory, so uncommitted files in a working copy can never reach a build.
//!
//! All IO goes through `git2` (libgit2). Local paths and `file://` URLs are opened in
//! place; any other URL is fetched into a bare mirror under the cache dir
//! (`<cache>/<blake3 of the URL>.git`), once per [`Git`] value.
//!
//! A [`Git`] value is meant to live for one build: it caches opened repositories, the
//! commit each `(location, rev)` resolved to and the version derived for each commit, so
//! pinning thousands of components that live in a few repositories costs a few
//! resolutions, and every component that names the same branch sees the same commit even
//! if the branch moves during the build.

mod error;
mod export;
mod location;
mod resolve;
mod version;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use git2::{Oid, Repository};

pub use error::GitError;

/// What a source names: a ref (branch, tag or commit SHA) or a version (a tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevSpec<'a> {
    /// A full SHA; a name starting with `refs/`, looked up as written; a branch
    /// (`refs/heads/<name>`); a tag (`refs/tags/<name>`, peeled to its commit); a
    /// remote branch (`refs/remotes/origin/<name>`); an abbreviated SHA (at least 7
    /// hex digits) — tried in this order.
    Ref(&'a str),
    /// The tag `v<version>`, else the tag `<version>`.
    Version(&'a semver::Version),
}

/// A source resolved against its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedSource {
    /// The commit SHA, full hex.
    pub commit: String,
    /// The tree that is built: the commit's root tree, or the tree at `dir`.
    pub tree: String,
    /// The committer time in seconds since the epoch (steps see it as `SOURCE_DATE_EPOCH`).
    pub commit_time: i64,
    /// In version mode the requested version; otherwise derived from tags, see
    /// [`Git::pin`].
    pub version: semver::Version,
}

/// Pins sources and exports trees; see the crate documentation. Safe to share between
/// threads.
pub struct Git {
    cache_dir: PathBuf,
    /// Send `file://` URLs through the fetch path like any remote. Only tests set it:
    /// there is no network here, and a `file://` remote is the only remote they can use.
    pub(crate) fetch_file_urls: bool,
    /// One slot per location as written. The slot's own lock is held while the
    /// repository is opened (or fetched), so two threads never fetch the same URL twice,
    /// while different repositories open in parallel.
    repos: Mutex<HashMap<String, Arc<RepoSlot>>>,
}

/// A repository that is opened on first use; `None` until then (or after a failure, so
/// the next pin tries again).
type RepoSlot = Mutex<Option<Arc<Repo>>>;

/// An opened repository and what was learned from it during this build.
pub(crate) struct Repo {
    /// The location for messages (credentials stripped).
    pub(crate) display: String,
    /// The git dir (or work tree) to open.
    pub(crate) path: PathBuf,
    /// `git2::Repository` is Send but not Sync: pinning takes this lock (and is cheap
    /// once the caches are warm)…
    pub(crate) state: Mutex<RepoState>,
    /// …while exports, which are slow and run in parallel, each borrow a handle of their
    /// own from this pool (opening a new one when it is empty).
    pool: Mutex<Vec<Repository>>,
}

pub(crate) struct RepoState {
    pub(crate) repo: Repository,
    /// `(rev, dir)` → what it pinned to.
    pinned: HashMap<(RevKey, Option<String>), PinnedSource>,
    /// `rev` → commit, so every `dir` of one repository at one rev shares one lookup.
    commits: HashMap<RevKey, Oid>,
    pub(crate) versions: version::VersionCache,
}

/// See [`Git::distance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distance {
    pub ahead: usize,
    pub behind: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RevKey {
    Ref(String),
    Version(semver::Version),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a cache was locked leaves it consistent (entries are inserted whole),
    // so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Git {
    /// `cache_dir` holds the mirrors of fetched repositories (the engine passes
    /// `<store>/git`); it is created on the first fetch.
    pub fn new(cache_dir: PathBuf) -> Self {
        Git {
            cache_dir,
            fetch_file_urls: false,
            repos: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `rev` in the repository at `location` (an absolute path to a repository,
    /// bare or not, a `file://` URL or any URL git2 can fetch), then the tree at `dir`.
    ///
    /// The version, in version mode, is the one asked for. Otherwise it is derived the
    /// way `git describe` would, from the nearest version tag:
    ///
    /// - A version tag is a tag named `vX.Y.Z` or `X.Y.Z` (semver, pre-release allowed)
    ///   that peels to a commit; other tags are ignored, and build metadata is dropped.
    /// - Among the version tags reachable from the commit, the nearest is the one with the
    ///   fewest commits between: those reachable from the commit but not from the tag
    ///   (what `git rev-list --count TAG..COMMIT` counts). Ties go to the highest version.
    /// - With `N` commits between: `N = 0` gives the tag's version exactly; `N > 0` gives
    ///   `X.Y.(Z+1)-dev.N` for a release tag and `X.Y.Z-PRE.dev.N` for a pre-release tag
    ///   (`v1.0.0-rc.1` and 3 commits give `1.0.0-rc.1.dev.3`), so a derived version
    ///   always sorts after its tag and before the next release.
    /// - No version tag reachable: `0.0.0-dev.N`, with `N` the number of commits
    ///   reachable from the commit (itself included).
    pub fn pin(
        &self,
        location: &str,
        rev: RevSpec<'_>,
        dir: Option<&str>,
    ) -> Result<PinnedSource, GitError> {
        let repo = self.open(location)?;
        let mut state = lock(&repo.state);
        let key = match rev {
            RevSpec::Ref(name) => RevKey::Ref(name.to_string()),
            RevSpec::Version(v) => RevKey::Version(v.clone()),
        };
        let cache_key = (key.clone(), dir.map(str::to_string));
        if let Some(pinned) = state.pinned.get(&cache_key) {
            return Ok(pinned.clone());
        }
        let commit_id = match state.commits.get(&key) {
            Some(id) => *id,
            None => {
                let id = match rev {
                    RevSpec::Ref(name) => resolve::resolve_ref(&state.repo, &repo.display, name)?,
                    RevSpec::Version(v) => resolve::resolve_version(&state.repo, &repo.display, v)?,
                };
                state.commits.insert(key, id);
                id
            }
        };
        let git_err = |e| GitError::git(&repo.display, e);
        let (tree, commit_time) = {
            let commit = state.repo.find_commit(commit_id).map_err(git_err)?;
            let tree = resolve::tree_at(&repo.display, &commit, dir)?;
            let time = commit.committer().when().seconds();
            (tree, time)
        };
        let version = match rev {
            RevSpec::Version(v) => v.clone(),
            RevSpec::Ref(_) => {
                let RepoState {
                    repo: r, versions, ..
                } = &mut *state;
                versions.derive(r, commit_id).map_err(git_err)?
            }
        };
        let pinned = PinnedSource {
            commit: commit_id.to_string(),
            tree: tree.to_string(),
            commit_time,
            version,
        };
        state.pinned.insert(cache_key, pinned.clone());
        Ok(pinned)
    }

    /// Writes the tree `tree` (full hex id) from the object database of the repository at
    /// `location` into `dest`, which must exist and be empty: regular files 0644,
    /// executables 0755, symlinks as symlinks (one that is absolute or resolves outside
    /// the tree is an error), submodules skipped. No mtimes are set. Safe to call from
    /// several threads at once.
    pub fn export(&self, location: &str, tree: &str, dest: &Path) -> Result<(), GitError> {
        let repo = self.open(location)?;
        let handle = repo.borrow_handle()?;
        let result = export::export(&handle, &repo.display, tree, dest);
        repo.return_handle(handle);
        result
    }

    /// How `new` relates to `old` in the repository at `location`: the commits reachable
    /// from `new` but not `old` (ahead), and the reverse (behind), as `git rev-list
    /// --left-right --count old...new` counts them. `None` when either commit is no longer
    /// in the repository (a force-push, a garbage-collected mirror): callers then say less,
    /// never fail.
    pub fn distance(&self, location: &str, old: &str, new: &str) -> Option<Distance> {
        let repo = self.open(location).ok()?;
        let state = lock(&repo.state);
        let old = git2::Oid::from_str(old).ok()?;
        let new = git2::Oid::from_str(new).ok()?;
        let (ahead, behind) = state.repo.graph_ahead_behind(new, old).ok()?;
        Some(Distance { ahead, behind })
    }

    /// The distinct contents `path` had in the commits reachable from HEAD of the
    /// repository at `location`, newest first, looking at no more than `limit` commits.
    /// Empty when there is no such repository or file: a best-effort search (replay uses
    /// it to find a recipe the store no longer has in the project's own history).
    pub fn file_history(&self, location: &str, path: &str, limit: usize) -> Vec<Vec<u8>> {
        let Ok(repo) = self.open(location) else {
            return Vec::new();
        };
        let state = lock(&repo.state);
        let r = &state.repo;
        let Ok(mut walk) = r.revwalk() else {
            return Vec::new();
        };
        if walk.push_head().is_err() {
            return Vec::new();
        }
        let _ = walk.set_sorting(git2::Sort::TIME);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for oid in walk.take(limit).flatten() {
            let Ok(commit) = r.find_commit(oid) else {
                continue;
            };
            let Ok(tree) = commit.tree() else { continue };
            let Ok(entry) = tree.get_path(Path::new(path)) else {
                continue;
            };
            if !seen.insert(entry.id()) {
                continue;
            }
            if let Ok(blob) = r.find_blob(entry.id()) {
                out.push(blob.content().to_vec());
            }
        }
        out
    }

    /// The repository for `location`, opened (and for a remote, fetched) on first use.
    fn open(&self, location: &str) -> Result<Arc<Repo>, GitError> {
        let slot = lock(&self.repos)
            .entry(location.to_string())
            .or_default()
            .clone();
        let mut slot = lock(&slot);
        if let Some(repo) = &*slot {
            return Ok(repo.clone());
        }
        let (path, display) = location::prepare(location, &self.cache_dir, self.fetch_file_urls)?;
        let repo = location::open_repository(&path, &display)?;
        let opened = Arc::new(Repo {
            display,
            path,
            state: Mutex::new(RepoState {
                repo,
                pinned: HashMap::new(),
                commits: HashMap::new(),
                versions: version::VersionCache::default(),
            }),
            pool: Mutex::new(Vec::new()),
        });
        *slot = Some(opened.clone());
        Ok(opened)
    }
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Repo {
    fn borrow_handle(&self) -> Result<Repository, GitError> {
        if let Some(handle) = lock(&self.pool).pop() {
            return Ok(handle);
        }
        location::open_repository(&self.path, &self.display)
    }

    fn return_handle(&self, handle: Repository) {
        lock(&self.pool).push(handle);
    }
}
