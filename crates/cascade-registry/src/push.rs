//! `Client::push`: blobs, then the manifest by digest, then the tags.

use std::path::Path;

use cascade_image::{Descriptor, ImageError, OciLayout, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

use crate::client::{encode_query_value, header, push_scope, Client, Method, Req, ReqBody, Step};
use crate::reference::check_tag;
use crate::{OciDigest, RegistryError};

const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs sent, and their total size.
    pub blobs_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Blobs the registry already had.
    pub blobs_skipped: usize,
    pub manifest: OciDigest,
    /// The tags that now name `manifest`, in the order given.
    pub tags: Vec<String>,
}

/// The part of an image manifest a push needs.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<serde_json::Value>,
}

impl Client {
    /// Pushes the image whose manifest is `manifest` in `layout` to `repository`, then
    /// points each of `tags` at it. Blobs the registry has are not sent again; a tag is
    /// written only after everything it names is in place.
    pub fn push(
        &self,
        layout: &OciLayout,
        manifest: &OciDigest,
        repository: &str,
        tags: &[String],
    ) -> Result<PushReport, RegistryError> {
        // Every name is checked before the first request.
        self.check_name(repository)?;
        for t in tags {
            check_tag(t).map_err(|reason| RegistryError::InvalidReference {
                reference: format!("{}/{repository}:{t}", self.registry()),
                reason: reason.to_string(),
            })?;
        }
        // Read and verified against its digest: what we send is what we name.
        let bytes = layout.read_blob(manifest)?;
        let unsupported = |reason: String| RegistryError::UnsupportedManifest {
            digest: *manifest,
            reason,
        };
        let doc: ManifestDoc = serde_json::from_slice(&bytes)
            .map_err(|e| unsupported(format!("it is not an image manifest ({e})")))?;
        let media_type = doc
            .media_type
            .clone()
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
        if media_type == MEDIA_TYPE_INDEX
            || media_type == MEDIA_TYPE_DOCKER_LIST
            || doc.manifests.is_some()
        {
            return Err(unsupported(
                "it is an image index (multi-platform), which is not supported yet".into(),
            ));
        }
        if media_type != MEDIA_TYPE_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
            return Err(unsupported(format!("its media type is `{media_type}`")));
        }
        let Some(config) = doc.config else {
            return Err(unsupported("it has no `config`".into()));
        };

        // Config first, then layers; each blob once, even if listed twice.
        let mut blobs: Vec<&Descriptor> = Vec::new();
        for d in std::iter::once(&config).chain(&doc.layers) {
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d);
            }
        }
        let scope = push_scope(repository);
        let mut report = PushReport {
            blobs_uploaded: 0,
            bytes_uploaded: 0,
            blobs_skipped: 0,
            manifest: *manifest,
            tags: Vec::new(),
        };
        for d in blobs {
            let path = layout.blob_path(&d.digest);
            let local_size = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Some(m.len()),
                _ => None,
            };
            // A foreign layer (one with `urls`) lives elsewhere and may be absent here.
            if local_size.is_none() && !d.urls.is_empty() {
                report.blobs_skipped += 1;
                continue;
            }
            let Some(local_size) = local_size else {
                return Err(ImageError::MissingBlob {
                    digest: d.digest,
                    path,
                }
                .into());
            };
            if local_size != d.size {
                return Err(RegistryError::LocalBlobSize {
                    path,
                    expected: d.size,
                    actual: local_size,
                });
            }
            if self.blob_exists(repository, &d.digest, scope.clone())? {
                report.blobs_skipped += 1;
            } else {
                self.upload_blob(repository, &d.digest, &path, &scope)?;
                report.blobs_uploaded += 1;
                report.bytes_uploaded += d.size;
            }
        }

        // By digest first: the content is complete before any tag names it.
        self.put_manifest(
            repository,
            &manifest.to_string(),
            &media_type,
            &bytes,
            manifest,
            &scope,
        )?;
        for t in tags {
            self.put_manifest(repository, t, &media_type, &bytes, manifest, &scope)?;
            report.tags.push(t.clone());
        }
        Ok(report)
    }

    /// `POST` an upload session, then one monolithic `PUT ?digest=` with the file.
    ///
    /// A failed `PUT` is retried on a new session: the registry may have appended part
    /// of the body to the old one, so sending it there again would corrupt the upload.
    fn upload_blob(
        &self,
        repository: &str,
        digest: &OciDigest,
        path: &Path,
        scope: &str,
    ) -> Result<(), RegistryError> {
        let mut failures = 0u32;
        loop {
            let location = self.start_upload(repository, scope)?;
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = Req {
                method: Method::Put,
                url: format!(
                    "{location}{sep}digest={}",
                    encode_query_value(&digest.to_string())
                ),
                what: format!("the upload of blob `{digest}` to `{repository}`"),
                headers: vec![("Content-Type", "application/octet-stream".into())],
                body: ReqBody::File(path),
                // Retried here, on a new session, instead.
                retries: 0,
                ..self.req(Method::Put, String::new(), scope.to_string())
            };
            let result = self.exchange(&put, |resp| {
                self.expect_status(&put.what, &resp, &[201])?;
                if let Some(d) = header(&resp, "docker-content-digest") {
                    if d != digest.to_string() {
                        return Err(RegistryError::DigestMismatch {
                            what: format!("blob uploaded to `{}/{repository}`", self.registry()),
                            expected: *digest,
                            actual: d,
                        });
                    }
                }
                Ok(Step::Done(()))
            });
            match result {
                Ok(()) => return Ok(()),
                Err(RegistryError::Unavailable {
                    registry,
                    what,
                    last,
                    ..
                }) => {
                    if failures >= self.retries() {
                        return Err(RegistryError::Unavailable {
                            registry,
                            what,
                            attempts: failures + 1,
                            last,
                        });
                    }
                    std::thread::sleep(self.backoff(failures));
                    failures += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens an upload session and returns its absolute URL.
    fn start_upload(&self, repository: &str, scope: &str) -> Result<String, RegistryError> {
        let req = self.req(
            Method::Post,
            format!("/v2/{repository}/blobs/uploads/"),
            scope.to_string(),
        );
        let location = self.exchange(&req, |resp| {
            self.expect_status(&req.what, &resp, &[202])?;
            match header(&resp, "location") {
                Some(l) => Ok(Step::Done(l)),
                None => Err(self.protocol(&req.what, "the answer has no `Location`".into())),
            }
        })?;
        self.resolve_location(&req.what, &location)
    }

    /// `PUT /v2/<repository>/manifests/<reference>`, checking the digest the registry
    /// computed from the bytes it stored.
    fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &OciDigest,
        scope: &str,
    ) -> Result<(), RegistryError> {
        let req = Req {
            headers: vec![("Content-Type", media_type.to_string())],
            body: ReqBody::Bytes(bytes),
            ..self.req(
                Method::Put,
                format!("/v2/{repository}/manifests/{reference}"),
                scope.to_string(),
            )
        };
        self.exchange(&req, |resp| {
            self.expect_status(&req.what, &resp, &[201])?;
            // The header is how the registry tells us what it stored; a registry that
            // omits it is taken at its word (the status), one that disagrees is not.
            if let Some(d) = header(&resp, "docker-content-digest") {
                if d != digest.to_string() {
                    return Err(RegistryError::DigestMismatch {
                        what: format!("manifest `{}/{repository}:{reference}`", self.registry()),
                        expected: *digest,
                        actual: d,
                    });
                }
            }
            Ok(Step::Done(()))
        })
    }
}
