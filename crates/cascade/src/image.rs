//! [IO] image: a node's outputs as an OCI image in the store's image layout.
//!
//! An image is keyed like a node: its *image key* covers the image declaration, the
//! node's output digest, the base image's manifest digest, the annotations (repository,
//! SOURCE_DATE_EPOCH, and the commit and version where stamped) and the platform, so an unchanged image is
//! found in the store (`images/`) instead of being assembled again. Assembly is
//! deterministic (cascade-image), so the key only saves work: it never decides bytes.

use std::collections::BTreeMap;
use std::path::Path;

use cascade_core::{Digest, Encoder, OutputDigest};
use cascade_image::{
    assemble, entries_from_dir, Base, ConfigSpec, ImageError, ImageSpec, IndexEntry, LayerSpec,
    OciDigest, OciLayout, Platform,
};
use cascade_manifest::{Environment, ImageBase, ImageDecl, Mode, Rev, Stamp};
use cascade_store::{remove_tree, Store, StoreError};

use crate::build::Node;

/// Bump when what cascade feeds cascade-image changes (layer mapping, annotations), so
/// old image records are not reused for a different image.
const IMAGE_KEY_VERSION: u64 = 1;

/// A built image: where it is tagged and what it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageRef {
    /// `[registry/]component:tag`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The manifest digest (`sha256:…`): the image's identity everywhere.
    pub digest: OciDigest,
}

/// Why an image could not be made.
#[derive(Debug)]
pub(crate) enum ImageFailure {
    /// The outputs do not have what the image declares (a layer source is missing).
    Output(String),
    /// The store, the disk, a base image missing from the store.
    Environment(String),
}

impl From<StoreError> for ImageFailure {
    fn from(e: StoreError) -> Self {
        ImageFailure::Environment(e.to_string())
    }
}

impl From<ImageError> for ImageFailure {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::SourceMissing { .. } => ImageFailure::Output(e.to_string()),
            e => ImageFailure::Environment(e.to_string()),
        }
    }
}

/// What is wrong with a node's outputs for its image, named by the paths the recipe
/// uses (`out/bin/x`), not by the temporary directory they were materialized in.
fn output_problem(e: ImageError, out: &Path) -> ImageFailure {
    let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).to_path_buf();
    match e {
        ImageError::SymlinkEscapes { path, target } => ImageFailure::Output(
            ImageError::SymlinkEscapes {
                path: rel(&path),
                target,
            }
            .to_string(),
        ),
        ImageError::UnsupportedFileType { path } => {
            ImageFailure::Output(ImageError::UnsupportedFileType { path: rel(&path) }.to_string())
        }
        ImageError::NonUtf8Path { path } => {
            ImageFailure::Output(ImageError::NonUtf8Path { path: rel(&path) }.to_string())
        }
        ImageError::SourceMissing { path } => {
            ImageFailure::Output(ImageError::SourceMissing { path: rel(&path) }.to_string())
        }
        e => e.into(),
    }
}

/// The platform of the images this machine builds (its own: steps run on the host).
pub fn platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// `[registry/]component:tag`, the tag from the environment's `tag:` template (default
/// `{ref}-{short_sha}` in branch mode, `{version}` in version mode), made a valid tag:
/// characters outside `[A-Za-z0-9.-]` become `-`, at most 128 characters.
pub fn reference(env: &Environment, node: &Node<'_>) -> String {
    let c = node.component;
    let s = &node.pinned.source;
    let default = match env.mode {
        Mode::Branch => "{ref}-{short_sha}",
        Mode::Version => "{version}",
    };
    let template = env.tag.as_deref().unwrap_or(default);
    let r = match &c.source.rev {
        // A ref that is a full SHA (a promoted environment pins commits) reads as its
        // short form: the default tag is then `<short sha>-<short sha>`, not 48 characters.
        Rev::Ref(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
            r[..7].to_string()
        }
        Rev::Ref(r) => r.clone(),
        Rev::Version(v) => v.to_string(),
    };
    let tag = template
        .replace("{ref}", &r)
        .replace("{short_sha}", &s.commit[..s.commit.len().min(7)])
        .replace("{sha}", &s.commit)
        .replace("{version}", &s.version.to_string())
        .replace("{component}", &c.name);
    let mut tag: String = tag
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    // A tag starts with an alphanumeric, and separators do not repeat.
    while tag.contains("--") {
        tag = tag.replace("--", "-");
    }
    let tag = tag.trim_matches(|ch| ch == '-' || ch == '.');
    let tag: String = tag.chars().take(128).collect();
    let tag = if tag.is_empty() { "latest".into() } else { tag };
    match &env.registry {
        Some(reg) => format!("{}/{}:{tag}", reg.trim_end_matches('/'), c.name),
        None => format!("{}:{tag}", c.name),
    }
}

