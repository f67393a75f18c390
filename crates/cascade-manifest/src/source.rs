//! The files a project's manifests came from, and the conversion of parser locations
//! into byte spans of those files.

use std::sync::Arc;

use cascade_core::{FileId, Span};
use miette::{NamedSource, SourceSpan};

/// The manifest files of one project, by [`FileId`]: a project-relative display path
/// (what diagnostics show) and the file's text.
#[derive(Debug, Default, Clone)]
pub struct SourceDb {
    /// Texts are shared with the diagnostics that quote them, so a file with many
    /// problems is not copied once per problem.
    files: Vec<(String, Arc<str>)>,
    /// What was wrong with a file's bytes, by file: reported as its first problem
    /// while the other files (and the rest of this one) are still checked.
    problems: Vec<(FileId, FileProblem)>,
}

/// A file whose bytes are not a manifest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileProblem {
    /// Not UTF-8: the text holds the lossy conversion; `at` is the byte offset of the
    /// first U+FFFD standing for the bad bytes.
    NotUtf8 { at: usize },
    /// Larger than a manifest may be; the text is empty, `size` is at least this.
    TooLarge { size: u64 },
}

impl SourceDb {
    pub fn new() -> Self {
        SourceDb::default()
    }

    /// `path` is the project-relative path shown in diagnostics, e.g.
    /// `graph/environments/scratch.yaml`.
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> FileId {
        let id = FileId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        let text: String = text.into();
        self.files.push((path.into(), Arc::from(text)));
        id
    }

    /// A file read as bytes: text that is not UTF-8 is kept with the bad bytes
    /// replaced by U+FFFD, and its first problem is that it is not UTF-8.
    pub fn add_bytes(&mut self, path: impl Into<String>, bytes: Vec<u8>) -> FileId {
        match String::from_utf8(bytes) {
            Ok(text) => self.add(path, text),
            Err(e) => {
                // The valid prefix is the same in the lossy text.
                let at = e.utf8_error().valid_up_to();
                let id = self.add(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
                self.problems.push((id, FileProblem::NotUtf8 { at }));
                id
            }
        }
    }

    /// A file too large to read (at least `size` bytes): reported, never parsed.
    pub fn add_too_large(&mut self, path: impl Into<String>, size: u64) -> FileId {
        let id = self.add(path, String::new());
        self.problems.push((id, FileProblem::TooLarge { size }));
        id
    }

    /// Whether some file's bytes were not a manifest's (not UTF-8, too large).
    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub(crate) fn problem(&self, id: FileId) -> Option<FileProblem> {
        self.problems
            .iter()
            .find(|(f, _)| *f == id)
            .map(|(_, p)| *p)
    }

    /// The display path of a file; empty for an id that this database did not hand out.
    pub fn path(&self, id: FileId) -> &str {
        self.files.get(id.0 as usize).map_or("", |f| f.0.as_str())
    }

    /// Every file: its display path and text, in the order added.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().map(|(p, t)| (p.as_str(), &**t))
    }

    /// The text of a file; empty for an id that this database did not hand out.
    pub fn text(&self, id: FileId) -> &str {
        self.files.get(id.0 as usize).map_or("", |f| &*f.1)
    }

    /// The file as miette source code, named by its display path.
    pub fn named_source(&self, id: FileId) -> NamedSource<String> {
        NamedSource::new(self.path(id), self.text(id).to_string())
    }

    /// The same, sharing the text instead of copying it.
    pub(crate) fn shared_source(&self, id: FileId) -> NamedSource<Arc<str>> {
        let text = self
            .files
            .get(id.0 as usize)
            .map_or_else(|| Arc::from(""), |f| Arc::clone(&f.1));
        NamedSource::new(self.path(id), text)
    }
}

/// A span as miette wants it.
pub(crate) fn source_span(span: Span) -> SourceSpan {
    SourceSpan::new(span.offset.into(), span.len)
}

/// The byte span of a parser location in `text`. Parser errors sometimes carry only a
/// character offset; locations that are unknown become an empty span at the start.
pub(crate) fn span_of(text: &str, file: FileId, loc: &serde_saphyr::Location) -> Span {
    if *loc == serde_saphyr::Location::UNKNOWN || loc.line() == 0 {
        return Span::new(file, 0, 0);
    }
    let s = loc.span();
    let (offset, len) = match (s.byte_offset(), s.byte_len()) {
        (Some(o), Some(l)) => (to_usize(o), to_usize(l)),
        _ => {
            // Character-based: walk the text.
            let start = char_to_byte(text, to_usize(s.offset()));
            let end = char_to_byte(&text[start..], to_usize(s.len())) + start;
            (start, end - start)
        }
    };
    clamp(text, file, offset, len)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The byte offset of the `n`th character (or the end of the text).
fn char_to_byte(text: &str, n: usize) -> usize {
    text.char_indices().nth(n).map_or(text.len(), |(i, _)| i)
}

/// A span that lies inside `text` and on character boundaries, whatever we were given.
pub(crate) fn clamp(text: &str, file: FileId, offset: usize, len: usize) -> Span {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = start.saturating_add(len).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    Span::new(file, start, end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_stays_in_bounds() {
        let f = FileId(0);
        assert_eq!(clamp("abc", f, 10, 3), Span::new(f, 3, 0));
        assert_eq!(clamp("aé", f, 2, 1), Span::new(f, 1, 2));
        assert_eq!(clamp("abc", f, 1, usize::MAX), Span::new(f, 1, 2));
    }

    #[test]
    fn unknown_ids_do_not_panic() {
        let db = SourceDb::new();
        assert_eq!(db.path(FileId(3)), "");
        assert_eq!(db.text(FileId(3)), "");
    }
}
