//! Garbage collection: remove every entry that is not in a keep set. What to keep is
//! the caller's business (the engine computes it from the newest lockfiles); this
//! module only knows the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use cascade_core::Digest;

use crate::{Kind, Store, StoreError};

/// What survives a collection, by kind.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    pub blobs: BTreeSet<Digest>,
    pub trees: BTreeSet<Digest>,
    /// Node keys: their key manifests and action results.
    pub keys: BTreeSet<Digest>,
    /// Image keys whose records survive.
    pub images: BTreeSet<Digest>,
    /// sha256 hex digests of the blobs of `oci/`.
    pub oci: BTreeSet<String>,
}

/// What a collection removed (or would remove, in a dry run).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Kind (`blobs`, `trees`, `keys`, `actions`, `images`, `oci`, `rootfs`, `tmp`) →
    /// entries and bytes.
    pub removed: BTreeMap<String, (usize, u64)>,
    pub kept: BTreeMap<String, (usize, u64)>,
}

impl GcReport {
    pub fn removed_entries(&self) -> usize {
        self.removed.values().map(|v| v.0).sum()
    }

    pub fn freed_bytes(&self) -> u64 {
        self.removed.values().map(|v| v.1).sum()
    }
}

impl Store {
    /// Every image record: image key → manifest digest (for deciding which to keep).
    pub fn image_records(&self) -> Vec<(Digest, String)> {
        let mut out = Vec::new();
        for (name, _) in entries(&self.root.join(Kind::Image.dir()), true) {
            let Ok(key) = Digest::from_hex(&name) else {
                continue;
            };
            if let Ok(Some(m)) = self.get_image(&key) {
                out.push((key, m));
            }
        }
        out
    }

    /// Removes every entry not in `keep` (nothing with `dry_run`), and what killed
    /// builds left in `tmp/`. Logs and git mirrors are left alone. The caller holds
    /// the exclusive [`crate::StoreLock`], so no build is running. An entry that cannot
    /// be removed stops the collection with an error; what was removed before it stays
    /// removed (each removal is one unlink of a content-addressed entry, so the store
    /// stays consistent).
    pub fn gc(&self, keep: &Keep, dry_run: bool) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let tmp = self.root.join("tmp");
        let mut leftovers: Vec<_> = fs::read_dir(&tmp)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        leftovers.sort();
        for path in leftovers {
            let size = tree_size(&path);
            let e = report.removed.entry("tmp".to_string()).or_default();
            e.0 += 1;
            e.1 += size;
            if !dry_run {
                let removed = if path.is_dir() {
                    crate::remove_tree(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(StoreError::io(&path))?;
            }
        }
        let kinds: [(Kind, &BTreeSet<Digest>); 5] = [
            (Kind::Blob, &keep.blobs),
            (Kind::Tree, &keep.trees),
            (Kind::Key, &keep.keys),
            (Kind::Action, &keep.keys),
            (Kind::Image, &keep.images),
        ];
        for (kind, set) in kinds {
            let dir = self.root.join(kind.dir());
            for (name, path) in entries(&dir, true) {
                let wanted = Digest::from_hex(&name).is_ok_and(|d| set.contains(&d));
                self.sweep(&mut report, kind.dir(), &path, wanted, dry_run)?;
            }
        }
        let oci = self.oci_dir().join("blobs/sha256");
        for (name, path) in entries(&oci, false) {
            let wanted = keep.oci.contains(&name);
            self.sweep(&mut report, "oci", &path, wanted, dry_run)?;
        }
        // Unpacked runner images (`rootfs/<manifest hex>/`), kept with their manifest.
        let rootfs = self.root.join("rootfs");
        let mut unpacked: Vec<_> = fs::read_dir(&rootfs)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        unpacked.sort();
        for path in unpacked {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let wanted = keep.oci.contains(name);
            let tally = if wanted {
                &mut report.kept
            } else {
                &mut report.removed
            };
            let e = tally.entry("rootfs".to_string()).or_default();
            e.0 += 1;
            e.1 += tree_size(&path);
            if !wanted && !dry_run {
                crate::remove_tree(&path).map_err(StoreError::io(&path))?;
            }
        }
        Ok(report)
    }

    fn sweep(
        &self,
        report: &mut GcReport,
        kind: &str,
        path: &Path,
        wanted: bool,
        dry_run: bool,
    ) -> Result<(), StoreError> {
        let size = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
        let tally = if wanted {
            &mut report.kept
        } else {
            &mut report.removed
        };
        let e = tally.entry(kind.to_string()).or_default();
        e.0 += 1;
        e.1 += size;
        if !wanted && !dry_run {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(path)(e)),
            }
        }
        Ok(())
    }
}

