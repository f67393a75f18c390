//! Tests against repositories made here with git2, with fixed signatures so every SHA is
//! the same on every run. In-crate (not `tests/`) to reach `Git::fetch_file_urls`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature, Time};
use semver::Version;
use tempfile::TempDir;

use crate::{Distance, Filter, Git, GitError, PinSpec, PinnedSource, RevSpec};

const EXEC: i32 = 0o100755;
const FILE: i32 = 0o100644;
const LINK: i32 = 0o120000;
const SUBMODULE: i32 = 0o160000;

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    repo: Repository,
    tick: i64,
}

/// A file of a commit: path, content (a symlink's target), mode.
type Entry<'a> = (&'a str, &'a [u8], i32);

impl Fixture {
    fn new() -> Self {
        Self::init(false)
    }

    fn bare() -> Self {
        Self::init(true)
    }

    fn init(bare: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(if bare { "repo.git" } else { "repo" });
        let repo = if bare {
            Repository::init_bare(&path)
        } else {
            Repository::init(&path)
        }
        .expect("init");
        Fixture {
            _dir: dir,
            path,
            repo,
            tick: 0,
        }
    }

    fn location(&self) -> String {
        self.path.to_str().expect("utf-8 temp path").to_string()
    }

    fn sig(&mut self) -> Signature<'static> {
        self.tick += 1;
        Signature::new(
            "Test",
            "test@example.com",
            &Time::new(1_700_000_000 + self.tick * 60, 0),
        )
        .expect("signature")
    }

    /// Commits `files` on top of `parents` and moves `refs/heads/<branch>` there.
    fn commit(&mut self, branch: &str, parents: &[Oid], files: &[Entry<'_>]) -> Oid {
        let sig = self.sig();
        let tree = self.tree(files);
        let tree = self.repo.find_tree(tree).expect("tree");
        let parents: Vec<_> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p).expect("parent"))
            .collect();
        let parents: Vec<_> = parents.iter().collect();
        let message = format!("commit {}", self.tick);
        let id = self
            .repo
            .commit(None, &sig, &sig, &message, &tree, &parents)
            .expect("commit");
        self.repo
            .reference(&format!("refs/heads/{branch}"), id, true, "test")
            .expect("branch");
        id
    }

    /// A commit whose only file records `n`, so every commit differs.
    fn step(&mut self, branch: &str, parents: &[Oid]) -> Oid {
        let content = format!("{}\n", self.tick);
        self.commit(branch, parents, &[("n", content.as_bytes(), FILE)])
    }

    fn tree(&self, files: &[Entry<'_>]) -> Oid {
        // path components → (content, mode), grouped by directory recursively.
        let mut here: BTreeMap<String, (Vec<u8>, i32)> = BTreeMap::new();
        let mut below: BTreeMap<String, Vec<(String, Vec<u8>, i32)>> = BTreeMap::new();
        for (path, content, mode) in files {
            match path.split_once('/') {
                Some((dir, rest)) => below.entry(dir.to_string()).or_default().push((
                    rest.to_string(),
                    content.to_vec(),
                    *mode,
                )),
                None => {
                    here.insert(path.to_string(), (content.to_vec(), *mode));
                }
            }
        }
        let mut builder = self.repo.treebuilder(None).expect("treebuilder");
        for (name, (content, mode)) in here {
            let id = if mode == SUBMODULE {
                // Any id will do: a submodule entry names a commit of another repository.
                Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid")
            } else {
                self.repo.blob(&content).expect("blob")
            };
            builder.insert(name, id, mode).expect("insert");
        }
        for (name, entries) in below {
            let entries: Vec<Entry<'_>> = entries
                .iter()
                .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
                .collect();
            let id = self.tree(&entries);
            builder.insert(name, id, 0o040000).expect("insert dir");
        }
        builder.write().expect("write tree")
    }

    fn tag(&mut self, name: &str, target: Oid, annotated: bool) {
        let sig = self.sig();
        let object = self.repo.find_object(target, None).expect("object");
        if annotated {
            self.repo
                .tag(name, &object, &sig, "release", false)
                .expect("tag");
        } else {
            self.repo
                .tag_lightweight(name, &object, false)
                .expect("tag");
        }
    }
}

fn new_git() -> (TempDir, Git) {
    let cache = tempfile::tempdir().expect("cache dir");
    let git = Git::new(cache.path().join("git"));
    (cache, git)
}

/// What is in a cache dir besides the epoch cache.
fn mirrors(cache: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "epochs")
        .collect();
    names.sort();
    names
}

fn version(s: &str) -> Version {
    Version::parse(s).expect("version")
}

/// The common case: no dir, no filter, the default version tags.
fn spec(rev: RevSpec<'_>) -> PinSpec<'_> {
    PinSpec {
        rev,
        dir: None,
        filter: None,
        version_tags: None,
    }
}

fn spec_in<'a>(rev: RevSpec<'a>, dir: &'a str) -> PinSpec<'a> {
    PinSpec {
        dir: Some(dir),
        ..spec(rev)
    }
}

fn pin_version(git: &Git, fx: &Fixture, rev: &str) -> Version {
    git.pin(&fx.location(), &spec(RevSpec::Ref(rev)))
        .expect("pin")
        .version
}

#[test]
fn git_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Git>();
    assert_send_sync::<GitError>();
}

#[test]
fn pins_a_branch() {
    let mut fx = Fixture::bare();
    let first = fx.step("main", &[]);
    let second = fx.step("main", &[first]);
    let (_c, git) = new_git();
    let pinned = git
        .pin(&fx.location(), &spec(RevSpec::Ref("main")))
        .expect("pin");
    let commit = fx.repo.find_commit(second).expect("commit");
    assert_eq!(pinned.commit, second.to_string());
    assert_eq!(pinned.tree, commit.tree_id().to_string());
    assert_eq!(pinned.commit_time, 1_700_000_000 + 2 * 60);
    assert_eq!(pinned.version, version("0.0.0-dev.2"));
    // No filter: the content is the tree; the root tree changed, so the epoch is now.
    assert_eq!(pinned.content, pinned.tree);
    assert_eq!(pinned.epoch, pinned.commit_time);
    assert!(pinned.unmatched.is_empty());
    // Fixed signatures: the same history has the same SHA everywhere.
    assert_eq!(pinned.commit.len(), 40);
}

#[test]
fn distance_counts_commits_both_ways() {
    let mut fx = Fixture::bare();
    let base = fx.step("main", &[]);
    let a1 = fx.step("main", &[base]);
    let a2 = fx.step("main", &[a1]);
    let b1 = fx.step("side", &[base]);
    let (_c, git) = new_git();
    let loc = fx.location();
    let d = |old: Oid, new: Oid| git.distance(&loc, &old.to_string(), &new.to_string());
    assert_eq!(
        d(base, a2),
        Some(crate::Distance {
            ahead: 2,
            behind: 0
        })
    );
    assert_eq!(
        d(a2, base),
        Some(crate::Distance {
            ahead: 0,
            behind: 2
        })
    );
    assert_eq!(
        d(a2, b1),
        Some(crate::Distance {
            ahead: 1,
            behind: 2
        })
    );
    let gone = "1111111111111111111111111111111111111111";
    assert_eq!(git.distance(&loc, gone, &a2.to_string()), None);
    assert_eq!(git.distance(&loc, "not hex", &a2.to_string()), None);
}

#[test]
fn pins_the_same_sha_on_every_run() {
    let mut a = Fixture::bare();
    let mut b = Fixture::bare();
    let ca = a.step("main", &[]);
    let cb = b.step("main", &[]);
    assert_eq!(ca, cb);
}

#[test]
fn pins_a_remote_tracking_branch() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    fx.repo
        .reference("refs/remotes/origin/feature", c, true, "test")
        .expect("ref");
    let (_c, git) = new_git();
    let pinned = git
        .pin(&fx.location(), &spec(RevSpec::Ref("feature")))
        .expect("pin");
    assert_eq!(pinned.commit, c.to_string());
}

#[test]
fn pins_tags_peeled_to_their_commit() {
    let mut fx = Fixture::bare();
    let first = fx.step("main", &[]);
    let second = fx.step("main", &[first]);
    fx.tag("light", first, false);
    fx.tag("annotated", second, true);
    let (_c, git) = new_git();
    let light = git
        .pin(&fx.location(), &spec(RevSpec::Ref("light")))
        .expect("pin");
    let annotated = git
        .pin(&fx.location(), &spec(RevSpec::Ref("annotated")))
        .expect("pin");
    assert_eq!(light.commit, first.to_string());
    assert_eq!(annotated.commit, second.to_string());
}

