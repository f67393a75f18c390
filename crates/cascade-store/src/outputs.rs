//! Outputs in and out of the store: normalizing a work directory's declared outputs
//! into a Merkle tree, and materializing a stored tree read-only for a downstream node.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path};

use cascade_core::{Digest, EntryKind, OutputDigest, Tree, TreeDigest, TreeEntry};

use crate::{Store, StoreError};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum OutputError {
    #[error("declared output `{0}` was not produced")]
    #[diagnostic(code(cascade::output::missing))]
    NotProduced(String),
    #[error("symlink `{path}` points to `{target}`, outside the output tree")]
    #[diagnostic(
        code(cascade::output::escaping_symlink),
        help("outputs may only contain relative symlinks that stay inside the outputs")
    )]
    EscapingSymlink { path: String, target: String },
    #[error("declared output `{0}` goes through a symlink")]
    #[diagnostic(code(cascade::output::through_symlink))]
    ThroughSymlink(String),
    #[error("`{path}` is a {what}; outputs may hold only files, directories and symlinks")]
    #[diagnostic(code(cascade::output::unsupported))]
    Unsupported { path: String, what: &'static str },
    #[error("`{0}` is not a UTF-8 file name")]
    #[diagnostic(code(cascade::output::name))]
    BadName(String),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

/// A node's stored outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The root of the output tree (the declared paths, at their paths).
    pub digest: OutputDigest,
    /// Each declared path's own digest: a file's blob, a directory's tree, or the
    /// blake3 of a symlink's target.
    pub artifacts: BTreeMap<String, Digest>,
}

/// The declared paths as a trie: a leaf takes its whole subtree.
#[derive(Default)]
struct Trie {
    children: BTreeMap<String, Trie>,
    leaf: bool,
}

