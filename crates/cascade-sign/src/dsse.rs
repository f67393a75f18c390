//! DSSE, the Dead Simple Signing Envelope (secure-systems-lab/dsse, `envelope.md` and
//! `protocol.md`): what in-toto, cosign and SLSA verifiers read attestations in.
//!
//! An envelope is the JSON document
//!
//! ```json
//! {"payload":"<base64 of the body>","payloadType":"application/vnd.in-toto+json",
//!  "signatures":[{"keyid":"<fingerprint, lower-case hex>","sig":"<base64>"}]}
//! ```
//!
//! (one line, keys in that order), each `sig` a pure Ed25519 signature (RFC 8032) over
//! the pre-authentication encoding [`pae`]: `DSSEv1 <len(type)> <type> <len(body)> <body>`.
//! The Ed25519 key is the primary key of cascade's OpenPGP key, used raw: one key signs
//! the simple signatures and the envelopes. [`PublicKey::sslib_json`] writes its public
//! half as securesystemslib's `SSlibKey` reads it, so a verifier we did not write checks
//! envelopes without OpenPGP.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use pgp::types::{
    EddsaLegacyPublicParams, KeyDetails, PlainSecretParams, PublicParams, SecretParams,
};

use crate::keys::{PublicKey, SecretKey};
use crate::SignError;

/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// An envelope larger than this is refused unread.
pub const MAX_ENVELOPE: u64 = 4 * 1024 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A DSSE envelope. Field order is the serialized order (sorted, as the spec's examples).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// The body, base64 (standard alphabet, padded).
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's OpenPGP fingerprint, lower-case hex (the `keyid` of
    /// [`PublicKey::sslib_json`]).
    pub keyid: String,
    /// The Ed25519 signature over [`pae`], base64.
    pub sig: String,
}

impl Envelope {
    /// The envelope's bytes: one line of JSON, no trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An envelope whose signature verified: who signed which body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The OpenPGP fingerprint (upper-case hex) of the key that verified it.
    pub fingerprint: String,
    pub payload_type: String,
    pub payload: Vec<u8>,
}

/// Why an envelope is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum EnvelopeRejection {
    #[error("it is not a DSSE envelope: {detail}")]
    Malformed { detail: String },
    #[error("no signature verifies with the given keys (key ids {keyids})")]
    BadSignature { keyids: String },
    #[error("its payload type is `{found}`, not `{expected}`")]
    WrongPayloadType { found: String, expected: String },
}

/// DSSE's pre-authentication encoding of a body of `payload_type`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn signing_key(key: &SecretKey) -> Result<&ed25519_dalek::SigningKey, SignError> {
    match key.key.primary_key.secret_params() {
        SecretParams::Plain(PlainSecretParams::EdDSALegacy(
            pgp::crypto::eddsa_legacy::SecretKey::Ed25519(k),
        ))
        | SecretParams::Plain(PlainSecretParams::Ed25519(k)) => Ok(k),
        _ => Err(SignError::CannotSign {
            fingerprint: key.fingerprint(),
            reason: "DSSE envelopes are signed with Ed25519 keys only (`cascade keygen` makes one)"
                .into(),
        }),
    }
}

/// The raw Ed25519 public key of an OpenPGP key, if its primary key is Ed25519.
fn verifying_key(key: &PublicKey) -> Option<ed25519_dalek::VerifyingKey> {
    match key.key.primary_key.public_params() {
        PublicParams::EdDSALegacy(EddsaLegacyPublicParams::Ed25519 { key }) => Some(*key),
        PublicParams::Ed25519(p) => Some(p.key),
        _ => None,
    }
}

/// Signs `payload` of `payload_type` into an envelope with one signature. Ed25519 is
/// deterministic: the same key and body give the same bytes.
pub fn sign(key: &SecretKey, payload_type: &str, payload: &[u8]) -> Result<Envelope, SignError> {
    let sk = signing_key(key)?;
    let sig = sk.sign(&pae(payload_type, payload));
    Ok(Envelope {
        payload: B64.encode(payload),
        payload_type: payload_type.to_string(),
        signatures: vec![EnvelopeSignature {
            keyid: key.fingerprint().to_ascii_lowercase(),
            sig: B64.encode(sig.to_bytes()),
        }],
    })
}

