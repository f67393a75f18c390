//! Node keys: the derivation hash over everything that can change a node's output.
//!
//! The ingredients are encoded canonically (see `docs/encoding.md`) and the key is the
//! blake3 of that encoding. The encoding itself is kept in the store as the node's
//! *key manifest*, so every ingredient of an old key can be recovered and compared.
//! The recipe's timeout is deliberately not an ingredient: it cannot change an output.
//!
//! Two key formats exist. Format 1 keyed a node's source by its commit (and the version
//! and commit time derived from it), so any commit to a repository rebuilt every
//! component in it. Format 2 keys the source by the content that is exported, the time
//! that content last changed, and only what the recipe stamps. New builds use format 2;
//! lockfiles of format 1 replay with format 1, so their keys and outputs never change.

use std::collections::BTreeMap;

use crate::digest::{BlobDigest, Digest, NodeKey, OutputDigest};
use crate::encode::{DecodeError, Decoder, Encoder};

const DOMAIN: &str = "cascade/node-key";
/// The key format new builds use. Bump when the set or meaning of ingredients changes:
/// every key changes with it, and the old format must keep encoding as it did.
pub const KEY_VERSION: u64 = 2;
/// Every key format this cascade can encode and decode.
pub const KEY_VERSIONS: [u64; 2] = [1, KEY_VERSION];
/// The runner digest's own version: the same in both key formats (lockfiles of either
/// record it, and a runner is the same runner whatever keys it).
const RUNNER_VERSION: u64 = 1;

/// Key format 1: where the node's source comes from, once pinned, commit and all.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceIdentity {
    /// The repository as written in the environment manifest.
    pub repo: String,
    /// Full commit SHA (hex).
    pub commit: String,
    /// The tree id that is exported: the commit's root tree, or the `dir` sub-tree.
    pub tree: String,
    pub dir: Option<String>,
    /// The component's version, which steps see as `CASCADE_VERSION`.
    pub version: String,
    /// The commit time, which steps see as `SOURCE_DATE_EPOCH`.
    pub commit_time: i64,
}

/// Key format 2: the source by what the steps can see of it. Not the repository, the
/// commit or the `dir:` (none of them reach a step), unless stamped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentIdentity {
    /// The git id of the exported tree: the `dir:` sub-tree after the recipe's source
    /// filter.
    pub content: String,
    /// `SOURCE_DATE_EPOCH`: the time of the newest commit that changed that content.
    pub epoch: i64,
    /// `CASCADE_COMMIT`, when the recipe stamps `commit`.
    pub commit: Option<String>,
    /// `CASCADE_VERSION`, when it stamps `version`.
    pub version: Option<String>,
    /// `CASCADE_COMMIT_TIME`, when it stamps `time`.
    pub commit_time: Option<i64>,
}

/// A node's source as its key covers it, in one of the two key formats.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKey {
    Commit(SourceIdentity),
    Content(ContentIdentity),
}

impl SourceKey {
    /// The key format this source is keyed in.
    pub fn format(&self) -> u64 {
        match self {
            SourceKey::Commit(_) => 1,
            SourceKey::Content(_) => 2,
        }
    }
}

/// What runs the steps. The host runner is identified by the content digests of the
/// declared tools as resolved on PATH; the container runner by the manifest digest of
/// the image its containers run (`sha256:<hex>`), which covers every file in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerIdentity {
    Host { tools: BTreeMap<String, BlobDigest> },
    Container { image: String },
}

impl RunnerIdentity {
    fn write(&self, e: &mut Encoder) {
        match self {
            RunnerIdentity::Host { tools } => {
                e.str(0, "host");
                e.list(1, tools.iter(), |e, (name, d)| {
                    e.str(0, name).bytes(1, &d.0 .0);
                });
            }
            RunnerIdentity::Container { image } => {
                e.str(0, "container");
                e.str(1, image);
            }
        }
    }

