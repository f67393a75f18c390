//! Conventional commits (<https://www.conventionalcommits.org/>) and the next version they
//! ask for, by release-please's rules. Pure: a message in, a [`Commit`] out.
//!
//! The rules, pinned by the table test below:
//! - The subject is `type(scope)!: description`: `type` is letters (compared in lower
//!   case), the scope optional and any text but `)`, `!` optional, then `: ` (a colon and a
//!   space). Anything else is not conventional: ignored for the bump, but counted.
//! - Breaking (`!` after type or scope, or a `BREAKING CHANGE:` / `BREAKING-CHANGE:`
//!   footer line, in capitals as the spec asks) is a major bump whatever the type.
//! - `feat` (and release-please's alias `feature`) is minor; `fix`, `perf` and `revert`
//!   patch, as release-please's visible changelog sections are; git's own `Revert "…"`
//!   subject is a `revert` too.
//! - Every other type (`chore`, `docs`, `style`, `refactor`, `test`, `ci`, `build`, …) is
//!   no bump, as release-please hides them.
//! - A merge commit counts only when its own subject is conventional; its parents'
//!   commits are walked anyway, so a pull request's commits count once.
//! - Below 1.0.0, release-please's defaults: a breaking change is still major (0.6.1 →
//!   1.0.0), unless `bump_minor_pre_major` (then 0.7.0); a feature is minor, unless
//!   `bump_patch_for_minor_pre_major` (then 0.6.2). See `DefaultVersioningStrategy` in
//!   release-please, where both options default to false.

use semver::{Prerelease, Version};

/// What a commit asks of the next version; ordered, so the largest of a set wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bump {
    None,
    Patch,
    Minor,
    Major,
}

/// One commit message, read as a conventional commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conventional {
    /// In lower case.
    pub kind: String,
    pub scope: Option<String>,
    pub breaking: bool,
    /// The subject after `: `.
    pub description: String,
}

impl Conventional {
    pub fn bump(&self) -> Bump {
        if self.breaking {
            return Bump::Major;
        }
        match self.kind.as_str() {
            "feat" | "feature" => Bump::Minor,
            "fix" | "perf" | "revert" => Bump::Patch,
            _ => Bump::None,
        }
    }
}

/// `message` as a conventional commit, or `None` when its subject is not one.
pub fn parse(message: &str) -> Option<Conventional> {
    let mut lines = message.lines();
    let subject = lines.next()?.trim_end();
    let footer_breaking = lines.any(|l| {
        let l = l.trim_start();
        l.starts_with("BREAKING CHANGE:") || l.starts_with("BREAKING-CHANGE:")
    });
    if let Some(reverted) = subject
        .strip_prefix("Revert \"")
        .and_then(|s| s.strip_suffix('"'))
    {
        return Some(Conventional {
            kind: "revert".to_string(),
            scope: None,
            breaking: footer_breaking,
            description: reverted.to_string(),
        });
    }
    let (head, description) = subject.split_once(": ")?;
    let description = description.trim();
    let (head, bang) = match head.strip_suffix('!') {
        Some(h) => (h, true),
        None => (head, false),
    };
    let (kind, scope) = match head.split_once('(') {
        Some((kind, rest)) => {
            let scope = rest.strip_suffix(')')?;
            if scope.is_empty() || scope.contains([')', '(']) {
                return None;
            }
            (kind, Some(scope.to_string()))
        }
        None => (head, None),
    };
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphabetic()) || description.is_empty() {
        return None;
    }
    Some(Conventional {
        kind: kind.to_ascii_lowercase(),
        scope,
        breaking: bang || footer_breaking,
        description: description.to_string(),
    })
}

/// The pre-1.0 options of release-please's default versioning strategy (both off, as
/// there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreMajor {
    /// Below 1.0.0 a breaking change bumps the minor version.
    pub bump_minor_pre_major: bool,
    /// Below 1.0.0 a feature bumps the patch version.
    pub bump_patch_for_minor_pre_major: bool,
}

/// The release after `base` for `bump` (no pre-release, no build metadata); `base` itself
/// for [`Bump::None`].
pub fn bumped(base: &Version, bump: Bump, rules: PreMajor) -> Version {
    let pre_major = base.major == 0;
    let bump = match bump {
        Bump::Major if pre_major && rules.bump_minor_pre_major => Bump::Minor,
        Bump::Minor if pre_major && rules.bump_patch_for_minor_pre_major => Bump::Patch,
        b => b,
    };
    let (major, minor, patch) = (base.major, base.minor, base.patch);
    match bump {
        Bump::None => Version::new(major, minor, patch),
        Bump::Patch => Version::new(major, minor, patch + 1),
        Bump::Minor => Version::new(major, minor + 1, 0),
        Bump::Major => Version::new(major + 1, 0, 0),
    }
}

/// The next pre-release of `release` on `channel` (`rc`): `<release>-<channel>.<N+1>`
/// where `N` is the highest `<channel>.N` among `existing` for the same release, else 1.
pub fn next_pre(release: &Version, channel: &str, existing: &[Version]) -> Option<Version> {
    let highest = existing
        .iter()
        .filter(|v| v.major == release.major && v.minor == release.minor)
        .filter(|v| v.patch == release.patch)
        .filter_map(|v| {
            let (c, n) = v.pre.as_str().split_once('.')?;
            (c == channel).then(|| n.parse::<u64>().ok())?
        })
        .max()
        .unwrap_or(0);
    let mut v = release.clone();
    v.pre = Prerelease::new(&format!("{channel}.{}", highest + 1)).ok()?;
    Some(v)
}

