//! Deployed containers: create, start, stop, remove, find by labels, read back, and wait
//! for a health check with exponential backoff.
//!
//! Unlike a smoke test's, these containers are meant to outlive the process: they are
//! labelled `cascade=1` like everything this crate creates, but they are not put in the
//! registry that [`Docker::cleanup_all_cascade_resources`] empties on Ctrl-C. Their
//! owner is the deploy history (`cascade deploy`), which finds them again by label.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, StopContainerOptionsBuilder,
};

use crate::error::is_not_found;
use crate::smoke::{exited, http_probe, judge_http, Attempt, OUTPUT_LIMIT};
use crate::{Docker, DockerError, Expect, Probe, LABEL};

/// The first retry of a health check comes this soon; delays then double up to the
/// check's interval.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// A port to publish: `host_ip:host_port` → `container`/tcp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: String,
    /// `None`: the engine picks a free port.
    pub host_port: Option<u16>,
    pub container: u16,
}

/// Everything a deployed container is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// An image id (`sha256:…`) or reference already in the engine.
    pub image: String,
    /// Added to `cascade=1`.
    pub labels: BTreeMap<String, String>,
    /// `NAME=value`, added to the image's.
    pub env: Vec<String>,
    pub ports: Vec<Publish>,
    /// `source:/target[:ro]` (bind mounts and named volumes).
    pub binds: Vec<String>,
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub restart: String,
}

/// A container as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without docker's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// `running`, `exited`, `restarting`, …
    pub state: String,
    /// The image id it runs.
    pub image: String,
    /// (container port, host ip, host port) for every published tcp port.
    pub ports: Vec<(u16, String, u16)>,
}

/// A health check of a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    /// Http: `GET` on the port published on 127.0.0.1 must answer 200; command: `docker
    /// exec` must exit 0.
    pub probe: Probe,
    /// The longest delay between attempts: delays start at [`FIRST_RETRY`] and double.
    pub interval: Duration,
    /// One attempt's limit.
    pub timeout: Duration,
    /// Failed attempts after the start period before the container is unhealthy.
    pub retries: u32,
    /// Failures this soon after the start do not count.
    pub start_period: Duration,
}

/// How a health check went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthOutcome {
    pub passed: bool,
    pub attempts: u32,
    /// What the last attempt saw; on failure, why.
    pub detail: String,
    /// The container's last log lines, when it failed.
    pub log_tail: Vec<String>,
    pub elapsed: Duration,
}

