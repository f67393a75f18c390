//! `unpack`: an image's layers, applied in order with OCI whiteouts, into a directory
//! that becomes the read-only root filesystem of a sandbox.
//!
//! The layers may be hostile, so the destination is the only thing written:
//! - entry paths are relative to the destination: a leading `/` or `./` is stripped, and
//!   a `..` component or an empty path is an error naming the entry;
//! - no symlink is ever followed by the kernel. Every component of a parent directory is
//!   looked at with `symlink_metadata`; a symlink there is resolved lexically inside the
//!   destination, as if it were the root (`/x` and `../../x` both mean `<dest>/x`), the
//!   way the sandbox will see it. The last component is never followed: an entry
//!   replacing a file, symlink or directory removes it first and creates a new one;
//! - hard links are made to a file already in the destination, found the same way;
//! - the work is bounded: the uncompressed tar streams and the file contents written
//!   each stop at a limit ([`DEFAULT_UNPACK_LIMIT`] unless given), and one entry's
//!   headers (GNU long names, PAX records, which the `tar` crate reads into memory) at
//!   [`HEADER_LIMIT`].
//!
//! Every layer blob is hashed as it streams and checked against its digest at its end,
//! its uncompressed tar against the config's diff_id: an error reported after some
//! entries were written. The destination must be a fresh directory the caller owns and
//! nothing else writes to while it is unpacked (the checks above assume no one changes
//! it under us); on error it is left partly written, so unpack into a temporary
//! directory and rename it into place on success.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::ExactReader;
use crate::image::read_image;
use crate::model::{Descriptor, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR};
use crate::{ImageError, OciDigest, OciLayout};

/// The default bound on the bytes an image may unpack to: 16 GiB of uncompressed tar,
/// and as much of file contents. Far above any sane root filesystem, far below what a
/// decompression bomb would make us write.
pub const DEFAULT_UNPACK_LIMIT: u64 = 16 << 30;

/// The bound on what one entry's headers may take (GNU long names and PAX records,
/// read whole into memory): real ones are a few hundred bytes.
pub const HEADER_LIMIT: u64 = 1 << 20;

/// Symlinks followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;
const BUF_SIZE: usize = 64 * 1024;
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// What [`unpack`] wrote, summed over the layers (a file a later layer replaces is
/// counted in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written, hard links included.
    pub files: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// Entries skipped because a sandbox root has no use for them: device nodes, fifos
    /// and unknown entry types.
    pub skipped: u64,
}

/// Unpacks the layers of the image whose manifest is `manifest` (in `layout`) into
/// `dest`, which must be an empty existing directory, with [`DEFAULT_UNPACK_LIMIT`].
///
/// Layers are applied in order, with whiteouts (`.wh.<name>` removes `<name>` of lower
/// layers, `.wh..wh..opq` empties its directory of them). Regular files become 0755 if
/// their mode has an executable bit and 0644 otherwise (never setuid, setgid or
/// sticky), directories 0755; symlinks keep their target verbatim (an absolute one is
/// resolved inside the sandbox's root); hard links are hard links within `dest`.
/// Device nodes and fifos are skipped and counted; ownership and mtimes are not applied.
///
/// On error `dest` may be partly written (see the module documentation).
pub fn unpack(
    layout: &OciLayout,
    manifest: &OciDigest,
    dest: &Path,
) -> Result<Unpacked, ImageError> {
    unpack_with_limit(layout, manifest, dest, DEFAULT_UNPACK_LIMIT)
}

/// [`unpack`] with `limit` as the bound on the uncompressed tar bytes of all layers,
/// and on the file contents written.
pub fn unpack_with_limit(
    layout: &OciLayout,
    manifest: &OciDigest,
    dest: &Path,
    limit: u64,
) -> Result<Unpacked, ImageError> {
    let (m, config, _) = read_image(layout, manifest)?;
    // Everything cheap is checked before anything is written.
    for l in &m.layers {
        layer_format(l)?;
        if !layout.has_blob_of_size(&l.digest, l.size) {
            // A foreign layer (with `urls`) that was never fetched.
            return Err(ImageError::MissingBlob {
                digest: l.digest,
                path: layout.blob_path(&l.digest),
            });
        }
    }
    check_dest(dest)?;

    let mut state = State {
        dest: dest.to_path_buf(),
        limit,
        stream_bytes: 0,
        out: Unpacked::default(),
        buf: vec![0; BUF_SIZE],
        touched: HashSet::new(),
    };
    for (l, diff_id) in m.layers.iter().zip(&config.rootfs.diff_ids) {
        state.touched.clear();
        apply_layer(layout, l, diff_id, &mut state)?;
    }
    Ok(state.out)
}

