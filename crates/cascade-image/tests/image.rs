//! Layers, images, layouts and archives: determinism, normalization, inheritance and
//! corruption.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use cascade_image::*;
use common::*;

const EPOCH: i64 = 1_700_000_000;
const LONG_DIR: &str = "a-directory-name-long-enough/that-together-with-the-next-one/the-path-is-over-one-hundred-bytes";

/// A small source tree, written in an order, with modes and mtimes, that vary with
/// `variant` while the contents stay the same.
fn make_tree(root: &Path, variant: u32) {
    let (file, exec, dir, mtime) = if variant == 0 {
        (0o644, 0o755, 0o755, 1)
    } else {
        (0o600, 0o700, 0o700, 1_999_999_999)
    };
    let mut files: Vec<(&str, &[u8], u32)> = vec![
        ("bin/services", b"#!/bin/sh\necho services\n", exec),
        ("etc/services.conf", b"port = 8080\n", file),
        ("z-last", b"z", file),
        ("a-first", b"a", file),
    ];
    let long = format!("{LONG_DIR}/file");
    files.push((&long, b"long", file));
    if variant != 0 {
        files.reverse();
    }
    for (rel, contents, mode) in files {
        write_file(root, rel, contents, mode, mtime);
    }
    fs::create_dir_all(root.join("empty")).unwrap();
    symlink("services", root.join("bin/svc")).unwrap();
    symlink(format!("../{LONG_DIR}/file"), root.join("bin/long-link")).unwrap();
    for d in ["bin", "etc", "empty", LONG_DIR] {
        chmod(&root.join(d), dir);
    }
}

fn spec_for(tree: &Path) -> ImageSpec {
    ImageSpec {
        config: ConfigSpec {
            entrypoint: Some(vec!["/app/bin/services".into()]),
            env: vec!["Z=1".into(), "A=2".into()],
            working_dir: Some("/app".into()),
            exposed_ports: ["8080".to_string()].into(),
            user: Some("65534".into()),
            labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into(),
            ..Default::default()
        },
        layers: vec![LayerSpec {
            entries: entries_from_dir(tree, "/app", None).unwrap(),
            created_by: "cascade: outputs of services".into(),
            comment: None,
        }],
        annotations: [(
            "org.opencontainers.image.revision".to_string(),
            "1a2b3c4".to_string(),
        )]
        .into(),
        source_date_epoch: EPOCH,
        ..Default::default()
    }
}

#[test]
fn layer_tar_is_normalized() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 1);
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let built = write_layer(
        &layout,
        &entries_from_dir(&tree, "/opt/app/", None).unwrap(),
        EPOCH,
    )
    .unwrap();

    let blob = layout.read_blob(&built.descriptor.digest).unwrap();
    assert_eq!(built.descriptor.size, blob.len() as u64);
    assert_eq!(built.descriptor.media_type, MEDIA_TYPE_LAYER_GZIP);
    // gzip header: magic, deflate, no flags, MTIME 0, XFL 0, OS 255.
    assert_eq!(blob[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let tar_bytes = gunzip(&blob);
    assert_eq!(built.diff_id, OciDigest::of(&tar_bytes));

    // Only regular, directory, symlink headers and GNU long names ('L', 'K'); no PAX.
    let raw = raw_entry_types(&tar_bytes);
    assert!(raw.iter().all(|t| "05LK2".contains(*t)), "{raw:?}");
    assert!(raw.contains(&'L'));

    let entries = tar_entries(&tar_bytes);
    let got: Vec<(&str, char, u32)> = entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.mode))
        .collect();
    let long_dir = format!("opt/app/{LONG_DIR}/");
    let long_file = format!("opt/app/{LONG_DIR}/file");
    let mut expected = vec![
        ("opt/", '5', 0o755),
        ("opt/app/", '5', 0o755),
        ("opt/app/a-directory-name-long-enough/", '5', 0o755),
        (
            "opt/app/a-directory-name-long-enough/that-together-with-the-next-one/",
            '5',
            0o755,
        ),
        (long_dir.as_str(), '5', 0o755),
        (long_file.as_str(), '0', 0o644),
        ("opt/app/a-first", '0', 0o644),
        ("opt/app/bin/", '5', 0o755),
        ("opt/app/bin/long-link", '2', 0o777),
        ("opt/app/bin/services", '0', 0o755),
        ("opt/app/bin/svc", '2', 0o777),
        ("opt/app/empty/", '5', 0o755),
        ("opt/app/etc/", '5', 0o755),
        ("opt/app/etc/services.conf", '0', 0o644),
        ("opt/app/z-last", '0', 0o644),
    ];
    // Bytewise order of the paths without their trailing `/`.
    expected.sort_by(|a, b| a.0.trim_end_matches('/').cmp(b.0.trim_end_matches('/')));
    assert_eq!(got, expected);
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, EPOCH as u64), "{}", e.path);
        assert!(e.uname.is_empty() && e.gname.is_empty(), "{}", e.path);
    }
    let link = entries
        .iter()
        .find(|e| e.path.ends_with("long-link"))
        .unwrap();
    assert_eq!(link.link.as_deref(), Some(&*format!("../{LONG_DIR}/file")));
    let svc = entries
        .iter()
        .find(|e| e.path.ends_with("bin/services"))
        .unwrap();
    assert_eq!(svc.data, b"#!/bin/sh\necho services\n");
}

