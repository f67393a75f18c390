//! Source filters: which files of a tree are exported and keyed, and the git id of the
//! tree that holds just those files.
//!
//! The filtered tree is never written anywhere: its id is hashed here the way git would
//! hash it (`git write-tree` of an index holding just the kept files), so a user's
//! repository, which may be read-only, is only ever read.

use std::collections::{HashMap, HashSet};

use git2::{ObjectType, Oid, Repository, Tree};
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

/// Which files of a source's tree are exported and keyed: paths relative to the exported
/// tree (the `dir:` sub-tree when there is one). Empty `include` means every file.
///
/// Globs as globset matches them with `literal_separator(true)`: `*` stays within one
/// path component, `**` crosses them; `src/**` matches everything under `src`. A file is
/// exported when it matches some include (or include is empty) and no exclude.
/// Directories are kept when they hold an exported file (git has no empty directories
/// anyway). Symlinks and submodules are files here: matched by their own path, never
/// followed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A pattern of a [`Filter`] that is not a glob.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{pattern}` is not a valid glob: {reason}")]
pub struct FilterError {
    pub pattern: String,
    /// globset's reason, without the pattern.
    pub reason: String,
}

impl Filter {
    /// Compiles the globs; `Err` names the first bad pattern (includes first, in the
    /// order written) and globset's reason, so the manifest loader can underline it.
    pub fn check(&self) -> Result<(), FilterError> {
        Compiled::new(self).map(|_| ())
    }

    /// Whether the file at `path` (relative to the exported tree, `/`-separated) is
    /// exported: what `release` asks of a changelog file, which must not be.
    pub fn keeps(&self, path: &str) -> Result<bool, FilterError> {
        Ok(Compiled::new(self)?.keeps(path.as_bytes()))
    }

    /// No include and no exclude: the same as no filter.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// A filter's globs, compiled once per pin or export.
pub(crate) struct Compiled {
    include: GlobSet,
    exclude: GlobSet,
}

impl Compiled {
    pub(crate) fn new(filter: &Filter) -> Result<Self, FilterError> {
        Ok(Compiled {
            include: set(&filter.include)?,
            exclude: set(&filter.exclude)?,
        })
    }

    /// Whether the file at `path` (relative to the exported tree, `/`-separated) is kept.
    pub(crate) fn keeps(&self, path: &[u8]) -> bool {
        let candidate = Candidate::from_bytes(path);
        (self.include.is_empty() || self.include.is_match_candidate(&candidate))
            && !self.exclude.is_match_candidate(&candidate)
    }

    /// `keeps`, also marking in `matched` (includes, then excludes, as written) every
    /// pattern that matches `path`.
    fn keeps_marking(&self, path: &[u8], matched: &mut [bool], scratch: &mut Vec<usize>) -> bool {
        let candidate = Candidate::from_bytes(path);
        self.include.matches_candidate_into(&candidate, scratch);
        let included = self.include.is_empty() || !scratch.is_empty();
        for i in scratch.iter() {
            matched[*i] = true;
        }
        self.exclude.matches_candidate_into(&candidate, scratch);
        let n = self.include.len();
        for i in scratch.iter() {
            matched[n + *i] = true;
        }
        included && scratch.is_empty()
    }

    fn patterns(&self) -> usize {
        self.include.len() + self.exclude.len()
    }
}

fn set(patterns: &[String]) -> Result<GlobSet, FilterError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| FilterError {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| FilterError {
        pattern: e.glob().unwrap_or_default().to_string(),
        reason: e.kind().to_string(),
    })
}

/// Filtered ids of sub-trees already hashed, by (path in the exported tree, tree id):
/// consecutive commits share most of their sub-trees, so walking a history costs what
/// changed, not the whole tree per commit. `None`: nothing of it is kept. Only valid for
/// one filter.
pub(crate) type Memo = HashMap<(Vec<u8>, Oid), Option<Oid>>;

/// What a full walk learns besides the id.
pub(crate) struct Seen {
    /// Per pattern (includes, then excludes, as written): whether it matched some entry.
    pub(crate) matched: Vec<bool>,
    /// The directories of the filtered tree (paths, `/`-separated; not the root).
    pub(crate) kept_dirs: HashSet<Vec<u8>>,
}