fn check_dest(dest: &Path) -> Result<(), ImageError> {
    let bad = |reason: &'static str| ImageError::UnpackDestination {
        path: dest.to_path_buf(),
        reason,
    };
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("it is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(bad("it does not exist")),
        Err(e) => return Err(ImageError::io(dest)(e)),
    }
    let mut items = fs::read_dir(dest).map_err(ImageError::io(dest))?;
    if items.next().is_some() {
        return Err(bad("it is not empty"));
    }
    Ok(())
}

/// Whether the layer is gzipped; any media type but the two tar ones is an error.
fn layer_format(l: &Descriptor) -> Result<bool, ImageError> {
    match l.media_type.as_str() {
        MEDIA_TYPE_LAYER_GZIP => Ok(true),
        MEDIA_TYPE_LAYER_TAR => Ok(false),
        other => Err(ImageError::UnsupportedLayerMediaType {
            digest: l.digest,
            media_type: other.to_string(),
        }),
    }
}

struct State {
    dest: PathBuf,
    limit: u64,
    /// Uncompressed tar bytes read so far, all layers.
    stream_bytes: u64,
    out: Unpacked,
    buf: Vec<u8>,
    /// Paths (relative to `dest`, symlinks resolved) this layer created or wrote into,
    /// with all their parents: what a whiteout in the same layer leaves alone.
    touched: HashSet<PathBuf>,
}

/// Why applying a layer's entries stopped.
enum Failure {
    /// Reading the layer failed (bad gzip or tar, a limit, a short blob): reported
    /// after the blob's digest is checked, since corruption explains it best.
    Read(io::Error),
    Image(ImageError),
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        Failure::Image(e)
    }
}

fn apply_layer(
    layout: &OciLayout,
    layer: &Descriptor,
    diff_id: &OciDigest,
    state: &mut State,
) -> Result<(), ImageError> {
    let gzip = layer_format(layer)?;
    let path = layout.blob_path(&layer.digest);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingBlob {
                digest: layer.digest,
                path,
            })
        }
        Err(e) => return Err(ImageError::Io { path, source: e }),
    };
    if file.metadata().map_err(ImageError::io(&path))?.len() != layer.size {
        return Err(ImageError::InvalidImage {
            path,
            reason: "the blob's size differs from its descriptor",
        });
    }

    // blob file → sha256 of the blob → gzip → sha256 of the tar (diff_id) and limits →
    // tar entries.
    let mut blob = BufReader::with_capacity(BUF_SIZE, ExactReader::new(file, layer.size));
    let meter = Meter {
        limit: state.limit,
        total: std::cell::Cell::new(state.stream_bytes),
        header_window: std::cell::Cell::new(None),
        exceeded: std::cell::Cell::new(None),
    };
    let outcome = {
        let decoded: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(&mut blob))
        } else {
            Box::new(&mut blob)
        };
        let mut archive = tar::Archive::new(Metered {
            inner: decoded,
            hasher: Sha256::new(),
            meter: &meter,
        });
        let applied = apply_entries(&mut archive, &meter, &layer.digest, state);
        let mut tar_stream = archive.into_inner();
        applied.and_then(|()| {
            // The end of the stream too (tar padding, the gzip trailer and its CRC): the
            // diff_id covers every byte.
            io::copy(&mut tar_stream, &mut io::sink()).map_err(Failure::Read)?;
            Ok(OciDigest::from_bytes(tar_stream.hasher.finalize().into()))
        })
    };
    state.stream_bytes = meter.total.get();

    // The rest of the blob is hashed whatever happened: a corrupt blob is reported as
    // corrupt, not as the bad gzip or tar it decodes to.
    let rest = io::copy(&mut blob, &mut io::sink());
    match rest {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {} // shorter: a mismatch
        Err(e) => return Err(ImageError::Io { path, source: e }),
    }
    let actual = blob.into_inner().digest();
    if actual != layer.digest {
        return Err(ImageError::CorruptBlob {
            path,
            expected: layer.digest,
            actual,
        });
    }

    match outcome {
        Ok(d) if d == *diff_id => Ok(()),
        Ok(_) => Err(ImageError::InvalidImage {
            path,
            reason: "its uncompressed contents do not match the config's diff_id",
        }),
        Err(Failure::Image(e)) => Err(e),
        Err(Failure::Read(e)) => Err(match meter.exceeded.get() {
            Some(Exceeded::Total) => ImageError::UnpackTooLarge { limit: state.limit },
            Some(Exceeded::Header) => ImageError::InvalidLayer {
                path,
                message: format!("an entry's headers take more than {HEADER_LIMIT} bytes"),
            },
            None => ImageError::InvalidLayer {
                path,
                message: e.to_string(),
            },
        }),
    }
}

