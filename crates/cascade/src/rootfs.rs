//! [IO] Runner images as root filesystems for the sandbox: each image's layers unpacked
//! once per manifest digest into `<store>/rootfs/<hex>/tree`, read-only, with the
//! digest of what was unpacked beside it (`<hex>/digest`).
//!
//! The digest covers every path, kind, executable bit, file content and link target of
//! the tree, so a rootfs that was changed or damaged after unpacking is noticed: it is
//! checked the first time a process uses it, and unpacked again when it does not match.
//! Unpacking goes to a temp directory renamed into place, so a crash leaves no partial
//! rootfs under its final name.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cascade_image::{OciDigest, OciLayout, RunConfig};
use cascade_store::{remove_tree, Store};

/// An unpacked runner image, checked in this process.
#[derive(Clone, Debug)]
pub(crate) struct Rootfs {
    pub tree: PathBuf,
    pub config: RunConfig,
}

/// The rootfs of each image a build's sandbox steps or smoke tests run in, found or
/// unpacked once per image.
#[derive(Default)]
pub(crate) struct Rootfses {
    ready: Mutex<BTreeMap<OciDigest, Arc<Mutex<Option<Rootfs>>>>>,
}

impl Rootfses {
    /// The rootfs of `image` (in `layout`), unpacking it when the store lacks it or its
    /// copy no longer matches its digest.
    pub(crate) fn get(
        &self,
        store: &Store,
        layout: &OciLayout,
        image: &OciDigest,
    ) -> Result<Rootfs, String> {
        let slot = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.entry(*image).or_default().clone()
        };
        // One unpacker per image; the others wait for it here.
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let config = layout
            .run_config(image)
            .map_err(|e| format!("the runner image {image}: {e}"))?;
        let tree = find_or_unpack(store, layout, image)?;
        let r = Rootfs { tree, config };
        *slot = Some(r.clone());
        Ok(r)
    }
}

fn find_or_unpack(store: &Store, layout: &OciLayout, image: &OciDigest) -> Result<PathBuf, String> {
    let dir = store.root().join("rootfs").join(image.hex());
    let tree = dir.join("tree");
    let recorded = crate::bounded::read(&dir.join("digest"), crate::bounded::SMALL_LIMIT, true)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    if let (Some(recorded), true) = (recorded, tree.is_dir()) {
        match tree_digest(&tree) {
            Ok(d) if d == recorded.trim() => return Ok(tree),
            _ => {
                // Changed since it was unpacked: unpack it again.
                let _ = remove_tree(&dir);
            }
        }
    }
    let parent = store.root().join("rootfs");
    fs::create_dir_all(&parent)
        .map_err(|e| format!("could not create `{}`: {e}", parent.display()))?;
    // The store's own temp space: same disk, so the rename below is atomic.
    let tmp = store.temp_dir().map_err(|e| e.to_string())?;
    let staged = tmp.path().join("tree");
    fs::create_dir(&staged).map_err(|e| format!("could not create `{}`: {e}", staged.display()))?;
    cascade_image::unpack(layout, image, &staged)
        .map_err(|e| format!("could not unpack the runner image {image}: {e}"))?;
    let digest =
        tree_digest(&staged).map_err(|e| format!("could not hash the unpacked image: {e}"))?;
    make_read_only(&staged).map_err(|e| format!("could not seal the unpacked image: {e}"))?;
    fs::write(tmp.path().join("digest"), format!("{digest}\n"))
        .map_err(|e| format!("could not record the unpacked image's digest: {e}"))?;
    let staged_dir = tmp.keep();
    match fs::rename(&staged_dir, &dir) {
        Ok(()) => Ok(tree),
        // Another build unpacked it first: use theirs.
        Err(_) if dir.join("digest").is_file() => {
            let _ = remove_tree(&staged_dir);
            Ok(tree)
        }
        Err(e) => {
            let _ = remove_tree(&staged_dir);
            Err(format!(
                "could not move the unpacked image into `{}`: {e}",
                dir.display()
            ))
        }
    }
}

/// blake3 over the tree's entries in bytewise path order: path, kind, executable bit,
/// then the content's blake3 (files) or the target (links).
fn tree_digest(root: &Path) -> io::Result<String> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries)?;
    entries.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"cascade/rootfs\0\x01");
    for (rel, path) in entries {
        let meta = fs::symlink_metadata(&path)?;
        let field = |h: &mut blake3::Hasher, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&mut h, &rel);
        if meta.file_type().is_symlink() {
            field(&mut h, b"l");
            field(&mut h, fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_dir() {
            field(&mut h, b"d");
        } else {
            field(
                &mut h,
                if meta.permissions().mode() & 0o111 != 0 {
                    b"x"
                } else {
                    b"f"
                },
            );
            let mut fh = blake3::Hasher::new();
            fh.update_reader(fs::File::open(&path)?)?;
            field(&mut h, fh.finalize().as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, PathBuf)>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        let is_dir = e.file_type()?.is_dir();
        out.push((rel, path.clone()));
        if is_dir {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// Takes the write bits off every file and directory (links have none).
fn make_read_only(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_symlink() {
            continue;
        }
        if t.is_dir() {
            make_read_only(&e.path())?;
        }
        let mode = e.metadata()?.permissions().mode() & !0o222;
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode))?;
    }
    let mode = fs::metadata(dir)?.permissions().mode() & !0o222;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}
