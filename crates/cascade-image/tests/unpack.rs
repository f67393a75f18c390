//! Unpacking images into a directory: layers in order, whiteouts, modes, and layers that
//! try to write outside the destination.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cascade_image::*;
use common::*;
use serde_json::json;

const EPOCH: i64 = 1_700_000_000;

/// One hand-written tar entry. Names and link targets are written byte for byte (the
/// `tar` crate's path setters refuse the hostile ones these tests need).
struct Raw<'a> {
    kind: tar::EntryType,
    name: &'a str,
    mode: u32,
    data: &'a [u8],
    link: Option<&'a str>,
}

fn file<'a>(name: &'a str, mode: u32, data: &'a [u8]) -> Raw<'a> {
    Raw {
        kind: tar::EntryType::Regular,
        name,
        mode,
        data,
        link: None,
    }
}

fn dir(name: &str, mode: u32) -> Raw<'_> {
    Raw {
        kind: tar::EntryType::Directory,
        name,
        mode,
        data: b"",
        link: None,
    }
}

fn link<'a>(kind: tar::EntryType, name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        kind,
        name,
        mode: 0o777,
        data: b"",
        link: Some(target),
    }
}

fn symlink_entry<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    link(tar::EntryType::Symlink, name, target)
}

fn hard_link<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    link(tar::EntryType::Link, name, target)
}

fn whiteout(name: &str) -> Raw<'_> {
    file(name, 0o644, b"")
}

fn special(kind: tar::EntryType, name: &str) -> Raw<'_> {
    Raw {
        kind,
        name,
        mode: 0o644,
        data: b"",
        link: None,
    }
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        assert!(name.len() <= 100, "{}", e.name);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(EPOCH as u64);
        if let Some(l) = e.link {
            h.set_link_name_literal(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// An image with no layers, from `assemble`.
fn scratch(layout: &OciLayout) -> OciDigest {
    let spec = ImageSpec {
        source_date_epoch: EPOCH,
        ..Default::default()
    };
    assemble(layout, &spec).unwrap().manifest_digest
}

/// The image `manifest` with one more layer on top: the blob `blob` of `media_type`,
/// whose uncompressed tar hashes to `diff_id`. Config and manifest are the base's, as
/// JSON values, with the layer appended.
fn with_layer(
    layout: &OciLayout,
    manifest: &OciDigest,
    blob: &[u8],
    media_type: &str,
    diff_id: OciDigest,
) -> OciDigest {
    let mut m = blob_json(layout, manifest);
    let config_digest = OciDigest::parse(m["config"]["digest"].as_str().unwrap()).unwrap();
    let mut config = blob_json(layout, &config_digest);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(diff_id.to_string()));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = layout.put_blob_bytes(&config_bytes).unwrap();
    m["config"]["digest"] = json!(config_digest.to_string());
    m["config"]["size"] = json!(config_bytes.len());
    let layer = layout.put_blob_bytes(blob).unwrap();
    m["layers"].as_array_mut().unwrap().push(json!({
        "mediaType": media_type,
        "digest": layer.to_string(),
        "size": blob.len(),
    }));
    layout
        .put_blob_bytes(&serde_json::to_vec(&m).unwrap())
        .unwrap()
}

fn with_gzip_layer(layout: &OciLayout, manifest: &OciDigest, entries: &[Raw]) -> OciDigest {
    let tar = tar_of(entries);
    with_layer(
        layout,
        manifest,
        &gzip(&tar),
        MEDIA_TYPE_LAYER_GZIP,
        OciDigest::of(&tar),
    )
}

fn with_tar_layer(layout: &OciLayout, manifest: &OciDigest, entries: &[Raw]) -> OciDigest {
    let tar = tar_of(entries);
    with_layer(
        layout,
        manifest,
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        OciDigest::of(&tar),
    )
}

/// A scratch image with one gzip layer of `entries`.
fn image_of(layout: &OciLayout, entries: &[Raw]) -> OciDigest {
    let base = scratch(layout);
    with_gzip_layer(layout, &base, entries)
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, String),
    Link(String),
}

