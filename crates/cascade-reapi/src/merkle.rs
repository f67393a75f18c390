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
            // A path through a symlink is not an output: collecting happens outside any
            // sandbox, and must not read what the link points at.
            if !beneath(work, rel) {
                continue;
            }
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
                // In the CAS too: readers of `root_directory_digest` fetch it.
                let root_digest = out.blobs.message(&root);
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

/// Whether `rel` (relative, checked) reaches below `base` through directories only: no
/// component but the last may be a symlink (or anything but a directory).
pub fn beneath(base: &Path, rel: &str) -> bool {
    let Some(rel) = safe_relative(rel) else {
        return false;
    };
    let parts: Vec<_> = rel.components().collect();
    let mut at = base.to_path_buf();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Creates the parent directories of `rel` below `base`, never through a symlink.
pub fn create_parents(base: &Path, rel: &str) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::other(format!("output path `{rel}`: {what}"));
    let path =
        safe_relative(rel).ok_or_else(|| bad("not a relative path inside the input root"))?;
    let parts: Vec<_> = path.components().collect();
    let mut at = base.to_path_buf();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(bad("a parent is a symlink or a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    budget: &mut usize,
) -> Result<(), ReapiError> {
    if depth > 256 {
        return Err(bad(client, "a tree deeper than 256 directories"));
    }
    // A DAG that names one directory many times would unfold without end on disk.
    let n = dir.files.len() + dir.symlinks.len() + dir.directories.len();
    *budget = budget
        .checked_sub(n)
        .ok_or_else(|| bad(client, "a tree of more than 1,000,000 entries"))?;
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
        write_dir(client, &child, &p, lookup, depth + 1, budget)?;
    }
    Ok(())
}

/// Writes the directory `root` from the CAS into `dest` (created).
pub fn fetch_dir(client: &Client, root: &Digest, dest: &Path) -> Result<(), ReapiError> {
    fs::create_dir_all(dest).map_err(ReapiError::io(format!("create `{}`", dest.display())))?;
    // Each directory fetched once, however often the tree names it.
    let mut seen: BTreeMap<String, re::Directory> = BTreeMap::new();
    let mut lookup = |d: &Digest| -> Result<re::Directory, ReapiError> {
        if let Some(dir) = seen.get(&d.hash) {
            return Ok(dir.clone());
        }
        let bytes = client.read_present(d)?;
        let dir = re::Directory::decode(bytes.as_slice())
            .map_err(|e| bad(client, &format!("not a Directory: {e}")))?;
        seen.insert(d.hash.clone(), dir.clone());
        Ok(dir)
    };
    let top = lookup(root)?;
    let mut budget = ENTRY_BUDGET;
    write_dir(client, &top, dest, &mut lookup, 0, &mut budget)
}

/// The most entries a tree written to disk may have.
const ENTRY_BUDGET: usize = 1_000_000;

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
    // Engines older than v2.1 list symlinks in the two deprecated fields.
    #[allow(deprecated)]
    let symlinks: Vec<&re::OutputSymlink> = result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
        .collect();
    // No output inside another: one could then be written through the other's links.
    let mut paths: Vec<&str> = result
        .output_files
        .iter()
        .map(|f| f.path.as_str())
        .chain(result.output_directories.iter().map(|d| d.path.as_str()))
        .chain(symlinks.iter().map(|s| s.path.as_str()))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    for w in paths.windows(2) {
        if w[1]
            .strip_prefix(w[0])
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(bad(
                client,
                &format!("output `{}` inside output `{}`", w[1], w[0]),
            ));
        }
    }
    for f in &result.output_files {
        write_file(client, &f.digest, f.is_executable, &place(&f.path)?)?;
    }
    let mut budget = ENTRY_BUDGET;
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
        write_dir(
            client,
            &tree.root.unwrap_or_default(),
            &p,
            &mut lookup,
            0,
            &mut budget,
        )?;
    }
    // Links last, so nothing above is written through one.
    for s in symlinks {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), "hello\n").unwrap();
        fs::create_dir(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(d.path().join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a.txt", d.path().join("link")).unwrap();
        d
    }

    /// The digest another REAPI implementation gives the same tree (computed with
    /// BuildGrid's Python protos): the same files make the same Directory bytes.
    #[test]
    fn a_directory_hashes_as_other_reapi_implementations_hash_it() {
        let d = tree();
        let m = Merkle::of_dir(d.path()).unwrap();
        assert_eq!(
            (m.root.hash.as_str(), m.root.size_bytes),
            (
                "2a3927c990edc18cefc5ce28d110e2979adcecbbac801345a35fd2d20ea5e787",
                171
            )
        );
        assert_eq!(
            empty_dir().hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Every blob a reader needs is listed: two files, two directories.
        assert_eq!((m.blobs.files.len(), m.blobs.messages.len()), (2, 2));
    }

    #[test]
    fn outputs_list_files_trees_and_links_and_never_follow_a_link() {
        let d = tree();
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        let paths: Vec<String> = ["a.txt", "bin", "link", "missing", "etc/passwd", "../x"]
            .map(String::from)
            .to_vec();
        let o = Outputs::collect(d.path(), &paths).unwrap();
        let names = |v: Vec<&str>| v.join(",");
        assert_eq!(
            names(o.files.iter().map(|f| f.path.as_str()).collect()),
            "a.txt"
        );
        assert_eq!(
            names(o.directories.iter().map(|f| f.path.as_str()).collect()),
            "bin"
        );
        assert_eq!(
            names(o.symlinks.iter().map(|f| f.path.as_str()).collect()),
            "link"
        );
        // The tree and its root are in the CAS for readers of either field.
        let dir = &o.directories[0];
        for digest in [&dir.tree_digest, &dir.root_directory_digest] {
            let h = &digest.as_ref().unwrap().hash;
            assert!(o.blobs.messages.contains_key(h), "{h}");
        }
    }

    #[test]
    fn parents_are_made_beneath_and_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("out")).unwrap();
        create_parents(d.path(), "a/b/c.txt").unwrap();
        assert!(d.path().join("a/b").is_dir());
        assert!(create_parents(d.path(), "out/x/y").is_err());
        assert!(create_parents(d.path(), "../up/y").is_err());
        assert!(!outside.path().join("x").exists());
        assert!(beneath(d.path(), "a/b/c.txt"));
        assert!(!beneath(d.path(), "out/x"));
        assert!(!beneath(d.path(), "/abs"));
    }

    /// An engine that lists one output inside another could write through a link it
    /// made: refused before anything is fetched.
    #[test]
    fn an_output_inside_another_is_refused() {
        let client = Client::new(
            &crate::Endpoint::parse("grpc://127.0.0.1:9").unwrap(),
            &crate::Options::default(),
        )
        .unwrap();
        let result = re::ActionResult {
            output_symlinks: vec![re::OutputSymlink {
                path: "d".into(),
                target: "/etc".into(),
                node_properties: None,
            }],
            output_files: vec![re::OutputFile {
                path: "d/cron".into(),
                digest: Some(crate::digest_of(b"x")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let dest = tempfile::tempdir().unwrap();
        let e = fetch_outputs(&client, &result, dest.path()).unwrap_err();
        assert!(e.to_string().contains("inside output `d`"), "{e}");
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
    }
}