#[test]
fn file_mode_override_and_explicit_entries() {
    let tmp = tempfile::tempdir().unwrap();
    write_file(tmp.path(), "src/tool", b"x", 0o600, 5);
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let mut entries =
        entries_from_dir(&tmp.path().join("src/tool"), "usr/bin/tool", Some(0o555)).unwrap();
    entries.push(LayerEntry::symlink("bin/sh", "/usr/bin/tool"));
    entries.push(LayerEntry::dir("usr").with_mode(0o755));
    entries.push(LayerEntry::dir("tmp").with_mode(0o1777));
    let built = write_layer(&layout, &entries, 0).unwrap();
    let entries = tar_entries(&gunzip(
        &layout.read_blob(&built.descriptor.digest).unwrap(),
    ));
    let got: Vec<(&str, char, u32)> = entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.mode))
        .collect();
    assert_eq!(
        got,
        [
            ("bin/", '5', 0o755),
            ("bin/sh", '2', 0o777),
            ("tmp/", '5', 0o1777),
            ("usr/", '5', 0o755),
            ("usr/bin/", '5', 0o755),
            ("usr/bin/tool", '0', 0o555),
        ]
    );
    assert!(entries.iter().all(|e| e.mtime == 0));
}

#[test]
fn same_entries_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 0);
    let entries = entries_from_dir(&tree, "/app", None).unwrap();
    let l1 = OciLayout::open_or_create(tmp.path().join("l1")).unwrap();
    let l2 = OciLayout::open_or_create(tmp.path().join("l2")).unwrap();
    let a = write_layer(&l1, &entries, EPOCH).unwrap();
    let b = write_layer(&l2, &entries, EPOCH).unwrap();
    let again = write_layer(&l1, &entries, EPOCH).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, again);
    assert_eq!(
        l1.read_blob(&a.descriptor.digest).unwrap(),
        l2.read_blob(&b.descriptor.digest).unwrap()
    );
    // Entry order in the list does not matter either.
    let mut reversed = entries.clone();
    reversed.reverse();
    assert_eq!(write_layer(&l1, &reversed, EPOCH).unwrap(), a);
    // Nothing but the blob is left behind (the temp files are gone).
    let names: Vec<_> = fs::read_dir(l1.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sha256"]);
}

#[test]
fn two_directories_give_identical_images() {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    make_tree(&t1.path().join("tree"), 0);
    make_tree(&t2.path().join("tree"), 1);
    let l1 = OciLayout::open_or_create(t1.path().join("layout")).unwrap();
    let l2 = OciLayout::open_or_create(t2.path().join("layout")).unwrap();
    let a = assemble(&l1, &spec_for(&t1.path().join("tree"))).unwrap();
    let b = assemble(&l2, &spec_for(&t2.path().join("tree"))).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        l1.read_blob(&a.manifest_digest).unwrap(),
        l2.read_blob(&b.manifest_digest).unwrap()
    );
    assert_eq!(
        l1.read_blob(&a.config_digest).unwrap(),
        l2.read_blob(&b.config_digest).unwrap()
    );
    for l in &a.layers {
        assert_eq!(
            l1.read_blob(&l.digest).unwrap(),
            l2.read_blob(&l.digest).unwrap()
        );
    }
}