#[test]
fn pins_full_and_abbreviated_shas() {
    let mut fx = Fixture::bare();
    let first = fx.step("main", &[]);
    let _second = fx.step("main", &[first]);
    let (_c, git) = new_git();
    let full = first.to_string();
    for rev in [&full[..], &full[..7], &full[..12]] {
        let pinned = git
            .pin(&fx.location(), &spec(RevSpec::Ref(rev)))
            .expect("pin");
        assert_eq!(pinned.commit, full, "{rev}");
    }
    // Six digits are a name, not a SHA.
    let err = git
        .pin(&fx.location(), &spec(RevSpec::Ref(&full[..6])))
        .expect_err("too short");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
}

#[test]
fn pins_versions_with_and_without_v() {
    let mut fx = Fixture::bare();
    let first = fx.step("main", &[]);
    let second = fx.step("main", &[first]);
    fx.tag("v1.2.0", first, true);
    fx.tag("2.0.0", second, false);
    let (_c, git) = new_git();
    let v1 = git
        .pin(&fx.location(), &spec(RevSpec::Version(&version("1.2.0"))))
        .expect("v1.2.0");
    assert_eq!(v1.commit, first.to_string());
    assert_eq!(v1.version, version("1.2.0"));
    let v2 = git
        .pin(&fx.location(), &spec(RevSpec::Version(&version("2.0.0"))))
        .expect("2.0.0");
    assert_eq!(v2.commit, second.to_string());
    assert_eq!(v2.version, version("2.0.0"));
}

#[test]
fn unknown_version_suggests_tags() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    fx.tag("v1.2.0", c, false);
    fx.tag("v1.3.0", c, false);
    let (_c, git) = new_git();
    let err = git
        .pin(&fx.location(), &spec(RevSpec::Version(&version("1.2.1"))))
        .expect_err("no such tag");
    match err {
        GitError::UnknownRef { rev, closest, .. } => {
            assert_eq!(rev, "v1.2.1");
            // Tags only: `main` is not a version.
            assert_eq!(closest, vec!["v1.2.0", "v1.3.0"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pins_a_dir() {
    let mut fx = Fixture::bare();
    let c = fx.commit(
        "main",
        &[],
        &[
            ("README", b"top\n", FILE),
            ("packages/sdk/lib.ts", b"export {}\n", FILE),
            ("packages/other/x", b"x\n", FILE),
        ],
    );
    let (_c, git) = new_git();
    let commit = fx.repo.find_commit(c).expect("commit");
    let expected = commit
        .tree()
        .expect("tree")
        .get_path(Path::new("packages/sdk"))
        .expect("entry")
        .id();
    for dir in ["packages/sdk", "packages/sdk/", "./packages/sdk"] {
        let pinned = git
            .pin(&fx.location(), &spec_in(RevSpec::Ref("main"), dir))
            .expect("pin dir");
        assert_eq!(pinned.tree, expected.to_string(), "{dir}");
        assert_eq!(pinned.commit, c.to_string());
    }
    for dir in ["packages/nope", "README", "packages/../README", ".."] {
        let err = git
            .pin(&fx.location(), &spec_in(RevSpec::Ref("main"), dir))
            .expect_err(dir);
        match err {
            GitError::DirNotFound { dir: d, commit, .. } => {
                assert_eq!(d, dir);
                assert_eq!(commit, c.to_string());
            }
            other => panic!("{dir}: {other:?}"),
        }
    }
}

#[test]
fn version_exactly_at_a_tag() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    let b = fx.step("main", &[a]);
    fx.tag("v0.6.0", b, true);
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("0.6.0"));
}

#[test]
fn version_commits_after_a_tag() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    fx.tag("v0.6.0", a, false);
    let mut head = a;
    for _ in 0..5 {
        head = fx.step("main", &[head]);
    }
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("0.6.1-dev.5"));
}

#[test]
fn version_without_a_tag_counts_every_commit() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    let b = fx.step("main", &[a]);
    let c = fx.step("main", &[b]);
    // Tags that are not versions are ignored.
    fx.tag("release-1", c, false);
    fx.tag("v1.2", b, false);
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("0.0.0-dev.3"));
}

#[test]
fn version_after_a_pre_release_tag() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    fx.tag("v1.0.0-rc.1", a, true);
    let b = fx.step("main", &[a]);
    let c = fx.step("main", &[b]);
    let _ = fx.step("main", &[c]);
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("1.0.0-rc.1.dev.3"));
    assert_eq!(
        pin_version(&git, &fx, &a.to_string()),
        version("1.0.0-rc.1")
    );
}

#[test]
fn version_from_the_nearest_of_two_tags() {
    // r ─ x1 (v2.0.0) ────────────── m
    //  └─ y1 ─ y2 ─ y3 (v1.5.0) ─────┘
    // From m: 6 commits reachable; 2 from x1, so 4 between; 4 from y3, so 2 between.
    let mut fx = Fixture::bare();
    let r = fx.step("main", &[]);
    let x1 = fx.step("x", &[r]);
    let y1 = fx.step("y", &[r]);
    let y2 = fx.step("y", &[y1]);
    let y3 = fx.step("y", &[y2]);
    fx.step("main", &[x1, y3]);
    fx.tag("v2.0.0", x1, true);
    fx.tag("v1.5.0", y3, false);
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("1.5.1-dev.2"));
    assert_eq!(pin_version(&git, &fx, "x"), version("2.0.0"));
    // A tag on the root: the nearest for y1, and never nearer than v1.5.0 for y3.
    fx.tag("v0.1.0", r, false);
    let (_c2, fresh) = new_git();
    assert_eq!(pin_version(&fresh, &fx, "y"), version("1.5.0"));
    assert_eq!(
        pin_version(&fresh, &fx, &y1.to_string()),
        version("0.1.1-dev.1")
    );
}

#[test]
fn version_ties_go_to_the_highest() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    let b = fx.step("main", &[a]);
    fx.tag("v1.0.0", b, false);
    fx.tag("1.1.0", b, true);
    fx.tag("v1.0.5", b, false);
    fx.step("main", &[b]);
    let (_c, git) = new_git();
    assert_eq!(pin_version(&git, &fx, "main"), version("1.1.1-dev.1"));
    assert_eq!(pin_version(&git, &fx, &b.to_string()), version("1.1.0"));
}

#[test]
fn unknown_ref_lists_the_closest_names() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    for branch in ["develop", "feature/login", "release", "deploy"] {
        fx.repo
            .reference(&format!("refs/heads/{branch}"), c, true, "test")
            .expect("branch");
    }
    fx.tag("v1.0.0", c, false);
    fx.tag("devel", c, false);
    let (_c, git) = new_git();
    let err = git
        .pin(&fx.location(), &spec(RevSpec::Ref("devlop")))
        .expect_err("unknown");
    match &err {
        GitError::UnknownRef { repo, rev, closest } => {
            assert_eq!(repo, &fx.location());
            assert_eq!(rev, "devlop");
            // `deploy` is 2 edits away, `devel` 3; `main` and `release` tie at 6.
            assert_eq!(closest, &["develop", "deploy", "devel", "main", "release"]);
        }
        other => panic!("{other:?}"),
    }
    let help = miette::Diagnostic::help(&err).expect("help").to_string();
    assert!(help.contains("`develop`"), "{help}");
    // Not even a valid ref name: still an unknown ref, not a git failure.
    let err = git
        .pin(&fx.location(), &spec(RevSpec::Ref("bad..name~^:")))
        .expect_err("invalid");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
}

#[test]
fn not_a_repository_names_the_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_c, git) = new_git();
    let location = dir.path().to_str().expect("utf-8").to_string();
    let err = git
        .pin(&location, &spec(RevSpec::Ref("main")))
        .expect_err("not a repo");
    assert!(matches!(&err, GitError::NotARepository { location: l, .. } if *l == location));
    assert!(err.to_string().contains(&location));

    // A directory inside a checkout is not the checkout's repository.
    let mut fx = Fixture::new();
    fx.step("main", &[]);
    let inner = fx.path.join("sub");
    std::fs::create_dir(&inner).expect("mkdir");
    let err = git
        .pin(inner.to_str().expect("utf-8"), &spec(RevSpec::Ref("main")))
        .expect_err("not a repo");
    assert!(matches!(err, GitError::NotARepository { .. }), "{err:?}");
}

#[test]
fn file_urls_are_opened_in_place() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    let (cache, git) = new_git();
    let url = format!("file://{}", fx.location());
    let pinned = git.pin(&url, &spec(RevSpec::Ref("main"))).expect("pin");
    assert_eq!(pinned.commit, c.to_string());
    assert_eq!(
        mirrors(&cache.path().join("git")),
        Vec::<String>::new(),
        "nothing was fetched"
    );
}

