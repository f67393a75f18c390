//! An OCI image layout on disk: `oci-layout`, `index.json` and `blobs/sha256/<hex>`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{to_canonical_json, Descriptor, Index, ANNOTATION_REF_NAME};
use crate::{ImageError, OciDigest};

/// The `oci-layout` file's exact contents.
pub(crate) const OCI_LAYOUT_JSON: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A directory holding an OCI image layout. Many images share one layout; their blobs
/// are stored once.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
}

/// One manifest of an `index.json`, with the name skopeo and containerd find it by
/// (`oci:<dir>:<ref_name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub manifest: Descriptor,
    pub ref_name: String,
}

impl OciLayout {
    /// Opens the layout at `dir`, creating the directory, `oci-layout`, an empty
    /// `index.json` and `blobs/sha256/` as needed. An existing `oci-layout` must
    /// declare version 1.0.0; an existing `index.json` is left alone.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self, ImageError> {
        let root = dir.as_ref().to_path_buf();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(ImageError::io(&blobs))?;

        let marker = root.join("oci-layout");
        match fs::read(&marker) {
            Ok(bytes) => {
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Marker {
                    image_layout_version: String,
                }
                let ok = serde_json::from_slice::<Marker>(&bytes)
                    .map(|m| m.image_layout_version == "1.0.0")
                    .unwrap_or(false);
                if !ok {
                    return Err(ImageError::NotALayout { path: marker });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_atomic(&marker, OCI_LAYOUT_JSON)?;
            }
            Err(e) => {
                return Err(ImageError::Io {
                    path: marker,
                    source: e,
                })
            }
        }

        let layout = Self { root };
        let index = layout.root.join("index.json");
        // The spec requires `index.json`; tools refuse a layout without one.
        if !index.exists() {
            write_atomic(&index, &to_canonical_json(&Index::new(Vec::new()))?)?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/` holds the temporary files of blobs being written: on the same file
    /// system as their destination (so the rename is atomic), but outside
    /// `blobs/sha256/`, where every name must be a digest.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob_path(&self, digest: &OciDigest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &OciDigest) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Whether the blob is present with the expected size. Content-addressed, so an
    /// existing blob of the right size holds these bytes; a wrong size is a truncated
    /// blob, which the caller's write then replaces.
    pub(crate) fn has_blob_of_size(&self, digest: &OciDigest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores `bytes` as a blob (temp file, fsync, rename, fsync of the directory) and
    /// returns its digest. Writing a blob that is already there is a no-op.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<OciDigest, ImageError> {
        let digest = OciDigest::of(bytes);
        if !self.has_blob_of_size(&digest, bytes.len() as u64) {
            write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Stores everything `r` yields as a blob, streamed through a temporary file (never
    /// whole in memory); returns its digest and size.
    pub fn put_blob_reader(&self, r: &mut dyn Read) -> Result<(OciDigest, u64), ImageError> {
        let tmp = temp_file_in(&self.tmp_dir())?;
        let path = tmp.path().to_path_buf();
        let mut w = crate::digest::HashingWriter::new(io::BufWriter::new(tmp.as_file()));
        io::copy(r, &mut w).map_err(ImageError::io(&path))?;
        let (mut inner, digest, size) = w.finish();
        inner.flush().map_err(ImageError::io(&path))?;
        drop(inner);
        if !self.has_blob_of_size(&digest, size) {
            persist(tmp, &self.blob_path(&digest))?;
        }
        Ok((digest, size))
    }

    /// Reads a whole blob and checks that it hashes to its name.
    pub fn read_blob(&self, digest: &OciDigest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let mut bytes = Vec::new();
        match fs::File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(ImageError::io(&path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob {
                    digest: *digest,
                    path,
                })
            }
            Err(e) => return Err(ImageError::Io { path, source: e }),
        };
        let actual = OciDigest::of(&bytes);
        if actual != *digest {
            return Err(ImageError::CorruptBlob {
                path,
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// The named manifests of `index.json` (entries without a ref name are skipped).
    pub fn read_index(&self) -> Result<Vec<IndexEntry>, ImageError> {
        let path = self.root.join("index.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::Io { path, source: e }),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidJson {
            path: path.clone(),
            what: "image index",
            message: e.to_string(),
        })?;
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|mut d| {
                let name = d.annotations.remove(ANNOTATION_REF_NAME)?;
                Some(IndexEntry {
                    manifest: d,
                    ref_name: name,
                })
            })
            .collect())
    }

    /// Adds `entries` to `index.json`, replacing any entry of the same name: the index
    /// names the newest image built under each reference.
    pub fn add_to_index(&self, entries: &[IndexEntry]) -> Result<(), ImageError> {
        let mut all: BTreeMap<String, IndexEntry> = self
            .read_index()?
            .into_iter()
            .map(|e| (e.ref_name.clone(), e))
            .collect();
        for e in entries {
            all.insert(e.ref_name.clone(), e.clone());
        }
        let all: Vec<IndexEntry> = all.into_values().collect();
        self.write_index(&all)
    }

    /// Replaces `index.json` with one listing `entries`, each annotated with its
    /// `org.opencontainers.image.ref.name`, sorted by name (then digest), so the bytes do
    /// not depend on the order given. Two entries with one name are an error.
    pub fn write_index(&self, entries: &[IndexEntry]) -> Result<(), ImageError> {
        let mut sorted: Vec<&IndexEntry> = entries.iter().collect();
        sorted.sort_by(|a, b| {
            (a.ref_name.as_bytes(), a.manifest.digest)
                .cmp(&(b.ref_name.as_bytes(), b.manifest.digest))
        });
        let mut manifests = Vec::with_capacity(sorted.len());
        for (i, e) in sorted.iter().enumerate() {
            check_ref_name(&e.ref_name)?;
            if i > 0 && sorted[i - 1].ref_name == e.ref_name {
                return Err(ImageError::DuplicateRefName {
                    name: e.ref_name.clone(),
                });
            }
            let mut d = e.manifest.clone();
            d.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), e.ref_name.clone());
            manifests.push(d);
        }
        let bytes = to_canonical_json(&Index::new(manifests))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }
}

/// The grammar containers/image (skopeo) accepts for `org.opencontainers.image.ref.name`:
/// components of alphanumerics joined by one of `-._:@+` (or `--`), separated by `/`.
pub(crate) fn check_ref_name(name: &str) -> Result<(), ImageError> {
    let bad = |reason: &'static str| ImageError::InvalidReference {
        reference: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    for component in name.split('/') {
        let bytes = component.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Err(bad("it has an empty `/` component"));
        };
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(bad(
                "each component must start and end with a letter or digit",
            ));
        }
        let mut run = 0usize; // consecutive separators
        let mut prev = b'a';
        for &b in bytes {
            if b.is_ascii_alphanumeric() {
                run = 0;
            } else if b"-._:@+".contains(&b) {
                run += 1;
                if run > 2 || (run == 2 && !(prev == b'-' && b == b'-')) {
                    return Err(bad("separators must be single (or `--`)"));
                }
            } else {
                return Err(bad("only letters, digits and `-._:@+/` are allowed"));
            }
            prev = b;
        }
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically: a temp file in the same directory, mode 0644
/// whatever the umask, fsynced, renamed over `dest`, then the directory fsynced.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = parent_dir(dest);
    let mut tmp = temp_file_in(dir)?;
    tmp.write_all(bytes).map_err(ImageError::io(tmp.path()))?;
    persist(tmp, dest)
}

pub(crate) fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub(crate) fn temp_file_in(dir: &Path) -> Result<tempfile::NamedTempFile, ImageError> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(ImageError::io(dir))
}

/// fsync, chmod 0644, rename into place, fsync the directory. The temp file is removed
/// if any step fails.
pub(crate) fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let file = tmp.as_file();
    // tempfile creates 0600; blobs are world-readable content, like any image store.
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(ImageError::io(tmp.path()))?;
    file.sync_all().map_err(ImageError::io(tmp.path()))?;
    tmp.persist(dest).map_err(|e| ImageError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(parent_dir(dest));
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; some file systems refuse fsync on directories, which
    // is harmless.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_the_containers_image_grammar() {
        for ok in [
            "latest",
            "services:main-1a2b3c4",
            "registry.example:5000/team/services:v1.2.3",
            "a--b",
        ] {
            check_ref_name(ok).unwrap();
        }
        for bad in ["", "a//b", ":tag", "a:", "a b", "a..b", "a---b", "ä"] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }
}