/// Everything under `root`, by relative path.
fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for item in fs::read_dir(root.join(&rel)).unwrap() {
            let item = item.unwrap();
            let rel = rel.join(item.file_name());
            let abs = root.join(&rel);
            let meta = fs::symlink_metadata(&abs).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let key = rel.to_str().unwrap().to_string();
            let node = if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(&abs).unwrap().to_str().unwrap().into())
            } else if meta.is_dir() {
                stack.push(rel);
                Node::Dir(mode)
            } else {
                Node::File(mode, fs::read_to_string(&abs).unwrap())
            };
            out.insert(key, node);
        }
    }
    out
}

fn d() -> Node {
    Node::Dir(0o755)
}

fn f(mode: u32, contents: &str) -> Node {
    Node::File(mode, contents.into())
}

fn l(target: &str) -> Node {
    Node::Link(target.into())
}

struct Fixture {
    tmp: tempfile::TempDir,
    layout: OciLayout,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(tmp.path().join("layout")).unwrap();
        Self { tmp, layout }
    }

    /// A fresh empty destination, two levels below the temp dir, so that `..` from it
    /// is still inside the temp dir where the test can look.
    fn dest(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join("unpacked").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

/// The entry error's path, or a panic with what came instead.
fn entry_error(r: Result<Unpacked, ImageError>) -> (String, &'static str) {
    match r {
        Err(ImageError::InvalidLayerEntry { path, reason, .. }) => (path, reason),
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let fx = Fixture::new();
    let src = fx.path("src");
    write_file(&src, "tool", b"#!/bin/sh\n", 0o755, 1);
    write_file(&src, "old", b"old", 0o644, 1);
    write_file(&src, "private", b"kept", 0o600, 1);
    write_file(&src, "libc", b"libc", 0o644, 1);
    let base = assemble(
        &fx.layout,
        &ImageSpec {
            layers: vec![LayerSpec {
                entries: vec![
                    LayerEntry::file("bin/tool", src.join("tool")).with_mode(0o4755),
                    LayerEntry::symlink("bin/sh", "tool"),
                    LayerEntry::symlink("bin/abs", "/bin/tool"),
                    LayerEntry::file("etc/config", src.join("old")),
                    LayerEntry::file("etc/removed", src.join("old")),
                    LayerEntry::file("etc/kept", src.join("private")),
                    LayerEntry::dir("etc/removed-dir"),
                    LayerEntry::file("etc/removed-dir/inner", src.join("old")),
                    LayerEntry::file("opt/lower-file", src.join("old")),
                    LayerEntry::file("opt/lower/deep", src.join("old")),
                    LayerEntry::file("opt/kept-dir/lower", src.join("old")),
                    LayerEntry::file("usr/lib/libc.so", src.join("libc")),
                    LayerEntry::symlink("lib", "usr/lib"),
                    LayerEntry::dir("srv").with_mode(0o1777),
                ],
                created_by: "base".into(),
                comment: None,
            }],
            source_date_epoch: EPOCH,
            ..Default::default()
        },
    )
    .unwrap();

    let with_whiteouts = with_gzip_layer(
        &fx.layout,
        &base.manifest_digest,
        &[
            dir("./", 0o755),
            file("etc/config", 0o600, b"new"),
            whiteout("etc/.wh.removed"),
            // Known by its name, whatever its type.
            special(tar::EntryType::Char, "etc/.wh.removed-dir"),
            whiteout("etc/.wh.never-there"),
            dir("opt/", 0o755),
            // Before the marker, and still kept: it is this layer's.
            file("opt/new", 0o640, b"new"),
            whiteout("opt/.wh..wh..opq"),
            dir("opt/kept-dir/", 0o700),
            file("opt/kept-dir/upper", 0o644, b"upper"),
            // Through the `lib -> usr/lib` symlink, resolved inside the image.
            file("lib/added", 0o644, b"added"),
            hard_link("bin/tool-link", "bin/tool"),
            dir("srv/", 0o2775),
            special(tar::EntryType::Char, "dev/null"),
            special(tar::EntryType::Fifo, "run/fifo"),
        ],
    );
    let image = with_tar_layer(
        &fx.layout,
        &with_whiteouts,
        &[
            file("bin/sh", 0o644, b"sh"),
            file("/var/plain", 0o6755, b"plain"),
        ],
    );

    let dest = fx.dest("root");
    let out = unpack(&fx.layout, &image, &dest).unwrap();
    let expected: BTreeMap<String, Node> = [
        ("bin", d()),
        ("bin/abs", l("/bin/tool")),
        ("bin/sh", f(0o644, "sh")),
        ("bin/tool", f(0o755, "#!/bin/sh\n")),
        ("bin/tool-link", f(0o755, "#!/bin/sh\n")),
        ("etc", d()),
        ("etc/config", f(0o644, "new")),
        ("etc/kept", f(0o644, "kept")),
        ("lib", l("usr/lib")),
        ("opt", d()),
        ("opt/kept-dir", d()),
        ("opt/kept-dir/upper", f(0o644, "upper")),
        ("opt/new", f(0o644, "new")),
        ("srv", d()),
        ("usr", d()),
        ("usr/lib", d()),
        ("usr/lib/added", f(0o644, "added")),
        ("usr/lib/libc.so", f(0o644, "libc")),
        ("var", d()),
        ("var/plain", f(0o755, "plain")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(tree(&dest), expected);
    // The hard link is a hard link.
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("bin/tool"), ino("bin/tool-link"));

    // Layer 1: 9 files (6 of them `old`); layer 2: config, new, upper, added and the
    // hard link (no bytes); layer 3: 2.
    assert_eq!(
        out,
        Unpacked {
            files: 9 + 5 + 2,
            bytes: (10 + 3 * 6 + 4 + 4) + (3 + 3 + 5 + 5) + (2 + 5),
            skipped: 2,
        }
    );
}

#[test]
fn dot_dot_paths_are_refused() {
    let fx = Fixture::new();
    for (i, name) in ["../escape", "a/../../escape", "..", "./../escape"]
        .into_iter()
        .enumerate()
    {
        let image = image_of(&fx.layout, &[file(name, 0o644, b"pwned")]);
        let dest = fx.dest(&format!("d{i}"));
        let (path, reason) = entry_error(unpack(&fx.layout, &image, &dest));
        assert_eq!(path, name);
        assert!(reason.contains("`..`"), "{reason}");
        assert!(!fx.path("unpacked/escape").exists());
        assert!(!fx.path("escape").exists());
    }
    // Nor a symlink or hard link named so.
    let image = image_of(&fx.layout, &[symlink_entry("../escape", "x")]);
    entry_error(unpack(&fx.layout, &image, &fx.dest("link")));
    let image = image_of(
        &fx.layout,
        &[file("a", 0o644, b"a"), hard_link("../escape", "a")],
    );
    entry_error(unpack(&fx.layout, &image, &fx.dest("hard")));
    assert!(!fx.path("unpacked/escape").exists());

    // An empty name is refused too.
    let image = image_of(&fx.layout, &[file("", 0o644, b"x")]);
    let (path, reason) = entry_error(unpack(&fx.layout, &image, &fx.dest("empty")));
    assert_eq!((path.as_str(), reason), ("", "the path is empty"));
}

#[test]
fn absolute_paths_land_inside_dest() {
    // `/etc/x`, except that the path is the test's temp dir: were the leading `/` not
    // stripped, the file would land there, where the test sees it, not in the host's
    // `/etc`.
    let fx = Fixture::new();
    let x = fx.path("etc/x");
    let y = fx.path("etc/y");
    let (x_str, y_str) = (x.to_str().unwrap(), y.to_str().unwrap());
    let image = image_of(
        &fx.layout,
        &[file(x_str, 0o644, b"inside"), hard_link(y_str, x_str)],
    );
    let dest = fx.dest("root");
    unpack(&fx.layout, &image, &dest).unwrap();
    let inside = |p: &Path| dest.join(p.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside(&x)).unwrap(), b"inside");
    assert_eq!(fs::read(inside(&y)).unwrap(), b"inside");
    assert!(!fx.path("etc").exists());
}

#[test]
fn symlinked_parents_resolve_inside_dest() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap();
    let image = image_of(
        &fx.layout,
        &[
            symlink_entry("a", outside_str),
            file("a/x", 0o644, b"pwned"),
            // From `dest`, `../..` is the test's temp dir on the host; in the image it
            // stops at the root. (Every escape these tests try lands in the temp dir if
            // it is not stopped.)
            symlink_entry("b", "../.."),
            file("b/y", 0o644, b"up"),
            symlink_entry("c", "b"),
            dir("c/z", 0o755),
        ],
    );
    let dest = fx.dest("root");
    unpack(&fx.layout, &image, &dest).unwrap();
    assert!(!outside.join("x").exists());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // Where the sandbox will find it: the link's target, under its root.
    let inside = dest.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("x")).unwrap(), b"pwned");
    assert_eq!(fs::read_link(dest.join("a")).unwrap(), outside);
    assert_eq!(fs::read(dest.join("y")).unwrap(), b"up");
    assert!(!fx.path("y").exists());
    assert!(fs::symlink_metadata(dest.join("z")).unwrap().is_dir());
    assert!(!fx.path("z").exists() && !fx.path("unpacked/z").exists());

    // A link to itself, or a file in the way, is an error, not a loop.
    let image = image_of(
        &fx.layout,
        &[symlink_entry("loop", "loop"), file("loop/x", 0o644, b"")],
    );
    entry_error(unpack(&fx.layout, &image, &fx.dest("loop")));
    let image = image_of(
        &fx.layout,
        &[file("f", 0o644, b""), file("f/x", 0o644, b"")],
    );
    let (path, reason) = entry_error(unpack(&fx.layout, &image, &fx.dest("file")));
    assert_eq!(path, "f/x");
    assert!(reason.contains("not a directory"), "{reason}");
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let fx = Fixture::new();
    let victim = fx.path("victim");
    fs::write(&victim, b"original").unwrap();
    let victim_dir = fx.path("victim-dir");
    fs::create_dir(&victim_dir).unwrap();
    fs::write(victim_dir.join("keep"), b"keep").unwrap();
    let (victim_str, dir_str) = (victim.to_str().unwrap(), victim_dir.to_str().unwrap());

    let base = image_of(
        &fx.layout,
        &[
            symlink_entry("file", victim_str),
            symlink_entry("dir", dir_str),
            symlink_entry("wh", dir_str),
            symlink_entry("opq", dir_str),
            symlink_entry("hard", victim_str),
        ],
    );
    let image = with_gzip_layer(
        &fx.layout,
        &base,
        &[
            file("file", 0o644, b"pwned"),
            dir("dir", 0o755),
            file("dir/new", 0o644, b"new"),
            whiteout("wh/.wh.keep"),
            whiteout("opq/.wh..wh..opq"),
            file("x", 0o644, b"x"),
            hard_link("hard", "x"),
        ],
    );
    let dest = fx.dest("root");
    unpack(&fx.layout, &image, &dest).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
    assert_eq!(fs::read(victim_dir.join("keep")).unwrap(), b"keep");
    assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1);
    let t = tree(&dest);
    assert_eq!(t["file"], f(0o644, "pwned"));
    assert_eq!(t["dir"], d());
    assert_eq!(t["dir/new"], f(0o644, "new"));
    assert_eq!(t["wh"], l(dir_str));
    assert_eq!(t["hard"], f(0o644, "x"));
}