#[test]
fn a_repeated_pin_sees_the_commit_of_the_first() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    let (_c, git) = new_git();
    let first = git
        .pin(&fx.location(), &spec(RevSpec::Ref("main")))
        .expect("pin");
    let _b = fx.step("main", &[a]);
    // Within one build every component on `main` sees the same commit…
    let again = git
        .pin(&fx.location(), &spec_in(RevSpec::Ref("main"), "."))
        .expect("pin");
    assert_eq!(again.commit, first.commit);
    // …and the next build sees the branch as it is then.
    let (_c2, next) = new_git();
    let later = next
        .pin(&fx.location(), &spec(RevSpec::Ref("main")))
        .expect("pin");
    assert_ne!(later.commit, first.commit);
}

#[test]
fn fetches_remotes_into_a_mirror() {
    let mut upstream = Fixture::bare();
    let a = upstream.commit(
        "main",
        &[],
        &[
            ("app/main.c", b"int main(){}\n", FILE),
            ("README", b"r\n", FILE),
        ],
    );
    upstream.tag("v0.1.0", a, true);
    let url = format!("file://{}", upstream.location());
    let (cache, mut git) = new_git();
    git.fetch_file_urls = true;
    let pinned = git
        .pin(&url, &spec_in(RevSpec::Ref("main"), "app"))
        .expect("pin through a fetch");
    assert_eq!(pinned.commit, a.to_string());
    assert_eq!(pinned.version, version("0.1.0"));
    let mirror = cache
        .path()
        .join("git")
        .join(format!("{}.git", blake3::hash(url.as_bytes()).to_hex()));
    assert!(mirror.join("refs/heads/main").exists() || mirror.join("packed-refs").exists());
    let mirrored = Repository::open_bare(&mirror).expect("mirror is a bare repository");
    assert!(mirrored.find_reference("refs/tags/v0.1.0").is_ok());
    // Only the mirror is left beside the epoch cache: the temp dir was renamed into place.
    let entries = mirrors(&cache.path().join("git"));
    assert_eq!(entries.len(), 1, "{entries:?}");

    // The export comes from the mirror too.
    let dest = tempfile::tempdir().expect("dest");
    git.export(&url, &pinned.tree, None, dest.path())
        .expect("export");
    assert_eq!(
        std::fs::read(dest.path().join("main.c")).expect("file"),
        b"int main(){}\n"
    );

    // A later build fetches again and sees new commits; deleted branches go away.
    let b = upstream.step("main", &[a]);
    upstream.step("gone", &[a]);
    let mut second = Git::new(cache.path().join("git"));
    second.fetch_file_urls = true;
    assert_eq!(
        second
            .pin(&url, &spec(RevSpec::Ref("gone")))
            .expect("gone exists")
            .version,
        version("0.1.1-dev.1")
    );
    upstream
        .repo
        .find_reference("refs/heads/gone")
        .expect("ref")
        .delete()
        .expect("delete");
    let mut third = Git::new(cache.path().join("git"));
    third.fetch_file_urls = true;
    let pinned = third.pin(&url, &spec(RevSpec::Ref("main"))).expect("pin");
    assert_eq!(pinned.commit, b.to_string());
    let err = third
        .pin(&url, &spec(RevSpec::Ref("gone")))
        .expect_err("pruned");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
}

/// Offline, a remote is read from its mirror when there is one, and never fetched.
#[test]
fn offline_reads_only_the_mirrors_there_are() {
    let mut upstream = Fixture::bare();
    let a = upstream.commit("main", &[], &[("README", b"r\n", FILE)]);
    let b = upstream.step("main", &[a]);
    let url = format!("file://{}", upstream.location());
    let (cache, _) = new_git();
    let offline = || {
        let mut git = Git::offline(cache.path().join("git"));
        git.fetch_file_urls = true;
        git
    };
    assert_eq!(
        offline().distance(&url, &a.to_string(), &b.to_string()),
        None
    );
    assert!(
        mirrors(&cache.path().join("git")).is_empty(),
        "nothing fetched"
    );

    let mut fetching = Git::new(cache.path().join("git"));
    fetching.fetch_file_urls = true;
    fetching
        .pin(&url, &spec(RevSpec::Ref("main")))
        .expect("pin");
    let c = upstream.step("main", &[b]);
    let git = offline();
    assert_eq!(
        git.distance(&url, &a.to_string(), &b.to_string()),
        Some(Distance {
            ahead: 1,
            behind: 0
        })
    );
    // A commit made upstream since the mirror was fetched is not there.
    assert_eq!(git.distance(&url, &a.to_string(), &c.to_string()), None);
}

#[test]
fn a_failed_fetch_leaves_nothing_behind() {
    let (cache, mut git) = new_git();
    git.fetch_file_urls = true;
    let missing = cache.path().join("no-such-repo");
    let url = format!("file://{}", missing.display());
    let err = git
        .pin(&url, &spec(RevSpec::Ref("main")))
        .expect_err("nothing to fetch");
    assert!(
        matches!(&err, GitError::FetchFailed { url: u, .. } if *u == url),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(cache.path().join("git"))
        .expect("cache dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn fetch_errors_never_show_credentials() {
    let (cache, git) = new_git();
    // Port 1 on loopback: refused at once, nothing leaves the machine.
    let url = "http://alice:hunter2@127.0.0.1:1/repo.git";
    let err = git
        .pin(url, &spec(RevSpec::Ref("main")))
        .expect_err("unreachable");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("alice"), "{shown}");
    match err {
        GitError::FetchFailed { url, .. } => assert_eq!(url, "http://127.0.0.1:1/repo.git"),
        other => panic!("{other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(cache.path().join("git"))
        .expect("cache dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn exports_files_modes_and_symlinks() {
    let mut fx = Fixture::bare();
    let c = fx.commit(
        "main",
        &[],
        &[
            ("README", b"hello\n", FILE),
            ("bin/run", b"#!/bin/sh\necho hi\n", EXEC),
            ("lib/deep/er/x.h", b"#pragma once\n", FILE),
            ("link-to-readme", b"README", LINK),
            ("bin/up", b"../lib/deep", LINK),
            ("dangling", b"nowhere/yet", LINK),
            ("vendor/sub", b"", SUBMODULE),
        ],
    );
    let tree = fx.repo.find_commit(c).expect("commit").tree_id();
    let (_c, git) = new_git();
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &tree.to_string(), None, dest.path())
        .expect("export");
    let d = dest.path();
    assert_eq!(std::fs::read(d.join("README")).expect("README"), b"hello\n");
    assert_eq!(mode(&d.join("README")), 0o644);
    assert_eq!(mode(&d.join("bin/run")), 0o755);
    assert_eq!(
        std::fs::read(d.join("lib/deep/er/x.h")).expect("x.h"),
        b"#pragma once\n"
    );
    assert_eq!(
        std::fs::read_link(d.join("link-to-readme")).expect("link"),
        Path::new("README")
    );
    assert_eq!(
        std::fs::read_link(d.join("bin/up")).expect("link"),
        Path::new("../lib/deep")
    );
    assert!(d.join("bin/up/er/x.h").exists());
    assert!(std::fs::symlink_metadata(d.join("dangling")).is_ok());
    // The submodule is skipped, its directory with it.
    assert!(d.join("vendor").is_dir());
    assert!(!d.join("vendor/sub").exists());
}

#[test]
fn exports_the_committed_tree_not_the_work_tree() {
    let mut fx = Fixture::new();
    let c = fx.commit("main", &[], &[("src/a.c", b"committed\n", FILE)]);
    fx.repo.set_head("refs/heads/main").expect("head");
    fx.repo
        .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .expect("checkout");
    std::fs::write(fx.path.join("src/a.c"), "edited\n").expect("edit");
    std::fs::write(fx.path.join("untracked"), "new\n").expect("untracked");
    let (_c, git) = new_git();
    let pinned = git
        .pin(&fx.location(), &spec(RevSpec::Ref("main")))
        .expect("pin");
    assert_eq!(pinned.commit, c.to_string());
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &pinned.tree, None, dest.path())
        .expect("export");
    assert_eq!(
        std::fs::read(dest.path().join("src/a.c")).expect("a.c"),
        b"committed\n"
    );
    assert!(!dest.path().join("untracked").exists());
    assert!(!dest.path().join(".git").exists());
}

#[test]
fn export_rejects_symlinks_out_of_the_tree() {
    let cases: [&[Entry<'_>]; 5] = [
        &[("abs", b"/etc/passwd", LINK)],
        &[("up", b"..", LINK)],
        &[("d/up", b"../../x", LINK)],
        // Textually inside, but `d/a` is the root, so `d/a/..` is its parent.
        &[("d/a", b"..", LINK), ("d/c", b"a/..", LINK)],
        &[("loop1", b"loop2/x", LINK), ("loop2", b"loop1/x", LINK)],
    ];
    for files in cases {
        let mut fx = Fixture::bare();
        let c = fx.commit("main", &[], files);
        let tree = fx.repo.find_commit(c).expect("commit").tree_id();
        let (_c, git) = new_git();
        let dest = tempfile::tempdir().expect("dest");
        let err = git
            .export(&fx.location(), &tree.to_string(), None, dest.path())
            .expect_err("escaping symlink");
        assert!(
            matches!(err, GitError::BadTreeEntry { .. }),
            "{files:?}: {err:?}"
        );
    }
}

#[test]
fn export_of_an_unknown_tree_is_an_error() {
    let mut fx = Fixture::bare();
    fx.step("main", &[]);
    let (_c, git) = new_git();
    let dest = tempfile::tempdir().expect("dest");
    for tree in ["0123456789abcdef0123456789abcdef01234567", "zz"] {
        let err = git
            .export(&fx.location(), tree, None, dest.path())
            .expect_err("unknown tree");
        assert!(matches!(err, GitError::TreeNotFound { .. }), "{err:?}");
    }
}

#[test]
fn exports_in_parallel() {
    let mut fx = Fixture::bare();
    let files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("dir{}/f{i}", i % 5), format!("{i}\n").into_bytes()))
        .collect();
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice(), FILE))
        .collect();
    let c = fx.commit("main", &[], &entries);
    let tree = fx
        .repo
        .find_commit(c)
        .expect("commit")
        .tree_id()
        .to_string();
    let (_c, git) = new_git();
    let location = fx.location();
    let dests: Vec<TempDir> = (0..8).map(|_| tempfile::tempdir().expect("dest")).collect();
    std::thread::scope(|s| {
        for dest in &dests {
            let (git, location, tree) = (&git, &location, &tree);
            s.spawn(move || {
                git.export(location, tree, None, dest.path())
                    .expect("export")
            });
        }
    });
    for dest in &dests {
        for (path, content) in &files {
            assert_eq!(
                &std::fs::read(dest.path().join(path)).expect("file"),
                content
            );
        }
    }
}

