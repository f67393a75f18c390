//! Reading a lockfile: the format line first, then the schema, strictly.

use std::collections::BTreeMap;
use std::sync::Arc;

use cascade_core::Digest;
use miette::{NamedSource, SourceSpan};
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter, Spanned};

use crate::{LockNode, Lockfile, FORMAT};

/// Why a lockfile could not be read. Each variant carries the file's text and points at
/// the offending place when the parser knows it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    #[error("`{path}` is not a valid lockfile: {message}")]
    #[diagnostic(
        code(cascade::lock::invalid),
        help(
            "lockfiles are written by cascade; regenerate it with a build rather than editing it"
        )
    )]
    Invalid {
        path: String,
        message: String,
        /// Shared, to keep the error small: it is returned by value.
        #[source_code]
        src: Arc<NamedSource<String>>,
        #[label("here")]
        span: Option<SourceSpan>,
    },

    #[error(
        "`{path}` has format `{found}`, but this cascade reads `cascade-lock/1` to `{FORMAT}`"
    )]
    #[diagnostic(
        code(cascade::lock::unsupported_format),
        help("a lockfile written by another version of cascade needs that version to read it")
    )]
    UnsupportedFormat {
        path: String,
        found: String,
        #[source_code]
        src: Arc<NamedSource<String>>,
        #[label("unsupported format")]
        span: Option<SourceSpan>,
    },

    #[error("`{path}` has no `format:` line, so it is not a cascade lockfile")]
    #[diagnostic(
        code(cascade::lock::missing_format),
        help("the first line of a lockfile is `format: {FORMAT}`")
    )]
    MissingFormat {
        path: String,
        #[source_code]
        src: Arc<NamedSource<String>>,
    },
}

/// Only the format, with every other field allowed: a lockfile of another format may
/// have other fields, and saying "unknown format" is more useful than "unknown field".
#[derive(serde::Deserialize)]
struct Probe {
    format: Option<Spanned<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: Option<Spanned<String>>,
    environment: String,
    graph: Digest,
    nodes: BTreeMap<String, LockNode>,
    /// `cascade-lock/4`: how many nodes the writer wrote (see [`crate::COUNT_FIELD`]).
    node_count: Option<Spanned<u64>>,
}

/// Parses a lockfile. `path` names the file in messages; `text` is its content.
pub fn read(path: &str, text: &str) -> Result<Lockfile, LockError> {
    // One parse when the file is good (lockfiles of big graphs are large); the probe
    // runs only to explain a failure.
    match parse::<Raw>(path, text) {
        Ok(raw) => {
            let format = check_format(path, text, raw.format)?;
            check_count(path, text, &format, raw.node_count, raw.nodes.len())?;
            let lock = Lockfile {
                key_format: crate::key_format_of(&format),
                environment: raw.environment,
                graph: raw.graph,
                nodes: raw.nodes,
            };
            check_ids(path, text, &lock)?;
            Ok(lock)
        }
        Err(e) => {
            let probe: Probe = parse(path, text)?;
            check_format(path, text, probe.format)?;
            Err(e)
        }
    }
}

/// A `cascade-lock/4` file ends with the number of its nodes: a file without that line
/// was cut short (a cut between two nodes still parses), and one whose count differs
/// lost nodes or was edited. Older formats have no count, and must not claim one.
fn check_count(
    path: &str,
    text: &str,
    format: &str,
    count: Option<Spanned<u64>>,
    nodes: usize,
) -> Result<(), LockError> {
    let invalid = |message: String, span: Option<SourceSpan>| LockError::Invalid {
        path: path.to_string(),
        message,
        src: Arc::new(NamedSource::new(path, text.to_string())),
        span,
    };
    let field = crate::COUNT_FIELD;
    match count {
        None if crate::has_count(format) => {
            // Underline the last line: that is where the file stops.
            let end = text.trim_end_matches('\n').len();
            let start = text[..end].rfind('\n').map_or(0, |i| i + 1);
            Err(invalid(
                format!("it ends before its `{field}:` line, so it is cut short (a `{format}` file ends with the number of its nodes)"),
                Some(SourceSpan::new(start.into(), end - start)),
            ))
        }
        Some(c) if !crate::has_count(format) => Err(invalid(
            format!("`{field}` is not a field of `{format}`"),
            span(text, &c.referenced),
        )),
        Some(c) if c.value != nodes as u64 => Err(invalid(
            format!(
                "`{field}` says {} nodes but the file holds {nodes}: it is cut short or was edited",
                c.value
            ),
            span(text, &c.referenced),
        )),
        _ => Ok(()),
    }
}

