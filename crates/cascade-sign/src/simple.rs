//! Containers' "simple signing" (containers/image `docs/containers-signature.5.md`): what
//! skopeo, podman and CRI-O verify with a `policy.json` `signedBy` rule.
//!
//! A signature is an OpenPGP signed message (not detached, not cleartext) whose literal
//! data is the JSON payload
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"127.0.0.1:5000/p/app:main-1a2b3c4"},
//!   "image":{"docker-manifest-digest":"sha256:…"},"type":"atomic container signature"},
//!  "optional":{"creator":"cascade 0.1.0"}}
//! ```
//!
//! (one line; the optional `timestamp` is left out so the bytes do not depend on the
//! clock). It lives beside the registry in a lookaside directory, one directory per
//! image: `<root>/<repository>@sha256=<hex>/signature-<n>`, `n` from 1, where the
//! repository is the reference's path without the registry host; [`lookaside_dir`] is
//! that rule, and `registries.d`'s `lookaside: file://<root>` points skopeo at it.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use pgp::composed::{Message, MessageBuilder};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::Password;

use crate::keys::{hex_upper, PublicKey, SecretKey};
use crate::SignError;

/// The `critical.type` every simple signature carries.
pub const SIGNATURE_TYPE: &str = "atomic container signature";

/// A signature file larger than this is refused unread; decompressed payloads too.
const MAX_SIGNATURE: u64 = 64 * 1024;

/// What a signature says: this reference is the image with this manifest digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Claim {
    pub docker_reference: String,
    pub manifest_digest: String,
    /// `optional.creator`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
}

/// A signature that verified: who signed what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// The fingerprint of the primary key of the key that verified it.
    pub fingerprint: String,
    pub claim: Claim,
}

/// Why a signature is not accepted for an image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Rejection {
    #[error("it is not an OpenPGP signed message: {detail}")]
    NotSigned { detail: String },
    #[error("no given key made it (signed by {issuer})")]
    UnknownKey { issuer: String },
    #[error("its payload is not a simple-signing claim: {detail}")]
    BadPayload { detail: String },
    #[error("it signs manifest digest `{signed}`, not `{expected}`")]
    WrongDigest { signed: String, expected: String },
    #[error("it signs reference `{signed}`, not `{expected}`")]
    WrongReference { signed: String, expected: String },
}

/// The payload's bytes for `reference` and `manifest_digest` (`sha256:<hex>`).
pub fn payload(reference: &str, manifest_digest: &str, creator: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": { "docker-reference": reference },
            "image": { "docker-manifest-digest": manifest_digest },
            "type": SIGNATURE_TYPE,
        },
        "optional": { "creator": creator },
    })
    .to_string()
    .into_bytes()
}

/// Signs `reference` as the image whose manifest has `manifest_digest`: the bytes of a
/// `signature-<n>` file.
pub fn sign(
    key: &SecretKey,
    reference: &str,
    manifest_digest: &str,
    creator: &str,
) -> Result<Vec<u8>, SignError> {
    let primary = &key.key.primary_key;
    let subpackets = crate::keys::timeless_subpackets(key)?;
    let mut builder = MessageBuilder::from_bytes("", payload(reference, manifest_digest, creator));
    builder.sign_with_subpackets(
        primary,
        Password::empty(),
        HashAlgorithm::Sha256,
        subpackets,
    );
    // Ed25519 signs without randomness and nothing is encrypted, so with cascade's keys
    // the output is a function of key and payload; the system generator is still what
    // is passed, for keys (ECDSA) whose signatures do need fresh randomness.
    builder
        .to_vec(rand::thread_rng())
        .map_err(|e| SignError::OpenPgp {
            what: "sign an image",
            reason: e.to_string(),
        })
}

/// Checks a `signature-<n>` file against `keys`, then its claim against the image:
/// the manifest digest must be `manifest_digest`, and the reference `reference`
/// (exactly, or, when `reference` is by digest, `repo@sha256:…`, any tag of `repo`:
/// containers/image's `matchRepoDigestOrExact`).
pub fn verify(
    keys: &[PublicKey],
    signature: &[u8],
    reference: &str,
    manifest_digest: &str,
) -> Result<Verified, Rejection> {
    let verified = verify_signature(keys, signature)?;
    let claim = &verified.claim;
    if claim.manifest_digest != manifest_digest {
        return Err(Rejection::WrongDigest {
            signed: claim.manifest_digest.clone(),
            expected: manifest_digest.to_string(),
        });
    }
    let matches = match reference.split_once('@') {
        Some((repo, _)) => repository_of(&claim.docker_reference) == repo,
        None => claim.docker_reference == reference,
    };
    if !matches {
        return Err(Rejection::WrongReference {
            signed: claim.docker_reference.clone(),
            expected: reference.to_string(),
        });
    }
    Ok(verified)
}

