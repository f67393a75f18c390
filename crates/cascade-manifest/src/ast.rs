//! What the user wrote: the YAML files deserialized with serde-saphyr into structs whose
//! every value keeps its location. Fields are all optional here so that a missing one
//! becomes our own diagnostic (pointing at the right place) rather than a parser error;
//! unknown fields are rejected by the parser, which points at the offending key. After
//! such an error, `crate::tree` reads the file on, so every problem of it is reported.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

use cascade_core::FileId;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{DuplicateKeyPolicy, Error as YamlError, Location, MessageFormatter, Spanned};

use crate::error::ManifestError;
use crate::source::{clamp, source_span, span_of, FileProblem};
use crate::tree::{self, Problem};
use crate::SourceDb;

/// A value and where it is. Read through serde-saphyr's `Spanned` normally, and from
/// the located tree (`crate::tree`) when a file is read again to keep going after an
/// error.
#[derive(Debug)]
pub(crate) struct S<T> {
    pub value: T,
    pub referenced: Location,
    pub defined: Location,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for S<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FromTree<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FromTree<T> {
            type Value = S<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a located value")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<S<T>, D::Error> {
                // Taken before the value is read: the value's own fields set it again.
                let (referenced, defined) = tree::take_location();
                T::deserialize(d).map(|value| S {
                    value,
                    referenced,
                    defined,
                })
            }
        }
        if tree::active() {
            d.deserialize_newtype_struct(tree::LOCATED, FromTree(PhantomData))
        } else {
            Spanned::<T>::deserialize(d).map(|s| S {
                value: s.value,
                referenced: s.referenced,
                defined: s.defined,
            })
        }
    }
}

/// A mapping kept as written: every entry in order, duplicates included, each key with
/// its location. Duplicate keys are ours to report (with both places).
#[derive(Debug)]
pub(crate) struct Entries<V>(pub Vec<(S<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// `graph/environments/<env>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvironmentAst {
    pub name: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub registry: Option<S<String>>,
    pub tag: Option<S<String>>,
    pub remote_cache: Option<S<String>>,
    pub remote: Option<S<String>>,
    pub sign: Option<S<String>>,
    pub require_signature: Option<S<RequireSignatureAst>>,
    /// Webhook URLs that receive a JSON event per release, promotion, failed build and
    /// deploy.
    pub notify: Option<S<Vec<S<String>>>>,
    pub sources: Option<S<Entries<S<SourceAst>>>>,
    pub deploy: Option<S<DeployAst>>,
}

/// An environment's `deploy:` (checked in `resolve/deploy.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployAst {
    pub engine: Option<S<String>>,
    pub hosts: Option<S<Entries<S<String>>>>,
    pub max_unavailable: Option<S<i64>>,
    pub components: Option<S<Entries<S<DeployComponentAst>>>>,
}

/// Where a secret's value is read at deploy time: exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretAst {
    pub env: Option<S<String>>,
    pub file: Option<S<String>>,
}

/// One deployed component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployComponentAst {
    pub container: Option<S<String>>,
    pub ports: Option<S<Vec<S<String>>>>,
    pub env: Option<S<Entries<S<String>>>>,
    pub volumes: Option<S<Vec<S<String>>>>,
    pub restart: Option<S<String>>,
    pub replicas: Option<S<i64>>,
    pub health: Option<S<HealthAst>>,
    pub hosts: Option<S<Vec<S<String>>>>,
    pub secrets: Option<S<Entries<S<SecretAst>>>>,
}

/// A deployed component's health check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthAst {
    pub http: Option<S<HttpAst>>,
    pub command: Option<S<Vec<S<String>>>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub start_period: Option<S<String>>,
}

/// One entry of an environment's `sources:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceAst {
    pub repo: Option<S<String>>,
    #[serde(rename = "ref")]
    pub git_ref: Option<S<String>>,
    pub version: Option<S<String>>,
    pub dir: Option<S<String>>,
    pub version_tags: Option<S<String>>,
}

/// `graph/compatibility.yaml`: component → upstream → range.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompatibilityAst {
    pub compatibility: Option<S<Entries<S<Rules>>>>,
}

