//! Key pairs: generation, armored text in and out, fingerprints.

use std::fmt;
use std::io::Cursor;

use pgp::composed::{
    Deserializable, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey,
};
use pgp::types::{KeyDetails, PlainSecretParams, SecretParams};

use crate::SignError;

/// A secret key that can sign (unlocked: cascade never reads a passphrase).
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) key: SignedSecretKey,
}

/// A public key (an OpenPGP certificate), to verify with.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) key: SignedPublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

fn openpgp(what: &'static str) -> impl FnOnce(pgp::errors::Error) -> SignError {
    move |e| SignError::OpenPgp {
        what,
        reason: e.to_string(),
    }
}

/// A new key pair: an Ed25519 primary key that certifies and signs, with the user id
/// `user_id` (`cascade <ci@example.com>`), created now.
pub fn generate(user_id: &str) -> Result<SecretKey, SignError> {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(user_id.to_string());
    let params = params.build().map_err(|e| SignError::OpenPgp {
        what: "describe a new key",
        reason: e.to_string(),
    })?;
    let key = params
        .generate(rand::thread_rng())
        .map_err(openpgp("generate a key"))?;
    Ok(SecretKey { key })
}

impl SecretKey {
    /// Reads an ASCII-armored secret key; `what` names where it came from, for errors
    /// (a path, or `the variable `X``), never its content.
    pub fn from_armored(text: &str, what: &str) -> Result<SecretKey, SignError> {
        let bad = |reason: String| SignError::BadKey {
            what: what.to_string(),
            kind: "secret",
            reason,
        };
        let (key, _) = SignedSecretKey::from_armor_single(Cursor::new(text.as_bytes()))
            // rpgp's parse errors describe packets, never their secret contents.
            .map_err(|e| bad(e.to_string()))?;
        key.verify_bindings()
            .map_err(|e| bad(format!("its self-signatures do not verify ({e})")))?;
        let key = SecretKey { key };
        match key.key.primary_key.secret_params() {
            SecretParams::Plain(_) => {}
            SecretParams::Encrypted(_) => {
                return Err(SignError::Locked {
                    fingerprint: key.fingerprint(),
                })
            }
        }
        Ok(key)
    }

    /// The armored secret key, for the key file. The only way secret material leaves
    /// this crate.
    pub fn to_armored(&self) -> Result<String, SignError> {
        self.key
            .to_armored_string(Default::default())
            .map_err(openpgp("write the secret key"))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.to_public_key(),
        }
    }

    /// The primary key's fingerprint, upper-case hex (as gpg and skopeo print it).
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(&self.key.primary_key.fingerprint())
    }

    /// Whether the primary key is Ed25519 (what [`generate`] makes).
    pub fn is_ed25519(&self) -> bool {
        matches!(
            self.key.primary_key.secret_params(),
            SecretParams::Plain(PlainSecretParams::EdDSALegacy(_))
                | SecretParams::Plain(PlainSecretParams::Ed25519(_))
        )
    }
}

impl PublicKey {
    /// Reads a public key: ASCII-armored, or binary as `gpg --export` writes it.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<PublicKey, SignError> {
        let bad = |reason: String| SignError::BadKey {
            what: what.to_string(),
            kind: "public",
            reason,
        };
        let key = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            SignedPublicKey::from_armor_single(Cursor::new(bytes)).map(|(k, _)| k)
        } else {
            SignedPublicKey::from_bytes(Cursor::new(bytes))
        }
        .map_err(|e| bad(e.to_string()))?;
        key.verify_bindings()
            .map_err(|e| bad(format!("its self-signatures do not verify ({e})")))?;
        Ok(PublicKey { key })
    }

    pub fn to_armored(&self) -> Result<String, SignError> {
        self.key
            .to_armored_string(Default::default())
            .map_err(openpgp("write the public key"))
    }

    /// The primary key's fingerprint, upper-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(&self.key.primary_key.fingerprint())
    }
}

fn fingerprint_hex(fp: &pgp::types::Fingerprint) -> String {
    hex_upper(fp.as_bytes())
}

pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The hashed subpackets rpgp writes by default, with the key's creation time instead of
/// the clock's (a signature made before its key would be refused), so every signature
/// `key` makes of the same bytes is the same bytes.
pub(crate) fn timeless_subpackets(
    key: &SecretKey,
) -> Result<pgp::composed::SubpacketConfig, SignError> {
    use pgp::packet::{Subpacket, SubpacketData};
    let primary = &key.key.primary_key;
    let sub = |d| {
        Subpacket::regular(d).map_err(|e| SignError::OpenPgp {
            what: "describe a signature",
            reason: e.to_string(),
        })
    };
    Ok(pgp::composed::SubpacketConfig::UserDefined {
        hashed: vec![
            sub(SubpacketData::IssuerFingerprint(primary.fingerprint()))?,
            sub(SubpacketData::SignatureCreationTime(primary.created_at()))?,
        ],
        unhashed: vec![sub(SubpacketData::IssuerKeyId(primary.legacy_key_id()))?],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_armor() {
        let key = generate("cascade test <test@example.com>").expect("generate");
        assert!(key.is_ed25519());
        let text = key.to_armored().expect("armor");
        assert!(text.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"));
        let back = SecretKey::from_armored(&text, "test").expect("read");
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(key.fingerprint().len(), 40);
        let public = key.public().to_armored().expect("armor");
        assert!(!public.contains("PRIVATE"));
        let p = PublicKey::from_bytes(public.as_bytes(), "test").expect("read");
        assert_eq!(p.fingerprint(), key.fingerprint());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_public_key_is_not_a_secret_key() {
        let key = generate("t").expect("generate");
        let public = key.public().to_armored().expect("armor");
        let e = SecretKey::from_armored(&public, "`pub.asc`").expect_err("public");
        assert!(matches!(e, SignError::BadKey { .. }), "{e}");
        assert!(PublicKey::from_bytes(b"junk", "x").is_err());
    }
}
