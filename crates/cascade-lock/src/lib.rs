//! cascade-lock: the lockfile, the one persisted and versioned schema of cascade.
//!
//! A lockfile records the full resolved closure of one build of one environment: per
//! node its pinned source, recipe and runner digests, the output digests of its inputs,
//! its node key, output digest and artifacts. It is written on every successful build and
//! read back to replay, diff or promote that build, possibly years later.
//!
//! [`write()`] is a hand-written YAML emitter rather than a serializer's output, because the
//! bytes are part of the contract: the same [`Lockfile`] value always gives the same text
//! (sorted keys, fixed indentation, a fixed quoting rule), whatever library versions
//! built the binary. [`read()`] parses with serde-saphyr, rejects unknown fields and other
//! formats, and reports problems as diagnostics pointing into the file.
//!
//! Pure: no IO. The caller reads and writes the files.

mod history;
mod read;
mod write;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

use cascade_core::{Digest, NodeKey, OutputDigest};

pub use history::{read_history, write_history, Deployment, History, HISTORY_FORMAT};
pub use read::{read, LockError};
pub use write::{write, write_nodes};

/// The value of the `format:` line this crate writes for builds keyed in the newest key
/// format.
pub const FORMAT: &str = "cascade-lock/4";
/// Every format it reads. `cascade-lock/1` is `/2` without `image` and `tests`; `/3` has
/// the fields of `/2`, and its keys are of key format 2 (the source by content) where
/// those of `/1` and `/2` are of key format 1 (by commit). `/4` is `/3` ending with a
/// [`COUNT_FIELD`] line, so that a file cut short anywhere (even exactly between two
/// nodes, which still parses) is refused rather than replayed as a subset.
pub const READS: [&str; 4] = ["cascade-lock/1", "cascade-lock/2", "cascade-lock/3", FORMAT];

/// The last line of a `cascade-lock/4` file: `node_count: <the number of nodes>`.
/// Derived from `nodes` when writing, checked against it when reading; not a field of
/// [`Lockfile`], and not in any key (only the file carries it).
pub const COUNT_FIELD: &str = "node_count";

/// Whether lockfiles of `format` end with [`COUNT_FIELD`].
pub fn has_count(format: &str) -> bool {
    format == FORMAT
}

/// The `format:` line of a lockfile whose keys are of `key_format`: a replay of an old
/// lockfile that writes a new one writes it in the old format, so its keys stay true.
pub fn format_for(key_format: u64) -> &'static str {
    if key_format >= 2 {
        FORMAT
    } else {
        "cascade-lock/2"
    }
}

/// The key format of the keys in a lockfile of `format` (one of [`READS`]).
pub fn key_format_of(format: &str) -> u64 {
    if format == FORMAT || format == "cascade-lock/3" {
        2
    } else {
        1
    }
}

/// One build of one environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// The key format of every `key:` in it (`cascade_core::KEY_VERSIONS`), which the
    /// `format:` line tells; not a field of its own.
    #[serde(skip, default = "newest_key_format")]
    pub key_format: u64,
    pub environment: String,
    /// Digest of the environment, compatibility and recipe files used.
    pub graph: Digest,
    /// By component name.
    pub nodes: BTreeMap<String, LockNode>,
}

fn newest_key_format() -> u64 {
    cascade_core::KEY_VERSION
}

/// One component of the build.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockNode {
    pub source: LockSource,
    /// Digest of the normalized recipe (kept in the store, so the lockfile replays).
    pub recipe: Digest,
    /// The runner's identity: the declared tools' digests (host) or the image digest.
    pub runner: Digest,
    /// Output digests of the inputs, by input name.
    pub inputs: BTreeMap<String, OutputDigest>,
    pub key: NodeKey,
    pub output: OutputDigest,
    /// Declared output path → its blob or tree digest.
    pub artifacts: BTreeMap<String, Digest>,
    /// The node's OCI image, when its recipe declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<LockImage>,
    /// Smoke test name → result, when its recipe declares tests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tests: BTreeMap<String, TestResult>,
}

