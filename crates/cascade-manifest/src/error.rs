//! The problems a user can have with their manifests. Every one names the file and
//! underlines the offending value; rendering is the CLI's business.

use std::fmt;
use std::sync::Arc;

use crate::model::DeclaredSource;
use miette::{Diagnostic, NamedSource, SourceSpan};

/// One problem in the manifests, with the file it is in and a label on the value.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::yaml))]
    Yaml {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// No snippet: quoting a file this large helps nobody.
    #[error("`{path}` is too large ({size} bytes; manifests are limited to {limit} bytes)")]
    #[diagnostic(code(cascade::manifest::too_large))]
    TooLarge {
        path: String,
        size: usize,
        limit: usize,
    },

    /// The rest of the file is still read, with the bad bytes shown as U+FFFD.
    #[error("`{path}` is not UTF-8 text")]
    #[diagnostic(
        code(cascade::read::utf8),
        help("manifests are UTF-8: save the file as UTF-8 (invalid bytes are shown as �)")
    )]
    NotUtf8 {
        path: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not UTF-8")]
        span: SourceSpan,
    },

    /// No snippet: the line is too long to quote (and for miette to draw labels on).
    #[error(
        "line {line} of `{path}` is too long ({len} bytes; manifest lines are limited to {limit} bytes)"
    )]
    #[diagnostic(code(cascade::manifest::too_large))]
    LineTooLong {
        path: String,
        line: usize,
        len: usize,
        limit: usize,
    },

    #[error("unknown field `{field}`")]
    #[diagnostic(code(cascade::manifest::unknown_field))]
    UnknownField {
        field: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("unknown field")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("missing field `{field}` in {context}")]
    #[diagnostic(code(cascade::manifest::missing_field))]
    MissingField {
        field: String,
        context: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
    },

    #[error("`{key}` is given twice")]
    #[diagnostic(
        code(cascade::manifest::duplicate_key),
        help("a key may appear only once in a mapping")
    )]
    DuplicateKey {
        key: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("given again here")]
        span: SourceSpan,
    },

    #[error("component `{name}` is defined twice")]
    #[diagnostic(
        code(cascade::manifest::duplicate_component),
        help("each component has one source; remove one of the two entries")
    )]
    DuplicateComponent {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("defined again here")]
        span: SourceSpan,
        #[label("first defined here")]
        first: SourceSpan,
    },

    #[error("`{name}` is listed twice in {what}")]
    #[diagnostic(code(cascade::manifest::duplicate))]
    Duplicate {
        name: String,
        what: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("listed again here")]
        span: SourceSpan,
        #[label("first listed here")]
        first: SourceSpan,
    },

    #[error("empty {what}")]
    #[diagnostic(code(cascade::manifest::empty))]
    Empty {
        what: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("empty")]
        span: SourceSpan,
    },

    #[error("unknown mode `{mode}`")]
    #[diagnostic(
        code(cascade::manifest::bad_mode),
        help("the mode is `branch` (sources follow refs) or `version` (sources pin versions)")
    )]
    BadMode {
        mode: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not `branch` or `version`")]
        span: SourceSpan,
    },

    #[error("environment file `{file}` names environment `{name}`")]
    #[diagnostic(
        code(cascade::manifest::environment_name),
        help("`--env {stem}` reads `{file}`, and its lockfiles are named after `{stem}`; make the two agree")
    )]
    EnvironmentName {
        name: String,
        stem: String,
        file: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("expected `{stem}`")]
        span: SourceSpan,
    },

    #[error("`{name}` is not a valid {what} name")]
    #[diagnostic(
        code(cascade::manifest::bad_name),
        help("{what} names use lowercase letters, digits, `-`, `_` and `.`, and start with a letter or a digit")
    )]
    BadName {
        name: String,
        what: &'static str,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("invalid name")]
        span: SourceSpan,
    },

    #[error(
        "source `{component}` has `{field}:` but environment `{environment}` is in {mode} mode"
    )]
    #[diagnostic(code(cascade::manifest::rev_mode))]
    WrongRev {
        component: String,
        field: &'static str,
        environment: String,
        mode: &'static str,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not allowed in {mode} mode")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("source `{component}` has both `ref:` and `version:`")]
    #[diagnostic(
        code(cascade::manifest::rev_mode),
        help("give exactly one: `ref:` in branch mode, `version:` in version mode")
    )]
    BothRevs {
        component: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("a ref")]
        ref_span: SourceSpan,
        #[label("and a version")]
        version_span: SourceSpan,
    },

    #[error("`{value}` is not a valid version: {reason}")]
    #[diagnostic(
        code(cascade::manifest::bad_version),
        help("write a semver version like `4.0.0` or `v4.0.0`")
    )]
    BadVersion {
        value: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("invalid version")]
        span: SourceSpan,
    },

    #[error("`{value}` is not a valid version range: {reason}")]
    #[diagnostic(
        code(cascade::manifest::bad_range),
        help("write comparators separated by spaces or commas, like `>=0.5.0 <1.0.0`")
    )]
    BadRange {
        value: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("invalid range")]
        span: SourceSpan,
    },

    #[error("invalid {what} `{path}`: {reason}")]
    #[diagnostic(code(cascade::manifest::bad_path))]
    BadPath {
        what: &'static str,
        path: String,
        reason: &'static str,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{reason}")]
        span: SourceSpan,
        #[help]
        help: &'static str,
    },

    #[error("`{value}` is not a valid timeout")]
    #[diagnostic(
        code(cascade::manifest::bad_timeout),
        help(
            "write a positive number followed by `s`, `m` or `h`, like `30s`, `5m`, `1h` or `1m30s`; a bare number means seconds"
        )
    )]
    BadTimeout {
        value: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("invalid timeout")]
        span: SourceSpan,
    },

    #[error("`{name}` is not a valid environment variable name")]
    #[diagnostic(
        code(cascade::manifest::bad_env),
        help("use ASCII letters, digits and `_`, not starting with a digit")
    )]
    BadEnvName {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("invalid name")]
        span: SourceSpan,
    },

    #[error("the value of `{name}` contains a NUL character")]
    #[diagnostic(code(cascade::manifest::bad_env))]
    BadEnvValue {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("a process environment cannot hold this")]
        span: SourceSpan,
    },

    #[error("`{name}` is set by cascade and cannot be declared")]
    #[diagnostic(
        code(cascade::manifest::reserved_env),
        help(
            "cascade itself sets `PATH`, `HOME`, `TMPDIR`, `SOURCE_DATE_EPOCH`, `TZ`, `LC_ALL` and every `CASCADE_*` variable"
        )
    )]
    ReservedEnv {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("reserved")]
        span: SourceSpan,
    },

    #[error("`{tool}` is not a tool name")]
    #[diagnostic(
        code(cascade::manifest::bad_tool),
        help("tools are bare command names that cascade finds on PATH, like `sh` or `cc`")
    )]
    BadTool {
        tool: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{reason}")]
        span: SourceSpan,
        reason: &'static str,
    },

    /// An environment's `registry:`, `tag:` or `remote_cache:` that cannot work: checked
    /// when the manifests load, not after a build.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::environment_value))]
    BadEnvironmentValue {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A value that must be a string is a number, a boolean or null.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::not_a_string))]
    NotAString {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a string")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    /// A recipe's `stamp:` or `source:` value that means nothing.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::recipe_value))]
    BadRecipeValue {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A recipe's `runner:` that cannot run its steps.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::runner))]
    BadRunner {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A value of a recipe's `image:` that cannot make an image.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::image))]
    BadImage {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A value of a recipe's `tests:` that cannot make a smoke test.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::test))]
    BadTest {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    /// A value of an environment's `deploy:` that cannot run a container.
    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::deploy))]
    BadDeploy {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
        /// The other place, for a clash (a port or a container name used twice).
        #[label("also here")]
        other: Option<SourceSpan>,
    },

    #[error("recipe `{component}` has no {what}")]
    #[diagnostic(code(cascade::manifest::empty_list))]
    EmptyList {
        component: String,
        what: &'static str,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("at least one is required")]
        span: SourceSpan,
    },

    #[error("component `{component}` has no recipe")]
    #[diagnostic(code(cascade::manifest::missing_recipe))]
    MissingRecipe {
        component: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("defined here")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("unknown component `{input}` in the inputs of `{component}`")]
    #[diagnostic(code(cascade::manifest::unknown_input))]
    UnknownInput {
        input: String,
        component: String,
        environment: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a component of environment `{environment}`")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` requires a version of itself in the compatibility matrix")]
    #[diagnostic(
        code(cascade::manifest::self_compat),
        help(
            "a rule says which versions of an upstream `{name}` works with: name another component"
        )
    )]
    SelfCompat {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("the component itself")]
        span: SourceSpan,
    },

    #[error("unknown component `{name}` in the compatibility matrix")]
    #[diagnostic(code(cascade::manifest::unknown_compat_component))]
    UnknownCompatComponent {
        name: String,
        environment: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a component of environment `{environment}`")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("dependency cycle: {cycle}")]
    #[diagnostic(code(cascade::manifest::cycle))]
    Cycle {
        cycle: String,
        from: String,
        to: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("`{from}` needs `{to}`")]
        span: SourceSpan,
        #[related]
        edges: Vec<ManifestError>,
        #[help]
        help: String,
    },

    #[error("…and `{from}` needs `{to}`")]
    #[diagnostic(code(cascade::manifest::cycle))]
    CycleEdge {
        from: String,
        to: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("`{from}` needs `{to}`")]
        span: SourceSpan,
    },

    #[error("`{upstream}` {version} does not satisfy `{range}`, required by `{component}`")]
    #[diagnostic(code(cascade::manifest::incompatible))]
    Incompatible {
        upstream: String,
        version: String,
        range: String,
        component: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("`{component}` needs `{upstream}` in this range, found {version}")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("…and {more} more problems, not shown")]
    #[diagnostic(
        code(cascade::manifest::too_many),
        help("fix the problems above and run again")
    )]
    TooMany { more: usize },

    #[error("{message}")]
    #[diagnostic(code(cascade::manifest::unknown_ref))]
    UnknownRef {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not found")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },
}

