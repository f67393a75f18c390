//! [IO] The execute stage, along one seam: a node becomes an [`Action`] (built in one
//! place, [`Action::of`]), an executor runs it, its outputs are recorded.
//!
//! - **prepare**: a fresh work directory on the store's disk gets the source tree,
//!   exported from git, and each input's output tree, materialized read-only at
//!   `inputs/<name>/`;
//! - **execute**: the Action runs on an executor. Host-rooted Actions always run in the
//!   sandbox (cascade's own namespaces; `CASCADE_SANDBOX=off` runs them directly on the
//!   host instead). Image-rooted Actions run on the chosen [`ExecutorKind`]: the sandbox,
//!   on the image unpacked from the store, or Docker, in a container of it. Which one
//!   never enters a key: the same Action gives the same output bytes on either;
//! - **record**: declared outputs become a Merkle tree in the store, the log a blob,
//!   then the action result (node key → output, log), then the remote cache.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use cascade_core::{NodeKey, OutputDigest, RunnerIdentity};
use cascade_exec::{Commands, HostRun, ResolvedTool, RootFs, RunError, SandboxRun, Step};
use cascade_image::{OciDigest, OciLayout};
use cascade_manifest::{Component, RunnerDecl, RunnerImage, Stamp};
use cascade_store::{ActionResult, Store, StoreError};
use miette::Diagnostic;

use crate::build::{fail, Failure, FailureCause, Node, NodeStatus, Run, DEFAULT_TIMEOUT};
use crate::container::{read_only_entries, ContainerRun, Containers};
use crate::rootfs::Rootfses;
use crate::{Error, Problems};

/// How many lines of a failed step's log are shown.
const LOG_TAIL: usize = 20;

/// Where image-rooted Actions (container runners) and smoke tests run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// cascade's own Linux namespaces: no daemon.
    #[default]
    Sandbox,
    /// A Docker Engine.
    Docker,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sandbox" => Ok(ExecutorKind::Sandbox),
            "docker" => Ok(ExecutorKind::Docker),
            other => Err(format!(
                "unknown executor `{other}` (expected `sandbox` or `docker`)"
            )),
        }
    }
}

/// What a node's steps need and nothing else: the unit every executor runs.
pub(crate) struct Action<'a> {
    pub component: &'a Component,
    pub key: NodeKey,
    /// The input root: the source tree (from `node.pinned`) plus these outputs at
    /// `inputs/<name>/`.
    pub inputs: &'a BTreeMap<String, OutputDigest>,
    pub root: ActionRoot<'a>,
    pub steps: Vec<Step>,
    pub env: BTreeMap<String, String>,
    pub outputs: &'a [String],
    pub timeout: Duration,
}

/// The root filesystem an Action runs in.
pub(crate) enum ActionRoot<'a> {
    /// The host's, read-only, with these tools on `PATH`.
    Host { tools: &'a [ResolvedTool] },
    /// An image's: its manifest digest, and the reference it is known by.
    Image {
        digest: OciDigest,
        reference: String,
    },
}

