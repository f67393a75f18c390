//! Layers: entries (from explicit lists or from a directory on disk) → a normalized tar
//! → gzip → a blob, in one streaming pass.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{ExactReader, HashingWriter};
use crate::layout::{persist, temp_file_in};
use crate::model::{Descriptor, MEDIA_TYPE_LAYER_GZIP};
use crate::{ImageError, OciDigest, OciLayout};

/// The gzip level of every layer. Part of the layer digest: changing it changes every
/// image, so it is a constant, not an option.
pub const GZIP_LEVEL: u32 = 6;

/// The gzip header's OS byte: 255, "unknown". flate2 (and Go's compress/gzip) write
/// this by default; we set it explicitly so a library default cannot move it. The
/// header's MTIME is 0 and it has no name, comment or extra field (GzBuilder defaults);
/// XFL is 0 at level 6.
pub const GZIP_OS_UNKNOWN: u8 = 255;

const DIR_MODE: u32 = 0o755;
const SYMLINK_MODE: u32 = 0o777;
const BUF_SIZE: usize = 64 * 1024;

/// One entry of a layer: a path in the image and what is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// The path in the image, `/`-separated; a leading or trailing `/` is ignored.
    pub path: String,
    pub kind: EntryKind,
    /// Files: `None` is 0755 if the source has any executable bit, else 0644.
    /// Directories: `None` is 0755. Symlinks are always 0777 (the mode is ignored).
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file whose contents are read from `source` when the layer is written.
    File {
        source: PathBuf,
    },
    Dir,
    /// A symbolic link; `target` is stored as given.
    Symlink {
        target: String,
    },
}

impl LayerEntry {
    pub fn file(path: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File {
                source: source.into(),
            },
            mode: None,
        }
    }

    pub fn dir(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: None,
        }
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
            mode: None,
        }
    }

    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// A layer as written: its blob's descriptor and the sha256 of the uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBuilt {
    pub descriptor: Descriptor,
    pub diff_id: OciDigest,
}

/// The entries that put the tree at `source` on disk at `dest` in the image.
///
/// - A directory maps to `dest` and everything below it; a file maps to `dest` itself.
/// - Every parent of `dest` is added as a directory (0755), so the layer is complete.
/// - `file_mode` overrides the mode of every regular file (directories stay 0755).
/// - Symlinks are kept as links, not followed. Their target must be relative and stay
///   inside the image, judged from where the link lands (`dest`), so a link may point
///   into another layer (`bin/tool -> ../lib/tool` with `lib` from another output). An
///   absolute target is refused: it is the build machine's path, and a relative one says
///   the same thing in the image.
/// - Names must be UTF-8 (tar paths here are text), and only files, directories and
///   symlinks are allowed.
pub fn entries_from_dir(
    source: &Path,
    dest: &str,
    file_mode: Option<u32>,
) -> Result<Vec<LayerEntry>, ImageError> {
    let dest = normalize_path(dest, true)?;
    if let Some(m) = file_mode {
        check_mode(&dest, m)?;
    }
    // `source` itself is followed if it is a link; links below it are kept as links.
    let meta = match fs::metadata(source) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::SourceMissing {
                path: source.to_path_buf(),
            })
        }
        Err(e) => return Err(ImageError::io(source)(e)),
    };

    let mut out = Vec::new();
    // The parents of `dest`; `dest` itself is added below as what `source` is.
    let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
    for i in 1..parts.len() {
        out.push(LayerEntry::dir(parts[..i].join("/")));
    }

    let ft = meta.file_type();
    if ft.is_file() {
        if dest.is_empty() {
            return Err(ImageError::InvalidPath {
                path: dest,
                reason: "a file cannot be placed at the image root",
            });
        }
        out.push(file_entry(&dest, source, file_mode));
        return Ok(out);
    }
    if !ft.is_dir() {
        return Err(ImageError::UnsupportedFileType {
            path: source.to_path_buf(),
        });
    }
    if !dest.is_empty() {
        out.push(LayerEntry::dir(dest.clone()));
    }

    // An explicit stack, not recursion: a deep tree cannot overflow ours.
    // Each item: (directory on disk, its path in the image, its depth in the image).
    let mut stack = vec![(source.to_path_buf(), dest.clone(), parts.len())];
    while let Some((dir, image_dir, depth)) = stack.pop() {
        let mut names = Vec::new();
        for item in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let item = item.map_err(ImageError::io(&dir))?;
            let path = item.path();
            let name = item
                .file_name()
                .into_string()
                .map_err(|_| ImageError::NonUtf8Path { path: path.clone() })?;
            names.push((name, path));
        }
        // Sorted, so the first error reported does not depend on directory order.
        names.sort();
        for (name, path) in names {
            let image_path = if image_dir.is_empty() {
                name.clone()
            } else {
                format!("{image_dir}/{name}")
            };
            let ft = fs::symlink_metadata(&path)
                .map_err(ImageError::io(&path))?
                .file_type();
            if ft.is_dir() {
                out.push(LayerEntry::dir(image_path.clone()));
                stack.push((path, image_path, depth + 1));
            } else if ft.is_file() {
                out.push(file_entry(&image_path, &path, file_mode));
            } else if ft.is_symlink() {
                let target = read_link_utf8(&path)?;
                if !link_stays_inside(&target, depth) {
                    return Err(ImageError::SymlinkEscapes { path, target });
                }
                out.push(LayerEntry::symlink(image_path, target));
            } else {
                return Err(ImageError::UnsupportedFileType { path });
            }
        }
    }
    Ok(out)
}