/// An image as built: where it is tagged and its manifest digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockImage {
    /// `[registry/]component:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The manifest's `sha256:` digest.
    pub digest: String,
    /// The image declaration's digest (kept in the store, so the image can be made
    /// again on replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Digest>,
}

/// What became of one smoke test. A lockfile is written only for a successful build,
/// so a recorded test either passed or was skipped (`--skip-tests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestResult {
    Passed,
    Skipped,
}

impl TestResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TestResult::Passed => "passed",
            TestResult::Skipped => "skipped",
        }
    }
}

/// The lines above a lockfile's nodes.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    /// The key format of every `key:` (the `format:` line tells it).
    pub key_format: u64,
    pub environment: &'a str,
    pub graph: Digest,
}

/// A [`LockNode`] borrowed from wherever its parts are kept, as [`write_nodes`] renders
/// it: a build writes its lockfile from its own values instead of copying each node's
/// dozen strings and maps into a [`Lockfile`] first.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub source: SourceView<'a>,
    pub recipe: Digest,
    pub runner: Digest,
    pub inputs: &'a BTreeMap<String, OutputDigest>,
    pub key: NodeKey,
    pub output: OutputDigest,
    pub artifacts: &'a BTreeMap<String, Digest>,
    pub image: Option<ImageView<'a>>,
    /// Sorted by name, each name once.
    pub tests: Vec<(&'a str, TestResult)>,
}

/// [`LockSource`], borrowed.
#[derive(Clone, Debug)]
pub struct SourceView<'a> {
    pub repo: &'a str,
    pub r#ref: Option<&'a str>,
    pub commit: &'a str,
    pub tree: &'a str,
    pub dir: Option<&'a str>,
    pub version: Cow<'a, str>,
}

/// [`LockImage`], borrowed.
#[derive(Clone, Debug)]
pub struct ImageView<'a> {
    pub reference: &'a str,
    pub digest: Cow<'a, str>,
    pub spec: Option<Digest>,
}

impl LockNode {
    pub fn view(&self) -> NodeView<'_> {
        let s = &self.source;
        NodeView {
            source: SourceView {
                repo: &s.repo,
                r#ref: s.r#ref.as_deref(),
                commit: &s.commit,
                tree: &s.tree,
                dir: s.dir.as_deref(),
                version: Cow::Borrowed(&s.version),
            },
            recipe: self.recipe,
            runner: self.runner,
            inputs: &self.inputs,
            key: self.key,
            output: self.output,
            artifacts: &self.artifacts,
            image: self.image.as_ref().map(|i| ImageView {
                reference: &i.reference,
                digest: Cow::Borrowed(&i.digest),
                spec: i.spec,
            }),
            tests: self.tests.iter().map(|(n, r)| (n.as_str(), *r)).collect(),
        }
    }
}

impl NodeView<'_> {
    pub fn to_node(&self) -> LockNode {
        let s = &self.source;
        LockNode {
            source: LockSource {
                repo: s.repo.to_string(),
                r#ref: s.r#ref.map(str::to_string),
                commit: s.commit.to_string(),
                tree: s.tree.to_string(),
                dir: s.dir.map(str::to_string),
                version: s.version.to_string(),
            },
            recipe: self.recipe,
            runner: self.runner,
            inputs: self.inputs.clone(),
            key: self.key,
            output: self.output,
            artifacts: self.artifacts.clone(),
            image: self.image.as_ref().map(|i| LockImage {
                reference: i.reference.to_string(),
                digest: i.digest.to_string(),
                spec: i.spec,
            }),
            tests: self
                .tests
                .iter()
                .map(|(n, r)| (n.to_string(), *r))
                .collect(),
        }
    }
}

/// Where a node's source came from, once pinned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSource {
    /// The repository as written in the environment manifest.
    pub repo: String,
    /// The ref as written, in branch mode; absent in version mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Full commit SHA.
    pub commit: String,
    /// The exported tree id (the `dir` sub-tree when there is one).
    pub tree: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    pub version: String,
}
