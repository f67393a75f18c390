//! Versions derived from tags, like `git describe` (the rule is on `Git::pin`).
//!
//! The number of commits between a tag `T` reachable from a commit `C` is
//! `|ancestors(C) \ ancestors(T)|` (both sets include the commit itself), what a revwalk
//! from `C` hiding `T` counts. Because `T` is reachable from `C`, `ancestors(T)` is a
//! subset of `ancestors(C)`, so the count is `|ancestors(C)| - |ancestors(T)|`: one walk
//! from `C` finds every reachable tag and `|ancestors(C)|`, and `|ancestors(T)|` is
//! computed once per tag per build. That keeps pinning many commits of one repository
//! linear in its history instead of a walk per (commit, tag) pair.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use git2::{ErrorCode, Oid, Repository};
use semver::{BuildMetadata, Prerelease, Version};

/// Which tags are version tags: `Default` is `v{version}` and bare `{version}`; `Custom`
/// is a pattern such as `web-v{version}` (a monorepo's per-component tags), split around
/// its one `{version}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TagPattern {
    Default,
    Custom { prefix: String, suffix: String },
}

impl TagPattern {
    /// `None` when `pattern` does not hold `{version}` exactly once.
    pub(crate) fn new(pattern: Option<&str>) -> Option<Self> {
        let Some(pattern) = pattern else {
            return Some(TagPattern::Default);
        };
        let (prefix, suffix) = pattern.split_once("{version}")?;
        if suffix.contains("{version}") {
            return None;
        }
        Some(TagPattern::Custom {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The version a tag name stands for, build metadata dropped (it does not order
    /// versions, and two builds of one version are one version here).
    pub(crate) fn parse(&self, name: &str) -> Option<Version> {
        let text = match self {
            TagPattern::Default => name.strip_prefix('v').unwrap_or(name),
            TagPattern::Custom { prefix, suffix } => name
                .strip_prefix(prefix.as_str())?
                .strip_suffix(suffix.as_str())?,
        };
        let mut version = Version::parse(text).ok()?;
        version.build = BuildMetadata::EMPTY;
        Some(version)
    }

    /// The tag names `version` may have, in the order they are looked up.
    pub(crate) fn names(&self, version: &Version) -> Vec<String> {
        match self {
            TagPattern::Default => vec![format!("v{version}"), version.to_string()],
            TagPattern::Custom { prefix, suffix } => vec![format!("{prefix}{version}{suffix}")],
        }
    }
}

/// What is learned once per repository and shared by every pattern: a monorepo's
/// components each have their own pattern, and should not each walk the history.
#[derive(Default)]
pub(crate) struct VersionCache {
    /// Tagged commit → how many commits are reachable from it.
    ancestors: HashMap<Oid, usize>,
    /// Pinned commit → every commit reachable from it (itself included).
    reachable: HashMap<Oid, Vec<Oid>>,
    /// Every tag's short name, sorted. Loaded on first use.
    tag_names: Option<Vec<String>>,
    /// Each tag pattern's own tags and derived versions: two components of one
    /// repository may version by different tags.
    patterns: HashMap<TagPattern, PatternCache>,
}

#[derive(Default)]
struct PatternCache {
    /// Commit → the highest version tagged on it. Loaded on first use.
    tags: Option<HashMap<Oid, Version>>,
    /// Commit → derived version.
    derived: HashMap<Oid, Version>,
}

impl VersionCache {
    pub(crate) fn derive(
        &mut self,
        repo: &Repository,
        commit: Oid,
        pattern: &TagPattern,
    ) -> Result<Version, git2::Error> {
        let VersionCache {
            ancestors,
            reachable,
            tag_names,
            patterns,
        } = self;
        let PatternCache { tags, derived } = patterns.entry(pattern.clone()).or_default();
        if let Some(v) = derived.get(&commit) {
            return Ok(v.clone());
        }
        let tags: &HashMap<Oid, Version> = match tags {
            Some(tags) => tags,
            None => {
                let names = match tag_names {
                    Some(names) => names,
                    None => tag_names.insert(all_tag_names(repo)?),
                };
                tags.insert(version_tags(repo, names, pattern)?)
            }
        };
        let below_commit: &Vec<Oid> = match reachable.entry(commit) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(walk_from(repo, commit)?),
        };
        let reachable = below_commit.len();
        let tagged: Vec<Oid> = below_commit
            .iter()
            .filter(|id| tags.contains_key(id))
            .copied()
            .collect();

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

/// A tag name that is a version by the default pattern: `vX.Y.Z` or `X.Y.Z`.
#[cfg(test)]
pub(crate) fn parse_tag(name: &str) -> Option<Version> {
    TagPattern::Default.parse(name)
}

/// The short names of every tag, sorted so nothing depends on the order refs are listed
/// in.
fn all_tag_names(repo: &Repository) -> Result<Vec<String>, git2::Error> {
    let mut names = Vec::new();
    for reference in repo.references_glob("refs/tags/*")? {
        let reference = reference?;
        if let Some(name) = reference
            .name()
            .ok()
            .and_then(|n| n.strip_prefix("refs/tags/"))
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Every version tag of `pattern` among `names` that peels to a commit, as commit →
/// highest version on it.
fn version_tags(
    repo: &Repository,
    names: &[String],
    pattern: &TagPattern,
) -> Result<HashMap<Oid, Version>, git2::Error> {
    let mut named = Vec::new();
    for name in names {
        let Some(version) = pattern.parse(name) else {
            continue;
        };
        let reference = match repo.find_reference(&format!("refs/tags/{name}")) {
            Ok(r) => r,
            // Deleted since it was listed: not a tag any more.
            Err(e) if e.code() == ErrorCode::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A tag of a tree or a blob is not a release of anything.
        if let Ok(commit) = reference.peel_to_commit() {
            named.push((commit.id(), version));
        }
    }
    let mut tags: HashMap<Oid, Version> = HashMap::new();
    for (id, version) in named {
        let slot = tags.entry(id).or_insert_with(|| version.clone());
        if version > *slot {
            *slot = version;
        }
    }
    Ok(tags)
}

fn walk_from(repo: &Repository, commit: Oid) -> Result<Vec<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(commit)?;
    walk.collect()
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

    #[test]
    fn tag_patterns() {
        assert_eq!(TagPattern::new(None), Some(TagPattern::Default));
        assert_eq!(TagPattern::new(Some("web-v")), None);
        assert_eq!(TagPattern::new(Some("{version}-{version}")), None);
        let web = TagPattern::new(Some("web-v{version}")).expect("pattern");
        assert_eq!(web.parse("web-v1.2.0"), Some(v("1.2.0")));
        assert_eq!(web.parse("web-v1.2.0-rc.1+b.3"), Some(v("1.2.0-rc.1")));
        assert_eq!(web.parse("v1.2.0"), None);
        assert_eq!(web.parse("admin-v1.2.0"), None);
        assert_eq!(web.parse("web-1.2.0"), None);
        assert_eq!(web.parse("web-v"), None);
        assert_eq!(web.names(&v("1.2.0")), vec!["web-v1.2.0"]);
        let suffixed = TagPattern::new(Some("{version}@web")).expect("pattern");
        assert_eq!(suffixed.parse("1.0.0-beta@web"), Some(v("1.0.0-beta")));
        assert_eq!(suffixed.parse("1.0.0"), None);
        // Prefix and suffix must not overlap.
        let both = TagPattern::new(Some("a{version}a")).expect("pattern");
        assert_eq!(both.parse("a"), None);
        let bare = TagPattern::new(Some("{version}")).expect("pattern");
        assert_eq!(bare.parse("1.0.0"), Some(v("1.0.0")));
        assert_eq!(bare.parse("v1.0.0"), None);
        assert_eq!(
            TagPattern::Default.names(&v("1.0.0")),
            vec!["v1.0.0", "1.0.0"]
        );
    }
}
