//! cascade-git: the `pin` stage and tree export, the only place that talks to git.
//!
//! `pin` turns a source as the user wrote it (a repository location plus a branch, tag,
//! commit or version, a sub-directory, a filter and a version tag pattern) into a
//! [`PinnedSource`]: the exact commit; the tree at the directory; the `content`, the git
//! id of the tree that is actually exported once the [`Filter`] has dropped what it
//! drops; the `epoch`, the time of the newest commit that changed that content; and the
//! component's version, from the tags of its pattern (`web-v{version}` in a monorepo).
//! Keys built on `content` and `epoch` stay the same across commits that do not touch
//! what a component exports. `export` writes a tree, by id, from the object database
//! into a directory, keeping only what a filter keeps, so uncommitted files in a working
//! copy can never reach a build.
//!
//! All IO goes through `git2` (libgit2) but fetching and pushing, which run the `git`
//! command (`location.rs` says why), and nothing is ever written into a repository
//! but the version tags `cascade release tag` asks for (`release.rs`):
//! filtered trees are hashed, not stored. Local paths and `file://` URLs are opened in
//! place; any other URL is fetched into a bare mirror under the cache dir
//! (`<cache>/<blake3 of the URL>.git`), once per [`Git`] value. Epochs are also kept
//! under the cache dir (`<cache>/epochs/`), so the next build does not walk the history
//! again.
//!
//! A [`Git`] value is meant to live for one build: it caches opened repositories, the
//! commit each `(location, rev)` resolved to, what each source pinned to and the version
//! derived for each commit and tag pattern, so pinning thousands of components that live
//! in a few repositories costs a few resolutions, and every component that names the
//! same branch sees the same commit even if the branch moves during the build.

pub mod conventional;
mod epoch;
mod error;
mod export;
mod filter;
mod location;
mod release;
mod resolve;
mod version;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use git2::{Oid, Repository};

pub use error::GitError;
pub use filter::{Filter, FilterError};
pub use release::{BranchState, CommitInfo, History, TagState, DEFAULT_TAGGER};

use version::TagPattern;

/// What a source names: a ref (branch, tag or commit SHA) or a version (a tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevSpec<'a> {
    /// A full SHA; a name starting with `refs/`, looked up as written; a branch
    /// (`refs/heads/<name>`); a tag (`refs/tags/<name>`, peeled to its commit); a
    /// remote branch (`refs/remotes/origin/<name>`); an abbreviated SHA (at least 7
    /// hex digits) — tried in this order.
    Ref(&'a str),
    /// The tag the version tag pattern gives the version; by default `v<version>`, else
    /// `<version>`.
    Version(&'a semver::Version),
}

/// How to pin one source.
#[derive(Clone, Copy, Debug)]
pub struct PinSpec<'a> {
    pub rev: RevSpec<'a>,
    /// The sub-directory that is built, relative to the repository's root.
    pub dir: Option<&'a str>,
    /// Which files of that directory are exported and keyed; `None` (or an empty
    /// filter): all.
    pub filter: Option<&'a Filter>,
    /// The version tag pattern, containing `{version}` exactly once, e.g.
    /// `web-v{version}`. `None`: tags `v{version}` and `{version}`.
    pub version_tags: Option<&'a str>,
}

/// A source resolved against its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedSource {
    /// The commit SHA, full hex.
    pub commit: String,
    /// The commit's root tree, or the tree at `dir`: unfiltered, and in the repository,
    /// so it can be exported by id.
    pub tree: String,
    /// The git id of the tree that is exported: `tree` itself without a filter; with one,
    /// the id git would give the tree of just the kept files. Two commits with the same
    /// `content` export the same files.
    pub content: String,
    /// The committer time of the pinned commit, in seconds since the epoch.
    pub commit_time: i64,
    /// The committer time of the newest commit that changed `content` (steps see it as
    /// `SOURCE_DATE_EPOCH`); see [`Git::pin`].
    pub epoch: i64,
    /// In version mode the requested version; otherwise derived from tags, see
    /// [`Git::pin`].
    pub version: semver::Version,
    /// The filter's patterns that match no file of this tree (includes, then excludes,
    /// each in the order written): most likely a typo, worth a warning.
    pub unmatched: Vec<String>,
}

