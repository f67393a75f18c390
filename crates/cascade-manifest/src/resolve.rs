//! AST → model: every field checked, every problem collected, the graph ordered.

mod deploy;
mod image;
mod runner;
mod stamp;

pub use image::DEFAULT_TEST_TIMEOUT;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cascade_core::{FileId, Span};
use miette::NamedSource;

use crate::ast::{
    parse, CompatibilityAst, DeployAst, Entries, EnvironmentAst, RecipeAst, RequireSignatureAst,
    Scalar, SourceAst, StepAst, S,
};
use crate::error::{Diagnostics, ManifestError, Unresolved};
use crate::model::{
    Component, Constraint, DeclaredSource, Environment, Graph, KeyLocation, Mode, Recipe, Rev,
    SourceSpec, Step,
};
use crate::range::VersionRange;
use crate::source::{source_span, span_of};
use crate::SourceDb;

/// Which files make up a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectFiles {
    pub environment: FileId,
    pub compatibility: Option<FileId>,
    /// Every `recipes/*.yaml`, by component name (the file stem), sorted by name.
    pub recipes: Vec<(String, FileId)>,
}

/// Parses recipe files in parallel; each result keeps its own diagnostics.
type Parsed = (
    Option<RecipeAst>,
    Vec<ManifestError>,
    BTreeSet<(FileId, String)>,
);

fn parse_all(db: &SourceDb, files: &[FileId]) -> BTreeMap<FileId, Parsed> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&f| {
                            let mut diags = Vec::new();
                            let mut cut = BTreeSet::new();
                            let ast = parse::<RecipeAst>(db, f, &mut diags, &mut cut);
                            (f, (ast, diags, cut))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A parser thread that panicked leaves its files out; they are parsed again
        // on this thread, where the panic shows as the bug it is.
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .flatten()
            .collect()
    })
}

/// One recipe file on its own (for recovering an old recipe from history): every input
/// it names counts as a component. `None` when it does not parse or validate.
pub fn recipe_alone(db: &SourceDb, file: FileId, component: &str) -> Option<Recipe> {
    let mut r = Resolver {
        db,
        diags: Vec::new(),
        cut: BTreeSet::new(),
    };
    let ast: RecipeAst = parse(db, file, &mut r.diags, &mut r.cut)?;
    let mut names: BTreeSet<String> = ast
        .inputs
        .iter()
        .flat_map(|l| l.value.iter().map(|i| i.value.clone()))
        .collect();
    if let Some(base) = ast.image.as_ref().and_then(|i| i.value.base.as_ref()) {
        names.insert(base.value.clone());
    }
    if let Some(image) = ast
        .runner
        .as_ref()
        .and_then(|r| r.value.container.as_ref())
        .and_then(|c| c.value.image.as_ref())
    {
        names.insert(image.value.clone());
    }
    names.insert(component.to_string());
    let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let node = r.recipe(component, file, ast, &names, "?");
    if r.diags.is_empty() {
        node.recipe
    } else {
        None
    }
}

/// Parse and validate everything; collect every problem. On failure the environment's
/// valid sources come with the problems, so they can still be pinned.
pub fn resolve(db: &SourceDb, files: &ProjectFiles) -> Result<Graph, Unresolved> {
    let mut r = Resolver {
        db,
        diags: Vec::new(),
        cut: BTreeSet::new(),
    };
    let env_ast: Option<EnvironmentAst> = parse(db, files.environment, &mut r.diags, &mut r.cut);
    let compat = files
        .compatibility
        .and_then(|f| parse::<CompatibilityAst>(db, f, &mut r.diags, &mut r.cut).map(|a| (f, a)));
    let Some(env_ast) = env_ast else {
        // Without the environment we know neither the components nor which recipes
        // matter; the compatibility file's syntax has been checked above.
        return Err(Diagnostics::capped(r.diags).into());
    };
    let mut env = r.environment(files.environment, env_ast);
    let names: BTreeSet<&str> = env.sources.iter().map(|s| s.name.as_str()).collect();
    let mut nodes = r.recipes(files, &env.sources, &names, &env.name);

    let constraints = match compat {
        Some((file, ast)) => r.compatibility(file, ast, &names, &env.name),
        None => Vec::new(),
    };

    r.image_bases(&mut nodes, &names, &env.name);
    r.runner_images(&mut nodes, &names, &env.name);
    let order = r.order(&nodes);
    let deploy = match env.deploy.take() {
        Some(d) => r.deploy(files.environment, d, &env.name, &nodes),
        None => None,
    };

    if !r.diags.is_empty() {
        return Err(env.unresolved(r.diags));
    }
    // No diagnostics: every field is present and valid.
    let (Some(mode), Some(specs)) = (env.mode, env.complete_specs()) else {
        return Err(env.unresolved(r.diags));
    };
    let components = components(&order, nodes, &specs);
    Ok(Graph {
        environment: Environment {
            name: env.name,
            mode,
            registry: env.registry,
            tag: env.tag,
            remote_cache: env.remote_cache,
            remote: env.remote,
            sign: env.sign,
            require_signature: env.require_signature,
            notify: env.notify,
            deploy,
            file: files.environment,
        },
        components,
        compatibility: constraints,
    })
}

/// The checked nodes in build `order` as components, their edges as indices.
fn components<'n>(
    order: &[&'n str],
    mut nodes: BTreeMap<&'n str, Node>,
    specs: &BTreeMap<&str, &SourceSpec>,
) -> Vec<Component> {
    let index: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut components = Vec::with_capacity(order.len());
    for name in order {
        let (Some(node), Some(spec)) = (nodes.remove(name), specs.get(name)) else {
            continue;
        };
        let Some(recipe) = node.recipe else { continue };
        let inputs = recipe
            .inputs
            .iter()
            .filter_map(|i| index.get(i.as_str()).copied())
            .collect();
        let image_base = node
            .image_base
            .as_ref()
            .and_then(|(b, _)| index.get(b.as_str()).copied());
        let runner_image = node
            .runner_image
            .as_ref()
            .and_then(|(b, _)| index.get(b.as_str()).copied());
        components.push(Component {
            name: name.to_string(),
            source: (*spec).clone(),
            recipe,
            recipe_file: node.file,
            inputs,
            image_base,
            runner_image,
            tool_spans: node.tool_spans,
        });
    }
    components
}

struct Resolver<'a> {
    db: &'a SourceDb,
    diags: Vec<ManifestError>,
    /// Fields whose value was of the wrong type and left out when the file was read:
    /// already reported, so not missing as well.
    cut: BTreeSet<(FileId, String)>,
}

