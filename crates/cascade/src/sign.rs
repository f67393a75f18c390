//! Keys and image signatures: `keygen`, the sign step of `build --push --sign`, and
//! `verify`. The cryptography and the formats are `cascade-sign`'s; this module decides
//! where keys come from and where signatures go:
//! - a key is a file (mode 0600 when `keygen` writes it) or `env:VAR`; its text is read
//!   once, never logged, never put in the store or a lockfile;
//! - signatures go to the store's lookaside directory `<store>/sigstore/`, laid out as
//!   containers/image reads it (`<repository>@sha256=<hex>/signature-<n>`), so a
//!   `registries.d` file with `lookaside: file://<store>/sigstore` lets skopeo and podman
//!   check them (docs/provenance.md);
//! - beside each image's signatures, `attestation.dsse.json`: its SLSA provenance
//!   statement ([`crate::provenance`]) in a DSSE envelope signed by the same key,
//!   replaced by the newest build of that image; `verify` requires it. It is also
//!   pushed beside the image as cosign attaches attestations ([`push_attestations`]):
//!   an OCI artifact tagged `sha256-<hex>.att` whose one layer is the envelope.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade_manifest::KeyLocation;
use cascade_registry::{Client, ClientOptions, OciDigest, Reference};
use cascade_sign::dsse::{self, EnvelopeRejection};
use cascade_sign::simple::{self, Rejection};
use cascade_sign::{PublicKey, SecretKey};

use crate::image::ImageRef;
use crate::provenance::{self, Difference, Statement};
use crate::Error;

/// The attestation's file name in an image's lookaside directory.
pub(crate) const ATTESTATION_FILE: &str = "attestation.dsse.json";

/// The lookaside directory of a store.
pub(crate) fn sigstore_dir(store: &Path) -> PathBuf {
    store.join("sigstore")
}

/// What signatures say made them (`optional.creator`).
fn creator() -> String {
    format!("cascade {}", env!("CARGO_PKG_VERSION"))
}

/// What `keygen` wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyPair {
    /// The secret key (armored OpenPGP), mode 0600.
    pub secret: PathBuf,
    /// The public key (armored OpenPGP): for `verify --key`, skopeo's `keyPath`,
    /// `gpg --import`.
    pub public: PathBuf,
    /// The same public key as securesystemslib's `SSlibKey` reads it (raw Ed25519,
    /// hex), for DSSE verifiers: `cascade.pub.json`.
    pub public_sslib: PathBuf,
    pub fingerprint: String,
}

/// Writes a new key pair into `dir` (created if missing): `cascade.key`, `cascade.pub`
/// and `cascade.pub.json`. Never overwrites: an existing file is an error.
pub fn keygen(dir: &Path, user_id: &str) -> Result<KeyPair, Error> {
    let secret_path = dir.join("cascade.key");
    let public_path = dir.join("cascade.pub");
    let sslib_path = dir.join("cascade.pub.json");
    for p in [&secret_path, &public_path, &sslib_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::KeyExists { path: p.clone() });
        }
    }
    let key_error = |source| Error::Key {
        what: "a new key pair".into(),
        source,
    };
    let key = cascade_sign::generate(user_id).map_err(key_error)?;
    let secret = key.to_armored().map_err(key_error)?;
    let public = key.public().to_armored().map_err(key_error)?;
    // `generate` makes Ed25519 keys, which always have this form.
    let sslib = key.public().sslib_json().unwrap_or_default();
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::WriteKey { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    write_new(&secret_path, secret.as_bytes(), 0o600).map_err(write_error(&secret_path))?;
    write_new(&public_path, public.as_bytes(), 0o644).map_err(write_error(&public_path))?;
    write_new(&sslib_path, format!("{sslib}\n").as_bytes(), 0o644)
        .map_err(write_error(&sslib_path))?;
    Ok(KeyPair {
        secret: secret_path,
        public: public_path,
        public_sslib: sslib_path,
        fingerprint: key.fingerprint(),
    })
}

