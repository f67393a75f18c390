//! Directories on disk as REAPI Merkle trees, and back.
//!
//! - [`Merkle::of_dir`]: a directory as `Directory` messages (entries sorted by name,
//!   as the API requires, so the same files give the same digest anywhere);
//! - [`Outputs::collect`]: a Command's output paths, after it ran, as an
//!   `ActionResult`'s files, directories (each a `Tree`) and symlinks;
//! - [`fetch_dir`] and [`fetch_outputs`]: the same written back to disk, every blob
//!   checked against its digest on the way.
//!
//! Files are regular files (executable or not), directories and relative symlinks;
//! anything else (a socket, a device, an absolute symlink) is refused, since the
//! engine could not give it back.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::proto as re;
use crate::{digest_of, digest_of_message, Blob, Client, Digest, ReapiError};

/// The blobs a tree needs in the CAS: encoded directories, and files by path.
#[derive(Default)]
pub struct Blobs {
    pub messages: BTreeMap<String, (Digest, Vec<u8>)>,
    pub files: BTreeMap<String, (Digest, PathBuf)>,
}

impl Blobs {
    /// Every blob, for [`Client::upload`].
    pub fn all(&self) -> Vec<(Digest, Blob<'_>)> {
        let mut v: Vec<(Digest, Blob<'_>)> = Vec::new();
        for (d, b) in self.messages.values() {
            v.push((d.clone(), Blob::Bytes(b)));
        }
        for (d, p) in self.files.values() {
            v.push((d.clone(), Blob::File(p)));
        }
        v
    }

    fn message(&mut self, m: &impl Message) -> Digest {
        let (d, bytes) = digest_of_message(m);
        self.messages
            .entry(d.hash.clone())
            .or_insert_with(|| (d.clone(), bytes));
        d
    }

    fn file(&mut self, path: &Path) -> Result<Digest, ReapiError> {
        let d = hash_file(path)?;
        self.files
            .entry(d.hash.clone())
            .or_insert_with(|| (d.clone(), path.to_path_buf()));
        Ok(d)
    }
}

/// A directory's Merkle tree: its root and every blob under it.
pub struct Merkle {
    pub root: Digest,
    pub root_dir: re::Directory,
    pub blobs: Blobs,
}

impl Merkle {
    pub fn of_dir(path: &Path) -> Result<Merkle, ReapiError> {
        let mut blobs = Blobs::default();
        let mut children = Vec::new();
        let root_dir = directory(path, &mut blobs, &mut children)?;
        let root = blobs.message(&root_dir);
        Ok(Merkle {
            root,
            root_dir,
            blobs,
        })
    }
}

/// The digest of the empty directory.
pub fn empty_dir() -> Digest {
    digest_of_message(&re::Directory::default()).0
}

/// A file's sha256 digest, read in a stream.
pub fn hash_file(path: &Path) -> Result<Digest, ReapiError> {
    let mut f =
        fs::File::open(path).map_err(ReapiError::io(format!("read `{}`", path.display())))?;
    let mut w = cascade_image::HashingWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(ReapiError::io(format!("read `{}`", path.display())))?;
    let (_, d, size) = w.finish();
    Ok(Digest {
        hash: d.hex(),
        size_bytes: size as i64,
    })
}

/// One directory as a message; its subdirectories' messages go to `blobs` and (for a
/// `Tree`) to `children`.
fn directory(
    path: &Path,
    blobs: &mut Blobs,
    children: &mut Vec<re::Directory>,
) -> Result<re::Directory, ReapiError> {
    let mut names: Vec<(String, fs::Metadata)> = Vec::new();
    for e in fs::read_dir(path).map_err(ReapiError::io(format!("list `{}`", path.display())))? {
        let e = e.map_err(ReapiError::io(format!("list `{}`", path.display())))?;
        let name = e.file_name().into_string().map_err(|n| ReapiError::Io {
            what: format!("`{}`", path.join(&n).display()),
            source: std::io::Error::other("a file name that is not UTF-8"),
        })?;
        let meta = fs::symlink_metadata(e.path())
            .map_err(ReapiError::io(format!("stat `{}`", e.path().display())))?;
        names.push((name, meta));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dir = re::Directory::default();
    for (name, meta) in names {
        let p = path.join(&name);
        let ft = meta.file_type();
        if ft.is_symlink() {
            dir.symlinks.push(re::SymlinkNode {
                name,
                target: symlink_target(&p)?,
                node_properties: None,
            });
        } else if ft.is_dir() {
            let sub = directory(&p, blobs, children)?;
            let digest = blobs.message(&sub);
            children.push(sub);
            dir.directories.push(re::DirectoryNode {
                name,
                digest: Some(digest),
            });
        } else if ft.is_file() {
            dir.files.push(re::FileNode {
                name,
                digest: Some(blobs.file(&p)?),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                node_properties: None,
            });
        } else {
            return Err(ReapiError::Io {
                what: format!("`{}`", p.display()),
                source: std::io::Error::other("neither a file, a directory nor a symlink"),
            });
        }
    }
    Ok(dir)
}

fn symlink_target(p: &Path) -> Result<String, ReapiError> {
    let t = fs::read_link(p).map_err(ReapiError::io(format!("read the link `{}`", p.display())))?;
    let t = t
        .into_os_string()
        .into_string()
        .map_err(|_| ReapiError::Io {
            what: format!("`{}`", p.display()),
            source: std::io::Error::other("a link target that is not UTF-8"),
        })?;
    if t.starts_with('/') {
        return Err(ReapiError::Io {
            what: format!("`{}`", p.display()),
            source: std::io::Error::other(format!(
                "an absolute symlink (to `{t}`), which REAPI engines refuse"
            )),
        });
    }
    Ok(t)
}

/// The outputs of an action, as its `ActionResult` lists them.
#[derive(Default)]
pub struct Outputs {
    pub files: Vec<re::OutputFile>,
    pub directories: Vec<re::OutputDirectory>,
    pub symlinks: Vec<re::OutputSymlink>,
    pub blobs: Blobs,
}

impl Outputs {
    /// Each of `paths` (relative to `work`) that exists, as a file, a directory (a
    /// `Tree`) or a symlink; missing ones are left out, as REAPI says.
    pub fn collect(work: &Path, paths: &[String]) -> Result<Outputs, ReapiError> {
        let mut out = Outputs::default();
        let mut paths = paths.to_vec();
        paths.sort();
        paths.dedup();
        for rel in &paths {
            let p = work.join(rel);
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                out.symlinks.push(re::OutputSymlink {
                    path: rel.clone(),
                    target: symlink_target(&p)?,
                    node_properties: None,
                });
            } else if ft.is_dir() {
                let mut children = Vec::new();
                let root = directory(&p, &mut out.blobs, &mut children)?;
                let root_digest = digest_of_message(&root).0;
                // Children once each, in digest order: the same tree, the same bytes.
                let mut by_digest: BTreeMap<String, re::Directory> = BTreeMap::new();
                for c in children {
                    by_digest.entry(digest_of_message(&c).0.hash).or_insert(c);
                }
                let tree = re::Tree {
                    root: Some(root),
                    children: by_digest.into_values().collect(),
                };
                let tree_digest = out.blobs.message(&tree);
                out.directories.push(re::OutputDirectory {
                    path: rel.clone(),
                    tree_digest: Some(tree_digest),
                    is_topologically_sorted: false,
                    root_directory_digest: Some(root_digest),
                });
            } else if ft.is_file() {
                out.files.push(re::OutputFile {
                    path: rel.clone(),
                    digest: Some(out.blobs.file(&p)?),
                    is_executable: meta.permissions().mode() & 0o111 != 0,
                    contents: Vec::new(),
                    node_properties: None,
                });
            }
        }
        Ok(out)
    }

    /// Into `result`'s output fields.
    pub fn fill(&self, result: &mut re::ActionResult) {
        result.output_files = self.files.clone();
        result.output_directories = self.directories.clone();
        result.output_symlinks = self.symlinks.clone();
    }
}

/// A relative path that stays inside the directory it is joined to.
pub fn safe_relative(p: &str) -> Option<&Path> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ok.then_some(path)
}