/// Checks an envelope's bytes: a signature by one of `keys` over its body (any
/// signature whose `keyid` names the key, or any at all when none does), and its
/// payload type `payload_type`. Returns the body.
pub fn verify(
    keys: &[PublicKey],
    envelope: &[u8],
    payload_type: &str,
) -> Result<Opened, EnvelopeRejection> {
    let malformed = |detail: String| EnvelopeRejection::Malformed { detail };
    if envelope.len() as u64 > MAX_ENVELOPE {
        return Err(malformed(format!(
            "{} bytes, more than {MAX_ENVELOPE}",
            envelope.len()
        )));
    }
    let env: Envelope =
        serde_json::from_slice(envelope).map_err(|e| malformed(format!("not JSON ({e})")))?;
    let payload = B64
        .decode(env.payload.as_bytes())
        .map_err(|e| malformed(format!("`payload` is not base64 ({e})")))?;
    if env.signatures.is_empty() {
        return Err(malformed("it has no signatures".into()));
    }
    let message = pae(&env.payload_type, &payload);
    for key in keys {
        let Some(vk) = verifying_key(key) else {
            continue;
        };
        for s in &env.signatures {
            let Ok(bytes) = B64.decode(s.sig.as_bytes()) else {
                continue;
            };
            let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
                continue;
            };
            if vk.verify(&message, &sig).is_ok() {
                if env.payload_type != payload_type {
                    return Err(EnvelopeRejection::WrongPayloadType {
                        found: env.payload_type,
                        expected: payload_type.to_string(),
                    });
                }
                return Ok(Opened {
                    fingerprint: key.fingerprint(),
                    payload_type: env.payload_type,
                    payload,
                });
            }
        }
    }
    Err(EnvelopeRejection::BadSignature {
        keyids: env
            .signatures
            .iter()
            .map(|s| format!("`{}`", s.keyid))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

impl PublicKey {
    /// The public key as securesystemslib reads it (`SSlibKey.from_dict(keyid, d)`): one
    /// line of JSON `{"keyid":…,"keytype":"ed25519","keyval":{"public":"<hex>"},"scheme":"ed25519"}`,
    /// `keyid` the fingerprint in lower case (what envelopes name). `None` when the
    /// primary key is not Ed25519.
    pub fn sslib_json(&self) -> Option<String> {
        let vk = verifying_key(self)?;
        let public: String = vk.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        Some(
            serde_json::json!({
                "keyid": self.fingerprint().to_ascii_lowercase(),
                "keytype": "ed25519",
                "keyval": { "public": public },
                "scheme": "ed25519",
            })
            .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    #[test]
    fn pae_is_the_spec_s_example() {
        // protocol.md's test vector.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn an_envelope_verifies_and_a_changed_byte_does_not() {
        let key = generate("t").expect("key");
        let body = br#"{"_type":"https://in-toto.io/Statement/v1"}"#;
        let env = sign(&key, IN_TOTO_PAYLOAD_TYPE, body).expect("sign");
        let bytes = env.to_bytes();
        assert_eq!(
            sign(&key, IN_TOTO_PAYLOAD_TYPE, body)
                .expect("sign")
                .to_bytes(),
            bytes,
            "deterministic"
        );
        let opened = verify(&[key.public()], &bytes, IN_TOTO_PAYLOAD_TYPE).expect("verify");
        assert_eq!(opened.payload, body);
        assert_eq!(opened.fingerprint, key.fingerprint());
        assert!(String::from_utf8_lossy(&bytes).starts_with("{\"payload\":"));

        let other = generate("o").expect("key");
        assert!(matches!(
            verify(&[other.public()], &bytes, IN_TOTO_PAYLOAD_TYPE),
            Err(EnvelopeRejection::BadSignature { .. })
        ));
        let mut changed = body.to_vec();
        changed[3] ^= 1;
        let tampered = Envelope {
            payload: B64.encode(&changed),
            ..env.clone()
        };
        assert!(matches!(
            verify(&[key.public()], &tampered.to_bytes(), IN_TOTO_PAYLOAD_TYPE),
            Err(EnvelopeRejection::BadSignature { .. })
        ));
        assert!(matches!(
            verify(&[key.public()], &bytes, "text/plain"),
            Err(EnvelopeRejection::WrongPayloadType { .. })
        ));
        assert!(matches!(
            verify(&[key.public()], b"{}", IN_TOTO_PAYLOAD_TYPE),
            Err(EnvelopeRejection::Malformed { .. })
        ));
    }

    #[test]
    fn the_sslib_key_names_the_raw_public_key() {
        let key = generate("t").expect("key");
        let json: serde_json::Value =
            serde_json::from_str(&key.public().sslib_json().expect("ed25519")).expect("json");
        assert_eq!(json["keytype"], "ed25519");
        assert_eq!(json["keyval"]["public"].as_str().map(str::len), Some(64));
        assert_eq!(
            json["keyid"].as_str(),
            Some(key.fingerprint().to_ascii_lowercase().as_str())
        );
    }
}
