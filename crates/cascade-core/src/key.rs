//! Node keys: the derivation hash over everything that can change a node's output.
//!
//! The ingredients are encoded canonically (see `docs/encoding.md`) and the key is the
//! blake3 of that encoding. The encoding itself is kept in the store as the node's
//! *key manifest*, so every ingredient of an old key can be recovered and compared.
//! The recipe's timeout is deliberately not an ingredient: it cannot change an output.

use std::collections::BTreeMap;

use crate::digest::{BlobDigest, Digest, NodeKey, OutputDigest};
use crate::encode::{DecodeError, Decoder, Encoder};

const DOMAIN: &str = "cascade/node-key";
/// Bump when the set or meaning of ingredients changes: every key changes with it.
pub const KEY_VERSION: u64 = 1;

/// Where the node's source comes from, once pinned.
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
        let mut e = Encoder::new("cascade/runner", KEY_VERSION);
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
    pub source: SourceIdentity,
    /// Output digests of the inputs, by input name.
    pub inputs: BTreeMap<String, OutputDigest>,
    pub runner: RunnerIdentity,
    /// The declared environment, names and values.
    pub env: BTreeMap<String, String>,
}

impl KeyIngredients {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(DOMAIN, KEY_VERSION);
        e.str(1, &self.component);
        e.bytes(2, &self.recipe.0);
        e.nested(3, |e| {
            let s = &self.source;
            e.str(0, &s.repo)
                .str(1, &s.commit)
                .str(2, &s.tree)
                .opt_str(3, s.dir.as_deref())
                .str(4, &s.version)
                .u64(5, s.commit_time as u64);
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

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        fn digest(b: &[u8], tag: u8) -> Result<Digest, DecodeError> {
            Ok(Digest(
                b.try_into().map_err(|_| DecodeError::Malformed(tag))?,
            ))
        }
        let mut d = Decoder::new(bytes, DOMAIN, KEY_VERSION)?;
        let component = d.str(1)?.to_string();
        let recipe = digest(d.bytes(2)?, 2)?;
        let mut s = d.nested(3)?;
        let source = SourceIdentity {
            repo: s.str(0)?.to_string(),
            commit: s.str(1)?.to_string(),
            tree: s.str(2)?.to_string(),
            dir: s.opt_str(3)?.map(str::to_string),
            version: s.str(4)?.to_string(),
            commit_time: s.u64(5)? as i64,
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