#[test]
fn many_pins_of_one_repository_are_cheap() {
    let mut fx = Fixture::bare();
    let files: Vec<String> = (0..200).map(|i| format!("c{i}/src")).collect();
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|p| (p.as_str(), &b"x"[..], FILE))
        .collect();
    let mut head = fx.commit("main", &[], &entries);
    fx.tag("v1.0.0", head, false);
    for i in 0..20 {
        let counter = format!("{i}");
        let mut next = entries.clone();
        next.push(("counter", counter.as_bytes(), FILE));
        head = fx.commit("main", &[head], &next);
    }
    let (_c, git) = new_git();
    let start = std::time::Instant::now();
    for i in 0..200 {
        let dir = format!("c{i}");
        let pinned = git
            .pin(&fx.location(), &spec_in(RevSpec::Ref("main"), &dir))
            .expect("pin");
        assert_eq!(pinned.commit, head.to_string());
        assert_eq!(pinned.version, version("1.0.1-dev.20"));
    }
    // Generous: only a missing cache (a revwalk per pin) would come near it.
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}

// ---- Content, filters and epochs ----

fn filter(include: &[&str], exclude: &[&str]) -> Filter {
    Filter {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn time_of(fx: &Fixture, commit: Oid) -> i64 {
    fx.repo
        .find_commit(commit)
        .expect("commit")
        .committer()
        .when()
        .seconds()
}

fn pin_at(
    git: &Git,
    fx: &Fixture,
    commit: Oid,
    dir: Option<&str>,
    f: Option<&Filter>,
) -> PinnedSource {
    let rev = commit.to_string();
    let pinned = git
        .pin(
            &fx.location(),
            &PinSpec {
                rev: RevSpec::Ref(&rev),
                dir,
                filter: f,
                version_tags: None,
            },
        )
        .expect("pin");
    // As a build does once its sources are pinned.
    git.flush_epochs();
    pinned
}

fn walked(git: &Git) -> usize {
    git.walked.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many objects the repository's object database holds.
fn object_count(repo: &Repository) -> usize {
    let mut n = 0;
    repo.odb()
        .expect("odb")
        .foreach(|_| {
            n += 1;
            true
        })
        .expect("foreach");
    n
}

/// Every path under `root`, sorted, directories marked with a trailing `/`.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_str()
                .expect("utf-8")
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The tree git would write for the files exported to `root`, built in a repository of
/// its own with their contents and modes.
fn tree_of_export(root: &Path) -> Oid {
    let fx = Fixture::bare();
    let mut files: Vec<(String, Vec<u8>, i32)> = Vec::new();
    for rel in listing(root) {
        if rel.ends_with('/') {
            continue;
        }
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let (content, mode) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("link");
            (target.to_str().expect("utf-8").as_bytes().to_vec(), LINK)
        } else if meta.permissions().mode() & 0o100 != 0 {
            (std::fs::read(&path).expect("read"), EXEC)
        } else {
            (std::fs::read(&path).expect("read"), FILE)
        };
        files.push((rel, content, mode));
    }
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
        .collect();
    fx.tree(&entries)
}

/// The tree `git write-tree` writes for an index holding `files` (path, blob id, mode).
fn write_tree_of_index(repo: &Repository, files: &[(&str, Oid, i32)]) -> Oid {
    let mut index = git2::Index::new().expect("index");
    for (path, id, mode) in files {
        let zero = git2::IndexTime::new(0, 0);
        index
            .add(&git2::IndexEntry {
                ctime: zero,
                mtime: zero,
                dev: 0,
                ino: 0,
                mode: *mode as u32,
                uid: 0,
                gid: 0,
                file_size: 0,
                id: *id,
                flags: path.len().min(0xfff) as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            })
            .expect("add to index");
    }
    index.write_tree_to(repo).expect("write-tree")
}

/// A tree whose names test git's entry order: `a-` < `a.b` < `a/` < `a0`.
const TRICKY: [Entry<'static>; 12] = [
    ("README.md", b"readme\n", FILE),
    ("pkg/a-", b"dash\n", FILE),
    ("pkg/a.b", b"dot\n", FILE),
    ("pkg/a/x.c", b"int x;\n", FILE),
    ("pkg/a/skip.c", b"skipped\n", FILE),
    ("pkg/a0", b"zero\n", FILE),
    ("pkg/bin/run", b"#!/bin/sh\n", EXEC),
    ("pkg/docs/guide.md", b"guide\n", FILE),
    ("pkg/link", b"a/x.c", LINK),
    ("pkg/vendor/sub", b"", SUBMODULE),
    ("pkg/vendor/other", b"", SUBMODULE),
    ("pkg/z/deep/er/y.c", b"int y;\n", FILE),
];

#[test]
fn filtered_content_is_the_tree_git_writes_for_the_kept_files() {
    let mut fx = Fixture::bare();
    let c = fx.commit("main", &[], &TRICKY);
    let f = filter(
        &[
            "a-",
            "a.b",
            "a/**",
            "a0",
            "bin/*",
            "link",
            "vendor/sub",
            "**/*.c",
        ],
        &["**/skip*", "docs/**"],
    );
    let before = object_count(&fx.repo);
    let (_c, git) = new_git();
    let pinned = pin_at(&git, &fx, c, Some("pkg"), Some(&f));
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &pinned.tree, Some(&f), dest.path())
        .expect("export");
    // Neither pinning nor exporting writes into the repository.
    assert_eq!(object_count(&fx.repo), before);
    assert_ne!(pinned.content, pinned.tree);
    let content = Oid::from_str(&pinned.content).expect("content id");
    assert!(
        fx.repo.find_tree(content).is_err(),
        "the filtered tree was written"
    );
    assert!(pinned.unmatched.is_empty(), "{:?}", pinned.unmatched);

    // Exactly the kept files (the submodule skipped, as without a filter; `vendor`
    // holds a kept entry, so it is there, empty).
    assert_eq!(
        listing(dest.path()),
        [
            "a-",
            "a.b",
            "a/",
            "a/x.c",
            "a0",
            "bin/",
            "bin/run",
            "link",
            "vendor/",
            "z/",
            "z/deep/",
            "z/deep/er/",
            "z/deep/er/y.c",
        ]
    );

    // The same files built into trees by git2, both ways git writes a tree.
    let kept: Vec<Entry<'_>> = TRICKY
        .iter()
        .filter_map(|(p, c, m)| {
            let rel = p.strip_prefix("pkg/")?;
            let dropped = rel.contains("skip") || rel.starts_with("docs/") || rel == "vendor/other";
            (!dropped).then_some((rel, *c, *m))
        })
        .collect();
    assert_eq!(fx.tree(&kept).to_string(), pinned.content, "treebuilder");
    let blobs: Vec<(String, Oid, i32)> = kept
        .iter()
        .map(|(p, c, m)| {
            let id = if *m == SUBMODULE {
                Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid")
            } else {
                fx.repo.blob(c).expect("blob")
            };
            (p.to_string(), id, *m)
        })
        .collect();
    let index: Vec<(&str, Oid, i32)> = blobs
        .iter()
        .map(|(p, id, m)| (p.as_str(), *id, *m))
        .collect();
    assert_eq!(
        write_tree_of_index(&fx.repo, &index).to_string(),
        pinned.content,
        "index"
    );
}

#[test]
fn the_export_is_the_content() {
    // Without submodules, the exported files themselves hash back to `content`.
    let mut fx = Fixture::bare();
    let files: Vec<Entry<'_>> = TRICKY
        .iter()
        .copied()
        .filter(|e| e.2 != SUBMODULE)
        .collect();
    let c = fx.commit("main", &[], &files);
    let (_c, git) = new_git();
    for f in [
        filter(&["**/*.c"], &[]),
        filter(&[], &["a/**", "bin/run"]),
        filter(&["a*", "link"], &["a/skip.c"]),
        filter(&["z/**"], &[]),
    ] {
        let pinned = pin_at(&git, &fx, c, Some("pkg"), Some(&f));
        let dest = tempfile::tempdir().expect("dest");
        git.export(&fx.location(), &pinned.tree, Some(&f), dest.path())
            .expect("export");
        assert_eq!(
            tree_of_export(dest.path()).to_string(),
            pinned.content,
            "{f:?}: {:?}",
            listing(dest.path())
        );
    }
    // Without a filter too: the content is the tree.
    let pinned = pin_at(&git, &fx, c, Some("pkg"), None);
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &pinned.tree, None, dest.path())
        .expect("export");
    assert_eq!(tree_of_export(dest.path()).to_string(), pinned.content);
    assert_eq!(pinned.content, pinned.tree);
}