impl Docker {
    /// Creates (does not start) a container. It is not registered for Ctrl-C cleanup:
    /// a deployed container is meant to stay.
    pub fn create_deployed(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            bindings
                .entry(format!("{}/tcp", p.container))
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
                });
        }
        let mut exposed: Vec<String> = bindings.keys().cloned().collect();
        exposed.sort();
        let restart = match spec.restart.as_str() {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            _ => RestartPolicyNameEnum::NO,
        };
        let host_config = HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL.0.into(), LABEL.1.into());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let name = &spec.name;
        self.run(async {
            match self.client.create_container(Some(options), body).await {
                Ok(r) => Ok(r.id),
                Err(e) if is_not_found(&e) => Err(DockerError::ImageNotFound {
                    image: spec.image.clone(),
                }),
                Err(e) => Err(DockerError::engine(format!("create container `{name}`"))(e)),
            }
        })
    }

    pub fn start(&self, id: &str) -> Result<(), DockerError> {
        self.run(async {
            self.client
                .start_container(id, None)
                .await
                .map_err(DockerError::engine(format!("start container `{id}`")))
        })
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace`); one already stopped or
    /// gone counts as stopped.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        self.run(async {
            match self.client.stop_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                // 304: already stopped.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(DockerError::engine(format!("stop container `{id}`"))(e)),
            }
        })
    }

    /// Force-removes a container; one already gone counts as removed.
    pub fn remove(&self, id: &str) -> Result<(), DockerError> {
        self.remove_container(id)
    }

    /// Every container (running or not) carrying all of `labels`.
    pub fn containers_with(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let ids: Vec<String> = self.run(async {
            self.client
                .list_containers(Some(options))
                .await
                .map(|l| l.into_iter().filter_map(|c| c.id).collect())
                .map_err(DockerError::engine("list containers"))
        })?;
        let mut out = Vec::new();
        for id in ids {
            // One removed between the list and the inspect is simply not there.
            if let Some(info) = self.container(&id)? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Inspects one container by id or name; `None` when there is none.
    pub fn container(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        self.run(async {
            let i = match self.client.inspect_container(id, None).await {
                Ok(i) => i,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(DockerError::engine(format!("inspect container `{id}`"))(e)),
            };
            let state = i.state.unwrap_or_default();
            let mut ports = Vec::new();
            for (key, bindings) in i.network_settings.and_then(|n| n.ports).unwrap_or_default() {
                let Some(port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                for b in bindings.unwrap_or_default() {
                    if let Some(hp) = b.host_port.as_deref().and_then(|h| h.parse().ok()) {
                        ports.push((port, b.host_ip.unwrap_or_default(), hp));
                    }
                }
            }
            ports.sort();
            Ok(Some(ContainerInfo {
                id: i.id.unwrap_or_default(),
                name: i
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                labels: i
                    .config
                    .and_then(|c| c.labels)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                running: state.running.unwrap_or(false),
                state: state.status.map(|s| s.to_string()).unwrap_or_default(),
                image: i.image.unwrap_or_default(),
                ports,
            }))
        })
    }

    /// The container's last log lines (stdout and stderr).
    pub fn last_log_lines(&self, id: &str) -> Result<Vec<String>, DockerError> {
        self.log_tail(id)
    }

    /// Probes a started container until the check passes, the container stops, the
    /// retries after the start period are used up, or `cancel()` says to stop (then it
    /// has failed, with "interrupted"). Delays between attempts start at
    /// [`FIRST_RETRY`] and double up to `interval`, so a fast service is seen healthy at
    /// once and a slow one is not hammered.
    pub fn wait_healthy(
        &self,
        id: &str,
        check: &HealthSpec,
        cancel: &dyn Fn() -> bool,
    ) -> Result<HealthOutcome, DockerError> {
        let started = Instant::now();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .max_idle_connections(0)
            .build()
            .new_agent();
        let mut delay = FIRST_RETRY.min(check.interval);
        let (mut attempts, mut counted) = (0u32, 0u32);
        let mut last = String::from("no probe was made");
        let failed = |attempts: u32, detail: String| -> Result<HealthOutcome, DockerError> {
            let log_tail = self.log_tail(id).unwrap_or_default();
            Ok(HealthOutcome {
                passed: false,
                attempts,
                detail,
                log_tail,
                elapsed: started.elapsed(),
            })
        };
        loop {
            if cancel() {
                return failed(attempts, format!("interrupted; last probe: {last}"));
            }
            let state = self.state(id)?;
            if !state.running {
                return failed(attempts, exited(&state, attempts, &last));
            }
            attempts += 1;
            let attempt = self.probe_once(id, &state, check, &agent)?;
            match attempt {
                Attempt::Pass(detail) => {
                    return Ok(HealthOutcome {
                        passed: true,
                        attempts,
                        detail,
                        log_tail: Vec::new(),
                        elapsed: started.elapsed(),
                    })
                }
                Attempt::Fail(detail) => last = detail,
            }
            if started.elapsed() >= check.start_period {
                counted += 1;
            }
            if counted >= check.retries {
                return failed(
                    attempts,
                    format!(
                        "unhealthy after {attempts} attempt{} in {:.1}s; last: {last}",
                        if attempts == 1 { "" } else { "s" },
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(check.interval);
        }
    }

    /// One attempt of `check` on the container `id`, whose state before it is `state`.
    /// A pass counts only if the process that was running before the probe still runs
    /// after it: one that exited meanwhile did not answer (its port may have gone to
    /// another container).
    fn probe_once(
        &self,
        id: &str,
        state: &crate::smoke::State,
        check: &HealthSpec,
        agent: &ureq::Agent,
    ) -> Result<Attempt, DockerError> {
        let attempt = match &check.probe {
            // Its process exited and the restart policy brings it back: a failed
            // attempt, never a probe of the ports it had.
            _ if state.restarting => Attempt::Fail(format!(
                "the container exited (code {}) and is restarting",
                state.exit_code.map_or("?".into(), |c| c.to_string())
            )),
            Probe::Http { port, path } => {
                let loopback = state
                    .ports
                    .get(&format!("{port}/tcp"))
                    .into_iter()
                    .flatten()
                    .find(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
                    .and_then(|b| b.host_port.as_deref()?.parse::<u16>().ok());
                let Some(hp) = loopback else {
                    return Err(DockerError::PortNotPublished {
                        container: id.to_string(),
                        port: *port,
                        reason: "the health check needs it published on 127.0.0.1".into(),
                    });
                };
                match &self.ssh_target {
                    // On an ssh host, the port is on that host's loopback.
                    Some(t) => match t.http_get(hp, path, check.timeout, OUTPUT_LIMIT) {
                        Ok((status, body)) => judge_http(path, status, &body, &Expect::default()),
                        Err(e) => Attempt::Fail(format!("GET {path}: {e}")),
                    },
                    None => http_probe(agent, hp, path, &Expect::default(), check.timeout),
                }
            }
            Probe::Command { argv } => {
                self.exec_probe(id, argv, &Expect::default(), check.timeout)?
            }
        };
        let Attempt::Pass(detail) = attempt else {
            return Ok(attempt);
        };
        let after = self.state(id)?;
        Ok(
            if after.running && !after.restarting && after.started_at == state.started_at {
                Attempt::Pass(detail)
            } else {
                Attempt::Fail(format!(
                    "the probe passed, but the container exited (code {}) meanwhile",
                    after.exit_code.map_or("?".into(), |c| c.to_string())
                ))
            },
        )
    }
}

impl Docker {
    /// Creates the volume `name` with `labels`, or finds the one that exists: the
    /// engine keeps the first creator's labels, so comparing the answer with `labels`
    /// tells who made it. That is the compare-and-set a deploy lock needs on an engine
    /// that several machines drive. Returns the volume's labels.
    pub fn create_or_get_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, DockerError> {
        let mut all: HashMap<String, String> = labels.clone().into_iter().collect();
        all.insert(LABEL.0.to_string(), LABEL.1.to_string());
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(all),
            ..Default::default()
        };
        self.run(async {
            self.client
                .create_volume(request)
                .await
                .map(|v| v.labels.into_iter().collect())
                .map_err(DockerError::engine(format!("create volume `{name}`")))
        })
    }

    /// The labels of the volume `name`; `None` when there is none.
    pub fn volume_labels(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, DockerError> {
        self.run(async {
            match self.client.inspect_volume(name).await {
                Ok(v) => Ok(Some(v.labels.into_iter().collect())),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(DockerError::engine(format!("inspect volume `{name}`"))(e)),
            }
        })
    }

    /// Removes the volume `name`; one already gone counts as removed.
    pub fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.run(async {
            match self
                .client
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(DockerError::engine(format!("remove volume `{name}`"))(e)),
            }
        })
    }
}