/// Pins the exact bytes: a change of tar or gzip settings, of the deflate
/// implementation or of the JSON field order changes these digests, and every image.
/// If this fails after a dependency update, the update changes published digests.
#[test]
fn digests_are_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 0);
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let built = assemble(&layout, &spec_for(&tree)).unwrap();
    let config = String::from_utf8(layout.read_blob(&built.config_digest).unwrap()).unwrap();
    assert_eq!(
        config,
        format!(
            concat!(
                r#"{{"created":"2023-11-14T22:13:20Z","architecture":"amd64","os":"linux","#,
                r#""config":{{"User":"65534","ExposedPorts":{{"8080/tcp":{{}}}},"Env":["Z=1","A=2"],"#,
                r#""Entrypoint":["/app/bin/services"],"WorkingDir":"/app","Labels":{{"a":"1","b":"2"}}}},"#,
                r#""rootfs":{{"type":"layers","diff_ids":["{}"]}},"#,
                r#""history":[{{"created":"2023-11-14T22:13:20Z","created_by":"cascade: outputs of services"}}]}}"#
            ),
            built.diff_ids[0]
        )
    );
    let manifest = String::from_utf8(layout.read_blob(&built.manifest_digest).unwrap()).unwrap();
    assert_eq!(
        manifest,
        format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"#,
                r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}],"#,
                r#""annotations":{{"org.opencontainers.image.created":"2023-11-14T22:13:20Z","#,
                r#""org.opencontainers.image.revision":"1a2b3c4"}}}}"#
            ),
            built.config_digest, built.config_size, built.layers[0].digest, built.layers[0].size
        )
    );
    let pinned = (
        built.diff_ids[0].to_string(),
        built.layers[0].digest.to_string(),
        built.manifest_digest.to_string(),
    );
    assert_eq!(
        pinned,
        (
            "sha256:2e3eb2769bc72bf0b7474bc6919ececefc0a7ad20627ca919dc94df8bda7e226".to_string(),
            "sha256:f6014d7b62b80e2d83c4d9503d2611298f1eeec32caaed75a754b3755c8f7358".to_string(),
            "sha256:f7ecc2f77f1a51aa8d692bd084df2fe0d2c95fa06009392ac26103feb6b8854b".to_string(),
        )
    );
}

#[test]
fn timestamps_come_from_source_date_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 0);
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let built = assemble(&layout, &spec_for(&tree)).unwrap();
    let m = blob_json(&layout, &built.manifest_digest);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        "1a2b3c4"
    );
    let c = blob_json(&layout, &built.config_digest);
    assert_eq!(c["created"], "2023-11-14T22:13:20Z");
    assert_eq!(c["history"][0]["created"], "2023-11-14T22:13:20Z");

    // A caller's `created` annotation is kept as given.
    let mut spec = spec_for(&tree);
    spec.annotations
        .insert(ANNOTATION_CREATED.into(), "given".into());
    let other = assemble(&layout, &spec).unwrap();
    let m = blob_json(&layout, &other.manifest_digest);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "given"
    );
    // Only the manifest changed: same layers and config.
    assert_eq!(other.config_digest, built.config_digest);
    assert_ne!(other.manifest_digest, built.manifest_digest);

    let mut spec = spec_for(&tree);
    spec.source_date_epoch = -1;
    assert!(matches!(
        assemble(&layout, &spec),
        Err(ImageError::InvalidEpoch { .. })
    ));
}

