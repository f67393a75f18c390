//! A recipe's `stamp:` and `source:` (the filter): what of its source's history and
//! files the steps see, and so what its key covers; and its `changelog:`, which
//! `release tag` writes outside what the filter keeps.

use std::collections::BTreeMap;

use cascade_core::{FileId, Span};

use super::{closest, Resolver};
use crate::ast::{FilterAst, S};
use crate::error::ManifestError;
use crate::model::{Changelog, SourceFilter, Stamp};
use crate::source::source_span;

impl Resolver<'_> {
    fn bad_recipe_value(&mut self, message: String, label: &str, help: String, span: Span) {
        let (label, span_) = (label.to_string(), source_span(span));
        self.push(
            |src| ManifestError::BadRecipeValue {
                message,
                src,
                span: span_,
                label,
                help: Some(help),
            },
            span,
        );
    }

    /// `stamp: [commit, version, time]`, each once, sorted.
    pub(super) fn stamps(
        &mut self,
        file: FileId,
        comp: &str,
        list: Option<S<Vec<S<String>>>>,
    ) -> Vec<Stamp> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for item in list.map(|l| l.value).unwrap_or_default() {
            let span = self.span(file, &item);
            let name = item.value;
            let Some(stamp) = Stamp::parse(&name) else {
                let known: Vec<&str> = Stamp::ALL.iter().map(|s| s.as_str()).collect();
                let help = match closest(&name, known.iter().copied()) {
                    Some(c) => format!(
                        "did you mean `{c}`? a recipe may stamp {}",
                        known.join(", ")
                    ),
                    None => format!("a recipe may stamp {}", known.join(", ")),
                };
                self.bad_recipe_value(
                    format!("`{name}` cannot be stamped"),
                    "not commit, version or time",
                    help,
                    span,
                );
                continue;
            };
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the stamps of `{comp}`"), span, first);
                continue;
            }
            seen.insert(name, span);
            out.push(stamp);
        }
        out.sort();
        out
    }

    /// `source: { include: [...], exclude: [...] }`: each pattern a glob relative to the
    /// exported tree, checked here; sorted and without repeats. Whether a pattern
    /// matches anything is known only once the source is pinned (a warning then).
    pub(super) fn filter(
        &mut self,
        file: FileId,
        comp: &str,
        ast: Option<S<FilterAst>>,
    ) -> SourceFilter {
        let Some(ast) = ast else {
            return SourceFilter::default();
        };
        let FilterAst { include, exclude } = ast.value;
        SourceFilter {
            include: self.globs(file, comp, "include", include),
            exclude: self.globs(file, comp, "exclude", exclude),
        }
    }

    /// `changelog: CHANGELOG.md`: a file path relative to the source's `dir:`,
    /// normalized; absolute, `..`, empty or the whole tree is a diagnostic on the value.
    pub(super) fn changelog(
        &mut self,
        file: FileId,
        value: Option<S<String>>,
    ) -> Option<Changelog> {
        let value = value?;
        let span = self.span(file, &value);
        let reason = match super::normalize_path(&value.value) {
            Ok(p) if !p.is_empty() => {
                return Some(Changelog { path: p, span });
            }
            Ok(_) if value.value.is_empty() => "empty",
            Ok(_) => "names the whole source tree",
            Err(reason) => reason,
        };
        let message = if value.value.is_empty() {
            "an empty `changelog:` names no file".to_string()
        } else {
            format!("`{}` cannot be the changelog file", value.value)
        };
        self.bad_recipe_value(
            message,
            reason,
            "`changelog:` is a file relative to the source's `dir:`, like `CHANGELOG.md`".into(),
            span,
        );
        None
    }

    fn globs(
        &mut self,
        file: FileId,
        comp: &str,
        field: &str,
        list: Option<S<Vec<S<String>>>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for item in list.map(|l| l.value).unwrap_or_default() {
            let span = self.span(file, &item);
            let pattern = item.value;
            if let Some((message, label)) = glob_problem(&pattern) {
                self.bad_recipe_value(
                    message,
                    label,
                    "patterns are relative to the source's exported tree: `src/**`, `Makefile`, `**/*.md`".into(),
                    span,
                );
                continue;
            }
            if let Some(&first) = seen.get(&pattern) {
                self.duplicate(
                    &pattern,
                    &format!("the `source.{field}` patterns of `{comp}`"),
                    span,
                    first,
                );
                continue;
            }
            seen.insert(pattern.clone(), span);
            out.push(pattern);
        }
        out.sort();
        out
    }
}

/// Why a filter pattern cannot be used: not a glob, or one that looks outside the tree.
fn glob_problem(pattern: &str) -> Option<(String, &'static str)> {
    if pattern.is_empty() {
        return Some(("an empty pattern matches nothing".into(), "empty"));
    }
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == ".." || c == ".") {
        return Some((
            format!("`{pattern}` is not relative to the source tree"),
            "absolute, or with `.` or `..`",
        ));
    }
    if pattern.contains('\0') {
        return Some((format!("`{pattern}` holds a NUL byte"), "NUL"));
    }
    match globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
    {
        Ok(_) => None,
        Err(e) => Some((
            format!("`{pattern}` is not a glob: {}", e.kind()),
            "not a glob",
        )),
    }
}