#[test]
fn an_empty_filter_is_no_filter() {
    let mut fx = Fixture::bare();
    let c = fx.commit("main", &[], &[("src/a", b"a\n", FILE), ("b", b"b\n", FILE)]);
    let (_c, git) = new_git();
    let pinned = pin_at(&git, &fx, c, None, Some(&Filter::default()));
    assert_eq!(pinned.content, pinned.tree);
    assert_eq!(pinned, pin_at(&git, &fx, c, None, None));
    // A filter that keeps everything gives the tree's own id.
    let all = pin_at(&git, &fx, c, None, Some(&filter(&["**"], &[])));
    assert_eq!(all.content, all.tree);
}

#[test]
fn a_filter_that_keeps_nothing_exports_nothing() {
    let mut fx = Fixture::bare();
    let c = fx.commit("main", &[], &[("src/a", b"a\n", FILE)]);
    let (_c, git) = new_git();
    let f = filter(&["*.md"], &[]);
    let pinned = pin_at(&git, &fx, c, None, Some(&f));
    assert_eq!(pinned.content, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    assert_eq!(pinned.unmatched, vec!["*.md"]);
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &pinned.tree, Some(&f), dest.path())
        .expect("export");
    assert!(listing(dest.path()).is_empty());
}

#[test]
fn unmatched_patterns_are_listed_as_written() {
    let mut fx = Fixture::bare();
    let c = fx.commit(
        "main",
        &[],
        &[
            ("src/a.rs", b"a\n", FILE),
            ("src/b.rs", b"b\n", FILE),
            ("x.tmp", b"t\n", FILE),
        ],
    );
    let (_c, git) = new_git();
    // `src` names a directory, and filters match files: it matches nothing. An exclude
    // counts as matched even for a file no include keeps.
    let f = filter(
        &["src/**", "nope/**", "src", "*.rs"],
        &["*.tmp", "src/gone.rs", "src/b.rs"],
    );
    let pinned = pin_at(&git, &fx, c, None, Some(&f));
    assert_eq!(
        pinned.unmatched,
        vec!["nope/**", "src", "*.rs", "src/gone.rs"]
    );
}

#[test]
fn bad_globs_are_errors_not_panics() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    let (_c, git) = new_git();
    let f = filter(&["ok/**"], &["a[b"]);
    let rev = c.to_string();
    let err = git
        .pin(
            &fx.location(),
            &PinSpec {
                filter: Some(&f),
                ..spec(RevSpec::Ref(&rev))
            },
        )
        .expect_err("bad glob");
    assert!(
        matches!(&err, GitError::BadFilter { pattern, .. } if pattern == "a[b"),
        "{err:?}"
    );
    let tree = fx
        .repo
        .find_commit(c)
        .expect("commit")
        .tree_id()
        .to_string();
    let dest = tempfile::tempdir().expect("dest");
    let err = git
        .export(&fx.location(), &tree, Some(&f), dest.path())
        .expect_err("bad glob");
    assert!(matches!(err, GitError::BadFilter { .. }), "{err:?}");
}

#[test]
fn filtered_symlinks_are_checked_against_the_filtered_tree() {
    // `d/a -> ..` makes `d/c -> a/..` point out of the tree; with `d/a` filtered out,
    // `d/c` is a dangling link inside it.
    let mut fx = Fixture::bare();
    let c = fx.commit(
        "main",
        &[],
        &[
            ("d/a", b"..", LINK),
            ("d/c", b"a/..", LINK),
            ("f", b"f\n", FILE),
        ],
    );
    let tree = fx
        .repo
        .find_commit(c)
        .expect("commit")
        .tree_id()
        .to_string();
    let (_c, git) = new_git();
    let dest = tempfile::tempdir().expect("dest");
    let err = git
        .export(&fx.location(), &tree, None, dest.path())
        .expect_err("escapes");
    assert!(matches!(err, GitError::BadTreeEntry { .. }), "{err:?}");
    let dest = tempfile::tempdir().expect("dest");
    git.export(
        &fx.location(),
        &tree,
        Some(&filter(&[], &["d/a"])),
        dest.path(),
    )
    .expect("export");
    assert_eq!(listing(dest.path()), ["d/", "d/c", "f"]);
}

#[test]
fn epoch_is_the_newest_change_to_the_dir() {
    let mut fx = Fixture::bare();
    let c1 = fx.commit("main", &[], &[("a/x", b"1\n", FILE), ("b/y", b"1\n", FILE)]);
    let c2 = fx.commit(
        "main",
        &[c1],
        &[("a/x", b"2\n", FILE), ("b/y", b"1\n", FILE)],
    );
    let c3 = fx.commit(
        "main",
        &[c2],
        &[("a/x", b"2\n", FILE), ("b/y", b"3\n", FILE)],
    );
    let c4 = fx.commit(
        "main",
        &[c3],
        &[("a/x", b"4\n", FILE), ("b/y", b"3\n", FILE)],
    );
    let (_c, git) = new_git();
    let b = pin_at(&git, &fx, c4, Some("b"), None);
    assert_eq!(b.commit_time, time_of(&fx, c4));
    assert_eq!(b.epoch, time_of(&fx, c3));
    assert_eq!(b.content, b.tree);
    assert_eq!(
        pin_at(&git, &fx, c4, Some("a"), None).epoch,
        time_of(&fx, c4)
    );
    // The root commit is its own epoch.
    assert_eq!(
        pin_at(&git, &fx, c2, Some("b"), None).epoch,
        time_of(&fx, c1)
    );
    assert_eq!(
        pin_at(&git, &fx, c1, Some("b"), None).epoch,
        time_of(&fx, c1)
    );
    // A commit that only touches another dir keeps the content, so keys stay the same.
    assert_eq!(
        pin_at(&git, &fx, c3, Some("b"), None).content,
        pin_at(&git, &fx, c4, Some("b"), None).content
    );
}

#[test]
fn epoch_starts_where_the_dir_appears() {
    let mut fx = Fixture::bare();
    let c1 = fx.commit("main", &[], &[("a/x", b"1\n", FILE)]);
    let c2 = fx.commit(
        "main",
        &[c1],
        &[("a/x", b"1\n", FILE), ("b/y", b"1\n", FILE)],
    );
    let c3 = fx.commit(
        "main",
        &[c2],
        &[("a/x", b"3\n", FILE), ("b/y", b"1\n", FILE)],
    );
    let (_c, git) = new_git();
    assert_eq!(
        pin_at(&git, &fx, c3, Some("b"), None).epoch,
        time_of(&fx, c2)
    );
    // A filter that keeps nothing of `b` still sees it appear.
    let nothing = filter(&["*.none"], &[]);
    assert_eq!(
        pin_at(&git, &fx, c3, Some("b"), Some(&nothing)).epoch,
        time_of(&fx, c2)
    );
}