/// A base image (itself on scratch) and an image on top of it.
fn base_and_child(layout: &OciLayout, root: &Path) -> (ImageBuilt, ImageBuilt) {
    write_file(root, "base/bin/base", b"base", 0o755, 1);
    write_file(root, "child/services", b"child", 0o755, 1);
    let base = assemble(
        layout,
        &ImageSpec {
            config: ConfigSpec {
                entrypoint: Some(vec!["/bin/base".into()]),
                cmd: Some(vec!["serve".into()]),
                env: vec!["PATH=/bin".into(), "A=1".into()],
                working_dir: Some("/base".into()),
                exposed_ports: ["80".to_string()].into(),
                user: Some("1000".into()),
                labels: [("a".to_string(), "1".to_string()), ("b".into(), "1".into())].into(),
            },
            layers: vec![LayerSpec {
                entries: entries_from_dir(&root.join("base"), "/", None).unwrap(),
                created_by: "base".into(),
                comment: Some("the base".into()),
            }],
            source_date_epoch: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let child = assemble(
        layout,
        &ImageSpec {
            base: Base::Layout(base.manifest_digest),
            config: ConfigSpec {
                cmd: Some(vec!["run".into()]),
                env: vec!["A=2".into(), "B=3".into()],
                exposed_ports: ["8080".to_string()].into(),
                labels: [("b".to_string(), "2".to_string()), ("c".into(), "3".into())].into(),
                ..Default::default()
            },
            layers: vec![LayerSpec {
                entries: entries_from_dir(&root.join("child"), "/app", None).unwrap(),
                created_by: "child".into(),
                comment: None,
            }],
            source_date_epoch: EPOCH,
            ..Default::default()
        },
    )
    .unwrap();
    (base, child)
}

#[test]
fn an_image_inherits_from_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let (base, child) = base_and_child(&layout, tmp.path());

    assert_eq!(child.layers.len(), 2);
    assert_eq!(child.layers[0], base.layers[0]);
    assert_eq!(child.diff_ids[0], base.diff_ids[0]);

    let c = blob_json(&layout, &child.config_digest);
    let cfg = &c["config"];
    assert_eq!(cfg["Env"], serde_json::json!(["PATH=/bin", "A=2", "B=3"]));
    assert_eq!(
        cfg["Labels"],
        serde_json::json!({"a": "1", "b": "2", "c": "3"})
    );
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/base"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["run"]));
    assert_eq!(cfg["User"], "1000");
    assert_eq!(cfg["WorkingDir"], "/base");
    assert_eq!(
        cfg["ExposedPorts"],
        serde_json::json!({"80/tcp": {}, "8080/tcp": {}})
    );
    assert_eq!(
        c["rootfs"]["diff_ids"],
        serde_json::json!([child.diff_ids[0].to_string(), child.diff_ids[1].to_string()])
    );
    let history = c["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["created"], "1970-01-01T00:00:00Z");
    assert_eq!(history[0]["comment"], "the base");
    assert_eq!(history[1]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(history[1]["created_by"], "child");
    assert_eq!(c["created"], "2023-11-14T22:13:20Z");

    let m = blob_json(&layout, &child.manifest_digest);
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        m["annotations"][ANNOTATION_BASE_DIGEST],
        base.manifest_digest.to_string()
    );

    // The base's platform must match.
    let spec = ImageSpec {
        base: Base::Layout(base.manifest_digest),
        platform: Platform {
            architecture: "arm64".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        assemble(&layout, &spec),
        Err(ImageError::PlatformMismatch { .. })
    ));
    // A base that is not in the layout.
    let spec = ImageSpec {
        base: Base::Layout(OciDigest::of(b"nothing")),
        ..Default::default()
    };
    assert!(matches!(
        assemble(&layout, &spec),
        Err(ImageError::MissingBlob { .. })
    ));
    // A base that is a blob but not a manifest (a layer).
    let spec = ImageSpec {
        base: Base::Layout(base.layers[0].digest),
        ..Default::default()
    };
    assert!(matches!(
        assemble(&layout, &spec),
        Err(ImageError::InvalidJson { .. })
    ));
}

fn archive_names(bytes: &[u8]) -> Vec<String> {
    tar_entries(bytes).into_iter().map(|e| e.path).collect()
}

#[test]
fn export_archive_holds_exactly_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let (base, child) = base_and_child(&layout, tmp.path());
    // Another image in the same layout, whose blobs must stay out of the archive.
    let tree = tmp.path().join("tree");
    make_tree(&tree, 0);
    let other = assemble(&layout, &spec_for(&tree)).unwrap();

    let out1 = tmp.path().join("out/one.tar");
    let out2 = tmp.path().join("two.tar");
    export_archive(
        &layout,
        &child.manifest_digest,
        "services:main-1a2b3c4",
        &out1,
    )
    .unwrap();
    export_archive(
        &layout,
        &child.manifest_digest,
        "services:main-1a2b3c4",
        &out2,
    )
    .unwrap();
    let bytes = fs::read(&out1).unwrap();
    assert_eq!(bytes, fs::read(&out2).unwrap());

    let mut blobs = [
        child.manifest_digest,
        child.config_digest,
        base.layers[0].digest,
        child.layers[1].digest,
    ];
    blobs.sort();
    let mut expected = vec!["blobs/".to_string(), "blobs/sha256/".to_string()];
    expected.extend(blobs.iter().map(|d| format!("blobs/sha256/{}", d.hex())));
    expected.extend(["index.json", "manifest.json", "oci-layout"].map(String::from));
    assert_eq!(archive_names(&bytes), expected);
    assert!(!blobs.contains(&other.manifest_digest));

    let entries = tar_entries(&bytes);
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
        assert_eq!(
            e.mode,
            if e.kind == '5' { 0o755 } else { 0o644 },
            "{}",
            e.path
        );
        if let Some(hex) = e
            .path
            .strip_prefix("blobs/sha256/")
            .filter(|h| !h.is_empty())
        {
            assert_eq!(OciDigest::of(&e.data).hex(), hex);
        }
    }
    let file = |name: &str| {
        String::from_utf8(
            entries
                .iter()
                .find(|e| e.path == name)
                .unwrap()
                .data
                .clone(),
        )
        .unwrap()
    };
    assert_eq!(file("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert_eq!(
        file("index.json"),
        format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
                r#""manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"services:main-1a2b3c4","#,
                r#""org.opencontainers.image.ref.name":"main-1a2b3c4"}}}}]}}"#
            ),
            child.manifest_digest, child.manifest_size
        )
    );
    assert_eq!(
        file("manifest.json"),
        format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":["services:main-1a2b3c4"],"Layers":["blobs/sha256/{}","blobs/sha256/{}"]}}]"#,
            child.config_digest.hex(),
            child.layers[0].digest.hex(),
            child.layers[1].digest.hex()
        )
    );

    // No temp files left beside the archives.
    let mut names: Vec<_> = fs::read_dir(tmp.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["one.tar"]);

    for bad in ["services", "Services:x", "services@sha256:00"] {
        assert!(matches!(
            export_archive(&layout, &child.manifest_digest, bad, &out1),
            Err(ImageError::InvalidReference { .. })
        ));
    }
}