/// The id git gives the filtered `tree`, reusing and filling `memo`.
pub(crate) fn filtered_id(
    repo: &Repository,
    tree: Oid,
    filter: &Compiled,
    memo: &mut Memo,
) -> Result<Oid, git2::Error> {
    // A history that goes back and forth between two trees hashes each once.
    if let Some(known) = memo.get(&(Vec::new(), tree)) {
        return known.map_or_else(empty_tree, Ok);
    }
    walk(repo, tree, filter, memo, None)
}

/// The id git gives the filtered `tree`, with which patterns matched and which
/// directories are kept. Visits every entry (a memo hit would hide its matches), but
/// fills `memo` for later `filtered_id` calls.
pub(crate) fn filtered_full(
    repo: &Repository,
    tree: Oid,
    filter: &Compiled,
    memo: &mut Memo,
) -> Result<(Oid, Seen), git2::Error> {
    let mut seen = Seen {
        matched: vec![false; filter.patterns()],
        kept_dirs: HashSet::new(),
    };
    let id = walk(repo, tree, filter, memo, Some(&mut seen))?;
    Ok((id, seen))
}

/// One directory being filtered.
struct Frame<'r> {
    tree: Tree<'r>,
    next: usize,
    /// Its path in the exported tree, empty for the root.
    path: Vec<u8>,
    /// Its name in its parent.
    name: Vec<u8>,
    /// The kept entries so far: name, mode as git writes it, id.
    kept: Vec<(Vec<u8>, u32, Oid)>,
}

const MODE_TREE: u32 = 0o040000;

fn walk(
    repo: &Repository,
    root: Oid,
    filter: &Compiled,
    memo: &mut Memo,
    mut seen: Option<&mut Seen>,
) -> Result<Oid, git2::Error> {
    let mut scratch = Vec::new();
    // An explicit stack, as in the exporter: a tree can nest deeper than a thread's stack.
    let mut stack = vec![Frame {
        tree: repo.find_tree(root)?,
        next: 0,
        path: Vec::new(),
        name: Vec::new(),
        kept: Vec::new(),
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            // Unreachable: the root's frame returns below.
            return empty_tree();
        };
        let entry = top.tree.get(top.next).map(|e| {
            // Copied out: the entry borrows the frame's tree, and the stack may grow.
            (e.name_bytes().to_vec(), e.id(), e.filemode() as u32)
        });
        let Some((name, id, mode)) = entry else {
            let Some(done) = stack.pop() else {
                return empty_tree();
            };
            let id = if done.kept.is_empty() {
                None
            } else {
                Some(hash_tree(done.kept)?)
            };
            if let (Some(seen), Some(_)) = (seen.as_deref_mut(), id) {
                if !done.path.is_empty() {
                    seen.kept_dirs.insert(done.path.clone());
                }
            }
            memo.insert((done.path, done.tree.id()), id);
            match stack.last_mut() {
                Some(parent) => {
                    if let Some(id) = id {
                        parent.kept.push((done.name, MODE_TREE, id));
                    }
                }
                None => return id.map_or_else(empty_tree, Ok),
            }
            continue;
        };
        top.next += 1;
        let mut path = top.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        if mode & 0o170000 == MODE_TREE {
            if seen.is_none() {
                if let Some(known) = memo.get(&(path.clone(), id)) {
                    if let Some(id) = known {
                        top.kept.push((name, MODE_TREE, *id));
                    }
                    continue;
                }
            }
            let tree = repo.find_tree(id)?;
            stack.push(Frame {
                tree,
                next: 0,
                path,
                name,
                kept: Vec::new(),
            });
        } else {
            let kept = match seen.as_deref_mut() {
                Some(seen) => filter.keeps_marking(&path, &mut seen.matched, &mut scratch),
                None => filter.keeps(&path),
            };
            if kept {
                top.kept.push((name, canonical_mode(mode), id));
            }
        }
    }
}

fn empty_tree() -> Result<Oid, git2::Error> {
    Oid::hash_object(ObjectType::Tree, &[])
}