/// Pins sources and exports trees; see the crate documentation. Safe to share between
/// threads.
pub struct Git {
    cache_dir: PathBuf,
    /// Whether epochs found are written to the cache (never by a plan, which writes
    /// nothing; it still reads what builds wrote).
    write_epochs: bool,
    /// Whether a remote is fetched into its mirror; offline, only a mirror that is
    /// already there is read.
    fetch: bool,
    /// Send `file://` URLs through the fetch path like any remote. Only tests set it:
    /// there is no network here, and a `file://` remote is the only remote they can use.
    pub(crate) fetch_file_urls: bool,
    /// One slot per location as written. The slot's own lock is held while the
    /// repository is opened (or fetched), so two threads never fetch the same URL twice,
    /// while different repositories open in parallel.
    repos: Mutex<HashMap<String, Arc<RepoSlot>>>,
    /// How many ancestors epoch walks have looked at: what the epoch cache saves.
    #[cfg(test)]
    pub(crate) walked: std::sync::atomic::AtomicUsize,
}

/// Starts libgit2 on a thread of its own, so a build's first pin does not wait for it
/// while the manifests could be read. Idempotent; the first use of libgit2 waits for it if needed.
pub fn warm_up() {
    let _ = std::thread::Builder::new()
        .name("cascade-git-init".into())
        // Caching is libgit2's default: this only forces its start-up.
        .spawn(|| git2::opts::enable_caching(true));
}