impl Trie {
    fn insert(&mut self, parts: &[&str]) {
        if self.leaf {
            return; // an ancestor is already declared whole
        }
        match parts.split_first() {
            None => {
                self.leaf = true;
                self.children.clear();
            }
            Some((first, rest)) => self
                .children
                .entry((*first).to_string())
                .or_default()
                .insert(rest),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |e| OutputError::Store(StoreError::io(path)(e))
}

impl Store {
    /// Normalizes the declared outputs under `work` into the store. Paths are relative
    /// to `work` and already validated (no `..`, not absolute) by the manifest.
    pub fn ingest_outputs(&self, work: &Path, declared: &[String]) -> Result<Outputs, OutputError> {
        // Name the declared path itself when it is missing, not its first missing parent.
        for d in declared {
            if fs::symlink_metadata(work.join(d)).is_err() {
                return Err(OutputError::NotProduced(d.clone()));
            }
        }
        let mut trie = Trie::default();
        for d in declared {
            let parts: Vec<&str> = d
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            trie.insert(&parts);
        }
        let mut artifacts = BTreeMap::new();
        let root = self.ingest_trie(&trie, work, "", &mut artifacts)?;
        Ok(Outputs {
            digest: OutputDigest(root.0),
            artifacts,
        })
    }

    fn ingest_trie(
        &self,
        trie: &Trie,
        dir: &Path,
        rel: &str,
        artifacts: &mut BTreeMap<String, Digest>,
    ) -> Result<TreeDigest, OutputError> {
        let mut entries = Vec::new();
        for (name, child) in &trie.children {
            let path = dir.join(name);
            let child_rel = join_rel(rel, name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(OutputError::NotProduced(child_rel))
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            let kind = if child.leaf {
                let kind = self.ingest_entry(&path, &child_rel, &meta)?;
                artifacts.insert(child_rel, artifact_digest(&kind));
                kind
            } else {
                if meta.file_type().is_symlink() {
                    return Err(OutputError::ThroughSymlink(child_rel));
                }
                if !meta.is_dir() {
                    return Err(OutputError::NotProduced(child_rel));
                }
                EntryKind::Dir {
                    digest: self.ingest_trie(child, &path, &child_rel, artifacts)?,
                }
            };
            entries.push(TreeEntry {
                name: name.clone(),
                kind,
            });
        }
        let tree = Tree::new(entries).map_err(|e| OutputError::BadName(e.to_string()))?;
        Ok(self.put_tree(&tree)?)
    }

    fn ingest_entry(
        &self,
        path: &Path,
        rel: &str,
        meta: &fs::Metadata,
    ) -> Result<EntryKind, OutputError> {
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err(path))?;
            let target = target
                .to_str()
                .ok_or_else(|| OutputError::BadName(rel.to_string()))?
                .to_string();
            if escapes(rel, &target) {
                return Err(OutputError::EscapingSymlink {
                    path: rel.to_string(),
                    target,
                });
            }
            Ok(EntryKind::Symlink { target })
        } else if ft.is_file() {
            let (digest, size) = self.put_blob_file(path)?;
            Ok(EntryKind::File {
                digest,
                size,
                executable: meta.permissions().mode() & 0o111 != 0,
            })
        } else if ft.is_dir() {
            let mut names = Vec::new();
            for e in fs::read_dir(path).map_err(io_err(path))? {
                let e = e.map_err(io_err(path))?;
                let name = e.file_name();
                let name = name
                    .to_str()
                    .ok_or_else(|| {
                        OutputError::BadName(format!("{rel}/{}", name.to_string_lossy()))
                    })?
                    .to_string();
                names.push(name);
            }
            names.sort();
            let mut entries = Vec::with_capacity(names.len());
            for name in names {
                let p = path.join(&name);
                let child_rel = join_rel(rel, &name);
                let m = fs::symlink_metadata(&p).map_err(io_err(&p))?;
                let kind = self.ingest_entry(&p, &child_rel, &m)?;
                entries.push(TreeEntry { name, kind });
            }
            let tree = Tree::new(entries).map_err(|e| OutputError::BadName(e.to_string()))?;
            Ok(EntryKind::Dir {
                digest: self.put_tree(&tree)?,
            })
        } else {
            Err(OutputError::Unsupported {
                path: rel.to_string(),
                what: "special file (fifo, socket or device)",
            })
        }
    }

    /// Recreates a stored output tree under `dest` (which must exist), read-only:
    /// files 0444 or 0555, directories 0555.
    pub fn materialize(&self, output: &OutputDigest, dest: &Path) -> Result<(), StoreError> {
        self.materialize_tree(&TreeDigest(output.0), dest)?;
        set_mode(dest, 0o555)
    }

    fn materialize_tree(&self, d: &TreeDigest, dest: &Path) -> Result<(), StoreError> {
        let tree = self.get_tree(d)?;
        for e in tree.entries() {
            let p = dest.join(&e.name);
            match &e.kind {
                EntryKind::File {
                    digest, executable, ..
                } => {
                    self.copy_blob_to(digest, &p)?;
                    set_mode(&p, if *executable { 0o555 } else { 0o444 })?;
                }
                EntryKind::Dir { digest } => {
                    fs::create_dir(&p).map_err(StoreError::io(&p))?;
                    self.materialize_tree(digest, &p)?;
                    set_mode(&p, 0o555)?;
                }
                EntryKind::Symlink { target } => {
                    symlink(target, &p).map_err(StoreError::io(&p))?;
                }
            }
        }
        Ok(())
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(StoreError::io(p))
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn artifact_digest(kind: &EntryKind) -> Digest {
    match kind {
        EntryKind::File { digest, .. } => digest.0,
        EntryKind::Dir { digest } => digest.0,
        EntryKind::Symlink { target } => Digest::of(target.as_bytes()),
    }
}

/// Does a symlink at `rel` (relative to the output root) pointing at `target` leave
/// the output tree? Decided lexically, as the target is resolved where it is used.
fn escapes(rel: &str, target: &str) -> bool {
    let target = Path::new(target);
    if target.is_absolute() {
        return true;
    }
    let mut depth: Vec<&str> = rel.split('/').collect();
    depth.pop(); // the link itself
    for c in target.components() {
        match c {
            Component::Normal(s) => depth.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// Makes a tree that [`Store::materialize`] left read-only writable again, so it can
/// be removed.
pub fn make_writable(p: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(p)?;
    if meta.is_dir() {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(p)? {
            make_writable(&e?.path())?;
        }
    } else if meta.is_file() {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Removes a directory tree even where materialized inputs made it read-only.
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    if !p.exists() {
        return Ok(());
    }
    make_writable(p)?;
    fs::remove_dir_all(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn build(dir: &Path, mtime_offset: i64) {
        fs::create_dir_all(dir.join("out/bin")).unwrap();
        fs::create_dir_all(dir.join("out/lib")).unwrap();
        fs::write(dir.join("out/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("out/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("out/lib/libx.so.1"), b"lib").unwrap();
        symlink("libx.so.1", dir.join("out/lib/libx.so")).unwrap();
        fs::write(dir.join("notes.txt"), b"not an output").unwrap();
        // Different mtimes and modes besides the exec bit must not matter.
        let t = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs((1_000_000 + mtime_offset) as u64);
        for p in ["out/bin/tool", "out/lib/libx.so.1"] {
            let f = fs::File::options().write(true).open(dir.join(p)).unwrap();
            f.set_modified(t).unwrap();
        }
    }

    #[test]
    fn same_outputs_in_two_directories_give_the_same_digest() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        build(a.path(), 0);
        build(b.path(), 12345);
        fs::set_permissions(
            b.path().join("out/lib/libx.so.1"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let decl = vec!["out".to_string()];
        let oa = store.ingest_outputs(a.path(), &decl).unwrap();
        let ob = store.ingest_outputs(b.path(), &decl).unwrap();
        assert_eq!(oa, ob);
        // Not-declared files stay out; the exec bit counts.
        fs::write(b.path().join("notes.txt"), b"changed").unwrap();
        assert_eq!(
            store.ingest_outputs(b.path(), &decl).unwrap().digest,
            oa.digest
        );
        fs::set_permissions(
            b.path().join("out/bin/tool"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_ne!(
            store.ingest_outputs(b.path(), &decl).unwrap().digest,
            oa.digest
        );
    }

    #[test]
    fn materialize_round_trips() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let a = tempfile::tempdir().unwrap();
        build(a.path(), 0);
        let decl = vec!["out/bin/tool".to_string(), "out/lib".to_string()];
        let o = store.ingest_outputs(a.path(), &decl).unwrap();
        assert_eq!(o.artifacts.len(), 2);
        let dest = tempfile::tempdir().unwrap();
        let m = dest.path().join("m");
        fs::create_dir(&m).unwrap();
        store.materialize(&o.digest, &m).unwrap();
        assert_eq!(
            fs::read(m.join("out/bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(m.join("out/lib/libx.so")).unwrap(),
            Path::new("libx.so.1")
        );
        let mode = fs::metadata(m.join("out/bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555);
        assert_eq!(store.ingest_outputs(&m, &decl).unwrap(), o);
        remove_tree(&m).unwrap();
        assert!(!m.exists());
    }

    #[test]
    fn escaping_symlinks_are_rejected() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        for target in ["/etc/passwd", "../../../x", "../../../../etc"] {
            let a = tempfile::tempdir().unwrap();
            fs::create_dir_all(a.path().join("out/sub")).unwrap();
            symlink(target, a.path().join("out/sub/link")).unwrap();
            let r = store.ingest_outputs(a.path(), &["out".to_string()]);
            assert!(
                matches!(r, Err(OutputError::EscapingSymlink { .. })),
                "{target}: {r:?}"
            );
        }
        // A declared path that goes through a symlink is refused too.
        let a = tempfile::tempdir().unwrap();
        symlink("/etc", a.path().join("out")).unwrap();
        let r = store.ingest_outputs(a.path(), &["out/passwd".to_string()]);
        assert!(matches!(r, Err(OutputError::ThroughSymlink(_))), "{r:?}");
    }

    #[test]
    fn missing_output_is_reported() {
        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let a = tempfile::tempdir().unwrap();
        let r = store.ingest_outputs(a.path(), &["out/bin/x".to_string()]);
        assert!(matches!(r, Err(OutputError::NotProduced(p)) if p == "out/bin/x"));
    }
}
