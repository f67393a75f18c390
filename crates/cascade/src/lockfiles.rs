//! [IO] The lockfiles a project has written: `lockfiles/<env>-<stamp>[-<n>].yaml`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use cascade_lock::Lockfile;

use crate::{Error, Layout};

/// The newest lockfile of `env` in `<root>/lockfiles`, by the stamp in its name (and
/// the `-<n>` suffix of a second build in the same second). Names of other
/// environments, including ones that merely start with `env-`, are ignored.
pub fn newest_lockfile(root: &Path, env: &str) -> Option<PathBuf> {
    lockfiles_of(root, env).into_iter().next()
}

/// The newest lockfile of `env` and how it is shown (relative to the project), or
/// `NoLockfile`.
pub(crate) fn newest_shown(root: &Path, env: &str) -> Result<(PathBuf, String), Error> {
    let p = newest_lockfile(root, env).ok_or_else(|| Error::NoLockfile {
        env: env.to_string(),
    })?;
    let shown = p.strip_prefix(root).unwrap_or(&p).display().to_string();
    Ok((p, shown))
}

/// Every lockfile of `env`, newest first.
pub fn lockfiles_of(root: &Path, env: &str) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(Layout::new(root).lockfiles()) else {
        return Vec::new();
    };
    let mut found: Vec<((String, u64), PathBuf)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let order = stamp_of(&name, env)?;
            Some((order, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

/// Every environment that has lockfiles, with them newest first.
pub fn all_lockfiles(root: &Path) -> std::collections::BTreeMap<String, Vec<PathBuf>> {
    let mut envs = std::collections::BTreeSet::new();
    if let Ok(dir) = fs::read_dir(Layout::new(root).lockfiles()) {
        for e in dir.filter_map(|e| e.ok()) {
            if let Ok(name) = e.file_name().into_string() {
                if let Some(env) = env_of(&name) {
                    envs.insert(env);
                }
            }
        }
    }
    envs.into_iter()
        .map(|env| {
            let files = lockfiles_of(root, &env);
            (env, files)
        })
        .collect()
}

/// The environment of `<env>-<stamp>[-<n>].yaml`, read from the right.
fn env_of(name: &str) -> Option<String> {
    let rest = name.strip_suffix(".yaml")?;
    // Try "<env>-<stamp>-<n>" first, then "<env>-<stamp>".
    let candidates = [
        rest.rsplit_once('-')
            .and_then(|(a, n)| n.parse::<u64>().ok().map(|_| a)),
        Some(rest),
    ];
    candidates.into_iter().flatten().find_map(|r| {
        let (env, _) = r.rsplit_once('-')?;
        stamp_of(name, env).map(|_| env.to_string())
    })
}

/// For a rollback: the newest lockfile of `env` whose content differs from the newest
/// one (two identical builds in a row are one state). `None` when there is none.
pub fn previous_lockfile(root: &Path, env: &str) -> Option<(PathBuf, PathBuf)> {
    let all = lockfiles_of(root, env);
    let newest = all.first()?.clone();
    let read = |p: &Path| crate::bounded::read(p, LOCKFILE_LIMIT, true).ok();
    let bytes = read(&newest)?;
    let previous = all
        .into_iter()
        .skip(1)
        .find(|p| read(p).is_some_and(|b| b != bytes))?;
    Some((newest, previous))
}

/// `(stamp, n)` for `<env>-<YYYYMMDDTHHMMSSZ>[-<n>].yaml`, else `None`.
fn stamp_of(name: &str, env: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix(env)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".yaml")?;
    let (stamp, n) = match rest.split_once('-') {
        Some((stamp, n)) => (stamp, n.parse::<u64>().ok()?),
        None => (rest, 1),
    };
    let b = stamp.as_bytes();
    let ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    ok.then(|| (stamp.to_string(), n))
}

/// The build order of a lockfile's nodes, given each node's dependencies by name: the
/// graph's own order ([`cascade_manifest::build_order`]: inputs first, the smallest ready
/// name first). Returns the ordered names and, in name order, those that could not be
/// placed (in a cycle, or waiting on a dependency that is not a node).
pub(crate) fn build_order(deps: &BTreeMap<String, BTreeSet<String>>) -> (Vec<String>, Vec<String>) {
    let graph: BTreeMap<&str, Vec<&str>> = deps
        .iter()
        .map(|(n, ds)| (n.as_str(), ds.iter().map(String::as_str).collect()))
        .collect();
    let o = cascade_manifest::build_order(&graph);
    let mut left: Vec<String> = o
        .cycles
        .iter()
        .flatten()
        .chain(&o.unplaced)
        .map(|n| n.to_string())
        .collect();
    left.sort();
    left.dedup();
    (o.order.iter().map(|n| n.to_string()).collect(), left)
}

pub use crate::bounded::LOCKFILE_LIMIT;

/// Reads a lockfile's text, bounded: at most [`LOCKFILE_LIMIT`] bytes, none of them NUL
/// (`/dev/zero`, a binary), UTF-8. Read in chunks, so a huge or endless file costs one
/// chunk of memory before it is refused.
pub fn read_lockfile_text(path: &Path, shown: &str) -> Result<String, Error> {
    crate::bounded::read_text(path, shown, "a lockfile", LOCKFILE_LIMIT)
}

/// Reads and parses a lockfile; `shown` is how its path is printed.
pub fn read_lockfile(path: &Path, shown: &str) -> Result<Lockfile, Error> {
    let text = read_lockfile_text(path, shown)?;
    Ok(cascade_lock::read(shown, &text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lockfile is read in bounded chunks: more than the limit is refused (exit 2)
    /// without reading the rest, and so is a file with NUL bytes.
    #[test]
    fn lockfile_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let f = fs::File::create(&big).unwrap();
        let line = "# padding line of a lockfile that is far too large\n".repeat(1000);
        let mut w = std::io::BufWriter::new(f);
        let mut written = 0u64;
        while written <= LOCKFILE_LIMIT {
            std::io::Write::write_all(&mut w, line.as_bytes()).unwrap();
            written += line.len() as u64;
        }
        drop(w);
        let e = read_lockfile(&big, "big.yaml").unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert_eq!(e.exit_code(), crate::ExitCode::BadInput);
        let zeros = dir.path().join("zeros.yaml");
        fs::write(&zeros, b"format: cascade-lock/2\n\0\0").unwrap();
        let e = read_lockfile(&zeros, "zeros.yaml").unwrap_err();
        assert!(matches!(e, Error::NotText { .. }), "{e}");
    }

    #[test]
    fn newest_is_by_stamp_then_suffix_and_ignores_other_environments() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("lockfiles");
        fs::create_dir(&locks).unwrap();
        for name in [
            "scratch-20261101T000000Z.yaml",
            "scratch-20261102T000000Z.yaml",
            "scratch-20261102T000000Z-2.yaml",
            "scratch-20261102T000000Z-10.yaml",
            "scratch-eu-20261231T000000Z.yaml",
            "scratch-99999999T999999Z.yml",
            "scratch-latest.yaml",
            "README.md",
        ] {
            fs::write(locks.join(name), "").unwrap();
        }
        let newest = newest_lockfile(dir.path(), "scratch").unwrap();
        assert_eq!(
            newest.file_name().unwrap(),
            "scratch-20261102T000000Z-10.yaml"
        );
        assert_eq!(
            newest_lockfile(dir.path(), "scratch-eu")
                .unwrap()
                .file_name()
                .unwrap(),
            "scratch-eu-20261231T000000Z.yaml"
        );
        assert_eq!(newest_lockfile(dir.path(), "prod"), None);
        let envs: Vec<String> = all_lockfiles(dir.path()).into_keys().collect();
        assert_eq!(envs, ["scratch", "scratch-eu"]);
        assert_eq!(lockfiles_of(dir.path(), "scratch").len(), 4);
    }

    #[test]
    fn build_order_is_kahn_smallest_first_and_reports_what_cannot_be_placed() {
        let deps = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
            pairs
                .iter()
                .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
                .collect()
        };
        let (order, left) = build_order(&deps(&[
            ("app", &["lib", "b"]),
            ("b", &[]),
            ("lib", &["b"]),
            ("a", &[]),
        ]));
        assert_eq!(order, ["a", "b", "lib", "app"]);
        assert!(left.is_empty());
        let (order, left) = build_order(&deps(&[
            ("x", &["y"]),
            ("y", &["x"]),
            ("z", &["gone"]),
            ("w", &[]),
        ]));
        assert_eq!(order, ["w"]);
        assert_eq!(left, ["x", "y", "z"]);
    }

    #[test]
    fn previous_skips_identical_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("lockfiles");
        fs::create_dir(&locks).unwrap();
        for (name, text) in [
            ("x-20261101T000000Z.yaml", "a"),
            ("x-20261102T000000Z.yaml", "b"),
            ("x-20261103T000000Z.yaml", "c"),
            ("x-20261104T000000Z.yaml", "c"),
        ] {
            fs::write(locks.join(name), text).unwrap();
        }
        let (newest, previous) = previous_lockfile(dir.path(), "x").unwrap();
        assert!(newest.ends_with("x-20261104T000000Z.yaml"));
        assert!(previous.ends_with("x-20261102T000000Z.yaml"));
        assert_eq!(previous_lockfile(dir.path(), "none"), None);
    }
}
