//! Semver ranges as written in `graph/compatibility.yaml`, and how versions are checked
//! against them.
//!
//! The syntax is npm's: comparators separated by spaces (cargo-style commas are accepted
//! too), alternatives separated by `||`, `A - B` hyphen ranges, partial versions
//! (`>=0.5`, `1.x`, `*`), caret (`^1.2.3`) and tilde (`~1.2.3`). A bare version means
//! exactly that version (npm), not cargo's caret.
//!
//! Versions are compared by plain semver precedence against every comparator, so a
//! pre-release such as `0.6.1-dev.5` (how branch-mode versions look) satisfies
//! `>=0.5.0 <1.0.0`. That is node-semver's `includePrerelease` behaviour; the `semver`
//! crate's `VersionReq::matches` would refuse it. Upper bounds that come from a partial
//! version, a caret or a tilde exclude the pre-releases of the bound (`^0.5` is
//! `>=0.5.0 <0.6.0-0`), as node-semver does.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use semver::{Prerelease, Version};

/// A parsed version range; displays as written, and is kept (in the resolved-graph
/// cache) as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionRange {
    text: String,
    /// Alternatives (`||`); each is a conjunction of comparators. An empty
    /// conjunction matches every version.
    sets: Vec<Vec<Comparator>>,
}

/// Why a range did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RangeError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Comparator {
    op: Op,
    version: Version,
}

impl Comparator {
    fn matches(&self, v: &Version) -> bool {
        let o = precedence(v, &self.version);
        match self.op {
            Op::Eq => o == Ordering::Equal,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
        }
    }
}

/// Semver precedence: build metadata does not count.
fn precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch, &a.pre).cmp(&(b.major, b.minor, b.patch, &b.pre))
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(RangeError("the range is empty".into()));
        }
        let mut sets = Vec::new();
        for alt in trimmed.split("||") {
            sets.push(parse_set(alt)?);
        }
        Ok(VersionRange {
            text: text.to_string(),
            sets,
        })
    }

    /// Whether `v` is in the range, by plain precedence (pre-releases included).
    pub fn matches(&self, v: &Version) -> bool {
        self.sets.iter().any(|set| set.iter().all(|c| c.matches(v)))
    }

    /// The range as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for VersionRange {
    type Error = RangeError;

    fn try_from(text: String) -> Result<Self, RangeError> {
        VersionRange::parse(&text)
    }
}

impl From<VersionRange> for String {
    fn from(r: VersionRange) -> String {
        r.text
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for VersionRange {
    type Err = RangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionRange::parse(s)
    }
}

const OPS: [&str; 8] = [">=", "<=", "~>", ">", "<", "=", "^", "~"];

fn parse_set(text: &str) -> Result<Vec<Comparator>, RangeError> {
    let raw: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    if raw.is_empty() {
        return Err(RangeError("an alternative after `||` is empty".into()));
    }
    // Glue a lone operator to the version after it (`>= 1.2.3`).
    let mut tokens: Vec<String> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let t = raw[i];
        if OPS.contains(&t) {
            let next = raw
                .get(i + 1)
                .ok_or_else(|| RangeError(format!("`{t}` is not followed by a version")))?;
            tokens.push(format!("{t}{next}"));
            i += 2;
        } else {
            tokens.push(t.to_string());
            i += 1;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).map(String::as_str) == Some("-") {
            let hi = tokens
                .get(i + 2)
                .ok_or_else(|| RangeError("a hyphen range needs a version after `-`".into()))?;
            let lo = Partial::parse(&tokens[i])?;
            let hi = Partial::parse(hi)?;
            out.push(lo.lower(Op::Ge));
            out.extend(hi.upper_inclusive());
            i += 3;
        } else {
            comparator(&tokens[i], &mut out)?;
            i += 1;
        }
    }
    Ok(out)
}

/// A version with possibly missing or wildcard parts: `1`, `1.2`, `1.x`, `*`, `1.2.3-pre`.
#[derive(Debug)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

fn is_wild(s: &str) -> bool {
    matches!(s, "x" | "X" | "*")
}