impl<'a> Action<'a> {
    /// The Action of `node`, keyed `key`, given its inputs' outputs and its runner.
    pub(crate) fn of(
        run: &Run<'_>,
        node: &'a Node<'a>,
        inputs: &'a BTreeMap<String, OutputDigest>,
        runner: &RunnerIdentity,
        key: NodeKey,
    ) -> Result<Action<'a>, Failure> {
        let c = node.component;
        let root = match runner {
            RunnerIdentity::Host { .. } => ActionRoot::Host { tools: &node.tools },
            RunnerIdentity::Container { image } => {
                let digest: OciDigest = image.parse().map_err(|e| {
                    fail(
                        FailureCause::Environment,
                        format!("runner image: {e}"),
                        Some(key),
                    )
                })?;
                let reference = match &c.recipe.runner {
                    RunnerDecl::Container {
                        image: RunnerImage::Pinned { name, .. },
                    } => format!("{name}:cascade-{}", &digest.hex()[..12]),
                    // The image as the component that makes it tags it.
                    _ => c
                        .runner_image
                        .and_then(|j| run.nodes[j].reference.clone())
                        .unwrap_or_else(|| format!("cascade-runner:{}", &digest.hex()[..12])),
                };
                ActionRoot::Image { digest, reference }
            }
        };
        Ok(Action {
            component: c,
            key,
            inputs,
            root,
            steps: c
                .recipe
                .steps
                .iter()
                .map(|s| Step {
                    name: s.name.clone(),
                    run: s.run.clone(),
                })
                .collect(),
            env: step_env(node),
            outputs: &c.recipe.outputs,
            timeout: c.recipe.timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }
}

/// The declared env plus the engine's own variables: of the pinned commit, only what
/// the recipe stamps (its key covers exactly that).
fn step_env(node: &Node<'_>) -> BTreeMap<String, String> {
    let mut env = node.component.recipe.env.clone();
    let s = &node.pinned.source;
    env.insert("SOURCE_DATE_EPOCH".into(), node.epoch().to_string());
    env.insert("TZ".into(), "UTC".into());
    env.insert("LC_ALL".into(), "C".into());
    env.insert("CASCADE_COMPONENT".into(), node.component.name.clone());
    if node.stamps(Stamp::Commit) {
        env.insert("CASCADE_COMMIT".into(), s.commit.clone());
    }
    if node.stamps(Stamp::Version) {
        env.insert("CASCADE_VERSION".into(), s.version.to_string());
    }
    // New with stamping: format 1 never set it, so its steps keep the env they had.
    if node.pinned.key_format >= 2 && node.stamps(Stamp::Time) {
        env.insert("CASCADE_COMMIT_TIME".into(), s.commit_time.to_string());
    }
    env
}

/// The executors of one build.
pub(crate) struct Executors {
    pub kind: ExecutorKind,
    /// The engine, when image-rooted Actions run in Docker.
    containers: Option<Containers>,
    /// Unpacked runner images, for the sandbox (steps and smoke tests).
    pub rootfs: Rootfses,
}

/// Whether host steps run without the sandbox (`CASCADE_SANDBOX=off`).
fn sandbox_off() -> bool {
    std::env::var_os("CASCADE_SANDBOX").is_some_and(|v| v == "off")
}

/// A pinned runner image the sandbox cannot find.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("recipe `{component}` runs in `{image}`, which is not in the store")]
#[diagnostic(code(cascade::runner_image), help("{help}"))]
struct MissingImage {
    component: String,
    image: String,
    help: String,
}

impl Executors {
    /// Checks, before anything is built, what this graph's Actions and smoke tests
    /// need: namespaces for the sandbox (exit 3, naming the setting, when refused; never
    /// an unsandboxed run instead), the engine and its images for Docker, pinned runner
    /// images in the store for the sandbox.
    pub(crate) fn for_graph(
        kind: ExecutorKind,
        components: &[Component],
        layout: Option<&OciLayout>,
        smoke_tests: bool,
    ) -> Result<Executors, Error> {
        let host = components
            .iter()
            .find(|c| matches!(c.recipe.runner, RunnerDecl::Host { .. }));
        let container = components
            .iter()
            .find(|c| matches!(c.recipe.runner, RunnerDecl::Container { .. }));
        let needs_sandbox = match (host, container) {
            (Some(c), _) if !sandbox_off() => Some(format!("the steps of `{}`", c.name)),
            (_, Some(c)) if kind == ExecutorKind::Sandbox => {
                Some(format!("the steps of `{}`", c.name))
            }
            _ if smoke_tests && kind == ExecutorKind::Sandbox => Some("the smoke tests".into()),
            _ => None,
        };
        if let Some(needed_by) = needs_sandbox {
            cascade_exec::namespace::available()
                .map_err(|source| Error::Sandbox { needed_by, source })?;
        }
        let containers = match kind {
            ExecutorKind::Docker => Containers::for_graph(components, layout)?,
            ExecutorKind::Sandbox => {
                check_pinned_in_store(components, layout)?;
                None
            }
        };
        Ok(Executors {
            kind,
            containers,
            rootfs: Rootfses::default(),
        })
    }

