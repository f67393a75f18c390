//! cascade-image: deterministic, daemonless OCI image assembly, and unpacking.
//!
//! Files on disk become layers, layers plus a config become an image in an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), and an image can be
//! exported as one tar that both `skopeo copy oci-archive:…` and `docker load` accept,
//! or unpacked into a directory ([`unpack()`]) that becomes a sandbox's root filesystem.
//! No Docker daemon, no network, no clock: the same [`ImageSpec`] and the same file
//! contents give the same bytes, and so the same digests, on any machine.
//!
//! What makes that true:
//! - layer tars are normalized (sorted bytewise by path, mtime = SOURCE_DATE_EPOCH,
//!   uid/gid 0, no user names, modes 0644/0755, GNU headers with no PAX records);
//! - gzip has a fixed header (MTIME 0, no name, OS 255) and a fixed level
//!   ([`GZIP_LEVEL`]), deflated by miniz_oxide called directly (`gzip.rs`), so neither a
//!   system zlib nor a flate2 backend another crate's features select decides the bytes
//!   (tests pin the gzip bytes and the digests);
//! - JSON documents are our own structs with a fixed field order and `BTreeMap`s,
//!   written compact with no trailing newline;
//! - every timestamp comes from SOURCE_DATE_EPOCH.
//!
//! Why these crates:
//! - `tar`: writes headers we fill field by field, streams entries from readers, and has
//!   the GNU long-name extension for paths over 100 bytes. When unpacking we use only
//!   its parser (entries, long names, PAX records); what is created on disk, and where,
//!   is ours, not its `unpack`.
//! - `miniz_oxide` (writing) and `flate2` (reading): the encoder is miniz_oxide's
//!   streaming deflate framed by hand, exactly as flate2's pure-Rust backend wrote it, so
//!   earlier images keep their digests; flate2's backend is whatever the workspace's
//!   features unify to (rpgp asks for zlib-rs), which only decodes. Another deflate
//!   implementation (or version) produces other bytes, which is why `Cargo.lock` pins
//!   miniz_oxide and a test vector checks it.
//! - `sha2`: OCI digests are sha256 (our own store uses blake3).
//! - not `oci-spec`: its labels, annotations and exposed ports are `HashMap`s, so its
//!   serialization order changes from run to run; its builders also bring
//!   derive_builder, getset, strum and regex. The documents are small: `model.rs`
//!   defines the fields we write and read.
//!
//! A layer is streamed in one pass (tar → sha256 → gzip → sha256 → temp file → rename),
//! so a layer of any size is written in constant memory; unpacking streams the other
//! way (blob → sha256 → gunzip → sha256 → entries), checking both digests at the end.
//! Unpacking assumes hostile layers: nothing is written outside the destination, no
//! symlink is followed on the host, and the work is bounded.

mod archive;
mod digest;
mod gzip;
mod image;
mod layer;
mod layout;
mod model;
mod unpack;

use std::io;
use std::path::{Path, PathBuf};