/// Creates `path` (never replacing a file) with `mode` from the start, so a secret is
/// never readable by others, not even for a moment.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Where a key came from, for messages (never its content).
fn describe(loc: &KeyLocation, base: &Path) -> (String, Option<PathBuf>) {
    match loc {
        KeyLocation::File(p) => {
            let path = base.join(p);
            (format!("`{}`", path.display()), Some(path))
        }
        KeyLocation::Env(var) => (format!("the variable `{var}`"), None),
    }
}

/// Reads the text of a key; `by` says who named it (`--sign`, `sign:` in …).
fn key_text(loc: &KeyLocation, base: &Path, by: &str) -> Result<(String, String), Error> {
    let (what, path) = describe(loc, base);
    let text = match (loc, path) {
        (KeyLocation::Env(var), _) => std::env::var(var).map_err(|_| Error::KeyVariable {
            var: var.clone(),
            by: by.to_string(),
        })?,
        (_, Some(path)) => {
            let shown = path.display().to_string();
            crate::bounded::read_text(&path, &shown, "a key", crate::bounded::SMALL_LIMIT)?
        }
        (KeyLocation::File(p), None) => {
            return Err(Error::Read {
                path: PathBuf::from(p),
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
    };
    Ok((text, what))
}

/// The secret key named by `loc` (relative paths from `base`); `by` says who named it.
pub(crate) fn secret_key(loc: &KeyLocation, base: &Path, by: &str) -> Result<SecretKey, Error> {
    let (text, what) = key_text(loc, base, by)?;
    SecretKey::from_armored(&text, &what).map_err(|source| Error::Key { what, source })
}

/// The key that signs a build's images, and where their signatures go.
pub(crate) struct Signer {
    key: SecretKey,
    sigstore: PathBuf,
}

impl Signer {
    /// Loads the key named by `loc` (relative paths from `base`), before anything is
    /// built: a bad key costs no build time.
    pub(crate) fn load(
        loc: &KeyLocation,
        base: &Path,
        by: &str,
        store: &Path,
    ) -> Result<Signer, Error> {
        Ok(Signer {
            key: secret_key(loc, base, by)?,
            sigstore: sigstore_dir(store),
        })
    }

    /// Signs every pushed image and attests it, writing each signature and
    /// attestation into the image's lookaside directory.
    pub(crate) fn sign(&self, images: &[(ImageRef, Statement)]) -> Result<Vec<Signed>, Error> {
        let mut out = Vec::new();
        for (image, statement) in images {
            let err = |source| Error::Sign {
                reference: image.reference.clone(),
                source,
            };
            let r = Reference::parse(&image.reference).map_err(|e| Error::Push {
                reference: image.reference.clone(),
                source: e,
            })?;
            let digest = image.digest.to_string();
            let bytes =
                simple::sign(&self.key, &image.reference, &digest, &creator()).map_err(err)?;
            let dir = simple::lookaside_dir(&self.sigstore, &r.repository, &digest);
            let signature = simple::write_signature(&dir, &bytes).map_err(err)?;
            let envelope = dsse::sign(&self.key, dsse::IN_TOTO_PAYLOAD_TYPE, &statement.to_bytes())
                .map_err(err)?;
            let attestation = dir.join(ATTESTATION_FILE);
            write_replacing(&attestation, &envelope.to_bytes()).map_err(|source| {
                err(cascade_sign::SignError::Io {
                    what: "write",
                    path: attestation.clone(),
                    source,
                })
            })?;
            out.push(Signed {
                reference: image.reference.clone(),
                digest,
                signature,
                attestation,
                attestation_tag: None,
                fingerprint: self.key.fingerprint(),
            });
        }
        Ok(out)
    }
}

/// One image signed by a build.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Signed {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
    /// The `signature-<n>` file in the lookaside directory.
    pub signature: PathBuf,
    /// The DSSE envelope of its provenance, beside the signature.
    pub attestation: PathBuf,
    /// Where the envelope was pushed, cosign's way (`host/repo:sha256-<hex>.att`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_tag: Option<String>,
    pub fingerprint: String,
}

/// The media type of a DSSE envelope as an OCI layer (cosign's).
const MEDIA_TYPE_DSSE: &str = "application/vnd.dsse.envelope.v1+json";

/// The attestation of an image as cosign attaches it: an OCI image manifest whose
/// config is cosign's empty-image config naming the layer and whose one layer is the
/// envelope, annotated with its predicate type. Written into `layout` (blobs only, not
/// its index); returns the manifest's digest. No clock: the times are cosign's zero time.
fn attestation_artifact(
    layout: &cascade_image::OciLayout,
    envelope: &[u8],
) -> Result<OciDigest, cascade_image::ImageError> {
    use cascade_image::{Descriptor, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST};
    let layer = layout.put_blob_bytes(envelope)?;
    let config = serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "diff_ids": [layer.to_string()], "type": "layers" },
    })
    .to_string();
    let config_digest = layout.put_blob_bytes(config.as_bytes())?;
    let mut layer_desc = Descriptor::new(MEDIA_TYPE_DSSE, layer, envelope.len() as u64);
    layer_desc.annotations = [
        (
            "dev.cosignproject.cosign/signature".to_string(),
            String::new(),
        ),
        (
            "predicateType".to_string(),
            provenance::PREDICATE_TYPE.to_string(),
        ),
    ]
    .into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": Descriptor::new(MEDIA_TYPE_CONFIG, config_digest, config.len() as u64),
        "layers": [layer_desc],
    })
    .to_string();
    layout.put_blob_bytes(manifest.as_bytes())
}

