//! Versions derived from tags, like `git describe` (the rule is on `Git::pin`).
//!
//! The number of commits between a tag `T` reachable from a commit `C` is
//! `|ancestors(C) \ ancestors(T)|` (both sets include the commit itself), what a revwalk
//! from `C` hiding `T` counts. Because `T` is reachable from `C`, `ancestors(T)` is a
//! subset of `ancestors(C)`, so the count is `|ancestors(C)| - |ancestors(T)|`: one walk
//! from `C` finds every reachable tag and `|ancestors(C)|`, and `|ancestors(T)|` is
//! computed once per tag per build. That keeps pinning many commits of one repository
//! linear in its history instead of a walk per (commit, tag) pair.

use std::collections::{BTreeMap, HashMap};

use git2::{Oid, Repository};
use semver::{BuildMetadata, Prerelease, Version};

#[derive(Default)]
pub(crate) struct VersionCache {
    /// Commit → the highest version tagged on it. Loaded on first use.
    tags: Option<HashMap<Oid, Version>>,
    /// Tagged commit → how many commits are reachable from it.
    ancestors: HashMap<Oid, usize>,
    /// Commit → derived version.
    derived: HashMap<Oid, Version>,
}

impl VersionCache {
    pub(crate) fn derive(
        &mut self,
        repo: &Repository,
        commit: Oid,
    ) -> Result<Version, git2::Error> {
        if let Some(v) = self.derived.get(&commit) {
            return Ok(v.clone());
        }
        let VersionCache {
            tags,
            ancestors,
            derived,
        } = self;
        let tags: &HashMap<Oid, Version> = match tags {
            Some(tags) => tags,
            None => tags.insert(version_tags(repo)?),
        };

        let mut reachable = 0usize;
        let mut tagged = Vec::new();
        let mut walk = repo.revwalk()?;
        walk.push(commit)?;
        for id in walk {
            let id = id?;
            reachable += 1;
            if tags.contains_key(&id) {
                tagged.push(id);
            }
        }

        // (commits between, version): the least distance wins, then the highest version.
        let mut best: Option<(usize, &Version)> = None;
        for id in tagged {
            let below = match ancestors.get(&id) {
                Some(n) => *n,
                None => {
                    let n = count_reachable(repo, id)?;
                    ancestors.insert(id, n);
                    n
                }
            };
            let distance = reachable.saturating_sub(below);
            let version = &tags[&id];
            let better = match best {
                None => true,
                Some((d, v)) => distance < d || (distance == d && version > v),
            };
            if better {
                best = Some((distance, version));
            }
        }
        let version = match best {
            Some((distance, tag)) => after_tag(tag, distance),
            None => dev(Version::new(0, 0, 0), &[], reachable),
        };
        derived.insert(commit, version.clone());
        Ok(version)
    }
}

/// The version `distance` commits after a commit tagged `tag`.
pub(crate) fn after_tag(tag: &Version, distance: usize) -> Version {
    if distance == 0 {
        return tag.clone();
    }
    if tag.pre.is_empty() {
        dev(
            Version::new(tag.major, tag.minor, tag.patch + 1),
            &[],
            distance,
        )
    } else {
        // The next release of a pre-release is unknown (rc.2? the release?), so stay on
        // its version and extend its pre-release: still after it, before anything later.
        let base = Version::new(tag.major, tag.minor, tag.patch);
        dev(base, &[tag.pre.as_str()], distance)
    }
}

fn dev(mut base: Version, pre: &[&str], n: usize) -> Version {
    let mut parts: Vec<String> = pre.iter().map(|p| p.to_string()).collect();
    parts.push(format!("dev.{n}"));
    // Identifiers made of a valid pre-release plus `dev.<digits>` always parse.
    base.pre = Prerelease::new(&parts.join(".")).unwrap_or(Prerelease::EMPTY);
    base
}

/// A tag name that is a version: `vX.Y.Z` or `X.Y.Z`, build metadata dropped (it does not
/// order versions, and two builds of one version are one version here).
pub(crate) fn parse_tag(name: &str) -> Option<Version> {
    let text = name.strip_prefix('v').unwrap_or(name);
    let mut version = Version::parse(text).ok()?;
    version.build = BuildMetadata::EMPTY;
    Some(version)
}

/// Every version tag that peels to a commit, as commit → highest version on it.
fn version_tags(repo: &Repository) -> Result<HashMap<Oid, Version>, git2::Error> {
    // Sorted by name first so nothing depends on the order refs are listed in.
    let mut named = BTreeMap::new();
    for reference in repo.references_glob("refs/tags/*")? {
        let reference = reference?;
        let Some(name) = reference
            .name()
            .ok()
            .and_then(|n| n.strip_prefix("refs/tags/"))
        else {
            continue;
        };
        let Some(version) = parse_tag(name) else {
            continue;
        };
        // A tag of a tree or a blob is not a release of anything.
        if let Ok(commit) = reference.peel_to_commit() {
            named.insert(name.to_string(), (commit.id(), version));
        }
    }
    let mut tags: HashMap<Oid, Version> = HashMap::new();
    for (id, version) in named.into_values() {
        let slot = tags.entry(id).or_insert_with(|| version.clone());
        if version > *slot {
            *slot = version;
        }
    }
    Ok(tags)
}

fn count_reachable(repo: &Repository, commit: Oid) -> Result<usize, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(commit)?;
    let mut n = 0;
    for id in walk {
        id?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("test version")
    }

    #[test]
    fn versions_after_a_tag() {
        assert_eq!(after_tag(&v("1.2.3"), 0), v("1.2.3"));
        assert_eq!(after_tag(&v("1.2.3"), 5), v("1.2.4-dev.5"));
        assert_eq!(after_tag(&v("1.0.0-rc.1"), 0), v("1.0.0-rc.1"));
        assert_eq!(after_tag(&v("1.0.0-rc.1"), 3), v("1.0.0-rc.1.dev.3"));
        assert!(v("1.0.0-rc.1") < after_tag(&v("1.0.0-rc.1"), 3));
        assert!(after_tag(&v("1.0.0-rc.1"), 3) < v("1.0.0-rc.2"));
        assert!(after_tag(&v("1.2.3"), 5) < v("1.2.4"));
    }

    #[test]
    fn tag_names() {
        assert_eq!(parse_tag("v1.2.3"), Some(v("1.2.3")));
        assert_eq!(parse_tag("1.2.3"), Some(v("1.2.3")));
        assert_eq!(parse_tag("v1.0.0-rc.1"), Some(v("1.0.0-rc.1")));
        assert_eq!(parse_tag("v1.2.3+build.7"), Some(v("1.2.3")));
        assert_eq!(parse_tag("release-1"), None);
        assert_eq!(parse_tag("v1.2"), None);
        assert_eq!(parse_tag("V1.2.3"), None);
        assert_eq!(parse_tag("vv1.2.3"), None);
    }
}
