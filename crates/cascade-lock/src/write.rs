//! The byte-stable emitter.
//!
//! Layout: block style only, 2 spaces per level, one field per line, every map in key
//! order (struct fields are written in alphabetical order by hand; `BTreeMap`s iterate
//! sorted), except the top level, which starts with `format:` so a reader can tell the
//! schema from the first line. Empty maps are `{}`; absent optionals are left out.
//!
//! Scalars are plain when that is unambiguous in every YAML version (1.1 and 1.2) and
//! double-quoted otherwise; see [`needs_quotes`]. The rule depends on the string alone,
//! so a value always has the same spelling.

use std::fmt::Write as _;

use cascade_core::Digest;

use crate::{format_for, Header, Lockfile, NodeView, SourceView};

/// YAML limits implicit (`key: value`) keys to 1024 characters; longer keys are written
/// as explicit `? key` entries. Kept below the limit to leave room for the quotes.
const MAX_IMPLICIT_KEY: usize = 1000;

/// Below this many nodes a lockfile is written on one thread.
const PARALLEL_NODES: usize = 256;

/// The lockfile as YAML text. Same value, same bytes.
pub fn write(lock: &Lockfile) -> String {
    let header = Header {
        key_format: lock.key_format,
        environment: &lock.environment,
        graph: lock.graph,
    };
    write_nodes(
        &header,
        lock.nodes
            .iter()
            .map(|(n, node)| (n.as_str(), node.view()))
            .collect(),
    )
}