struct EnvChecked {
    name: String,
    mode: Option<Mode>,
    registry: Option<String>,
    tag: Option<String>,
    remote_cache: Option<String>,
    remote: Option<String>,
    sign: Option<KeyLocation>,
    require_signature: Vec<String>,
    notify: Vec<String>,
    sources: Vec<SourceChecked>,
    /// Checked once the recipes are (a deployed component needs an image).
    deploy: Option<S<DeployAst>>,
}

impl EnvChecked {
    /// `diags`, with the sources whose entries are valid.
    fn unresolved(&self, diags: Vec<ManifestError>) -> Unresolved {
        let sources = self
            .sources
            .iter()
            .filter_map(|s| {
                s.spec.as_ref().map(|spec| DeclaredSource {
                    component: s.name.clone(),
                    spec: spec.clone(),
                })
            })
            .collect();
        Unresolved {
            diagnostics: Diagnostics::capped(diags),
            sources,
        }
    }

    fn complete_specs(&self) -> Option<BTreeMap<&str, &SourceSpec>> {
        self.sources
            .iter()
            .map(|s| s.spec.as_ref().map(|spec| (s.name.as_str(), spec)))
            .collect()
    }
}

struct SourceChecked {
    name: String,
    name_span: Span,
    spec: Option<SourceSpec>,
}

/// A component's recipe as far as it could be checked.
struct Node {
    file: FileId,
    recipe: Option<Recipe>,
    /// Inputs that are components of the environment, each once, with where they are
    /// written, the component its image is based on and the one whose image its steps
    /// run in: the graph's edges.
    edges: Vec<(String, Span)>,
    /// `image.base` when it names a component, with where.
    image_base: Option<(String, Span)>,
    /// `runner.container.image` when it names a component, with where.
    runner_image: Option<(String, Span)>,
    /// Where each of `runner.host.tools` is written.
    tool_spans: BTreeMap<String, Span>,
}

impl Node {
    fn failed(file: FileId) -> Self {
        Node {
            file,
            recipe: None,
            edges: Vec::new(),
            image_base: None,
            runner_image: None,
            tool_spans: BTreeMap::new(),
        }
    }
}

/// The inputs of `n` that are components.
fn inputs_of<'m>(nodes: &'m BTreeMap<&str, Node>, n: &str) -> BTreeSet<&'m str> {
    nodes
        .get(n)
        .map(|node| node.edges.iter().map(|(i, _)| i.as_str()).collect())
        .unwrap_or_default()
}

fn file_start(file: FileId) -> Span {
    Span::new(file, 0, 0)
}

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The placeholders of an image tag template (`cascade::image::reference` fills them).
pub const TAG_PLACEHOLDERS: &[&str] =
    &["{ref}", "{short_sha}", "{sha}", "{version}", "{component}"];

/// What is wrong with a `tag:` template: a brace that opens no known placeholder.
fn tag_problem(tag: &str) -> Option<(String, &'static str, String)> {
    let help = format!("the placeholders are {}", TAG_PLACEHOLDERS.join(", "));
    let mut rest = tag;
    while let Some(i) = rest.find(['{', '}']) {
        let at = &rest[i..];
        match TAG_PLACEHOLDERS.iter().find(|p| at.starts_with(**p)) {
            Some(p) => rest = &at[p.len()..],
            None => {
                let what: String = at
                    .chars()
                    .take_while(|c| *c != '}')
                    .chain(Some('}'))
                    .collect();
                let what = if at.starts_with('}') {
                    "}".to_string()
                } else {
                    what
                };
                return Some((
                    format!("`tag` has `{what}`, which is not a placeholder"),
                    "unknown placeholder",
                    help,
                ));
            }
        }
    }
    None
}

/// What is wrong with a `version_tags:` pattern: it needs `{version}` once, and the
/// rest must be something a tag name can hold (git's ref-name rules).
fn version_tags_problem(pattern: &str) -> Option<(String, &'static str, String)> {
    let help = "write the tag with `{version}` where the version goes, like `web-v{version}`; the default is `v{version}`".to_string();
    let count = pattern.matches("{version}").count();
    if count != 1 {
        return Some((
            format!(
                "`version_tags` needs `{{version}}` exactly once; `{pattern}` has it {count} times"
            ),
            "no single `{version}`",
            help,
        ));
    }
    let rest = pattern.replace("{version}", "");
    let bad = rest
        .chars()
        .find(|c| c.is_control() || " ~^:?*[\\{}".contains(*c));
    if bad.is_some() || rest.contains("..") || pattern.starts_with(['/', '-', '.']) {
        return Some((
            format!("`{pattern}` cannot name a git tag"),
            "not a tag name",
            help,
        ));
    }
    None
}

/// What is wrong with a `registry:`: `host[:port]` and lowercase repository path
/// components (Docker's reference grammar), nothing else.
fn registry_problem(registry: &str) -> Option<(String, &'static str, String)> {
    let help = "write `host[:port]` and an optional path of lowercase components, like `127.0.0.1:5000/ottochain`".to_string();
    let bad = |why: &str| {
        Some((
            format!("`{registry}` is not a registry: {why}"),
            "not a registry",
            help.clone(),
        ))
    };
    let mut parts = registry.trim_end_matches('/').split('/');
    let host = parts.next().unwrap_or_default();
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return bad("the host is not a host name or address");
    }
    if host.contains(':') && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit())) {
        return bad("the port is not a number");
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return bad(&format!("`{p}` is not a repository path component (lowercase letters, digits and `._-` inside)"));
        }
    }
    None
}

