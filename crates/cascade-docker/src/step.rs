//! Build steps in containers: each step runs in a fresh container of its own, with the
//! network off, a read-only root filesystem, the work directory as the only writable
//! mount, a non-root user, memory and pid limits, and a timeout after which the
//! container is killed and removed.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig, Mount,
    MountBindOptions, MountBindOptionsPropagationEnum, MountType,
};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use crate::error::is_not_found;
use crate::smoke::{unique_name, Resources};
use crate::{Docker, DockerError};

/// Where the work directory is mounted in a step's container, and its working directory
/// and `HOME`: the same path on every machine, so no host path reaches an output.
pub const STEP_WORKDIR: &str = "/work";
/// A step's memory limit (swap included: there is none beyond it), in bytes.
pub const STEP_MEMORY: i64 = 4 << 30;
/// How many processes and threads a step's container may have at once.
pub const STEP_PIDS: i64 = 4096;
/// The size of a step's private `/tmp` (memory, counted in [`STEP_MEMORY`]).
const STEP_TMP: &str = "size=1g";
/// Extra time the engine's long requests (wait, logs) get beyond a step's own timeout.
const REQUEST_MARGIN: Duration = Duration::from_secs(60);

/// One step, as the engine runs it.
#[derive(Clone, Debug)]
pub struct StepSpec<'a> {
    /// The image: an id or reference the engine has (images are never pulled).
    pub image: &'a str,
    /// Run as `/bin/sh -e -c <script>`, whatever the image's entrypoint.
    pub script: &'a str,
    /// `NAME=value`, over the image's own environment (its `PATH`, say).
    pub env: Vec<String>,
    /// The host directory mounted read-write at [`STEP_WORKDIR`]: the only writable
    /// mount.
    pub work: &'a Path,
    /// Paths relative to `work` (files or directories) mounted read-only over
    /// themselves: the source tree and the inputs.
    pub read_only: Vec<String>,
    /// `uid:gid`; never root.
    pub user: String,
    /// From the container's start; then it is killed and removed.
    pub timeout: Duration,
    /// More labels, for people and for finding it (`cascade=1` and [`crate::LABEL_PID`]
    /// are always there).
    pub labels: Vec<(String, String)>,
}

/// How a step's container ended. Its container is removed in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// The script exited with this code.
    Exited(i64),
    /// The kernel killed it at [`STEP_MEMORY`].
    OutOfMemory,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It was removed while it ran ([`Docker::shut_down`], or by hand).
    Removed,
}

impl Docker {
    /// Runs one step in a fresh container and waits for it, writing its stdout and
    /// stderr to `log` as they come. The container is removed before this returns (or
    /// unwinds), whatever happened.
    pub fn run_step(
        &self,
        step: &StepSpec<'_>,
        log: &mut (dyn Write + Send),
    ) -> Result<StepEnd, DockerError> {
        if step
            .user
            .split(':')
            .next()
            .is_none_or(|u| u == "0" || u == "root")
        {
            return Err(DockerError::InvalidStep {
                reason: format!("steps do not run as root (user `{}`)", step.user),
            });
        }
        let name = unique_name("cascade-step");
        let mut resources = Resources {
            docker: self,
            container: None,
            network: None,
        };
        let id = self.create_step(&name, step)?;
        resources.container = Some(id.clone());
        // Waiting and following the log last as long as the step: they get its timeout.
        let client = self
            .client
            .clone()
            .with_timeout(step.timeout + REQUEST_MARGIN);
        let waited = self.run(async {
            client
                .start_container(&id, None)
                .await
                .map_err(DockerError::engine(format!("start container `{name}`")))?;
            let wait = async {
                match client.wait_container(&id, None).next().await {
                    Some(Ok(r)) => Ok(Some(r.status_code)),
                    Some(Err(bollard::errors::Error::DockerContainerWaitError {
                        code, ..
                    })) => Ok(Some(code)),
                    Some(Err(e)) if is_not_found(&e) => Ok(None),
                    Some(Err(e)) => Err(DockerError::engine(format!("wait for `{name}`"))(e)),
                    None => Ok(None),
                }
            };
            let follow = async {
                let options = LogsOptionsBuilder::new()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .build();
                let mut logs = client.logs(&id, Some(options));
                while let Some(chunk) = logs.next().await {
                    // A log that cannot be read or written is not the step's failure;
                    // the exit code decides.
                    let Ok(chunk) = chunk else { break };
                    let _ = log.write_all(&chunk.into_bytes());
                }
            };
            match tokio::time::timeout(step.timeout, futures_util::future::join(wait, follow)).await
            {
                Err(_) => Ok(Err(())),
                Ok((code, ())) => code.map(Ok),
            }
        });
        let end = match waited {
            Ok(Err(())) => StepEnd::TimedOut,
            Ok(Ok(None)) => StepEnd::Removed,
            // 137 is SIGKILL: the memory limit, or a removal under us.
            Ok(Ok(Some(137))) => match self.step_state(&id)? {
                (true, _) => StepEnd::Removed,
                (_, true) => StepEnd::OutOfMemory,
                _ => StepEnd::Exited(137),
            },
            Ok(Ok(Some(code))) => StepEnd::Exited(code),
            Err(e) => return Err(e),
        };
        let _ = log.flush();
        resources.remove()?;
        Ok(end)
    }

    fn create_step(&self, name: &str, step: &StepSpec<'_>) -> Result<String, DockerError> {
        let bind = |source: &Path, target: String, read_only: bool| Mount {
            target: Some(target),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The work directory first, then what is read-only inside it (the engine mounts
        // parents before children).
        let mut mounts = vec![bind(step.work, STEP_WORKDIR.to_string(), false)];
        for rel in &step.read_only {
            mounts.push(bind(
                &step.work.join(rel),
                format!("{STEP_WORKDIR}/{rel}"),
                true,
            ));
        }
        let mut labels = Docker::labels();
        labels.insert("cascade.role".into(), "step".into());
        labels.extend(step.labels.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(step.image.to_string()),
            entrypoint: Some(vec!["/bin/sh".into(), "-e".into(), "-c".into()]),
            cmd: Some(vec![step.script.to_string()]),
            env: Some(step.env.clone()),
            working_dir: Some(STEP_WORKDIR.to_string()),
            user: Some(step.user.clone()),
            network_disabled: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(mounts),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([("/tmp".to_string(), STEP_TMP.to_string())])),
                memory: Some(STEP_MEMORY),
                memory_swap: Some(STEP_MEMORY),
                pids_limit: Some(STEP_PIDS),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                // The engine's default driver may be one whose log cannot be read back.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_tracked(name, body, step.image)
    }

    /// Whether a stopped step's container is gone (or going), and whether it was killed
    /// for memory.
    fn step_state(&self, id: &str) -> Result<(bool, bool), DockerError> {
        self.run(async {
            match self.client.inspect_container(id, None).await {
                Err(e) if is_not_found(&e) => Ok((true, false)),
                Err(e) => Err(DockerError::engine(format!("inspect container `{id}`"))(e)),
                Ok(inspect) => {
                    let state = inspect.state.unwrap_or_default();
                    let removed = matches!(
                        state.status,
                        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD)
                    );
                    Ok((removed, state.oom_killed.unwrap_or(false)))
                }
            }
        })
    }
}
