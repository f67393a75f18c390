//! Against real registries (Debian's docker-registry, started by
//! `.ci/services/registry.sh`): 127.0.0.1:5000 without auth and 127.0.0.1:5001 with
//! htpasswd auth, or `CASCADE_TEST_REGISTRY` / `CASCADE_TEST_REGISTRY_AUTH`.
//!
//! Without a registry each test prints "skipping: …" and passes, except with
//! `CI=true`, where it fails: CI starts the registries, so a missing one is a broken CI.

mod common;

use std::process::Command;

use base64::Engine as _;
use cascade_registry::*;
use common::*;

fn client(registry: &str, creds: Credentials) -> Client {
    Client::new(registry, creds, ClientOptions::default())
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[test]
fn a_pushed_image_reads_back_and_skopeo_agrees() {
    let Some(registry) = open_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let n = nonce();
    let (layout, image) = build_image(tmp.path(), &n);
    let repo = format!("cascade-test/push-{n}");
    let tags = vec!["main-1a2b3c4".to_string(), "latest".to_string()];

    let c = client(&registry, Credentials::None);
    let report = c
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap();
    let blobs = 1 + image.layers.len();
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    assert_eq!(
        report,
        PushReport {
            blobs_uploaded: blobs,
            bytes_uploaded: image.config_size + layer_bytes,
            blobs_skipped: 0,
            manifest: image.manifest_digest,
            tags: tags.clone(),
        }
    );

    // The registry serves exactly what we hold.
    for tag in &tags {
        assert_eq!(
            c.manifest_digest(&repo, tag).unwrap(),
            Some(image.manifest_digest)
        );
    }
    let (digest, bytes) = c.get_manifest(&repo, "latest").unwrap();
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(bytes, layout.read_blob(&image.manifest_digest).unwrap());
    let (_, by_digest) = c
        .get_manifest(&repo, &image.manifest_digest.to_string())
        .unwrap();
    assert_eq!(by_digest, bytes);
    assert_eq!(
        c.get_blob(&repo, &image.config_digest, 1 << 20).unwrap(),
        layout.read_blob(&image.config_digest).unwrap()
    );
    for l in &image.layers {
        assert!(c.has_blob(&repo, &l.digest).unwrap());
        assert_eq!(
            c.get_blob(&repo, &l.digest, 1 << 20).unwrap(),
            layout.read_blob(&l.digest).unwrap()
        );
    }
    // Too big for the caller's limit: refused, not truncated.
    let err = c.get_blob(&repo, &image.layers[0].digest, 10).unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");

    // What is not there.
    assert_eq!(c.manifest_digest(&repo, "no-such-tag").unwrap(), None);
    let absent = OciDigest::of(n.as_bytes());
    assert!(!c.has_blob(&repo, &absent).unwrap());
    let err = c.get_blob(&repo, &absent, 1 << 20).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    let err = c.get_manifest(&repo, "no-such-tag").unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");

    // An independent client reads the same digest and layers.
    if !skopeo_available() {
        return;
    }
    for tag in &tags {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{registry}/{repo}:{tag}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], image.manifest_digest.to_string(), "{v}");
        let layers: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
        assert_eq!(v["Layers"], serde_json::json!(layers), "{v}");
    }
}

#[test]
fn a_second_push_uploads_no_blob() {
    let Some(registry) = open_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let n = nonce();
    let (layout, image) = build_image(tmp.path(), &n);
    let repo = format!("cascade-test/again-{n}");
    let tags = vec!["v1".to_string()];
    let blobs = 1 + image.layers.len();

    // Through a forwarder that counts the upload sessions actually opened.
    let fwd = Forwarder::start(&registry);
    let c = client(&fwd.addr, Credentials::None);
    let first = c
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap();
    assert_eq!((first.blobs_uploaded, first.blobs_skipped), (blobs, 0));
    assert_eq!(fwd.uploads(), blobs, "{:#?}", fwd.requests());

    let before = fwd.requests().len();
    let second = c
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap();
    assert_eq!((second.blobs_uploaded, second.blobs_skipped), (0, blobs));
    assert_eq!(second.bytes_uploaded, 0);
    assert_eq!(second.manifest, image.manifest_digest);
    let again = &fwd.requests()[before..];
    assert!(
        !again.iter().any(|l| l.contains("/blobs/uploads/")),
        "{again:#?}"
    );
    assert_eq!(fwd.uploads(), blobs);
    // One HEAD per blob, the manifest by digest and the tag: nothing else.
    assert_eq!(again.len(), blobs + 2, "{again:#?}");
}

#[test]
fn the_auth_registry_needs_credentials_and_accepts_them() {
    let Some(registry) = auth_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let n = nonce();
    let (layout, image) = build_image(tmp.path(), &n);
    let repo = format!("cascade-test/auth-{n}");
    let tags = vec!["v1".to_string()];

    // No credentials: refused, with a hint that says how to give some.
    let err = client(&registry, Credentials::None)
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("CASCADE_REGISTRY_AUTH"), "{text}");
    assert!(text.contains("docker login"), "{text}");

    // Wrong credentials: refused, and the password appears nowhere.
    let wrong = "not-the-password-0451";
    let c = client(&registry, basic(AUTH_USER, wrong));
    let err = c
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let rendered = format!("{err} | {err:?} | {c:?}");
    assert!(!rendered.contains(wrong), "{rendered}");
    assert!(rendered.contains("refused"), "{rendered}");

    // The right ones.
    let c = client(&registry, basic(AUTH_USER, AUTH_PASSWORD));
    let report = c
        .push(&layout, &image.manifest_digest, &repo, &tags)
        .unwrap();
    assert_eq!(report.blobs_uploaded, 1 + image.layers.len());
    assert_eq!(
        c.manifest_digest(&repo, "v1").unwrap(),
        Some(image.manifest_digest)
    );
    assert!(!format!("{c:?}").contains(AUTH_PASSWORD));

    // Reads need them too.
    let err = client(&registry, Credentials::None)
        .manifest_digest(&repo, "v1")
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains(AUTH_PASSWORD));
}

#[test]
fn credentials_from_a_docker_config_dir_work() {
    let Some(registry) = auth_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let n = nonce();
    let (layout, image) = build_image(tmp.path(), &n);
    let repo = format!("cascade-test/docker-config-{n}");

    // What `docker login` writes. Passed as a directory, not through DOCKER_CONFIG:
    // the environment is shared by the tests running in parallel.
    let config_dir = tmp.path().join("docker");
    std::fs::create_dir_all(&config_dir).unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{AUTH_USER}:{AUTH_PASSWORD}"));
    std::fs::write(
        config_dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let creds = credentials_from(None, Some(&config_dir), &registry).unwrap();
    assert!(!format!("{creds:?}").contains(AUTH_PASSWORD));

    let c = client(&registry, creds);
    let report = c
        .push(&layout, &image.manifest_digest, &repo, &["v1".to_string()])
        .unwrap();
    assert_eq!(report.tags, ["v1"]);
    assert_eq!(
        c.manifest_digest(&repo, "v1").unwrap(),
        Some(image.manifest_digest)
    );
}
