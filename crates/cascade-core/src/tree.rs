//! The output Merkle tree. A `Tree` is one directory: entries sorted by name, each a
//! file (content digest, size, executable bit), a directory (its tree digest) or a
//! symlink (its target, which must stay inside the output tree). Nothing else of the
//! file system enters: no mtimes, no owners, no permission bits but the executable bit.

use crate::digest::{BlobDigest, Digest, TreeDigest};
use crate::encode::{DecodeError, Decoder, Encoder};

const DOMAIN: &str = "cascade/tree";
const VERSION: u64 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File {
        digest: BlobDigest,
        size: u64,
        executable: bool,
    },
    Dir {
        digest: TreeDigest,
    },
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    entries: Vec<TreeEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("`{0}` is not a valid file name in an output tree")]
    BadName(String),
    #[error("`{0}` appears twice in one directory")]
    Duplicate(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A single path component we accept: not empty, not `.`/`..`, no `/` or NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl Tree {
    /// Builds a tree from entries in any order; they are sorted by name (bytewise).
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Self, TreeError> {
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for w in entries.windows(2) {
            if w[0].name == w[1].name {
                return Err(TreeError::Duplicate(w[0].name.clone()));
            }
        }
        if let Some(e) = entries.iter().find(|e| !valid_name(&e.name)) {
            return Err(TreeError::BadName(e.name.clone()));
        }
        Ok(Tree { entries })
    }

    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(DOMAIN, VERSION);
        e.list(1, self.entries.iter(), |e, entry| {
            e.str(0, &entry.name);
            match &entry.kind {
                EntryKind::File {
                    digest,
                    size,
                    executable,
                } => {
                    e.str(1, if *executable { "x" } else { "f" })
                        .bytes(2, &digest.0 .0)
                        .u64(3, *size);
                }
                EntryKind::Dir { digest } => {
                    e.str(1, "d").bytes(2, &digest.0 .0);
                }
                EntryKind::Symlink { target } => {
                    e.str(1, "l").str(2, target);
                }
            }
        });
        e.finish()
    }

    pub fn digest(&self) -> TreeDigest {
        TreeDigest(Digest::of(&self.encode()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let mut d = Decoder::new(bytes, DOMAIN, VERSION)?;
        let mut entries = Vec::new();
        for mut item in d.list(1)? {
            let name = item.str(0)?.to_string();
            let digest = |b: &[u8]| -> Result<Digest, DecodeError> {
                let a: [u8; 32] = b.try_into().map_err(|_| DecodeError::Malformed(2))?;
                Ok(Digest(a))
            };
            let kind = match item.str(1)? {
                k @ ("x" | "f") => EntryKind::File {
                    executable: k == "x",
                    digest: BlobDigest(digest(item.bytes(2)?)?),
                    size: item.u64(3)?,
                },
                "d" => EntryKind::Dir {
                    digest: TreeDigest(digest(item.bytes(2)?)?),
                },
                "l" => EntryKind::Symlink {
                    target: item.str(2)?.to_string(),
                },
                _ => return Err(DecodeError::Malformed(1).into()),
            };
            item.end()?;
            entries.push(TreeEntry { name, kind });
        }
        d.end()?;
        let tree = Tree::new(entries)?;
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8], executable: bool) -> TreeEntry {
        TreeEntry {
            name: name.into(),
            kind: EntryKind::File {
                digest: BlobDigest(Digest::of(content)),
                size: content.len() as u64,
                executable,
            },
        }
    }

    #[test]
    fn order_does_not_matter_and_round_trips() {
        let a = Tree::new(vec![file("b", b"1", false), file("a", b"2", true)]).unwrap();
        let b = Tree::new(vec![file("a", b"2", true), file("b", b"1", false)]).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(Tree::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn exec_bit_changes_digest() {
        let a = Tree::new(vec![file("a", b"2", true)]).unwrap();
        let b = Tree::new(vec![file("a", b"2", false)]).unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn bad_names_rejected() {
        for n in ["", ".", "..", "a/b"] {
            assert!(Tree::new(vec![file(n, b"", false)]).is_err(), "{n:?}");
        }
        assert!(Tree::new(vec![file("a", b"", false), file("a", b"x", false)]).is_err());
    }
}
