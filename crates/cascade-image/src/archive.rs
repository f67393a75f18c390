//! `export_archive`: one image as a single tar that is both an OCI layout (for
//! `skopeo copy oci-archive:…`, containerd) and a Docker archive (`manifest.json`, for
//! `docker load`, which reads gzip layers).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::digest::ExactReader;
use crate::image::read_image;
use crate::layer::base_header;
use crate::layout::{check_ref_name, parent_dir, persist, temp_file_in, OCI_LAYOUT_JSON};
use crate::model::{
    to_canonical_json, Descriptor, DockerManifestEntry, Index, ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME, MEDIA_TYPE_MANIFEST,
};
use crate::{ImageError, OciDigest, OciLayout};

/// Every entry of the archive has this mtime: the archive is a container of blobs, and
/// its entries' times mean nothing.
const ARCHIVE_MTIME: u64 = 0;

/// Writes the image `manifest_digest` of `layout` to `out` as one tar named `reference`
/// (`name:tag`, e.g. `services:main-1a2b3c4`).
///
/// The tar holds, sorted by path: `blobs/`, `blobs/sha256/`, exactly the image's blobs
/// (manifest, config, layers), `index.json` (one manifest, annotated with the tag as
/// `org.opencontainers.image.ref.name` and the full name as `io.containerd.image.name`),
/// `manifest.json` (Docker's) and `oci-layout`. mtime 0, uid/gid 0, files 0644,
/// directories 0755. Every blob is re-hashed as it is copied; the archive is written to
/// a temp file beside `out` and renamed over it only when complete.
pub fn export_archive(
    layout: &OciLayout,
    manifest_digest: &OciDigest,
    reference: &str,
    out: &Path,
) -> Result<(), ImageError> {
    let (full_name, tag) = split_reference(reference)?;
    let (manifest, _, _) = read_image(layout, manifest_digest)?;
    let manifest_size = fs::metadata(layout.blob_path(manifest_digest))
        .map_err(ImageError::io(layout.blob_path(manifest_digest)))?
        .len();

    // A foreign layer (with `urls`) is not in the layout, so it cannot be exported.
    if let Some(l) = manifest.layers.iter().find(|l| !l.urls.is_empty()) {
        return Err(ImageError::MissingBlob {
            digest: l.digest,
            path: layout.blob_path(&l.digest),
        });
    }
    // Sorted by digest = by path; a layer used twice is stored once.
    let mut blobs: BTreeSet<(OciDigest, u64)> = BTreeSet::new();
    blobs.insert((*manifest_digest, manifest_size));
    blobs.insert((manifest.config.digest, manifest.config.size));
    for l in &manifest.layers {
        blobs.insert((l.digest, l.size));
    }

    let mut index_desc = Descriptor::new(MEDIA_TYPE_MANIFEST, *manifest_digest, manifest_size);
    index_desc
        .annotations
        .insert(ANNOTATION_CONTAINERD_NAME.to_string(), full_name.clone());
    index_desc
        .annotations
        .insert(ANNOTATION_REF_NAME.to_string(), tag);
    let index_json = to_canonical_json(&Index::new(vec![index_desc]))?;
    let blob_name = |d: &OciDigest| format!("blobs/sha256/{}", d.hex());
    let docker_manifest = to_canonical_json(&[DockerManifestEntry {
        config: blob_name(&manifest.config.digest),
        repo_tags: vec![full_name],
        layers: manifest
            .layers
            .iter()
            .map(|l| blob_name(&l.digest))
            .collect(),
    }])?;

    let dir = parent_dir(out);
    fs::create_dir_all(dir).map_err(ImageError::io(dir))?;
    let tmp = temp_file_in(dir)?;
    let tmp_path = tmp.path().to_path_buf();
    let io_err = ImageError::io(&tmp_path);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(64 * 1024, tmp.as_file()));

    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = base_header(tar::EntryType::Directory, 0o755, ARCHIVE_MTIME, 0);
        tar.append_data(&mut h, d, io::empty()).map_err(&io_err)?;
    }
    for (digest, size) in &blobs {
        append_blob(&mut tar, layout, digest, *size)?;
    }
    for (name, bytes) in [
        ("index.json", &index_json[..]),
        ("manifest.json", &docker_manifest[..]),
        ("oci-layout", OCI_LAYOUT_JSON),
    ] {
        let mut h = base_header(
            tar::EntryType::Regular,
            0o644,
            ARCHIVE_MTIME,
            bytes.len() as u64,
        );
        tar.append_data(&mut h, name, bytes).map_err(&io_err)?;
    }
    let mut w = tar.into_inner().map_err(&io_err)?;
    w.flush().map_err(&io_err)?;
    drop(w);
    persist(tmp, out)
}