/// A name inside a Directory message: one path component.
fn safe_name(n: &str) -> Result<&str, String> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
        Err(format!("an entry named `{n}`"))
    } else {
        Ok(n)
    }
}

fn write_file(
    client: &Client,
    d: &Option<Digest>,
    exec: bool,
    dest: &Path,
) -> Result<(), ReapiError> {
    let d = d
        .as_ref()
        .ok_or_else(|| bad(client, "a file without a digest"))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(ReapiError::io(format!("create `{}`", parent.display())))?;
    }
    client.read_to_file(d, dest)?;
    let mode = if exec { 0o755 } else { 0o644 };
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .map_err(ReapiError::io(format!("chmod `{}`", dest.display())))
}

fn bad(client: &Client, what: &str) -> ReapiError {
    ReapiError::Bad {
        url: client.endpoint().to_string(),
        what: what.to_string(),
    }
}

/// Writes `dir` into `dest` (which exists), its subdirectories looked up by `lookup`.
fn write_dir(
    client: &Client,
    dir: &re::Directory,
    dest: &Path,
    lookup: &mut dyn FnMut(&Digest) -> Result<re::Directory, ReapiError>,
    depth: usize,
) -> Result<(), ReapiError> {
    if depth > 256 {
        return Err(bad(client, "a tree deeper than 256 directories"));
    }
    for f in &dir.files {
        let name = safe_name(&f.name).map_err(|w| bad(client, &w))?;
        write_file(client, &f.digest, f.is_executable, &dest.join(name))?;
    }
    for s in &dir.symlinks {
        let name = safe_name(&s.name).map_err(|w| bad(client, &w))?;
        std::os::unix::fs::symlink(&s.target, dest.join(name)).map_err(ReapiError::io(format!(
            "link `{}`",
            dest.join(name).display()
        )))?;
    }
    for sub in &dir.directories {
        let name = safe_name(&sub.name).map_err(|w| bad(client, &w))?;
        let d = sub
            .digest
            .as_ref()
            .ok_or_else(|| bad(client, "a directory without a digest"))?;
        let child = lookup(d)?;
        let p = dest.join(name);
        fs::create_dir(&p).map_err(ReapiError::io(format!("create `{}`", p.display())))?;
        write_dir(client, &child, &p, lookup, depth + 1)?;
    }
    Ok(())
}