fn file_entry(image_path: &str, source: &Path, mode: Option<u32>) -> LayerEntry {
    LayerEntry {
        path: image_path.to_string(),
        kind: EntryKind::File {
            source: source.to_path_buf(),
        },
        mode,
    }
}

fn read_link_utf8(path: &Path) -> Result<String, ImageError> {
    fs::read_link(path)
        .map_err(ImageError::io(path))?
        .into_os_string()
        .into_string()
        .map_err(|_| ImageError::NonUtf8Path {
            path: path.to_path_buf(),
        })
}

/// Whether a link `depth` directories below the tree's root, with this target, resolves
/// (lexically) inside the tree.
fn link_stays_inside(target: &str, depth: usize) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut level = depth as isize;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            _ => level += 1,
        }
    }
    true
}

/// A validated image path: no leading/trailing `/`, no empty, `.` or `..` component,
/// no NUL, and no `.wh.` name (a whiteout, which would delete files from lower layers).
/// `allow_root` accepts the empty path (the image root).
fn normalize_path(path: &str, allow_root: bool) -> Result<String, ImageError> {
    let bad = |reason: &'static str| ImageError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return if allow_root {
            Ok(String::new())
        } else {
            Err(bad("the image root cannot be an entry"))
        };
    }
    if trimmed.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    for part in trimmed.split('/') {
        match part {
            "" => return Err(bad("it has an empty component (`//`)")),
            "." | ".." => return Err(bad("`.` and `..` components are not allowed")),
            p if p.starts_with(".wh.") => {
                return Err(bad("`.wh.` names are whiteouts in OCI layers"))
            }
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

fn check_mode(path: &str, mode: u32) -> Result<(), ImageError> {
    if mode > 0o7777 {
        return Err(ImageError::InvalidMode {
            path: path.to_string(),
            mode,
        });
    }
    Ok(())
}

/// Validated entries, keyed (and so sorted bytewise) by path; a parent always sorts
/// before its children because it is a prefix of theirs.
fn normalize_entries(entries: &[LayerEntry]) -> Result<BTreeMap<String, LayerEntry>, ImageError> {
    let mut map: BTreeMap<String, LayerEntry> = BTreeMap::new();
    for e in entries {
        let path = normalize_path(&e.path, false)?;
        if let Some(m) = e.mode {
            check_mode(&path, m)?;
        }
        if let EntryKind::Symlink { target } = &e.kind {
            if target.is_empty() || target.contains('\0') {
                return Err(ImageError::InvalidPath {
                    path,
                    reason: "a symlink target must be non-empty and contain no NUL",
                });
            }
        }
        let entry = LayerEntry {
            path: path.clone(),
            ..e.clone()
        };
        match map.get_mut(&path) {
            None => {
                map.insert(path, entry);
            }
            // The same directory from two sources (e.g. two trees under `/app`) is one
            // entry; an explicit mode wins over the default.
            Some(prev) if prev.kind == EntryKind::Dir && entry.kind == EntryKind::Dir => {
                match (prev.mode, entry.mode) {
                    (Some(a), Some(b)) if a != b => return Err(ImageError::DuplicatePath { path }),
                    (None, m) => prev.mode = m,
                    _ => {}
                }
            }
            Some(_) => return Err(ImageError::DuplicatePath { path }),
        }
    }
    // Add missing parents; a parent that exists must be a directory.
    let paths: Vec<String> = map.keys().cloned().collect();
    for path in paths {
        let mut parent = path.as_str();
        while let Some(i) = parent.rfind('/') {
            parent = &parent[..i];
            match map.get(parent) {
                Some(p) if p.kind == EntryKind::Dir => break,
                Some(_) => {
                    return Err(ImageError::InvalidPath {
                        path: path.clone(),
                        reason: "a parent of this path is not a directory",
                    })
                }
                None => {
                    map.insert(parent.to_string(), LayerEntry::dir(parent));
                }
            }
        }
    }
    Ok(map)
}

/// Writes the layer for `entries` into the layout and returns its descriptor and
/// diff_id.
///
/// One pass, constant memory: tar writer → sha256 (diff_id) → gzip → sha256 and byte
/// count (blob digest, size) → a temp file under `blobs/`, renamed to
/// `blobs/sha256/<hex>` once the digest is known.
///
/// Tar normalization: entries sorted bytewise by path (parents first), GNU headers
/// (no PAX records; names over 100 bytes use the GNU long-name entry), mtime =
/// `source_date_epoch`, uid/gid 0, empty user/group names, directories named with a
/// trailing `/`. Only regular files, directories and symlinks.
pub fn write_layer(
    layout: &OciLayout,
    entries: &[LayerEntry],
    source_date_epoch: i64,
) -> Result<LayerBuilt, ImageError> {
    let mtime = epoch_to_mtime(source_date_epoch)?;
    let entries = normalize_entries(entries)?;

    let tmp = temp_file_in(&layout.tmp_dir())?;
    let tmp_path = tmp.path().to_path_buf();
    let file_out = BufWriter::with_capacity(BUF_SIZE, tmp.as_file());
    let gz = crate::gzip::GzWriter::new(HashingWriter::new(file_out))
        .map_err(ImageError::io(&tmp_path))?;
    let mut tar = tar::Builder::new(HashingWriter::new(gz));

    for entry in entries.values() {
        append_entry(&mut tar, entry, mtime, &tmp_path)?;
    }

    let diff = tar.into_inner().map_err(ImageError::io(&tmp_path))?;
    let (gz, diff_id, _) = diff.finish();
    let blob = gz.finish().map_err(ImageError::io(&tmp_path))?;
    let (mut file_out, digest, size) = blob.finish();
    file_out.flush().map_err(ImageError::io(&tmp_path))?;
    drop(file_out);

    if !layout.has_blob_of_size(&digest, size) {
        persist(tmp, &layout.blob_path(&digest))?;
    }
    Ok(LayerBuilt {
        descriptor: Descriptor::new(MEDIA_TYPE_LAYER_GZIP, digest, size),
        diff_id,
    })
}

pub(crate) fn epoch_to_mtime(epoch: i64) -> Result<u64, ImageError> {
    u64::try_from(epoch).map_err(|_| ImageError::InvalidEpoch { epoch })
}

pub(crate) fn base_header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    // GNU, not ustar: long names go in a GNU long-name entry, not a PAX record that
    // other writers fill with pid/atime/ctime. `new_gnu` zeroes every other field,
    // so user/group names are empty and the GNU atime/ctime fields are 0.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &LayerEntry,
    mtime: u64,
    out_path: &Path,
) -> Result<(), ImageError> {
    match &entry.kind {
        EntryKind::Dir => {
            let mut h = base_header(
                tar::EntryType::Directory,
                entry.mode.unwrap_or(DIR_MODE),
                mtime,
                0,
            );
            tar.append_data(&mut h, format!("{}/", entry.path), io::empty())
                .map_err(ImageError::io(out_path))
        }
        EntryKind::Symlink { target } => {
            let mut h = base_header(tar::EntryType::Symlink, SYMLINK_MODE, mtime, 0);
            tar.append_link(&mut h, &entry.path, target)
                .map_err(ImageError::io(out_path))
        }
        EntryKind::File { source } => {
            let file = match fs::File::open(source) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ImageError::SourceMissing {
                        path: source.clone(),
                    })
                }
                Err(e) => return Err(ImageError::io(source)(e)),
            };
            // fstat of the open file: the size and mode of exactly what we read.
            let meta = file.metadata().map_err(ImageError::io(source))?;
            if !meta.is_file() {
                return Err(ImageError::UnsupportedFileType {
                    path: source.clone(),
                });
            }
            let mode = entry
                .mode
                .unwrap_or(if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                });
            let size = meta.len();
            let mut h = base_header(tar::EntryType::Regular, mode, mtime, size);
            let reader = ExactReader::new(io::BufReader::with_capacity(BUF_SIZE, file), size);
            tar.append_data(&mut h, &entry.path, reader)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => ImageError::FileChanged {
                        path: source.clone(),
                    },
                    _ => ImageError::Io {
                        path: source.clone(),
                        source: e,
                    },
                })?;
            // A file that grew while we read it was archived truncated.
            let after = fs::metadata(source).map_err(ImageError::io(source))?;
            if after.len() != size || after.ino() != meta.ino() {
                return Err(ImageError::FileChanged {
                    path: source.clone(),
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        assert_eq!(normalize_path("/usr/bin/", false).unwrap(), "usr/bin");
        assert_eq!(normalize_path("/", true).unwrap(), "");
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/.wh.b", "a\0b"] {
            assert!(normalize_path(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn links_are_checked_lexically() {
        assert!(link_stays_inside("b", 0));
        assert!(link_stays_inside("../b", 1));
        assert!(link_stays_inside("x/../../b", 1));
        assert!(!link_stays_inside("../b", 0));
        assert!(!link_stays_inside("/etc/passwd", 3));
        assert!(!link_stays_inside("", 0));
    }

    #[test]
    fn entries_get_their_parents_and_conflicts_are_errors() {
        let map = normalize_entries(&[LayerEntry::symlink("a/b/c", "x")]).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "a/b", "a/b/c"]);

        let dup = [LayerEntry::dir("a"), LayerEntry::symlink("a", "x")];
        assert!(matches!(
            normalize_entries(&dup),
            Err(ImageError::DuplicatePath { .. })
        ));
        let merged = [
            LayerEntry::dir("a"),
            LayerEntry::dir("/a/").with_mode(0o700),
        ];
        assert_eq!(normalize_entries(&merged).unwrap()["a"].mode, Some(0o700));
        let not_dir = [LayerEntry::symlink("a", "x"), LayerEntry::dir("a/b")];
        assert!(normalize_entries(&not_dir).is_err());
        assert!(normalize_entries(&[LayerEntry::dir("a").with_mode(0o10000)]).is_err());
    }
}