#[test]
fn hard_links_stay_inside_dest() {
    let fx = Fixture::new();
    let victim = fx.path("victim");
    fs::write(&victim, b"secret").unwrap();
    let victim_str = victim.to_str().unwrap();
    let parent = victim.parent().unwrap().to_str().unwrap();
    let cases: Vec<Vec<Raw>> = vec![
        vec![hard_link("h", "../../victim")],
        // Absolute: `<dest>/<tmp>/victim`, which does not exist.
        vec![hard_link("h", victim_str)],
        // Through a symlink to the outside directory: resolved inside dest.
        vec![symlink_entry("s", parent), hard_link("h", "s/victim")],
        // A directory cannot be hard-linked.
        vec![dir("d", 0o755), hard_link("h", "d")],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let image = image_of(&fx.layout, entries);
        let dest = fx.dest(&format!("d{i}"));
        let (path, _) = entry_error(unpack(&fx.layout, &image, &dest));
        assert_eq!(path, "h");
        assert!(fs::symlink_metadata(dest.join("h")).is_err());
    }
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);

    // A hard link to a symlink is that symlink, not what it points to.
    let image = image_of(
        &fx.layout,
        &[symlink_entry("s", victim_str), hard_link("h", "s")],
    );
    let dest = fx.dest("to-symlink");
    unpack(&fx.layout, &image, &dest).unwrap();
    assert_eq!(fs::read_link(dest.join("h")).unwrap(), victim);
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
}

