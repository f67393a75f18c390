//! [IO] `cascade cache stats | verify`: what the store holds, how often builds hit it,
//! and whether every entry still hashes to its name.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cascade_image::{OciDigest, OciLayout};
use cascade_store::{Corrupt, Count, Store};

use crate::Error;

/// How many builds `stats.jsonl` remembers.
const KEEP_BUILDS: usize = 50;

/// One build, as `cascade cache stats` counts it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BuildStat {
    pub environment: String,
    pub built: usize,
    pub cached: usize,
    /// Of `cached`, how many came from the remote cache.
    pub remote_hits: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CacheStats {
    pub store: PathBuf,
    /// Per kind of entry: how many, how many bytes.
    pub entries: BTreeMap<String, Count>,
    /// The last builds on this store, oldest first.
    pub builds: Vec<BuildStat>,
    /// Cached nodes over all nodes of those builds.
    pub hit_rate: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyResult {
    pub checked: BTreeMap<String, usize>,
    pub corrupt: Vec<Corrupt>,
}

fn stats_file(store: &Store) -> PathBuf {
    store.root().join("stats.jsonl")
}

/// The store's build history, bounded (a store may be shared, or damaged).
fn read_stats(path: &std::path::Path) -> Option<String> {
    let bytes = crate::bounded::read(path, crate::bounded::STATS_LIMIT, true).ok()?;
    String::from_utf8(bytes).ok()
}

/// Appends a build to the store's short history (best effort: statistics never fail a
/// build).
pub(crate) fn record_build(store: &Store, stat: &BuildStat) {
    let path = stats_file(store);
    let mut lines: Vec<String> = read_stats(&path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default();
    if let Ok(line) = serde_json::to_string(stat) {
        lines.push(line);
    }
    let start = lines.len().saturating_sub(KEEP_BUILDS);
    let text = lines[start..].join("\n") + "\n";
    // Statistics: a crash may lose the last line, so no flush is worth its cost.
    let _ = Store::replace_lazily(&path, text.as_bytes());
}

pub fn cache_stats(store: &Path) -> Result<CacheStats, Error> {
    let s = Store::open_existing(store)?;
    let builds: Vec<BuildStat> = read_stats(&stats_file(&s))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let (cached, all) = builds
        .iter()
        .fold((0, 0), |(c, a), b| (c + b.cached, a + b.cached + b.built));
    Ok(CacheStats {
        store: store.to_path_buf(),
        entries: s.stats(),
        hit_rate: (all > 0).then(|| cached as f64 / all as f64),
        builds,
    })
}

/// Re-hashes every entry, the OCI layout's blobs included (sha256); with `repair`, the
/// corrupt ones are removed (they are rebuilt or fetched again when next needed).
pub fn cache_verify(store: &Path, repair: bool) -> Result<VerifyResult, Error> {
    let s = Store::open_existing(store)?;
    let (mut checked, mut corrupt) = s.verify(repair)?;
    let dir = s.oci_dir().join("blobs/sha256");
    if dir.is_dir() {
        let layout = OciLayout::open_or_create(s.oci_dir()).map_err(Error::Image)?;
        let mut names: Vec<(String, PathBuf)> = fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                    .filter(|(n, p)| !n.starts_with('.') && p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for (name, path) in names {
            *checked.entry("oci".to_string()).or_insert(0) += 1;
            let good = format!("sha256:{name}")
                .parse::<OciDigest>()
                .is_ok_and(|d| layout.read_blob(&d).is_ok());
            if !good {
                if repair {
                    fs::remove_file(&path).map_err(|source| {
                        Error::Store(cascade_store::StoreError::Io {
                            path: path.clone(),
                            source,
                        })
                    })?;
                }
                corrupt.push(Corrupt {
                    kind: "oci".to_string(),
                    path,
                    removed: repair,
                });
            }
        }
    }
    Ok(VerifyResult { checked, corrupt })
}