/// The epochs a build found reach the cache even when nobody flushed them.
impl Drop for Git {
    fn drop(&mut self) {
        self.flush_epochs();
    }
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
    /// A source as written → what it pinned to.
    pinned: HashMap<PinKey, PinnedSource>,
    /// `rev` → commit, so every `dir`, filter and pattern of one repository at one rev
    /// shares one lookup.
    commits: HashMap<RevKey, Oid>,
    pub(crate) versions: version::VersionCache,
    /// Epochs computed or read from the cache dir during this build.
    epochs: epoch::Known,
    /// Trees looked into during this build.
    trees: resolve::Trees,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PinKey {
    rev: RevKey,
    dir: Option<String>,
    filter: Option<Filter>,
    version_tags: Option<String>,
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
    /// A version's tag depends on the pattern.
    Version(semver::Version, TagPattern),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a cache was locked leaves it consistent (entries are inserted whole),
    // so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Git {
    /// `cache_dir` holds the mirrors of fetched repositories and the epoch cache (the
    /// engine passes `<store>/git`); it is created on first use.
    pub fn new(cache_dir: PathBuf) -> Self {
        Git {
            cache_dir,
            write_epochs: true,
            fetch: true,
            fetch_file_urls: false,
            repos: Mutex::new(HashMap::new()),
            #[cfg(test)]
            walked: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Writes the epochs found since the last call to the cache, one file per commit.
    /// Pinning calls it when a build's sources are pinned; dropping a `Git` does too.
    pub fn flush_epochs(&self) {
        let cache = epoch::Cache::new(&self.cache_dir, self.write_epochs);
        let slots: Vec<Arc<RepoSlot>> = lock(&self.repos).values().cloned().collect();
        for slot in slots {
            let repo = lock(&slot).clone();
            if let Some(repo) = repo {
                epoch::flush(&cache, &mut lock(&repo.state).epochs);
            }
        }
    }

    /// As [`Git::new`], but the epoch cache is only read, never written: for commands
    /// that must not write into a store (a plan, before the first build too).
    pub fn reading(cache_dir: PathBuf) -> Self {
        let mut git = Git::new(cache_dir);
        git.write_epochs = false;
        git
    }

    /// As [`Git::reading`], and a remote is never fetched: only the mirrors already in
    /// `cache_dir` are read (a remote without one is `NotARepository`). For commands that
    /// answer from what is on the disk (`lock diff`).
    pub fn offline(cache_dir: PathBuf) -> Self {
        let mut git = Git::reading(cache_dir);
        git.fetch = false;
        git
    }

    /// Resolves `spec.rev` in the repository at `location` (an absolute path to a
    /// repository, bare or not, a `file://` URL or any URL `git fetch` can fetch), then the tree
    /// at `spec.dir`, then what `spec.filter` keeps of it.
    ///
    /// The content is `tree` without a filter; with one, the id of the tree holding only
    /// the kept files (with their modes, in git's order), hashed as `git write-tree` would
    /// but written nowhere. Patterns that keep or drop nothing are in `unmatched`.
    ///
    /// The epoch follows the first-parent chain from the pinned commit: it is the
    /// committer time of the oldest commit of the unbroken run, starting at the pinned
    /// commit, whose content (same dir, same filter) equals the pinned commit's; that is
    /// the newest commit on the first-parent line that changed the exported content. A
    /// parent without the dir has other content; a revert to older content starts a new
    /// run; a root commit is its own epoch. Without a dir or filter, any commit that
    /// changes the tree changes the epoch. Epochs are cached under the cache dir, and a
    /// walk stops at the first ancestor whose epoch is cached with the same content.
    ///
    /// The version, in version mode, is the one asked for, found as the tag the pattern
    /// names (by default `v<version>`, else `<version>`). Otherwise it is derived the way
    /// `git describe` would, from the nearest version tag:
    ///
    /// - A version tag is a tag named by `spec.version_tags` with a semver (pre-release
    ///   allowed) in place of `{version}`, by default `vX.Y.Z` or `X.Y.Z`, that peels to a
    ///   commit; other tags are ignored, and build metadata is dropped.
    /// - Among the version tags reachable from the commit, the nearest is the one with the
    ///   fewest commits between: those reachable from the commit but not from the tag
    ///   (what `git rev-list --count TAG..COMMIT` counts). Ties go to the highest version.
    /// - With `N` commits between: `N = 0` gives the tag's version exactly; `N > 0` gives
    ///   `X.Y.(Z+1)-dev.N` for a release tag and `X.Y.Z-PRE.dev.N` for a pre-release tag
    ///   (`v1.0.0-rc.1` and 3 commits give `1.0.0-rc.1.dev.3`), so a derived version
    ///   always sorts after its tag and before the next release.
    /// - No version tag reachable: `0.0.0-dev.N`, with `N` the number of commits
    ///   reachable from the commit (itself included).
    pub fn pin(&self, location: &str, spec: &PinSpec<'_>) -> Result<PinnedSource, GitError> {
        let filter = spec.filter.filter(|f| !f.is_empty());
        let compiled = compile(filter)?;
        let pattern =
            TagPattern::new(spec.version_tags).ok_or_else(|| GitError::BadTagPattern {
                pattern: spec.version_tags.unwrap_or_default().to_string(),
            })?;
        let repo = self.open(location)?;
        let mut state = lock(&repo.state);
        let key = match spec.rev {
            RevSpec::Ref(name) => RevKey::Ref(name.to_string()),
            RevSpec::Version(v) => RevKey::Version(v.clone(), pattern.clone()),
        };
        let cache_key = PinKey {
            rev: key.clone(),
            dir: spec.dir.map(str::to_string),
            filter: filter.cloned(),
            version_tags: spec.version_tags.map(str::to_string),
        };
        if let Some(pinned) = state.pinned.get(&cache_key) {
            return Ok(pinned.clone());
        }
        let commit_id = match state.commits.get(&key) {
            Some(id) => *id,
            None => {
                let id = match spec.rev {
                    RevSpec::Ref(name) => resolve::resolve_ref(&state.repo, &repo.display, name)?,
                    RevSpec::Version(v) => {
                        resolve::resolve_version(&state.repo, &repo.display, v, &pattern)?
                    }
                };
                state.commits.insert(key, id);
                id
            }
        };
        let git_err = |e| GitError::git(&repo.display, e);
        let RepoState {
            repo: r,
            versions,
            epochs,
            trees,
            ..
        } = &mut *state;
        let mut reader = resolve::Reader { repo: r, trees };
        let commit = r.find_commit(commit_id).map_err(git_err)?;
        let tree = reader.tree_at(&repo.display, &commit, spec.dir)?;
        // `tree_at` succeeded, so the dir does not climb out of the tree.
        let dir = resolve::normalize_dir(spec.dir).unwrap_or_default();
        let mut memo = filter::Memo::new();
        let (content, unmatched) = match (filter, &compiled) {
            (Some(filter), Some(compiled)) => {
                let (id, seen) =
                    filter::filtered_full(r, tree, compiled, &mut memo).map_err(git_err)?;
                let patterns = filter.include.iter().chain(&filter.exclude);
                let unmatched = patterns
                    .zip(&seen.matched)
                    .filter(|(_, matched)| !**matched)
                    .map(|(p, _)| p.clone())
                    .collect();
                (id, unmatched)
            }
            _ => (tree, Vec::new()),
        };
        let source = epoch::Source {
            dir: &dir,
            filter: filter.zip(compiled.as_ref()),
        };
        let start = epoch::Content { sub: tree, content };
        let (epoch, _walked) = epoch::epoch(
            &mut reader,
            &epoch::Cache::new(&self.cache_dir, self.write_epochs),
            epochs,
            &commit,
            &source,
            start,
            &mut memo,
        )
        .map_err(git_err)?;
        #[cfg(test)]
        self.walked
            .fetch_add(_walked, std::sync::atomic::Ordering::Relaxed);
        let version = match spec.rev {
            RevSpec::Version(v) => v.clone(),
            RevSpec::Ref(_) => versions.derive(r, commit_id, &pattern).map_err(git_err)?,
        };
        let pinned = PinnedSource {
            commit: commit_id.to_string(),
            tree: tree.to_string(),
            content: content.to_string(),
            commit_time: commit.committer().when().seconds(),
            epoch,
            version,
            unmatched,
        };
        drop(commit);
        state.pinned.insert(cache_key, pinned.clone());
        Ok(pinned)
    }

    /// Writes the tree `tree` (full hex id) from the object database of the repository at
    /// `location` into `dest`, which must exist and be empty: regular files 0644,
    /// executables 0755, symlinks as symlinks (one that is absolute or resolves outside
    /// the tree is an error), submodules skipped. No mtimes are set. With a filter, only
    /// the files it keeps and the directories that hold them: exactly the tree whose id
    /// [`PinnedSource::content`] is (`None`, or an empty filter: everything). Safe to call
    /// from several threads at once.
    pub fn export(
        &self,
        location: &str,
        tree: &str,
        filter: Option<&Filter>,
        dest: &Path,
    ) -> Result<(), GitError> {
        let compiled = compile(filter.filter(|f| !f.is_empty()))?;
        let repo = self.open(location)?;
        let handle = repo.borrow_handle()?;
        let result = export::export(&handle, &repo.display, tree, compiled.as_ref(), dest);
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
        let (path, display) =
            location::prepare(location, &self.cache_dir, self.fetch_file_urls, self.fetch)?;
        let repo = location::open_repository(&path, &display)?;
        let opened = Arc::new(Repo {
            display,
            path,
            state: Mutex::new(RepoState {
                repo,
                pinned: HashMap::new(),
                commits: HashMap::new(),
                versions: version::VersionCache::default(),
                epochs: epoch::Known::default(),
                trees: resolve::Trees::default(),
            }),
            pool: Mutex::new(Vec::new()),
        });
        *slot = Some(opened.clone());
        Ok(opened)
    }
}

impl Git {
    /// The files and directories whose state decides what every ref resolves to in
    /// the repositories at `locations` (opened, not pinned): `HEAD`, `packed-refs`,
    /// `config`, `shallow` and everything under `refs/` (directories too, so a new
    /// loose ref shows), in the git dir and, for a linked worktree, its common dir. A
    /// file that does not exist is listed too: its appearance matters. `None` when a
    /// location is fetched (its refs are the remote's, known only by fetching again)
    /// or cannot be opened.
    pub fn ref_files(&self, locations: &[String]) -> Option<Vec<PathBuf>> {
        let mut out = std::collections::BTreeSet::new();
        for location in locations {
            if is_remote(location) || self.fetch_file_urls {
                return None;
            }
            let repo = self.open(location).ok()?;
            let state = lock(&repo.state);
            for dir in [state.repo.path(), state.repo.commondir()] {
                for name in ["HEAD", "packed-refs", "config", "shallow"] {
                    out.insert(dir.join(name));
                }
                walk_dir(&dir.join("refs"), &mut out);
            }
        }
        Some(out.into_iter().collect())
    }
}

/// `dir` and everything under it, into `out` (nothing when it cannot be read).
fn walk_dir(dir: &Path, out: &mut std::collections::BTreeSet<PathBuf>) {
    out.insert(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_dir(&p, out);
        } else {
            out.insert(p);
        }
    }
}

/// Whether `location` is fetched into a mirror (a URL other than `file://`) rather than
/// opened in place.
pub fn is_remote(location: &str) -> bool {
    matches!(
        location::classify(location, false),
        location::Location::Remote(_)
    )
}

/// The filter's globs, compiled; a bad one is the caller's error, never a panic (the
/// manifest loader checks them first, so it is rare).
fn compile(filter: Option<&Filter>) -> Result<Option<filter::Compiled>, GitError> {
    filter
        .map(filter::Compiled::new)
        .transpose()
        .map_err(|e| GitError::BadFilter {
            pattern: e.pattern,
            reason: e.reason,
        })
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