#[test]
fn corrupt_blobs_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let d = layout.put_blob_bytes(b"hello").unwrap();
    assert_eq!(d, OciDigest::of(b"hello"));
    assert!(layout.has_blob(&d));
    assert_eq!(layout.read_blob(&d).unwrap(), b"hello");
    // Writing it again is a no-op.
    assert_eq!(layout.put_blob_bytes(b"hello").unwrap(), d);

    fs::write(layout.blob_path(&d), b"jello").unwrap();
    match layout.read_blob(&d) {
        Err(ImageError::CorruptBlob {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, layout.blob_path(&d));
            assert_eq!(expected, d);
            assert_eq!(actual, OciDigest::of(b"jello"));
        }
        other => panic!("{other:?}"),
    }
    let missing = OciDigest::of(b"absent");
    assert!(!layout.has_blob(&missing));
    assert!(matches!(
        layout.read_blob(&missing),
        Err(ImageError::MissingBlob { .. })
    ));

    // A corrupt layer stops an export, and no archive appears.
    let (_, child) = base_and_child(&layout, tmp.path());
    let layer = layout.blob_path(&child.layers[1].digest);
    let mut bytes = fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer, &bytes).unwrap();
    let out = tmp.path().join("image.tar");
    assert!(matches!(
        export_archive(&layout, &child.manifest_digest, "services:x", &out),
        Err(ImageError::CorruptBlob { .. })
    ));
    assert!(!out.exists());
}

