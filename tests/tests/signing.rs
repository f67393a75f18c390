//! Signing, judged by tools we did not write: `cascade keygen`, `build --push --sign`
//! (and `sign:` in the environment), then skopeo (through gpgme and gpg) verifying the
//! signatures as containers' "simple signing" (`standalone-verify`, and `copy` under a
//! `policy.json` that requires our key), and `cascade verify` accepting what
//! `skopeo standalone-sign` makes; then the attestations: securesystemslib verifies
//! each image's DSSE envelope with `cascade.pub.json` and reads its SLSA provenance
//! (from the store, and as skopeo fetches it from the registry's cosign `.att` tag), and
//! `cascade verify` catches a changed envelope, a changed lockfile and another image's
//! attestation. The registry on 127.0.0.1:5000 is started by
//! .ci/services/registry.sh, securesystemslib's virtualenv by .ci/services/sslib.sh;
//! without them (or skopeo, or gpg) these tests skip, except
//! with `CI=true`, where they fail.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use cascade_tests::{Run, TestProject};

const ENV: &str = "test";

fn unique(prefix: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{t}", std::process::id())
}

/// `app`: a busybox httpd image on scratch, pushed under `prefix`; `sign` is the
/// environment's `sign:` line, if any.
fn project(prefix: &str, sign: Option<&str>) -> TestProject {
    let mut p = TestProject::new();
    let sign = sign.map(|s| format!("sign: {s}\n")).unwrap_or_default();
    p.write(
        "graph/environments/test.yaml",
        &format!(
            "name: test\nmode: branch\nregistry: {prefix}\n{sign}sources:\n  app: {{ repo: ../../repos/app, ref: main }}\n"
        ),
    );
    p.write(
        "recipes/app.yaml",
        r#"runner: { host: { tools: [sh, mkdir, cp, busybox] } }
stamp: [commit]
steps:
  - name: make
    run: |
      mkdir -p out/bin out/www
      cp "$(command -v busybox)" out/bin/busybox
      echo "app $CASCADE_COMMIT" > out/www/index.html
outputs: [out]
image:
  base: scratch
  layers:
    - { from: out/bin, to: /bin }
    - { from: out/www, to: /www }
  entrypoint: [/bin/busybox, httpd, -f, -p, "8080", -h, /www]
"#,
    );
    p.commit("app", "main", &[("README", Some("app\n"))], "initial");
    p
}

