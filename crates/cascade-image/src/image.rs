//! `assemble`: layers + config + manifest, on top of `scratch` or a base image already in
//! the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::layer::{write_layer, LayerEntry};
use crate::model::{
    to_canonical_json, Descriptor, Empty, ExecConfig, History, ImageConfig, Manifest, RootFs,
    ANNOTATION_CREATED, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST,
};
use crate::{ImageError, OciDigest, OciLayout};

/// The base image's manifest digest, recorded on images built on one.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// What to build. Everything that reaches a digest is in here; nothing is read from the
/// clock or the environment.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    pub base: Base,
    pub platform: Platform,
    pub config: ConfigSpec,
    /// New layers, bottom first, on top of the base's.
    pub layers: Vec<LayerSpec>,
    /// The manifest's annotations. `org.opencontainers.image.created` is added from
    /// `source_date_epoch` and `org.opencontainers.image.base.digest` from the base,
    /// unless given here.
    pub annotations: BTreeMap<String, String>,
    /// SOURCE_DATE_EPOCH: every mtime and `created` timestamp. Must be ≥ 0.
    pub source_date_epoch: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Base {
    /// No base: the image is only its own layers.
    #[default]
    Scratch,
    /// An image already in the same layout, by manifest digest.
    Layout(OciDigest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

/// The runtime config. `None` (or empty) inherits the base's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSpec {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `NAME=value`, in the order given (it is user-visible). Appended to the base's
    /// env; a name the base already has is replaced in place.
    pub env: Vec<String>,
    /// Absolute.
    pub working_dir: Option<String>,
    /// `8080`, `8080/tcp`, `53/udp`; `8080` means `8080/tcp`. Added to the base's.
    pub exposed_ports: BTreeSet<String>,
    pub user: Option<String>,
    /// Merged over the base's labels.
    pub labels: BTreeMap<String, String>,
}

/// One new layer and its history entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSpec {
    pub entries: Vec<LayerEntry>,
    /// The history entry's `created_by` (e.g. `cascade: outputs of services`).
    pub created_by: String,
    pub comment: Option<String>,
}

/// What `assemble` wrote. Every blob named here is in the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageBuilt {
    pub manifest_digest: OciDigest,
    pub manifest_size: u64,
    pub config_digest: OciDigest,
    pub config_size: u64,
    /// All layers, the base's first.
    pub layers: Vec<Descriptor>,
    /// The uncompressed digests of `layers`, in the same order.
    pub diff_ids: Vec<OciDigest>,
}

impl ImageBuilt {
    /// The manifest's descriptor, for `OciLayout::write_index`.
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::new(
            MEDIA_TYPE_MANIFEST,
            self.manifest_digest,
            self.manifest_size,
        )
    }
}

/// `epoch` as RFC 3339 in UTC without fractional seconds (`2023-11-14T22:13:20Z`).
pub fn rfc3339(epoch: i64) -> Result<String, ImageError> {
    let bad = || ImageError::InvalidEpoch { epoch };
    if epoch < 0 {
        return Err(bad());
    }
    let t = time::OffsetDateTime::from_unix_timestamp(epoch).map_err(|_| bad())?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).map_err(|_| bad())
}

