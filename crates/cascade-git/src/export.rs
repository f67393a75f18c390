//! Writing a tree from the object database into a directory.
//!
//! Files are created with `create_new` and directories with `create_dir`, so the export
//! never writes through something that is already there (a symlink it made earlier
//! included). Unix only: modes and symlinks are the point.
//!
//! With a filter, what is written is exactly the filtered tree (the one whose id is the
//! pin's `content`): kept files, and the directories that hold one. Symlinks are checked
//! against that tree too: one that was filtered out is not there to be followed.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use git2::{ErrorCode, ObjectType, Oid, Repository, Tree};

use crate::filter::{self, Compiled};
use crate::GitError;

const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
/// Written by old versions of git; means a regular file.
const MODE_BLOB_GROUP_WRITABLE: i32 = 0o100664;
const MODE_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;

/// How many symlinks one target may pass through, as the kernel's limit.
const MAX_LINK_HOPS: usize = 40;

pub(crate) fn export(
    repo: &Repository,
    display: &str,
    tree: &str,
    filter: Option<&Compiled>,
    dest: &Path,
) -> Result<(), GitError> {
    let not_found = || GitError::TreeNotFound {
        repo: display.to_string(),
        tree: tree.to_string(),
    };
    let oid = Oid::from_str(tree).map_err(|_| not_found())?;
    let root = match repo.find_tree(oid) {
        Ok(t) => t,
        Err(e) if e.code() == ErrorCode::NotFound => return Err(not_found()),
        Err(e) => return Err(GitError::git(display, e)),
    };
    let meta = fs::metadata(dest).map_err(|e| GitError::io(dest, e))?;
    if !meta.is_dir() {
        return Err(GitError::io(
            dest,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let git = |e| GitError::git(display, e);
    // The directories of the filtered tree; `None`: every directory.
    let kept_dirs = match filter {
        Some(filter) => {
            let mut memo = filter::Memo::new();
            let (_, seen) =
                filter::filtered_full(repo, root.id(), filter, &mut memo).map_err(git)?;
            Some(seen.kept_dirs)
        }
        None => None,
    };
    let present = Present { filter, kept_dirs };

    // Depth-first with an explicit stack: a tree can nest deeper than a thread's stack.
    // Each item: the tree, where it goes, and its path in the tree as components.
    let mut stack: Vec<(Oid, PathBuf, Vec<Vec<u8>>)> =
        vec![(root.id(), dest.to_path_buf(), Vec::new())];
    while let Some((id, dir, components)) = stack.pop() {
        let tree = repo.find_tree(id).map_err(git)?;
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let mut path_in_tree = components.clone();
            path_in_tree.push(name.to_vec());
            let bad = |reason: &str| GitError::BadTreeEntry {
                repo: display.to_string(),
                path: shown(&path_in_tree),
                reason: reason.to_string(),
            };
            if let Some(reason) = bad_name(name) {
                return Err(bad(reason));
            }
            if !present.has(&path_in_tree, entry.filemode()) {
                continue;
            }
            let target = dir.join(OsStr::from_bytes(name));
            match entry.filemode() {
                MODE_TREE => {
                    fs::create_dir(&target).map_err(|e| GitError::io(&target, e))?;
                    // Not left to the umask: the same tree exports the same way anywhere.
                    fs::set_permissions(&target, Permissions::from_mode(0o755))
                        .map_err(|e| GitError::io(&target, e))?;
                    stack.push((entry.id(), target, path_in_tree));
                }
                mode @ (MODE_BLOB | MODE_BLOB_GROUP_WRITABLE | MODE_EXECUTABLE) => {
                    let blob = repo.find_blob(entry.id()).map_err(git)?;
                    let perm = if mode == MODE_EXECUTABLE {
                        0o755
                    } else {
                        0o644
                    };
                    write_file(&target, blob.content(), perm)?;
                }
                MODE_LINK => {
                    let blob = repo.find_blob(entry.id()).map_err(git)?;
                    let link = blob.content();
                    check_link(repo, &root, &present, &components, link).map_err(|r| bad(&r))?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(link), &target)
                        .map_err(|e| GitError::io(&target, e))?;
                }
                // A submodule is another repository's commit, not content of this tree.
                MODE_COMMIT => {}
                other => return Err(bad(&format!("unknown file mode {other:o}"))),
            }
        }
    }
    Ok(())
}

/// Which entries of the tree are in the export.
struct Present<'f> {
    filter: Option<&'f Compiled>,
    kept_dirs: Option<HashSet<Vec<u8>>>,
}

