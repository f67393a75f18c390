//! cascade-sign: keys and signatures that tools cascade did not write can check.
//!
//! One key, an OpenPGP v4 key whose primary key is Ed25519 ("EdDSA legacy", what gpg
//! 2.2 makes and reads), signs everything:
//! - **image signatures** in containers' "simple signing" format ([`simple`]): a small
//!   JSON payload naming the image's reference and manifest digest, in an OpenPGP signed
//!   message, exactly what `skopeo standalone-sign` writes; skopeo and podman check it
//!   with a `policy.json` `signedBy` rule, reading it from a `registries.d` lookaside
//!   directory laid out as containers/image lays it out ([`simple::lookaside_dir`]);
//! - **attestations** in DSSE envelopes ([`dsse`]): the raw Ed25519 key signs the
//!   pre-authentication encoding of an in-toto statement, what securesystemslib,
//!   in-toto and cosign verify; [`PublicKey::sslib_json`] is the public half in
//!   securesystemslib's form;
//! - **release files** with detached signatures ([`detached`]): `SHA256SUMS.asc`, what
//!   `gpg --verify` checks.
//!
//! Keys ([`generate`], [`SecretKey`], [`PublicKey`]) are ASCII-armored OpenPGP blocks, so
//! `gpg --import` and containers/image's `keyPath` read the public half as it is. A
//! passphrase-protected secret key is refused (cascade runs unattended; protect the file
//! or the variable that holds it instead).
//!
//! Determinism: a signature's creation time is its key's creation time, never the clock,
//! and Ed25519 signatures use no randomness, so the same key signing the same image gives
//! the same bytes on every machine and every run.
//!
//! Secrets: no error, `Debug` output or return value but [`SecretKey::to_armored`] holds
//! secret key material; `Debug` on [`SecretKey`] shows only the fingerprint.

pub mod detached;
pub mod dsse;
mod keys;
pub mod simple;

pub use keys::{generate, PublicKey, SecretKey};

/// What can go wrong with keys and signing. No variant holds secret key material.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SignError {
    #[error("{what} is not an ASCII-armored OpenPGP {kind} key: {reason}")]
    #[diagnostic(
        code(cascade::sign::key),
        help("`cascade keygen -o DIR` writes a key pair; `gpg --export --armor` and `gpg --export-secret-keys --armor` write keys in this form")
    )]
    BadKey {
        what: String,
        kind: &'static str,
        reason: String,
    },

    #[error(
        "the secret key {fingerprint} is protected by a passphrase, which cascade does not read"
    )]
    #[diagnostic(
        code(cascade::sign::locked),
        help("export it without a passphrase (`gpg --export-secret-keys --armor` after `gpg --passwd`), and protect the file (mode 0600) or the variable that holds it instead")
    )]
    Locked { fingerprint: String },

    #[error("the key {fingerprint} cannot sign: {reason}")]
    #[diagnostic(code(cascade::sign::key_use))]
    CannotSign { fingerprint: String, reason: String },

    #[error("OpenPGP failed to {what}: {reason}")]
    #[diagnostic(code(cascade::sign::openpgp))]
    OpenPgp { what: &'static str, reason: String },

    #[error("cannot {what} `{path}`: {source}")]
    #[diagnostic(code(cascade::sign::io))]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
