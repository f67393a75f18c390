//! [IO] The container runner: the steps of a recipe whose runner is `container:` run in
//! Docker, each in a fresh container of the image the recipe names (cascade-docker's
//! `Docker::run_step`).
//!
//! - **The image.** A component's image comes from the store's image layout, where the
//!   image stage put it; a pinned `name@sha256:…` from the layout too, or else from the
//!   engine, which must already have it (nothing is pulled). An image the engine lacks
//!   is exported from the layout and loaded, once per build. Its manifest digest is the
//!   node's runner identity, so the key changes exactly when the image does.
//! - **The container.** The work directory (exported source, materialized inputs) is
//!   mounted at `/work`; its top-level entries (the source's and `inputs/`) are mounted
//!   read-only over themselves, so the only place a step can write is what it creates.
//!   No network, a read-only root filesystem with a private `/tmp`, a non-root user (the
//!   caller's uid and gid, or 65534 when cascade runs as root, with the work directory
//!   handed to it), memory and pid limits, the step's timeout. Steps see the declared
//!   env and the engine's variables (as on the host) plus `HOME=/work`, over the image's
//!   own environment (its `PATH`).
//! - **Cleanup.** Each step's container is removed when it ends, however it ends; an
//!   interrupt removes the running ones (`publish::cleanup_containers` →
//!   `Docker::shut_down`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cascade_docker::{Docker, DockerError, StepEnd, StepSpec, STEP_MEMORY, STEP_WORKDIR};
use cascade_exec::{Commands, RunError};
use cascade_image::{OciDigest, OciLayout};
use cascade_manifest::{Component, RunnerDecl, RunnerImage};
use cascade_store::Store;
use miette::Diagnostic;

use crate::image::ImageRef;
use crate::{publish, Error, Problems};

/// The user steps run as when cascade itself runs as root: `nobody`.
const UNPRIVILEGED: u32 = 65534;

/// The engine and the runner images of one build.
pub(crate) struct Containers {
    docker: Arc<Docker>,
    /// Manifest digest → the engine's id of that image, once found or loaded.
    ids: Mutex<BTreeMap<OciDigest, String>>,
}

/// A pinned runner image that is neither in the store nor in the engine.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("recipe `{component}` runs in `{image}`, which is neither in the store nor in the Docker Engine")]
#[diagnostic(code(cascade::runner_image), help("{help}"))]
struct MissingImage {
    component: String,
    image: String,
    help: String,
}

