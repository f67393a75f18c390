//! Revisions to commits, commits to trees.

use std::collections::HashMap;

use git2::{Commit, ErrorClass, ErrorCode, ObjectType, Oid, Reference, Repository};

use crate::version::TagPattern;
use crate::GitError;

/// How many existing names an unknown-ref error suggests.
const CLOSEST: usize = 5;
/// Shorter prefixes are too likely to be a branch name that happens to be hex.
const MIN_ABBREV: usize = 7;

/// Resolves a branch, tag or commit SHA to a commit; see `RevSpec::Ref` for the order.
pub(crate) fn resolve_ref(repo: &Repository, display: &str, name: &str) -> Result<Oid, GitError> {
    let is_hex = !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit());
    // A full SHA is a commit before it is a name: that is what it almost always means.
    if is_hex && name.len() == 40 {
        if let Ok(oid) = Oid::from_str(name) {
            if let Ok(commit) = repo.find_commit(oid) {
                return Ok(commit.id());
            }
        }
    }
    let mut candidates = Vec::with_capacity(4);
    if name.starts_with("refs/") {
        candidates.push(name.to_string());
    }
    candidates.push(format!("refs/heads/{name}"));
    candidates.push(format!("refs/tags/{name}"));
    candidates.push(format!("refs/remotes/origin/{name}"));
    for refname in &candidates {
        if let Some(reference) = find_reference(repo, display, refname)? {
            return peel(&reference, display, name);
        }
    }
    if is_hex && name.len() >= MIN_ABBREV && name.len() <= 40 {
        match repo.find_object_by_prefix(name, None) {
            Ok(object) => {
                return object
                    .peel_to_commit()
                    .map(|c| c.id())
                    .map_err(|_| GitError::NotACommit {
                        repo: display.to_string(),
                        rev: name.to_string(),
                    });
            }
            Err(e) if e.code() == ErrorCode::Ambiguous => {
                return Err(GitError::AmbiguousRef {
                    repo: display.to_string(),
                    rev: name.to_string(),
                });
            }
            Err(e) if e.code() == ErrorCode::NotFound => {}
            Err(e) => return Err(GitError::git(display, e)),
        }
    }
    Err(GitError::UnknownRef {
        repo: display.to_string(),
        rev: name.to_string(),
        closest: closest(&ref_names(repo, display, false)?, &[name]),
    })
}

/// Resolves a version to the commit of its tag, the names `pattern` gives it in order
/// (by default `v<version>` first, then `<version>`).
pub(crate) fn resolve_version(
    repo: &Repository,
    display: &str,
    version: &semver::Version,
    pattern: &TagPattern,
) -> Result<Oid, GitError> {
    let names = pattern.names(version);
    for tag in &names {
        if let Some(reference) = find_reference(repo, display, &format!("refs/tags/{tag}"))? {
            return peel(&reference, display, tag);
        }
    }
    // A version is only ever a tag of its pattern: suggest those, by distance to any
    // spelling (a monorepo's `web` is not helped by `admin-v1.2.0`).
    let tags: Vec<String> = ref_names(repo, display, true)?
        .into_iter()
        .filter(|name| pattern.parse(name).is_some())
        .collect();
    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    Err(GitError::UnknownRef {
        repo: display.to_string(),
        rev: names.first().cloned().unwrap_or_default(),
        closest: closest(&tags, &wanted),
    })
}

/// `Ok(None)` when the reference does not exist or its name is not a valid ref name.
fn find_reference<'r>(
    repo: &'r Repository,
    display: &str,
    refname: &str,
) -> Result<Option<Reference<'r>>, GitError> {
    match repo.find_reference(refname) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.code() == ErrorCode::NotFound || e.code() == ErrorCode::InvalidSpec => Ok(None),
        // Names with characters a ref cannot have come back as plain errors of the
        // reference class; they cannot exist either.
        Err(e) if e.class() == ErrorClass::Reference && e.code() == ErrorCode::GenericError => {
            Ok(None)
        }
        Err(e) => Err(GitError::git(display, e)),
    }
}

fn peel(reference: &Reference<'_>, display: &str, rev: &str) -> Result<Oid, GitError> {
    reference
        .peel_to_commit()
        .map(|c| c.id())
        .map_err(|_| GitError::NotACommit {
            repo: display.to_string(),
            rev: rev.to_string(),
        })
}

