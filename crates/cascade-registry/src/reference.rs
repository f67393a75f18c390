//! `Reference`: `host[:port]/path/name[:tag]`, with the grammar of the distribution
//! project's `reference` package (what docker and skopeo accept), minus digests.

use std::fmt;
use std::str::FromStr;

use crate::RegistryError;

/// An image name with its registry and, optionally, a tag.
///
/// The registry is required: a bare `ottochain/services` means Docker Hub to docker,
/// and cascade never pushes anywhere it was not told to explicitly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, e.g. `127.0.0.1:5000` or `registry.example.com`.
    pub registry: String,
    /// `/`-separated lowercase components, e.g. `ottochain/services`.
    pub repository: String,
    pub tag: Option<String>,
}

/// The distribution spec caps a repository name (with its registry) at 255 bytes.
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

impl Reference {
    /// Parses `host[:port]/path/name[:tag]`.
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.contains('@') {
            return Err(bad("digest references are not supported here; name a tag"));
        }
        let Some((registry, rest)) = s.split_once('/') else {
            return Err(bad(
                "it names no registry; start with `host[:port]/`, e.g. `127.0.0.1:5000/`",
            ));
        };
        // docker's rule: a first component is a host only if it could not be a path
        // component (it has `.` or `:`, or is `localhost`, or is a bracketed IPv6).
        if !(registry.contains(['.', ':']) || registry == "localhost" || registry.starts_with('['))
        {
            return Err(bad(&format!(
                "`{registry}` is not a registry host (it needs a `.` or a `:port`, or must be `localhost`); docker would read this name as Docker Hub's"
            )));
        }
        check_registry(registry).map_err(bad)?;
        // The host is gone, so a `:` left can only start the tag.
        let (repository, tag) = match rest.split_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (rest, None),
        };
        check_repository(repository).map_err(bad)?;
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad("the name is longer than 255 bytes"));
        }
        if let Some(t) = tag {
            check_tag(t).map_err(bad)?;
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `host[:port]`: DNS labels (letters, digits, inner `-`) joined by `.`, or `[IPv6]`.
fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("the IPv6 address has no closing `]`")?;
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("the bracketed IPv6 address is not valid");
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or("`]` must be followed by `:port`")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("the registry host is empty");
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            let (Some(first), Some(last)) = (b.first(), b.last()) else {
                return Err("the registry host has an empty label");
            };
            if !first.is_ascii_alphanumeric()
                || !last.is_ascii_alphanumeric()
                || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            {
                return Err("the registry host may only have letters, digits, inner `-` and `.`");
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535)
        {
            return Err("the registry port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` components joined by `/`.
pub(crate) fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() {
        return Err("the repository name is empty");
    }
    if repository.len() > MAX_NAME {
        return Err("the repository name is longer than 255 bytes");
    }
    for component in repository.split('/') {
        let b = component.as_bytes();
        let (Some(first), Some(last)) = (b.first(), b.last()) else {
            return Err("the repository has an empty `/` component");
        };
        let lower_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !lower_alnum(*first) || !lower_alnum(*last) {
            return Err(
                "each repository component must start and end with a lowercase letter or digit",
            );
        }
        let mut i = 0;
        while i < b.len() {
            if lower_alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !lower_alnum(b[i]) {
                i += 1;
            }
            match &b[start..i] {
                b"." | b"_" | b"__" => {}
                sep if sep.iter().all(|&c| c == b'-') => {}
                sep if sep
                    .iter()
                    .all(|&c| c == b'.' || c == b'_' || c == b'-') =>
                {
                    return Err("repository components may not join separators (only `.`, `_`, `__` or a run of `-`)")
                }
                _ => {
                    return Err(
                        "repository names may only have lowercase letters, digits, `.`, `_`, `-` and `/`",
                    )
                }
            }
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), &'static str> {
    let b = tag.as_bytes();
    let Some(first) = b.first() else {
        return Err("the tag is empty");
    };
    if b.len() > MAX_TAG {
        return Err("the tag is longer than 128 bytes");
    }
    if !(first.is_ascii_alphanumeric() || *first == b'_') {
        return Err("a tag must start with a letter, a digit or `_`");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err("a tag may only have letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_registry_repository_and_tag() {
        let r = parse("127.0.0.1:5000/ottochain/services:main-1a2b3c4");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "ottochain/services");
        assert_eq!(r.tag.as_deref(), Some("main-1a2b3c4"));

        let r = parse("registry.example.com/services");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag),
            ("registry.example.com", "services", None)
        );

        let r = parse("localhost/a/b/c/d:v1.2.3");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "a/b/c/d");
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));

        let r = parse("[::1]:5000/x__y/a-b--c/e.f:_T");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository, "x__y/a-b--c/e.f");
        assert_eq!(r.tag.as_deref(), Some("_T"));

        let r = parse("Registry-1.Example.com:443/team/app");
        assert_eq!(r.registry, "Registry-1.Example.com:443");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "127.0.0.1:5000/ottochain/services:main-1a2b3c4",
            "registry.example.com/services",
            "localhost:5000/a/b",
            "[::1]/x:latest",
        ] {
            let r = parse(s);
            assert_eq!(r.to_string(), s);
            assert_eq!(parse(&r.to_string()), r);
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let long_tag = format!("reg.io/a:{}", "t".repeat(129));
        let long_name = format!("reg.io/{}", "a".repeat(250));
        for bad in [
            "",
            "services",
            "services:1",
            "ottochain/services:1",
            "127.0.0.1:5000",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/Services",
            "127.0.0.1:5000/a//b",
            "127.0.0.1:5000/a/",
            "127.0.0.1:5000/-a",
            "127.0.0.1:5000/a._b",
            "127.0.0.1:5000/a___b",
            "127.0.0.1:5000/a b",
            "127.0.0.1:5000/a:",
            "127.0.0.1:5000/a:-tag",
            "127.0.0.1:5000/a:t:u",
            "127.0.0.1:5000/a:t/u",
            "127.0.0.1:5000/a@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "127.0.0.1:/a",
            "127.0.0.1:0/a",
            "127.0.0.1:65536/a",
            "127.0.0.1:50x/a",
            "-bad.host/a",
            "bad..host/a",
            "bad_host.io/a",
            "[::1/a",
            "[zz]/a",
            "[::1]x/a",
            long_tag.as_str(),
            long_name.as_str(),
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            let text = err.to_string();
            assert!(text.contains("is not a valid image reference"), "{text}");
        }
    }

    #[test]
    fn a_name_without_a_host_says_why() {
        let err = Reference::parse("ottochain/services:1").unwrap_err();
        assert!(err.to_string().contains("Docker Hub"), "{err}");
        let err = Reference::parse("services").unwrap_err();
        assert!(err.to_string().contains("names no registry"), "{err}");
    }
}