/// `host/path` of a reference `host/path[:tag][@digest]`.
fn repository_of(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rfind(':') {
        // A `:` after the last `/` is a tag; one before it is a port.
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Checks the OpenPGP signature alone and reads its claim, whatever it names.
pub fn verify_signature(keys: &[PublicKey], signature: &[u8]) -> Result<Verified, Rejection> {
    let not_signed = |detail: String| Rejection::NotSigned { detail };
    if signature.len() as u64 > MAX_SIGNATURE {
        return Err(not_signed(format!(
            "{} bytes, more than a signature ({MAX_SIGNATURE})",
            signature.len()
        )));
    }
    let msg = if signature.trim_ascii_start().starts_with(b"-----BEGIN") {
        Message::from_armor(Cursor::new(signature)).map(|(m, _)| m)
    } else {
        Message::from_bytes(Cursor::new(signature))
    }
    .map_err(|e| not_signed(e.to_string()))?;
    // gpg (and so skopeo) compresses what it signs.
    let mut msg = msg.decompress().map_err(|e| not_signed(e.to_string()))?;
    if !msg.is_signed() {
        return Err(not_signed("it carries no signature".into()));
    }
    let mut body = Vec::new();
    (&mut msg)
        .take(MAX_SIGNATURE + 1)
        .read_to_end(&mut body)
        .map_err(|e| not_signed(e.to_string()))?;
    if body.len() as u64 > MAX_SIGNATURE {
        return Err(not_signed("its payload is too large".into()));
    }
    let Some(key) = keys.iter().find(|k| msg.verify(&k.key.primary_key).is_ok()) else {
        return Err(Rejection::UnknownKey {
            issuer: issuer_of(&msg),
        });
    };
    let claim = parse_claim(&body)?;
    Ok(Verified {
        fingerprint: key.fingerprint(),
        claim,
    })
}

/// Who a signature says made it, for the message when no key did.
fn issuer_of(msg: &Message<'_>) -> String {
    let Message::Signed { reader, .. } = msg else {
        return "nobody".into();
    };
    let mut names = Vec::new();
    for i in 0..reader.num_signatures() {
        if let Some(sig) = reader.signature(i) {
            for fp in sig.issuer_fingerprint() {
                names.push(hex_upper(fp.as_bytes()));
            }
            if names.is_empty() {
                for id in sig.issuer_key_id() {
                    names.push(hex_upper(id.as_ref()));
                }
            }
        }
    }
    if names.is_empty() {
        "an unnamed key".into()
    } else {
        names.join(", ")
    }
}

/// The payload, read as strictly as containers/image reads it: `critical` holds exactly
/// `type`, `image` and `identity`, each with exactly its one field.
fn parse_claim(body: &[u8]) -> Result<Claim, Rejection> {
    let bad = |detail: &str| Rejection::BadPayload {
        detail: detail.to_string(),
    };
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let critical = doc
        .get("critical")
        .and_then(|c| c.as_object())
        .ok_or_else(|| bad("no `critical` object"))?;
    if critical.len() != 3 {
        return Err(bad(
            "`critical` must hold exactly `type`, `image` and `identity`",
        ));
    }
    if critical.get("type").and_then(|t| t.as_str()) != Some(SIGNATURE_TYPE) {
        return Err(bad("`critical.type` is not `atomic container signature`"));
    }
    let only = |obj: Option<&serde_json::Value>, field: &str| -> Result<String, Rejection> {
        let o = obj
            .and_then(|o| o.as_object())
            .filter(|o| o.len() == 1)
            .ok_or_else(|| bad(&format!("the object holding `{field}` must hold only it")))?;
        o.get(field)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("`{field}` is not a string")))
    };
    let manifest_digest = only(critical.get("image"), "docker-manifest-digest")?;
    let docker_reference = only(critical.get("identity"), "docker-reference")?;
    let creator = doc
        .get("optional")
        .and_then(|o| o.get("creator"))
        .and_then(|c| c.as_str())
        .map(str::to_string);
    Ok(Claim {
        docker_reference,
        manifest_digest,
        creator,
    })
}

/// The lookaside directory of one image: `<root>/<repository>@<algo>=<hex>`, where
/// `repository` is the path of the reference without its registry (`p/app`) and
/// `manifest_digest` is `sha256:<hex>`.
pub fn lookaside_dir(root: &Path, repository: &str, manifest_digest: &str) -> PathBuf {
    let (algo, hex) = manifest_digest
        .split_once(':')
        .unwrap_or(("sha256", manifest_digest));
    root.join(format!("{repository}@{algo}={hex}"))
}