/// One component's rules: upstream → range.
pub(crate) type Rules = Entries<S<String>>;

/// `recipes/<component>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecipeAst {
    pub inputs: Option<S<Vec<S<String>>>>,
    pub runner: Option<S<RunnerAst>>,
    pub env: Option<S<Entries<S<String>>>>,
    pub timeout: Option<S<String>>,
    pub steps: Option<S<Vec<S<StepAst>>>>,
    pub outputs: Option<S<Vec<S<String>>>>,
    pub image: Option<S<ImageAst>>,
    pub tests: Option<S<Entries<S<TestAst>>>>,
    pub stamp: Option<S<Vec<S<String>>>>,
    pub source: Option<S<FilterAst>>,
    /// The changelog file `release tag` writes, relative to the source's `dir:`.
    pub changelog: Option<S<String>>,
}

/// A recipe's `source:`: which files of the source matter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterAst {
    pub include: Option<S<Vec<S<String>>>>,
    pub exclude: Option<S<Vec<S<String>>>>,
}

/// A recipe's `image:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageAst {
    pub base: Option<S<String>>,
    pub layers: Option<S<Vec<S<LayerAst>>>>,
    pub entrypoint: Option<S<Vec<S<String>>>>,
    pub cmd: Option<S<Vec<S<String>>>>,
    pub env: Option<S<Entries<S<String>>>>,
    pub workdir: Option<S<String>>,
    pub ports: Option<S<Vec<S<i64>>>>,
    pub user: Option<S<String>>,
    pub labels: Option<S<Entries<S<String>>>>,
}

/// One entry of `image.layers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayerAst {
    pub from: Option<S<String>>,
    pub to: Option<S<String>>,
    pub mode: Option<S<String>>,
}