impl Containers {
    /// When a component runs in a container: connects to Docker and checks that every
    /// pinned image is in the store's layout or the engine, before anything is built.
    pub(crate) fn for_graph(
        components: &[Component],
        layout: Option<&OciLayout>,
    ) -> Result<Option<Containers>, Error> {
        let images: Vec<(&Component, &RunnerImage)> = components
            .iter()
            .filter_map(|c| match &c.recipe.runner {
                RunnerDecl::Container { image } => Some((c, image)),
                RunnerDecl::Host { .. } => None,
            })
            .collect();
        let Some((first, _)) = images.first() else {
            return Ok(None);
        };
        let docker = publish::engine().map_err(|source| Error::ContainerEngine {
            component: first.name.clone(),
            source,
        })?;
        let containers = Containers {
            docker,
            ids: Mutex::new(BTreeMap::new()),
        };
        let mut problems: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
        for (c, image) in images {
            let RunnerImage::Pinned { name, digest } = image else {
                continue;
            };
            let Ok(d) = digest.parse::<OciDigest>() else {
                continue; // the manifest checked its form
            };
            if layout.is_some_and(|l| l.image_blobs(&d).is_ok()) {
                continue;
            }
            match containers.in_engine(name, &d) {
                Ok(Some(id)) => {
                    containers.ids().insert(d, id);
                }
                Ok(None) => problems.push(Box::new(MissingImage {
                    component: c.name.clone(),
                    image: image.to_string(),
                    help: format!(
                        "images are never pulled during a build: `docker pull {name}@{digest}` first, or copy it into the store with `skopeo copy docker://{name}@{digest} oci:{}:{name}`",
                        layout.map_or_else(|| "<store>/oci".to_string(), |l| l.root().display().to_string())
                    ),
                })),
                Err(source) => {
                    return Err(Error::ContainerEngine {
                        component: c.name.clone(),
                        source,
                    })
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Environment(Problems::new(
                "missing runner image",
                problems,
            )));
        }
        Ok(Some(containers))
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeMap<OciDigest, String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine's id of a pinned image: by the reference it was pulled as
    /// (`name@sha256:…`, its repo digest), or by its id.
    fn in_engine(&self, name: &str, digest: &OciDigest) -> Result<Option<String>, DockerError> {
        match self.docker.image_id(&format!("{name}@{digest}"))? {
            Some(id) => Ok(Some(id)),
            None => self.docker.image_id(&digest.to_string()),
        }
    }

    /// The engine's id of the image `digest` (a manifest digest), loaded from the
    /// store's layout when the engine does not have it yet. `reference` is the tag it is
    /// loaded under.
    fn image_id(
        &self,
        store: &Store,
        layout: Option<&OciLayout>,
        digest: &OciDigest,
        reference: &str,
    ) -> Result<String, String> {
        // Held while loading: two nodes in one image load it once.
        let mut ids = self.ids();
        if let Some(id) = ids.get(digest) {
            return Ok(id.clone());
        }
        let layout = layout.ok_or("no image layout was opened")?;
        // Loaded before (by an earlier build): the classic image store names an image by
        // its config digest, the containerd one by its manifest digest; both pin its
        // layers' contents.
        let config = layout.config_digest(digest).map_err(|e| e.to_string())?;
        for candidate in [config, *digest] {
            if let Some(id) = self
                .docker
                .image_id(&candidate.to_string())
                .map_err(|e| e.to_string())?
            {
                if id == candidate.to_string() {
                    ids.insert(*digest, id.clone());
                    return Ok(id);
                }
            }
        }
        let image = ImageRef {
            reference: reference.to_string(),
            digest: *digest,
        };
        let id = publish::load(&self.docker, store, layout, &image)?;
        ids.insert(*digest, id.clone());
        Ok(id)
    }
}

/// What one node's steps need from the build.
pub(crate) struct ContainerRun<'a> {
    pub component: &'a Component,
    /// The runner image's manifest digest (the node's runner identity).
    pub image: OciDigest,
    /// The tag to load it under when the engine lacks it.
    pub reference: String,
    /// The work directory: source exported, inputs materialized.
    pub work: &'a Path,
    /// Relative to `work`: what is mounted read-only.
    pub read_only: Vec<String>,
    pub commands: Commands<'a>,
}

impl Containers {
    /// Runs a node's steps, in order, each in a fresh container; the first that fails
    /// stops the rest. The log gets the same lines as the host runner's.
    pub(crate) fn run(
        &self,
        store: &Store,
        layout: Option<&OciLayout>,
        r: &ContainerRun<'_>,
    ) -> Result<(), RunError> {
        // What the engine or the disk refused: the machine's problem, not the step's.
        let setup = |what: String| move |e: io::Error| RunError::Setup { what, source: e };
        let engine = |what: String, e: &dyn std::fmt::Display| RunError::Setup {
            what,
            source: io::Error::other(e.to_string()),
        };
        let id = self
            .image_id(store, layout, &r.image, &r.reference)
            .map_err(|e| engine(format!("load the runner image {}", r.image), &e))?;
        let user = step_user(r.work)
            .map_err(setup("give the work directory to the step's user".into()))?;
        let mut env: Vec<String> = r
            .commands
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("HOME={STEP_WORKDIR}"));
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(r.commands.log)
            .map_err(setup("open the log".into()))?;
        for step in r.commands.steps {
            if cascade_exec::interrupted() {
                return Err(RunError::Interrupted);
            }
            writeln!(log, "==> step {}", step.name).map_err(setup("write the log".into()))?;
            let spec = StepSpec {
                image: &id,
                script: &step.run,
                env: env.clone(),
                work: r.work,
                read_only: r.read_only.clone(),
                user: user.clone(),
                timeout: r.commands.timeout,
                labels: vec![
                    ("cascade.component".into(), r.component.name.clone()),
                    ("cascade.step".into(), step.name.clone()),
                ],
            };
            let started = Instant::now();
            let end = self
                .docker
                .run_step(&spec, &mut log)
                .map_err(|e| engine(format!("run step `{}` in a container", step.name), &e))?;
            let status = match end {
                StepEnd::Exited(0) => continue,
                StepEnd::TimedOut => {
                    let _ = writeln!(
                        log,
                        "==> step {} timed out after {:.1}s; killed",
                        step.name,
                        started.elapsed().as_secs_f64()
                    );
                    return Err(RunError::Timeout {
                        step: step.name.clone(),
                        after: r.commands.timeout,
                    });
                }
                StepEnd::Exited(code) => format!("exit code {code}"),
                StepEnd::OutOfMemory => format!(
                    "killed: out of memory (the limit is {} GiB)",
                    STEP_MEMORY >> 30
                ),
                StepEnd::Removed => "its container was removed while it ran".to_string(),
            };
            let _ = writeln!(log, "==> step {} failed: {status}", step.name);
            return Err(RunError::Failed {
                step: step.name.clone(),
                status,
            });
        }
        Ok(())
    }
}

/// `uid:gid` for the steps: the caller's, so what they write is the caller's; when
/// cascade runs as root, `nobody`'s, and the work directory (its top level only: the
/// source and inputs in it stay read-only) is handed to it.
fn step_user(work: &Path) -> io::Result<String> {
    // SAFETY: plain syscalls with no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        return Ok(format!("{uid}:{gid}"));
    }
    std::os::unix::fs::chown(work, Some(UNPRIVILEGED), Some(UNPRIVILEGED))?;
    Ok(format!("{UNPRIVILEGED}:{UNPRIVILEGED}"))
}

/// What is mounted read-only in a node's work directory before its steps run: every
/// top-level entry, the exported source and `inputs/` (links are left out: a mount would
/// follow them, and a link cannot be written through to a read-only target anyway).
pub(crate) fn read_only_entries(work: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(work)? {
        let e = e?;
        if e.file_type()?.is_symlink() {
            continue;
        }
        if let Ok(name) = e.file_name().into_string() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