fn build(p: &TestProject, extra: &[&str], code: i32) -> Run {
    let mut args = vec!["build", "--env", ENV, "--json", "--skip-tests"];
    args.extend(extra);
    let r = p.run(&args);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn image_of(r: &Run) -> (String, String) {
    let image = &r.node("app")["image"];
    (
        image["ref"].as_str().expect("ref").to_string(),
        image["digest"].as_str().expect("digest").to_string(),
    )
}

fn tools() -> bool {
    let ok = ["skopeo", "gpg"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    cascade_tests::require("skopeo and gpg", ok, "apt-get install skopeo gnupg")
}

/// A key pair written by `cascade keygen` into a fresh directory (outside any project).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(name);
    let r = cascade_tests::cascade(&[
        "keygen".into(),
        "-o".into(),
        out.display().to_string(),
        "--json".into(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    (out.join("cascade.key"), out.join("cascade.pub"))
}

/// Runs a program, returning (success, stdout, stderr).
fn run(program: &str, args: &[&str], gnupghome: Option<&Path>) -> (bool, String, String) {
    let mut c = Command::new(program);
    c.args(args);
    if let Some(h) = gnupghome {
        c.env("GNUPGHOME", h);
    }
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The manifest the registry serves for `reference`, as skopeo reads it.
fn raw_manifest(reference: &str) -> String {
    let (ok, manifest, err) = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
        None,
    );
    assert!(ok, "skopeo inspect {reference}: {err}");
    manifest
}

fn gnupg_home(dir: &Path) -> PathBuf {
    let h = dir.join(unique("gnupg"));
    fs::create_dir(&h).expect("mkdir");
    fs::set_permissions(&h, fs::Permissions::from_mode(0o700)).expect("chmod");
    h
}

/// `skopeo copy` of `reference` under a policy that accepts only signatures by `key`,
/// with signatures looked up in `lookaside`.
fn copy_requiring(dir: &Path, key: &Path, lookaside: &Path, reference: &str) -> (bool, String) {
    let case = dir.join(unique("copy"));
    fs::create_dir_all(case.join("registries.d")).expect("mkdir");
    let policy = case.join("policy.json");
    fs::write(
        &policy,
        serde_json::json!({
            "default": [{ "type": "reject" }],
            "transports": {
                "docker": {
                    "127.0.0.1:5000": [{
                        "type": "signedBy",
                        "keyType": "GPGKeys",
                        "keyPath": key,
                    }]
                }
            }
        })
        .to_string(),
    )
    .expect("policy");
    fs::write(
        case.join("registries.d/cascade.yaml"),
        format!(
            "docker:\n  127.0.0.1:5000:\n    lookaside: file://{}\n",
            lookaside.display()
        ),
    )
    .expect("registries.d");
    let dest = format!("dir:{}", case.join("image").display());
    let (ok, out, err) = run(
        "skopeo",
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--registries.d",
            case.join("registries.d").to_str().expect("utf-8"),
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &dest,
        ],
        None,
    );
    (ok, format!("{out}{err}"))
}

/// Every file under `root`, as bytes.
fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    if let Ok(b) = fs::read(&p) {
                        out.push((p, b));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tmp");
    let (secret, public) = keygen(dir.path(), "k");
    let mode = fs::metadata(&secret).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key's mode");
    let text = fs::read_to_string(&secret).expect("read");
    assert!(text.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"));
    assert!(fs::read_to_string(&public)
        .expect("read")
        .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    let sslib: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(public.with_extension("pub.json")).expect("cascade.pub.json"),
    )
    .expect("json");
    assert_eq!(sslib["keytype"], "ed25519");
    assert_eq!(sslib["scheme"], "ed25519");
    let again = cascade_tests::cascade(&[
        "keygen".into(),
        "-o".into(),
        dir.path().join("k").display().to_string(),
    ]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(fs::read_to_string(&secret).expect("read"), text);
}

#[test]
fn a_bad_key_stops_the_build_before_anything_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, public) = keygen(dir.path(), "k");
    let p = project("127.0.0.1:5000/never-pushed", None);
    // A public key is not a signing key; nothing is built, no lockfile written.
    let r = build(
        &p,
        &["--push", "--sign", public.to_str().expect("utf-8")],
        2,
    );
    assert!(r.stderr.contains("secret key"), "{}", r.stderr);
    assert!(p.lockfiles().is_empty());
    let r = build(
        &p,
        &["--push", "--sign", "env:CASCADE_TEST_NO_SUCH_KEY_VAR"],
        2,
    );
    assert!(
        r.stderr.contains("CASCADE_TEST_NO_SUCH_KEY_VAR"),
        "{}",
        r.stderr
    );
    // `--sign` means nothing without `--push`: a usage error.
    let r = build(&p, &["--sign", "x.key"], 2);
    assert!(r.stderr.contains("--push"), "{}", r.stderr);
}

/// One function: the images it pushes and signs are its own, and the checks build on
/// each other (our key, another key, no key; skopeo both ways).
#[test]
fn skopeo_accepts_what_we_sign_and_refuses_the_unsigned_and_the_wrongly_signed() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) || !tools() {
        return;
    }
    let keys = tempfile::tempdir().expect("tmp");
    let (secret, public) = keygen(keys.path(), "ours");
    let (other_secret, _) = keygen(keys.path(), "theirs");
    let secret_text = fs::read_to_string(&secret).expect("read");

    // 1. Signed with our key, from `--sign FILE`.
    let signed = project(&format!("127.0.0.1:5000/{}", unique("signed")), None);
    let r = build(
        &signed,
        &["--push", "--sign", secret.to_str().expect("utf-8")],
        0,
    );
    let (reference, digest) = image_of(&r);
    assert!(r.stderr.contains("signed "), "{}", r.stderr);
    let sigstore = signed.root.join("cache/sigstore");
    let repo = reference
        .trim_start_matches("127.0.0.1:5000/")
        .rsplit_once(':')
        .expect("a tag")
        .0
        .to_string();
    let sig = sigstore.join(format!(
        "{repo}@sha256={}/signature-1",
        digest.trim_start_matches("sha256:")
    ));
    assert!(sig.is_file(), "no signature at {}", sig.display());

    // skopeo standalone-verify, with our public key in a keyring of its own.
    let home = gnupg_home(keys.path());
    let (ok, _, err) = run(
        "gpg",
        &["--batch", "--import", public.to_str().expect("utf-8")],
        Some(&home),
    );
    assert!(ok, "gpg --import: {err}");
    let manifest = raw_manifest(&reference);
    let manifest_file = keys.path().join("manifest.json");
    fs::write(&manifest_file, manifest.as_bytes()).expect("write");
    let fingerprint = r.json()["signed"][0]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let (ok, out, err) = run(
        "skopeo",
        &[
            "standalone-verify",
            manifest_file.to_str().expect("utf-8"),
            &reference,
            &fingerprint,
            sig.to_str().expect("utf-8"),
        ],
        Some(&home),
    );
    assert!(
        ok,
        "skopeo standalone-verify refused our signature:\n{out}{err}"
    );

    // skopeo copy under a policy requiring our key: accepted.
    let (ok, out) = copy_requiring(keys.path(), &public, &sigstore, &reference);
    assert!(ok, "skopeo copy refused our signed image:\n{out}");

    // cascade verify: the image and the lockfile.
    let pub_arg = public.to_str().expect("utf-8");
    let v = signed.run(&["verify", &reference, "--key", pub_arg, "--json"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(v.json()["images"][0]["verdict"]["status"], "verified");
    assert_eq!(v.json()["images"][0]["attestation"]["status"], "verified");
    let lockfile = signed.lockfiles().pop().expect("a lockfile");
    let v = signed.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
    ]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stderr.contains("verified app: "), "{}", v.stderr);

    // 2. Unsigned: pushed without a key; refused by skopeo and by cascade verify.
    let unsigned = project(&format!("127.0.0.1:5000/{}", unique("unsigned")), None);
    let r = build(&unsigned, &["--push"], 0);
    let (unsigned_ref, _) = image_of(&r);
    let (ok, out) = copy_requiring(
        keys.path(),
        &public,
        &unsigned.root.join("cache/sigstore"),
        &unsigned_ref,
    );
    assert!(
        !ok,
        "skopeo copied an unsigned image under signedBy:\n{out}"
    );
    let v = unsigned.run(&["verify", &unsigned_ref, "--key", pub_arg, "--json"]);
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert_eq!(v.json()["images"][0]["verdict"]["status"], "unsigned");

    // 3. Signed with another key, named by `sign: env:VAR` in the environment.
    let var = format!("CASCADE_TEST_SIGNING_KEY_{}", std::process::id());
    std::env::set_var(&var, fs::read_to_string(&other_secret).expect("read"));
    let theirs = project(
        &format!("127.0.0.1:5000/{}", unique("theirs")),
        Some(&format!("env:{var}")),
    );
    let r = build(&theirs, &["--push"], 0);
    std::env::remove_var(&var);
    let (their_ref, _) = image_of(&r);
    assert!(r.stderr.contains("signed "), "`sign:` signs:\n{}", r.stderr);
    let their_store = theirs.root.join("cache/sigstore");
    let (ok, out) = copy_requiring(keys.path(), &public, &their_store, &their_ref);
    assert!(!ok, "skopeo copied an image signed by another key:\n{out}");
    let v = theirs.run(&["verify", &their_ref, "--key", pub_arg, "--json"]);
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert_eq!(v.json()["images"][0]["verdict"]["status"], "rejected");
    assert_eq!(
        v.json()["images"][0]["verdict"]["signatures"][0]["rejection"]["reason"],
        "unknown_key"
    );

    // 4. A signature made by skopeo standalone-sign with a gpg key: cascade verify
    //    accepts it for the image it names.
    let (ok, _, err) = run(
        "gpg",
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "skopeo <skopeo@example.com>",
            "ed25519",
            "sign",
            "never",
        ],
        Some(&home),
    );
    assert!(ok, "gpg --quick-gen-key: {err}");
    let (_, colons, _) = run(
        "gpg",
        &[
            "--batch",
            "--with-colons",
            "--fingerprint",
            "skopeo@example.com",
        ],
        Some(&home),
    );
    let gpg_fpr = colons
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("fingerprint")
        .to_string();
    let (_, gpg_pub, _) = run(
        "gpg",
        &["--batch", "--armor", "--export", "skopeo@example.com"],
        Some(&home),
    );
    let gpg_pub_file = keys.path().join("gpg.pub");
    fs::write(&gpg_pub_file, gpg_pub).expect("write");
    let skopeo_store = keys.path().join("skopeo-sigstore");
    let skopeo_sig = skopeo_store.join(format!(
        "{repo}@sha256={}/signature-1",
        digest.trim_start_matches("sha256:")
    ));
    fs::create_dir_all(skopeo_sig.parent().expect("parent")).expect("mkdir");
    let (ok, out, err) = run(
        "skopeo",
        &[
            "standalone-sign",
            manifest_file.to_str().expect("utf-8"),
            &reference,
            &gpg_fpr,
            "-o",
            skopeo_sig.to_str().expect("utf-8"),
        ],
        Some(&home),
    );
    assert!(ok, "skopeo standalone-sign: {out}{err}");
    let sigstore_arg = skopeo_store.to_str().expect("utf-8");
    // skopeo makes no attestation: its signature alone passes with --signature-only,
    // and not without it.
    let alone = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            &reference,
            "--key",
            gpg_pub_file.to_str().expect("utf-8"),
            "--sigstore",
            sigstore_arg,
            "--json",
        ];
        args.extend(extra);
        signed.run(&args)
    };
    let v = alone(&["--signature-only"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(
        v.json()["images"][0]["verdict"]["fingerprint"],
        gpg_fpr.as_str()
    );
    assert_eq!(alone(&[]).code, 1);
    // With ours beside skopeo's signature, and our key given for it, both verify.
    fs::copy(
        sig.with_file_name("attestation.dsse.json"),
        skopeo_sig.with_file_name("attestation.dsse.json"),
    )
    .expect("copy the attestation");
    let v = signed.run(&[
        "verify",
        &reference,
        "--key",
        gpg_pub_file.to_str().expect("utf-8"),
        "--key",
        pub_arg,
        "--sigstore",
        sigstore_arg,
        "--json",
    ]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(
        v.json()["images"][0]["verdict"]["fingerprint"],
        gpg_fpr.as_str()
    );
    // …and our key did not make the signature, nor gpg's the attestation.
    let v = signed.run(&[
        "verify",
        &reference,
        "--key",
        gpg_pub_file.to_str().expect("utf-8"),
        "--sigstore",
        sigstore_arg,
        "--json",
    ]);
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert_eq!(v.json()["images"][0]["attestation"]["status"], "rejected");
    let v = signed.run(&[
        "verify",
        &reference,
        "--key",
        pub_arg,
        "--sigstore",
        sigstore_arg,
    ]);
    assert_eq!(v.code, 1, "{}", v.stderr);

    // The secret keys never reach an output, a lockfile or the store.
    let other_text = fs::read_to_string(&other_secret).expect("read");
    let planted: Vec<&str> = [secret_text.as_str(), other_text.as_str()]
        .iter()
        .map(|t| {
            t.lines()
                .filter(|l| l.len() > 40)
                .nth(1)
                .expect("a key body line")
        })
        .collect();
    for p in [&signed, &unsigned, &theirs] {
        for (path, bytes) in files_under(&p.root) {
            let text = String::from_utf8_lossy(&bytes);
            for line in &planted {
                assert!(
                    !text.contains(line),
                    "a secret key is in {}",
                    path.display()
                );
            }
        }
    }
    for line in &planted {
        assert!(!r.stdout.contains(line) && !r.stderr.contains(line));
    }
}

/// (success, stdout, stderr) of securesystemslib judging an envelope with a key file.
fn sslib_judge(python: &Path, envelope: &Path, key: &Path) -> (bool, String, String) {
    let script = cascade_tests::repo_root().join("tests/judges/dsse_verify.py");
    let (p, e, k) = (
        script.to_str().expect("utf-8"),
        envelope.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
    );
    run(python.to_str().expect("utf-8"), &[p, e, k], None)
}

/// One function: the tampering cases build on one signed image and its lockfile.
#[test]
fn attestations_are_verified_by_securesystemslib_and_tampering_is_caught() {
    if !cascade_tests::registry("127.0.0.1:5000", 200) || !tools() {
        return;
    }
    let Some(python) = cascade_tests::sslib_python() else {
        return;
    };
    let keys = tempfile::tempdir().expect("tmp");
    let (secret, public) = keygen(keys.path(), "ours");
    let sslib_key = public.with_extension("pub.json");
    let secret_arg = secret.to_str().expect("utf-8");
    let pub_arg = public.to_str().expect("utf-8");

    let p = project(&format!("127.0.0.1:5000/{}", unique("attested")), None);
    let r = build(&p, &["--push", "--sign", secret_arg], 0);
    let (reference, digest) = image_of(&r);
    let attestation = PathBuf::from(
        r.json()["signed"][0]["attestation"]
            .as_str()
            .expect("the attestation's path"),
    );
    assert!(attestation.is_file(), "{}", attestation.display());
    assert!(attestation.ends_with("attestation.dsse.json"));
    let original = fs::read(&attestation).expect("read");
    let lockfile = p.lockfiles().pop().expect("a lockfile");
    let lock_text = fs::read_to_string(&lockfile).expect("read");

    // 1. securesystemslib verifies the envelope with cascade.pub.json and reads the
    //    statement: the subject is the image, the dependencies are the lockfile's.
    let (ok, out, err) = sslib_judge(&python, &attestation, &sslib_key);
    assert!(ok, "securesystemslib refused our attestation: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["payloadType"], "application/vnd.in-toto+json");
    let st = &v["payload"];
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(st["subject"][0]["name"], reference.as_str());
    assert_eq!(
        st["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let bd = &st["predicate"]["buildDefinition"];
    assert_eq!(bd["buildType"], "https://cascade.dev/build/v1");
    assert_eq!(bd["externalParameters"]["environment"], ENV);
    assert_eq!(bd["externalParameters"]["component"], "app");
    let dep = &bd["resolvedDependencies"][0];
    assert_eq!(dep["name"], "source");
    assert_eq!(dep["uri"], "../../repos/app");
    // The commit and tree are the lockfile's.
    let commit = dep["digest"]["gitCommit"]
        .as_str()
        .expect("commit")
        .to_string();
    let tree = dep["annotations"]["tree"].as_str().expect("tree");
    assert!(
        lock_text.contains(&format!("commit: {commit}")) && lock_text.contains(tree),
        "{lock_text}"
    );
    assert!(st["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("https://cascade.dev/cascade@")));
    // Deterministic: no clock in it (the same image signed again gives the same bytes).
    let r2 = build(&p, &["--push", "--sign", secret_arg], 0);
    assert_eq!(image_of(&r2).1, digest);
    assert_eq!(fs::read(&attestation).expect("read"), original);

    // 1b. The same envelope is on the registry as cosign attaches it: the tag
    //     `sha256-<hex>.att`, an OCI manifest whose one layer is the envelope. skopeo
    //     fetches it; securesystemslib verifies the layer it fetched.
    let att_tag = r.json()["signed"][0]["attestation_tag"]
        .as_str()
        .expect("the attestation's tag")
        .to_string();
    assert!(
        att_tag.ends_with(&format!(
            ":sha256-{}.att",
            digest.trim_start_matches("sha256:")
        )),
        "{att_tag}"
    );
    let manifest = raw_manifest(&att_tag);
    let m: serde_json::Value = serde_json::from_str(&manifest).expect("json");
    let layer = &m["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dsse.envelope.v1+json");
    assert_eq!(
        layer["annotations"]["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    let fetched = keys.path().join("att");
    let (ok, out, err) = run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{att_tag}"),
            &format!("dir:{}", fetched.display()),
        ],
        None,
    );
    assert!(ok, "skopeo copy {att_tag}: {out}{err}");
    let blob = fetched.join(
        layer["digest"]
            .as_str()
            .expect("digest")
            .trim_start_matches("sha256:"),
    );
    assert_eq!(fs::read(&blob).expect("the layer"), original);
    let (ok, _, err) = sslib_judge(&python, &blob, &sslib_key);
    assert!(ok, "securesystemslib refused the pushed attestation: {err}");

    // 2. cascade verify: the image and the lockfile are attested.
    let v = p.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
        "--json",
    ]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(v.json()["images"][0]["attestation"]["status"], "verified");

    // 2b. Elsewhere, with the signatures alone in the lookaside directory (as a machine
    //     that did not build them has them), verify reads the envelope from the
    //     registry's `.att` tag.
    let elsewhere = keys.path().join("elsewhere");
    let image_dir = attestation
        .parent()
        .expect("the image's lookaside directory");
    let sigstore = attestation
        .ancestors()
        .find(|a| a.ends_with("sigstore"))
        .expect("the sigstore directory");
    let copy = elsewhere.join(image_dir.strip_prefix(sigstore).expect("inside"));
    fs::create_dir_all(&copy).expect("mkdir");
    fs::copy(image_dir.join("signature-1"), copy.join("signature-1")).expect("copy");
    let v = p.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
        "--sigstore",
        elsewhere.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let a = &v.json()["images"][0]["attestation"];
    assert_eq!(a["status"], "verified", "{a}");
    assert_eq!(a["attestation"], att_tag.as_str(), "{a}");

    // 3. A changed payload byte: the signature no longer verifies, for us and for
    //    securesystemslib.
    let mut env: serde_json::Value = serde_json::from_slice(&original).expect("json");
    let payload = env["payload"].as_str().expect("payload").to_string();
    let i = payload.len() / 2;
    let flipped = if &payload[i..i + 1] == "A" { "B" } else { "A" };
    env["payload"] = format!("{}{flipped}{}", &payload[..i], &payload[i + 1..]).into();
    fs::write(&attestation, env.to_string()).expect("write");
    let v = p.run(&["verify", &reference, "--key", pub_arg, "--json"]);
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert_eq!(v.json()["images"][0]["verdict"]["status"], "verified");
    assert_eq!(v.json()["images"][0]["attestation"]["status"], "rejected");
    let v = p.run(&["verify", &reference, "--key", pub_arg]);
    assert!(v.stderr.contains("attestation rejected"), "{}", v.stderr);
    let (ok, _, _) = sslib_judge(&python, &attestation, &sslib_key);
    assert!(!ok, "securesystemslib accepted a changed attestation");
    fs::write(&attestation, &original).expect("restore");

    // 4. A lockfile whose commit was changed: the attestation does not match it.
    let other_commit: String = commit
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    fs::write(&lockfile, lock_text.replace(&commit, &other_commit)).expect("write");
    let v = p.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
        "--json",
    ]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    let a = &v.json()["images"][0]["attestation"];
    assert_eq!(a["status"], "mismatch", "{a}");
    assert_eq!(a["differences"][0]["field"], "source", "{a}");
    let v = p.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
    ]);
    assert!(
        v.stderr.contains("attestation does not match") && v.stderr.contains(&other_commit),
        "{}",
        v.stderr
    );
    fs::write(&lockfile, &lock_text).expect("restore");

    // 5. A swapped digest: another image's attestation (signed by the same key) beside
    //    this image's signature names the other image.
    let mut q = project(&format!("127.0.0.1:5000/{}", unique("swapped")), None);
    q.commit("app", "main", &[("README", Some("other\n"))], "other");
    let r = build(&q, &["--push", "--sign", secret_arg], 0);
    let (_, other_digest) = image_of(&r);
    assert_ne!(other_digest, digest);
    let other_attestation =
        PathBuf::from(r.json()["signed"][0]["attestation"].as_str().expect("path"));
    fs::copy(&other_attestation, &attestation).expect("swap");
    let v = p.run(&["verify", &reference, "--key", pub_arg, "--json"]);
    assert_eq!(v.code, 1, "{}", v.stderr);
    let a = &v.json()["images"][0]["attestation"];
    assert_eq!(a["status"], "mismatch", "{a}");
    assert_eq!(a["differences"][0]["field"], "subject digest", "{a}");
    fs::write(&attestation, &original).expect("restore");
    let v = p.run(&[
        "verify",
        lockfile.to_str().expect("utf-8"),
        "--key",
        pub_arg,
    ]);
    assert_eq!(v.code, 0, "restored: {}", v.stderr);
}

/// Sets the mode of `path` so a test can change a file the bundle wrote read-only.
fn writable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// `release-bundle`: judged by coreutils (`sha256sum -c`), gpg (`--verify` of the
/// detached signature) and spdx-tools (each SBOM validates); the same lockfile gives the
/// same bytes; `cascade verify DIR` accepts it and names each tampering; an existing
/// bundle is never overwritten.
#[test]
fn release_bundles_are_checked_by_sha256sum_gpg_and_spdx_tools() {
    let Some(python) = cascade_tests::sslib_python() else {
        return;
    };
    if !tools() {
        return;
    }
    let p = project(&unique("127.0.0.1:5000/bundle"), None);
    let r = build(&p, &[], 0);
    let lockfile = r.json()["lockfile"].as_str().expect("lockfile").to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "release");
    let bundle = work.path().join("bundle");
    let made = p.run(&[
        "release-bundle",
        &lockfile,
        "-o",
        bundle.to_str().expect("utf-8"),
        "--sign",
        key.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let listed: Vec<String> = made.json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    for want in [
        "artifacts/app/out/bin/busybox",
        "artifacts/app/out/www/index.html",
        "images/app/manifest.json",
        "sbom/app.spdx.json",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} in {listed:?}");
    }
    let digest = r.node("app")["image"]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let sums = fs::read_to_string(bundle.join("SHA256SUMS")).expect("sums");
    assert!(
        sums.contains(&format!("{}  images/app/manifest.json", &digest[7..])),
        "the manifest's sha256 is the image digest:\n{sums}"
    );

    // The judges.
    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(&bundle)
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let home = gnupg_home(work.path());
    let (ok, _, err) = run(
        "gpg",
        &["--batch", "--import", public.to_str().expect("utf-8")],
        Some(&home),
    );
    assert!(ok, "{err}");
    let sig = bundle.join("SHA256SUMS.asc");
    let sums_path = bundle.join("SHA256SUMS");
    let (ok, _, err) = run(
        "gpg",
        &[
            "--batch",
            "--verify",
            sig.to_str().expect("utf-8"),
            sums_path.to_str().expect("utf-8"),
        ],
        Some(&home),
    );
    assert!(ok && err.contains("Good signature"), "{err}");
    let spdx = python.with_file_name("pyspdxtools");
    let o = Command::new(&spdx)
        .arg("-i")
        .arg(bundle.join("sbom/app.spdx.json"))
        .output()
        .expect("pyspdxtools");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && !said.contains("invalid"), "{said}");
    let sbom: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("sbom/app.spdx.json")).expect("sbom"))
            .expect("json");
    let files = sbom["files"].as_array().expect("files");
    let busybox = files
        .iter()
        .find(|f| f["fileName"] == "./out/bin/busybox")
        .expect("busybox is listed");
    assert_eq!(busybox["checksums"][0]["algorithm"], "SHA1", "{busybox}");
    let image = sbom["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["primaryPackagePurpose"] == "CONTAINER")
        .expect("the image is a package");
    assert_eq!(image["checksums"][0]["checksumValue"], &digest[7..]);

    // Deterministic: the same lockfile, the same key, the same bytes.
    let again = work.path().join("again");
    let r2 = p.run(&[
        "release-bundle",
        &lockfile,
        "-o",
        again.to_str().expect("utf-8"),
        "--sign",
        key.to_str().expect("utf-8"),
    ]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    for f in ["SHA256SUMS", "SHA256SUMS.asc", "sbom/app.spdx.json"] {
        assert_eq!(
            fs::read(bundle.join(f)).ok(),
            fs::read(again.join(f)).ok(),
            "{f}"
        );
    }
    // Never over an existing bundle.
    let over = p.run(&[
        "release-bundle",
        &lockfile,
        "-o",
        again.to_str().expect("utf-8"),
    ]);
    assert_eq!(over.code, 2, "{}", over.stderr);
    assert!(over.stderr.contains("is not empty"), "{}", over.stderr);

    let verify = |dir: &Path| {
        p.run(&[
            "verify",
            dir.to_str().expect("utf-8"),
            "--key",
            public.to_str().expect("utf-8"),
        ])
    };
    let good = verify(&bundle);
    assert_eq!(good.code, 0, "{}", good.stderr);
    assert!(
        good.stderr.contains("verified SHA256SUMS"),
        "{}",
        good.stderr
    );
    // --rebuild: the bundle's lockfile rebuilt from its sources in an empty store
    // reproduces every digest (the proof that the artifacts came from them).
    let empty = work.path().join("empty-store");
    let rebuilt = p.run(&[
        "verify",
        bundle.to_str().expect("utf-8"),
        "--key",
        public.to_str().expect("utf-8"),
        "--rebuild",
        "--store",
        empty.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    let doc = rebuilt.json();
    assert_eq!(doc["bundle"]["signature"]["status"], "verified", "{doc}");
    assert_eq!(doc["rebuild"]["replay"]["check"], true, "{doc}");
    assert_eq!(
        doc["rebuild"]["replay"]["mismatches"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "{doc}"
    );
    let image = p.run(&["verify", "127.0.0.1:5000/x/app@sha256:0000000000000000000000000000000000000000000000000000000000000000", "--key", public.to_str().expect("utf-8"), "--rebuild"]);
    assert_eq!(
        image.code, 2,
        "an image alone cannot be rebuilt: {}",
        image.stderr
    );

    // A changed artifact, and a file slipped in: each named.
    let index = again.join("artifacts/app/out/www/index.html");
    writable(&index);
    fs::write(&index, "app tampered\n").expect("tamper");
    writable(&again.join("artifacts/app/out/www"));
    fs::write(again.join("artifacts/app/out/www/extra.js"), "x").expect("plant");
    let bad = verify(&again);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("changed: `artifacts/app/out/www/index.html`"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr
            .contains("unlisted: `artifacts/app/out/www/extra.js`"),
        "{}",
        bad.stderr
    );
    // SHA256SUMS rewritten to match: the signature no longer does.
    let sums2 = fs::read_to_string(again.join("SHA256SUMS")).expect("sums");
    let forged = Command::new("sha256sum")
        .args([
            "artifacts/app/out/www/index.html",
            "artifacts/app/out/www/extra.js",
        ])
        .current_dir(&again)
        .output()
        .expect("sha256sum");
    let mut lines: Vec<String> = sums2
        .lines()
        .filter(|l| !l.ends_with("www/index.html"))
        .map(str::to_string)
        .collect();
    lines.extend(
        String::from_utf8_lossy(&forged.stdout)
            .lines()
            .map(str::to_string),
    );
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    fs::write(again.join("SHA256SUMS"), lines.join("\n") + "\n").expect("forge");
    let forged = verify(&again);
    assert_eq!(forged.code, 1, "{}", forged.stderr);
    assert!(
        forged.stderr.contains("rejected SHA256SUMS.asc"),
        "{}",
        forged.stderr
    );
    // An unsigned bundle does not verify.
    let unsigned = work.path().join("unsigned");
    let r3 = p.run(&[
        "release-bundle",
        &lockfile,
        "-o",
        unsigned.to_str().expect("utf-8"),
    ]);
    assert_eq!(r3.code, 0, "{}", r3.stderr);
    let v = verify(&unsigned);
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert!(v.stderr.contains("unsigned"), "{}", v.stderr);
}

/// `require_signature:` in the target of a promotion: an unsigned lockfile is refused
/// (exit 1, the image named, the manifest untouched); once the same build is pushed and
/// signed by the listed key, the promotion goes ahead.
#[test]
fn promote_to_an_environment_that_requires_signatures() {
    if !tools() || !cascade_tests::registry("127.0.0.1:5000", 200) {
        return;
    }
    let p = project(&unique("127.0.0.1:5000/promote"), None);
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(work.path(), "release");
    let stage = format!(
        "name: stage\nmode: branch\nrequire_signature: [{}]\nsources:\n  app: {{ repo: ../../repos/app, ref: main }}\n",
        public.display()
    );
    p.write("graph/environments/stage.yaml", &stage);
    build(&p, &[], 0);
    let refused = p.run(&["promote", "--from", ENV, "--to", "stage"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("`stage` requires images signed"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("`app`"), "{}", refused.stderr);
    assert_eq!(
        fs::read_to_string(p.root.join("graph/environments/stage.yaml")).expect("read"),
        stage,
        "nothing was written"
    );
    build(&p, &["--push", "--sign", key.to_str().expect("utf-8")], 0);
    let ok = p.run(&["promote", "--from", ENV, "--to", "stage"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}