#[test]
fn bad_sources_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();

    let missing = tmp.path().join("missing");
    match entries_from_dir(&missing, "/app", None) {
        Err(ImageError::SourceMissing { path }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    match write_layer(&layout, &[LayerEntry::file("app/x", &missing)], 0) {
        Err(e @ ImageError::SourceMissing { .. }) => {
            assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}")
        }
        other => panic!("{other:?}"),
    }

    let escape = tmp.path().join("escape");
    fs::create_dir_all(escape.join("sub")).unwrap();
    symlink("../../outside", escape.join("sub/link")).unwrap();
    assert!(matches!(
        entries_from_dir(&escape, "/", None),
        Err(ImageError::SymlinkEscapes { .. })
    ));
    let absolute = tmp.path().join("absolute");
    fs::create_dir_all(&absolute).unwrap();
    symlink("/etc/passwd", absolute.join("link")).unwrap();
    assert!(matches!(
        entries_from_dir(&absolute, "/", None),
        Err(ImageError::SymlinkEscapes { .. })
    ));

    let non_utf8 = tmp.path().join("non-utf8");
    fs::create_dir_all(&non_utf8).unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        fs::write(non_utf8.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"").unwrap();
    }
    assert!(matches!(
        entries_from_dir(&non_utf8, "/", None),
        Err(ImageError::NonUtf8Path { .. })
    ));

    let socket = tmp.path().join("socket");
    fs::create_dir_all(&socket).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(socket.join("sock")).unwrap();
    assert!(matches!(
        entries_from_dir(&socket, "/", None),
        Err(ImageError::UnsupportedFileType { .. })
    ));

    // A directory given as a file's source.
    assert!(matches!(
        write_layer(&layout, &[LayerEntry::file("x", tmp.path())], 0),
        Err(ImageError::UnsupportedFileType { .. })
    ));
    for bad in ["../x", "a/./b", "", "a/.wh.b"] {
        assert!(matches!(
            write_layer(&layout, &[LayerEntry::dir(bad)], 0),
            Err(ImageError::InvalidPath { .. })
        ));
    }
    assert!(matches!(
        entries_from_dir(tmp.path(), "/app/../etc", None),
        Err(ImageError::InvalidPath { .. })
    ));
    // A file at the image root.
    write_file(tmp.path(), "f", b"", 0o644, 0);
    assert!(entries_from_dir(&tmp.path().join("f"), "/", None).is_err());
    // Nothing half-written is left in the layout.
    let names: Vec<_> = fs::read_dir(layout.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sha256"]);
}

#[test]
fn layouts_and_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let layout = OciLayout::open_or_create(&dir).unwrap();
    assert_eq!(
        fs::read(dir.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    assert_eq!(
        fs::read_to_string(dir.join("index.json")).unwrap(),
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
    );
    // Reopening keeps what is there.
    OciLayout::open_or_create(&dir).unwrap();

    let (base, child) = base_and_child(&layout, tmp.path());
    let entries = [
        IndexEntry {
            manifest: child.manifest_descriptor(),
            ref_name: "services:main-1a2b3c4".into(),
        },
        IndexEntry {
            manifest: base.manifest_descriptor(),
            ref_name: "base:v1".into(),
        },
    ];
    layout.write_index(&entries).unwrap();
    let first = fs::read(dir.join("index.json")).unwrap();
    let mut reversed = entries.clone();
    reversed.reverse();
    layout.write_index(&reversed).unwrap();
    assert_eq!(fs::read(dir.join("index.json")).unwrap(), first);
    let index: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let names: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"][ANNOTATION_REF_NAME]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["base:v1", "services:main-1a2b3c4"]);

    let dup = [entries[0].clone(), entries[0].clone()];
    assert!(matches!(
        layout.write_index(&dup),
        Err(ImageError::DuplicateRefName { .. })
    ));

    let not_layout = tmp.path().join("not-layout");
    fs::create_dir_all(&not_layout).unwrap();
    fs::write(
        not_layout.join("oci-layout"),
        b"{\"imageLayoutVersion\":\"2.0.0\"}",
    )
    .unwrap();
    assert!(matches!(
        OciLayout::open_or_create(&not_layout),
        Err(ImageError::NotALayout { .. })
    ));
}

/// A 100 MB layer is streamed: the process's peak memory grows by far less than that.
/// Ignored by default because it takes a while in a debug build; run it with
/// `cargo test -p cascade-image --release -- --ignored` (alone: peak RSS is per process).
#[test]
#[ignore]
fn a_large_layer_is_streamed() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&big).unwrap());
        // Incompressible (xorshift), so the blob is ~100 MB too.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..100 {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let before = peak_rss_kib();
    let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
    let built = write_layer(&layout, &[LayerEntry::file("big", &big)], 0).unwrap();
    let grown_mib = (peak_rss_kib() - before) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB for a 100 MiB layer");
    assert!(built.descriptor.size > 100 << 20);
    assert!(grown_mib < 32, "peak memory grew by {grown_mib} MiB");
}

fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