#[derive(Clone, Copy, Debug)]
enum Exceeded {
    Total,
    Header,
}

/// The limits on the uncompressed stream, shared between its reader (owned by the tar
/// archive) and the loop that drives the archive.
struct Meter {
    limit: u64,
    total: std::cell::Cell<u64>,
    /// While the archive looks for the next entry: the bytes read since.
    header_window: std::cell::Cell<Option<u64>>,
    exceeded: std::cell::Cell<Option<Exceeded>>,
}

/// The uncompressed tar stream: hashed (for the diff_id) and metered.
struct Metered<'a, R> {
    inner: R,
    hasher: Sha256,
    meter: &'a Meter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = self.meter;
        let total = m.total.get() + n as u64;
        m.total.set(total);
        if total > m.limit {
            m.exceeded.set(Some(Exceeded::Total));
            return Err(io::Error::other("the unpack limit is exceeded"));
        }
        if let Some(w) = m.header_window.get() {
            let w = w + n as u64;
            m.header_window.set(Some(w));
            if w > HEADER_LIMIT {
                m.exceeded.set(Some(Exceeded::Header));
                return Err(io::Error::other("an entry's headers are too large"));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn apply_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    meter: &Meter,
    layer: &OciDigest,
    state: &mut State,
) -> Result<(), Failure> {
    let mut entries = archive.entries().map_err(Failure::Read)?;
    loop {
        // Each entry's data is read to its end below, so what the archive reads while it
        // looks for the next entry is headers only: that is what the window bounds.
        meter.header_window.set(Some(0));
        let next = entries.next();
        meter.header_window.set(None);
        let Some(entry) = next else {
            return Ok(());
        };
        let mut entry = entry.map_err(Failure::Read)?;
        apply_entry(&mut entry, layer, state)?;
        io::copy(&mut entry, &mut io::sink()).map_err(Failure::Read)?;
    }
}

/// What a tar entry does to the tree.
enum Action {
    Dir,
    File { mode: u32 },
    Symlink { target: Vec<u8> },
    HardLink { target: Vec<u8> },
}

/// How an entry's problems are reported: naming its layer and its path.
type Bad<'a> = dyn Fn(&'static str) -> Failure + 'a;

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    layer: &OciDigest,
    state: &mut State,
) -> Result<(), Failure> {
    let raw_path = entry.path_bytes().into_owned();
    let bad = |reason: &'static str| {
        Failure::Image(ImageError::InvalidLayerEntry {
            layer: *layer,
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            reason,
        })
    };
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    ) {
        // Metadata for the entries that follow; the tar crate has applied what matters.
        return Ok(());
    }
    let mut comps = entry_components(&raw_path).map_err(bad)?;

    // A whiteout is known by its name, whatever its entry type.
    if let Some(applied) = apply_whiteout(&comps, state, &bad) {
        return applied;
    }

    let Some(action) = entry_action(entry, &raw_path)? else {
        // Devices, fifos and anything unknown: a sandbox root has no use for them.
        state.out.skipped += 1;
        return Ok(());
    };
    let Some(name) = comps.pop() else {
        // `/` or `./`: the root, which already exists.
        return match action {
            Action::Dir => Ok(()),
            _ => Err(bad("only a directory can be the image root")),
        };
    };

    // Resolve the parent before anything is removed.
    let parent = resolve_dir(&state.dest, &comps, true, &mut state.touched)
        .map_err(|e| e.into_failure(&bad))?
        .ok_or_else(|| bad("its parent directory cannot be created"))?;
    let rel = parent.join(&name);
    let abs = state.dest.join(&rel);

    match action {
        Action::Dir => make_dir(&abs)?,
        Action::File { mode } => {
            write_file(entry, mode, &abs, state)?;
            state.out.files += 1;
        }
        Action::Symlink { target } => make_symlink(&target, &abs, &bad)?,
        Action::HardLink { target } => hard_link(&target, &rel, &abs, state, &bad)?,
    }
    touch(&mut state.touched, &rel);
    Ok(())
}