#[test]
fn a_corrupt_layer_is_an_error() {
    let fx = Fixture::new();
    let src = fx.path("src");
    // Enough contents that a byte in the middle is inside the deflate stream.
    let contents: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
    write_file(&src, "data", &contents, 0o644, 1);
    let built = assemble(
        &fx.layout,
        &ImageSpec {
            layers: vec![LayerSpec {
                entries: vec![LayerEntry::file("data", src.join("data"))],
                ..Default::default()
            }],
            source_date_epoch: EPOCH,
            ..Default::default()
        },
    )
    .unwrap();
    let flip = |digest: &OciDigest, at: usize| {
        let path = fx.layout.blob_path(digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
    };
    let layer = &built.layers[0];
    flip(&layer.digest, layer.size as usize / 2);
    match unpack(&fx.layout, &built.manifest_digest, &fx.dest("gzip")) {
        Err(ImageError::CorruptBlob { expected, .. }) => assert_eq!(expected, layer.digest),
        other => panic!("{other:?}"),
    }

    // An uncompressed layer whose file contents changed still parses as a tar: the
    // digest, checked at the end of the blob, is what catches it.
    let base = scratch(&fx.layout);
    let image = with_tar_layer(&fx.layout, &base, &[file("f", 0o644, b"hello")]);
    let m = blob_json(&fx.layout, &image);
    let tar_digest = OciDigest::parse(m["layers"][0]["digest"].as_str().unwrap()).unwrap();
    flip(&tar_digest, 512);
    let dest = fx.dest("tar");
    match unpack(&fx.layout, &image, &dest) {
        Err(ImageError::CorruptBlob { expected, .. }) => assert_eq!(expected, tar_digest),
        other => panic!("{other:?}"),
    }
    // Partly written: why callers unpack into a temp dir and rename on success.
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"iello");
}