/// cosign's tag for what is attached to the image `sha256:<hex>`: `sha256-<hex>.<suffix>`.
fn cosign_tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replacen(':', "-", 1))
}

/// Pushes each signed image's attestation next to it in its repository, tagged
/// `sha256-<hex>.att` (cosign's scheme), through the same push as images: blobs, the
/// manifest by digest, the tag last. Records the tag in each `Signed`.
pub(crate) fn push_attestations(
    layout: &cascade_image::OciLayout,
    signed: &mut [Signed],
) -> Result<(), Error> {
    for s in signed {
        let push_error = |source| Error::Push {
            reference: s.reference.clone(),
            source,
        };
        let envelope = crate::bounded::read_file(
            &s.attestation,
            &s.attestation.display().to_string(),
            "an attestation",
            cascade_sign::dsse::MAX_ENVELOPE,
        )?;
        let manifest = attestation_artifact(layout, &envelope).map_err(Error::Image)?;
        let r = Reference::parse(&s.reference).map_err(push_error)?;
        let client = client_for(&r, Duration::from_secs(60)).map_err(push_error)?;
        let tag = cosign_tag(&s.digest, "att");
        client
            .push(layout, &manifest, &r.repository, std::slice::from_ref(&tag))
            .map_err(push_error)?;
        s.attestation_tag = Some(format!("{}/{}:{tag}", r.registry, r.repository));
    }
    Ok(())
}

/// A client of `r`'s registry, with its credentials (never logged) and `timeout`.
fn client_for(r: &Reference, timeout: Duration) -> Result<Client, cascade_registry::RegistryError> {
    let creds = cascade_registry::credentials_for(&r.registry)?;
    Ok(Client::new(
        &r.registry,
        creds,
        ClientOptions {
            timeout,
            ..ClientOptions::default()
        },
    ))
}

/// Writes `bytes` to `path` through a temporary file in its directory and a rename.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What `verify` checks.
#[derive(Clone, Debug)]
pub enum VerifyTarget {
    /// `host/repo:tag` (its digest asked of the registry) or `host/repo@sha256:…`.
    Image(String),
    /// Every image a lockfile names, by the lockfile's digests.
    Lockfile(PathBuf),
    /// A release bundle (`cascade release-bundle`): its signed `SHA256SUMS`.
    Bundle(PathBuf),
}

