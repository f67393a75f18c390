//! Detached OpenPGP signatures (RFC 9580 §11.4) of whole files, as `gpg --detach-sign
//! --armor` makes them and `gpg --verify FILE.asc FILE` checks them: what a release's
//! `SHA256SUMS.asc` is.

use std::io::Cursor;

use pgp::composed::{ArmorOptions, Deserializable, DetachedSignature};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::Password;

use crate::keys::{hex_upper, timeless_subpackets, PublicKey, SecretKey};
use crate::SignError;

/// The most a detached signature file may hold (one Ed25519 signature is a few hundred
/// bytes; a file this long is not one).
pub const MAX_DETACHED: u64 = 64 * 1024;

/// Why a detached signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum DetachedRejection {
    #[error("it is not an OpenPGP signature: {0}")]
    NotASignature(String),
    #[error("no given key made it (signed by {0})")]
    UnknownKey(String),
    #[error("it does not match the signed file: the file changed after it was signed")]
    Mismatch,
}

/// The armored detached signature of `data` by `key` (binary mode: every byte counts).
pub fn sign(key: &SecretKey, data: &[u8]) -> Result<String, SignError> {
    let openpgp = |what| {
        move |e: pgp::errors::Error| SignError::OpenPgp {
            what,
            reason: e.to_string(),
        }
    };
    // Ed25519 signs without randomness; the generator is only asked for by v6 keys.
    let sig = DetachedSignature::sign_binary_data_with_subpackets(
        rand::thread_rng(),
        &key.key.primary_key,
        &Password::empty(),
        HashAlgorithm::Sha256,
        data,
        timeless_subpackets(key)?,
    )
    .map_err(openpgp("sign a file"))?;
    sig.to_armored_string(ArmorOptions::default())
        .map_err(openpgp("armor a signature"))
}

/// Checks an armored (or binary) detached `signature` of `data` against `keys`; the
/// fingerprint of the key that made it.
pub fn verify(
    keys: &[PublicKey],
    signature: &[u8],
    data: &[u8],
) -> Result<String, DetachedRejection> {
    let not = |e: String| DetachedRejection::NotASignature(e);
    if signature.len() as u64 > MAX_DETACHED {
        return Err(not(format!("{} bytes", signature.len())));
    }
    let sig = if signature.trim_ascii_start().starts_with(b"-----BEGIN") {
        DetachedSignature::from_armor_single(Cursor::new(signature)).map(|(s, _)| s)
    } else {
        DetachedSignature::from_bytes(Cursor::new(signature))
    }
    .map_err(|e| not(e.to_string()))?;
    let issuers: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .into_iter()
        .map(|f| hex_upper(f.as_bytes()))
        .collect();
    let mut known = false;
    for k in keys {
        if sig.verify(&k.key.primary_key, data).is_ok() {
            return Ok(k.fingerprint());
        }
        known |= issuers.contains(&k.fingerprint());
    }
    if known {
        Err(DetachedRejection::Mismatch)
    } else if issuers.is_empty() {
        Err(DetachedRejection::UnknownKey("an unnamed key".into()))
    } else {
        Err(DetachedRejection::UnknownKey(issuers.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_signature_verifies_only_its_bytes_and_only_by_its_key() {
        let key = crate::generate("t <t@example.com>").expect("key");
        let other = crate::generate("o <o@example.com>").expect("key");
        let data = b"abc  file\n";
        let sig = sign(&key, data).expect("sign");
        assert!(sig.starts_with("-----BEGIN PGP SIGNATURE-----"));
        assert_eq!(sign(&key, data).expect("sign"), sig, "deterministic");
        assert_eq!(
            verify(&[other.public(), key.public()], sig.as_bytes(), data),
            Ok(key.fingerprint())
        );
        assert_eq!(
            verify(&[key.public()], sig.as_bytes(), b"abd  file\n"),
            Err(DetachedRejection::Mismatch)
        );
        assert!(matches!(
            verify(&[other.public()], sig.as_bytes(), data),
            Err(DetachedRejection::UnknownKey(_))
        ));
        assert!(matches!(
            verify(&[key.public()], b"nonsense", data),
            Err(DetachedRejection::NotASignature(_))
        ));
    }
}