/// What is wrong with a `remote:`: a REAPI engine, `grpc[s]://host:port[/instance]`.
fn remote_problem(url: &str) -> Option<(String, &'static str, String)> {
    let help = "write it `grpc://host:port[/instance]` (`grpcs://` for TLS), e.g. `grpc://127.0.0.1:50051`; a token goes in CASCADE_REMOTE_TOKEN"
        .to_string();
    let Some(rest) = url
        .strip_prefix("grpc://")
        .or_else(|| url.strip_prefix("grpcs://"))
    else {
        return Some((
            format!("`{url}` is not a REAPI engine cascade can use"),
            "not `grpc://…` or `grpcs://…`",
            help,
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Some((
            format!("`{url}` holds credentials"),
            "credentials do not go in the file",
            help,
        ));
    }
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Some((
            format!("`{url}` names no host and port"),
            "expected `grpc://host:port`",
            help,
        ));
    }
    None
}

/// What is wrong with a `remote_cache:`: only OCI registries (`oci://host[:port]/repo`).
fn remote_cache_problem(url: &str) -> Option<(String, &'static str, String)> {
    let help = "write it `oci://host[:port]/repository`, e.g. `oci://127.0.0.1:5000/cascade-cache`"
        .to_string();
    match url.strip_prefix("oci://") {
        None => Some((
            format!("`{url}` is not a remote cache cascade can use"),
            "not `oci://…`",
            help,
        )),
        Some(rest) if !rest.contains('/') => Some((
            format!("`{url}` names no repository"),
            "expected `oci://host[:port]/repository`",
            help,
        )),
        Some(rest) => registry_problem(rest),
    }
}

/// What is wrong with a `sign:`: a key file's path, or `env:VAR`.
fn sign_problem(v: &str) -> Option<(String, &'static str, String)> {
    if KeyLocation::parse(v).is_some() {
        return None;
    }
    Some((
        format!("`{v}` does not name a key"),
        "not a path or `env:VAR`",
        "write a key file's path (relative to this file's directory), or `env:VAR` for a variable holding the armored key (`cascade keygen` writes one)".to_string(),
    ))
}

/// What is wrong with a public key's path in `require_signature:` (public keys are
/// files in the project, never variables).
fn public_key_problem(v: &str) -> Option<(String, &'static str, String)> {
    if v.starts_with("env:") {
        return Some((
            format!("`{v}` is not a file"),
            "a public key is a file",
            "write the public key file's path relative to this file's directory (public keys are not secret; commit them)".into(),
        ));
    }
    None
}

/// What is wrong with a `notify:` URL: `https://host/…`, or `http://` to a loopback
/// host (a token in the path must not cross a network in the clear). The message never
/// repeats the URL's path or query: chat webhooks carry their token there.
fn notify_problem(url: &str) -> Option<(String, &'static str, String)> {
    let help = "write a webhook URL, `https://host/path` (plain `http://` only to 127.0.0.1, [::1] or localhost)"
        .to_string();
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        _ => {
            return Some((
                "a `notify` entry is not an http(s) URL".to_string(),
                "not `https://…`",
                help,
            ))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Some((
            format!("the `notify` URL to `{scheme}://…` holds credentials before its host"),
            "credentials before the host",
            "put a webhook's token in its path, as Slack and Telegram do, not in `user:password@`"
                .to_string(),
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, rest)) => (h, rest.strip_prefix(':')),
            None => ("", None),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if host.is_empty()
        || !port_ok
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        return Some((
            format!("the `notify` URL `{scheme}://…` names no host"),
            "no host",
            help,
        ));
    }
    let loopback = matches!(host, "127.0.0.1" | "::1" | "localhost");
    if scheme == "http" && !loopback {
        return Some((
            format!("the `notify` URL to `{host}` is plain http"),
            "plain http to another host",
            help,
        ));
    }
    None
}

fn is_reserved_env(s: &str) -> bool {
    // TMPDIR too: the sandbox sets it for host steps, so a declared one would be lost.
    matches!(
        s,
        "PATH" | "HOME" | "TMPDIR" | "SOURCE_DATE_EPOCH" | "TZ" | "LC_ALL"
    ) || s.starts_with("CASCADE_")
}

impl Resolver<'_> {
    fn span<T>(&self, file: FileId, v: &S<T>) -> Span {
        span_of(self.db.text(file), file, &v.referenced)
    }

    fn push(&mut self, make: impl FnOnce(NamedSource<Arc<str>>) -> ManifestError, at: Span) {
        let src = self.db.shared_source(at.file);
        self.diags.push(make(src));
    }

    /// A missing field; `at` is the mapping (or its key) that lacks it, or the start of
    /// the file for a top-level field.
    fn missing(&mut self, field: &str, context: &str, at: Span) {
        if self.cut.contains(&(at.file, field.to_string())) {
            return;
        }
        let label = if at.offset == 0 && at.len == 0 {
            format!("this file has no `{field}`")
        } else {
            format!("`{field}` is required here")
        };
        self.push(
            |src| ManifestError::MissingField {
                field: field.to_string(),
                context: context.to_string(),
                src,
                span: source_span(at),
                label,
            },
            at,
        );
    }

    /// A string field that must be present and not blank.
    fn required(
        &mut self,
        file: FileId,
        value: Option<S<String>>,
        field: &str,
        context: &str,
        at: Span,
    ) -> Option<(String, Span)> {
        let Some(v) = value else {
            self.missing(field, context, at);
            return None;
        };
        self.non_empty(file, v, &format!("`{field}` in {context}"))
    }

    /// A required string that YAML may have read as something else (`run: 42`): a
    /// diagnostic on the value saying what it is, so it is quoted rather than run.
    fn required_str(
        &mut self,
        file: FileId,
        value: Option<S<Scalar>>,
        field: &str,
        context: &str,
        at: Span,
    ) -> Option<(String, Span)> {
        let Some(v) = value else {
            self.missing(field, context, at);
            return None;
        };
        let span = self.span(file, &v);
        match v.value {
            Scalar::Str(text) => self.non_empty(
                file,
                S {
                    value: text,
                    referenced: v.referenced,
                    defined: v.defined,
                },
                &format!("`{field}` in {context}"),
            ),
            Scalar::Other(what) => {
                let raw = self
                    .db
                    .text(span.file)
                    .get(span.offset..span.offset + span.len)
                    .unwrap_or_default()
                    .to_string();
                let message = format!("`{field}` in {context} is {what}, not a string");
                let help = match what {
                    "null" => format!("write the step's `{field}` here, or remove the step"),
                    _ => format!("quote it if it is meant as text: `{field}: \"{raw}\"`"),
                };
                self.push(
                    |src| ManifestError::NotAString {
                        message,
                        src,
                        span: source_span(span),
                        help,
                    },
                    span,
                );
                None
            }
        }
    }

    /// A string that must not be blank.
    fn non_empty(&mut self, file: FileId, v: S<String>, what: &str) -> Option<(String, Span)> {
        let span = self.span(file, &v);
        if v.value.trim().is_empty() {
            self.push(
                |src| ManifestError::Empty {
                    what: what.to_string(),
                    src,
                    span: source_span(span),
                },
                span,
            );
            return None;
        }
        Some((v.value, span))
    }

    fn duplicate(&mut self, name: &str, what: &str, span: Span, first: Span) {
        self.push(
            |src| ManifestError::Duplicate {
                name: name.to_string(),
                what: what.to_string(),
                src,
                span: source_span(span),
                first: source_span(first),
            },
            span,
        );
    }

    /// The recipe of every source, checked: `recipes/<name>.yaml`, parsed on all cores
    /// (most of the work on big graphs, and each file is independent), then resolved in
    /// source order (so diagnostics keep their order).
    fn recipes<'e>(
        &mut self,
        files: &ProjectFiles,
        sources: &'e [SourceChecked],
        names: &BTreeSet<&str>,
        env_name: &str,
    ) -> BTreeMap<&'e str, Node> {
        let db = self.db;
        let mut recipe_files: BTreeMap<&str, FileId> = BTreeMap::new();
        for (name, file) in &files.recipes {
            recipe_files.entry(name.as_str()).or_insert(*file);
        }
        let wanted: Vec<FileId> = sources
            .iter()
            .filter_map(|s| recipe_files.get(s.name.as_str()).copied())
            .collect();
        let mut parsed: BTreeMap<FileId, Parsed> = parse_all(db, &wanted);

        let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
        for source in sources {
            let Some(&file) = recipe_files.get(source.name.as_str()) else {
                self.push(
                    |src| ManifestError::MissingRecipe {
                        component: source.name.clone(),
                        src,
                        span: source_span(source.name_span),
                        help: format!("create `recipes/{}.yaml`", source.name),
                    },
                    source.name_span,
                );
                nodes.insert(&source.name, Node::failed(files.environment));
                continue;
            };
            let (ast, diags, cut) = parsed.remove(&file).unwrap_or_else(|| {
                let mut diags = Vec::new();
                let mut cut = BTreeSet::new();
                let ast = parse::<RecipeAst>(db, file, &mut diags, &mut cut);
                (ast, diags, cut)
            });
            self.diags.extend(diags);
            self.cut.extend(cut);
            let node = match ast {
                Some(ast) => self.recipe(&source.name, file, ast, names, env_name),
                None => Node::failed(file),
            };
            nodes.insert(&source.name, node);
        }
        nodes
    }

    // ---- environment ------------------------------------------------------------

    fn environment(&mut self, file: FileId, ast: EnvironmentAst) -> EnvChecked {
        let name = self.environment_name(file, ast.name);
        let mode = self.mode(file, ast.mode);
        let registry = ast
            .registry
            .and_then(|v| self.non_empty(file, v, "`registry`"))
            .and_then(|(v, span)| self.env_value(v, span, registry_problem));
        let tag = ast
            .tag
            .and_then(|v| self.non_empty(file, v, "`tag`"))
            .and_then(|(v, span)| self.env_value(v, span, tag_problem));
        let remote_cache = ast
            .remote_cache
            .and_then(|v| self.non_empty(file, v, "`remote_cache`"))
            .and_then(|(v, span)| self.env_value(v, span, remote_cache_problem));
        let remote = ast
            .remote
            .and_then(|v| self.non_empty(file, v, "`remote`"))
            .and_then(|(v, span)| self.env_value(v, span, remote_problem));
        let sign = ast
            .sign
            .and_then(|v| self.non_empty(file, v, "`sign`"))
            .and_then(|(v, span)| self.env_value(v, span, sign_problem))
            .and_then(|v| KeyLocation::parse(&v));
        let require_signature = ast
            .require_signature
            .map(|v| self.require_signature(file, v))
            .unwrap_or_default();
        let mut notify = Vec::new();
        for url in ast.notify.map(|l| l.value).unwrap_or_default() {
            if let Some((v, span)) = self.non_empty(file, url, "`notify` entry") {
                notify.extend(self.env_value(v, span, notify_problem));
            }
        }

        let sources = self.sources(file, ast.sources, mode, &name);
        EnvChecked {
            name,
            mode,
            registry,
            tag,
            remote_cache,
            remote,
            sign,
            require_signature,
            notify,
            sources,
            deploy: ast.deploy,
        }
    }

    /// `name:`, which must be the file's stem; `?` when it is missing.
    fn environment_name(&mut self, file: FileId, ast: Option<S<String>>) -> String {
        let ctx = "the environment";
        let start = file_start(file);
        let name = self.required(file, ast, "name", ctx, start);
        if let Some((n, span)) = &name {
            // The file's stem is what `--env` and the lockfiles' names use; `name:` is
            // what the lockfile records. They must be the same environment.
            let path = self.db.path(file).to_string();
            let stem = std::path::Path::new(&path)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !is_name(n) {
                let (n, span) = (n.clone(), *span);
                self.push(
                    |src| ManifestError::BadName {
                        name: n,
                        what: "environment",
                        src,
                        span: source_span(span),
                    },
                    span,
                );
            } else if path.ends_with(".yaml") && *n != stem {
                let (n, span) = (n.clone(), *span);
                self.push(
                    |src| ManifestError::EnvironmentName {
                        name: n,
                        stem,
                        file: path,
                        src,
                        span: source_span(span),
                    },
                    span,
                );
            }
        }
        name.map_or_else(|| "?".to_string(), |n| n.0)
    }

    /// `mode:`, `branch` or `version`.
    fn mode(&mut self, file: FileId, ast: Option<S<String>>) -> Option<Mode> {
        let ctx = "the environment";
        let start = file_start(file);
        match ast {
            None => {
                self.missing("mode", ctx, start);
                None
            }
            Some(m) => {
                let span = self.span(file, &m);
                match m.value.as_str() {
                    "branch" => Some(Mode::Branch),
                    "version" => Some(Mode::Version),
                    other => {
                        let mode = other.to_string();
                        self.push(
                            |src| ManifestError::BadMode {
                                mode,
                                src,
                                span: source_span(span),
                            },
                            span,
                        );
                        None
                    }
                }
            }
        }
    }

    /// `sources:`, each component once, in the order written.
    fn sources(
        &mut self,
        file: FileId,
        ast: Option<S<Entries<S<SourceAst>>>>,
        mode: Option<Mode>,
        name: &str,
    ) -> Vec<SourceChecked> {
        let ctx = "the environment";
        let start = file_start(file);
        let mut sources: Vec<SourceChecked> = Vec::new();
        match ast {
            None => self.missing("sources", ctx, start),
            Some(entries) => {
                let mut seen: BTreeMap<String, Span> = BTreeMap::new();
                for (key, value) in entries.value.0 {
                    let key_span = self.span(file, &key);
                    let comp = key.value;
                    if let Some(&first) = seen.get(&comp) {
                        self.push(
                            |src| ManifestError::DuplicateComponent {
                                name: comp,
                                src,
                                span: source_span(key_span),
                                first: source_span(first),
                            },
                            key_span,
                        );
                        continue;
                    }
                    seen.insert(comp.clone(), key_span);
                    if !is_name(&comp) {
                        let n = comp.clone();
                        self.push(
                            |src| ManifestError::BadName {
                                name: n,
                                what: "component",
                                src,
                                span: source_span(key_span),
                            },
                            key_span,
                        );
                    }
                    let spec = self.source(file, &comp, key_span, value.value, mode, name);
                    sources.push(SourceChecked {
                        name: comp,
                        name_span: key_span,
                        spec,
                    });
                }
            }
        }
        sources
    }

    fn source(
        &mut self,
        file: FileId,
        comp: &str,
        key_span: Span,
        ast: SourceAst,
        mode: Option<Mode>,
        env_name: &str,
    ) -> Option<SourceSpec> {
        let ctx = format!("source `{comp}`");
        let repo = self.required(file, ast.repo, "repo", &ctx, key_span);
        let dir_span = ast.dir.as_ref().map(|d| self.span(file, d));
        let dir = match ast.dir {
            None => Some(None),
            Some(d) => {
                let span = self.span(file, &d);
                match normalize_path(&d.value) {
                    Ok(p) if p.is_empty() => Some(None),
                    Ok(p) => Some(Some(p)),
                    Err(reason) => {
                        self.bad_path("dir", d.value, reason, span);
                        None
                    }
                }
            }
        };
        let rev = match (ast.git_ref, ast.version) {
            (Some(r), Some(v)) => {
                let (ref_span, version_span) = (self.span(file, &r), self.span(file, &v));
                self.push(
                    |src| ManifestError::BothRevs {
                        component: comp.to_string(),
                        src,
                        ref_span: source_span(ref_span),
                        version_span: source_span(version_span),
                    },
                    ref_span,
                );
                None
            }
            (None, None) => {
                let field = if mode == Some(Mode::Version) {
                    "version"
                } else {
                    "ref"
                };
                self.missing(field, &ctx, key_span);
                None
            }
            (Some(r), None) => {
                let span = self.span(file, &r);
                if mode == Some(Mode::Version) {
                    self.wrong_rev(comp, "ref", env_name, Mode::Version, span);
                    None
                } else {
                    self.non_empty(file, r, &format!("`ref` in {ctx}"))
                        .map(|(r, span)| (Rev::Ref(r), span))
                }
            }
            (None, Some(v)) => {
                let span = self.span(file, &v);
                if mode == Some(Mode::Branch) {
                    self.wrong_rev(comp, "version", env_name, Mode::Branch, span);
                    None
                } else {
                    match parse_version(&v.value) {
                        Ok(version) => Some((Rev::Version(version), span)),
                        Err(reason) => {
                            self.push(
                                |src| ManifestError::BadVersion {
                                    value: v.value,
                                    reason,
                                    src,
                                    span: source_span(span),
                                },
                                span,
                            );
                            None
                        }
                    }
                }
            }
        };
        let version_tags = match ast.version_tags {
            None => Some(None),
            Some(t) => {
                let span = self.span(file, &t);
                self.env_value(t.value, span, version_tags_problem)
                    .map(Some)
            }
        };
        let ((repo, repo_span), (rev, rev_span), dir, version_tags) =
            (repo?, rev?, dir?, version_tags?);
        Some(SourceSpec {
            repo,
            repo_span,
            rev,
            rev_span,
            dir,
            dir_span,
            version_tags,
        })
    }

    /// `value` when `problem` finds nothing wrong with it; else a diagnostic on it.
    /// `require_signature:`: a list of public key files; `false` is none, and `true`
    /// (or an empty list) is refused: a signature by an unnamed key proves nothing.
    fn require_signature(&mut self, file: FileId, v: S<RequireSignatureAst>) -> Vec<String> {
        let span = self.span(file, &v);
        let keys = match v.value {
            RequireSignatureAst::Bool(false) => return Vec::new(),
            RequireSignatureAst::Keys(keys) if !keys.is_empty() => keys,
            RequireSignatureAst::Bool(true) | RequireSignatureAst::Keys(_) => {
                self.push(
                    |src| ManifestError::BadEnvironmentValue {
                        message: "`require_signature` names no key".into(),
                        src,
                        span: source_span(span),
                        label: "whose signature?".into(),
                        help: Some(
                            "list the public keys any of which must have signed each image, relative to this file's directory: `require_signature: [keys/cascade.pub]` (`cascade keygen` writes `cascade.pub`)"
                                .into(),
                        ),
                    },
                    span,
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for k in keys {
            if let Some(k) = self
                .non_empty(file, k, "`require_signature` entry")
                .and_then(|(k, span)| self.env_value(k, span, public_key_problem))
            {
                out.push(k);
            }
        }
        out
    }

    fn env_value(
        &mut self,
        value: String,
        span: Span,
        problem: fn(&str) -> Option<(String, &'static str, String)>,
    ) -> Option<String> {
        let Some((message, label, help)) = problem(&value) else {
            return Some(value);
        };
        self.push(
            |src| ManifestError::BadEnvironmentValue {
                message,
                src,
                span: source_span(span),
                label: label.to_string(),
                help: Some(help),
            },
            span,
        );
        None
    }

    fn wrong_rev(&mut self, comp: &str, field: &'static str, env: &str, mode: Mode, span: Span) {
        let help = match mode {
            Mode::Branch => {
                "branch mode follows refs: write `ref: <branch, tag or commit>`, or set `mode: version`"
            }
            Mode::Version => {
                "version mode pins released versions: write `version: <x.y.z>`, or set `mode: branch`"
            }
        };
        self.push(
            |src| ManifestError::WrongRev {
                component: comp.to_string(),
                field,
                environment: env.to_string(),
                mode: mode.as_str(),
                src,
                span: source_span(span),
                help: help.to_string(),
            },
            span,
        );
    }

    fn bad_path(&mut self, what: &'static str, path: String, reason: &'static str, span: Span) {
        let help = if what == "dir" {
            "`dir` is a sub-directory of the repository, like `packages/sdk`"
        } else {
            "outputs are relative to the work directory and stay inside it, like `out/bin/tool`"
        };
        self.push(
            |src| ManifestError::BadPath {
                what,
                path,
                reason,
                src,
                span: source_span(span),
                help,
            },
            span,
        );
    }

    // ---- recipes ----------------------------------------------------------------

    fn recipe(
        &mut self,
        comp: &str,
        file: FileId,
        ast: RecipeAst,
        names: &BTreeSet<&str>,
        env_name: &str,
    ) -> Node {
        let before = self.diags.len();
        let list = ast.inputs.map(|l| l.value).unwrap_or_default();
        let (inputs, edges) = self.inputs(file, comp, list, names, env_name);
        let (runner, runner_image, tool_spans) = self.runner(file, comp, ast.runner);
        let entries = ast.env.map(|e| e.value.0).unwrap_or_default();
        let env = self.env(file, &format!("the env of `{comp}`"), entries, true);
        let timeout = ast.timeout.and_then(|t| self.timeout(file, t));
        let steps = self.steps(file, comp, ast.steps);
        let outputs = self.outputs(file, comp, ast.outputs);
        let stamp = self.stamps(file, comp, ast.stamp);
        let filter = self.filter(file, comp, ast.source);
        let changelog = self.changelog(file, ast.changelog);
        let (image, image_base) = match ast.image {
            Some(i) => {
                let checked = self.image(file, comp, i, &outputs);
                (checked.decl, checked.base_component)
            }
            None => (None, None),
        };
        let tests = match ast.tests {
            Some(t) => {
                let span = self.span(file, &t);
                self.tests(file, comp, t.value.0, image.is_some(), span)
            }
            None => Vec::new(),
        };
        let recipe = (self.diags.len() == before).then_some(Recipe {
            inputs,
            runner,
            env,
            timeout,
            steps,
            outputs,
            image,
            tests,
            stamp,
            filter,
            changelog,
        });
        Node {
            file,
            recipe,
            edges,
            image_base,
            runner_image,
            tool_spans,
        }
    }

    /// The inputs, sorted, and the graph edges: those that are components.
    fn inputs(
        &mut self,
        file: FileId,
        comp: &str,
        list: Vec<S<String>>,
        names: &BTreeSet<&str>,
        env_name: &str,
    ) -> (Vec<String>, Vec<(String, Span)>) {
        let mut inputs = Vec::new();
        let mut edges = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for input in list {
            let what = format!("input in recipe `{comp}`");
            let Some((name, span)) = self.non_empty(file, input, &what) else {
                continue;
            };
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the inputs of `{comp}`"), span, first);
                continue;
            }
            seen.insert(name.clone(), span);
            if names.contains(name.as_str()) {
                edges.push((name.clone(), span));
            } else {
                let help = match closest(&name, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "the components of environment `{env_name}` are {}",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let input = name.clone();
                self.push(
                    |src| ManifestError::UnknownInput {
                        input,
                        component: comp.to_string(),
                        environment: env_name.to_string(),
                        src,
                        span: source_span(span),
                        help: Some(help),
                    },
                    span,
                );
            }
            inputs.push(name);
        }
        inputs.sort();
        (inputs, edges)
    }

    /// An env map (`what` names it in messages). `reserved`: the names cascade gives a
    /// step itself are refused (an image's env may set them).
    fn env(
        &mut self,
        file: FileId,
        what: &str,
        entries: Vec<(S<String>, S<String>)>,
        reserved: bool,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (key, value) in entries {
            let span = self.span(file, &key);
            let name = key.value;
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, what, span, first);
                continue;
            }
            seen.insert(name.clone(), span);
            if !is_env_name(&name) {
                self.push(
                    |src| ManifestError::BadEnvName {
                        name,
                        src,
                        span: source_span(span),
                    },
                    span,
                );
            } else if reserved && is_reserved_env(&name) {
                self.push(
                    |src| ManifestError::ReservedEnv {
                        name,
                        src,
                        span: source_span(span),
                    },
                    span,
                );
            } else if value.value.contains('\0') {
                let vspan = self.span(file, &value);
                self.push(
                    |src| ManifestError::BadEnvValue {
                        name,
                        src,
                        span: source_span(vspan),
                    },
                    vspan,
                );
            } else {
                env.insert(name, value.value);
            }
        }
        env
    }

    fn timeout(&mut self, file: FileId, t: S<String>) -> Option<Duration> {
        let span = self.span(file, &t);
        let d = parse_duration(&t.value);
        if d.is_none() {
            self.push(
                |src| ManifestError::BadTimeout {
                    value: t.value,
                    src,
                    span: source_span(span),
                },
                span,
            );
        }
        d
    }

    fn steps(&mut self, file: FileId, comp: &str, list: Option<S<Vec<S<StepAst>>>>) -> Vec<Step> {
        let Some(list) = list else {
            self.missing("steps", &format!("recipe `{comp}`"), file_start(file));
            return Vec::new();
        };
        let list_span = self.span(file, &list);
        if list.value.is_empty() {
            self.empty_list(comp, "steps", list_span);
        }
        let mut steps = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (i, step) in list.value.into_iter().enumerate() {
            let span = self.span(file, &step);
            let StepAst { name, run } = step.value;
            let ctx = format!("step {} of `{comp}`", i + 1);
            let name = self.required_str(file, name, "name", &ctx, span);
            let run = self.required_str(file, run, "run", &ctx, span);
            if let Some((n, nspan)) = &name {
                if let Some(&first) = seen.get(n) {
                    self.duplicate(n, &format!("the steps of `{comp}`"), *nspan, first);
                } else {
                    seen.insert(n.clone(), *nspan);
                }
            }
            if let (Some((name, _)), Some((run, _))) = (name, run) {
                steps.push(Step { name, run });
            }
        }
        steps
    }

    /// The outputs, normalized and sorted.
    fn outputs(
        &mut self,
        file: FileId,
        comp: &str,
        list: Option<S<Vec<S<String>>>>,
    ) -> Vec<String> {
        let Some(list) = list else {
            self.missing("outputs", &format!("recipe `{comp}`"), file_start(file));
            return Vec::new();
        };
        let list_span = self.span(file, &list);
        if list.value.is_empty() {
            self.empty_list(comp, "outputs", list_span);
        }
        let mut outputs = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for out in list.value {
            let span = self.span(file, &out);
            match normalize_path(&out.value) {
                Ok(p) if p.is_empty() => {
                    self.bad_path("output", out.value, "names the whole work directory", span)
                }
                Err(reason) => self.bad_path("output", out.value, reason, span),
                Ok(p) => {
                    if let Some(&first) = seen.get(&p) {
                        self.duplicate(&p, &format!("the outputs of `{comp}`"), span, first);
                    } else {
                        seen.insert(p.clone(), span);
                        outputs.push(p);
                    }
                }
            }
        }
        outputs.sort();
        outputs
    }

    pub(super) fn tools(
        &mut self,
        file: FileId,
        comp: &str,
        list: Vec<S<String>>,
    ) -> (Vec<String>, BTreeMap<String, Span>) {
        let mut tools = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for tool in list {
            let Some((name, span)) = self.non_empty(file, tool, &format!("tool in `{comp}`"))
            else {
                continue;
            };
            let reason = if name.contains('/') {
                Some("a name, not a path: no `/`")
            } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Some("contains whitespace")
            } else if name == "." || name == ".." {
                Some("not a command name")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.push(
                    |src| ManifestError::BadTool {
                        tool: name,
                        src,
                        span: source_span(span),
                        reason,
                    },
                    span,
                );
                continue;
            }
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the tools of `{comp}`"), span, first);
                continue;
            }
            seen.insert(name.clone(), span);
            tools.push(name);
        }
        tools.sort();
        (tools, seen)
    }

    /// An image based on another component's image: that component must be in the
    /// environment and have an image; it becomes an edge (built first), not an input.
    fn image_bases(&mut self, nodes: &mut BTreeMap<&str, Node>, names: &BTreeSet<&str>, env: &str) {
        let with_image = with_image(nodes);
        for (comp, node) in nodes.iter_mut() {
            let Some((base, span)) = node.image_base.clone() else {
                continue;
            };
            if !self.known(&base, span, names, env) {
                continue;
            }
            if node.recipe.is_some() && !with_image.contains(&base) {
                self.push(
                    |src| ManifestError::BadImage {
                        message: format!(
                            "the image of `{comp}` is based on `{base}`, which has no image"
                        ),
                        src,
                        span: source_span(span),
                        label: "has no `image:`".into(),
                        help: Some(format!(
                            "declare `image:` in `recipes/{base}.yaml`, or use another base"
                        )),
                    },
                    span,
                );
            }
            if !node.edges.iter().any(|(e, _)| *e == base) {
                node.edges.push((base, span));
            }
        }
    }

    fn empty_list(&mut self, comp: &str, what: &'static str, span: Span) {
        self.push(
            |src| ManifestError::EmptyList {
                component: comp.to_string(),
                what,
                src,
                span: source_span(span),
            },
            span,
        );
    }

    // ---- compatibility ----------------------------------------------------------

    fn compatibility(
        &mut self,
        file: FileId,
        ast: CompatibilityAst,
        names: &BTreeSet<&str>,
        env_name: &str,
    ) -> Vec<Constraint> {
        let Some(matrix) = ast.compatibility else {
            self.missing(
                "compatibility",
                "the compatibility matrix",
                file_start(file),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (key, rules) in matrix.value.0 {
            let span = self.span(file, &key);
            let comp = key.value;
            if let Some(&first) = seen.get(&comp) {
                self.duplicate(&comp, "the compatibility matrix", span, first);
                continue;
            }
            seen.insert(comp.clone(), span);
            let comp_known = self.known(&comp, span, names, env_name);
            let mut seen_up: BTreeMap<String, Span> = BTreeMap::new();
            for (up, range) in rules.value.0 {
                let up_span = self.span(file, &up);
                let upstream = up.value;
                if let Some(&first) = seen_up.get(&upstream) {
                    self.duplicate(
                        &upstream,
                        &format!("the compatibility rules of `{comp}`"),
                        up_span,
                        first,
                    );
                    continue;
                }
                seen_up.insert(upstream.clone(), up_span);
                if upstream == comp {
                    self.push(
                        |src| ManifestError::SelfCompat {
                            name: upstream.clone(),
                            src,
                            span: source_span(up_span),
                        },
                        up_span,
                    );
                    continue;
                }
                let up_known = self.known(&upstream, up_span, names, env_name);
                let range_span = self.span(file, &range);
                match VersionRange::parse(&range.value) {
                    Ok(r) if comp_known && up_known => out.push(Constraint {
                        component: comp.clone(),
                        upstream,
                        range: r,
                        span: range_span,
                    }),
                    Ok(_) => {}
                    Err(e) => self.push(
                        |src| ManifestError::BadRange {
                            value: range.value,
                            reason: e.0,
                            src,
                            span: source_span(range_span),
                        },
                        range_span,
                    ),
                }
            }
        }
        out.sort_by(|a, b| (&a.component, &a.upstream).cmp(&(&b.component, &b.upstream)));
        out
    }

    /// Whether a component named in the compatibility matrix is in the environment.
    fn known(&mut self, name: &str, span: Span, names: &BTreeSet<&str>, env: &str) -> bool {
        if names.contains(name) {
            return true;
        }
        let help = closest(name, names.iter().copied()).map(|c| format!("did you mean `{c}`?"));
        self.push(
            |src| ManifestError::UnknownCompatComponent {
                name: name.to_string(),
                environment: env.to_string(),
                src,
                span: source_span(span),
                help,
            },
            span,
        );
        false
    }

    // ---- order and cycles -------------------------------------------------------

    /// Topological order, inputs first, ties broken by name; every cycle is reported
    /// ([`crate::build_order`], which lockfiles share).
    fn order<'n>(&mut self, nodes: &BTreeMap<&'n str, Node>) -> Vec<&'n str> {
        let graph: BTreeMap<&'n str, Vec<&'n str>> = nodes
            .keys()
            .map(|n| (*n, inputs_of(nodes, n).into_iter().collect()))
            .map(|(n, ins): (&'n str, Vec<&str>)| {
                // Edges name nodes of the graph: the same names, borrowed from its keys.
                let ins = ins
                    .into_iter()
                    .filter_map(|i| nodes.get_key_value(i).map(|(k, _)| *k))
                    .collect();
                (n, ins)
            })
            .collect();
        let ordered = crate::build_order(&graph);
        for cycle in &ordered.cycles {
            self.cycle(nodes, cycle);
        }
        ordered.order
    }

    fn cycle(&mut self, nodes: &BTreeMap<&str, Node>, cycle: &[&str]) {
        // Start at the smallest name, so the message does not depend on where we began.
        let first = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| **n)
            .map_or(0, |(i, _)| i);
        let mut names: Vec<&str> = cycle[first..]
            .iter()
            .chain(&cycle[..first])
            .copied()
            .collect();
        let text = names
            .iter()
            .chain(names.first())
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" → ");
        if let Some(&head) = names.first() {
            names.push(head);
        }
        let edge = |from: &str, to: &str| -> Span {
            nodes
                .get(from)
                .and_then(|n| n.edges.iter().find(|(i, _)| i == to))
                .map_or(Span::new(FileId(0), 0, 0), |(_, s)| *s)
        };
        let mut edges = names.windows(2).map(|w| (w[0], w[1], edge(w[0], w[1])));
        let Some((from, to, span)) = edges.next() else {
            return;
        };
        let related = edges
            .map(|(from, to, span)| ManifestError::CycleEdge {
                from: from.to_string(),
                to: to.to_string(),
                src: self.db.shared_source(span.file),
                span: source_span(span),
            })
            .collect();
        let help = if from == to {
            format!(
                "a component cannot be its own input; remove `{to}` from the inputs of `{from}`"
            )
        } else {
            "`a` → `b` reads \"`a` takes `b` as an input\"; remove one of these inputs to break the cycle"
                .to_string()
        };
        self.push(
            |src| ManifestError::Cycle {
                help,
                cycle: text,
                from: from.to_string(),
                to: to.to_string(),
                src,
                span: source_span(span),
                edges: related,
            },
            span,
        );
    }
}

