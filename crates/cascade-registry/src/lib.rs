//! cascade-registry: a small, blocking client for the OCI distribution API.
//!
//! It pushes an image from an OCI layout (as `cascade-image` writes it) to a registry,
//! and reads manifests and blobs back, verified, for tests and for the remote cache to
//! come. Push follows the distribution spec's order, so a reader never sees a tag whose
//! content is incomplete:
//! 1. each blob (config, then layers): `HEAD`, and upload only when it is missing
//!    (`POST` an upload session, then one monolithic `PUT ?digest=` streamed from the
//!    file, never held in memory);
//! 2. the manifest by digest, checking the `Docker-Content-Digest` the registry answers;
//! 3. each tag, last, checked the same way.
//!
//! Auth: a `401` names a scheme. `Basic` is answered with the credentials
//! ([`credentials_for`]: `CASCADE_REGISTRY_AUTH`, else docker's `config.json`);
//! `Bearer` sends us to a token endpoint, whose token is cached per scope. Credentials
//! and tokens never reach an error message, a `Debug` output or a log (tested).
//!
//! Failures: `5xx`, `429`, timeouts and broken connections are retried with exponential
//! backoff ([`ClientOptions`]); any other `4xx` fails at once with the registry's own
//! error message; a registry that answers with another digest than the bytes we sent,
//! or serves bytes that do not hash to their name, is an error, never accepted.
//!
//! Why `ureq` and why blocking: cascade has no async runtime (see ARCHITECTURE.md, the
//! scheduler is a thread pool), and a push is a handful of sequential requests whose
//! cost is the bytes on the wire. ureq 3 is a small blocking HTTP/1.1 client with rustls
//! (no system OpenSSL), streaming request bodies from any reader and lets us handle
//! every status ourselves. `reqwest`'s blocking client would run a tokio runtime behind
//! it; `oci-client` (the design's first candidate) is async and brings that runtime too.
//!
//! Not done here: cross-repository mounts, chunked uploads, image indexes
//! (multi-platform), credential helpers (`credsStore`/`credHelpers` in docker's
//! config).

mod client;
mod credentials;
mod push;
mod reference;

use std::path::PathBuf;

pub use cascade_image::OciDigest;
pub use client::{Client, ClientOptions};
pub use credentials::{credentials_for, credentials_from, docker_config_dir, Credentials};
pub use push::PushReport;
pub use reference::Reference;

/// Everything that can go wrong talking to a registry. No variant ever holds a
/// password, a token or an `Authorization` header.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RegistryError {
    #[error("`{reference}` is not a valid image reference: {reason}")]
    #[diagnostic(
        code(cascade::registry::reference),
        help("write `host[:port]/path/name[:tag]`, e.g. `127.0.0.1:5000/ottochain/services:main-1a2b3c4`")
    )]
    InvalidReference { reference: String, reason: String },

    #[error("`CASCADE_REGISTRY_AUTH` is not of the form `user:password`")]
    #[diagnostic(
        code(cascade::registry::credentials),
        help("set it to `user:password` (the part before the first `:` is the user), or unset it to use docker's config.json")
    )]
    InvalidAuthEnv,

    #[error("cannot read registry credentials from `{path}`: {reason}")]
    #[diagnostic(
        code(cascade::registry::credentials),
        help("fix the file (`docker login` rewrites it), or set CASCADE_REGISTRY_AUTH=user:password, which takes precedence")
    )]
    CredentialsFile { path: PathBuf, reason: String },

    #[error("registry `{registry}` did not authorize the request: {hint}")]
    #[diagnostic(code(cascade::registry::unauthorized))]
    Unauthorized { registry: String, hint: String },

    #[error("registry `{registry}` rejected {what} with HTTP {status}: {message}")]
    #[diagnostic(
        code(cascade::registry::rejected),
        help("the registry's message says why; HTTP 403 usually means the credentials may not push to this repository")
    )]
    Rejected {
        registry: String,
        what: String,
        status: u16,
        message: String,
    },

    #[error(
        "registry `{registry}` is unavailable: {what} failed {attempts} times, last with {last}"
    )]
    #[diagnostic(
        code(cascade::registry::unavailable),
        help("check that the registry is running and reachable; the local test registries are started by `.ci/services/registry.sh`")
    )]
    Unavailable {
        registry: String,
        what: String,
        attempts: u32,
        last: String,
    },

    #[error("cannot reach registry `{registry}` for {what}: {message}")]
    #[diagnostic(
        code(cascade::registry::transport),
        help("check the host name, and for a registry without TLS list it in CASCADE_INSECURE_REGISTRIES")
    )]
    Transport {
        registry: String,
        what: String,
        message: String,
    },

    #[error("registry `{registry}` answered {what} unexpectedly: {message}")]
    #[diagnostic(code(cascade::registry::protocol))]
    Protocol {
        registry: String,
        what: String,
        message: String,
    },

    #[error("digest mismatch for {what}: expected `{expected}`, got `{actual}`")]
    #[diagnostic(
        code(cascade::registry::digest_mismatch),
        help("the registry stored or served other bytes than the content names; nothing was accepted")
    )]
    DigestMismatch {
        what: String,
        expected: OciDigest,
        actual: String,
    },

    #[error("blob `{digest}` is larger than the limit of {limit} bytes")]
    #[diagnostic(code(cascade::registry::too_large))]
    TooLarge { digest: OciDigest, limit: u64 },

    #[error("`{reference}` was not found in `{registry}/{repository}`")]
    #[diagnostic(code(cascade::registry::not_found))]
    NotFound {
        registry: String,
        repository: String,
        reference: String,
    },

    #[error("cannot push manifest `{digest}`: {reason}")]
    #[diagnostic(
        code(cascade::registry::manifest),
        help("only single-platform image manifests (OCI, or Docker schema 2) can be pushed")
    )]
    UnsupportedManifest { digest: OciDigest, reason: String },

    #[error("blob `{path}` is {actual} bytes, but its descriptor says {expected}")]
    #[diagnostic(
        code(cascade::registry::local_blob),
        help("the layout is damaged: remove the blob and build the image again")
    )]
    LocalBlobSize {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error("cannot write `{path}`")]
    #[diagnostic(code(cascade::registry::write))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read `{path}`")]
    #[diagnostic(code(cascade::registry::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(#[from] cascade_image::ImageError),
}