    /// The runner's own digest, as the lockfile records it.
    pub fn digest(&self) -> Digest {
        let mut e = Encoder::new("cascade/runner", RUNNER_VERSION);
        e.nested(1, |e| self.write(e));
        Digest::of(e.as_bytes())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyIngredients {
    /// Steps see it as `CASCADE_COMPONENT`, so it can change the output.
    pub component: String,
    /// Digest of the recipe's canonical (normalized) encoding.
    pub recipe: Digest,
    pub source: SourceKey,
    /// Output digests of the inputs, by input name.
    pub inputs: BTreeMap<String, OutputDigest>,
    pub runner: RunnerIdentity,
    /// The declared environment, names and values.
    pub env: BTreeMap<String, String>,
}

impl KeyIngredients {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(DOMAIN, self.source.format());
        e.str(1, &self.component);
        e.bytes(2, &self.recipe.0);
        e.nested(3, |e| match &self.source {
            SourceKey::Commit(s) => {
                e.str(0, &s.repo)
                    .str(1, &s.commit)
                    .str(2, &s.tree)
                    .opt_str(3, s.dir.as_deref())
                    .str(4, &s.version)
                    .u64(5, s.commit_time as u64);
            }
            SourceKey::Content(s) => {
                e.str(0, &s.content).u64(1, s.epoch as u64);
                // Stamps are fields only when stamped, so an unstamped key says nothing
                // of the commit.
                if let Some(c) = &s.commit {
                    e.str(2, c);
                }
                if let Some(v) = &s.version {
                    e.str(3, v);
                }
                if let Some(t) = s.commit_time {
                    e.u64(4, t as u64);
                }
            }
        });
        e.list(4, self.inputs.iter(), |e, (name, d)| {
            e.str(0, name).bytes(1, &d.0 .0);
        });
        e.nested(5, |e| self.runner.write(e));
        e.map(6, &self.env);
        e.finish()
    }

    pub fn key(&self) -> NodeKey {
        NodeKey(Digest::of(&self.encode()))
    }

    /// Reads a key manifest of either format.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        fn digest(b: &[u8], tag: u8) -> Result<Digest, DecodeError> {
            Ok(Digest(
                b.try_into().map_err(|_| DecodeError::Malformed(tag))?,
            ))
        }
        let (mut d, format) = Decoder::any_version(bytes, DOMAIN, &KEY_VERSIONS)?;
        let component = d.str(1)?.to_string();
        let recipe = digest(d.bytes(2)?, 2)?;
        let mut s = d.nested(3)?;
        let source = if format == 1 {
            SourceKey::Commit(SourceIdentity {
                repo: s.str(0)?.to_string(),
                commit: s.str(1)?.to_string(),
                tree: s.str(2)?.to_string(),
                dir: s.opt_str(3)?.map(str::to_string),
                version: s.str(4)?.to_string(),
                commit_time: s.u64(5)? as i64,
            })
        } else {
            let content = s.str(0)?.to_string();
            let epoch = s.u64(1)? as i64;
            let commit = match s.peek_tag() {
                Some(2) => Some(s.str(2)?.to_string()),
                _ => None,
            };
            let version = match s.peek_tag() {
                Some(3) => Some(s.str(3)?.to_string()),
                _ => None,
            };
            let commit_time = match s.peek_tag() {
                Some(4) => Some(s.u64(4)? as i64),
                _ => None,
            };
            SourceKey::Content(ContentIdentity {
                content,
                epoch,
                commit,
                version,
                commit_time,
            })
        };
        s.end()?;
        let mut inputs = BTreeMap::new();
        for mut i in d.list(4)? {
            let name = i.str(0)?.to_string();
            inputs.insert(name, OutputDigest(digest(i.bytes(1)?, 1)?));
            i.end()?;
        }
        let mut r = d.nested(5)?;
        let runner = match r.str(0)? {
            "host" => {
                let mut tools = BTreeMap::new();
                for mut t in r.list(1)? {
                    let name = t.str(0)?.to_string();
                    tools.insert(name, BlobDigest(digest(t.bytes(1)?, 1)?));
                    t.end()?;
                }
                RunnerIdentity::Host { tools }
            }
            "container" => RunnerIdentity::Container {
                image: r.str(1)?.to_string(),
            },
            _ => return Err(DecodeError::Malformed(5)),
        };
        r.end()?;
        let env = d.map(6)?;
        d.end()?;
        Ok(KeyIngredients {
            component,
            recipe,
            source,
            inputs,
            runner,
            env,
        })
    }
}
