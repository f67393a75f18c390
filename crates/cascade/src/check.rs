//! What differs between an output the lockfile records and one built again: the
//! files whose content, mode, kind or presence differ, with both digests and sizes,
//! and for small text files the first lines of a unified diff (a tiny diffoscope).

use cascade_core::{EntryKind, OutputDigest, Tree, TreeDigest};
use cascade_store::Store;

/// Text files up to this size get a line diff.
const DIFF_MAX_BYTES: u64 = 256 * 1024;
/// How many diff lines a file shows.
const DIFF_LINES: usize = 12;
/// How many differing files a node lists.
const MAX_FILES: usize = 50;

/// What of a node differs from the lockfile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mismatched {
    Output,
    Image,
}

/// How one file of an output differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileChange {
    Content,
    /// The executable bit.
    Mode,
    /// File, directory or symlink.
    Kind,
    /// Only in the new build.
    Added,
    /// Only in the lockfile's.
    Removed,
}

impl Mismatched {
    pub fn as_str(self) -> &'static str {
        match self {
            Mismatched::Output => "output",
            Mismatched::Image => "image",
        }
    }
}

impl FileChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FileChange::Content => "content",
            FileChange::Mode => "mode",
            FileChange::Kind => "kind",
            FileChange::Added => "added",
            FileChange::Removed => "removed",
        }
    }
}

/// One node whose output or image is not what the lockfile says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mismatch {
    pub node: String,
    pub what: Mismatched,
    /// The lockfile's digest.
    pub expected: String,
    /// The digest built now.
    pub actual: String,
    /// The files that differ (outputs only), in path order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDiff>,
    /// Why `files` is incomplete or empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FileDiff {
    pub path: String,
    pub change: FileChange,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub expected_size: Option<u64>,
    pub actual_size: Option<u64>,
    /// For text files: the first lines of a unified diff.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<String>,
}

impl Mismatch {
    pub(crate) fn image(node: &str, expected: &str, actual: &str) -> Mismatch {
        Mismatch {
            node: node.to_string(),
            what: Mismatched::Image,
            expected: expected.to_string(),
            actual: actual.to_string(),
            files: Vec::new(),
            note: None,
        }
    }
}

/// Compares the lockfile's output (read from `old`, the real store, when it is there)
/// with the one just built (in `new`).
pub(crate) fn compare_outputs(
    node: &str,
    old: &Store,
    new: &Store,
    expected: &OutputDigest,
    actual: &OutputDigest,
) -> Mismatch {
    let mut m = Mismatch {
        node: node.to_string(),
        what: Mismatched::Output,
        expected: expected.to_string(),
        actual: actual.to_string(),
        files: Vec::new(),
        note: None,
    };
    let Ok(was) = old.get_tree(&TreeDigest(expected.0)) else {
        m.note = Some(
            "the lockfile's output is not in the store, so only the digests can be compared".into(),
        );
        return m;
    };
    let Ok(now) = new.get_tree(&TreeDigest(actual.0)) else {
        m.note = Some("the new output could not be read back".into());
        return m;
    };
    let mut cx = Cx {
        old,
        new,
        out: &mut m.files,
    };
    cx.trees("", Some(&was), Some(&now));
    if m.files.len() >= MAX_FILES {
        m.note = Some(format!(
            "only the first {MAX_FILES} differing files are listed"
        ));
    }
    m
}

struct Cx<'a> {
    old: &'a Store,
    new: &'a Store,
    out: &'a mut Vec<FileDiff>,
}

impl Cx<'_> {
    fn trees(&mut self, prefix: &str, was: Option<&Tree>, now: Option<&Tree>) {
        let empty = Tree::default();
        let (was, now) = (was.unwrap_or(&empty), now.unwrap_or(&empty));
        let mut names: Vec<&str> = was
            .entries()
            .iter()
            .chain(now.entries())
            .map(|e| e.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            if self.out.len() >= MAX_FILES {
                return;
            }
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let a = was.get(name).map(|e| &e.kind);
            let b = now.get(name).map(|e| &e.kind);
            if a == b {
                continue;
            }
            match (a, b) {
                (Some(EntryKind::Dir { digest: x }), Some(EntryKind::Dir { digest: y })) => {
                    let tx = self.old.get_tree(x).ok();
                    let ty = self.new.get_tree(y).ok();
                    self.trees(&path, tx.as_ref(), ty.as_ref());
                }
                (
                    Some(EntryKind::File {
                        digest: x,
                        size: sx,
                        executable: ex,
                    }),
                    Some(EntryKind::File {
                        digest: y,
                        size: sy,
                        executable: ey,
                    }),
                ) => {
                    let change = if x == y && ex != ey {
                        FileChange::Mode
                    } else {
                        FileChange::Content
                    };
                    let diff = if change == FileChange::Content {
                        self.text_diff(x, *sx, y, *sy)
                    } else {
                        Vec::new()
                    };
                    self.out.push(FileDiff {
                        path,
                        change,
                        expected: Some(x.to_string()),
                        actual: Some(y.to_string()),
                        expected_size: Some(*sx),
                        actual_size: Some(*sy),
                        diff,
                    });
                }
                (a, b) => {
                    let change = match (a, b) {
                        (None, Some(_)) => FileChange::Added,
                        (Some(_), None) => FileChange::Removed,
                        _ => FileChange::Kind,
                    };
                    let (ed, es) = describe(a);
                    let (ad, as_) = describe(b);
                    self.out.push(FileDiff {
                        path,
                        change,
                        expected: ed,
                        actual: ad,
                        expected_size: es,
                        actual_size: as_,
                        diff: Vec::new(),
                    });
                }
            }
        }
    }

    fn text_diff(
        &self,
        x: &cascade_core::BlobDigest,
        sx: u64,
        y: &cascade_core::BlobDigest,
        sy: u64,
    ) -> Vec<String> {
        if sx > DIFF_MAX_BYTES || sy > DIFF_MAX_BYTES {
            return Vec::new();
        }
        let (Ok(a), Ok(b)) = (self.old.get_blob(x), self.new.get_blob(y)) else {
            return Vec::new();
        };
        let (Ok(a), Ok(b)) = (String::from_utf8(a), String::from_utf8(b)) else {
            return Vec::new();
        };
        let diff = similar::TextDiff::from_lines(&a, &b);
        diff.unified_diff()
            .context_radius(1)
            .to_string()
            .lines()
            .take(DIFF_LINES)
            .map(str::to_string)
            .collect()
    }
}

/// A tree entry as a digest and a size, for the report.
fn describe(e: Option<&EntryKind>) -> (Option<String>, Option<u64>) {
    match e {
        Some(EntryKind::File { digest, size, .. }) => (Some(digest.to_string()), Some(*size)),
        Some(EntryKind::Dir { digest }) => (Some(digest.to_string()), None),
        Some(EntryKind::Symlink { target }) => (Some(format!("symlink → {target}")), None),
        None => (None, None),
    }
}