/// Writes the directory `root` from the CAS into `dest` (created).
pub fn fetch_dir(client: &Client, root: &Digest, dest: &Path) -> Result<(), ReapiError> {
    fs::create_dir_all(dest).map_err(ReapiError::io(format!("create `{}`", dest.display())))?;
    let mut lookup = |d: &Digest| -> Result<re::Directory, ReapiError> {
        let bytes = client.read_present(d)?;
        re::Directory::decode(bytes.as_slice())
            .map_err(|e| bad(client, &format!("not a Directory: {e}")))
    };
    let top = lookup(root)?;
    write_dir(client, &top, dest, &mut lookup, 0)
}

/// Writes `result`'s outputs into `dest` at their paths.
pub fn fetch_outputs(
    client: &Client,
    result: &re::ActionResult,
    dest: &Path,
) -> Result<(), ReapiError> {
    let place = |p: &str| -> Result<PathBuf, ReapiError> {
        let rel = safe_relative(p).ok_or_else(|| bad(client, &format!("an output path `{p}`")))?;
        Ok(dest.join(rel))
    };
    for f in &result.output_files {
        write_file(client, &f.digest, f.is_executable, &place(&f.path)?)?;
    }
    // Engines older than v2.1 list symlinks in the two deprecated fields.
    #[allow(deprecated)]
    for s in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        let p = place(&s.path)?;
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .map_err(ReapiError::io(format!("create `{}`", parent.display())))?;
        }
        if fs::symlink_metadata(&p).is_ok() {
            continue; // listed twice (output_symlinks and the older fields)
        }
        std::os::unix::fs::symlink(&s.target, &p)
            .map_err(ReapiError::io(format!("link `{}`", p.display())))?;
    }
    for o in &result.output_directories {
        let p = place(&o.path)?;
        let d = o
            .tree_digest
            .as_ref()
            .ok_or_else(|| bad(client, "an output directory without a tree"))?;
        let tree = re::Tree::decode(client.read_present(d)?.as_slice())
            .map_err(|e| bad(client, &format!("not a Tree: {e}")))?;
        let children: BTreeMap<String, re::Directory> = tree
            .children
            .iter()
            .map(|c| (digest_of(&c.encode_to_vec()).hash, c.clone()))
            .collect();
        let mut lookup = |d: &Digest| -> Result<re::Directory, ReapiError> {
            children.get(&d.hash).cloned().ok_or_else(|| {
                bad(
                    client,
                    &format!("a tree that lacks the directory {}", crate::show(d)),
                )
            })
        };
        fs::create_dir_all(&p).map_err(ReapiError::io(format!("create `{}`", p.display())))?;
        write_dir(client, &tree.root.unwrap_or_default(), &p, &mut lookup, 0)?;
    }
    Ok(())
}
