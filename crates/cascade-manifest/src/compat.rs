//! Checks that need the world: the compatibility matrix against the versions found by
//! pinning, and refs that do not exist in a repository.

use std::collections::BTreeMap;

use crate::error::{Diagnostics, ManifestError};
use crate::model::{Graph, SourceSpec};
use crate::source::source_span;
use crate::SourceDb;

/// Check the compatibility matrix against the components' versions (known after
/// pinning). A rule whose upstream has no entry in `versions` is not checked.
pub fn check_compatibility(
    db: &SourceDb,
    graph: &Graph,
    versions: &BTreeMap<String, semver::Version>,
) -> Result<(), Diagnostics> {
    let mut diags = Vec::new();
    for rule in &graph.compatibility {
        if graph.index_of(&rule.component).is_none() || graph.index_of(&rule.upstream).is_none() {
            continue;
        }
        let Some(version) = versions.get(&rule.upstream) else {
            continue;
        };
        if rule.range.matches(version) {
            continue;
        }
        let help = if version.pre.is_empty() {
            format!(
                "build a version of `{}` in this range, or relax the rule for `{}` in the compatibility matrix",
                rule.upstream, rule.component
            )
        } else {
            let mut release = version.clone();
            release.pre = semver::Prerelease::EMPTY;
            release.build = semver::BuildMetadata::EMPTY;
            format!(
                "`{version}` is a pre-release (a branch build), which comes before `{release}` in semver order"
            )
        };
        diags.push(ManifestError::Incompatible {
            upstream: rule.upstream.clone(),
            version: version.to_string(),
            range: rule.range.to_string(),
            component: rule.component.clone(),
            src: db.shared_source(rule.span.file),
            span: source_span(rule.span),
            help,
        });
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics::capped(diags))
    }
}

/// A ref/tag/version that does not exist in a repository, pointing at the
/// `ref:`/`version:` value; `closest` (supplied by the caller, best first) becomes the
/// help line.
pub fn unknown_ref(
    db: &SourceDb,
    source: &SourceSpec,
    message: String,
    closest: Vec<String>,
) -> ManifestError {
    let span = source.rev_span;
    let help = (!closest.is_empty()).then(|| {
        let list = closest
            .iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("the closest that exist: {list}")
    });
    ManifestError::UnknownRef {
        message,
        src: db.shared_source(span.file),
        span: source_span(span),
        help,
    }
}