/// Streams one blob into the archive, checking its size before and its digest after.
fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    layout: &OciLayout,
    digest: &OciDigest,
    size: u64,
) -> Result<(), ImageError> {
    let path = layout.blob_path(digest);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingBlob {
                digest: *digest,
                path,
            })
        }
        Err(e) => return Err(ImageError::Io { path, source: e }),
    };
    let actual_size = file.metadata().map_err(ImageError::io(&path))?.len();
    if actual_size != size {
        return Err(ImageError::InvalidImage {
            path,
            reason: "the blob's size differs from its descriptor",
        });
    }
    let mut h = base_header(tar::EntryType::Regular, 0o644, ARCHIVE_MTIME, size);
    let mut reader = ExactReader::new(io::BufReader::with_capacity(64 * 1024, file), size);
    tar.append_data(
        &mut h,
        format!("blobs/sha256/{}", digest.hex()),
        &mut reader,
    )
    .map_err(ImageError::io(&path))?;
    let actual = reader.digest();
    if actual != *digest {
        return Err(ImageError::CorruptBlob {
            path,
            expected: *digest,
            actual,
        });
    }
    Ok(())
}

/// `name:tag` → (`name:tag`, `tag`). The name follows Docker's reference grammar loosely
/// (lowercase; a registry host may have a port); a digest reference is not a tag.
pub(crate) fn split_reference(reference: &str) -> Result<(String, String), ImageError> {
    let bad = |reason: &'static str| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    if reference.contains('@') {
        return Err(bad("a digest reference cannot name an image in an archive"));
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let Some(colon) = reference[last_slash..].rfind(':').map(|i| i + last_slash) else {
        return Err(bad("it has no `:tag`"));
    };
    let (name, tag) = (&reference[..colon], &reference[colon + 1..]);
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(bad(
            "the tag must be 1-128 of `A-Za-z0-9_.-`, not starting with `.` or `-`",
        ));
    }
    for (i, component) in name.split('/').enumerate() {
        // The first of several components may be a registry host (`host:5000`).
        let host = i == 0 && name.contains('/');
        let ok = !component.is_empty()
            && component
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && component
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && component.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b"._-".contains(&b)
                    || (host && (b == b':' || b.is_ascii_uppercase()))
            });
        if !ok {
            return Err(bad(
                "the name must be lowercase `a-z0-9._-` components separated by `/`",
            ));
        }
    }
    check_ref_name(reference)?;
    Ok((reference.to_string(), tag.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(
            split_reference("services:main-1a2b3c4").unwrap(),
            ("services:main-1a2b3c4".into(), "main-1a2b3c4".into())
        );
        assert_eq!(
            split_reference("localhost:5000/team/api:v1.2").unwrap().1,
            "v1.2"
        );
        for bad in [
            "services",
            "localhost:5000/services",
            "Services:x",
            "services:",
            "services:-x",
            "a@sha256:00",
            ":tag",
            "a//b:t",
        ] {
            assert!(split_reference(bad).is_err(), "{bad}");
        }
    }
}