impl Partial {
    fn parse(s: &str) -> Result<Self, RangeError> {
        let bad = |why: &str| RangeError(format!("`{s}` {why}"));
        let body = s.strip_prefix('v').unwrap_or(s);
        if body.is_empty() {
            return Err(bad("is not a version"));
        }
        let core_end = body.find(['-', '+']).unwrap_or(body.len());
        let core = &body[..core_end];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return Err(bad("has more than three numbers"));
        }
        let mut nums = [None; 3];
        let mut wild = false;
        for (k, p) in parts.iter().enumerate() {
            if is_wild(p) {
                wild = true;
            } else if wild {
                return Err(bad("has a number after a wildcard"));
            } else if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("is not a version"));
            } else if p.len() > 1 && p.starts_with('0') {
                // Semver forbids it, and the environment file refuses it too.
                return Err(bad("has a number with a leading zero"));
            } else {
                nums[k] = Some(
                    p.parse::<u64>()
                        .map_err(|_| bad("has a number too large"))?,
                );
            }
        }
        let pre = if core_end < body.len() {
            if nums.iter().any(Option::is_none) {
                return Err(bad("has a pre-release or build but not three numbers"));
            }
            Version::parse(body)
                .map_err(|e| RangeError(format!("`{s}` is not a version: {e}")))?
                .pre
        } else {
            Prerelease::EMPTY
        };
        Ok(Partial {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
            pre,
        })
    }

    fn is_full(&self) -> bool {
        self.patch.is_some()
    }

    /// Missing parts as zero.
    fn floor(&self) -> Version {
        let mut v = Version::new(
            self.major.unwrap_or(0),
            self.minor.unwrap_or(0),
            self.patch.unwrap_or(0),
        );
        v.pre = self.pre.clone();
        v
    }

    fn lower(&self, op: Op) -> Comparator {
        Comparator {
            op,
            version: self.floor(),
        }
    }

    /// The first version past what this partial names (`1.2` → `1.3.0-0`); only for
    /// partials with at least a major number.
    fn bump(&self, major: u64) -> Option<Version> {
        let v = match (self.minor, self.patch) {
            (None, _) => Version::new(major.checked_add(1)?, 0, 0),
            (Some(m), None) => Version::new(major, m.checked_add(1)?, 0),
            (Some(m), Some(p)) => Version::new(major, m, p.checked_add(1)?),
        };
        Some(lowest_pre(v))
    }

    /// `<= self`, where a partial includes everything it names.
    fn upper_inclusive(&self) -> Vec<Comparator> {
        match self.major {
            None => vec![],
            Some(_) if self.is_full() => vec![Comparator {
                op: Op::Le,
                version: self.floor(),
            }],
            Some(major) => upper_lt(self.bump(major)),
        }
    }
}

/// `v-0`: lower than every pre-release of `v`.
fn lowest_pre(mut v: Version) -> Version {
    v.pre = Prerelease::new("0").unwrap_or(Prerelease::EMPTY);
    v
}

/// `< bound`; with no bound (an overflow) nothing is excluded.
fn upper_lt(bound: Option<Version>) -> Vec<Comparator> {
    bound
        .map(|version| Comparator {
            op: Op::Lt,
            version,
        })
        .into_iter()
        .collect()
}

/// Nothing matches: `<0.0.0-0`.
fn nothing() -> Comparator {
    Comparator {
        op: Op::Lt,
        version: lowest_pre(Version::new(0, 0, 0)),
    }
}

