//! cascade-manifest: the files users write, from text to a validated build graph.
//!
//! Input is text only (no IO): the caller loads `graph/environments/<env>.yaml`,
//! `graph/compatibility.yaml` and `recipes/*.yaml` into a [`SourceDb`] and calls
//! [`resolve`]. The stages are
//!
//! - **parse** (`ast`): YAML → structs with serde-saphyr (the only crate that knows
//!   which YAML library we use), every value wrapped in `Spanned` so it keeps its line,
//!   column and byte span; unknown fields are rejected, input budgets bound the work.
//!   After an unknown or repeated field or a value of the wrong type, the file is read
//!   again into a located tree (`tree`) and the parts that do not fit are left out, so the
//!   rest of the file is still checked.
//! - **resolve** (`resolve`): every field checked (modes, refs and versions, names,
//!   paths, env, durations, ranges), recipes tied to the environment's components, the
//!   graph ordered topologically with ties broken by name. Every problem of every file is
//!   collected into [`Diagnostics`]; each is a [`ManifestError`] (a `miette::Diagnostic`
//!   with the file, a label on the offending value and a stable `cascade::manifest::*`
//!   code). When there are problems, [`Unresolved`] carries them together with the
//!   environment's valid sources, so the caller still pins those and reports the
//!   sources' problems in the same run.
//! - **check** (`compat`): once sources are pinned, [`check_compatibility`] checks the
//!   semver ranges of the compatibility matrix against the versions found, and
//!   [`unknown_ref`] turns a missing branch, tag or version into a diagnostic.
//!
//! [`Recipe::canonical`] is the recipe's canonical encoding, whose digest goes into node
//! keys.

mod ast;
mod compat;
mod error;
mod model;
mod order;
mod range;
mod resolve;
mod source;
mod tree;

pub use ast::MAX_FILE_BYTES;
pub use compat::{check_compatibility, unknown_ref};
pub use error::{Diagnostics, ManifestError, Unresolved};
pub use model::tool_set;
pub use model::{
    Change, Changelog, Component, Constraint, DeclaredSource, Deploy, DeployComponent, DeployHost,
    Environment, Expect, FieldChange, Graph, HealthCheck, ImageBase, ImageDecl, KeyLocation,
    LayerDecl, Mode, PortMap, Probe, Recipe, Rev, RunnerDecl, RunnerImage, SecretSource, SmokeTest,
    SourceFilter, SourceSpec, Stamp, Step, Volume, LOCAL_HOST, TEST_PLACEHOLDERS, TOOL_SETS,
};
pub use order::{build_order, Ordered};
pub use range::{RangeError, VersionRange};
pub use resolve::{recipe_alone, resolve, ProjectFiles, DEFAULT_TEST_TIMEOUT};
pub use source::SourceDb;