/// The annotations cascade puts on every image: where it came from, never the clock.
/// The commit and the version only where the steps saw them (key format 1, or stamped),
/// so an image whose content did not change is the same image at a new commit.
fn annotations(node: &Node<'_>) -> Result<BTreeMap<String, String>, ImageError> {
    let s = &node.pinned.source;
    let mut a = BTreeMap::new();
    a.insert(
        "org.opencontainers.image.created".to_string(),
        cascade_image::rfc3339(node.epoch().max(0))?,
    );
    if node.stamps(Stamp::Commit) {
        a.insert(
            "org.opencontainers.image.revision".to_string(),
            s.commit.clone(),
        );
    }
    a.insert(
        "org.opencontainers.image.source".to_string(),
        node.component.source.repo.clone(),
    );
    a.insert(
        "org.opencontainers.image.title".to_string(),
        node.component.name.clone(),
    );
    if node.stamps(Stamp::Version) {
        a.insert(
            "org.opencontainers.image.version".to_string(),
            s.version.to_string(),
        );
    }
    Ok(a)
}

fn image_key(
    decl: &ImageDecl,
    output: &OutputDigest,
    base: Option<&OciDigest>,
    annotations: &BTreeMap<String, String>,
    epoch: i64,
    platform: &Platform,
) -> Digest {
    let mut e = Encoder::new("cascade/image-key", IMAGE_KEY_VERSION);
    e.bytes(1, &decl.digest().0)
        .bytes(2, &output.0 .0)
        .opt_str(3, base.map(|b| b.to_string()).as_deref())
        .map(4, annotations)
        .u64(5, epoch.max(0) as u64)
        .str(6, &platform.architecture)
        .str(7, &platform.os);
    Digest::of(e.as_bytes())
}

/// What an image is before it is made: its base, annotations, epoch, platform and key.
struct ImagePlan {
    base: Option<OciDigest>,
    annotations: BTreeMap<String, String>,
    epoch: i64,
    platform: Platform,
    key: Digest,
}

fn plan_image(
    layout: &OciLayout,
    node: &Node<'_>,
    decl: &ImageDecl,
    output: &OutputDigest,
    base: Option<&OciDigest>,
) -> Result<ImagePlan, ImageFailure> {
    let base = match &decl.base {
        ImageBase::Scratch => None,
        ImageBase::Component(name) => Some(*base.ok_or_else(|| {
            ImageFailure::Environment(format!("the base image `{name}` was not built"))
        })?),
        ImageBase::Pinned { name, digest } => {
            let d: OciDigest = digest.parse().map_err(|_| {
                ImageFailure::Environment(format!("`{name}@{digest}` is not a valid digest"))
            })?;
            if !layout.has_blob(&d) {
                return Err(ImageFailure::Environment(format!(
                    "the base image `{name}@{digest}` is not in the store; import it with `skopeo copy docker://{name}@{digest} oci:{}:{name}`",
                    layout.root().display()
                )));
            }
            Some(d)
        }
    };
    let annotations = annotations(node)?;
    let epoch = node.epoch().max(0);
    let platform = platform();
    let key = image_key(decl, output, base.as_ref(), &annotations, epoch, &platform);
    Ok(ImagePlan {
        base,
        annotations,
        epoch,
        platform,
        key,
    })
}

/// The manifest digest the image cache records for this image key, when the image is
/// complete in the layout.
fn recorded(store: &Store, layout: &OciLayout, key: &Digest) -> Option<OciDigest> {
    let d = store.get_image(key).ok()??.parse::<OciDigest>().ok()?;
    layout.image_blobs(&d).is_ok().then_some(d)
}

/// The node's image if the store has it already (for `plan`, which makes nothing).
pub(crate) fn cached_image(
    store: &Store,
    layout: &OciLayout,
    node: &Node<'_>,
    decl: &ImageDecl,
    output: &OutputDigest,
    base: Option<&OciDigest>,
) -> Option<OciDigest> {
    let plan = plan_image(layout, node, decl, output, base).ok()?;
    recorded(store, layout, &plan.key)
}