/// The mode git's index gives an entry (what `git write-tree` writes): regular files are
/// 100644 or 100755 by the owner's execute bit (old gits wrote 100664), anything that is
/// not a file, symlink or directory is a submodule.
fn canonical_mode(mode: u32) -> u32 {
    match mode & 0o170000 {
        0o100000 if mode & 0o100 != 0 => 0o100755,
        0o100000 => 0o100644,
        0o120000 => 0o120000,
        MODE_TREE => MODE_TREE,
        _ => 0o160000,
    }
}

/// The id of a tree object holding `entries`, in git's order: bytewise by name, a
/// directory's name compared as if it ended in `/`.
fn hash_tree(mut entries: Vec<(Vec<u8>, u32, Oid)>) -> Result<Oid, git2::Error> {
    entries.sort_by(git_order);
    let mut bytes = Vec::with_capacity(entries.len() * 40);
    for (name, mode, id) in &entries {
        // Octal without leading zeros: a directory is `40000`.
        bytes.extend_from_slice(format!("{mode:o} ").as_bytes());
        bytes.extend_from_slice(name);
        bytes.push(0);
        bytes.extend_from_slice(id.as_bytes());
    }
    Oid::hash_object(ObjectType::Tree, &bytes)
}

fn git_order(a: &(Vec<u8>, u32, Oid), b: &(Vec<u8>, u32, Oid)) -> std::cmp::Ordering {
    order_key(a).cmp(order_key(b))
}

fn order_key(entry: &(Vec<u8>, u32, Oid)) -> impl Iterator<Item = u8> + '_ {
    let slash = (entry.1 == MODE_TREE).then_some(b'/');
    entry.0.iter().copied().chain(slash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(include: &[&str], exclude: &[&str]) -> Compiled {
        let filter = Filter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        Compiled::new(&filter).expect("valid filter")
    }

    #[test]
    fn globs_stay_within_a_component_unless_double_star() {
        let f = compiled(&["src/*.rs", "docs/**"], &[]);
        assert!(f.keeps(b"src/main.rs"));
        assert!(!f.keeps(b"src/bin/main.rs"));
        assert!(f.keeps(b"docs/a"));
        assert!(f.keeps(b"docs/a/b/c.md"));
        assert!(!f.keeps(b"README"));
        let f = compiled(&["**/*.rs"], &["**/test_*.rs", "vendor/**"]);
        assert!(f.keeps(b"main.rs"));
        assert!(f.keeps(b"a/b/lib.rs"));
        assert!(!f.keeps(b"a/test_x.rs"));
        assert!(!f.keeps(b"vendor/x/lib.rs"));
        // No include: everything not excluded.
        let f = compiled(&[], &["*.md"]);
        assert!(f.keeps(b"src/x.md"));
        assert!(!f.keeps(b"README.md"));
    }

    #[test]
    fn check_names_the_first_bad_pattern() {
        let filter = Filter {
            include: vec!["src/**".into(), "a[".into()],
            exclude: vec!["{b".into()],
        };
        let err = filter.check().expect_err("bad glob");
        assert_eq!(err.pattern, "a[");
        assert!(!err.reason.is_empty());
        assert!(!err.reason.contains("a["), "{}", err.reason);
        let only_exclude = Filter {
            include: vec![],
            exclude: vec!["ok".into(), "{b".into()],
        };
        assert_eq!(only_exclude.check().expect_err("bad").pattern, "{b");
        assert!(Filter::default().check().is_ok());
        assert!(Filter::default().is_empty());
        assert!(!only_exclude.is_empty());
    }

    #[test]
    fn modes_as_git_writes_them() {
        assert_eq!(canonical_mode(0o100644), 0o100644);
        assert_eq!(canonical_mode(0o100664), 0o100644);
        assert_eq!(canonical_mode(0o100755), 0o100755);
        assert_eq!(canonical_mode(0o120000), 0o120000);
        assert_eq!(canonical_mode(0o040000), 0o040000);
        assert_eq!(canonical_mode(0o160000), 0o160000);
        assert_eq!(format!("{:o}", MODE_TREE), "40000");
    }

    #[test]
    fn the_empty_tree_has_gits_id() {
        assert_eq!(
            empty_tree().expect("hash").to_string(),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }
}
