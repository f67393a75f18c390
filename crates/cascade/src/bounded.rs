//! [IO] Reading a file that a user, a server or another machine controls, bounded: a
//! lockfile, a deploy history, a manifest, a key, a signature, a secret, a bundle's
//! `SHA256SUMS`. Read in chunks, so a huge or endless file (`/dev/zero`, a FIFO, a
//! sparse terabyte) costs one chunk of memory before it is refused, whatever its
//! metadata claims.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// The most a lockfile may hold: a 10,000-node lockfile is about 8 MB.
pub const LOCKFILE_LIMIT: u64 = 64 << 20;
/// A deploy history holds one short entry per deploy; a lockfile's bound is plenty.
pub(crate) const HISTORY_LIMIT: u64 = LOCKFILE_LIMIT;
/// Keys, certificates, signatures and the small files of the store (`stats.jsonl`,
/// digests): far less than this.
pub(crate) const SMALL_LIMIT: u64 = 1 << 20;
/// Files the store keeps a short history in (`stats.jsonl`).
pub(crate) const STATS_LIMIT: u64 = 16 << 20;

const CHUNK: usize = 64 << 10;

/// Why a bounded read gave nothing.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    /// More than the limit.
    TooLarge,
    /// A NUL byte in what should be text.
    Binary,
}

impl ReadError {
    /// The error users see, `shown` being the path as they wrote it.
    pub(crate) fn into_error(self, shown: &str, what: &'static str, limit: u64) -> Error {
        let path = PathBuf::from(shown);
        match self {
            ReadError::Io(source) => Error::Read { path, source },
            ReadError::TooLarge => Error::TooLarge {
                path,
                what,
                limit: human(limit),
            },
            ReadError::Binary => Error::NotText { path, what },
        }
    }

    pub(crate) fn not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// At most `limit` bytes of `path`; with `text`, none of them NUL.
pub(crate) fn read(path: &Path, limit: u64, text: bool) -> Result<Vec<u8>, ReadError> {
    let file = fs::File::open(path).map_err(ReadError::Io)?;
    read_from(file, limit, text)
}

/// The same from any reader (a file opened elsewhere, a pipe).
pub(crate) fn read_from(mut r: impl Read, limit: u64, text: bool) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if text && chunk[..n].contains(&0) {
            return Err(ReadError::Binary);
        }
        if bytes.len() as u64 + n as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    Ok(bytes)
}

/// A file's bytes, bounded; errors name it as `shown`.
pub(crate) fn read_file(
    path: &Path,
    shown: &str,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, Error> {
    read(path, limit, false).map_err(|e| e.into_error(shown, what, limit))
}

/// A text file, bounded, without NUL bytes, UTF-8 (a diagnostic on the first byte
/// that is not).
pub(crate) fn read_text(
    path: &Path,
    shown: &str,
    what: &'static str,
    limit: u64,
) -> Result<String, Error> {
    let bytes = read(path, limit, true).map_err(|e| e.into_error(shown, what, limit))?;
    crate::load::utf8(shown, bytes)
}

/// `64 MiB`, `1 MiB`, `4 KiB`: how a limit reads in a message.
fn human(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless reader is refused after the limit, not read to the end.
    #[test]
    fn endless_input_is_refused_at_the_limit() {
        let e = read_from(std::io::repeat(b'a'), 1 << 20, true).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge), "{e:?}");
        let e = read_from(std::io::repeat(0), 1 << 20, true).unwrap_err();
        assert!(matches!(e, ReadError::Binary), "{e:?}");
        // Binary files (signatures) may hold NUL bytes.
        let ok = read_from(&[0u8, 1, 2][..], 3, false).unwrap();
        assert_eq!(ok, vec![0, 1, 2]);
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(4096), "4 KiB");
    }
}
