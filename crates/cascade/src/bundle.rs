//! [IO] `cascade release-bundle`: one lockfile's release as files anyone can check with
//! the tools they already have, and `verify DIR`, which checks one.
//!
//! A bundle directory holds:
//! - the lockfile, as it was written;
//! - `artifacts/<node>/…`: every node's outputs, from the store;
//! - `images/<node>/manifest.json`: each image's OCI manifest, whose sha256 is the
//!   image digest the lockfile records (so `sha256sum -c` checks the digests too);
//! - `sbom/<node>.spdx.json`: an SPDX 2.3 document per node ([`spdx`]): its source, its
//!   inputs, its files (SHA-1 and SHA-256) and its image;
//! - `SHA256SUMS`: `<hex>  <path>` for every file above, sorted by path, the format of
//!   coreutils' `sha256sum`;
//! - `SHA256SUMS.asc`: with a key, the detached OpenPGP signature of `SHA256SUMS`,
//!   which `gpg --verify SHA256SUMS.asc SHA256SUMS` checks.
//!
//! The bundle is made in a temporary directory beside the destination and renamed into
//! place, so it is there whole or not at all. Its bytes are a function of the lockfile
//! and the key: no clock, no paths, no owners.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cascade_lock::Lockfile;
use cascade_manifest::KeyLocation;
use cascade_sign::detached::{self, DetachedRejection};
use cascade_store::Store;
use sha1::Digest as _;

use crate::Error;

mod spdx;

/// The checksum file and its signature.
pub const SUMS: &str = "SHA256SUMS";
pub const SUMS_SIGNATURE: &str = "SHA256SUMS.asc";

pub struct BundleOptions {
    pub lockfile: PathBuf,
    /// The directory to create; it must not exist (or be empty).
    pub out: PathBuf,
    pub store: PathBuf,
    /// The key that signs `SHA256SUMS`, and where relative paths start.
    pub sign: Option<(KeyLocation, PathBuf)>,
}

/// What `release-bundle` wrote; the `--json` schema.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleReport {
    pub dir: PathBuf,
    pub lockfile: String,
    /// Every file `SHA256SUMS` lists, in its order.
    pub files: Vec<BundleFile>,
    /// The fingerprint of the key that signed `SHA256SUMS`, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::WriteBundle {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the release bundle of a lockfile.
pub fn release_bundle(opts: &BundleOptions) -> Result<BundleReport, Error> {
    let shown = opts.lockfile.display().to_string();
    let text = crate::lockfiles::read_lockfile_text(&opts.lockfile, &shown)?;
    let lock = cascade_lock::read(&shown, &text)?;
    // The key first: a bad key costs nothing.
    let key = match &opts.sign {
        Some((loc, base)) => Some(crate::sign::secret_key(loc, base, "--sign")?),
        None => None,
    };
    if std::fs::read_dir(&opts.out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::BundleExists {
            path: opts.out.clone(),
        });
    }
    let store = Store::open_existing(&opts.store)?;
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".release-bundle-")
        .tempdir_in(&parent)
        .map_err(io_error(&parent))?;
    let root = tmp.path();
    let name = opts
        .lockfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lockfile.yaml".into());
    write(&root.join(&name), text.as_bytes())?;
    write_nodes(&store, &lock, &shown, root)?;
    let files = checksums(root)?;
    let sums: String = files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    write(&root.join(SUMS), sums.as_bytes())?;
    let signed_by = match &key {
        Some(key) => {
            let sig = detached::sign(key, sums.as_bytes()).map_err(|source| Error::Sign {
                reference: SUMS.to_string(),
                source,
            })?;
            write(&root.join(SUMS_SIGNATURE), sig.as_bytes())?;
            Some(key.fingerprint())
        }
        None => None,
    };
    // An empty directory left by the user is replaced; a non-empty one was refused.
    if opts.out.exists() {
        std::fs::remove_dir(&opts.out).map_err(io_error(&opts.out))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &opts.out).map_err(|source| {
        let _ = std::fs::remove_dir_all(&kept);
        Error::WriteBundle {
            path: opts.out.clone(),
            source,
        }
    })?;
    Ok(BundleReport {
        dir: opts.out.clone(),
        lockfile: name,
        files,
        signed_by,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io_error(p))?;
    }
    std::fs::write(path, bytes).map_err(io_error(path))
}

