//! `keygen` and `verify`: their arguments and how their results read.

use std::path::PathBuf;

use cascade::{
    AttestationVerdict, BundleOptions, BundleProblem, BundleVerdict, ExitCode, ImageVerdict,
    SumsSignature, Verdict, VerifyOptions, VerifyTarget,
};

use crate::{fail, Io};

/// `verify` found an image without an acceptable signature or attestation.

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
    /// `host/repo@sha256:…`), a lockfile (every image it names, by its digests), or a
    /// release bundle's directory (`SHA256SUMS`, its signature and every file).
    #[arg(value_name = "IMAGE|LOCKFILE|BUNDLE")]
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
    /// Then rebuild the lockfile (a bundle's, for a bundle) from its recorded sources in
    /// this store and compare every digest, as `build --lock LOCKFILE --check` does: the
    /// proof that the artifacts came from those sources.
    #[arg(long)]
    rebuild: bool,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn keygen(args: KeygenArgs, mut io: Io<'_>) -> ExitCode {
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
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

pub(crate) fn verify(project: &std::path::Path, args: VerifyArgs, mut io: Io<'_>) -> ExitCode {
    let color = io.color && !args.json;
    let store = crate::default_store(project, args.store.as_ref());
    // A path that exists is a lockfile; anything else is an image reference.
    let path = PathBuf::from(&args.target);
    let target = if path.is_dir() {
        VerifyTarget::Bundle(path)
    } else if path.is_file() {
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
    let rebuild_lock = match (&opts.target, args.rebuild) {
        (_, false) => None,
        (VerifyTarget::Lockfile(p), true) => Some(p.clone()),
        (VerifyTarget::Bundle(dir), true) => match cascade::bundle_lockfile(dir) {
            Ok(p) => Some(p),
            Err(e) => return fail(&mut io, &e, args.json, color),
        },
        (VerifyTarget::Image(_), true) => {
            let message = "`--rebuild` needs a lockfile or a release bundle: an image alone does not say what built it";
            io.err_line(&format!("error: {message}"));
            if args.json {
                io.json(&serde_json::json!({
                    "error": { "message": message, "code": null, "exit_code": ExitCode::BadInput.code() }
                }));
            }
            return ExitCode::BadInput;
        }
    };
    let report = match cascade::verify(&opts) {
        Ok(report) => report,
        Err(e) => return fail(&mut io, &e, args.json, color),
    };
    if !args.json {
        for line in verdict_lines(&report) {
            io.err_line(&line);
        }
    }
    let mut code = if report.success() {
        ExitCode::Ok
    } else {
        ExitCode::Failed
    };
    let Some(lockfile) = rebuild_lock else {
        if args.json {
            io.json(&report);
        }
        return code;
    };
    match crate::rebuild_check(project, &lockfile, &store, &io, color) {
        Ok(build) => {
            if args.json {
                let mut doc = serde_json::to_value(&report).unwrap_or_default();
                doc["rebuild"] = serde_json::to_value(&build).unwrap_or_default();
                io.json(&doc);
            } else {
                io.err_line(&crate::summary(&build));
            }
            if build.exit_code() != ExitCode::Ok {
                code = build.exit_code();
            }
            code
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

/// How `verify` reads: one line per image (and its attestation), or the bundle's.
fn verdict_lines(report: &cascade::VerifyReport) -> Vec<String> {
    if let Some(b) = &report.bundle {
        return bundle_lines(b);
    }
    let mut out = Vec::new();
    for i in &report.images {
        let name = i
            .node
            .as_deref()
            .map(|n| format!("{n}: "))
            .unwrap_or_default();
        out.push(match &i.verdict {
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
        });
        out.push(attestation_line(i));
    }
    if report.images.is_empty() {
        out.push("nothing to verify: the lockfile names no image".into());
    }
    out
}

/// How a release bundle's verdict reads: the signature, then one line per problem.
fn bundle_lines(b: &BundleVerdict) -> Vec<String> {
    let mut out = vec![match &b.signature {
        SumsSignature::Verified { fingerprint } => {
            format!("verified SHA256SUMS (key {fingerprint}): {} files", b.files)
        }
        SumsSignature::Missing => "unsigned: no SHA256SUMS.asc".to_string(),
        SumsSignature::Rejected { rejection } => format!("rejected SHA256SUMS.asc: {rejection}"),
    }];
    for p in &b.problems {
        out.push(match p {
            BundleProblem::Changed { path } => format!("  changed: `{path}` is not what SHA256SUMS lists"),
            BundleProblem::Missing { path } => format!("  missing: `{path}`"),
            BundleProblem::Unlisted { path } => format!("  unlisted: `{path}` is not in SHA256SUMS"),
            BundleProblem::BadLine { line } => format!("  SHA256SUMS line {line} is not `<sha256>  <path>`"),
            BundleProblem::ImageDigest { node, lockfile, bundle } => format!(
                "  image of `{node}`: the lockfile records {lockfile}, the bundle's manifest is {bundle}"
            ),
            BundleProblem::Lockfile { detail } => format!("  lockfile: {detail}"),
        });
    }
    out
}

#[derive(clap::Args, Debug)]
pub(crate) struct BundleArgs {
    /// The lockfile to release.
    #[arg(value_name = "LOCKFILE")]
    lockfile: PathBuf,
    /// The directory to write (new, or empty).
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
    /// The secret key that signs `SHA256SUMS`: a file, or `env:VAR`.
    #[arg(long, value_name = "KEY", value_parser = crate::parse_key_location)]
    sign: Option<cascade::KeyLocation>,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn release_bundle(
    project: &std::path::Path,
    args: BundleArgs,
    mut io: Io<'_>,
) -> ExitCode {
    let color = io.color && !args.json;
    let opts = BundleOptions {
        lockfile: args.lockfile,
        out: args.output,
        store: crate::default_store(project, args.store.as_ref()),
        sign: args.sign.map(|loc| (loc, PathBuf::new())),
    };
    match cascade::release_bundle(&opts) {
        Ok(report) => {
            if args.json {
                io.json(&report);
            } else {
                let signed = report
                    .signed_by
                    .as_deref()
                    .map(|f| format!(", SHA256SUMS.asc signed by {f}"))
                    .unwrap_or_else(|| ", unsigned (no --sign)".into());
                io.err_line(&format!(
                    "wrote {}: {} files in SHA256SUMS{signed}",
                    report.dir.display(),
                    report.files.len()
                ));
            }
            ExitCode::Ok
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
            attestation
        ),
        AttestationVerdict::Missing {
            attestation,
            detail,
        } => {
            let why = detail
                .as_deref()
                .map(|d| format!(" (nor in the registry: {d})"))
                .unwrap_or_default();
            format!("  not attested: no attestation at {attestation}{why}")
        }
        AttestationVerdict::Rejected {
            attestation,
            rejection,
        } => format!("  attestation rejected: {}: {rejection}", attestation),
        AttestationVerdict::NotProvenance {
            attestation,
            detail,
        } => format!(
            "  attestation rejected: {} is not SLSA provenance: {detail}",
            attestation
        ),
        AttestationVerdict::Mismatch {
            attestation,
            differences,
        } => {
            let mut s = format!("  attestation does not match: {}", attestation);
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