/// The files of a store directory: fanned out by two hex digits (`fanned`), or flat.
/// Temp files (`.tmp-…`) are skipped: a concurrent writer owns them.
fn entries(dir: &Path, fanned: bool) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let list = |d: &Path| -> Vec<(String, std::path::PathBuf)> {
        fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default()
    };
    if fanned {
        for (name, sub) in list(dir) {
            if name.len() == 2 && sub.is_dir() {
                out.extend(
                    list(&sub)
                        .into_iter()
                        .filter(|(n, p)| !n.starts_with('.') && p.is_file()),
                );
            }
        }
    } else {
        out.extend(
            list(dir)
                .into_iter()
                .filter(|(n, p)| !n.starts_with('.') && p.is_file()),
        );
    }
    out.sort();
    out
}

/// Entries and bytes of one kind of store entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    pub entries: usize,
    pub bytes: u64,
}

/// One entry that does not hash to its name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Corrupt {
    pub kind: String,
    pub path: std::path::PathBuf,
    /// Whether `--repair` removed it.
    pub removed: bool,
}

impl Store {
    /// Entries and bytes per kind (`blobs`, `trees`, `keys`, `actions`, `images`, `oci`,
    /// `logs`), for `cascade cache stats`.
    pub fn stats(&self) -> BTreeMap<String, Count> {
        let mut out = BTreeMap::new();
        let mut tally = |kind: &str, files: Vec<(String, std::path::PathBuf)>| {
            let c = out.entry(kind.to_string()).or_insert_with(Count::default);
            for (_, p) in files {
                c.entries += 1;
                c.bytes += fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
            }
        };
        for kind in [Kind::Blob, Kind::Tree, Kind::Key, Kind::Action, Kind::Image] {
            tally(kind.dir(), entries(&self.root.join(kind.dir()), true));
        }
        tally("oci", entries(&self.oci_dir().join("blobs/sha256"), false));
        tally("logs", entries(&self.root.join("logs"), false));
        out
    }

    /// Re-reads and re-hashes every blake3-named entry (blobs, trees, key manifests) and
    /// every checksummed one (actions, image records) without the usual discard-on-read;
    /// returns how many were checked per kind and the corrupt ones, removed only with
    /// `repair`. OCI blobs (sha256) are checked by the caller.
    pub fn verify(
        &self,
        repair: bool,
    ) -> Result<(BTreeMap<String, usize>, Vec<Corrupt>), StoreError> {
        let mut checked = BTreeMap::new();
        let mut corrupt = Vec::new();
        for kind in [Kind::Blob, Kind::Tree, Kind::Key, Kind::Action, Kind::Image] {
            for (name, path) in entries(&self.root.join(kind.dir()), true) {
                *checked.entry(kind.dir().to_string()).or_insert(0) += 1;
                let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
                let good = match Digest::from_hex(&name) {
                    Err(_) => false,
                    Ok(d) => match kind {
                        Kind::Blob | Kind::Key => Digest::of(&bytes) == d,
                        Kind::Tree => {
                            Digest::of(&bytes) == d && cascade_core::Tree::decode(&bytes).is_ok()
                        }
                        Kind::Action | Kind::Image => {
                            bytes.len() >= 32 && {
                                let (body, sum) = bytes.split_at(bytes.len() - 32);
                                crate::checksum(&d, body).0.as_slice() == sum
                            }
                        }
                    },
                };
                if !good {
                    if repair {
                        fs::remove_file(&path).map_err(StoreError::io(&path))?;
                    }
                    corrupt.push(Corrupt {
                        kind: kind.dir().to_string(),
                        path,
                        removed: repair,
                    });
                }
            }
        }
        Ok((checked, corrupt))
    }
}

/// Bytes under a path (a file, or a directory's files), not following links.
fn tree_size(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