#[test]
fn a_layer_must_match_its_diff_id() {
    let fx = Fixture::new();
    let base = scratch(&fx.layout);
    let tar = tar_of(&[file("f", 0o644, b"x")]);
    let image = with_layer(
        &fx.layout,
        &base,
        &gzip(&tar),
        MEDIA_TYPE_LAYER_GZIP,
        OciDigest::of(b"something else"),
    );
    match unpack(&fx.layout, &image, &fx.dest("root")) {
        Err(ImageError::InvalidImage { reason, .. }) => assert!(reason.contains("diff_id")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unpacking_is_bounded() {
    let fx = Fixture::new();
    // 1 MiB of zeros: a few KiB of gzip.
    let zeros = vec![0u8; 1 << 20];
    let image = image_of(&fx.layout, &[file("zeros", 0o644, &zeros)]);
    match unpack_with_limit(&fx.layout, &image, &fx.dest("small"), 256 << 10) {
        Err(ImageError::UnpackTooLarge { limit }) => assert_eq!(limit, 256 << 10),
        other => panic!("{other:?}"),
    }
    let out = unpack_with_limit(&fx.layout, &image, &fx.dest("enough"), 2 << 20).unwrap();
    assert_eq!((out.files, out.bytes), (1, 1 << 20));

    // A GNU long name the `tar` crate would read whole into memory.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(HEADER_LIMIT + 1024);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &vec![b'a'; (HEADER_LIMIT + 1024) as usize][..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let base = scratch(&fx.layout);
    let image = with_layer(
        &fx.layout,
        &base,
        &gzip(&tar),
        MEDIA_TYPE_LAYER_GZIP,
        OciDigest::of(&tar),
    );
    match unpack(&fx.layout, &image, &fx.dest("long-name")) {
        Err(ImageError::InvalidLayer { message, .. }) => {
            assert!(message.contains("headers"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_layers_and_destinations_are_errors() {
    let fx = Fixture::new();
    let base = scratch(&fx.layout);
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    let image = with_layer(&fx.layout, &base, b"not zstd", zstd, OciDigest::of(b""));
    let dest = fx.dest("zstd");
    match unpack(&fx.layout, &image, &dest) {
        Err(e @ ImageError::UnsupportedLayerMediaType { .. }) => {
            assert!(e.to_string().contains(zstd), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Refused before anything is written.
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);

    // Not a tar at all.
    let image = with_layer(
        &fx.layout,
        &base,
        &gzip(b"garbage"),
        MEDIA_TYPE_LAYER_GZIP,
        OciDigest::of(b"garbage"),
    );
    assert!(matches!(
        unpack(&fx.layout, &image, &fx.dest("garbage")),
        Err(ImageError::InvalidLayer { .. })
    ));

    let image = image_of(&fx.layout, &[file("f", 0o644, b"x")]);
    let full = fx.dest("full");
    fs::write(full.join("already"), b"").unwrap();
    let missing = fx.path("missing");
    for bad in [&full, &missing, &full.join("already")] {
        assert!(matches!(
            unpack(&fx.layout, &image, bad),
            Err(ImageError::UnpackDestination { .. })
        ));
    }
    assert!(!missing.exists());
    assert!(matches!(
        unpack(
            &fx.layout,
            &OciDigest::of(b"no such image"),
            &fx.dest("none")
        ),
        Err(ImageError::MissingBlob { .. })
    ));
}

#[test]
fn an_unpacked_symlink_is_never_followed_by_later_layers() {
    // Three layers: a symlink to the outside, then a directory through it, then a
    // whiteout through it. Nothing outside changes.
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"v").unwrap();
    symlink("victim", outside.join("victim-link")).unwrap();
    let o = outside.to_str().unwrap();
    let one = image_of(&fx.layout, &[symlink_entry("etc", o)]);
    let two = with_gzip_layer(&fx.layout, &one, &[file("etc/passwd", 0o644, b"root")]);
    let three = with_gzip_layer(
        &fx.layout,
        &two,
        &[whiteout("etc/.wh.victim"), whiteout("etc/.wh.victim-link")],
    );
    let dest = fx.dest("root");
    unpack(&fx.layout, &three, &dest).unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"v");
    assert!(fs::symlink_metadata(outside.join("victim-link")).is_ok());
    assert!(!outside.join("passwd").exists());
    let inside = dest.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("passwd")).unwrap(), b"root");
}

/// A 100 MB layer is unpacked in one stream: peak memory grows by far less than that.
/// Ignored by default (slow in a debug build); run it alone, since peak RSS is per
/// process: `cargo test -p cascade-image --release --test unpack -- --ignored`.
#[test]
#[ignore]
fn a_large_layer_is_unpacked_in_constant_memory() {
    let fx = Fixture::new();
    let big = fx.path("big");
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
    let built = assemble(
        &fx.layout,
        &ImageSpec {
            layers: vec![LayerSpec {
                entries: vec![LayerEntry::file("big", &big)],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let dest = fx.dest("root");
    let out = unpack(&fx.layout, &built.manifest_digest, &dest).unwrap();
    let grown_mib = (peak_rss_kib() - before) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB for a 100 MiB layer");
    assert_eq!(out.bytes, 100 << 20);
    assert_eq!(
        fs::metadata(dest.join("big")).unwrap().len(),
        fs::metadata(&big).unwrap().len()
    );
    assert!(grown_mib < 32, "peak memory grew by {grown_mib} MiB");
}

fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