pub struct VerifyOptions {
    pub target: VerifyTarget,
    /// Public keys (armored or binary OpenPGP); a signature by any of them counts.
    pub keys: Vec<PathBuf>,
    /// The lookaside directory (`<store>/sigstore` by default).
    pub sigstore: PathBuf,
    /// `--signature-only`: the signatures decide; an attestation is still checked and
    /// reported, but a missing one does not fail (images signed by other tools, such as
    /// `skopeo standalone-sign`, carry none). A bad one still fails.
    pub signature_only: bool,
}

/// `verify`'s answer, also its `--json` schema.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub images: Vec<ImageVerdict>,
    /// The release bundle's verdict, when a bundle was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<crate::bundle::BundleVerdict>,
    /// Whether a missing attestation was allowed (`--signature-only`).
    pub signature_only: bool,
}

impl VerifyReport {
    /// Every image has a good signature and a good attestation (and there is at least
    /// one image).
    pub fn success(&self) -> bool {
        if let Some(b) = &self.bundle {
            return b.success();
        }
        !self.images.is_empty()
            && self.images.iter().all(|i| {
                matches!(i.verdict, Verdict::Verified { .. })
                    && match i.attestation {
                        AttestationVerdict::Verified { .. } => true,
                        AttestationVerdict::Missing { .. } => self.signature_only,
                        _ => false,
                    }
            })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageVerdict {
    /// The lockfile's node, when verifying a lockfile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
    /// The simple signature's verdict.
    pub verdict: Verdict,
    /// The provenance attestation's verdict.
    pub attestation: AttestationVerdict,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum AttestationVerdict {
    /// A DSSE envelope signed by one of the keys, whose statement names this image (and,
    /// for a lockfile, attests what the lockfile records).
    Verified {
        fingerprint: String,
        attestation: String,
    },
    /// No `attestation.dsse.json` beside the signatures, nor a `sha256-<hex>.att`
    /// beside the image in its registry (`detail` says why the registry had none).
    Missing {
        attestation: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The envelope is not signed by one of the keys (or is not an envelope).
    Rejected {
        attestation: String,
        rejection: EnvelopeRejection,
    },
    /// Signed, but its body is not a cascade SLSA provenance statement.
    NotProvenance { attestation: String, detail: String },
    /// Signed, but it attests something else: each difference.
    Mismatch {
        attestation: String,
        differences: Vec<Difference>,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Verdict {
    /// A signature by one of the keys names exactly this reference and digest.
    Verified {
        fingerprint: String,
        signature: PathBuf,
    },
    /// No signature at all in the lookaside directory.
    Unsigned { lookaside: PathBuf },
    /// Signatures, none acceptable: why each was refused.
    Rejected { signatures: Vec<RejectedSignature> },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RejectedSignature {
    pub path: PathBuf,
    pub rejection: Rejection,
}

/// Checks the signatures of an image, or of every image of a lockfile. A bad key, an
/// unreadable lockfile or an unreachable registry is an `Error` (exit 2 or 3); a
/// missing or wrong signature is a verdict (exit 1).
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport, Error> {
    let keys = read_public_keys(&opts.keys)?;
    let images = match &opts.target {
        VerifyTarget::Image(reference) => {
            let digest = image_digest(reference)?;
            vec![image_verdict(
                &keys,
                &opts.sigstore,
                None,
                reference.clone(),
                digest,
                None,
            )?]
        }
        VerifyTarget::Lockfile(path) => {
            let lock = crate::read_lockfile(path, &path.display().to_string())?;
            lockfile_verdicts(&keys, &opts.sigstore, &lock, &|_| true)?
        }
        VerifyTarget::Bundle(dir) => {
            return Ok(VerifyReport {
                images: Vec::new(),
                bundle: Some(crate::bundle::verify_bundle(dir, &keys)?),
                signature_only: opts.signature_only,
            })
        }
    };
    Ok(VerifyReport {
        images,
        bundle: None,
        signature_only: opts.signature_only,
    })
}

/// Reads public keys (armored or binary OpenPGP).
fn read_public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, Error> {
    paths
        .iter()
        .map(|path| {
            let what = format!("`{}`", path.display());
            let bytes = crate::bounded::read_file(
                path,
                &path.display().to_string(),
                "a public key",
                crate::bounded::SMALL_LIMIT,
            )?;
            PublicKey::from_bytes(&bytes, &what).map_err(|source| Error::Key { what, source })
        })
        .collect()
}

/// The verdicts on every image of `lock` whose node `wanted` picks, each attestation
/// compared with the statement the lockfile implies for its node.
fn lockfile_verdicts(
    keys: &[PublicKey],
    sigstore: &Path,
    lock: &cascade_lock::Lockfile,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<ImageVerdict>, Error> {
    let mut out = Vec::new();
    for (name, n) in lock.nodes.iter().filter(|(name, _)| wanted(name)) {
        let Some(i) = &n.image else { continue };
        let expected = provenance::statement(
            &lock.environment,
            name,
            n,
            &i.reference,
            &i.digest,
            Vec::new(),
            None,
        );
        out.push(image_verdict(
            keys,
            sigstore,
            Some(name.clone()),
            i.reference.clone(),
            i.digest.clone(),
            Some(&expected),
        )?);
    }
    Ok(out)
}

fn image_verdict(
    keys: &[PublicKey],
    sigstore: &Path,
    node: Option<String>,
    reference: String,
    digest: String,
    expected: Option<&Statement>,
) -> Result<ImageVerdict, Error> {
    let verdict = verdict(keys, sigstore, &reference, &digest)?;
    let attestation = attestation_verdict(keys, sigstore, &reference, &digest, expected)?;
    Ok(ImageVerdict {
        node,
        reference,
        digest,
        verdict,
        attestation,
    })
}

/// `require_signature:` of `env`: every image of `lock` whose node `wanted` picks must
/// be signed by one of `keys` (paths relative to `base`) and carry an attestation of
/// what the lockfile records for it, or nothing goes ahead: the error names each image
/// and why (exit 1). No keys: nothing is required.
pub(crate) fn require_signatures(
    env: &str,
    keys: &[String],
    base: &Path,
    store: &Path,
    lock: &cascade_lock::Lockfile,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys = read_public_keys(&keys.iter().map(|k| base.join(k)).collect::<Vec<_>>())?;
    let verdicts = lockfile_verdicts(&keys, &sigstore_dir(store), lock, wanted)?;
    let refused: Vec<RefusedImage> = verdicts
        .into_iter()
        .filter_map(|v| {
            let why = match (&v.verdict, &v.attestation) {
                (Verdict::Verified { .. }, AttestationVerdict::Verified { .. }) => return None,
                (Verdict::Unsigned { .. }, _) => "it is not signed".to_string(),
                (Verdict::Rejected { signatures }, _) => {
                    let reasons: Vec<String> =
                        signatures.iter().map(|s| s.rejection.to_string()).collect();
                    format!("no signature by a required key: {}", reasons.join("; "))
                }
                (_, AttestationVerdict::Missing { .. }) => "it has no attestation".into(),
                (_, AttestationVerdict::Rejected { rejection, .. }) => {
                    format!("its attestation is refused: {rejection}")
                }
                (_, AttestationVerdict::NotProvenance { detail, .. }) => {
                    format!("its attestation is not provenance: {detail}")
                }
                (_, AttestationVerdict::Mismatch { differences, .. }) => {
                    let fields: Vec<&str> = differences.iter().map(|d| d.field.as_str()).collect();
                    format!(
                        "its attestation does not match the lockfile ({})",
                        fields.join(", ")
                    )
                }
            };
            Some(RefusedImage {
                node: v.node.unwrap_or_default(),
                reference: v.reference,
                why,
            })
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::SignatureRequired {
            env: env.to_string(),
            refused,
        })
    }
}

/// An image `require_signature:` refused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefusedImage {
    pub node: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub why: String,
}

/// The manifest digest of `reference`: written in it (`@sha256:…`), else the registry's
/// answer for its tag.
fn image_digest(reference: &str) -> Result<String, Error> {
    let push_error = |source| Error::Push {
        reference: reference.to_string(),
        source,
    };
    if let Some((_, digest)) = reference.split_once('@') {
        let d: OciDigest = digest.parse().map_err(|_| {
            push_error(cascade_registry::RegistryError::InvalidReference {
                reference: reference.to_string(),
                reason: format!("`{digest}` is not a sha256 digest"),
            })
        })?;
        return Ok(d.to_string());
    }
    let r = Reference::parse(reference).map_err(push_error)?;
    let client = client_for(&r, Duration::from_secs(30)).map_err(push_error)?;
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    match client
        .manifest_digest(&r.repository, &tag)
        .map_err(push_error)?
    {
        Some(d) => Ok(d.to_string()),
        None => Err(Error::NoSuchImage {
            reference: reference.to_string(),
        }),
    }
}

fn verdict(
    keys: &[PublicKey],
    sigstore: &Path,
    reference: &str,
    digest: &str,
) -> Result<Verdict, Error> {
    let repo_ref = reference.split('@').next().unwrap_or(reference);
    let r = Reference::parse(repo_ref).map_err(|source| Error::Push {
        reference: reference.to_string(),
        source,
    })?;
    let dir = simple::lookaside_dir(sigstore, &r.repository, digest);
    let signatures = simple::read_signatures(&dir).map_err(|source| Error::Sign {
        reference: reference.to_string(),
        source,
    })?;
    if signatures.is_empty() {
        return Ok(Verdict::Unsigned { lookaside: dir });
    }
    let mut rejected = Vec::new();
    for (path, bytes) in signatures {
        match simple::verify(keys, &bytes, reference, digest) {
            Ok(v) => {
                return Ok(Verdict::Verified {
                    fingerprint: v.fingerprint,
                    signature: path,
                })
            }
            Err(rejection) => rejected.push(RejectedSignature { path, rejection }),
        }
    }
    Ok(Verdict::Rejected {
        signatures: rejected,
    })
}

/// The lookaside directory of `reference` (by tag or digest) at `digest`.
fn lookaside_of(sigstore: &Path, reference: &str, digest: &str) -> Result<PathBuf, Error> {
    let repo_ref = reference.split('@').next().unwrap_or(reference);
    let r = Reference::parse(repo_ref).map_err(|source| Error::Push {
        reference: reference.to_string(),
        source,
    })?;
    Ok(simple::lookaside_dir(sigstore, &r.repository, digest))
}

/// The envelope pushed beside `reference`'s image (`<repo>:sha256-<hex>.att`, cosign's
/// tag): its location and bytes, or why there is none (no registry in the reference,
/// none reachable, no such tag, no envelope layer).
fn registry_attestation(reference: &str, digest: &str) -> Result<(String, Vec<u8>), String> {
    let repo_ref = reference.split('@').next().unwrap_or(reference);
    let r = Reference::parse(repo_ref).map_err(|e| e.to_string())?;
    let client = client_for(&r, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let tag = cosign_tag(digest, "att");
    let at = format!("{}/{}:{tag}", r.registry, r.repository);
    let (_, manifest) = client
        .get_manifest(&r.repository, &tag)
        .map_err(|e| format!("`{at}`: {e}"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| format!("`{at}` is not an OCI manifest: {e}"))?;
    let layer = manifest["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["mediaType"] == MEDIA_TYPE_DSSE))
        .and_then(|l| l["digest"].as_str())
        .and_then(|d| d.parse::<OciDigest>().ok())
        .ok_or_else(|| format!("`{at}` has no DSSE envelope layer"))?;
    let bytes = client
        .get_blob(&r.repository, &layer, dsse::MAX_ENVELOPE)
        .map_err(|e| format!("`{at}`: {e}"))?;
    Ok((at, bytes))
}

/// Checks an image's attestation: signed by one of `keys`, a cascade provenance
/// statement, whose subject is this image's digest, and, given the statement a
/// lockfile implies (`expected`), attesting the same sources, inputs and outputs.
fn attestation_verdict(
    keys: &[PublicKey],
    sigstore: &Path,
    reference: &str,
    digest: &str,
    expected: Option<&Statement>,
) -> Result<AttestationVerdict, Error> {
    let local = lookaside_of(sigstore, reference, digest)?.join(ATTESTATION_FILE);
    let mut from_registry = false;
    let (attestation, bytes) = match std::fs::metadata(&local) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Not beside the signatures here: where the build pushed it, beside the image.
            match registry_attestation(reference, digest) {
                Ok((at, bytes)) => {
                    from_registry = true;
                    (at, bytes)
                }
                Err(detail) => {
                    return Ok(AttestationVerdict::Missing {
                        attestation: local.display().to_string(),
                        detail: Some(detail),
                    })
                }
            }
        }
        Ok(m) if m.len() > dsse::MAX_ENVELOPE => (local.display().to_string(), Vec::new()),
        _ => (
            local.display().to_string(),
            crate::bounded::read_file(
                &local,
                &local.display().to_string(),
                "an attestation",
                dsse::MAX_ENVELOPE,
            )?,
        ),
    };
    let opened = match dsse::verify(keys, &bytes, dsse::IN_TOTO_PAYLOAD_TYPE) {
        Ok(o) => o,
        // A registry holds whoever's attestations were pushed; one that names none of
        // the keys is not for these keys to judge (a changed one of theirs still is).
        Err(EnvelopeRejection::BadSignature { keyids })
            if from_registry
                && !keys
                    .iter()
                    .any(|k| keyids.contains(&k.fingerprint().to_lowercase())) =>
        {
            return Ok(AttestationVerdict::Missing {
                attestation: local.display().to_string(),
                detail: Some(format!(
                    "`{attestation}` is signed by other keys ({keyids})"
                )),
            })
        }
        Err(rejection) => {
            return Ok(AttestationVerdict::Rejected {
                attestation,
                rejection,
            })
        }
    };
    let statement: Statement = match serde_json::from_slice(&opened.payload) {
        Ok(s) => s,
        Err(e) => {
            return Ok(AttestationVerdict::NotProvenance {
                attestation,
                detail: e.to_string(),
            })
        }
    };
    if statement.predicate_type != provenance::PREDICATE_TYPE
        || statement.statement_type != provenance::STATEMENT_TYPE
    {
        return Ok(AttestationVerdict::NotProvenance {
            attestation,
            detail: format!(
                "`{}` / `{}` is not an in-toto statement of SLSA provenance v1",
                statement.statement_type, statement.predicate_type
            ),
        });
    }
    let mut differences = Vec::new();
    let subject = statement.subject_digest();
    if subject.as_deref() != Some(digest) {
        differences.push(Difference {
            field: "subject digest".into(),
            attested: serde_json::to_string(&subject).unwrap_or_default(),
            expected: serde_json::to_string(digest).unwrap_or_default(),
        });
    }
    if let Some(e) = expected {
        differences.extend(
            provenance::compare(&statement, e)
                .into_iter()
                // The subject's digest is reported once, above.
                .filter(|d| !(d.field == "subject" && subject.as_deref() != Some(digest))),
        );
    }
    if differences.is_empty() {
        Ok(AttestationVerdict::Verified {
            fingerprint: opened.fingerprint,
            attestation,
        })
    } else {
        Ok(AttestationVerdict::Mismatch {
            attestation,
            differences,
        })
    }
}
