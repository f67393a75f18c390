//! `keygen` and `verify`: their arguments and how their results read.

use std::path::PathBuf;

use cascade::{AttestationVerdict, ImageVerdict, Verdict, VerifyOptions, VerifyTarget};

use crate::{fail, Io, EXIT_OK};

/// `verify` found an image without an acceptable signature or attestation.
const EXIT_CHECK_FAILED: i32 = 1;

#[derive(clap::Args, Debug)]
pub(crate) struct KeygenArgs {
    /// The directory to write `cascade.key`, `cascade.pub` and `cascade.pub.json` into
    /// (created if missing; existing keys are never overwritten).
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
    /// The key's OpenPGP user id.
    #[arg(long, default_value = "cascade")]
    name: String,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// An image (`host/repo:tag`, its digest asked of the registry, or
    /// `host/repo@sha256:…`), or a lockfile (every image it names, by its digests).
    #[arg(value_name = "IMAGE|LOCKFILE")]
    target: String,
    /// A public key (armored or binary OpenPGP); repeat for several. A signature by any
    /// of them counts.
    #[arg(long, value_name = "PUB", required = true)]
    key: Vec<PathBuf>,
    /// The lookaside directory holding the signatures [default: <store>/sigstore].
    #[arg(long, value_name = "DIR")]
    sigstore: Option<PathBuf>,
    /// The signatures decide: an image without cascade's attestation (signed by another
    /// tool, such as `skopeo standalone-sign`) passes; a bad attestation still fails.
    #[arg(long)]
    signature_only: bool,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn keygen(args: KeygenArgs, mut io: Io<'_>) -> i32 {
    let color = io.color && !args.json;
    match cascade::keygen(&args.output, &args.name) {
        Ok(pair) => {
            if args.json {
                io.json(&pair);
            } else {
                io.err_line(&format!(
                    "wrote {} (secret, mode 0600), {} and {}\nfingerprint {}",
                    pair.secret.display(),
                    pair.public.display(),
                    pair.public_sslib.display(),
                    pair.fingerprint
                ));
            }
            EXIT_OK
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

pub(crate) fn verify(project: &std::path::Path, args: VerifyArgs, mut io: Io<'_>) -> i32 {
    let color = io.color && !args.json;
    let store = crate::default_store(project, args.store.as_ref());
    // A path that exists is a lockfile; anything else is an image reference.
    let path = PathBuf::from(&args.target);
    let target = if path.is_file() {
        VerifyTarget::Lockfile(path)
    } else {
        VerifyTarget::Image(args.target.clone())
    };
    let opts = VerifyOptions {
        target,
        keys: args.key,
        sigstore: args.sigstore.unwrap_or_else(|| store.join("sigstore")),
        signature_only: args.signature_only,
    };
    match cascade::verify(&opts) {
        Ok(report) => {
            if args.json {
                io.json(&report);
            } else {
                for i in &report.images {
                    let name = i
                        .node
                        .as_deref()
                        .map(|n| format!("{n}: "))
                        .unwrap_or_default();
                    let line = match &i.verdict {
                        Verdict::Verified {
                            fingerprint,
                            signature,
                        } => format!(
                            "verified {name}{} {} (key {fingerprint}, {})",
                            i.reference,
                            i.digest,
                            signature.display()
                        ),
                        Verdict::Unsigned { lookaside } => format!(
                            "unsigned {name}{} {}: no signature in {}",
                            i.reference,
                            i.digest,
                            lookaside.display()
                        ),
                        Verdict::Rejected { signatures } => {
                            let mut s = format!("rejected {name}{} {}", i.reference, i.digest);
                            for r in signatures {
                                s.push_str(&format!("\n  {}: {}", r.path.display(), r.rejection));
                            }
                            s
                        }
                    };
                    io.err_line(&line);
                    io.err_line(&attestation_line(i));
                }
                if report.images.is_empty() {
                    io.err_line("nothing to verify: the lockfile names no image");
                }
            }
            if report.success() {
                EXIT_OK
            } else {
                EXIT_CHECK_FAILED
            }
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

/// How an image's attestation verdict reads, one line per problem.
fn attestation_line(i: &ImageVerdict) -> String {
    match &i.attestation {
        AttestationVerdict::Verified {
            fingerprint,
            attestation,
        } => format!(
            "  attested: SLSA provenance (key {fingerprint}, {})",
            attestation.display()
        ),
        AttestationVerdict::Missing { attestation } => format!(
            "  not attested: no attestation at {}",
            attestation.display()
        ),
        AttestationVerdict::Rejected {
            attestation,
            rejection,
        } => format!(
            "  attestation rejected: {}: {rejection}",
            attestation.display()
        ),
        AttestationVerdict::NotProvenance {
            attestation,
            detail,
        } => format!(
            "  attestation rejected: {} is not SLSA provenance: {detail}",
            attestation.display()
        ),
        AttestationVerdict::Mismatch {
            attestation,
            differences,
        } => {
            let mut s = format!("  attestation does not match: {}", attestation.display());
            for d in differences {
                s.push_str(&format!(
                    "\n    `{}`: attested {}, expected {}",
                    d.field, d.attested, d.expected
                ));
            }
            s
        }
    }
}
