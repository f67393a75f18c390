//! The validated model: what the manifests mean once every field has been checked.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cascade_core::{Digest, Encoder, FileId, Span};

use crate::range::VersionRange;

/// The resolved build graph of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub environment: Environment,
    /// Topological order (inputs first); ties broken by name, so the order is deterministic.
    pub components: Vec<Component>,
    /// The rules of `graph/compatibility.yaml` whose two components are both in the
    /// graph, sorted by (component, upstream). Checked by [`crate::check_compatibility`].
    pub compatibility: Vec<Constraint>,
}

impl Graph {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.components.iter().position(|c| c.name == name)
    }
}

/// `graph/environments/<env>.yaml`, minus its sources (which live in the components).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    pub mode: Mode,
    pub registry: Option<String>,
    pub tag: Option<String>,
    pub file: FileId,
}

/// How an environment's sources are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Sources follow refs (branches, tags or commits).
    Branch,
    /// Sources pin released versions (tags `v<version>` or `<version>`).
    Version,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Branch => "branch",
            Mode::Version => "version",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub source: SourceSpec,
    pub recipe: Recipe,
    pub recipe_file: FileId,
    /// Indices into `Graph::components` of the recipe's inputs, sorted by name.
    pub inputs: Vec<usize>,
}

/// Where a component's code comes from, as written in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    /// As written: a path relative to the environment file, a `file://` URL or any URL.
    pub repo: String,
    pub repo_span: Span,
    pub rev: Rev,
    /// The `ref:` or `version:` value, for diagnostics such as [`crate::unknown_ref`].
    pub rev_span: Span,
    /// A sub-directory, normalized (relative, no `.` or `..`, no trailing `/`).
    pub dir: Option<String>,
}

/// What to pin a source at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rev {
    /// Branch mode: a branch, a tag or a commit.
    Ref(String),
    /// Version mode: a version, written `v4.0.0` or `4.0.0` (the tag may be either).
    Version(semver::Version),
}

/// A compatibility rule: `component` requires `upstream`'s version to be in `range`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub component: String,
    pub upstream: String,
    pub range: VersionRange,
    /// The range string in `graph/compatibility.yaml`.
    pub span: Span,
}

/// `recipes/<component>.yaml`, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// Upstream component names, sorted.
    pub inputs: Vec<String>,
    /// `runner: { host: { tools: [...] } }`, sorted.
    pub tools: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// In order.
    pub steps: Vec<Step>,
    /// Sorted, relative, normalized (no `.`, no trailing `/`).
    pub outputs: Vec<String>,
}

/// One step of a recipe: a shell script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub run: String,
}

const RECIPE_DOMAIN: &str = "cascade/recipe";
const RECIPE_VERSION: u64 = 1;

impl Recipe {
    /// Canonical encoding (cascade_core::Encoder, domain "cascade/recipe", version 1) of
    /// everything but the timeout; its blake3 is the recipe digest. The timeout is left
    /// out because it cannot change an output.
    pub fn canonical(&self) -> Vec<u8> {
        let mut e = Encoder::new(RECIPE_DOMAIN, RECIPE_VERSION);
        e.strs(1, self.inputs.iter().map(String::as_str));
        e.strs(2, self.tools.iter().map(String::as_str));
        e.map(3, &self.env);
        e.list(4, self.steps.iter(), |e, s| {
            e.str(0, &s.name).str(1, &s.run);
        });
        e.strs(5, self.outputs.iter().map(String::as_str));
        e.finish()
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            inputs: vec!["a".into(), "b".into()],
            tools: vec!["cc".into(), "sh".into()],
            env: [("OPT".to_string(), "-O2".to_string())].into(),
            timeout: Some(Duration::from_secs(30)),
            steps: vec![
                Step {
                    name: "build".into(),
                    run: "make".into(),
                },
                Step {
                    name: "test".into(),
                    run: "make test".into(),
                },
            ],
            outputs: vec!["out".into()],
        }
    }

    #[test]
    fn every_ingredient_changes_the_digest_but_the_timeout() {
        let base = recipe().digest();
        type Change = (&'static str, fn(&mut Recipe));
        let changes: Vec<Change> = vec![
            ("input", |r| r.inputs[1] = "c".into()),
            ("no input", |r| r.inputs.clear()),
            ("tool", |r| r.tools.push("ar".into())),
            ("env value", |r| {
                r.env.insert("OPT".into(), "-O3".into());
            }),
            ("env name", |r| {
                r.env.insert("OPT2".into(), "-O2".into());
            }),
            ("step run", |r| r.steps[1].run.push(' ')),
            ("step name", |r| r.steps[0].name = "compile".into()),
            ("step order", |r| r.steps.reverse()),
            ("output", |r| r.outputs[0] = "out/bin".into()),
            ("extra output", |r| r.outputs.push("lib".into())),
        ];
        for (what, change) in changes {
            let mut r = recipe();
            change(&mut r);
            assert_ne!(r.digest(), base, "changing the {what} kept the digest");
        }
        let mut r = recipe();
        r.timeout = None;
        assert_eq!(r.digest(), base, "the timeout is not an ingredient");
        assert_eq!(recipe().digest(), base, "deterministic");
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        // The same strings in different fields give different digests.
        let mut a = recipe();
        a.inputs = vec!["x".into()];
        a.tools = vec![];
        let mut b = recipe();
        b.inputs = vec![];
        b.tools = vec!["x".into()];
        assert_ne!(a.digest(), b.digest());
    }
}