/// The signature files of an image, `signature-1`, `signature-2`… up to the first gap
/// (how containers/image reads them).
pub fn read_signatures(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, SignError> {
    let mut out = Vec::new();
    for n in 1.. {
        let path = dir.join(format!("signature-{n}"));
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(SignError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
            Ok(m) if m.len() > MAX_SIGNATURE => {
                // Kept in the list as an empty file: it is refused as unsigned.
                out.push((path, Vec::new()));
                continue;
            }
            Ok(_) => {}
        }
        // Bounded again while reading: a device's metadata says nothing of its size.
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, MAX_SIGNATURE + 1),
                    &mut bytes,
                )
            })
            .map_err(|source| SignError::Io {
                what: "read",
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_SIGNATURE {
            // As above: refused as unsigned.
            bytes.clear();
        }
        out.push((path, bytes));
    }
    Ok(out)
}

/// Adds `signature` to an image's lookaside directory, unless an identical signature is
/// there already: the next free `signature-<n>`, written to a temporary file and renamed
/// (with no-clobber semantics: a concurrent writer makes us take the next number).
pub fn write_signature(dir: &Path, signature: &[u8]) -> Result<PathBuf, SignError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SignError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let existing = read_signatures(dir)?;
    if let Some((path, _)) = existing.iter().find(|(_, b)| b == signature) {
        return Ok(path.clone());
    }
    let tmp = dir.join(format!(".signature-{}.tmp", std::process::id()));
    std::fs::write(&tmp, signature).map_err(io("write", &tmp))?;
    let mut n = existing.len() + 1;
    loop {
        let path = dir.join(format!("signature-{n}"));
        // A hard link fails if the name exists: no signature is ever overwritten.
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(SignError::Io {
                    what: "write",
                    path,
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    const REF: &str = "127.0.0.1:5000/p/app:main-1a2b3c4";
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_names_what_it_signs() {
        let key = generate("t").expect("key");
        let sig = sign(&key, REF, DIGEST, "cascade test").expect("sign");
        let v = verify(&[key.public()], &sig, REF, DIGEST).expect("verify");
        assert_eq!(v.fingerprint, key.fingerprint());
        assert_eq!(v.claim.creator.as_deref(), Some("cascade test"));
        // By digest: any tag of the repository.
        verify(
            &[key.public()],
            &sig,
            &format!("127.0.0.1:5000/p/app@{DIGEST}"),
            DIGEST,
        )
        .expect("by digest");
        // Deterministic: the same key and image give the same bytes.
        assert_eq!(sign(&key, REF, DIGEST, "cascade test").expect("sign"), sig);
    }

    #[test]
    fn the_wrong_key_digest_or_reference_is_rejected() {
        let key = generate("t").expect("key");
        let other = generate("o").expect("key");
        let sig = sign(&key, REF, DIGEST, "c").expect("sign");
        let e = verify(&[other.public()], &sig, REF, DIGEST).expect_err("other key");
        assert!(
            matches!(e, Rejection::UnknownKey { ref issuer } if *issuer == key.fingerprint()),
            "{e}"
        );
        let d2 = DIGEST.replace("0123", "4567");
        assert!(matches!(
            verify(&[key.public()], &sig, REF, &d2),
            Err(Rejection::WrongDigest { .. })
        ));
        assert!(matches!(
            verify(&[key.public()], &sig, "127.0.0.1:5000/p/app:other", DIGEST),
            Err(Rejection::WrongReference { .. })
        ));
        let mut flipped = sig.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(verify(&[key.public()], &flipped, REF, DIGEST).is_err());
        assert!(matches!(
            verify(&[key.public()], b"not a signature", REF, DIGEST),
            Err(Rejection::NotSigned { .. })
        ));
    }

    #[test]
    fn the_lookaside_layout_is_containers_image_s() {
        let root = Path::new("/s");
        assert_eq!(
            lookaside_dir(root, "p/app", DIGEST),
            Path::new(
                "/s/p/app@sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        );
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("p/app@sha256=00");
        let a = write_signature(&d, b"one").expect("write");
        assert!(a.ends_with("signature-1"));
        assert_eq!(write_signature(&d, b"one").expect("again"), a);
        assert!(write_signature(&d, b"two")
            .expect("two")
            .ends_with("signature-2"));
        assert_eq!(read_signatures(&d).expect("read").len(), 2);
    }

    #[test]
    fn repository_of_keeps_ports() {
        assert_eq!(
            repository_of("127.0.0.1:5000/p/app:tag"),
            "127.0.0.1:5000/p/app"
        );
        assert_eq!(
            repository_of("127.0.0.1:5000/p/app"),
            "127.0.0.1:5000/p/app"
        );
        assert_eq!(repository_of("h/p/app@sha256:00"), "h/p/app");
    }
}