/// A whiteout entry (`.wh.<name>`, `.wh..wh..opq`) applied, or `None` when the entry
/// is not one.
fn apply_whiteout(
    comps: &[OsString],
    state: &mut State,
    bad: &Bad<'_>,
) -> Option<Result<(), Failure>> {
    let name = comps.last()?.as_bytes();
    let parent = &comps[..comps.len() - 1];
    if name == OPAQUE_WHITEOUT {
        return Some(opaque_whiteout(parent, state).map_err(|e| e.into_failure(&bad)));
    }
    let hidden = name.strip_prefix(WHITEOUT_PREFIX)?;
    if hidden.starts_with(WHITEOUT_PREFIX) {
        // Other `.wh..wh.` names are AUFS metadata (hard link directories).
        return Some(Ok(()));
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Some(Err(bad("a whiteout must name a file")));
    }
    Some(whiteout(parent, OsStr::from_bytes(hidden), state).map_err(|e| e.into_failure(&bad)))
}

/// What the entry does to the tree, by its type; `None` for the types a sandbox root
/// has no use for.
fn entry_action<R: Read>(
    entry: &tar::Entry<'_, R>,
    raw_path: &[u8],
) -> Result<Option<Action>, Failure> {
    let header = entry.header();
    let link = || entry.link_name_bytes().map(|l| l.into_owned());
    Ok(Some(match header.entry_type() {
        // An old-style regular entry named with a trailing `/` is a directory.
        tar::EntryType::Regular if header.as_old().linkflag[0] == 0 && raw_path.ends_with(b"/") => {
            Action::Dir
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let mode = header.mode().map_err(Failure::Read)?;
            Action::File {
                mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
            }
        }
        tar::EntryType::Directory => Action::Dir,
        tar::EntryType::Symlink => Action::Symlink {
            target: link().unwrap_or_default(),
        },
        tar::EntryType::Link => Action::HardLink {
            target: link().unwrap_or_default(),
        },
        // Devices, fifos and anything unknown.
        _ => return Ok(None),
    }))
}

/// A directory at `abs`, replacing whatever else is there.
fn make_dir(abs: &Path) -> Result<(), Failure> {
    match fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove(abs)?;
            create_dir(abs)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(abs)?,
        Err(e) => return Err(ImageError::io(abs)(e).into()),
    }
    set_mode(abs, 0o755)?;
    Ok(())
}

/// A regular file at `abs` with the entry's contents, replacing whatever is there.
fn write_file(
    entry: &mut impl Read,
    mode: u32,
    abs: &Path,
    state: &mut State,
) -> Result<(), Failure> {
    remove(abs)?;
    // `create_new` (O_EXCL) also refuses to open through a symlink.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(abs)
        .map_err(ImageError::io(abs))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(ImageError::io(abs))?;
    copy_contents(entry, &mut file, abs, state)
}

/// A symlink at `abs` to `target` (verbatim), replacing whatever is there.
fn make_symlink(target: &[u8], abs: &Path, bad: &Bad<'_>) -> Result<(), Failure> {
    if target.is_empty() || target.contains(&0) {
        return Err(bad(
            "a symlink's target must be non-empty and contain no NUL",
        ));
    }
    remove(abs)?;
    std::os::unix::fs::symlink(OsStr::from_bytes(target), abs).map_err(ImageError::io(abs))?;
    Ok(())
}