/// The node's image: found by image key, or assembled from its output. `base` is the
/// manifest digest of the base component's image, when the base is a component.
pub(crate) fn build_image(
    store: &Store,
    layout: &OciLayout,
    node: &Node<'_>,
    decl: &ImageDecl,
    output: &OutputDigest,
    base: Option<&OciDigest>,
) -> Result<ImageRef, ImageFailure> {
    let reference = node
        .reference
        .clone()
        .unwrap_or_else(|| format!("{}:latest", node.component.name));
    let plan = plan_image(layout, node, decl, output, base)?;
    if let Some(digest) = recorded(store, layout, &plan.key) {
        return Ok(ImageRef { reference, digest });
    }

    // The layers are made from the output as materialized (every blob verified on the
    // way), in a scratch directory on the store's disk.
    let tmp = store.temp_dir()?;
    let result = assemble_from(store, layout, decl, output, &plan, tmp.path());
    let _ = remove_tree(tmp.path());
    let built = result?;
    store.put_image(&plan.key, &built.to_string())?;
    Ok(ImageRef {
        reference,
        digest: built,
    })
}

/// Assembles the image `plan` describes from the layers `decl` takes from `output`,
/// materialized under `tmp`.
fn assemble_from(
    store: &Store,
    layout: &OciLayout,
    decl: &ImageDecl,
    output: &OutputDigest,
    plan: &ImagePlan,
    tmp: &Path,
) -> Result<OciDigest, ImageFailure> {
    let out = tmp.join("out");
    std::fs::create_dir(&out).map_err(|e| {
        ImageFailure::Environment(format!("could not create `{}`: {e}", out.display()))
    })?;
    store.materialize(output, &out)?;
    let mut layers = Vec::new();
    for l in &decl.layers {
        let entries = entries_from_dir(&out.join(&l.from), &l.to, l.mode)
            .map_err(|e| output_problem(e, &out))?;
        layers.push(LayerSpec {
            entries,
            created_by: format!("cascade: {} → {}", l.from, l.to),
            comment: None,
        });
    }
    let spec = ImageSpec {
        base: plan.base.map_or(Base::Scratch, Base::Layout),
        platform: plan.platform.clone(),
        config: ConfigSpec {
            entrypoint: decl.entrypoint.clone(),
            cmd: decl.cmd.clone(),
            env: decl.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: decl.workdir.clone(),
            exposed_ports: decl.ports.iter().map(|p| format!("{p}/tcp")).collect(),
            user: decl.user.clone(),
            labels: decl.labels.clone(),
        },
        layers,
        annotations: plan.annotations.clone(),
        source_date_epoch: plan.epoch,
    };
    Ok(assemble(layout, &spec)?.manifest_digest)
}

/// Names this build's images in the layout's `index.json` (for `skopeo inspect
/// oci:<store>/oci:<ref>` and `cascade image export`).
pub(crate) fn index_images(layout: &OciLayout, images: &[ImageRef]) -> Result<(), ImageError> {
    let mut entries = Vec::new();
    for i in images {
        let size = std::fs::metadata(layout.blob_path(&i.digest))
            .map_err(|e| ImageError::Io {
                path: layout.blob_path(&i.digest),
                source: e,
            })?
            .len();
        entries.push(IndexEntry {
            manifest: cascade_image::Descriptor::new(
                cascade_image::MEDIA_TYPE_MANIFEST,
                i.digest,
                size,
            ),
            ref_name: i.reference.clone(),
        });
    }
    layout.add_to_index(&entries)
}

/// `cascade image export`: writes the image that a lockfile (the environment's newest,
/// or `lock`) records for `component` as an OCI archive at `out`, from the store.
pub fn export_image(
    project: &Path,
    env: &str,
    store: &Path,
    component: &str,
    lock: Option<&Path>,
    out: &Path,
) -> Result<ImageRef, crate::Error> {
    use crate::Error;
    let (path, shown) = match lock {
        Some(l) => (l.to_path_buf(), l.display().to_string()),
        None => {
            let p = crate::newest_lockfile(project, env).ok_or_else(|| Error::NoLockfile {
                env: env.to_string(),
            })?;
            let shown = p.strip_prefix(project).unwrap_or(&p).display().to_string();
            (p, shown)
        }
    };
    let lockfile = crate::read_lockfile(&path, &shown)?;
    let node = lockfile
        .nodes
        .get(component)
        .ok_or_else(|| Error::UnknownComponent {
            name: component.to_string(),
            env: lockfile.environment.clone(),
            help: format!("`{shown}` has {}", names(lockfile.nodes.keys())),
        })?;
    let image = node.image.as_ref().ok_or_else(|| Error::NoImage {
        component: component.to_string(),
        lockfile: shown.clone(),
    })?;
    let digest: OciDigest = image.digest.parse().map_err(Error::Image)?;
    let store = Store::open(store)?;
    let layout = OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?;
    cascade_image::export_archive(&layout, &digest, &image.reference, out).map_err(Error::Image)?;
    Ok(ImageRef {
        reference: image.reference.clone(),
        digest,
    })
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "no components".to_string()
    } else {
        v.join(", ")
    }
}