/// Each node's artifacts, image manifest and SBOM.
fn write_nodes(store: &Store, lock: &Lockfile, shown: &str, root: &Path) -> Result<(), Error> {
    let layout = cascade_image::OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?;
    for (node, n) in &lock.nodes {
        let artifacts = root.join("artifacts").join(node);
        std::fs::create_dir_all(&artifacts).map_err(io_error(&artifacts))?;
        store.materialize(&n.output, &artifacts)?;
        let manifest = match &n.image {
            Some(image) => {
                let digest: cascade_registry::OciDigest =
                    image.digest.parse().map_err(|_| Error::NoImage {
                        component: node.clone(),
                        lockfile: shown.to_string(),
                    })?;
                let bytes = layout.read_blob(&digest).map_err(Error::Image)?;
                write(
                    &root.join("images").join(node).join("manifest.json"),
                    &bytes,
                )?;
                Some(image)
            }
            None => None,
        };
        let files = file_sums(&artifacts)?;
        let doc = spdx::document(&lock.environment, node, n, manifest, &files);
        write(
            &root.join("sbom").join(format!("{node}.spdx.json")),
            &doc.into_bytes(),
        )?;
    }
    Ok(())
}

/// A file of a node's artifacts, as the SBOM lists it.
pub(crate) struct ArtifactFile {
    /// Relative to the node's artifacts directory.
    pub path: String,
    pub sha1: String,
    pub sha256: String,
}