/// `dir` as a path in a tree: `/`-separated, empty and `.` components dropped (so
/// `./a/b/` is `a/b`, and `.` is the root, the empty string). `None` when it climbs with
/// `..`: no tree has such a directory.
pub(crate) fn normalize_dir(dir: Option<&str>) -> Option<String> {
    let Some(dir) = dir else {
        return Some(String::new());
    };
    let parts: Vec<&str> = dir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// Trees read during one build, by id: each entry's name, id and whether it is a tree.
/// A monorepo's root tree is looked into by every component that lives in it, and
/// libgit2 caches no object over 4 KiB: without this, a repository of 1,000
/// directories inflated and hashed its 30 KB root tree 1,000 times a build.
#[derive(Default)]
pub(crate) struct Trees(HashMap<Oid, HashMap<Vec<u8>, (Oid, bool)>>);

/// A repository and the trees read from it so far.
pub(crate) struct Reader<'a> {
    pub(crate) repo: &'a Repository,
    pub(crate) trees: &'a mut Trees,
}

impl Reader<'_> {
    /// The tree at `dir` (normalized) of the root tree `root`, or `None` when there is
    /// no directory there.
    pub(crate) fn subtree(&mut self, root: Oid, dir: &str) -> Result<Option<Oid>, git2::Error> {
        let mut at = root;
        for name in dir.split('/').filter(|c| !c.is_empty()) {
            let entries = match self.trees.0.entry(at) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let tree = self.repo.find_tree(at)?;
                    let entries = tree
                        .iter()
                        .map(|t| {
                            let is_tree = t.kind() == Some(ObjectType::Tree);
                            (t.name_bytes().to_vec(), (t.id(), is_tree))
                        })
                        .collect();
                    e.insert(entries)
                }
            };
            match entries.get(name.as_bytes()) {
                Some((id, true)) => at = *id,
                _ => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The tree of `commit` at `dir` (see `normalize_dir`), or its root tree without a
    /// `dir`.
    pub(crate) fn tree_at(
        &mut self,
        display: &str,
        commit: &Commit<'_>,
        dir: Option<&str>,
    ) -> Result<Oid, GitError> {
        let not_found = || GitError::DirNotFound {
            repo: display.to_string(),
            commit: commit.id().to_string(),
            dir: dir.unwrap_or_default().to_string(),
        };
        let normalized = normalize_dir(dir).ok_or_else(not_found)?;
        self.subtree(commit.tree_id(), &normalized)
            .map_err(|e| GitError::git(display, e))?
            .ok_or_else(not_found)
    }
}

/// Short names of the branches (local and `origin`'s) and tags, or only the tags.
fn ref_names(repo: &Repository, display: &str, tags_only: bool) -> Result<Vec<String>, GitError> {
    let mut names = Vec::new();
    let references = repo.references().map_err(|e| GitError::git(display, e))?;
    for reference in references.flatten() {
        let Ok(full) = reference.name() else {
            continue;
        };
        let short = if let Some(tag) = full.strip_prefix("refs/tags/") {
            tag
        } else if tags_only {
            continue;
        } else if let Some(branch) = full.strip_prefix("refs/heads/") {
            branch
        } else if let Some(branch) = full.strip_prefix("refs/remotes/origin/") {
            if branch == "HEAD" {
                continue;
            }
            branch
        } else {
            continue;
        };
        names.push(short.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Up to `CLOSEST` names ranked by edit distance to the nearest of `wanted`, ties by
/// name, so the suggestion list is deterministic.
pub(crate) fn closest(names: &[String], wanted: &[&str]) -> Vec<String> {
    let mut ranked: Vec<(usize, &String)> = names
        .iter()
        .map(|n| {
            let d = wanted
                .iter()
                .map(|w| strsim::levenshtein(w, n))
                .min()
                .unwrap_or(0);
            (d, n)
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(CLOSEST)
        .map(|(_, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_ranks_by_distance_then_name() {
        let names: Vec<String> = ["b", "a", "main", "master", "develop", "x", "y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(closest(&names, &["mian"]), vec!["main", "a", "b", "x", "y"]);
    }
}