    /// Runs `action` in `work` (prepared), with `scratch` (an empty directory beside
    /// it) for the executor's own files, its steps' output into `log`.
    fn run(
        &self,
        run: &Run<'_>,
        action: &Action<'_>,
        work: &Path,
        scratch: &Path,
        log: &Path,
    ) -> Result<(), RunError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| RunError::Setup {
            what: what.to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let commands = Commands {
            env: &action.env,
            steps: &action.steps,
            timeout: action.timeout,
            log,
            quiet: false,
            cancel: None,
        };
        let sandbox = |root: RootFs<'_>, read_only: &[String]| {
            SandboxRun {
                work,
                scratch,
                root,
                read_only,
                commands,
            }
            .run()
        };
        match &action.root {
            ActionRoot::Host { tools } if sandbox_off() => {
                let (tools_dir, temp) = (scratch.join("tools"), scratch.join("tmp"));
                for d in [&tools_dir, &temp] {
                    fs::create_dir_all(d)
                        .map_err(|e| setup("create the step's directories", &e))?;
                }
                HostRun {
                    work,
                    tools_dir: &tools_dir,
                    temp: &temp,
                    tools,
                    commands,
                }
                .run()
            }
            ActionRoot::Host { tools } => {
                // Inputs read-only; the source stays writable to host steps, as it
                // always was (recipes build in place).
                let read_only: Vec<String> = if work.join("inputs").is_dir() {
                    vec!["inputs".into()]
                } else {
                    Vec::new()
                };
                sandbox(RootFs::Host { tools }, &read_only)
            }
            ActionRoot::Image { digest, reference } => {
                // Mounted read-only: everything in the work directory so far, the
                // source as exported and `inputs/`.
                let read_only =
                    read_only_entries(work).map_err(|e| setup("list the work directory", &e))?;
                match &self.containers {
                    Some(containers) => containers.run(
                        run.store,
                        run.layout,
                        &ContainerRun {
                            component: action.component,
                            image: *digest,
                            reference: reference.clone(),
                            work,
                            read_only,
                            commands,
                        },
                    ),
                    None => {
                        let layout = run.layout.ok_or_else(|| {
                            setup("find the runner image", &"no image layout was opened")
                        })?;
                        let rootfs = self
                            .rootfs
                            .get(run.store, layout, digest)
                            .map_err(|e| setup("unpack the runner image", &e))?;
                        let root = RootFs::Image {
                            rootfs: &rootfs.tree,
                            env: &rootfs.config.env,
                        };
                        sandbox(root, &read_only)
                    }
                }
            }
        }
    }
}

/// The sandbox runs images from the store only: every pinned runner image must be in
/// its layout.
fn check_pinned_in_store(
    components: &[Component],
    layout: Option<&OciLayout>,
) -> Result<(), Error> {
    let mut problems: Vec<Box<dyn Diagnostic + Send + Sync>> = Vec::new();
    for c in components {
        let RunnerDecl::Container {
            image: RunnerImage::Pinned { name, digest },
        } = &c.recipe.runner
        else {
            continue;
        };
        let Ok(d) = digest.parse::<OciDigest>() else {
            continue; // the manifest checked its form
        };
        if layout.is_some_and(|l| l.image_blobs(&d).is_ok()) {
            continue;
        }
        problems.push(Box::new(MissingImage {
            component: c.name.clone(),
            image: format!("{name}@{digest}"),
            help: format!(
                "the sandbox runs images from the store only (nothing is pulled): copy it in with `skopeo copy docker://{name}@{digest} oci:{}:{name}`, or run with `--executor docker` where the engine has it",
                layout.map_or_else(|| "<store>/oci".to_string(), |l| l.root().display().to_string())
            ),
        }));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Environment(Problems::new(
            "missing runner image",
            problems,
        )))
    }
}

