//! An SPDX 2.3 document (JSON) per node of a release bundle: the node as a package
//! built from its source commit, its files with SHA-1 (which SPDX requires) and SHA-256,
//! the inputs it depends on, and the image that contains it. `spdx-tools` (PyPI)
//! validates these documents in CI.
//!
//! No clock: `created` is the Unix epoch, so a bundle's bytes are a function of the
//! lockfile (the build's time is not something a lockfile records).

use cascade_lock::{LockImage, LockNode};
use sha1::Digest as _;

use super::ArtifactFile;

/// `SPDXID`s allow letters, digits, `.` and `-`.
fn spdx_id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// SPDX's package verification code: the SHA-1 of the files' SHA-1s, sorted.
fn verification_code(files: &[ArtifactFile]) -> String {
    let mut sums: Vec<&str> = files.iter().map(|f| f.sha1.as_str()).collect();
    sums.sort_unstable();
    hex::encode(sha1::Sha1::digest(sums.concat().as_bytes()))
}

/// Where the source came from, as SPDX's `downloadLocation` wants it: a git URL at its
/// commit when the repository is one, else `NOASSERTION` (a local path is not a place
/// anyone else can download from).
fn download_location(repo: &str, commit: &str) -> String {
    let url = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|p| repo.starts_with(p));
    if url {
        format!("git+{repo}@{commit}")
    } else {
        "NOASSERTION".into()
    }
}

/// A package URL for an OCI image (`pkg:oci/<name>@sha256%3A<hex>?repository_url=…`).
fn purl(reference: &str, digest: &str) -> String {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let repo = match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    };
    let name = repo.rsplit('/').next().unwrap_or(repo);
    format!(
        "pkg:oci/{name}@{}?repository_url={repo}",
        digest.replacen(':', "%3A", 1)
    )
}

/// The SPDX JSON of one node (pretty, keys in a fixed order).
pub(crate) fn document(
    environment: &str,
    node: &str,
    n: &LockNode,
    image: Option<&LockImage>,
    files: &[ArtifactFile],
) -> String {
    let package = spdx_id("Package", node);
    let mut relationships = vec![serde_json::json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": package,
    })];
    let mut spdx_files = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let id = format!("SPDXRef-File-{}", i + 1);
        spdx_files.push(serde_json::json!({
            "SPDXID": id,
            "fileName": format!("./{}", f.path),
            "checksums": [
                { "algorithm": "SHA1", "checksumValue": f.sha1 },
                { "algorithm": "SHA256", "checksumValue": f.sha256 },
            ],
        }));
        relationships.push(serde_json::json!({
            "spdxElementId": package,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut source_info = format!(
        "git commit {}, tree {}, repository {}",
        n.source.commit, n.source.tree, n.source.repo
    );
    if let Some(dir) = &n.source.dir {
        source_info.push_str(&format!(", directory {dir}"));
    }
    let mut main = serde_json::json!({
        "SPDXID": package,
        "name": node,
        "versionInfo": n.source.version,
        "downloadLocation": download_location(&n.source.repo, &n.source.commit),
        "sourceInfo": source_info,
        "filesAnalyzed": true,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("cascade node key {}, output {}", n.key, n.output),
    });
    if !files.is_empty() {
        main["packageVerificationCode"] =
            serde_json::json!({ "packageVerificationCodeValue": verification_code(files) });
    } else {
        main["filesAnalyzed"] = serde_json::json!(false);
    }
    let mut packages = vec![main];
    for (input, output) in &n.inputs {
        let id = spdx_id("Input", input);
        packages.push(serde_json::json!({
            "SPDXID": id,
            "name": input,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "comment": format!("a cascade node of the same lockfile, output {output}"),
        }));
        relationships.push(serde_json::json!({
            "spdxElementId": package,
            "relationshipType": "DEPENDS_ON",
            "relatedSpdxElement": id,
        }));
    }
    if let Some(image) = image {
        let id = spdx_id("Image", node);
        let hex = image
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&image.digest);
        packages.push(serde_json::json!({
            "SPDXID": id,
            "name": image.reference,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": hex }],
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(&image.reference, &image.digest),
            }],
        }));
        relationships.push(serde_json::json!({
            "spdxElementId": id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": package,
        }));
    }
    let key_hex = n.key.to_string();
    let key_hex = key_hex.strip_prefix("blake3:").unwrap_or(&key_hex);
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{environment}-{node}"),
        "documentNamespace": format!("https://cascade.dev/spdx/{environment}/{node}/{key_hex}"),
        "creationInfo": {
            "created": "1970-01-01T00:00:00Z",
            "creators": [format!("Tool: cascade-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "files": spdx_files,
        "relationships": relationships,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_purls_and_locations_are_what_spdx_allows() {
        assert_eq!(spdx_id("Package", "web_app"), "SPDXRef-Package-web-app");
        assert_eq!(
            purl("127.0.0.1:5000/p/app:main-1a2b3c4", "sha256:ab"),
            "pkg:oci/app@sha256%3Aab?repository_url=127.0.0.1:5000/p/app"
        );
        assert_eq!(download_location("../../repos/app", "c0"), "NOASSERTION");
        assert_eq!(
            download_location("https://example.com/a.git", "c0"),
            "git+https://example.com/a.git@c0"
        );
    }
}