/// A hard link at `abs` (`rel` in the destination) to the file `target` names in the
/// destination; a link to a symlink is the same symlink, made anew.
fn hard_link(
    target: &[u8],
    rel: &Path,
    abs: &Path,
    state: &mut State,
    bad: &Bad<'_>,
) -> Result<(), Failure> {
    let mut target_comps = entry_components(target)
        .map_err(|_| bad("the hard link's target must be a non-empty path with no `..`"))?;
    let target_name = target_comps
        .pop()
        .ok_or_else(|| bad("a hard link cannot point to the image root"))?;
    let target_parent = resolve_dir(&state.dest, &target_comps, false, &mut state.touched)
        .map_err(|e| e.into_failure(&bad))?
        .ok_or_else(|| bad("the hard link's target does not exist"))?;
    let target_rel = target_parent.join(&target_name);
    if target_rel.starts_with(rel) {
        return Err(bad(
            "a hard link cannot point to itself or inside the path it replaces",
        ));
    }
    let target_abs = state.dest.join(&target_rel);
    match fs::symlink_metadata(&target_abs) {
        Ok(m) if m.is_file() => {
            remove(abs)?;
            fs::hard_link(&target_abs, abs).map_err(ImageError::io(abs))?;
            state.out.files += 1;
        }
        Ok(m) if m.file_type().is_symlink() => {
            // A link to a symlink is the same symlink, made anew.
            let to = fs::read_link(&target_abs).map_err(ImageError::io(&target_abs))?;
            remove(abs)?;
            std::os::unix::fs::symlink(to, abs).map_err(ImageError::io(abs))?;
        }
        Ok(_) => return Err(bad("a hard link must point to a file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("the hard link's target does not exist"))
        }
        Err(e) => return Err(ImageError::io(&target_abs)(e).into()),
    }
    Ok(())
}

/// Copies an entry's contents into `file`, within the limit on bytes written (a sparse
/// entry can expand far beyond its size in the tar).
fn copy_contents(
    entry: &mut impl Read,
    file: &mut fs::File,
    path: &Path,
    state: &mut State,
) -> Result<(), Failure> {
    loop {
        let n = match entry.read(&mut state.buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Read(e)),
        };
        let bytes = state.out.bytes + n as u64;
        if bytes > state.limit {
            return Err(ImageError::UnpackTooLarge { limit: state.limit }.into());
        }
        file.write_all(&state.buf[..n])
            .map_err(ImageError::io(path))?;
        state.out.bytes = bytes;
    }
}

