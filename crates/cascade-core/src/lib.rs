//! cascade-core: the pure vocabulary every other crate shares: digest newtypes, the
//! canonical encoding that keys are hashed over, node keys, the output Merkle tree
//! and source spans. No IO lives here.

pub mod digest;
pub mod encode;
pub mod key;
pub mod span;
pub mod tree;

pub use digest::{BlobDigest, Digest, DigestParseError, NodeKey, OutputDigest, TreeDigest};
pub use encode::{DecodeError, Decoder, Encoder};
pub use key::{
    ContentIdentity, KeyIngredients, RunnerIdentity, SourceIdentity, SourceKey, KEY_VERSION,
    KEY_VERSIONS,
};
pub use span::{FileId, Span};
pub use tree::{EntryKind, Tree, TreeEntry, TreeError};
