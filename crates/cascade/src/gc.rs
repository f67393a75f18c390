//! [IO] `cascade gc`: keep what the newest lockfiles of every environment reference,
//! remove the rest from the store, so rolling back to any of them stays free.

use std::path::PathBuf;

use cascade_core::{BlobDigest, EntryKind, TreeDigest};
use cascade_image::{OciDigest, OciLayout};
use cascade_lock::Lockfile;
use cascade_manifest::{ImageBase, ImageDecl, Recipe, RunnerDecl, RunnerImage};
use cascade_store::{GcReport, Keep, Store};

use crate::remote::{RemoteCache, RemoteGcReport, RemoteMode, RemoteOptions};
use crate::{all_lockfiles, read_lockfile, Error};

pub struct GcOptions {
    pub project: PathBuf,
    pub store: PathBuf,
    /// How many of each environment's newest lockfiles are kept reachable.
    pub keep: usize,
    pub dry_run: bool,
    /// Also collect this remote cache (`oci://…`): entries of keys no kept lockfile has.
    pub remote: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GcResult {
    /// The lockfiles whose closure was kept (relative to the project).
    pub roots: Vec<PathBuf>,
    pub dry_run: bool,
    #[serde(flatten)]
    pub report: GcReport,
    /// With `--remote-cache`.
    pub remote: Option<RemoteGcReport>,
}

pub fn gc(opts: &GcOptions) -> Result<GcResult, Error> {
    let mut roots = Vec::new();
    for files in all_lockfiles(&opts.project).into_values() {
        roots.extend(files.into_iter().take(opts.keep.max(1)));
    }
    if roots.is_empty() {
        // With nothing to keep, everything would go: refuse instead.
        return Err(Error::NothingToKeep);
    }
    let store = Store::open_existing(&opts.store)?;
    // No build may run meanwhile: it could be writing what no lockfile references yet.
    let _lock = store
        .try_lock_exclusive()?
        .ok_or_else(|| Error::StoreBusy {
            store: opts.store.clone(),
        })?;
    // A store without images has no layout, and a collection does not make one.
    let layout = if store.oci_dir().join("oci-layout").exists() {
        Some(OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?)
    } else {
        None
    };
    let mut keep = Keep::default();
    let mut keys = std::collections::BTreeSet::new();
    let mut shown = Vec::new();
    for path in &roots {
        let rel = path
            .strip_prefix(&opts.project)
            .unwrap_or(path)
            .to_path_buf();
        // Every root must be readable: collecting with partial knowledge would delete
        // what an unreadable lockfile still needs.
        let lock = read_lockfile(path, &rel.display().to_string())?;
        reach(&store, layout.as_ref(), &lock, &mut keep);
        keys.extend(lock.nodes.values().map(|n| n.key));
        shown.push(rel);
    }
    for (key, manifest) in store.image_records() {
        if let Ok(d) = manifest.parse::<OciDigest>() {
            if keep.oci.contains(&d.hex()) {
                keep.images.insert(key);
            }
        }
    }
    let report = store.gc(&keep, opts.dry_run)?;
    if let (false, Some(layout)) = (opts.dry_run, &layout) {
        let index = layout.read_index().map_err(Error::Image)?;
        let kept: Vec<_> = index
            .into_iter()
            .filter(|e| keep.oci.contains(&e.manifest.digest.hex()))
            .collect();
        layout.write_index(&kept).map_err(Error::Image)?;
    }
    // The remote last: an unreachable registry leaves the local collection done.
    let remote = match RemoteCache::new(&RemoteOptions {
        url: opts.remote.clone(),
        mode: RemoteMode::ReadWrite,
        exec: false,
    })? {
        None => None,
        Some(rc) => {
            Some(
                rc.collect(&keys, opts.dry_run)
                    .map_err(|message| Error::RemoteCacheGc {
                        url: opts.remote.clone().unwrap_or_default(),
                        message,
                    })?,
            )
        }
    };
    Ok(GcResult {
        roots: shown,
        dry_run: opts.dry_run,
        report,
        remote,
    })
}

/// Marks everything one lockfile needs: key manifests and action results, recipes,
/// image declarations, logs, output trees and their blobs, images and their bases, and
/// the pinned images steps run in.
fn reach(store: &Store, layout: Option<&OciLayout>, lock: &Lockfile, keep: &mut Keep) {
    for node in lock.nodes.values() {
        keep.keys.insert(node.key.0);
        keep.blobs.insert(node.recipe);
        // A pinned runner image in the store runs the steps again (`--check`).
        let recipe = store
            .get_blob(&BlobDigest(node.recipe))
            .ok()
            .and_then(|b| Recipe::decode_canonical(&b).ok());
        if let Some(RunnerDecl::Container {
            image: RunnerImage::Pinned { digest, .. },
        }) = recipe.map(|r| r.runner)
        {
            if let Ok(d) = digest.parse::<OciDigest>() {
                reach_image(layout, &d, keep);
            }
        }
        if let Ok(Some(action)) = store.get_action(&node.key) {
            keep.blobs.insert(action.log.0);
        }
        let mut stack = vec![TreeDigest(node.output.0)];
        while let Some(t) = stack.pop() {
            if !keep.trees.insert(t.0) {
                continue;
            }
            let Ok(tree) = store.get_tree(&t) else {
                continue;
            };
            for e in tree.entries() {
                match &e.kind {
                    EntryKind::File { digest, .. } => {
                        keep.blobs.insert(digest.0);
                    }
                    EntryKind::Dir { digest } => stack.push(*digest),
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        let Some(image) = &node.image else { continue };
        if let Ok(d) = image.digest.parse::<OciDigest>() {
            reach_image(layout, &d, keep);
        }
        if let Some(spec) = image.spec {
            keep.blobs.insert(spec);
            // A pinned base is needed to make the image again (`--check`).
            let decl = store
                .get_blob(&BlobDigest(spec))
                .ok()
                .and_then(|b| ImageDecl::decode_canonical(&b).ok());
            if let Some(ImageDecl {
                base: ImageBase::Pinned { digest, .. },
                ..
            }) = decl
            {
                if let Ok(d) = digest.parse::<OciDigest>() {
                    reach_image(layout, &d, keep);
                }
            }
        }
    }
}

fn reach_image(layout: Option<&OciLayout>, manifest: &OciDigest, keep: &mut Keep) {
    keep.oci.insert(manifest.hex());
    // An incomplete image is of no use to anyone: only a complete one keeps its blobs.
    let blobs = layout.and_then(|l| l.image_blobs(manifest).ok());
    for d in blobs.unwrap_or_default() {
        keep.oci.insert(d.hex());
    }
}
