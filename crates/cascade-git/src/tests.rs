//! Tests against repositories made here with git2, with fixed signatures so every SHA is
//! the same on every run. In-crate (not `tests/`) to reach `Git::fetch_file_urls`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature, Time};
use semver::Version;
use tempfile::TempDir;

use crate::{Git, GitError, RevSpec};

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

fn version(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn pin_version(git: &Git, fx: &Fixture, rev: &str) -> Version {
    git.pin(&fx.location(), RevSpec::Ref(rev), None)
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
        .pin(&fx.location(), RevSpec::Ref("main"), None)
        .expect("pin");
    let commit = fx.repo.find_commit(second).expect("commit");
    assert_eq!(pinned.commit, second.to_string());
    assert_eq!(pinned.tree, commit.tree_id().to_string());
    assert_eq!(pinned.commit_time, 1_700_000_000 + 2 * 60);
    assert_eq!(pinned.version, version("0.0.0-dev.2"));
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
        .pin(&fx.location(), RevSpec::Ref("feature"), None)
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
        .pin(&fx.location(), RevSpec::Ref("light"), None)
        .expect("pin");
    let annotated = git
        .pin(&fx.location(), RevSpec::Ref("annotated"), None)
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
            .pin(&fx.location(), RevSpec::Ref(rev), None)
            .expect("pin");
        assert_eq!(pinned.commit, full, "{rev}");
    }
    // Six digits are a name, not a SHA.
    let err = git
        .pin(&fx.location(), RevSpec::Ref(&full[..6]), None)
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
        .pin(&fx.location(), RevSpec::Version(&version("1.2.0")), None)
        .expect("v1.2.0");
    assert_eq!(v1.commit, first.to_string());
    assert_eq!(v1.version, version("1.2.0"));
    let v2 = git
        .pin(&fx.location(), RevSpec::Version(&version("2.0.0")), None)
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
        .pin(&fx.location(), RevSpec::Version(&version("1.2.1")), None)
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
            .pin(&fx.location(), RevSpec::Ref("main"), Some(dir))
            .expect("pin dir");
        assert_eq!(pinned.tree, expected.to_string(), "{dir}");
        assert_eq!(pinned.commit, c.to_string());
    }
    for dir in ["packages/nope", "README", "packages/../README", ".."] {
        let err = git
            .pin(&fx.location(), RevSpec::Ref("main"), Some(dir))
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
        .pin(&fx.location(), RevSpec::Ref("devlop"), None)
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
        .pin(&fx.location(), RevSpec::Ref("bad..name~^:"), None)
        .expect_err("invalid");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
}

#[test]
fn not_a_repository_names_the_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_c, git) = new_git();
    let location = dir.path().to_str().expect("utf-8").to_string();
    let err = git
        .pin(&location, RevSpec::Ref("main"), None)
        .expect_err("not a repo");
    assert!(matches!(&err, GitError::NotARepository { location: l, .. } if *l == location));
    assert!(err.to_string().contains(&location));

    // A directory inside a checkout is not the checkout's repository.
    let mut fx = Fixture::new();
    fx.step("main", &[]);
    let inner = fx.path.join("sub");
    std::fs::create_dir(&inner).expect("mkdir");
    let err = git
        .pin(inner.to_str().expect("utf-8"), RevSpec::Ref("main"), None)
        .expect_err("not a repo");
    assert!(matches!(err, GitError::NotARepository { .. }), "{err:?}");
}

#[test]
fn file_urls_are_opened_in_place() {
    let mut fx = Fixture::bare();
    let c = fx.step("main", &[]);
    let (cache, git) = new_git();
    let url = format!("file://{}", fx.location());
    let pinned = git.pin(&url, RevSpec::Ref("main"), None).expect("pin");
    assert_eq!(pinned.commit, c.to_string());
    assert!(!cache.path().join("git").exists(), "nothing was fetched");
}

#[test]
fn a_repeated_pin_sees_the_commit_of_the_first() {
    let mut fx = Fixture::bare();
    let a = fx.step("main", &[]);
    let (_c, git) = new_git();
    let first = git
        .pin(&fx.location(), RevSpec::Ref("main"), None)
        .expect("pin");
    let _b = fx.step("main", &[a]);
    // Within one build every component on `main` sees the same commit…
    let again = git
        .pin(&fx.location(), RevSpec::Ref("main"), Some("."))
        .expect("pin");
    assert_eq!(again.commit, first.commit);
    // …and the next build sees the branch as it is then.
    let (_c2, next) = new_git();
    let later = next
        .pin(&fx.location(), RevSpec::Ref("main"), None)
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
        .pin(&url, RevSpec::Ref("main"), Some("app"))
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
    // Only the mirror is left in the cache dir: the temp dir was renamed into place.
    let entries: Vec<_> = std::fs::read_dir(cache.path().join("git"))
        .expect("cache")
        .collect();
    assert_eq!(entries.len(), 1);

    // The export comes from the mirror too.
    let dest = tempfile::tempdir().expect("dest");
    git.export(&url, &pinned.tree, dest.path()).expect("export");
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
            .pin(&url, RevSpec::Ref("gone"), None)
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
    let pinned = third.pin(&url, RevSpec::Ref("main"), None).expect("pin");
    assert_eq!(pinned.commit, b.to_string());
    let err = third
        .pin(&url, RevSpec::Ref("gone"), None)
        .expect_err("pruned");
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err:?}");
}

#[test]
fn a_failed_fetch_leaves_nothing_behind() {
    let (cache, mut git) = new_git();
    git.fetch_file_urls = true;
    let missing = cache.path().join("no-such-repo");
    let url = format!("file://{}", missing.display());
    let err = git
        .pin(&url, RevSpec::Ref("main"), None)
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
        .pin(url, RevSpec::Ref("main"), None)
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
    git.export(&fx.location(), &tree.to_string(), dest.path())
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
        .pin(&fx.location(), RevSpec::Ref("main"), None)
        .expect("pin");
    assert_eq!(pinned.commit, c.to_string());
    let dest = tempfile::tempdir().expect("dest");
    git.export(&fx.location(), &pinned.tree, dest.path())
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
            .export(&fx.location(), &tree.to_string(), dest.path())
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
            .export(&fx.location(), tree, dest.path())
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
            s.spawn(move || git.export(location, tree, dest.path()).expect("export"));
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
            .pin(&fx.location(), RevSpec::Ref("main"), Some(&dir))
            .expect("pin");
        assert_eq!(pinned.commit, head.to_string());
        assert_eq!(pinned.version, version("1.0.1-dev.20"));
    }
    // Generous: only a missing cache (a revwalk per pin) would come near it.
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}