#[test]
fn epoch_ignores_what_the_filter_drops() {
    let mut fx = Fixture::bare();
    let f = filter(&["src/**", "Cargo.toml"], &["src/**/*.md"]);
    let c1 = fx.commit(
        "main",
        &[],
        &[("src/lib.rs", b"1\n", FILE), ("Cargo.toml", b"1\n", FILE)],
    );
    // Only an excluded file, then only a file no include keeps.
    let c2 = fx.commit(
        "main",
        &[c1],
        &[
            ("src/lib.rs", b"1\n", FILE),
            ("src/notes.md", b"2\n", FILE),
            ("Cargo.toml", b"1\n", FILE),
        ],
    );
    let c3 = fx.commit(
        "main",
        &[c2],
        &[
            ("src/lib.rs", b"1\n", FILE),
            ("src/notes.md", b"2\n", FILE),
            ("Cargo.toml", b"1\n", FILE),
            ("README", b"3\n", FILE),
        ],
    );
    // A kept file's mode changes: that is a change.
    let c4 = fx.commit(
        "main",
        &[c3],
        &[
            ("src/lib.rs", b"1\n", EXEC),
            ("src/notes.md", b"2\n", FILE),
            ("Cargo.toml", b"1\n", FILE),
            ("README", b"3\n", FILE),
        ],
    );
    let (_c, git) = new_git();
    let at3 = pin_at(&git, &fx, c3, None, Some(&f));
    assert_eq!(at3.epoch, time_of(&fx, c1));
    assert_eq!(at3.content, pin_at(&git, &fx, c1, None, Some(&f)).content);
    let at4 = pin_at(&git, &fx, c4, None, Some(&f));
    assert_eq!(at4.epoch, time_of(&fx, c4));
    assert_ne!(at4.content, at3.content);
    // Unfiltered, every one of those commits is a change.
    assert_eq!(pin_at(&git, &fx, c3, None, None).epoch, time_of(&fx, c3));
    // With a dir and a filter: a change inside the dir to a dropped file keeps it.
    let mut fx = Fixture::bare();
    let f = filter(&[], &["*.log"]);
    let d1 = fx.commit(
        "main",
        &[],
        &[("b/y", b"1\n", FILE), ("b/z.log", b"1\n", FILE)],
    );
    let d2 = fx.commit(
        "main",
        &[d1],
        &[("b/y", b"1\n", FILE), ("b/z.log", b"2\n", FILE)],
    );
    let (_c2, git) = new_git();
    let pinned = pin_at(&git, &fx, d2, Some("b"), Some(&f));
    assert_eq!(pinned.epoch, time_of(&fx, d1));
    assert_ne!(
        pin_at(&git, &fx, d2, Some("b"), None).epoch,
        time_of(&fx, d1)
    );
}

#[test]
fn a_revert_is_a_change() {
    let mut fx = Fixture::bare();
    let a = fx.commit("main", &[], &[("b/y", b"A\n", FILE)]);
    let b = fx.commit("main", &[a], &[("b/y", b"B\n", FILE)]);
    let back = fx.commit("main", &[b], &[("b/y", b"A\n", FILE)]);
    let (_c, git) = new_git();
    let pinned = pin_at(&git, &fx, back, Some("b"), None);
    // The same content as the first commit, but the run is broken by `b`.
    assert_eq!(
        pinned.content,
        pin_at(&git, &fx, a, Some("b"), None).content
    );
    assert_eq!(pinned.epoch, time_of(&fx, back));
}

#[test]
fn a_merge_follows_its_first_parent() {
    //   c1 ─ c2 (touches a) ─ m1 (side's b discarded) ─ m2 (side's b taken)
    //    └─ s1 (touches b) ──┴─────────────────────────┘
    let mut fx = Fixture::bare();
    let c1 = fx.commit("main", &[], &[("a/x", b"1\n", FILE), ("b/y", b"1\n", FILE)]);
    let s1 = fx.commit(
        "side",
        &[c1],
        &[("a/x", b"1\n", FILE), ("b/y", b"s\n", FILE)],
    );
    let c2 = fx.commit(
        "main",
        &[c1],
        &[("a/x", b"2\n", FILE), ("b/y", b"1\n", FILE)],
    );
    let m1 = fx.commit(
        "main",
        &[c2, s1],
        &[("a/x", b"2\n", FILE), ("b/y", b"1\n", FILE)],
    );
    let m2 = fx.commit(
        "main",
        &[m1, s1],
        &[("a/x", b"2\n", FILE), ("b/y", b"s\n", FILE)],
    );
    let (_c, git) = new_git();
    assert_eq!(
        pin_at(&git, &fx, m1, Some("b"), None).epoch,
        time_of(&fx, c1)
    );
    // Its content is side's, but on the first-parent line it changed at the merge.
    assert_eq!(
        pin_at(&git, &fx, m2, Some("b"), None).epoch,
        time_of(&fx, m2)
    );
}

#[test]
fn without_dir_or_filter_only_an_empty_commit_keeps_the_epoch() {
    let mut fx = Fixture::bare();
    let c1 = fx.commit("main", &[], &[("x", b"1\n", FILE)]);
    let c2 = fx.commit("main", &[c1], &[("x", b"2\n", FILE)]);
    let empty = fx.commit("main", &[c2], &[("x", b"2\n", FILE)]);
    let (_c, git) = new_git();
    let at2 = pin_at(&git, &fx, c2, None, None);
    assert_eq!(at2.epoch, at2.commit_time);
    let at_empty = pin_at(&git, &fx, empty, None, None);
    assert_eq!(at_empty.epoch, time_of(&fx, c2));
    assert!(at_empty.commit_time > at_empty.epoch);
}

#[test]
fn pins_of_one_rev_differ_by_dir_filter_and_pattern() {
    let mut fx = Fixture::bare();
    let c = fx.commit(
        "main",
        &[],
        &[
            ("a/x", b"1\n", FILE),
            ("a/y.md", b"1\n", FILE),
            ("b/z", b"1\n", FILE),
        ],
    );
    fx.tag("web-v1.0.0", c, false);
    let (_c, git) = new_git();
    let md = filter(&["*.md"], &[]);
    fn pin(
        git: &Git,
        fx: &Fixture,
        dir: &str,
        f: Option<&Filter>,
        tags: Option<&str>,
    ) -> PinnedSource {
        let spec = PinSpec {
            rev: RevSpec::Ref("main"),
            dir: Some(dir),
            filter: f,
            version_tags: tags,
        };
        git.pin(&fx.location(), &spec).expect("pin")
    }
    let a = pin(&git, &fx, "a", None, None);
    // The branch moves after the first pin; the other sources still share its commit.
    fx.step("main", &[c]);
    let a_md = pin(&git, &fx, "a", Some(&md), None);
    let b = pin(&git, &fx, "b", None, None);
    let web = pin(&git, &fx, "a", None, Some("web-v{version}"));
    assert_ne!(a.content, a_md.content);
    assert_ne!(a.content, b.content);
    assert_eq!(a.version, version("0.0.0-dev.1"));
    assert_eq!(web.version, version("1.0.0"));
    assert_eq!(web.content, a.content);
    for p in [&a_md, &b, &web] {
        assert_eq!(p.commit, c.to_string());
    }
    // And again from the in-memory cache, unchanged.
    assert_eq!(pin(&git, &fx, "a", Some(&md), None), a_md);
    assert_eq!(pin(&git, &fx, "a", None, Some("web-v{version}")), web);
}

// ---- The epoch cache ----

/// `n` commits on `main`, each changing `a/x`; `b/y` never changes. `a/x` alternates
/// between two contents, so the trees are written once and a long history costs one
/// object a commit (libgit2 is not optimized in test builds).
fn history(fx: &mut Fixture, n: usize) -> Vec<Oid> {
    let roots = [0, 1].map(|i| {
        let x = format!("{i}\n");
        fx.tree(&[("a/x", x.as_bytes(), FILE), ("b/y", b"same\n", FILE)])
    });
    let mut commits: Vec<Oid> = Vec::with_capacity(n);
    for i in 0..n {
        let root = roots[i % 2];
        let sig = fx.sig();
        let tree = fx.repo.find_tree(root).expect("tree");
        let parent = commits
            .last()
            .map(|p| fx.repo.find_commit(*p).expect("parent"));
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let id = fx
            .repo
            .commit(None, &sig, &sig, "step", &tree, &parents)
            .expect("commit");
        commits.push(id);
    }
    if let Some(head) = commits.last() {
        fx.repo
            .reference("refs/heads/main", *head, true, "test")
            .expect("branch");
    }
    commits
}

fn epoch_files(cache: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache.join("epochs")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
}

/// A reading `Git` (a plan's) uses the epochs builds wrote and writes none itself, so
/// it creates nothing where no store exists.
#[test]
fn a_reading_git_writes_no_epoch() {
    let mut fx = Fixture::bare();
    let commits = history(&mut fx, 5);
    let first_time = time_of(&fx, commits[0]);
    let cache = tempfile::tempdir().expect("cache");
    let dir = cache.path().join("git");
    let reader = Git::reading(dir.clone());
    assert_eq!(
        pin_at(&reader, &fx, commits[3], Some("b"), None).epoch,
        first_time
    );
    assert!(!dir.exists(), "a reader created its cache dir");
    let writer = Git::new(dir.clone());
    pin_at(&writer, &fx, commits[3], Some("b"), None);
    assert_eq!(epoch_files(&dir).len(), 1);
    let reader = Git::reading(dir.clone());
    pin_at(&reader, &fx, commits[4], Some("b"), None);
    assert_eq!(walked(&reader), 1, "the reader used the writer's entry");
    assert_eq!(epoch_files(&dir).len(), 1, "and wrote none of its own");
}

