//! An independent reader agrees with us: skopeo (containers/image) inspects and copies
//! our layout and our archive, and reports our digests.
//!
//! Without skopeo the test prints "skipping: skopeo not installed" and passes, except
//! with `CI=true`, where it fails: CI installs skopeo, so a missing one is a broken CI.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use cascade_image::*;
use common::write_file;

fn skopeo_available() -> bool {
    match Command::new("skopeo").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "skopeo is not installed, and CI=true requires it (apt-get install skopeo)"
            );
            eprintln!("skipping: skopeo not installed");
            false
        }
    }
}

/// Runs skopeo and returns its stdout, failing the test with its stderr otherwise.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        // No policy file is needed to read our own files.
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn inspect(transport_ref: &str) -> serde_json::Value {
    serde_json::from_slice(&skopeo(&["inspect", transport_ref])).unwrap()
}

fn build(layout: &OciLayout, root: &Path) -> (ImageBuilt, ImageBuilt) {
    write_file(root, "base/bin/tool", b"#!/bin/sh\n", 0o755, 1);
    write_file(root, "app/bin/services", b"services", 0o700, 2);
    let long = format!("app/{}/file", "deep/".repeat(30));
    write_file(root, &long, b"deep", 0o600, 3);
    let base = assemble(
        layout,
        &ImageSpec {
            config: ConfigSpec {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            layers: vec![LayerSpec {
                entries: entries_from_dir(&root.join("base"), "/", None).unwrap(),
                created_by: "base".into(),
                comment: None,
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let image = assemble(
        layout,
        &ImageSpec {
            base: Base::Layout(base.manifest_digest),
            config: ConfigSpec {
                entrypoint: Some(vec!["/app/bin/services".into()]),
                env: vec!["PORT=8080".into()],
                exposed_ports: ["8080".to_string()].into(),
                labels: [("org.opencontainers.image.version".into(), "1.2.3".into())].into(),
                ..Default::default()
            },
            layers: vec![LayerSpec {
                entries: entries_from_dir(&root.join("app"), "/app", None).unwrap(),
                created_by: "cascade: outputs of services".into(),
                comment: None,
            }],
            annotations: [(
                "org.opencontainers.image.revision".to_string(),
                "1a2b3c4".to_string(),
            )]
            .into(),
            source_date_epoch: 1_700_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    (base, image)
}

#[test]
fn skopeo_reads_our_layout_and_archive() {
    if !skopeo_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let layout = OciLayout::open_or_create(&dir).unwrap();
    let (base, image) = build(&layout, tmp.path());
    layout
        .write_index(&[
            IndexEntry {
                manifest: image.manifest_descriptor(),
                ref_name: "services:main-1a2b3c4".into(),
            },
            IndexEntry {
                manifest: base.manifest_descriptor(),
                ref_name: "base:v1".into(),
            },
        ])
        .unwrap();
    let layer_digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();

    // The layout.
    let oci_ref = format!("oci:{}:services:main-1a2b3c4", dir.display());
    let info = inspect(&oci_ref);
    assert_eq!(info["Digest"], image.manifest_digest.to_string());
    assert_eq!(info["Layers"], serde_json::json!(layer_digests));
    assert_eq!(info["Env"], serde_json::json!(["PATH=/bin", "PORT=8080"]));
    assert_eq!(info["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        skopeo(&["inspect", "--raw", &oci_ref]),
        layout.read_blob(&image.manifest_digest).unwrap()
    );
    assert_eq!(
        skopeo(&["inspect", "--config", "--raw", &oci_ref]),
        layout.read_blob(&image.config_digest).unwrap()
    );
    let base_info = inspect(&format!("oci:{}:base:v1", dir.display()));
    assert_eq!(base_info["Digest"], base.manifest_digest.to_string());

    // The archive, as an OCI archive.
    let archive = tmp.path().join("services.tar");
    export_archive(
        &layout,
        &image.manifest_digest,
        "services:main-1a2b3c4",
        &archive,
    )
    .unwrap();
    let archive_ref = format!("oci-archive:{}", archive.display());
    let info = inspect(&archive_ref);
    assert_eq!(info["Digest"], image.manifest_digest.to_string());
    assert_eq!(info["Layers"], serde_json::json!(layer_digests));

    // Copying re-verifies every blob against its digest, and keeps the manifest as is.
    let copy = tmp.path().join("copy");
    skopeo(&[
        "copy",
        &archive_ref,
        &format!("oci:{}:copied", copy.display()),
    ]);
    let copied = inspect(&format!("oci:{}:copied", copy.display()));
    assert_eq!(copied["Digest"], image.manifest_digest.to_string());

    // The same archive as a Docker archive (what `docker load` reads: manifest.json).
    // Naming the image makes skopeo look it up by `RepoTags`.
    let docker_ref = format!("docker-archive:{}:services:main-1a2b3c4", archive.display());
    assert_eq!(
        skopeo(&["inspect", "--config", "--raw", &docker_ref]),
        layout.read_blob(&image.config_digest).unwrap()
    );
    let other_name = format!("docker-archive:{}:services:other", archive.display());
    let status = Command::new("skopeo")
        .args(["inspect", "--config", "--raw", &other_name])
        .output()
        .unwrap()
        .status;
    assert!(
        !status.success(),
        "a name not in RepoTags must not be found"
    );
    let from_docker = tmp.path().join("from-docker");
    skopeo(&[
        "copy",
        &docker_ref,
        &format!("dir:{}", from_docker.display()),
    ]);
    // The Docker path decompresses each layer and names it by its diff_id, as
    // `docker load` does: our config's diff_ids must match the layers' contents.
    let config = from_docker.join(image.config_digest.hex());
    assert_eq!(
        fs::read(config).unwrap(),
        layout.read_blob(&image.config_digest).unwrap()
    );
    for (l, diff_id) in image.layers.iter().zip(&image.diff_ids) {
        assert_eq!(
            fs::read(from_docker.join(diff_id.hex())).unwrap(),
            common::gunzip(&layout.read_blob(&l.digest).unwrap())
        );
    }
}
