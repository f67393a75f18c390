//! The judges are tools we did not write: skopeo (through gpgme and gpg) verifies what
//! cascade-sign signs, and cascade-sign verifies what skopeo signs with a gpg key.
//! Skipped when skopeo or gpg is missing, except with `CI=true`, where it fails (CI
//! installs both).

use std::path::Path;
use std::process::Command;

use cascade_sign::simple;

const REF: &str = "127.0.0.1:5000/p/app:main-1a2b3c4";

fn tools_available() -> bool {
    let ok = ["skopeo", "gpg"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "skopeo and gpg are required with CI=true (apt-get install skopeo gnupg)"
        );
        eprintln!("skipping: skopeo or gpg is not installed");
    }
    ok
}

/// Runs a command with `GNUPGHOME` set, returning (success, stdout + stderr).
fn run(gnupghome: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("GNUPGHOME", gnupghome)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An image manifest (any bytes do: skopeo digests the file) and its digest.
fn manifest(dir: &Path) -> (std::path::PathBuf, String) {
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let path = dir.join("manifest.json");
    std::fs::write(&path, body).expect("write manifest");
    (path, cascade_image::OciDigest::of(body).to_string())
}

fn gnupg_home(root: &Path) -> std::path::PathBuf {
    let home = root.join("gnupg");
    std::fs::create_dir(&home).expect("gnupg home");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    home
}

#[test]
fn skopeo_standalone_verify_accepts_our_signature_and_refuses_another_image() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let home = gnupg_home(dir.path());
    let key = cascade_sign::generate("cascade test <test@example.com>").expect("key");
    let public = dir.path().join("cascade.pub");
    std::fs::write(&public, key.public().to_armored().expect("armor")).expect("write");
    let (ok, out) = run(
        &home,
        "gpg",
        &["--batch", "--import", public.to_str().unwrap()],
    );
    assert!(ok, "gpg does not import our public key:\n{out}");

    let (manifest, digest) = manifest(dir.path());
    let sig = dir.path().join("signature-1");
    std::fs::write(
        &sig,
        simple::sign(&key, REF, &digest, "cascade test").expect("sign"),
    )
    .expect("write");
    let (ok, out) = run(
        &home,
        "skopeo",
        &[
            "standalone-verify",
            manifest.to_str().unwrap(),
            REF,
            &key.fingerprint(),
            sig.to_str().unwrap(),
        ],
    );
    assert!(ok, "skopeo refuses our signature:\n{out}");
    assert!(out.contains(&digest), "{out}");

    // Another image's manifest, or another reference, with the same signature: refused.
    let other = dir.path().join("other.json");
    std::fs::write(&other, b"{\"schemaVersion\":2}").expect("write");
    let (ok, out) = run(
        &home,
        "skopeo",
        &[
            "standalone-verify",
            other.to_str().unwrap(),
            REF,
            &key.fingerprint(),
            sig.to_str().unwrap(),
        ],
    );
    assert!(
        !ok,
        "skopeo accepted a signature of another manifest:\n{out}"
    );
    let (ok, _) = run(
        &home,
        "skopeo",
        &[
            "standalone-verify",
            manifest.to_str().unwrap(),
            "127.0.0.1:5000/p/app:other",
            &key.fingerprint(),
            sig.to_str().unwrap(),
        ],
    );
    assert!(!ok, "skopeo accepted a signature of another reference");
}

#[test]
fn we_verify_what_skopeo_standalone_sign_makes_with_a_gpg_key() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let home = gnupg_home(dir.path());
    let (ok, out) = run(
        &home,
        "gpg",
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "skopeo test <skopeo@example.com>",
            "ed25519",
            "sign",
            "never",
        ],
    );
    assert!(ok, "gpg --quick-gen-key:\n{out}");
    let (ok, public) = run(
        &home,
        "gpg",
        &["--batch", "--armor", "--export", "skopeo@example.com"],
    );
    assert!(ok, "{public}");
    let (ok, fpr) = run(
        &home,
        "gpg",
        &[
            "--batch",
            "--with-colons",
            "--fingerprint",
            "skopeo@example.com",
        ],
    );
    assert!(ok, "{fpr}");
    let fingerprint = fpr
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("a fingerprint")
        .to_string();

    let (manifest, digest) = manifest(dir.path());
    let sig = dir.path().join("signature-1");
    let (ok, out) = run(
        &home,
        "skopeo",
        &[
            "standalone-sign",
            manifest.to_str().unwrap(),
            REF,
            &fingerprint,
            "-o",
            sig.to_str().unwrap(),
        ],
    );
    assert!(ok, "skopeo standalone-sign:\n{out}");

    let key = cascade_sign::PublicKey::from_bytes(public.as_bytes(), "gpg's export").expect("key");
    let bytes = std::fs::read(&sig).expect("read");
    let v = simple::verify(std::slice::from_ref(&key), &bytes, REF, &digest)
        .expect("skopeo's signature");
    assert_eq!(v.fingerprint, fingerprint);
    assert_eq!(v.claim.docker_reference, REF);
    // And with another key it is refused.
    let other = cascade_sign::generate("other").expect("key").public();
    assert!(matches!(
        simple::verify(&[other], &bytes, REF, &digest),
        Err(simple::Rejection::UnknownKey { .. })
    ));
}