/// `v4.0.0` or `4.0.0`.
pub(crate) fn parse_version(s: &str) -> Result<semver::Version, String> {
    let body = s.strip_prefix('v').unwrap_or(s);
    if body.is_empty() {
        return Err("empty version".into());
    }
    semver::Version::parse(body).map_err(|e| e.to_string())
}

/// A relative path inside a directory, normalized: `./a//b/` → `a/b`. Empty means the
/// directory itself.
pub(crate) fn normalize_path(p: &str) -> Result<String, &'static str> {
    if p.contains('\0') {
        return Err("contains a NUL character");
    }
    if p.starts_with('/') {
        return Err("an absolute path");
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` leaves the directory"),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// `30s`, `5m`, `1h`, `1h30m`, or a bare number of seconds. Zero is not a timeout.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().ok()?;
        return (n > 0).then(|| Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut last_unit = u64::MAX;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = match rest.bytes().next() {
            Some(b'h') => 3600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return None,
        };
        // Units in decreasing order, each once: `1h30m`, not `30m1h` or `1m1m`.
        if unit >= last_unit {
            return None;
        }
        last_unit = unit;
        rest = &rest[1..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (total > 0).then(|| Duration::from_secs(total))
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = name.chars().count() / 3;
    if limit == 0 {
        return None;
    }
    candidates
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// The components whose recipe declares `image:` (bases and runner images must).
fn with_image(nodes: &BTreeMap<&str, Node>) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, n)| n.recipe.as_ref().is_some_and(|r| r.image.is_some()))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("30s"), Some(30));
        assert_eq!(secs("5m"), Some(300));
        assert_eq!(secs("1h"), Some(3600));
        assert_eq!(secs("90"), Some(90));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("2m10s"), Some(130));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "5x",
            "5 m",
            "-1s",
            "1.5h",
            "30m1h",
            "1m1m",
            "99999999999999999999",
            "5124095576030432h",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_failed_resolve_keeps_the_valid_sources() {
        let mut db = SourceDb::new();
        let environment = db.add(
            "graph/environments/test.yaml",
            "name: test\nmode: branch\nsources:\n  \
             app: { repo: ../app, ref: develop }\n  \
             lib: { repo: ../lib }\n  \
             web: { repo: ../web, ref: main, dir: site }\n"
                .to_string(),
        );
        let app = db.add(
            "recipes/app.yaml",
            "inputs: []\nrunner: { host: { tools: [sh] } }\nsteps: []\noutputs: [out]\ntimeout: forever\n"
                .to_string(),
        );
        let files = ProjectFiles {
            environment,
            compatibility: None,
            recipes: vec![("app".to_string(), app)],
        };
        let Err(u) = resolve(&db, &files) else {
            panic!("a bad timeout, a source without a ref and a missing recipe resolve");
        };
        assert!(u.diagnostics.0.len() >= 3, "{:?}", u.diagnostics);
        // `lib` has no ref: not valid, so not pinned.
        let names: Vec<(&str, &str, Option<&str>)> = u
            .sources
            .iter()
            .map(|s| {
                (
                    s.component.as_str(),
                    s.spec.repo.as_str(),
                    s.spec.dir.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("app", "../app", None), ("web", "../web", Some("site"))]
        );
    }

    #[test]
    fn paths() {
        assert_eq!(normalize_path("./a/").unwrap(), "a");
        assert_eq!(normalize_path("out//bin/./x").unwrap(), "out/bin/x");
        assert_eq!(normalize_path(".").unwrap(), "");
        assert!(normalize_path("/abs").is_err());
        assert!(normalize_path("a/../b").is_err());
        assert!(normalize_path("..").is_err());
        assert_eq!(normalize_path("a..b").unwrap(), "a..b");
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("v4.0.0").unwrap(),
            semver::Version::new(4, 0, 0)
        );
        assert_eq!(
            parse_version("0.6.1").unwrap(),
            semver::Version::new(0, 6, 1)
        );
        assert!(parse_version("4.0").is_err());
        assert!(parse_version("v").is_err());
        assert!(parse_version("vv1.0.0").is_err());
    }

    #[test]
    fn environment_values_are_checked() {
        assert!(tag_problem("{ref}-{short_sha}").is_none());
        assert!(tag_problem("v{version}-{component}.{sha}").is_none());
        assert!(tag_problem("{nonsense}{{}}{ref}").is_some());
        assert!(tag_problem("{ref}}").is_some());
        assert!(registry_problem("127.0.0.1:5000/ottochain").is_none());
        assert!(registry_problem("ghcr.io/org/team").is_none());
        assert!(registry_problem("UPPER CASE/..//x").is_some());
        assert!(registry_problem("host:port/x").is_some());
        assert!(registry_problem("host/Upper").is_some());
        assert!(sign_problem("keys/cascade.key").is_none());
        assert!(sign_problem("env:CASCADE_KEY_1").is_none());
        assert!(sign_problem("env:").is_some());
        assert!(sign_problem("env:1X").is_some());
        assert!(sign_problem("env:A-B").is_some());
        assert_eq!(
            KeyLocation::parse("env:K"),
            Some(KeyLocation::Env("K".into()))
        );
        assert!(notify_problem("https://hooks.slack.com/services/T0/B0/xyz").is_none());
        assert!(
            notify_problem("https://api.telegram.org/bot123:abc/sendMessage?chat_id=1").is_none()
        );
        assert!(notify_problem("http://127.0.0.1:8080/hook").is_none());
        assert!(notify_problem("http://[::1]:8080/hook").is_none());
        assert!(notify_problem("http://localhost/hook").is_none());
        assert!(notify_problem("http://hooks.example/hook").is_some());
        assert!(notify_problem("ftp://127.0.0.1/x").is_some());
        assert!(notify_problem("hooks.slack.com/x").is_some());
        assert!(notify_problem("https:///x").is_some());
        assert!(notify_problem("https://user:pw@host/x").is_some());
        assert!(notify_problem("https://host:port/x").is_some());
        assert!(remote_cache_problem("oci://127.0.0.1:5000/cache").is_none());
        assert!(remote_cache_problem("ftp://x").is_some());
        assert!(remote_cache_problem("oci://host").is_some());
        assert!(remote_problem("grpc://127.0.0.1:50051").is_none());
        assert!(remote_problem("grpcs://cache.example:443/main").is_none());
        for bad in [
            "oci://h/r",
            "grpc://h",
            "grpc://u:p@h:1",
            "grpc://:1",
            "grpc://h:port",
        ] {
            assert!(remote_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_name("metakit"));
        assert!(is_name("a-b_c.1"));
        assert!(!is_name("Meta"));
        assert!(!is_name("-a"));
        assert!(!is_name(""));
        assert!(is_env_name("OPT_2"));
        assert!(!is_env_name("2X"));
        assert!(!is_env_name("A-B"));
        assert!(is_reserved_env("CASCADE_X"));
        assert_eq!(
            closest("metakti", ["metakit", "sdk"].into_iter()),
            Some("metakit")
        );
        assert_eq!(closest("zzz", ["metakit", "sdk"].into_iter()), None);
    }
}