/// Builds the image described by `spec` into `layout`: writes its new layers, its
/// config and its manifest as blobs. Does not touch `index.json` (see
/// `OciLayout::write_index`).
pub fn assemble(layout: &OciLayout, spec: &ImageSpec) -> Result<ImageBuilt, ImageError> {
    // Everything cheap is checked before any layer is written.
    let created = rfc3339(spec.source_date_epoch)?;
    let (base_manifest, base_config) = match &spec.base {
        Base::Scratch => (None, ImageConfig::default()),
        Base::Layout(d) => {
            let (m, c) = read_base(layout, d)?;
            if c.architecture != spec.platform.architecture
                || c.os != spec.platform.os
                || (spec.platform.variant.is_some() && c.variant != spec.platform.variant)
            {
                return Err(ImageError::PlatformMismatch {
                    base: format!("{}/{}", c.os, c.architecture),
                    wanted: format!("{}/{}", spec.platform.os, spec.platform.architecture),
                });
            }
            (Some(m), c)
        }
    };
    let exec = merge_config(base_config.config, &spec.config)?;

    let mut layers = base_manifest
        .as_ref()
        .map(|m| m.layers.clone())
        .unwrap_or_default();
    let mut diff_ids = base_config.rootfs.diff_ids;
    let mut history = base_config.history;
    for l in &spec.layers {
        let built = write_layer(layout, &l.entries, spec.source_date_epoch)?;
        layers.push(built.descriptor);
        diff_ids.push(built.diff_id);
        history.push(History {
            created: Some(created.clone()),
            created_by: Some(l.created_by.clone()).filter(|s| !s.is_empty()),
            author: None,
            comment: l.comment.clone(),
            empty_layer: false,
        });
    }

    let config = ImageConfig {
        created: Some(created.clone()),
        author: None,
        architecture: spec.platform.architecture.clone(),
        os: spec.platform.os.clone(),
        // Properties of the base's OS (e.g. a Windows build number): inherited.
        os_version: base_config.os_version,
        os_features: base_config.os_features,
        // A base's variant (e.g. arm64 `v8`) is kept unless one is given.
        variant: spec.platform.variant.clone().or(base_config.variant),
        config: exec,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: diff_ids.clone(),
        },
        history,
    };
    let config_bytes = to_canonical_json(&config)?;
    let config_digest = layout.put_blob_bytes(&config_bytes)?;

    let mut annotations = spec.annotations.clone();
    annotations
        .entry(ANNOTATION_CREATED.to_string())
        .or_insert(created);
    if let Base::Layout(d) = &spec.base {
        annotations
            .entry(ANNOTATION_BASE_DIGEST.to_string())
            .or_insert_with(|| d.to_string());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_string()),
        config: Descriptor::new(MEDIA_TYPE_CONFIG, config_digest, config_bytes.len() as u64),
        layers: layers.clone(),
        annotations,
    };
    let manifest_bytes = to_canonical_json(&manifest)?;
    let manifest_digest = layout.put_blob_bytes(&manifest_bytes)?;

    Ok(ImageBuilt {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        config_size: config_bytes.len() as u64,
        layers,
        diff_ids,
    })
}

impl OciLayout {
    /// Every blob of the image whose manifest is `manifest`: the manifest, its config and
    /// its layers, after checking that the image is complete in this layout.
    pub fn image_blobs(&self, manifest: &OciDigest) -> Result<Vec<OciDigest>, ImageError> {
        let (m, _, _) = read_image(self, manifest)?;
        let mut out = vec![*manifest, m.config.digest];
        out.extend(m.layers.iter().map(|l| l.digest));
        Ok(out)
    }

    /// What a container of the image whose manifest is `manifest` runs, for runners that
    /// start images without an engine (cascade's sandbox).
    pub fn run_config(&self, manifest: &OciDigest) -> Result<RunConfig, ImageError> {
        let c = read_image(self, manifest)?.1.config;
        Ok(RunConfig {
            env: c.env,
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir,
        })
    }

    /// The digest of the config of the image whose manifest is `manifest`, after the
    /// same checks: what Docker's classic image store names the image by (its id).
    pub fn config_digest(&self, manifest: &OciDigest) -> Result<OciDigest, ImageError> {
        Ok(read_image(self, manifest)?.0.config.digest)
    }
}

/// The runtime part of an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `NAME=value`, in the image's order.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Empty: `/`.
    pub working_dir: String,
}

/// Reads and checks an image manifest and its config from the layout: media types,
/// one diff_id per layer, every layer blob present.
pub(crate) fn read_image(
    layout: &OciLayout,
    digest: &OciDigest,
) -> Result<(Manifest, ImageConfig, Vec<u8>), ImageError> {
    let path = layout.blob_path(digest);
    let manifest: Manifest = parse_json(&layout.read_blob(digest)?, &path, "image manifest")?;
    if manifest.schema_version != 2
        || manifest
            .media_type
            .as_deref()
            .is_some_and(|t| t != MEDIA_TYPE_MANIFEST)
    {
        return Err(ImageError::UnsupportedMediaType {
            path,
            media_type: manifest.media_type.unwrap_or_default(),
        });
    }
    if manifest.config.media_type != MEDIA_TYPE_CONFIG {
        return Err(ImageError::UnsupportedMediaType {
            path,
            media_type: manifest.config.media_type,
        });
    }
    let config_path = layout.blob_path(&manifest.config.digest);
    let config_bytes = layout.read_blob(&manifest.config.digest)?;
    if config_bytes.len() as u64 != manifest.config.size {
        return Err(ImageError::InvalidImage {
            path: config_path,
            reason: "its size differs from the manifest's descriptor",
        });
    }
    let config: ImageConfig = parse_json(&config_bytes, &config_path, "image config")?;
    if config.rootfs.kind != "layers" {
        return Err(ImageError::InvalidImage {
            path: config_path,
            reason: "its `rootfs.type` is not `layers`",
        });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::InvalidImage {
            path: config_path,
            reason: "its diff_ids do not match the manifest's layers one to one",
        });
    }
    for l in manifest.layers.iter().filter(|l| l.urls.is_empty()) {
        if !layout.has_blob_of_size(&l.digest, l.size) {
            return Err(ImageError::MissingBlob {
                digest: l.digest,
                path: layout.blob_path(&l.digest),
            });
        }
    }
    Ok((manifest, config, config_bytes))
}