#[test]
fn the_epoch_cache_carries_over_to_the_next_build() {
    let mut fx = Fixture::bare();
    let commits = history(&mut fx, 5);
    let first_time = time_of(&fx, commits[0]);
    let cache = tempfile::tempdir().expect("cache");
    let dir = cache.path().join("git");

    let git = Git::new(dir.clone());
    assert_eq!(
        pin_at(&git, &fx, commits[3], Some("b"), None).epoch,
        first_time
    );
    assert_eq!(walked(&git), 3);
    assert_eq!(epoch_files(&dir).len(), 1);

    // The next build, one commit later (touching only `a`): one step, then the cache.
    let next = Git::new(dir.clone());
    assert_eq!(
        pin_at(&next, &fx, commits[4], Some("b"), None).epoch,
        first_time
    );
    assert_eq!(walked(&next), 1);
    // And at the same commit, no walk at all.
    let again = Git::new(dir.clone());
    assert_eq!(
        pin_at(&again, &fx, commits[4], Some("b"), None).epoch,
        first_time
    );
    assert_eq!(walked(&again), 0);
    // Within a build, the in-memory cache answers for another spelling of the dir.
    assert_eq!(
        pin_at(&again, &fx, commits[4], Some("./b/"), None).epoch,
        first_time
    );
    assert_eq!(walked(&again), 0);
    // A filter is another source: its own walk and entry.
    let f = filter(&["y"], &[]);
    assert_eq!(
        pin_at(&again, &fx, commits[4], Some("b"), Some(&f)).epoch,
        first_time
    );
    assert_eq!(walked(&again), 4);
    // One file per commit: the first build's, and this commit's with both sources.
    assert_eq!(epoch_files(&dir).len(), 2);
    let last = std::fs::read_to_string(
        epoch_files(&dir)
            .iter()
            .find(|f| f.ends_with(commits[4].to_string()))
            .expect("file of the last commit"),
    )
    .expect("read");
    assert_eq!(
        crate::epoch::parse(&last, commits[4]).expect("valid").len(),
        2
    );
}

#[test]
fn a_corrupt_epoch_cache_is_ignored() {
    let mut fx = Fixture::bare();
    let commits = history(&mut fx, 4);
    let first_time = time_of(&fx, commits[0]);
    let cache = tempfile::tempdir().expect("cache");
    let dir = cache.path().join("git");
    let head = commits[3];
    let expected = pin_at(&Git::new(dir.clone()), &fx, head, Some("b"), None);
    assert_eq!(expected.epoch, first_time);
    let files = epoch_files(&dir);
    assert_eq!(files.len(), 1);
    let file = &files[0];
    let good = std::fs::read_to_string(file).expect("cache file");
    let entries = crate::epoch::parse(&good, head).expect("a valid file");
    let key = *entries.keys().next().expect("one entry");
    let one = |content: Oid, epoch: i64| {
        let entries: crate::epoch::Entries = [(key, (content, epoch))].into_iter().collect();
        crate::epoch::render(head, &entries)
    };
    let content = Oid::from_str(&expected.content).expect("oid");
    let wrong_epoch = expected.epoch - 1000;
    let other = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
    let corruptions = [
        "garbage".to_string(),
        String::new(),
        good[..good.len() / 2].to_string(),
        // Looks valid, but the checksum is of the old epoch.
        good.replace(
            &format!(" {}\n", expected.epoch),
            &format!(" {wrong_epoch}\n"),
        ),
        // A whole, checksummed entry for other content: not this commit's.
        one(other, wrong_epoch),
        // A whole, checksummed file of another commit.
        crate::epoch::render(other, &entries),
    ];
    for bad in corruptions {
        std::fs::write(file, &bad).expect("corrupt");
        let git = Git::new(dir.clone());
        let pinned = pin_at(&git, &fx, head, Some("b"), None);
        assert_eq!(pinned, expected, "{bad:?}");
        assert_eq!(walked(&git), 3, "{bad:?}: recomputed");
        // …and the recomputed entry replaced the bad one.
        assert_eq!(std::fs::read_to_string(file).expect("rewritten"), good);
    }
    // The proof that a valid entry is read: one with the right content is believed.
    std::fs::write(file, one(content, wrong_epoch)).expect("plant");
    let git = Git::new(dir.clone());
    assert_eq!(pin_at(&git, &fx, head, Some("b"), None).epoch, wrong_epoch);
    assert_eq!(walked(&git), 0);
}

#[test]
fn an_unwritable_epoch_cache_is_only_slower() {
    let mut fx = Fixture::bare();
    let commits = history(&mut fx, 3);
    let cache = tempfile::tempdir().expect("cache");
    // A file where the cache dir would be: nothing can be created under it.
    let dir = cache.path().join("git");
    std::fs::write(&dir, "not a directory").expect("file");
    let git = Git::new(dir.clone());
    let pinned = pin_at(&git, &fx, commits[2], Some("b"), None);
    assert_eq!(pinned.epoch, time_of(&fx, commits[0]));
}

#[test]
fn a_long_history_is_walked_once() {
    let mut fx = Fixture::bare();
    let commits = history(&mut fx, 2000);
    let first_time = time_of(&fx, commits[0]);
    let head = commits[commits.len() - 1];
    let cache = tempfile::tempdir().expect("cache");
    let dir = cache.path().join("git");

    let git = Git::new(dir.clone());
    let pinned = pin_at(&git, &fx, head, Some("b"), None);
    assert_eq!(pinned.epoch, first_time);
    assert_eq!(walked(&git), 1999);
    // `a` changes with every commit: its epoch is found at once.
    assert_eq!(
        pin_at(&git, &fx, head, Some("a"), None).epoch,
        pinned.commit_time
    );
    assert_eq!(walked(&git), 2000);

    let next = Git::new(dir.clone());
    assert_eq!(pin_at(&next, &fx, head, Some("b"), None), pinned);
    assert_eq!(walked(&next), 0);
    // With a filter, the walk compares sub-trees first and filters only changed ones.
    let f = filter(&[], &["*.md"]);
    assert_eq!(
        pin_at(&next, &fx, head, Some("b"), Some(&f)).epoch,
        first_time
    );
    assert_eq!(walked(&next), 1999);
    let f = filter(&["b/**"], &[]);
    assert_eq!(pin_at(&next, &fx, head, None, Some(&f)).epoch, first_time);
    let later = Git::new(dir);
    assert_eq!(pin_at(&later, &fx, head, None, Some(&f)).epoch, first_time);
    assert_eq!(walked(&later), 0);
}

// ---- Version tags per component ----

fn pin_tags(
    git: &Git,
    fx: &Fixture,
    rev: RevSpec<'_>,
    tags: Option<&str>,
) -> Result<PinnedSource, GitError> {
    git.pin(
        &fx.location(),
        &PinSpec {
            version_tags: tags,
            ..spec(rev)
        },
    )
}