/// The fields every later use takes for ASCII ids (short SHAs are byte slices): a
/// commit and a tree are git object ids (40 or 64 lowercase hex digits), an image digest
/// is `sha256:<64 lowercase hex>`. Digests of our own are checked by their type already.
fn check_ids(path: &str, text: &str, lock: &Lockfile) -> Result<(), LockError> {
    let hex = |s: &str, len: &[usize]| {
        len.contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut bad: Option<(String, String, &'static str)> = None;
    for (name, n) in &lock.nodes {
        for (field, v, want) in [
            (
                "commit",
                &n.source.commit,
                "a git commit id (40 lowercase hex digits)",
            ),
            (
                "tree",
                &n.source.tree,
                "a git tree id (40 lowercase hex digits)",
            ),
        ] {
            if !hex(v, &[40, 64]) {
                bad.get_or_insert((format!("nodes.{name}.source.{field}"), v.clone(), want));
            }
        }
        if let Some(i) = &n.image {
            let ok = i
                .digest
                .strip_prefix("sha256:")
                .is_some_and(|h| hex(h, &[64]));
            if !ok {
                bad.get_or_insert((
                    format!("nodes.{name}.image.digest"),
                    i.digest.clone(),
                    "`sha256:` and 64 lowercase hex digits",
                ));
            }
        }
    }
    let Some((field, value, want)) = bad else {
        return Ok(());
    };
    // Where the value is: the first occurrence of it after its node's name.
    let node = field.split('.').nth(1).unwrap_or_default();
    let from = text.find(&format!("\n  {node}:")).unwrap_or(0);
    let span = text[from..]
        .find(value.as_str())
        .filter(|_| !value.is_empty())
        .map(|at| SourceSpan::new((from + at).into(), value.len()));
    Err(LockError::Invalid {
        path: path.to_string(),
        message: format!("`{field}` is not {want}"),
        src: Arc::new(NamedSource::new(path, text.to_string())),
        span,
    })
}

/// The format, when it is one this crate reads.
fn check_format(
    path: &str,
    text: &str,
    format: Option<Spanned<String>>,
) -> Result<String, LockError> {
    let src = || Arc::new(NamedSource::new(path, text.to_string()));
    let Some(format) = format else {
        return Err(LockError::MissingFormat {
            path: path.to_string(),
            src: src(),
        });
    };
    if !crate::READS.contains(&format.value.as_str()) {
        return Err(LockError::UnsupportedFormat {
            path: path.to_string(),
            found: format.value,
            src: src(),
            span: span(text, &format.referenced),
        });
    }
    Ok(format.value)
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    path: &str,
    text: &str,
) -> Result<T, LockError> {
    // Default budgets (against alias bombs and deep nesting) and duplicate keys as
    // errors; no snippets, which miette renders from our label instead.
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| invalid(path, text, &e))
}

fn invalid(path: &str, text: &str, err: &serde_saphyr::Error) -> LockError {
    // The bare message: the location is shown by the label instead.
    let mut inner = err;
    // An error met while expanding an alias comes wrapped; the cause is inside.
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let message = match inner {
        // The budget's own text is a debug dump (`Nodes { nodes: 250001 }`).
        serde_saphyr::Error::Budget { .. } => {
            "the YAML is too large or too complex (too many values, aliases or levels)".into()
        }
        e => DefaultMessageFormatter.format_message(e).into_owned(),
    };
    LockError::Invalid {
        path: path.to_string(),
        message,
        src: Arc::new(NamedSource::new(path, text.to_string())),
        span: err.location().and_then(|l| span(text, &l)),
    }
}

/// The byte span of a location, clamped to the text (a label past its end would not
/// render). Some parser errors carry only a line and column: they get an empty span
/// there.
pub(crate) fn span(text: &str, location: &serde_saphyr::Location) -> Option<SourceSpan> {
    let s = location.span();
    let offset = match s.byte_offset() {
        Some(o) => usize::try_from(o).ok()?,
        None => offset_of(text, location.line(), location.column())?,
    }
    .min(text.len());
    let len = s
        .byte_len()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0)
        .min(text.len() - offset);
    Some(SourceSpan::new(offset.into(), len))
}

/// The byte offset of a 1-based line and (character) column.
fn offset_of(text: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 || column == 0 {
        return None;
    }
    let skip = usize::try_from(line - 1).ok()?;
    let line_start = if skip == 0 {
        0
    } else {
        text.match_indices('\n').nth(skip - 1)?.0 + 1
    };
    let rest = &text[line_start..];
    let column = usize::try_from(column - 1).ok()?;
    Some(
        line_start
            + rest
                .char_indices()
                .nth(column)
                .map_or(rest.len(), |(i, _)| i),
    )
}