pub use archive::export_archive;
pub use digest::{HashingWriter, OciDigest};
pub use image::{
    assemble, rfc3339, Base, ConfigSpec, ImageBuilt, ImageSpec, LayerSpec, Platform, RunConfig,
    ANNOTATION_BASE_DIGEST,
};
pub use layer::{
    entries_from_dir, write_layer, EntryKind, LayerBuilt, LayerEntry, GZIP_LEVEL, GZIP_OS_UNKNOWN,
};
pub use layout::{IndexEntry, OciLayout};
pub use model::{
    Descriptor, ANNOTATION_CONTAINERD_NAME, ANNOTATION_CREATED, ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
};
pub use unpack::{unpack, unpack_with_limit, Unpacked, DEFAULT_UNPACK_LIMIT, HEADER_LIMIT};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ImageError {
    #[error("image I/O failed at `{path}`")]
    #[diagnostic(
        code(cascade::image::io),
        help("check that the directory is writable and the disk is not full")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer source `{path}` does not exist")]
    #[diagnostic(code(cascade::image::source_missing))]
    SourceMissing { path: PathBuf },

    #[error("`{path}` changed while it was being added to a layer")]
    #[diagnostic(
        code(cascade::image::file_changed),
        help("nothing may write to a layer's sources while the image is assembled")
    )]
    FileChanged { path: PathBuf },

    #[error("`{path}` has a name that is not valid UTF-8")]
    #[diagnostic(code(cascade::image::non_utf8))]
    NonUtf8Path { path: PathBuf },

    #[error("`{path}` is not a regular file, directory or symlink")]
    #[diagnostic(code(cascade::image::file_type))]
    UnsupportedFileType { path: PathBuf },

    #[error("symlink `{path}` points outside the image (`{target}`)")]
    #[diagnostic(
        code(cascade::image::symlink),
        help("a link in a layer must be relative and, from where the layer puts it, stay inside the image")
    )]
    SymlinkEscapes { path: PathBuf, target: String },

    #[error("invalid path `{path}` in an image layer: {reason}")]
    #[diagnostic(code(cascade::image::path))]
    InvalidPath { path: String, reason: &'static str },

    #[error("`{path}` appears twice in one layer")]
    #[diagnostic(code(cascade::image::duplicate_path))]
    DuplicatePath { path: String },

    #[error("mode {mode:#o} of `{path}` is not a permission mode (at most 0o7777)")]
    #[diagnostic(code(cascade::image::mode))]
    InvalidMode { path: String, mode: u32 },

    #[error("SOURCE_DATE_EPOCH {epoch} is out of range (0 to year 9999)")]
    #[diagnostic(code(cascade::image::epoch))]
    InvalidEpoch { epoch: i64 },

    #[error("`{digest}` is not a `sha256:<64 lowercase hex>` digest")]
    #[diagnostic(code(cascade::image::digest))]
    InvalidDigest { digest: String },

    #[error("blob `{digest}` is missing from the layout (`{path}`)")]
    #[diagnostic(code(cascade::image::missing_blob))]
    MissingBlob { digest: OciDigest, path: PathBuf },

    #[error("blob `{path}` is corrupt: expected `{expected}`, found `{actual}`")]
    #[diagnostic(
        code(cascade::image::corrupt_blob),
        help("remove the blob and build the image again")
    )]
    CorruptBlob {
        path: PathBuf,
        expected: OciDigest,
        actual: OciDigest,
    },

    #[error("`{path}` is not a valid {what}: {message}")]
    #[diagnostic(code(cascade::image::json))]
    InvalidJson {
        path: PathBuf,
        what: &'static str,
        message: String,
    },

    #[error("`{path}` has media type `{media_type}`, which is not supported")]
    #[diagnostic(
        code(cascade::image::media_type),
        help("base images must be OCI image manifests (`skopeo copy` converts Docker ones)")
    )]
    UnsupportedMediaType { path: PathBuf, media_type: String },

    #[error("image blob `{path}` is inconsistent: {reason}")]
    #[diagnostic(code(cascade::image::invalid_image))]
    InvalidImage { path: PathBuf, reason: &'static str },

    #[error("`{path}` is not an OCI image layout version 1.0.0")]
    #[diagnostic(code(cascade::image::not_a_layout))]
    NotALayout { path: PathBuf },

    #[error("the base image is `{base}`, not `{wanted}`")]
    #[diagnostic(code(cascade::image::platform))]
    PlatformMismatch { base: String, wanted: String },

    #[error("`{value}` is not a valid `{field}`: {reason}")]
    #[diagnostic(code(cascade::image::config))]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("`{reference}` is not a valid image reference: {reason}")]
    #[diagnostic(code(cascade::image::reference))]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },

    #[error("ref name `{name}` is given to two manifests")]
    #[diagnostic(code(cascade::image::duplicate_ref))]
    DuplicateRefName { name: String },

    #[error("cannot unpack an image into `{path}`: {reason}")]
    #[diagnostic(
        code(cascade::image::unpack_destination),
        help("unpack into a new empty directory, then rename it into place")
    )]
    UnpackDestination { path: PathBuf, reason: &'static str },

    #[error("layer `{digest}` has media type `{media_type}`, which cannot be unpacked")]
    #[diagnostic(
        code(cascade::image::layer_media_type),
        help("only `application/vnd.oci.image.layer.v1.tar+gzip` and `application/vnd.oci.image.layer.v1.tar` layers can be unpacked")
    )]
    UnsupportedLayerMediaType {
        digest: OciDigest,
        media_type: String,
    },

    #[error("layer `{path}` is not a valid tar: {message}")]
    #[diagnostic(code(cascade::image::invalid_layer))]
    InvalidLayer { path: PathBuf, message: String },

    #[error("entry `{path}` of layer `{layer}` cannot be unpacked: {reason}")]
    #[diagnostic(
        code(cascade::image::layer_entry),
        help("the layer is refused, not repaired: an entry must stay inside the image")
    )]
    InvalidLayerEntry {
        layer: OciDigest,
        path: String,
        reason: &'static str,
    },

    #[error("the image unpacks to more than {limit} bytes")]
    #[diagnostic(
        code(cascade::image::unpack_too_large),
        help("a layer this large is likely a decompression bomb; raise the limit if the image is genuine")
    )]
    UnpackTooLarge { limit: u64 },

    #[error("could not encode an image document: {message}")]
    #[diagnostic(code(cascade::image::encode))]
    Encode { message: String },
}

impl ImageError {
    /// For `map_err`: an I/O error at `path`.
    pub(crate) fn io(path: impl AsRef<Path>) -> impl Fn(io::Error) -> ImageError {
        let path = path.as_ref().to_path_buf();
        move |source| ImageError::Io {
            path: path.clone(),
            source,
        }
    }
}