#[test]
fn monorepo_components_version_by_their_own_tags() {
    let mut fx = Fixture::bare();
    let c1 = fx.step("main", &[]);
    let c2 = fx.step("main", &[c1]);
    let c3 = fx.step("main", &[c2]);
    fx.tag("web-v1.2.0", c1, true);
    fx.tag("admin-v0.3.0", c2, false);
    fx.tag("v9.0.0", c1, false);
    let (_c, git) = new_git();
    let web = Some("web-v{version}");
    let admin = Some("admin-v{version}");
    let main = RevSpec::Ref("main");
    let derived = |tags| pin_tags(&git, &fx, main, tags).expect("pin").version;
    assert_eq!(derived(web), version("1.2.1-dev.2"));
    assert_eq!(derived(admin), version("0.3.1-dev.1"));
    assert_eq!(derived(None), version("9.0.1-dev.2"));
    assert_eq!(derived(Some("{version}@nowhere")), version("0.0.0-dev.3"));
    let c2s = c2.to_string();
    assert_eq!(
        pin_tags(&git, &fx, RevSpec::Ref(&c2s), web)
            .expect("pin")
            .version,
        version("1.2.1-dev.1")
    );

    // Version mode looks up the pattern's tag.
    let v = version("1.2.0");
    let pinned = pin_tags(&git, &fx, RevSpec::Version(&v), web).expect("web-v1.2.0");
    assert_eq!(pinned.commit, c1.to_string());
    assert_eq!(pinned.version, v);
    let err = pin_tags(&git, &fx, RevSpec::Version(&v), None).expect_err("no v1.2.0");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
    // One version, two patterns, two commits: the commit lookup is per pattern.
    fx.tag("admin-v1.2.0", c3, false);
    let admin_pin = pin_tags(&git, &fx, RevSpec::Version(&v), admin).expect("admin-v1.2.0");
    assert_eq!(admin_pin.commit, c3.to_string());

    // An unknown version suggests the pattern's tags only.
    fx.tag("web-v1.3.0", c3, false);
    let missing = version("1.2.1");
    match pin_tags(&git, &fx, RevSpec::Version(&missing), web).expect_err("no such tag") {
        GitError::UnknownRef { rev, closest, .. } => {
            assert_eq!(rev, "web-v1.2.1");
            assert_eq!(closest, vec!["web-v1.2.0", "web-v1.3.0"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_tag_pattern_is_an_error() {
    let mut fx = Fixture::bare();
    fx.step("main", &[]);
    let (_c, git) = new_git();
    for pattern in ["web-v", "{version}{version}"] {
        let err = pin_tags(&git, &fx, RevSpec::Ref("main"), Some(pattern)).expect_err(pattern);
        assert!(
            matches!(&err, GitError::BadTagPattern { pattern: p } if p == pattern),
            "{err:?}"
        );
    }
}

/// The same release in two identical repositories makes the same tag object (tagger and
/// time are not the machine's), and a repository's own identity wins when it has one.
#[test]
fn release_tags_are_deterministic_annotated_tags() {
    let tag_in = |identity: Option<(&str, &str)>| {
        let mut f = Fixture::new();
        let c = f.commit("main", &[], &[("a", b"a", FILE)]);
        if let Some((name, email)) = identity {
            let mut config = f.repo.config().expect("config");
            config.set_str("user.name", name).expect("name");
            config.set_str("user.email", email).expect("email");
        }
        let git = Git::new(f.path.join("cache"));
        let location = f.location();
        assert_eq!(
            git.tag_state(&location, "v1.0.0").expect("state"),
            crate::TagState::Missing
        );
        git.create_tag(&location, "v1.0.0", &c.to_string(), "a 1.0.0\n")
            .expect("tag");
        assert_eq!(
            git.tag_state(&location, "v1.0.0").expect("state"),
            crate::TagState::On(c.to_string())
        );
        // Never replaced.
        assert!(git
            .create_tag(&location, "v1.0.0", &c.to_string(), "other\n")
            .is_err());
        let tag = f
            .repo
            .find_reference("refs/tags/v1.0.0")
            .expect("ref")
            .peel_to_tag()
            .expect("annotated");
        let commit_time = f.repo.find_commit(c).expect("commit").committer().when();
        assert_eq!(tag.tagger().expect("tagger").when(), commit_time);
        let who = tag.tagger().expect("tagger");
        let who = (
            who.name().unwrap_or_default().to_string(),
            who.email().unwrap_or_default().to_string(),
        );
        let history = git
            .history(&location, &c.to_string(), None, None)
            .expect("history");
        assert_eq!(history.on_commit, vec![Version::new(1, 0, 0)]);
        assert!(history.commits.is_empty());
        git.delete_tag(&location, "v1.0.0").expect("deleted");
        assert_eq!(
            git.tag_state(&location, "v1.0.0").expect("state"),
            crate::TagState::Missing
        );
        (tag.id(), who)
    };
    let (a, who) = tag_in(None);
    let (b, _) = tag_in(None);
    assert_eq!(a, b);
    assert_eq!(
        who,
        ("cascade".to_string(), "cascade@localhost".to_string())
    );
    let (c, who) = tag_in(Some(("Release Bot", "bot@example.com")));
    assert_ne!(a, c);
    assert_eq!(
        who,
        ("Release Bot".to_string(), "bot@example.com".to_string())
    );
}

#[test]
fn a_changelog_commit_in_a_bare_repository_exports_what_its_parent_did() {
    let (_cache, git) = new_git();
    let mut fx = Fixture::bare();
    let built = fx.commit(
        "develop",
        &[],
        &[
            ("packages/sdk/lib.rs", b"fn f() {}\n", FILE),
            ("packages/sdk/run.sh", b"#!/bin/sh\n", EXEC),
            ("README", b"top\n", FILE),
        ],
    );
    let built_sha = built.to_string();
    let loc = fx.location();
    let filter = Filter {
        include: vec![],
        exclude: vec!["CHANGELOG.md".into()],
    };
    assert!(!filter.keeps("CHANGELOG.md").expect("valid"));
    assert_eq!(
        git.read_file(&loc, &built_sha, "packages/sdk/CHANGELOG.md")
            .expect("read"),
        None
    );
    let first = git
        .commit_file(
            &loc,
            &built_sha,
            "packages/sdk/CHANGELOG.md",
            b"# Changelog\n",
            "chore(release): sdk 0.1.0\n",
        )
        .expect("commit");
    // The same inputs give the same commit: no clock, no environment.
    let again = git
        .commit_file(
            &loc,
            &built_sha,
            "packages/sdk/CHANGELOG.md",
            b"# Changelog\n",
            "chore(release): sdk 0.1.0\n",
        )
        .expect("commit");
    assert_eq!(first, again);
    assert_eq!(
        git.read_file(&loc, &first, "packages/sdk/CHANGELOG.md")
            .expect("read")
            .as_deref(),
        Some(&b"# Changelog\n"[..])
    );
    let c = fx
        .repo
        .find_commit(Oid::from_str(&first).expect("oid"))
        .expect("commit");
    assert_eq!(c.parent_ids().collect::<Vec<_>>(), vec![built]);
    let run = c
        .tree()
        .expect("tree")
        .get_path(Path::new("packages/sdk/run.sh"))
        .expect("kept");
    assert_eq!(run.filemode(), EXEC);
    let sdk = Some("packages/sdk");
    assert!(git
        .is_changelog_commit(&loc, &first, &built_sha, sdk, Some(&filter))
        .expect("check"));
    // Without the filter the file is exported: not a changelog commit.
    assert!(!git
        .is_changelog_commit(&loc, &first, &built_sha, sdk, None)
        .expect("check"));
    // Nor is the built commit its own, nor a commit with another parent.
    assert!(!git
        .is_changelog_commit(&loc, &built_sha, &built_sha, sdk, Some(&filter))
        .expect("check"));
    // A file where a directory is needed is refused, never overwritten.
    assert!(matches!(
        git.commit_file(&loc, &built_sha, "README/CHANGELOG.md", b"x", "m"),
        Err(GitError::CannotCommitFile { .. })
    ));

    // The branch moves only from where it was.
    assert!(git
        .move_branch(&loc, "develop", &first, &built_sha)
        .is_err());
    git.move_branch(&loc, "develop", &built_sha, &first)
        .expect("move");
    assert_eq!(
        git.branch_state(&loc, "develop").expect("state"),
        crate::BranchState::Head {
            commit: first.clone(),
            checked_out: false
        }
    );
    assert_eq!(
        git.branch_state(&loc, "nope").expect("state"),
        crate::BranchState::NotABranch
    );
}

/// Tags are pushed by the `git` command: a new tag reaches the origin, a tag the origin
/// has on another commit is refused (never forced) with git's reason, and a repository
/// without an origin says so.
#[test]
fn pushing_tags_never_replaces_the_remotes() {
    let mut origin = Fixture::bare();
    let a = origin.step("main", &[]);
    origin.tag("v1.0.0", a, false);
    let mut local = Fixture::new();
    // Two steps: the first alone would be the origin's commit (same content and time).
    let first = local.step("main", &[]);
    let b = local.step("main", &[first]);
    assert_ne!(a, b);
    local.tag("v1.0.0", b, false);
    local.tag("v1.1.0", b, false);
    let (_cache, git) = new_git();
    let err = git
        .push_tags(&local.location(), &["v1.1.0".into()])
        .expect_err("no origin yet");
    assert!(matches!(err, GitError::NoOrigin { .. }), "{err:?}");
    local
        .repo
        .remote("origin", &origin.location())
        .expect("origin");
    assert_eq!(
        git.push_tags(&local.location(), &["v1.1.0".into()])
            .expect("a new tag is pushed"),
        origin.location()
    );
    let pushed = origin
        .repo
        .find_reference("refs/tags/v1.1.0")
        .expect("pushed");
    assert_eq!(pushed.target(), Some(b));
    match git.push_tags(&local.location(), &["v1.0.0".into()]) {
        Err(GitError::PushFailed { message, .. }) => {
            assert!(
                message.contains("refs/tags/v1.0.0") && message.contains("already exists"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let kept = origin
        .repo
        .find_reference("refs/tags/v1.0.0")
        .expect("kept");
    assert_eq!(kept.target(), Some(a), "the remote's tag is not replaced");
}
