//! Blobs of any size without holding them in memory: a file is hashed, then copied, in
//! fixed-size chunks; a stored blob is read through a [`BlobReader`] that re-hashes it
//! and fails at its end when it does not match its name.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use cascade_core::{BlobDigest, Digest};

use crate::{Kind, Store, StoreError};

/// Files up to this size are read whole (one read, one hash); bigger ones are streamed.
const SMALL: u64 = 8 << 20;
const CHUNK: usize = 256 << 10;

/// Reads a stored blob, hashing as it goes. The last read (end of file) fails with
/// `InvalidData` if the bytes do not hash to the blob's name, and the entry is removed:
/// a consumer that reads to the end never accepts corrupt bytes.
pub struct BlobReader<'a> {
    store: &'a Store,
    digest: BlobDigest,
    file: fs::File,
    hasher: blake3::Hasher,
    done: bool,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        self.done = true;
        if Digest::from_hasher(&self.hasher) != self.digest.0 {
            let e = self.store.discard(
                self.store.path(Kind::Blob, &self.digest.0),
                self.digest.0.to_string(),
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(0)
    }
}

/// The store error behind an I/O error from a [`BlobReader`] (a corrupt entry), or
/// the I/O error itself at `path`.
fn unwrap_error(e: io::Error, path: &Path) -> StoreError {
    if e.kind() == io::ErrorKind::InvalidData {
        if let Some(StoreError::Corrupt { path, expected }) =
            e.get_ref().and_then(|i| i.downcast_ref::<StoreError>())
        {
            return StoreError::Corrupt {
                path: path.clone(),
                expected: expected.clone(),
            };
        }
    }
    StoreError::io(path)(e)
}

impl Store {
    /// A verifying reader of a stored blob (see [`BlobReader`]).
    pub fn open_blob(&self, d: &BlobDigest) -> Result<BlobReader<'_>, StoreError> {
        let p = self.path(Kind::Blob, &d.0);
        let file = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::Missing(p)),
            Err(e) => return Err(StoreError::io(&p)(e)),
        };
        Ok(BlobReader {
            store: self,
            digest: *d,
            file,
            hasher: blake3::Hasher::new(),
            done: false,
        })
    }

    /// Copies a blob to `dest`, verifying it on the way; on a mismatch `dest` is
    /// removed and the entry is reported corrupt.
    pub fn copy_blob_to(&self, d: &BlobDigest, dest: &Path) -> Result<(), StoreError> {
        let mut r = self.open_blob(d)?;
        let mut f = fs::File::create(dest).map_err(StoreError::io(dest))?;
        if let Err(e) = io::copy(&mut r, &mut f) {
            drop(f);
            let _ = fs::remove_file(dest);
            return Err(unwrap_error(e, dest));
        }
        Ok(())
    }

    /// Stores a file's contents; returns its digest and size. Big files are hashed in a
    /// first pass (an existing blob costs no write, as for small ones), then copied in
    /// a second pass that hashes again, so a file that changed in between is refused.
    pub fn put_blob_file(&self, src: &Path) -> Result<(BlobDigest, u64), StoreError> {
        let size = fs::metadata(src).map_err(StoreError::io(src))?.len();
        if size <= SMALL {
            let bytes = fs::read(src).map_err(StoreError::io(src))?;
            let d = self.put_blob(&bytes)?;
            return Ok((d, bytes.len() as u64));
        }
        let (digest, size) = hash_copy(src, None)?;
        let dest = self.path(Kind::Blob, &digest);
        if fs::metadata(&dest).is_ok_and(|m| m.len() == size) {
            return Ok((BlobDigest(digest), size));
        }
        let mut tmp = Store::temp_beside(&dest)?;
        if hash_copy(src, Some((tmp.as_file_mut(), &dest)))? != (digest, size) {
            return Err(StoreError::io(src)(io::Error::other(
                "the file changed while it was stored",
            )));
        }
        Store::finish_write(tmp, &dest, true, crate::Durable::AtSync)?;
        self.commits.wrote();
        Ok((BlobDigest(digest), size))
    }
}

/// The blake3 digest and size of a file, read in chunks, and written to `copy` (a
/// writer and the path its errors name) on the way.
fn hash_copy(
    src: &Path,
    mut copy: Option<(&mut fs::File, &Path)>,
) -> Result<(Digest, u64), StoreError> {
    let mut f = fs::File::open(src).map_err(StoreError::io(src))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(StoreError::io(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some((w, path)) = copy.as_mut() {
            w.write_all(&buf[..n]).map_err(StoreError::io(path))?;
        }
        size += n as u64;
    }
    Ok((Digest::from_hasher(&hasher), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_big_file_round_trips_and_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let src = dir.path().join("big");
        let bytes = big(SMALL as usize + 12345);
        fs::write(&src, &bytes).unwrap();
        let (d, size) = store.put_blob_file(&src).unwrap();
        assert_eq!(d.0, Digest::of(&bytes));
        assert_eq!(size, bytes.len() as u64);
        // Again: found by size, not rewritten.
        assert_eq!(store.put_blob_file(&src).unwrap(), (d, size));
        let out = dir.path().join("out");
        store.copy_blob_to(&d, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), bytes);
    }

    #[test]
    fn a_corrupt_blob_is_never_copied_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let src = dir.path().join("big");
        fs::write(&src, big(SMALL as usize + 1)).unwrap();
        let (d, _) = store.put_blob_file(&src).unwrap();
        let path = store.path(Kind::Blob, &d.0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, &bytes).unwrap();
        let out = dir.path().join("out");
        let err = store.copy_blob_to(&d, &out).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!out.exists(), "no half-copied file is left");
        assert!(!path.exists(), "the corrupt entry is removed");
    }
}