/// An entry's path as components: a leading `/`, empty and `.` components are dropped
/// (`/etc/x`, `./etc/x` and `etc//x/` are all `etc/x`); `..` and NUL are errors.
fn entry_components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    if raw.is_empty() {
        return Err("the path is empty");
    }
    if raw.contains(&0) {
        return Err("the path contains a NUL byte");
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` components are not allowed"),
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

/// Why a path could not be resolved.
enum ResolveError {
    Entry(&'static str),
    Image(ImageError),
}

impl ResolveError {
    fn into_failure(self, bad: &impl Fn(&'static str) -> Failure) -> Failure {
        match self {
            ResolveError::Entry(reason) => bad(reason),
            ResolveError::Image(e) => Failure::Image(e),
        }
    }
}

impl From<ImageError> for ResolveError {
    fn from(e: ImageError) -> Self {
        ResolveError::Image(e)
    }
}

/// The directory `comps` names, relative to `dest`, as a path of real directories only:
/// each component is looked at with `symlink_metadata`, and a symlink is resolved
/// lexically with `dest` as the root (an absolute target starts again at `dest`, `..`
/// stops there), never by the kernel. A missing directory is created (0755) if
/// `create`, and recorded in `touched`; otherwise the answer is `None`.
fn resolve_dir(
    dest: &Path,
    comps: &[OsString],
    create: bool,
    touched: &mut HashSet<PathBuf>,
) -> Result<Option<PathBuf>, ResolveError> {
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut real = PathBuf::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                real.pop();
                continue;
            }
            _ => {}
        }
        let abs = dest.join(&real).join(&c);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => real.push(&c),
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::Entry(
                        "resolving its parent follows too many symlinks",
                    ));
                }
                let target = fs::read_link(&abs).map_err(ImageError::io(&abs))?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    real = PathBuf::new();
                }
                for part in target.split(|&b| b == b'/').rev() {
                    queue.push_front(OsStr::from_bytes(part).to_os_string());
                }
            }
            Ok(_) => {
                return Err(ResolveError::Entry(
                    "a parent of this path is not a directory",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                create_dir(&abs)?;
                set_mode(&abs, 0o755)?;
                real.push(&c);
                touch(touched, &real);
            }
            Err(e) => return Err(ImageError::io(&abs)(e).into()),
        }
    }
    Ok(Some(real))
}

/// `.wh.<name>` in `parent`: removes `<name>` of lower layers (whatever it is; a
/// symlink is removed, not followed). Nothing there is not an error.
fn whiteout(parent: &[OsString], name: &OsStr, state: &mut State) -> Result<(), ResolveError> {
    let Some(dir) = resolve_dir(&state.dest, parent, false, &mut state.touched)? else {
        return Ok(());
    };
    let rel = dir.join(name);
    // The same layer's own entries are not whited out.
    if !state.touched.contains(&rel) {
        remove(&state.dest.join(&rel))?;
    }
    Ok(())
}

/// `.wh..wh..opq` in `parent`: the directory keeps only what this layer puts in it.
fn opaque_whiteout(parent: &[OsString], state: &mut State) -> Result<(), ResolveError> {
    let Some(dir) = resolve_dir(&state.dest, parent, true, &mut state.touched)? else {
        return Ok(());
    };
    touch(&mut state.touched, &dir);
    // An explicit stack, not recursion: a deep tree cannot overflow ours.
    let mut stack = vec![dir];
    while let Some(rel) = stack.pop() {
        let abs = state.dest.join(&rel);
        for item in fs::read_dir(&abs).map_err(ImageError::io(&abs))? {
            let item = item.map_err(ImageError::io(&abs))?;
            let child = rel.join(item.file_name());
            if !state.touched.contains(&child) {
                remove(&state.dest.join(&child))?;
            } else if item.file_type().map_err(ImageError::io(&abs))?.is_dir() {
                // `file_type` does not follow symlinks.
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// Records `rel` and its parents as written by this layer.
fn touch(touched: &mut HashSet<PathBuf>, rel: &Path) {
    for p in rel.ancestors() {
        if p.as_os_str().is_empty() || !touched.insert(p.to_path_buf()) {
            // A recorded path's parents are recorded too.
            break;
        }
    }
}

/// Removes whatever is at `path` (a directory with its contents; a symlink itself,
/// never what it points to). Nothing there is fine.
fn remove(path: &Path) -> Result<(), ImageError> {
    let result = match fs::symlink_metadata(path) {
        // `remove_dir_all` does not follow the symlinks it meets.
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(ImageError::io(path))
}

fn create_dir(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(ImageError::io(path))
}

/// chmod, whatever the umask did. Only called on a directory just checked with
/// `symlink_metadata` (or just created), so it follows no symlink.
fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(ImageError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_made_relative_and_checked() {
        let c = |s: &str| {
            entry_components(s.as_bytes()).map(|v| {
                v.iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c("/etc/x").unwrap(), ["etc", "x"]);
        assert_eq!(c("./etc//x/").unwrap(), ["etc", "x"]);
        assert!(c("./").unwrap().is_empty());
        for bad in ["", "../x", "a/../b", "a/..", "a\0b"] {
            assert!(c(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parents_resolve_inside_dest() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path();
        fs::create_dir_all(dest.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", dest.join("lib")).unwrap();
        std::os::unix::fs::symlink("/../../..", dest.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", dest.join("loop")).unwrap();
        fs::write(dest.join("file"), b"").unwrap();
        let mut touched = HashSet::new();
        let r = |s: &str, create: bool, touched: &mut HashSet<PathBuf>| {
            let comps: Vec<OsString> = s.split('/').map(OsString::from).collect();
            resolve_dir(dest, &comps, create, touched)
        };
        let ok = |r: Result<Option<PathBuf>, ResolveError>| match r {
            Ok(p) => p,
            Err(_) => panic!("resolution failed"),
        };
        assert_eq!(
            ok(r("lib/x", true, &mut touched)),
            Some(PathBuf::from("usr/lib/x"))
        );
        assert!(dest.join("usr/lib/x").is_dir());
        assert!(touched.contains(Path::new("usr/lib/x")));
        assert!(touched.contains(Path::new("usr")));
        assert_eq!(
            ok(r("up/lib", false, &mut touched)),
            Some(PathBuf::from("usr/lib"))
        );
        assert_eq!(ok(r("nothing/here", false, &mut touched)), None);
        assert!(!dest.join("nothing").exists());
        assert!(matches!(
            r("loop/x", true, &mut touched),
            Err(ResolveError::Entry(_))
        ));
        assert!(matches!(
            r("file/x", true, &mut touched),
            Err(ResolveError::Entry(_))
        ));
    }
}
