//! A recipe's `runner:`, checked: `host: { tools: [...] }` or `container: { image: … }`.

use std::collections::{BTreeMap, BTreeSet};

use cascade_core::{FileId, Span};

use super::{closest, file_start, is_name, with_image, Node, Resolver};
use crate::ast::{ContainerAst, HostAst, RunnerAst, S};
use crate::error::ManifestError;
use crate::model::{tool_set, RunnerDecl, RunnerImage, TOOL_SETS};
use crate::source::source_span;

impl Resolver<'_> {
    fn bad_runner(&mut self, message: String, label: &str, help: Option<String>, span: Span) {
        let (label, span_) = (label.to_string(), source_span(span));
        self.push(
            |src| ManifestError::BadRunner {
                message,
                src,
                span: span_,
                label,
                help,
            },
            span,
        );
    }

    /// The runner, and the component named as its image (with where), if any. A host
    /// runner is returned even when it has problems (they are diagnostics already).
    pub(super) fn runner(
        &mut self,
        file: FileId,
        comp: &str,
        runner: Option<S<RunnerAst>>,
    ) -> (RunnerDecl, Option<(String, Span)>, BTreeMap<String, Span>) {
        let none = RunnerDecl::Host {
            tools: Vec::new(),
            sets: Vec::new(),
        };
        let Some(runner) = runner else {
            self.missing("runner", &format!("recipe `{comp}`"), file_start(file));
            return (none, None, BTreeMap::new());
        };
        let span = self.span(file, &runner);
        match (runner.value.host, runner.value.container) {
            (Some(host), None) => {
                let HostAst { tools, sets } = host.value;
                let (tools, spans) =
                    self.tools(file, comp, tools.map(|t| t.value).unwrap_or_default());
                let sets = self.tool_sets(file, comp, sets.map(|t| t.value).unwrap_or_default());
                (RunnerDecl::Host { tools, sets }, None, spans)
            }
            (None, Some(container)) => {
                let (decl, image) = self.container(file, comp, container);
                (decl, image, BTreeMap::new())
            }
            (Some(host), Some(container)) => {
                let (h, c) = (self.span(file, &host), self.span(file, &container));
                self.bad_runner(
                    format!("the runner of `{comp}` is both `host` and `container`"),
                    "a second runner",
                    Some("steps run either on the host or in a container: keep one".into()),
                    if c.offset > h.offset { c } else { h },
                );
                (none, None, BTreeMap::new())
            }
            (None, None) => {
                self.bad_runner(
                    format!("the runner of `{comp}` says neither `host` nor `container`"),
                    "`host` or `container` is required here",
                    Some(
                        "write `host: { tools: [sh, cc] }` or `container: { image: <component or name@sha256:…> }`"
                            .into(),
                    ),
                    span,
                );
                (none, None, BTreeMap::new())
            }
        }
    }

    /// `sets: [...]`: names of [`TOOL_SETS`], each once.
    fn tool_sets(&mut self, file: FileId, comp: &str, list: Vec<S<String>>) -> Vec<String> {
        let mut sets = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for set in list {
            let span = self.span(file, &set);
            let name = set.value;
            if tool_set(&name).is_none() {
                let known: Vec<&str> = TOOL_SETS.iter().map(|(n, _)| *n).collect();
                let help = match closest(&name, known.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? the sets are {}", known.join(", ")),
                    None => format!(
                        "the sets are {}; other tools go in `tools:`",
                        known.join(", ")
                    ),
                };
                self.bad_runner(
                    format!("`{name}` is not a tool set"),
                    "unknown tool set",
                    Some(help),
                    span,
                );
                continue;
            }
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the tool sets of `{comp}`"), span, first);
                continue;
            }
            seen.insert(name.clone(), span);
            sets.push(name);
        }
        sets.sort();
        sets
    }

    /// `container: { image: … }`: a component of the graph (checked against the graph in
    /// [`Resolver::runner_images`]) or `name@sha256:<hex>`. A tag alone is refused: it
    /// can move, and the image is the runner's identity.
    fn container(
        &mut self,
        file: FileId,
        comp: &str,
        ast: S<ContainerAst>,
    ) -> (RunnerDecl, Option<(String, Span)>) {
        let span = self.span(file, &ast);
        let none = RunnerDecl::Host {
            tools: Vec::new(),
            sets: Vec::new(),
        };
        let ContainerAst { image } = ast.value;
        let ctx = format!("the container runner of `{comp}`");
        let Some((image, ispan)) = self.required(file, image, "image", &ctx, span) else {
            return (none, None);
        };
        if let Some((name, digest)) = image.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            let ok = !name.is_empty()
                && hex.len() == 64
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !ok {
                self.bad_runner(
                    format!("`{image}` is not an image pinned by digest"),
                    "expected `name@sha256:<64 lowercase hex digits>`",
                    None,
                    ispan,
                );
                return (none, None);
            }
            let image = RunnerImage::Pinned {
                name: name.to_string(),
                digest: digest.to_string(),
            };
            return (RunnerDecl::Container { image }, None);
        }
        if image == comp {
            self.bad_runner(
                format!("`{comp}` cannot run its steps in its own image"),
                "names this component",
                Some("its image is made from its outputs, after its steps ran".into()),
                ispan,
            );
            return (none, None);
        }
        if !is_name(&image) {
            self.bad_runner(
                format!("`{image}` is a tag, not an image pinned by digest"),
                "a tag can move",
                Some(format!(
                    "the image is the runner's identity, so it is pinned: `{}@sha256:<digest>` \
                     (`docker images --digests` shows it), or a component of this environment \
                     that declares `image:`",
                    image.split(':').next().unwrap_or(&image)
                )),
                ispan,
            );
            return (none, None);
        }
        let decl = RunnerDecl::Container {
            image: RunnerImage::Component(image.clone()),
        };
        (decl, Some((image, ispan)))
    }

    /// Steps that run in another component's image: that component must be in the
    /// environment and declare `image:`; it becomes an edge (built first).
    pub(super) fn runner_images(
        &mut self,
        nodes: &mut BTreeMap<&str, Node>,
        names: &BTreeSet<&str>,
        env: &str,
    ) {
        let with_image = with_image(nodes);
        for (comp, node) in nodes.iter_mut() {
            let Some((image, span)) = node.runner_image.clone() else {
                continue;
            };
            if !names.contains(image.as_str()) {
                let help = match closest(&image, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "an image from outside the graph is pinned by digest: \
                         `{image}@sha256:<digest>` (`docker images --digests` shows it)"
                    ),
                };
                self.bad_runner(
                    format!(
                        "`{image}` is neither a component of environment `{env}` nor an image pinned by digest"
                    ),
                    "not a component",
                    Some(help),
                    span,
                );
                continue;
            }
            if node.recipe.is_some() && !with_image.contains(&image) {
                self.bad_runner(
                    format!("`{comp}` runs its steps in `{image}`, which has no image"),
                    "has no `image:`",
                    Some(format!(
                        "declare `image:` in `recipes/{image}.yaml`, or use another image"
                    )),
                    span,
                );
            }
            if !node.edges.iter().any(|(e, _)| *e == image) {
                node.edges.push((image, span));
            }
        }
    }
}