/// Every regular file under `dir` (symlinks are not followed) as its path relative to
/// `dir` and its own path, sorted by relative path.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), Error> {
        for (name, path, kind) in sorted_entries(dir)? {
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if kind.is_dir() {
                walk(&path, &rel, out)?;
            } else if kind.is_file() {
                out.push((rel, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every file of a node's artifacts with its SHA-1 and SHA-256, sorted by path.
fn file_sums(dir: &Path) -> Result<Vec<ArtifactFile>, Error> {
    files_under(dir)?
        .into_iter()
        .map(|(path, full)| {
            let (sha256, sha1, _) = hash_file(&full)?;
            Ok(ArtifactFile { path, sha1, sha256 })
        })
        .collect()
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::FileType)>, Error> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let e = e.map_err(io_error(dir))?;
        let kind = e.file_type().map_err(io_error(&e.path()))?;
        entries.push((e.file_name().to_string_lossy().into_owned(), e.path(), kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// (sha256 hex, sha1 hex, size) of a file, read in chunks; sha256 is the image crate's
/// (the one place OCI digests are computed).
fn hash_file(path: &Path) -> Result<(String, String, u64), Error> {
    let mut f = std::fs::File::open(path).map_err(io_error(path))?;
    let mut sha256 = cascade_image::HashingWriter::new(std::io::sink());
    let mut sha1 = sha1::Sha1::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        sha256.write_all(&buf[..n]).map_err(io_error(path))?;
        sha1.update(&buf[..n]);
    }
    let (_, digest, size) = sha256.finish();
    Ok((digest.hex(), hex::encode(sha1.finalize()), size))
}

/// Every file under `root` but the checksum file and its signature, sorted by path.
fn checksums(root: &Path) -> Result<Vec<BundleFile>, Error> {
    files_under(root)?
        .into_iter()
        .filter(|(rel, _)| rel != SUMS && rel != SUMS_SIGNATURE)
        .map(|(path, full)| {
            let (sha256, _, size) = hash_file(&full)?;
            Ok(BundleFile { path, sha256, size })
        })
        .collect()
}

/// What `verify DIR` found in a release bundle.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleVerdict {
    pub dir: PathBuf,
    /// The signature of `SHA256SUMS`.
    pub signature: SumsSignature,
    /// Every problem with the files: each one named.
    pub problems: Vec<BundleProblem>,
    /// How many files `SHA256SUMS` lists.
    pub files: usize,
}

impl BundleVerdict {
    pub fn success(&self) -> bool {
        matches!(self.signature, SumsSignature::Verified { .. }) && self.problems.is_empty()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SumsSignature {
    Verified { fingerprint: String },
    Missing,
    Rejected { rejection: DetachedRejection },
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum BundleProblem {
    /// A listed file whose bytes are not the listed ones.
    Changed { path: String },
    /// A listed file that is not there.
    Missing { path: String },
    /// A file the list does not name.
    Unlisted { path: String },
    /// A line of `SHA256SUMS` that is not `<64 hex>  <path>`.
    BadLine { line: usize },
    /// An image manifest whose digest is not the lockfile's.
    ImageDigest {
        node: String,
        lockfile: String,
        bundle: String,
    },
    /// No lockfile, or more than one, at the bundle's top.
    Lockfile { detail: String },
}

/// Checks a release bundle: the signature of `SHA256SUMS` by one of `keys`, every
/// listed file's sha256, no file unlisted, and each image manifest's digest against
/// the bundle's lockfile.
pub fn verify_bundle(dir: &Path, keys: &[cascade_sign::PublicKey]) -> Result<BundleVerdict, Error> {
    let sums_path = dir.join(SUMS);
    let sums = crate::lockfiles::read_lockfile_text(&sums_path, &sums_path.display().to_string())?;
    let sig_path = dir.join(SUMS_SIGNATURE);
    let limit = crate::bounded::SMALL_LIMIT;
    let signature = match crate::bounded::read(&sig_path, limit, false) {
        Err(e) if e.not_found() => SumsSignature::Missing,
        Err(e) => {
            let shown = sig_path.display().to_string();
            return Err(e.into_error(&shown, "a signature", limit));
        }
        Ok(sig) => match detached::verify(keys, &sig, sums.as_bytes()) {
            Ok(fingerprint) => SumsSignature::Verified { fingerprint },
            Err(rejection) => SumsSignature::Rejected { rejection },
        },
    };
    let mut problems = Vec::new();
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in sums.lines().enumerate() {
        match line.split_once("  ") {
            Some((hex, path))
                if hex.len() == 64
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && safe_relative(path) =>
            {
                listed.insert(path.to_string(), hex.to_ascii_lowercase());
            }
            _ => problems.push(BundleProblem::BadLine { line: i + 1 }),
        }
    }
    let present = checksums(dir)?;
    let present_paths: BTreeMap<&str, &BundleFile> =
        present.iter().map(|f| (f.path.as_str(), f)).collect();
    for (path, hex) in &listed {
        match present_paths.get(path.as_str()) {
            None => problems.push(BundleProblem::Missing { path: path.clone() }),
            Some(f) if f.sha256 != *hex => {
                problems.push(BundleProblem::Changed { path: path.clone() })
            }
            Some(_) => {}
        }
    }
    for f in &present {
        if !listed.contains_key(&f.path) {
            problems.push(BundleProblem::Unlisted {
                path: f.path.clone(),
            });
        }
    }
    let lockfiles: Vec<&BundleFile> = present
        .iter()
        .filter(|f| !f.path.contains('/') && f.path.ends_with(".yaml"))
        .collect();
    match lockfiles.as_slice() {
        [one] => {
            let path = dir.join(&one.path);
            let lock = crate::read_lockfile(&path, &one.path)?;
            for (node, n) in &lock.nodes {
                let Some(image) = &n.image else { continue };
                let at = format!("images/{node}/manifest.json");
                let bundle = present_paths
                    .get(at.as_str())
                    .map(|f| format!("sha256:{}", f.sha256))
                    .unwrap_or_else(|| "none".into());
                if bundle != image.digest {
                    problems.push(BundleProblem::ImageDigest {
                        node: node.clone(),
                        lockfile: image.digest.clone(),
                        bundle,
                    });
                }
            }
        }
        other => problems.push(BundleProblem::Lockfile {
            detail: format!(
                "{} lockfiles at the top of the bundle, not one",
                other.len()
            ),
        }),
    }
    Ok(BundleVerdict {
        dir: dir.to_path_buf(),
        signature,
        problems,
        files: listed.len(),
    })
}

/// The lockfile at the top of a release bundle (exactly one `.yaml` file there).
pub fn bundle_lockfile(dir: &Path) -> Result<PathBuf, Error> {
    let top: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|(name, _, kind)| kind.is_file() && name.ends_with(".yaml"))
        .map(|(_, path, _)| path)
        .collect();
    match top.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::NotABundle {
            path: dir.to_path_buf(),
            lockfiles: top.len(),
        }),
    }
}

/// A path inside the bundle: relative, no `..`, no empty or `.` component.
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::safe_relative;

    #[test]
    fn only_paths_inside_the_bundle_are_listed() {
        assert!(safe_relative("artifacts/a/out/bin/x"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("../x"));
        assert!(!safe_relative("a//b"));
        assert!(!safe_relative("a/./b"));
        assert!(!safe_relative(""));
    }
}