/// Whether `channel` can name a pre-release channel (`rc`, `beta`, `prerelease`): one
/// semver identifier of letters, digits and `-`, not all digits.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !channel.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("test version")
    }

    /// (type, scope, breaking, bump)
    type Expected = Option<(&'static str, Option<&'static str>, bool, Bump)>;

    /// message → what it reads as; `None`: not conventional.
    #[test]
    fn messages() {
        #[rustfmt::skip]
        let table: &[(&str, Expected)] = &[
            ("feat: add a thing", Some(("feat", None, false, Bump::Minor))),
            ("feat(api): add a route", Some(("feat", Some("api"), false, Bump::Minor))),
            ("Feat: capitals in the type", Some(("feat", None, false, Bump::Minor))),
            ("feature: release-please's alias", Some(("feature", None, false, Bump::Minor))),
            ("fix: a bug", Some(("fix", None, false, Bump::Patch))),
            ("fix(parser): a bug\n\nlonger text", Some(("fix", Some("parser"), false, Bump::Patch))),
            ("perf: faster", Some(("perf", None, false, Bump::Patch))),
            ("revert: feat: a thing", Some(("revert", None, false, Bump::Patch))),
            ("Revert \"feat: a thing\"\n\nThis reverts commit 1234567.", Some(("revert", None, false, Bump::Patch))),
            ("feat!: drop the old API", Some(("feat", None, true, Bump::Major))),
            ("feat(api)!: drop a route", Some(("feat", Some("api"), true, Bump::Major))),
            ("chore!: drop node 16", Some(("chore", None, true, Bump::Major))),
            ("fix: x\n\nBREAKING CHANGE: the config moved", Some(("fix", None, true, Bump::Major))),
            ("feat: x\n\nReviewed-by: A\nBREAKING-CHANGE: gone\nRefs: #1", Some(("feat", None, true, Bump::Major))),
            ("docs: x\n\nbreaking change: lower case is not the footer", Some(("docs", None, false, Bump::None))),
            ("chore: tidy", Some(("chore", None, false, Bump::None))),
            ("docs: readme", Some(("docs", None, false, Bump::None))),
            ("style: fmt", Some(("style", None, false, Bump::None))),
            ("refactor(core): split", Some(("refactor", Some("core"), false, Bump::None))),
            ("test: more", Some(("test", None, false, Bump::None))),
            ("ci: cache", Some(("ci", None, false, Bump::None))),
            ("build: deps", Some(("build", None, false, Bump::None))),
            ("feat:no space", None),
            ("feat : space before", None),
            ("feat(): empty scope", None),
            ("feat(api: unclosed", None),
            ("feat: ", None),
            ("add a thing", None),
            ("Merge branch 'feat/a' into develop", None),
            ("Merge pull request #12 from x/y", None),
            ("", None),
            ("fix2: digits", None),
        ];
        for (message, expected) in table {
            let got = parse(message);
            let got = got
                .as_ref()
                .map(|c| (c.kind.as_str(), c.scope.as_deref(), c.breaking, c.bump()));
            assert_eq!(got, *expected, "{message:?}");
        }
    }

    #[test]
    fn bumps_follow_release_please_defaults() {
        let d = PreMajor::default();
        assert_eq!(bumped(&v("1.2.3"), Bump::Patch, d), v("1.2.4"));
        assert_eq!(bumped(&v("1.2.3"), Bump::Minor, d), v("1.3.0"));
        assert_eq!(bumped(&v("1.2.3"), Bump::Major, d), v("2.0.0"));
        assert_eq!(bumped(&v("1.2.3"), Bump::None, d), v("1.2.3"));
        // Below 1.0.0, by default as above 1.0.0.
        assert_eq!(bumped(&v("0.6.1"), Bump::Major, d), v("1.0.0"));
        assert_eq!(bumped(&v("0.6.1"), Bump::Minor, d), v("0.7.0"));
        let minor = PreMajor {
            bump_minor_pre_major: true,
            bump_patch_for_minor_pre_major: true,
        };
        assert_eq!(bumped(&v("0.6.1"), Bump::Major, minor), v("0.7.0"));
        assert_eq!(bumped(&v("0.6.1"), Bump::Minor, minor), v("0.6.2"));
        assert_eq!(bumped(&v("1.6.1"), Bump::Major, minor), v("2.0.0"));
        // A pre-release base is bumped from its release numbers.
        assert_eq!(bumped(&v("0.7.0-rc.1"), Bump::Patch, d), v("0.7.1"));
    }

    #[test]
    fn pre_releases_count_up_per_release() {
        let existing = [
            v("0.7.0-rc.1"),
            v("0.7.0-rc.2"),
            v("0.6.0-rc.9"),
            v("0.7.0-beta.4"),
        ];
        assert_eq!(
            next_pre(&v("0.7.0"), "rc", &existing),
            Some(v("0.7.0-rc.3"))
        );
        assert_eq!(
            next_pre(&v("0.7.0"), "beta", &existing),
            Some(v("0.7.0-beta.5"))
        );
        assert_eq!(
            next_pre(&v("0.8.0"), "rc", &existing),
            Some(v("0.8.0-rc.1"))
        );
        assert_eq!(
            next_pre(&v("0.1.0"), "prerelease", &[]),
            Some(v("0.1.0-prerelease.1"))
        );
        assert!(valid_channel("rc"));
        assert!(valid_channel("pre-release"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("rc.1"));
        assert!(!valid_channel("12"));
        assert!(!valid_channel("r c"));
    }
}