impl Present<'_> {
    /// Whether the entry at `path` (components from the root) with `mode` is exported.
    fn has(&self, path: &[Vec<u8>], mode: i32) -> bool {
        let Some(filter) = self.filter else {
            return true;
        };
        let joined = path.join(&b'/');
        if mode == MODE_TREE {
            self.kept_dirs
                .as_ref()
                .is_some_and(|dirs| dirs.contains(&joined))
        } else {
            filter.keeps(&joined)
        }
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), GitError> {
    let io = |e| GitError::io(path, e);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(content).map_err(io)?;
    // `mode` above is filtered by the umask; the export's modes must not depend on it.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io)
}

/// Names git itself refuses to check out; a tree holding one was crafted, not committed.
fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() || name == b"." || name == b".." {
        Some("invalid file name")
    } else if name.contains(&b'/') || name.contains(&0) {
        Some("file name contains `/` or NUL")
    } else if name.eq_ignore_ascii_case(b".git") {
        Some("a tree must not contain `.git`")
    } else {
        None
    }
}

fn shown(components: &[Vec<u8>]) -> String {
    let joined: Vec<u8> = components.join(&b'/');
    String::from_utf8_lossy(&joined).into_owned()
}

/// Checks that a symlink in directory `dir` (components from the root) with target
/// `link` resolves inside the tree, following the tree's own symlinks on the way: a
/// purely textual check would accept `d/c -> a/..` where `d/a -> ..`.
fn check_link(
    repo: &Repository,
    root: &Tree<'_>,
    present: &Present<'_>,
    dir: &[Vec<u8>],
    link: &[u8],
) -> Result<(), String> {
    if link.is_empty() {
        return Err("symlink with an empty target".to_string());
    }
    let mut hops = 0;
    resolve_link(repo, root, present, dir.to_vec(), link, &mut hops).map(|_| ())
}

/// Resolves `link` from `at` and returns where it ends up, as components from the root.
fn resolve_link(
    repo: &Repository,
    root: &Tree<'_>,
    present: &Present<'_>,
    mut at: Vec<Vec<u8>>,
    link: &[u8],
    hops: &mut usize,
) -> Result<Vec<Vec<u8>>, String> {
    if link.starts_with(b"/") {
        return Err(format!(
            "symlink target `{}` is absolute",
            String::from_utf8_lossy(link)
        ));
    }
    for part in link.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err(format!(
                        "symlink target `{}` points outside the tree",
                        String::from_utf8_lossy(link)
                    ));
                }
            }
            name => {
                at.push(name.to_vec());
                let path = at.join(&b'/');
                // Missing entries and files are resolved textually: the OS cannot go
                // anywhere through them.
                let Ok(entry) = root.get_path(Path::new(OsStr::from_bytes(&path))) else {
                    continue;
                };
                if entry.filemode() != MODE_LINK
                    || entry.kind() != Some(ObjectType::Blob)
                    || !present.has(&at, MODE_LINK)
                {
                    continue;
                }
                *hops += 1;
                if *hops > MAX_LINK_HOPS {
                    return Err("too many levels of symlinks".to_string());
                }
                let blob = repo.find_blob(entry.id()).map_err(|e| e.to_string())?;
                at.pop();
                at = resolve_link(repo, root, present, at, blob.content(), hops)?;
            }
        }
    }
    Ok(at)
}