/// Every problem found in one run; empty means success (and is never returned as an
/// error). Renders as a summary line followed by each problem.
#[derive(Debug)]
pub struct Diagnostics(pub Vec<ManifestError>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.len() {
            1 => write!(f, "1 problem in the manifests"),
            n => write!(f, "{n} problems in the manifests"),
        }
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostic for Diagnostics {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("cascade::manifest"))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.0.iter().map(|e| e as &dyn Diagnostic)))
    }
}

impl Diagnostics {
    /// At most this many problems are kept; the rest are counted.
    pub const LIMIT: usize = 100;

    /// Keeps the first [`Self::LIMIT`] problems and counts the others.
    pub(crate) fn capped(mut all: Vec<ManifestError>) -> Self {
        if all.len() > Self::LIMIT {
            let more = all.len() - Self::LIMIT;
            all.truncate(Self::LIMIT);
            all.push(ManifestError::TooMany { more });
        }
        Diagnostics(all)
    }
}

impl From<ManifestError> for Diagnostics {
    fn from(e: ManifestError) -> Self {
        Diagnostics(vec![e])
    }
}

/// Manifests that did not resolve: every problem, and the environment's sources whose
/// entries are valid, so that the caller can pin them and report their problems (a
/// branch that does not exist, a repository that is not there) in the same run.
#[derive(Debug)]
pub struct Unresolved {
    pub diagnostics: Diagnostics,
    /// In the environment's order; empty when the environment itself did not parse.
    pub sources: Vec<DeclaredSource>,
}

impl From<Diagnostics> for Unresolved {
    fn from(diagnostics: Diagnostics) -> Self {
        Unresolved {
            diagnostics,
            sources: Vec::new(),
        }
    }
}

impl IntoIterator for Diagnostics {
    type Item = ManifestError;
    type IntoIter = std::vec::IntoIter<ManifestError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