fn comparator(token: &str, out: &mut Vec<Comparator>) -> Result<(), RangeError> {
    let (op, rest) = OPS
        .iter()
        .find_map(|op| token.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("", token));
    if rest.is_empty() {
        return Err(RangeError(format!("`{token}` has no version")));
    }
    let p = Partial::parse(rest)?;
    let Some(major) = p.major else {
        // `*`, `x`, `>=*`: any version; `<*`, `>*`: none.
        if matches!(op, ">" | "<") {
            out.push(nothing());
        }
        return Ok(());
    };
    match op {
        "" | "=" => {
            if p.is_full() {
                out.push(p.lower(Op::Eq));
            } else {
                out.push(p.lower(Op::Ge));
                out.extend(upper_lt(p.bump(major)));
            }
        }
        ">=" => out.push(p.lower(Op::Ge)),
        ">" => {
            if p.is_full() {
                out.push(p.lower(Op::Gt));
            } else {
                match p.bump(major) {
                    Some(mut v) => {
                        v.pre = Prerelease::EMPTY;
                        out.push(Comparator {
                            op: Op::Ge,
                            version: v,
                        });
                    }
                    None => out.push(nothing()),
                }
            }
        }
        "<" => {
            if p.is_full() {
                out.push(p.lower(Op::Lt));
            } else {
                out.push(Comparator {
                    op: Op::Lt,
                    version: lowest_pre(p.floor()),
                });
            }
        }
        "<=" => out.extend(p.upper_inclusive()),
        "^" => {
            out.push(p.lower(Op::Ge));
            let bound = match (major, p.minor, p.patch) {
                (0, None, _) => Some(Version::new(1, 0, 0)),
                (0, Some(0), None) => Some(Version::new(0, 1, 0)),
                (0, Some(0), Some(pa)) => pa.checked_add(1).map(|pa| Version::new(0, 0, pa)),
                (0, Some(m), _) => m.checked_add(1).map(|m| Version::new(0, m, 0)),
                (ma, _, _) => ma.checked_add(1).map(|ma| Version::new(ma, 0, 0)),
            };
            out.extend(upper_lt(bound.map(lowest_pre)));
        }
        // "~" and "~>"
        _ => {
            out.push(p.lower(Op::Ge));
            let bound = match p.minor {
                None => major.checked_add(1).map(|ma| Version::new(ma, 0, 0)),
                Some(m) => m.checked_add(1).map(|m| Version::new(major, m, 0)),
            };
            out.extend(upper_lt(bound.map(lowest_pre)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(range: &str, v: &str) -> bool {
        VersionRange::parse(range)
            .unwrap_or_else(|e| panic!("{range}: {e}"))
            .matches(&Version::parse(v).unwrap())
    }

    #[test]
    fn npm_style_and_prereleases() {
        assert!(m(">=0.5.0 <1.0.0", "0.6.1-dev.5"));
        assert!(m(">=0.5.0 <1.0.0", "0.5.0"));
        assert!(m(">=0.5.0 <1.0.0", "0.9.9"));
        assert!(!m(">=0.5.0 <1.0.0", "1.0.0"));
        assert!(!m(">=0.5.0 <1.0.0", "0.4.9"));
        assert!(
            !m(">=0.5.0 <1.0.0", "0.5.0-dev.1"),
            "a pre-release of the floor is below it"
        );
        assert!(m(">=0.5.0 <1.0.0", "1.0.0-rc.1"), "plain precedence");
        assert!(m(">= 0.5.0, < 1.0.0", "0.7.0"));
        assert!(m(">=0.5.0,<1.0.0", "0.7.0"));
        assert!(m(">=0.2.0", "0.2.1-dev.3"));
        assert!(m("0.5.0", "0.5.0"));
        assert!(m("=0.5.0", "0.5.0+build"));
        assert!(!m("0.5.0", "0.5.1"));
    }

    #[test]
    fn partials_carets_tildes() {
        assert!(m(">=0.5", "0.5.0"));
        assert!(m("1.x", "1.9.3"));
        assert!(!m("1.x", "2.0.0"));
        assert!(!m("1.x", "2.0.0-dev.1"));
        assert!(m("1.2", "1.2.7-dev.1"));
        assert!(m("*", "0.0.1-dev.1"));
        assert!(m("^0.5", "0.5.9-dev.2"));
        assert!(!m("^0.5", "0.6.0"));
        assert!(m("^1.2.3", "1.9.0"));
        assert!(!m("^1.2.3", "1.2.2"));
        assert!(!m("^0.0.3", "0.0.4"));
        assert!(m("~1.2.3", "1.2.9"));
        assert!(!m("~1.2.3", "1.3.0"));
        assert!(m("~1", "1.9.0"));
        assert!(m("<=1.2", "1.2.9"));
        assert!(!m("<1.2", "1.2.0-dev.1"));
        assert!(m(">1.2", "1.3.0"));
        assert!(!m(">1.2", "1.2.9"));
        assert!(m("1.0.0 - 2", "2.5.0"));
        assert!(!m("1.0.0 - 2.0.0", "2.0.1"));
        assert!(m("<0.1.0 || >=2.0.0", "2.1.0"));
        assert!(!m("<*", "0.0.0"));
    }

    #[test]
    fn bad_ranges() {
        for r in [
            "",
            " ",
            ">=",
            ">=0.5.x.y",
            "1.2.3.4",
            "bogus",
            ">=0.5.0 ||",
            "1.x.3",
            "^",
            "1.0.0 -",
            "01.a",
            ">=1.0.0-",
            "01.2.3",
            ">=1.02.0",
            "^0.00",
        ] {
            assert!(VersionRange::parse(r).is_err(), "{r:?} parsed");
        }
    }
}