/// One entry of a recipe's `tests:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestAst {
    pub http: Option<S<HttpAst>>,
    pub command: Option<S<Vec<S<String>>>>,
    pub expect: Option<S<ExpectAst>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpAst {
    pub port: Option<S<i64>>,
    pub path: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectAst {
    pub status: Option<S<i64>>,
    pub body_contains: Option<S<String>>,
    pub exit_code: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunnerAst {
    pub host: Option<S<HostAst>>,
    pub container: Option<S<ContainerAst>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostAst {
    pub tools: Option<S<Vec<S<String>>>>,
    pub sets: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContainerAst {
    pub image: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepAst {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<S<Scalar>>,
    #[serde(default, deserialize_with = "present")]
    pub run: Option<S<Scalar>>,
}

/// A value where a string is wanted, as YAML read it: `run: 42` is a number and
/// `run: true` a boolean, not the strings `"42"` and `"true"` (which would run as
/// commands of those names), and `run: ~` is there but null, not missing. The resolver
/// says which, on the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    /// A number, a boolean or null: what it is, for the message.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("null"))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("null"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `require_signature:` as written: the public keys whose signature promote and deploy
/// require, or a boolean (`false` turns it off; `true` is a diagnostic, since it names
/// no key to check against).
#[derive(Debug)]
pub(crate) enum RequireSignatureAst {
    Bool(bool),
    Keys(Vec<S<String>>),
}

impl<'de> Deserialize<'de> for RequireSignatureAst {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RequireSignatureAst;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of public key files")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RequireSignatureAst::Bool(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element::<S<String>>()? {
                    keys.push(k);
                }
                Ok(RequireSignatureAst::Keys(keys))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field that is there, whatever its value (`~` included): `Some`. Absent fields get
/// `None` from `#[serde(default)]`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<S<Scalar>>, D::Error> {
    S::<Scalar>::deserialize(d).map(Some)
}

/// Manifests are small; anything bigger is a mistake (or an attack).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Long enough for any script line; short enough for a diagnostic to draw.
pub(crate) const MAX_LINE_BYTES: usize = 10_000;

const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 100_000;
const MAX_ALIASES: usize = 1_000;

fn options(duplicate_keys: DuplicateKeyPolicy) -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_events: 4 * MAX_NODES,
            max_nodes: MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_total_scalar_bytes: MAX_FILE_BYTES,
        },
        // Duplicates reach our `Entries` so we can point at both; derived structs
        // still reject a repeated field.
        duplicate_keys: duplicate_keys,
        with_snippet: false,
        reject_unsupported_tags: true,
    }
}

/// Parse one file, recording every problem in `diags`: `None` when nothing usable came
/// out. After a structural error the file is read again into a located tree and the
/// parts that do not fit are left out (see `crate::tree`), so the rest of the file is
/// still checked; the fields left out that way go into `cut`, so that the resolver does
/// not report them missing as well.
pub(crate) fn parse<T: DeserializeOwned>(
    db: &SourceDb,
    file: FileId,
    diags: &mut Vec<ManifestError>,
    cut: &mut BTreeSet<(FileId, String)>,
) -> Option<T> {
    let text = db.text(file);
    match db.problem(file) {
        Some(FileProblem::TooLarge { size }) => {
            diags.push(ManifestError::TooLarge {
                path: db.path(file).to_string(),
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: MAX_FILE_BYTES,
            });
            return None;
        }
        // One problem, and the rest of the file is still read (the bad bytes are
        // U+FFFD, which YAML reads as text).
        Some(FileProblem::NotUtf8 { at }) => diags.push(ManifestError::NotUtf8 {
            path: db.path(file).to_string(),
            src: db.shared_source(file),
            span: source_span(clamp(text, file, at, '\u{FFFD}'.len_utf8())),
        }),
        None => {}
    }
    if text.len() > MAX_FILE_BYTES {
        diags.push(ManifestError::TooLarge {
            path: db.path(file).to_string(),
            size: text.len(),
            limit: MAX_FILE_BYTES,
        });
        return None;
    }
    // Labels far to the right of a line are more than a renderer can draw (miette's
    // padding overflows), and no sane manifest has such lines.
    if let Some((i, line)) = text
        .split('\n')
        .enumerate()
        .find(|(_, l)| l.len() > MAX_LINE_BYTES)
    {
        diags.push(ManifestError::LineTooLong {
            path: db.path(file).to_string(),
            line: i + 1,
            len: line.len(),
            limit: MAX_LINE_BYTES,
        });
        return None;
    }
    let first = match serde_saphyr::from_str_with_options::<T>(
        text,
        options(DuplicateKeyPolicy::PassThrough),
    ) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    // The tree has no types to get wrong: if it does not read either, the YAML itself
    // is broken (or over budget), and that is the one problem of this file.
    let tree = match serde_saphyr::from_str_with_options::<tree::Node>(
        text,
        options(DuplicateKeyPolicy::PassThrough),
    ) {
        Ok(t) => t,
        Err(e) => {
            let a = yaml_error::<T>(db, file, &first);
            let b = yaml_error::<T>(db, file, &e);
            let same = a.to_string() == b.to_string()
                && miette::Diagnostic::labels(&a)
                    .map(|l| l.map(|l| *l.inner()).collect::<Vec<_>>())
                    == miette::Diagnostic::labels(&b)
                        .map(|l| l.map(|l| *l.inner()).collect::<Vec<_>>());
            diags.push(a);
            if !same {
                diags.push(b);
            }
            return None;
        }
    };
    let (ast, problems) = tree::recover::<T>(&tree, text);
    if problems.is_empty() {
        // The two readings disagree (they should not): the parser's word stands.
        diags.push(yaml_error::<T>(db, file, &first));
        return None;
    }
    for p in problems {
        diags.push(problem(db, file, p, cut));
    }
    ast
}

/// A problem found in the tree, as the diagnostic the direct reading would have given.
fn problem(
    db: &SourceDb,
    file: FileId,
    p: Problem,
    cut: &mut BTreeSet<(FileId, String)>,
) -> ManifestError {
    let text = db.text(file);
    match p {
        Problem::UnknownField {
            field,
            expected,
            at,
        } => {
            let expected = expected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            ManifestError::UnknownField {
                field,
                src: db.shared_source(file),
                span: source_span(span_of(text, file, &at)),
                help: Some(format!("expected one of {expected}")),
            }
        }
        Problem::DuplicateField { field, at } => ManifestError::DuplicateKey {
            key: field,
            src: db.shared_source(file),
            span: source_span(span_of(text, file, &at)),
        },
        Problem::WrongType { message, at, field } => {
            if let Some(f) = field {
                cut.insert((file, f));
            }
            let message = message.trim_end_matches('.');
            ManifestError::Yaml {
                message: match message {
                    "expected sequence start" => "expected a list".to_string(),
                    "expected mapping start" => "expected a mapping of `key: value`".to_string(),
                    m => first_lowercase(m),
                },
                src: db.shared_source(file),
                span: source_span(span_of(text, file, &at)),
                label: "here".into(),
                help: None,
            }
        }
    }
}

fn yaml_error<T: DeserializeOwned>(db: &SourceDb, file: FileId, err: &YamlError) -> ManifestError {
    let text = db.text(file);
    let loc = err.location().unwrap_or(Location::UNKNOWN);
    let span = span_of(text, file, &loc);
    let mut inner = err;
    // An error met while expanding an alias comes wrapped; the cause is inside.
    while let YamlError::AliasError { error, .. } | YamlError::WithSnippet { error, .. } = inner {
        inner = error;
    }
    match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let expected = expected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let help = format!("expected one of {expected}");
            ManifestError::UnknownField {
                field: field.clone(),
                src: db.shared_source(file),
                span: source_span(span),
                help: Some(help),
            }
        }
        YamlError::Message { msg, .. } if msg.starts_with("duplicate field `") => {
            // A repeated field of a derived struct: serde does not say where the
            // repetition is. Parsing again with duplicates forbidden finds it.
            let key = msg
                .trim_start_matches("duplicate field `")
                .trim_end_matches('`')
                .to_string();
            let again =
                serde_saphyr::from_str_with_options::<T>(text, options(DuplicateKeyPolicy::Error));
            let span = match again {
                Err(e) => match e.without_snippet() {
                    YamlError::DuplicateMappingKey {
                        key: Some(k),
                        location,
                    } if *k == key => span_of(text, file, location),
                    _ => span,
                },
                Ok(_) => span,
            };
            ManifestError::DuplicateKey {
                key,
                src: db.shared_source(file),
                span: source_span(span),
            }
        }
        // The parser's own recursion guard (deep nesting spread over many lines trips
        // it before our depth budget) is the same limit, said the same way.
        e if matches!(e, YamlError::Budget { .. })
            || matches!(e, YamlError::ExternalMessage { msg, .. } if msg.contains("recursion limit")) =>
        {
            ManifestError::Yaml {
            message: "the YAML is too large or too complex for a manifest".into(),
            src: db.shared_source(file),
            span: source_span(span),
            label: "the limit is reached here".into(),
            help: Some(format!(
                "a manifest nests at most {MAX_DEPTH} levels deep and holds at most {MAX_NODES} values and {MAX_ALIASES} aliases"
            )),
            }
        }
        other => {
            // The parser's text may quote the input: keep control characters out of
            // the terminal.
            let message: String = serde_saphyr::UserMessageFormatter
                .format_message(other)
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_debug().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect();
            let message = message.trim_end_matches('.');
            let syntax = matches!(other, YamlError::ExternalMessage { .. });
            let message = if syntax {
                format!("malformed YAML: {message}")
            } else {
                match message {
                    "expected sequence start" => "expected a list".to_string(),
                    "expected mapping start" => "expected a mapping of `key: value`".to_string(),
                    m => first_lowercase(m),
                }
            };
            let help = (!syntax && loc == Location::UNKNOWN)
                .then(|| "the parser could not tell where; check the whole file".to_string());
            // An empty span at the very end of the text has nothing to underline:
            // widen it to the last character so the label shows.
            let span = if span.len == 0 && span.offset >= text.len() && !text.is_empty() {
                clamp(text, file, text.len().saturating_sub(1), 1)
            } else {
                span
            };
            ManifestError::Yaml {
                message,
                src: db.shared_source(file),
                span: source_span(span),
                label: "here".into(),
                help,
            }
        }
    }
}

/// Messages are lowercase fragments, but acronyms (`YAML`) stay as they are.
fn first_lowercase(s: &str) -> String {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(a), Some(b)) if !b.is_uppercase() => a.to_lowercase().chain([b]).chain(c).collect(),
        _ => s.to_string(),
    }
}