/// Prepares the work directory, runs the Action, records what it made.
pub(crate) fn execute(
    run: &Run<'_>,
    node: &Node<'_>,
    inputs: &BTreeMap<String, OutputDigest>,
    runner: &RunnerIdentity,
    key: NodeKey,
    tmp: &Path,
    remote_run: &mut Option<crate::reapi::RemoteRun>,
) -> Result<(cascade_store::Outputs, ActionResult), Failure> {
    let k = Some(key);
    let action = Action::of(run, node, inputs, runner, key)?;
    let work = tmp.join("work");
    let scratch = tmp.join("scratch");
    let log = tmp.join("log");
    prepare(run, node, &action, &work, &scratch)?;
    // On the engine's workers the outputs come back into a directory of their own.
    let (ran, made) = match run.remote_exec {
        Some(engine) if engine.tally.usable() => {
            let out = tmp.join("out");
            match engine.execute(run.layout, &action, &work, &out, &log) {
                Ok(r) => {
                    *remote_run = Some(r);
                    (Ok(()), out)
                }
                // The engine failed, not the steps: like a cache, it only costs time.
                // The Action runs here instead, and the build says so at the end.
                Err(RunError::Setup { what, source }) => {
                    engine.tally.error(format!(
                        "`{}`: could not {what} ({source}); it ran here instead",
                        action.component.name
                    ));
                    let _ = fs::remove_file(&log);
                    (run.executors.run(run, &action, &work, &scratch, &log), work)
                }
                Err(e) => (Err(e), out),
            }
        }
        _ => (run.executors.run(run, &action, &work, &scratch, &log), work),
    };
    // The log is never read whole: a step may print gigabytes.
    if let Err(e) = ran {
        return Err(step_failure(run, &action, e, &log));
    }
    record(run, &action, &made, &log).map_err(|f| Failure { key: k, ..f })
}

