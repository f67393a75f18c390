//! Column numbers in characters. miette counts the column of `[file:line:col]` in bytes
//! from the start of the line, so a BOM or a multi-byte character earlier on the line
//! would shift it; spans stay byte offsets (what the underlining needs). Rendering wraps
//! a diagnostic, its related diagnostics and its causes in [`Columns`], whose source
//! code reports the column as the number of characters before the span on its line
//! (a BOM at the start of the file not counted), as an editor shows it.

use std::fmt;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};

/// A diagnostic as rendered: the same, with columns counted in characters.
pub(crate) struct Columns<'a> {
    inner: &'a dyn Diagnostic,
    source: Option<Chars<'a>>,
    related: Vec<Columns<'a>>,
    cause: Option<Box<Columns<'a>>>,
}

impl<'a> Columns<'a> {
    pub(crate) fn new(inner: &'a dyn Diagnostic) -> Columns<'a> {
        Columns {
            inner,
            source: inner.source_code().map(Chars),
            related: inner
                .related()
                .map(|r| r.map(Columns::new).collect())
                .unwrap_or_default(),
            cause: inner.diagnostic_source().map(|c| Box::new(Columns::new(c))),
        }
    }
}

impl fmt::Debug for Columns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for Columns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for Columns<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl Diagnostic for Columns<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<Severity> {
        self.inner.severity()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }
    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.url()
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
    fn related<'b>(&'b self) -> Option<Box<dyn Iterator<Item = &'b dyn Diagnostic> + 'b>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|r| r as &dyn Diagnostic)))
    }
    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.cause.as_deref().map(|c| c as &dyn Diagnostic)
    }
}

/// Source code whose span contents count columns in characters.
struct Chars<'a>(&'a dyn SourceCode);

impl SourceCode for Chars<'_> {
    fn read_span<'b>(
        &'b self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'b> + 'b>, MietteError> {
        let contents = self.0.read_span(span, before, after)?;
        // miette gives a column only without context lines before (the `[file:l:c]`
        // header); it is the byte count from the line's start to the span.
        let bytes = contents.column();
        if bytes == 0 || bytes > span.offset() {
            return Ok(contents);
        }
        let start = span.offset() - bytes;
        let prefix = self
            .0
            .read_span(&SourceSpan::new(start.into(), bytes), 0, 0)?;
        let data = prefix.data();
        let text = String::from_utf8_lossy(data.get(..bytes).unwrap_or(data));
        let bom = start == 0 && text.starts_with('\u{feff}');
        let column = text.chars().count() - usize::from(bom);
        let fixed = match contents.name() {
            Some(name) => MietteSpanContents::new_named(
                name.to_string(),
                contents.data(),
                *contents.span(),
                contents.line(),
                column,
                contents.line_count(),
            ),
            None => MietteSpanContents::new(
                contents.data(),
                *contents.span(),
                contents.line(),
                column,
                contents.line_count(),
            ),
        };
        Ok(Box::new(fixed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str, needle: &str) -> String {
        let at = text.rfind(needle).unwrap();
        let bad = miette::MietteDiagnostic::new("bad value").with_label(LabeledSpan::at(
            SourceSpan::new(at.into(), needle.len()),
            "here",
        ));
        let report = miette::Report::new(bad)
            .with_source_code(miette::NamedSource::new("f.yaml", text.to_string()));
        let out = crate::render(report.as_ref(), false);
        out.lines()
            .find_map(|l| {
                l.split_once("[f.yaml:")
                    .map(|(_, r)| r.trim_end_matches(']').to_string())
            })
            .unwrap_or_else(|| panic!("no header in:\n{out}"))
    }

    /// A BOM or a multi-byte character before the value does not move its column.
    #[test]
    fn columns_count_characters() {
        assert_eq!(header("a: x\nname: bad\n", "bad"), "2:7");
        assert_eq!(header("\u{feff}name: bad\n", "bad"), "1:7");
        assert_eq!(header("n: é🦀 bad\n", "bad"), "1:7");
        assert_eq!(header("x: 1\nn: é🦀 bad\n", "bad"), "2:7");
    }
}
