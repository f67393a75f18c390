//! A recipe's `image:` and `tests:`, checked.

use std::collections::BTreeMap;
use std::time::Duration;

use cascade_core::{FileId, Span};

use super::{is_name, normalize_path, Resolver};
use crate::ast::{ExpectAst, HttpAst, ImageAst, LayerAst, TestAst, S};
use crate::error::ManifestError;
use crate::model::{Expect, ImageBase, ImageDecl, LayerDecl, Probe, SmokeTest, TEST_PLACEHOLDERS};
use crate::source::source_span;

/// A probe as written: its `http` and `command` fields (exactly one must be there).
pub(super) type ProbeAst = (Option<S<HttpAst>>, Option<S<Vec<S<String>>>>);

/// How long a smoke test may take to pass when its recipe names no `timeout`.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked `image:`, and the component its base names (with where), if any.
pub(super) struct ImageChecked {
    pub decl: Option<ImageDecl>,
    pub base_component: Option<(String, Span)>,
}

impl Resolver<'_> {
    fn bad_image(&mut self, message: String, label: &str, help: Option<String>, span: Span) {
        self.bad(false, message, label, help, span);
    }

    fn bad_test(&mut self, message: String, label: &str, help: Option<String>, span: Span) {
        self.bad(true, message, label, help, span);
    }

    fn bad(&mut self, test: bool, message: String, label: &str, help: Option<String>, span: Span) {
        let (label, span_) = (label.to_string(), source_span(span));
        self.push(
            |src| match test {
                true => ManifestError::BadTest {
                    message,
                    src,
                    span: span_,
                    label,
                    help,
                },
                false => ManifestError::BadImage {
                    message,
                    src,
                    span: span_,
                    label,
                    help,
                },
            },
            span,
        );
    }

    pub(super) fn image(
        &mut self,
        file: FileId,
        comp: &str,
        ast: S<ImageAst>,
        outputs: &[String],
    ) -> ImageChecked {
        let before = self.diags.len();
        let span = self.span(file, &ast);
        let ImageAst {
            base,
            layers,
            entrypoint,
            cmd,
            env,
            workdir,
            ports,
            user,
            labels,
        } = ast.value;
        let ctx = format!("the image of `{comp}`");
        let mut base_component = None;
        let (base, scratch) = match self.required(file, base, "base", &ctx, span) {
            None => (ImageBase::Scratch, false),
            Some((b, bspan)) => {
                let scratch = b == "scratch";
                (self.base(comp, b, bspan, &mut base_component), scratch)
            }
        };
        let layers = match layers {
            None => Vec::new(),
            Some(l) => l
                .value
                .into_iter()
                .filter_map(|l| self.layer(file, comp, l, outputs))
                .collect(),
        };
        // A `layers:` of the wrong type has been reported already.
        let layers_cut = self.cut.contains(&(file, "layers".to_string()));
        if scratch && layers.is_empty() && !layers_cut {
            self.bad_image(
                format!("the image of `{comp}` is empty"),
                "a `scratch` image needs layers",
                Some("add `layers: [{ from: <output>, to: /path/in/image }]`".into()),
                span,
            );
        }
        let entrypoint = entrypoint.and_then(|v| self.argv(file, v, "entrypoint", true));
        let cmd = cmd.and_then(|v| self.argv(file, v, "cmd", false));
        let env = env.map_or_else(BTreeMap::new, |e| {
            self.env(file, "the image's env", e.value.0, false)
        });
        let workdir = workdir.and_then(|w| self.absolute(file, w, "workdir"));
        let mut port_list = Vec::new();
        for p in ports.map(|p| p.value).unwrap_or_default() {
            if let Some(p) = self.port(file, &p, Self::bad_image) {
                port_list.push(p);
            }
        }
        port_list.sort_unstable();
        port_list.dedup();
        let user = user.and_then(|u| self.non_empty(file, u, "`user`").map(|u| u.0));
        let mut label_map = BTreeMap::new();
        for (k, v) in labels.map(|l| l.value.0).unwrap_or_default() {
            if let Some((k, _)) = self.non_empty(file, k, "a label name") {
                label_map.insert(k, v.value);
            }
        }
        let decl = (self.diags.len() == before).then_some(ImageDecl {
            base,
            layers,
            entrypoint,
            cmd,
            env,
            workdir,
            ports: port_list,
            user,
            labels: label_map,
        });
        ImageChecked {
            decl,
            base_component,
        }
    }

    fn base(
        &mut self,
        comp: &str,
        base: String,
        span: Span,
        component: &mut Option<(String, Span)>,
    ) -> ImageBase {
        if base == "scratch" {
            return ImageBase::Scratch;
        }
        if let Some((name, digest)) = base.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            let ok = !name.is_empty()
                && hex.len() == 64
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if ok {
                return ImageBase::Pinned {
                    name: name.to_string(),
                    digest: digest.to_string(),
                };
            }
            self.bad_image(
                format!("`{base}` is not an image pinned by digest"),
                "expected `name@sha256:<64 lowercase hex digits>`",
                None,
                span,
            );
            return ImageBase::Scratch;
        }
        if base == comp {
            self.bad_image(
                format!("the image of `{comp}` cannot be its own base"),
                "names this component",
                None,
                span,
            );
        } else if is_name(&base) {
            *component = Some((base.clone(), span));
            return ImageBase::Component(base);
        } else {
            self.bad_image(
                format!("`{base}` is not a base image"),
                "not `scratch`, a component or `name@sha256:…`",
                Some(
                    "a base is `scratch`, another component of this environment, or an image \
                     pinned by digest (`name@sha256:…`); a tag alone can move, so it is not accepted"
                        .into(),
                ),
                span,
            );
        }
        ImageBase::Scratch
    }

    fn layer(
        &mut self,
        file: FileId,
        comp: &str,
        ast: S<LayerAst>,
        outputs: &[String],
    ) -> Option<LayerDecl> {
        let span = self.span(file, &ast);
        let LayerAst { from, to, mode } = ast.value;
        let ctx = format!("a layer of `{comp}`'s image");
        let from = self.required(file, from, "from", &ctx, span);
        let to = self.required(file, to, "to", &ctx, span);
        let from = from.and_then(|(f, fspan)| match normalize_path(&f) {
            Err(reason) => {
                self.bad_path("layer source", f, reason, fspan);
                None
            }
            Ok(p) => {
                let inside = outputs
                    .iter()
                    .any(|o| p == *o || p.starts_with(&format!("{o}/")));
                if !inside {
                    let list = outputs
                        .iter()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.bad_image(
                        format!("layer source `{f}` is not an output of `{comp}`"),
                        "not a declared output",
                        Some(format!(
                            "a layer is made from the outputs ({list}) or paths inside them"
                        )),
                        fspan,
                    );
                    return None;
                }
                Some(p)
            }
        });
        let to = to.and_then(|(t, tspan)| self.absolute_path(t, tspan, "layer destination"));
        let mode = mode.and_then(|m| {
            let mspan = self.span(file, &m);
            let parsed = u32::from_str_radix(m.value.trim_start_matches("0o"), 8)
                .ok()
                .filter(|v| *v <= 0o7777);
            if parsed.is_none() {
                self.bad_image(
                    format!("`{}` is not a file mode", m.value),
                    "expected an octal mode",
                    Some("write it as a quoted octal string, like `mode: \"0755\"`".into()),
                    mspan,
                );
            }
            parsed
        });
        Some(LayerDecl {
            from: from?,
            to: to?,
            mode,
        })
    }

    fn absolute(&mut self, file: FileId, v: S<String>, what: &str) -> Option<String> {
        let span = self.span(file, &v);
        self.absolute_path(v.value, span, what)
    }

    /// An absolute path in the image, normalized (`/usr/local/bin`).
    fn absolute_path(&mut self, p: String, span: Span, what: &str) -> Option<String> {
        let rel = p.strip_prefix('/').map(normalize_path);
        match rel {
            Some(Ok(r)) => Some(format!("/{r}")),
            Some(Err(reason)) => {
                self.bad_image(format!("`{p}` is not a valid {what}"), reason, None, span);
                None
            }
            None => {
                self.bad_image(
                    format!("`{p}` is not a valid {what}"),
                    "not an absolute path",
                    Some("paths in an image start with `/`".into()),
                    span,
                );
                None
            }
        }
    }

    fn argv(
        &mut self,
        file: FileId,
        v: S<Vec<S<String>>>,
        what: &str,
        non_empty: bool,
    ) -> Option<Vec<String>> {
        let span = self.span(file, &v);
        if non_empty && v.value.is_empty() {
            self.bad_image(
                format!("`{what}` is empty"),
                "expected a program and its arguments",
                None,
                span,
            );
            return None;
        }
        Some(v.value.into_iter().map(|a| a.value).collect())
    }

    fn port(
        &mut self,
        file: FileId,
        p: &S<i64>,
        bad: fn(&mut Self, String, &str, Option<String>, Span),
    ) -> Option<u16> {
        let span = self.span(file, p);
        let port = u16::try_from(p.value).ok().filter(|p| *p > 0);
        if port.is_none() {
            bad(
                self,
                format!("`{}` is not a port", p.value),
                "expected 1 to 65535",
                None,
                span,
            );
        }
        port
    }

    pub(super) fn tests(
        &mut self,
        file: FileId,
        comp: &str,
        entries: Vec<(S<String>, S<TestAst>)>,
        has_image: bool,
        tests_span: Span,
    ) -> Vec<SmokeTest> {
        if !has_image {
            self.bad_test(
                format!("recipe `{comp}` has tests but no image"),
                "smoke tests run against the component's image",
                Some("declare `image:` in this recipe".into()),
                tests_span,
            );
        }
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (name, test) in entries {
            let nspan = self.span(file, &name);
            let name = name.value;
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the tests of `{comp}`"), nspan, first);
                continue;
            }
            seen.insert(name.clone(), nspan);
            if !is_name(&name) {
                let n = name.clone();
                self.push(
                    |src| ManifestError::BadName {
                        name: n,
                        what: "test",
                        src,
                        span: source_span(nspan),
                    },
                    nspan,
                );
            }
            if let Some(t) = self.test(file, name, nspan, test) {
                out.push(t);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn test(
        &mut self,
        file: FileId,
        name: String,
        nspan: Span,
        ast: S<TestAst>,
    ) -> Option<SmokeTest> {
        let TestAst {
            http,
            command,
            expect,
            timeout,
        } = ast.value;
        let probe = self.probe(
            file,
            &format!("test `{name}`"),
            (http, command),
            nspan,
            Self::bad_test,
        );
        let expect = match expect {
            None => Expect::default(),
            Some(e) => self.expect(file, &name, e, matches!(probe, Some(Probe::Http { .. })))?,
        };
        let timeout = match timeout {
            None => DEFAULT_TEST_TIMEOUT,
            Some(t) => self.timeout(file, t)?,
        };
        Some(SmokeTest {
            name,
            probe: probe?,
            expect,
            timeout,
        })
    }

    /// A probe: `http` or `command`, exactly one; `whose` names its owner in messages
    /// (`test \`version\``, `the health check of \`services\``) and `bad` reports a
    /// problem as the owner's kind of diagnostic (`bad_test`, `bad_deploy`). Smoke tests and deploy health checks
    /// share it.
    pub(super) fn probe(
        &mut self,
        file: FileId,
        whose: &str,
        (http, command): ProbeAst,
        span: Span,
        bad: fn(&mut Self, String, &str, Option<String>, Span),
    ) -> Option<Probe> {
        match (http, command) {
            (Some(h), None) => self.http_probe(file, whose, h, bad),
            (None, Some(c)) => {
                let cspan = self.span(file, &c);
                if c.value.is_empty() {
                    bad(
                        self,
                        format!("{whose} has an empty command"),
                        "expected a program and its arguments",
                        None,
                        cspan,
                    );
                    return None;
                }
                Some(Probe::Command(
                    c.value.into_iter().map(|a| a.value).collect(),
                ))
            }
            (Some(_), Some(c)) => {
                let cspan = self.span(file, &c);
                bad(
                    self,
                    format!("{whose} has both `http` and `command`"),
                    "choose one",
                    None,
                    cspan,
                );
                None
            }
            (None, None) => {
                bad(
                    self,
                    format!("{whose} has no probe"),
                    "needs `http` or `command`",
                    Some(
                        "`http: { port: 8080, path: /health }` or `command: [cat, /etc/os-release]`"
                            .into(),
                    ),
                    span,
                );
                None
            }
        }
    }

    fn http_probe(
        &mut self,
        file: FileId,
        whose: &str,
        h: S<HttpAst>,
        bad: fn(&mut Self, String, &str, Option<String>, Span),
    ) -> Option<Probe> {
        let span = self.span(file, &h);
        let HttpAst { port, path } = h.value;
        let Some(port) = port else {
            self.missing("port", &format!("the http probe of {whose}"), span);
            return None;
        };
        let port = self.port(file, &port, bad)?;
        let path = match path {
            None => "/".to_string(),
            Some(p) => {
                let pspan = self.span(file, &p);
                if !p.value.starts_with('/') || p.value.chars().any(|c| c.is_whitespace()) {
                    bad(
                        self,
                        format!("`{}` is not an HTTP path", p.value),
                        "expected a path starting with `/`, without spaces",
                        None,
                        pspan,
                    );
                    return None;
                }
                p.value
            }
        };
        Some(Probe::Http { port, path })
    }

    fn expect(&mut self, file: FileId, name: &str, e: S<ExpectAst>, http: bool) -> Option<Expect> {
        let before = self.diags.len();
        let ExpectAst {
            status,
            body_contains,
            exit_code,
        } = e.value;
        let status = status.and_then(|s| {
            let span = self.span(file, &s);
            if !http {
                self.bad_test(
                    format!("test `{name}` expects an HTTP status but runs a command"),
                    "only for `http` probes",
                    Some("a command's result is `exit_code`".into()),
                    span,
                );
                return None;
            }
            let ok = u16::try_from(s.value)
                .ok()
                .filter(|s| (100..=599).contains(s));
            if ok.is_none() {
                self.bad_test(
                    format!("`{}` is not an HTTP status", s.value),
                    "expected 100 to 599",
                    None,
                    span,
                );
            }
            ok
        });
        let exit_code = exit_code.and_then(|c| {
            if http {
                let span = self.span(file, &c);
                self.bad_test(
                    format!("test `{name}` expects an exit code but probes HTTP"),
                    "only for `command` probes",
                    Some("an HTTP probe's result is `status`".into()),
                    span,
                );
                return None;
            }
            Some(c.value)
        });
        let body_contains = body_contains.and_then(|b| {
            let span = self.span(file, &b);
            match unknown_placeholder(&b.value) {
                Some(p) => {
                    let list = TEST_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("`{{{p}}}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.bad_test(
                        format!("unknown placeholder `{{{p}}}` in test `{name}`"),
                        "not a placeholder",
                        Some(format!("the placeholders are {list}")),
                        span,
                    );
                    None
                }
                None => Some(b.value),
            }
        });
        (self.diags.len() == before).then_some(Expect {
            status,
            body_contains,
            exit_code,
        })
    }
}

/// The first `{word}` in `s` that is not a known placeholder. Braces around anything
/// but a lowercase word (JSON, say) are literal text.
fn unknown_placeholder(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let name = &after[..j];
        let word = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if word && !TEST_PLACEHOLDERS.contains(&name) {
            return Some(name.to_string());
        }
        rest = &after[j + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::unknown_placeholder;

    #[test]
    fn placeholders() {
        assert_eq!(unknown_placeholder("v{version} at {commit}"), None);
        assert_eq!(unknown_placeholder("{sha}"), Some("sha".into()));
        assert_eq!(unknown_placeholder("no braces"), None);
        assert_eq!(unknown_placeholder("json {\"a\": 1}"), None);
        assert_eq!(unknown_placeholder("{version}{shaa}"), Some("shaa".into()));
    }
}