/// The last [`LOG_TAIL`] lines of a log, read from its last 64 KiB.
fn log_tail(log: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 << 10;
    let Ok(mut f) = fs::File::open(log) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(WINDOW);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window that starts mid-file starts mid-line: that first piece is not a line
    // (unless it is all there is: the end of one huge line).
    if from > 0 && lines.len() > 1 {
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(LOG_TAIL)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The work directory: the source tree exported, the inputs materialized read-only.
fn prepare(
    run: &Run<'_>,
    node: &Node<'_>,
    action: &Action<'_>,
    work: &Path,
    scratch: &Path,
) -> Result<(), Failure> {
    let k = Some(action.key);
    let env_fail = |e: String| fail(FailureCause::Environment, e, k);
    for d in [work, scratch] {
        fs::create_dir(d)
            .map_err(|e| env_fail(format!("could not create `{}`: {e}", d.display())))?;
    }
    // Only the files the source filter keeps: what the key covers is what the steps see.
    let filter = crate::pin::git_filter(&node.component.recipe);
    run.git
        .export(
            &node.pinned.location,
            &node.pinned.source.tree,
            filter.as_ref(),
            work,
        )
        .map_err(|e| env_fail(format!("could not export the source: {e}")))?;
    // `inputs/` is where the inputs go: a source that has one could plant files there
    // under an input's name.
    if !action.inputs.is_empty() && fs::symlink_metadata(work.join("inputs")).is_ok() {
        return Err(fail(
            FailureCause::Source,
            format!(
                "the source of `{}` has its own `inputs/`, where cascade puts the node's inputs: rename it in the repository",
                action.component.name
            ),
            k,
        ));
    }
    for (name, output) in action.inputs {
        let dest = work.join("inputs").join(name);
        fs::create_dir_all(&dest)
            .map_err(|e| env_fail(format!("could not create `inputs/{name}`: {e}")))?;
        run.store.materialize(output, &dest).map_err(|e| match e {
            // The bad entry is gone now, so the next build rebuilds the input.
            StoreError::Corrupt { .. } => fail(
                FailureCause::Input,
                format!("input `{name}` is corrupt in the store ({e}); run the build again to rebuild it"),
                k,
            ),
            e => env_fail(format!("could not materialize input `{name}`: {e}")),
        })?;
    }
    if !action.inputs.is_empty() {
        // 0755 whatever the umask (the source's directories are exported so too): a
        // sandboxed or container step's user reaches the inputs through it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(work.join("inputs"), fs::Permissions::from_mode(0o755))
            .map_err(|e| env_fail(format!("could not open `inputs/` to the steps: {e}")))?;
    }
    Ok(())
}

/// A step that failed: its log kept in the store, its tail in the report.
fn step_failure(run: &Run<'_>, action: &Action<'_>, e: RunError, log: &Path) -> Failure {
    let name = &action.component.name;
    let log_name = format!("{}-{name}-{}", run.env_name, action.key.short(12));
    let log_path = run.store.keep_log(&log_name, log).ok();
    let tail = log_tail(log);
    let cause = match e {
        RunError::Setup { .. } | RunError::Interrupted => FailureCause::Environment,
        _ => FailureCause::Step,
    };
    // 127 is the shell's "command not found": say where the commands a step can run come
    // from, since the log's `sh: 1: x: not found` does not.
    let mut error = e.to_string();
    if matches!(&e, RunError::Failed { status, .. } if status == "exit code 127") {
        error.push_str(&match action.root {
            ActionRoot::Host { .. } => format!(
                "; a command was not found: host steps see only the tools that `runner.host.tools` or `sets` declare in the recipe of `{name}`"
            ),
            ActionRoot::Image { .. } => {
                "; a command was not found in the runner image".to_string()
            }
        });
    }
    Failure {
        status: NodeStatus::Failed {
            cause,
            error,
            log_tail: tail,
            log_path,
        },
        key: Some(action.key),
    }
}

/// Outputs into the store, the log as a blob, then the remote cache; the action result
/// is the caller's to record (batched, under the key's lock).
fn record(
    run: &Run<'_>,
    action: &Action<'_>,
    work: &Path,
    log: &Path,
) -> Result<(cascade_store::Outputs, ActionResult), Failure> {
    let (store, k) = (run.store, Some(action.key));
    let outputs = store
        .ingest_outputs(work, action.outputs)
        .map_err(|e| match e {
            cascade_store::OutputError::Store(e) => fail(FailureCause::Environment, e, k),
            e => fail(FailureCause::Output, e, k),
        })?;
    // A step that wrote no log at all has an empty one.
    let log_digest = match log.exists() {
        true => store.put_blob_file(log).map(|(d, _)| d),
        false => store.put_blob(b""),
    }
    .map_err(|e| fail(FailureCause::Environment, e, k))?;
    let result = ActionResult {
        output: outputs.digest,
        log: log_digest,
    };
    if let Some(rc) = run.remote {
        rc.upload(
            store,
            &action.key,
            &result,
            action.outputs,
            &action.component.name,
        );
    }
    Ok((outputs, result))
}

/// Smoke tests of `image` on the build's executor.
pub(crate) fn smoke_tests_on<'a>(
    executors: Option<&'a Executors>,
    docker: Option<&'a cascade_docker::Docker>,
    store: &'a Store,
    layout: &'a OciLayout,
) -> impl Fn(
    &crate::image::ImageRef,
    &cascade_docker::SmokeTest,
) -> Option<Result<cascade_docker::TestOutcome, String>>
       + 'a {
    move |image, test| match (executors, docker) {
        (Some(x), _) if x.kind == ExecutorKind::Sandbox => Some(crate::smoke::smoke_test(
            store, layout, &x.rootfs, image, test,
        )),
        (_, Some(d)) => Some(
            d.smoke_test(&image.reference, test)
                .map_err(|e| format!("the engine failed: {e}")),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of a log comes from its end, whatever its size, in whole lines.
    #[test]
    fn log_tail_reads_the_end_in_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, &text).unwrap();
        let tail = log_tail(&log);
        let want: Vec<String> = (100_000 - LOG_TAIL..100_000)
            .map(|i| format!("line {i}"))
            .collect();
        assert_eq!(tail, want);
        fs::write(&log, "one\ntwo\n").unwrap();
        assert_eq!(log_tail(&log), ["one", "two"]);
        fs::write(&log, "x".repeat(200_000)).unwrap();
        assert_eq!(log_tail(&log), ["x".repeat(64 << 10)]);
        assert!(log_tail(&dir.path().join("none")).is_empty());
    }
}
