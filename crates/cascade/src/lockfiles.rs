//! [IO] The lockfiles a project has written: `lockfiles/<env>-<stamp>[-<n>].yaml`.

use std::fs;
use std::path::{Path, PathBuf};

use cascade_lock::Lockfile;

use crate::Error;

/// The newest lockfile of `env` in `<root>/lockfiles`, by the stamp in its name (and
/// the `-<n>` suffix of a second build in the same second). Names of other
/// environments, including ones that merely start with `env-`, are ignored.
pub fn newest_lockfile(root: &Path, env: &str) -> Option<PathBuf> {
    let dir = fs::read_dir(root.join("lockfiles")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let order = stamp_of(&name, env)?;
            Some((order, e.path()))
        })
        .max()
        .map(|(_, path)| path)
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

/// Reads and parses a lockfile; `shown` is how its path is printed.
pub fn read_lockfile(path: &Path, shown: &str) -> Result<Lockfile, Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: PathBuf::from(shown),
        source,
    })?;
    Ok(cascade_lock::read(shown, &text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