fn read_base(
    layout: &OciLayout,
    digest: &OciDigest,
) -> Result<(Manifest, ImageConfig), ImageError> {
    let (m, c, _) = read_image(layout, digest)?;
    Ok((m, c))
}

fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    path: &std::path::Path,
    what: &'static str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidJson {
        path: PathBuf::from(path),
        what,
        message: e.to_string(),
    })
}

fn merge_config(mut base: ExecConfig, spec: &ConfigSpec) -> Result<ExecConfig, ImageError> {
    let bad = |field: &'static str, value: &str, reason: &'static str| ImageError::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    };
    if let Some(e) = &spec.entrypoint {
        base.entrypoint = e.clone();
    }
    if let Some(c) = &spec.cmd {
        base.cmd = c.clone();
    }
    for var in &spec.env {
        let name = match var.split_once('=') {
            Some((name, _)) if !name.is_empty() => name,
            _ => return Err(bad("Env", var, "must be `NAME=value`")),
        };
        // Docker's ENV semantics: a redefined variable keeps its place.
        let existing = base
            .env
            .iter()
            .position(|v| v.split_once('=').map_or(v.as_str(), |(n, _)| n) == name);
        match existing {
            Some(i) => base.env[i] = var.clone(),
            None => base.env.push(var.clone()),
        }
    }
    if let Some(w) = &spec.working_dir {
        if !w.starts_with('/') {
            return Err(bad("WorkingDir", w, "must be an absolute path"));
        }
        base.working_dir = w.clone();
    }
    for p in &spec.exposed_ports {
        let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
        let port_ok = port.parse::<u16>().is_ok_and(|n| n > 0) && !port.starts_with('0');
        if !port_ok || !["tcp", "udp", "sctp"].contains(&proto) {
            return Err(bad(
                "ExposedPorts",
                p,
                "must be `PORT` or `PORT/tcp|udp|sctp` with PORT in 1-65535",
            ));
        }
        base.exposed_ports
            .insert(format!("{port}/{proto}"), Empty {});
    }
    if let Some(u) = &spec.user {
        base.user = u.clone();
    }
    for (k, v) in &spec.labels {
        base.labels.insert(k.clone(), v.clone());
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_without_fractions() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert!(rfc3339(-1).is_err());
        assert!(rfc3339(i64::MAX).is_err());
    }

    #[test]
    fn env_keeps_order_and_overrides_in_place() {
        let base = ExecConfig {
            env: vec!["PATH=/bin".into(), "A=1".into(), "ODD".into()],
            ..Default::default()
        };
        let spec = ConfigSpec {
            env: vec!["Z=last".into(), "A=2".into(), "B=x=y".into()],
            ..Default::default()
        };
        let c = merge_config(base, &spec).unwrap();
        assert_eq!(c.env, ["PATH=/bin", "A=2", "ODD", "Z=last", "B=x=y"]);

        for bad in ["NOEQ", "=x"] {
            let spec = ConfigSpec {
                env: vec![bad.into()],
                ..Default::default()
            };
            assert!(merge_config(ExecConfig::default(), &spec).is_err());
        }
    }

    #[test]
    fn ports_are_normalized_and_checked() {
        let spec = ConfigSpec {
            exposed_ports: ["8080".into(), "53/udp".into()].into(),
            ..Default::default()
        };
        let c = merge_config(ExecConfig::default(), &spec).unwrap();
        assert_eq!(
            c.exposed_ports.keys().collect::<Vec<_>>(),
            ["53/udp", "8080/tcp"]
        );
        for bad in ["0", "65536", "80/http", "x", "080"] {
            let spec = ConfigSpec {
                exposed_ports: [bad.to_string()].into(),
                ..Default::default()
            };
            assert!(merge_config(ExecConfig::default(), &spec).is_err(), "{bad}");
        }
    }
}