/// The lockfile of `header` and `nodes` (by name; each name once), as [`write`] writes
/// the [`Lockfile`] of the same values: the same bytes.
pub fn write_nodes(header: &Header<'_>, nodes: Vec<(&str, NodeView<'_>)>) -> String {
    write_in(
        header,
        nodes,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

/// [`write_nodes`] on up to `threads` threads: each node's lines depend on that node
/// alone, so big lockfiles (800 KB at 1,000 nodes) are written in parts and joined in
/// order.
pub(crate) fn write_in(
    header: &Header<'_>,
    mut nodes: Vec<(&str, NodeView<'_>)>,
    threads: usize,
) -> String {
    // Names sort as the `nodes:` map of every lockfile does (a `BTreeMap`'s order).
    if !nodes.is_sorted_by(|a, b| a.0 <= b.0) {
        nodes.sort_by(|a, b| a.0.cmp(b.0));
    }
    let mut w = Writer::default();
    w.scalar(0, "format", format_for(header.key_format));
    w.scalar(0, "environment", header.environment);
    w.digest(0, "graph", &header.graph);
    w.open(0, "nodes", nodes.is_empty());
    let chunk = nodes.len().div_ceil(threads.max(1)).max(PARALLEL_NODES);
    let part = |nodes: &[(&str, NodeView<'_>)]| {
        // About 800 bytes a node.
        let mut w = Writer {
            out: String::with_capacity(nodes.len() * 1024),
        };
        for (name, node) in nodes {
            w.open(1, name, false);
            w.node(2, node);
        }
        w.out
    };
    let mut chunks = nodes.chunks(chunk);
    let first = chunks.next().unwrap_or_default();
    let parts: Vec<String> = std::thread::scope(|s| {
        let rest: Vec<_> = chunks.map(|c| s.spawn(move || part(c))).collect();
        // This thread writes the first part meanwhile: a small lockfile starts no thread.
        let mut parts = vec![part(first)];
        for h in rest {
            parts.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        parts
    });
    w.out
        .reserve(parts.iter().map(String::len).sum::<usize>() + 32);
    for p in parts {
        w.out.push_str(&p);
    }
    // Last, so that a file cut short anywhere lacks it.
    if crate::has_count(format_for(header.key_format)) {
        // A plain integer, unlike strings that look like one.
        let _ = writeln!(w.out, "{}: {}", crate::COUNT_FIELD, nodes.len());
    }
    w.out
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn node(&mut self, level: usize, node: &NodeView<'_>) {
        // Alphabetical, like every other map in the file.
        self.digest_map(level, "artifacts", node.artifacts.iter());
        if let Some(image) = &node.image {
            self.open(level, "image", false);
            self.scalar(level + 1, "digest", &image.digest);
            self.scalar(level + 1, "ref", image.reference);
            if let Some(spec) = &image.spec {
                self.digest(level + 1, "spec", spec);
            }
        }
        self.digest_map(level, "inputs", node.inputs.iter().map(|(n, d)| (n, &d.0)));
        self.digest(level, "key", &node.key.0);
        self.digest(level, "output", &node.output.0);
        self.digest(level, "recipe", &node.recipe);
        self.digest(level, "runner", &node.runner);
        self.open(level, "source", false);
        self.source(level + 1, &node.source);
        if !node.tests.is_empty() {
            self.open(level, "tests", false);
            for (name, result) in &node.tests {
                self.scalar(level + 1, name, result.as_str());
            }
        }
    }

    fn source(&mut self, level: usize, source: &SourceView<'_>) {
        self.scalar(level, "commit", source.commit);
        if let Some(dir) = source.dir {
            self.scalar(level, "dir", dir);
        }
        if let Some(r) = source.r#ref {
            self.scalar(level, "ref", r);
        }
        self.scalar(level, "repo", source.repo);
        self.scalar(level, "tree", source.tree);
        self.scalar(level, "version", &source.version);
    }

    fn digest_map<'d>(
        &mut self,
        level: usize,
        key: &str,
        map: impl ExactSizeIterator<Item = (&'d String, &'d Digest)>,
    ) {
        self.open(level, key, map.len() == 0);
        for (name, digest) in map {
            self.digest(level + 1, name, digest);
        }
    }

    /// `key: blake3:<hex>`, which is always plain (a letter first, the `:` inside).
    fn digest(&mut self, level: usize, key: &str, digest: &Digest) {
        self.key(level, key);
        self.out.push(' ');
        self.out.push_str(Digest::PREFIX);
        self.out.push_str(digest.hex_str(&mut [0; 64]));
        self.out.push('\n');
    }

    /// `key: value`.
    fn scalar(&mut self, level: usize, key: &str, value: &str) {
        self.key(level, key);
        self.out.push(' ');
        push_scalar(&mut self.out, value, false);
        self.out.push('\n');
    }

    /// `key:` followed by a nested map at `level + 1`, or `key: {}` when it is empty.
    fn open(&mut self, level: usize, key: &str, empty: bool) {
        self.key(level, key);
        self.out.push_str(if empty { " {}\n" } else { "\n" });
    }

    /// Writes the key up to and including its `:`.
    fn key(&mut self, level: usize, key: &str) {
        indent(&mut self.out, level);
        // Plain keys are ASCII: their length is their count of characters.
        if key.len() <= MAX_IMPLICIT_KEY && !needs_quotes(key, true) {
            self.out.push_str(key);
            self.out.push(':');
            return;
        }
        let mut rendered = String::new();
        push_scalar(&mut rendered, key, true);
        if rendered.chars().count() > MAX_IMPLICIT_KEY {
            self.out.push_str("? ");
            self.out.push_str(&rendered);
            self.out.push('\n');
            indent(&mut self.out, level);
        } else {
            self.out.push_str(&rendered);
        }
        self.out.push(':');
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

pub(crate) fn push_scalar(out: &mut String, s: &str, is_key: bool) {
    if needs_quotes(s, is_key) {
        push_quoted(out, s);
    } else {
        out.push_str(s);
    }
}

/// Whether `s` must be double-quoted. Plain only when it is made of characters that
/// mean nothing to YAML (ASCII letters, digits, `_ . / - + @ ~ = ,`, and `:` inside a
/// value), starts with a letter, digit, `_`, `.` or `/`, and does not read as anything
/// but a string: a bool or null of YAML 1.1 (`yes`, `off`, `null`, `~`…), a number, a
/// date or a special float. Anything else is quoted, so a misreading is impossible
/// whichever YAML version the reader implements.
pub(crate) fn needs_quotes(s: &str, is_key: bool) -> bool {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return true;
    };
    if !(first.is_ascii_alphanumeric() || matches!(first, b'_' | b'.' | b'/')) {
        return true;
    }
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_./-+@~=,".contains(&b);
    for (i, &b) in bytes.iter().enumerate() {
        // `a:b` is a plain scalar, `a: b` and `a:` are not; keys never contain `:`, to
        // keep `key: value` lines trivially split.
        let colon_ok = b == b':' && !is_key && i + 1 < bytes.len();
        if !(safe(b) || colon_ok) {
            return true;
        }
    }
    const WORDS: [&str; 10] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    if WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return true;
    }
    if first.is_ascii_digit() && looks_numeric(s) {
        return true;
    }
    // `.5`, `.inf`, `.NaN`.
    if first == b'.' {
        let rest = &s[1..];
        if rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
            || rest.eq_ignore_ascii_case("inf")
            || rest.eq_ignore_ascii_case("nan")
        {
            return true;
        }
    }
    false
}

/// Whether a string starting with a digit could be read as a number or a date by YAML
/// 1.1 or 1.2. Deliberately generous (YAML 1.1's float allows several dots, so `1.0.0`
/// is one), but a commit SHA such as `3f78…` stays plain.
fn looks_numeric(s: &str) -> bool {
    // YAML 1.1 allows `_` between digits in every kind of number.
    let t: std::borrow::Cow<str> = match s.contains('_') {
        true => s.chars().filter(|c| *c != '_').collect::<String>().into(),
        false => s.into(),
    };
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    // Integers, floats without exponent (any number of dots), sexagesimal `1:30:00`.
    if all(&t, |c| c.is_ascii_digit() || c == '.' || c == ':') {
        return true;
    }
    for (prefix, digit) in [
        ("0x", (|c: char| c.is_ascii_hexdigit()) as fn(char) -> bool),
        ("0o", |c: char| c.is_digit(8)),
        ("0b", |c: char| c == '0' || c == '1'),
    ] {
        if let Some(rest) = t
            .strip_prefix(prefix)
            .or_else(|| t.strip_prefix(&prefix.to_ascii_uppercase()[..]))
        {
            if all(rest, digit) {
                return true;
            }
        }
    }
    // Floats with an exponent: `1e3`, `1.5E-2`.
    if let Some((mantissa, exponent)) = t.split_once(['e', 'E']) {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if all(mantissa, |c| c.is_ascii_digit() || c == '.')
            && all(exponent, |c| c.is_ascii_digit())
        {
            return true;
        }
    }
    // Dates and timestamps: `2001-12-14`, `2001-12-14t21:59:43.10-05:00`.
    let b = t.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// A double-quoted scalar; everything outside YAML's printable set is escaped, and so
/// are tabs and line breaks, so the scalar is always one line.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if (c as u32) < 0x20 || ('\u{7f}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_or_quoted() {
        for plain in [
            "scratch",
            "develop",
            "feature/login",
            "0.2.1-dev.5",
            "blake3:0123abcd",
            "file:///srv/repo.git",
            "../../target/ecosystem/sdk.git",
            "out/bin/ottochain",
            "a7c3e1f",
            "3f786850e387550fdab836ed7e6dc881de23001b",
            "1a",
            "0xg",
            "1e",
            "12-34",
            "packages/sdk",
            "./x",
            "_private",
            "user@host",
        ] {
            assert!(!needs_quotes(plain, false), "{plain:?} should be plain");
        }
        for quoted in [
            "",
            " x",
            "x ",
            "a: b",
            "a:",
            "#x",
            "a #b",
            "\"q\"",
            "'q'",
            "-x",
            "?x",
            "[x",
            "]",
            "{x",
            "}",
            "!x",
            "*x",
            "&x",
            "|",
            ">",
            "%x",
            "@x",
            "`x",
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "true",
            "False",
            "null",
            "NULL",
            "~",
            "1.0",
            "1",
            "0x1",
            "0o17",
            "1e10",
            "1_000",
            "1:30",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            ".5",
            ".inf",
            ".NaN",
            "1.0.0",
            "a\nb",
            "tab\there",
            "é",
            "<<",
            "a,b c",
            "x\u{7f}",
            "0X1F",
            "0b101",
            "1.5E-2",
            "1e+3",
            "1__0",
            "190:20:30",
        ] {
            assert!(needs_quotes(quoted, false), "{quoted:?} should be quoted");
        }
        assert!(needs_quotes("blake3:0123", true), "keys never contain `:`");
    }

    #[test]
    fn escapes() {
        let mut out = String::new();
        push_quoted(&mut out, "a\"b\\c\nd\te\u{1}\u{85}\u{2028}\u{feff}é🦀");
        assert_eq!(out, r#""a\"b\\c\nd\te\x01\x85\L\uFEFFé🦀""#);
    }
}
