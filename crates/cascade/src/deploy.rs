//! [IO] deploy: run an environment's lockfile on a Docker Engine, as its `deploy:`
//! section says, health-check it, record it in `deployments/<env>.yaml`, and roll back
//! to the previously deployed lockfile when a health check fails.
//!
//! What is running is read back from the containers' labels, never from a file that
//! could disagree with the engine: `cascade.env`, `cascade.component`, `cascade.image`
//! (the image's manifest digest), `cascade.config` (a digest of the component's
//! `deploy:` entry), `cascade.lockfile` (blake3 of the lockfile's bytes), plus
//! `cascade=1`. A component is replaced only when one of these differs from the target
//! (or a replica is missing or stopped); the others are not touched.
//!
//! **Interrupts.** A swap is stop old → remove old → create new → start new: with fixed
//! host ports the new container cannot start before the old one has let go of the port,
//! so "start new first" is not generally possible. Instead a SIGINT/SIGTERM during a
//! deploy only sets a flag ([`interrupt_deploy`]); the swap under way completes, the
//! health check in progress stops, and the deploy then rolls back like a failed one
//! (the old lockfile, health-checked), records `interrupted` and exits 130. So the
//! engine is left running the old state (or the new one where the rollback is not
//! possible), never neither; a second signal exits at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_core::Digest;
use cascade_docker::{ContainerInfo, ContainerSpec, Docker, HealthSpec, Publish};
use cascade_image::{OciDigest, OciLayout};
use cascade_lock::{Deployment, History, Lockfile};
use cascade_manifest::{DeployComponent, Probe};
use cascade_store::Store;

use crate::diff::{diff_lockfiles, LockDiff};

mod lock;
mod secrets;

use crate::image::ImageRef;
use crate::{short_digest, Error, ExitCode, Layout};
use secrets::Secrets;

/// How long a replaced container gets to stop (SIGTERM) before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

static ACTIVE: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// For the CLI's signal handler: when a deploy is running, asks it to stop after the
/// current swap and roll back, and returns true (the handler must then not exit).
pub fn interrupt_deploy() -> bool {
    if ACTIVE.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
        true
    } else {
        false
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Marks a deploy as running for [`interrupt_deploy`] while it lives.
struct ActiveGuard;

impl ActiveGuard {
    fn new() -> ActiveGuard {
        INTERRUPTED.store(false, Ordering::SeqCst);
        ACTIVE.store(true, Ordering::SeqCst);
        ActiveGuard
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::SeqCst);
    }
}

/// Why a roll runs (what the history and the report record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployAction {
    Deploy,
    /// `rollback --deploy`.
    Rollback,
    /// The roll back after a failed deploy.
    AutoRollback,
}

/// How a component's containers on one host compare with the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployChange {
    Unchanged,
    Changed,
    Added,
    Removed,
}

/// How a roll ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployOutcome {
    Deployed,
    DryRun,
    /// A health check failed (rolled back or not).
    Failed,
    Interrupted,
}

/// The names the JSON, the history and the CLI use; `Display` pads, so the CLI can
/// align them in columns.
macro_rules! named {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),*
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}
named!(DeployAction { Deploy => "deploy", Rollback => "rollback", AutoRollback => "auto-rollback" });
named!(DeployChange { Unchanged => "unchanged", Changed => "changed", Added => "added", Removed => "removed" });
named!(DeployOutcome { Deployed => "deployed", DryRun => "dry-run", Failed => "failed", Interrupted => "interrupted" });

/// What `deploy` is asked to do.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    pub project: PathBuf,
    pub env: String,
    pub store: PathBuf,
    /// The lockfile to deploy; `None`: the environment's newest.
    pub lock: Option<PathBuf>,
    /// `Deploy` or `Rollback` (what the history records).
    pub action: DeployAction,
    pub dry_run: bool,
    pub no_rollback: bool,
    /// `YYYYMMDDTHHMMSSZ`, from the caller (the library reads no clock for records).
    pub stamp: String,
}

/// How a component's containers on one host compare with the target: one step of
/// the roll.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedComponent {
    pub name: String,
    /// The host (`local` for a deploy without `hosts:`).
    pub host: String,
    pub change: DeployChange,
    /// Why it is replaced (image, config, replicas, stopped).
    pub reasons: Vec<String>,
    /// The image digest running now (null when nothing runs).
    pub image_before: Option<String>,
    /// The image digest to run (null when removed).
    pub image_after: Option<String>,
    pub containers: Vec<String>,
}

/// One component's swap on one host.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ComponentReport {
    pub name: String,
    pub host: String,
    pub containers: Vec<ReplacedContainer>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplacedContainer {
    pub name: String,
    /// The container removed (null when there was none).
    pub old_id: Option<String>,
    pub new_id: String,
    pub healthy: bool,
    pub attempts: u32,
    pub detail: String,
    pub duration_ms: u64,
}

/// Why a deploy failed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeployFailure {
    pub component: String,
    pub host: String,
    pub container: String,
    pub detail: String,
    /// The failing container's last log lines.
    pub log_tail: Vec<String>,
}

/// The result of `cascade deploy` (and `rollback --deploy`); also the `--json` schema.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeployReport {
    pub environment: String,
    pub action: DeployAction,
    /// The lockfile deployed, relative to the project.
    pub lockfile: String,
    /// The lockfile the running containers came from, when the history knows it.
    pub running: Option<String>,
    pub dry_run: bool,
    pub plan: Vec<PlannedComponent>,
    /// The lockfile diff from `running` to `lockfile`, when `running` could be read.
    pub diff: Option<LockDiff>,
    pub replaced: Vec<ComponentReport>,
    pub outcome: DeployOutcome,
    pub failure: Option<DeployFailure>,
    /// The automatic rollback after a failure.
    pub rollback: Option<Box<DeployReport>>,
    /// Why there was no rollback after a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_rollback: Option<String>,
    pub history: String,
    /// The `deploy` event, as each `notify:` hook took it (not for a dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<cascade_notify::Delivery>,
}

impl DeployReport {
    /// `Ok` deployed (or dry run), `Failed` failed (rolled back or not), `Interrupted`.
    pub fn exit_code(&self) -> ExitCode {
        match self.outcome {
            DeployOutcome::Deployed | DeployOutcome::DryRun => ExitCode::Ok,
            DeployOutcome::Interrupted => ExitCode::Interrupted,
            DeployOutcome::Failed => ExitCode::Failed,
        }
    }
}

/// What the CLI shows while a deploy runs.
#[derive(Debug)]
pub enum DeployEvent<'a> {
    Plan(&'a DeployReport),
    Loaded {
        component: &'a str,
        host: &'a str,
        image: &'a str,
    },
    Replacing {
        component: &'a str,
        host: &'a str,
        container: &'a str,
    },
    Replaced {
        component: &'a str,
        host: &'a str,
        container: &'a ReplacedContainer,
    },
    Failed(&'a DeployFailure),
    Removed {
        component: &'a str,
        host: &'a str,
        container: &'a str,
    },
    RollingBack {
        to: &'a str,
    },
}

/// The label keys.
const L_ENV: &str = "cascade.env";
const L_COMPONENT: &str = "cascade.component";
const L_IMAGE: &str = "cascade.image";
const L_CONFIG: &str = "cascade.config";
const L_LOCKFILE: &str = "cascade.lockfile";
const L_HOST: &str = "cascade.host";
const L_SECRETS: &str = "cascade.secrets";

/// `cascade deploy`: the lockfile (or the newest) onto the fleet.
pub fn deploy(opts: &DeployOptions, on: &dyn Fn(DeployEvent<'_>)) -> Result<DeployReport, Error> {
    let project = crate::load(&opts.project, &opts.env)?;
    let ctx = Context::new(opts, &project)?;
    let target = match &opts.lock {
        Some(l) => l.clone(),
        None => {
            crate::newest_lockfile(&opts.project, &opts.env).ok_or_else(|| Error::NoLockfile {
                env: opts.env.clone(),
            })?
        }
    };
    require_signatures(opts, &project, &ctx, &target)?;
    // One deploy of an environment at a time, here and on every host; a dry run reads.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock::acquire(
            &opts.project,
            &opts.env,
            &opts.stamp,
            &ctx.hosts,
        )?)
    };
    let _active = ActiveGuard::new();
    let mut report = ctx.run(&target, opts.action, !opts.no_rollback, opts.dry_run, on)?;
    if !report.dry_run {
        report.notifications = notify_deploy(&project.graph.environment, &report);
    }
    Ok(report)
}

/// The `deploy` event: its outcome, the lockfile and the components it replaced.
fn notify_deploy(
    env: &cascade_manifest::Environment,
    report: &DeployReport,
) -> Vec<cascade_notify::Delivery> {
    use crate::notify::{EventComponent, EventKind, NotifyEvent};
    let mut event = NotifyEvent::new(
        EventKind::Deploy,
        &env.name,
        format!(
            "{} of {}: {} ({})",
            report.action, env.name, report.outcome, report.lockfile
        ),
    );
    event.lockfile = Some(report.lockfile.clone());
    event.outcome = Some(report.outcome.as_str().to_string());
    event.components = report
        .plan
        .iter()
        .filter(|p| p.change != DeployChange::Unchanged)
        .map(|p| EventComponent {
            name: p.name.clone(),
            version: None,
            commit: None,
            tag: None,
        })
        .collect();
    crate::notify::notify(&env.notify, &event)
}

/// Connects to every host of an environment's `deploy:` (in the fleet's order).
fn connect_hosts(deploy: &cascade_manifest::Deploy) -> Result<Vec<Host>, Error> {
    deploy
        .hosts
        .iter()
        .map(|h| {
            let docker = match &h.engine {
                Some(e) => Docker::connect_to(e),
                None => Docker::connect(),
            }
            .map_err(|source| Error::DeployHost {
                host: h.name.clone(),
                source,
            })?;
            Ok(Host {
                name: h.name.clone(),
                docker,
            })
        })
        .collect()
}

/// Every container of `env` on every host, by host.
fn running_on(hosts: &[Host], env: &str) -> Result<BTreeMap<String, Vec<ContainerInfo>>, Error> {
    let mut out = BTreeMap::new();
    for h in hosts {
        let running = h
            .docker
            .containers_with(&[(L_ENV, env)])
            .map_err(|source| Error::DeployEngine { source })?;
        out.insert(h.name.clone(), running);
    }
    Ok(out)
}

/// What `cascade rollback --deploy` goes back to: (what runs now, the lockfile to
/// deploy). When the fleet runs something else than the last successful deployment
/// (a `--no-rollback` failure, a partial roll), that deployment; otherwise the one
/// before it.
pub fn rollback_target(project: &Path, env: &str) -> Result<(String, String), Error> {
    let loaded = crate::load(project, env)?;
    let deploy = loaded
        .graph
        .environment
        .deploy
        .as_ref()
        .ok_or_else(|| Error::NoDeploy {
            env: env.to_string(),
        })?;
    let hosts = connect_hosts(deploy)?;
    let running: Vec<ContainerInfo> = running_on(&hosts, env)?.into_values().flatten().collect();
    let history = read_history(project, env)?;
    let no_previous = || Error::NoPreviousDeploy {
        env: env.to_string(),
    };
    let current = history.current().ok_or_else(no_previous)?;
    let digests: BTreeSet<&String> = running
        .iter()
        .filter_map(|i| i.labels.get(L_LOCKFILE))
        .collect();
    let now = running_lockfile(&running, &history).unwrap_or_else(|| "unknown".into());
    if digests.len() != 1 || !digests.contains(&current.lockfile_digest) {
        return Ok((now, current.lockfile.clone()));
    }
    let previous = history.previous().ok_or_else(no_previous)?;
    Ok((now, previous.lockfile.clone()))
}

/// `cascade rollback --deploy`: the deployment [`rollback_target`] names.
pub fn rollback_deploy(
    opts: &DeployOptions,
    on: &dyn Fn(DeployEvent<'_>),
) -> Result<DeployReport, Error> {
    let (_, to) = rollback_target(&opts.project, &opts.env)?;
    let opts = DeployOptions {
        lock: Some(opts.project.join(to)),
        action: DeployAction::Rollback,
        ..opts.clone()
    };
    deploy(&opts, on)
}

/// One Docker Engine of the fleet.
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) docker: Docker,
}

/// The environment's `require_signature:`: the image of every deployed component in
/// `target` signed and attested by one of its keys, or nothing changes. An automatic
/// rollback is not checked again: it goes back to what was running.
fn require_signatures(
    opts: &DeployOptions,
    project: &crate::Project,
    ctx: &Context<'_>,
    target: &Path,
) -> Result<(), Error> {
    let keys = &project.graph.environment.require_signature;
    if keys.is_empty() {
        return Ok(());
    }
    let shown = ctx.shown(target);
    let lock = crate::read_lockfile(target, &shown)?;
    let deployed: BTreeSet<&str> = ctx
        .components
        .iter()
        .map(|c| c.component.as_str())
        .collect();
    crate::sign::require_signatures(
        &opts.env,
        keys,
        &project.environment_dir(),
        &opts.store,
        &lock,
        &|n| deployed.contains(n),
    )
}

/// What the project and the fleet hold for one deploy (and its rollback).
struct Context<'a> {
    opts: &'a DeployOptions,
    /// The deployed components in graph order (upstream first).
    components: Vec<DeployComponent>,
    hosts: Vec<Host>,
    /// How many hosts of one component are replaced at once.
    max_unavailable: usize,
    /// Component → its secrets, read once per deploy.
    secrets: BTreeMap<String, Secrets>,
    store: PathBuf,
}

/// One container to (re)create in a batch of the roll, once its swap has started.
/// What every batch of a roll shares: the images (by component and host, and the
/// digests the lockfile names), the lockfile's digest, the containers running before
/// the roll, and where events go.
struct Roll<'r> {
    image_ids: &'r BTreeMap<(String, String), String>,
    images: &'r BTreeMap<String, String>,
    lock_digest: &'r str,
    running: &'r BTreeMap<String, Vec<ContainerInfo>>,
    on: &'r dyn Fn(DeployEvent<'_>),
}

struct Started<'p> {
    step: &'p PlannedComponent,
    name: String,
    old_id: Option<String>,
    new_id: String,
}

impl<'a> Context<'a> {
    fn new(opts: &'a DeployOptions, project: &crate::Project) -> Result<Context<'a>, Error> {
        let graph = &project.graph;
        let deploy = graph
            .environment
            .deploy
            .clone()
            .ok_or_else(|| Error::NoDeploy {
                env: opts.env.clone(),
            })?;
        let by_name: BTreeMap<&str, &DeployComponent> = deploy
            .components
            .iter()
            .map(|c| (c.component.as_str(), c))
            .collect();
        let components: Vec<DeployComponent> = graph
            .components
            .iter()
            .filter_map(|c| by_name.get(c.name.as_str()).map(|d| (*d).clone()))
            .collect();
        // Secrets first: a missing one costs no connection.
        let secrets = secrets::resolve(&components, &project.environment_dir())?;
        let hosts = connect_hosts(&deploy)?;
        Ok(Context {
            opts,
            components,
            hosts,
            max_unavailable: deploy.max_unavailable.max(1) as usize,
            secrets,
            store: opts.store.clone(),
        })
    }

    fn engine<T>(r: Result<T, cascade_docker::DockerError>) -> Result<T, Error> {
        r.map_err(|source| Error::DeployEngine { source })
    }

    fn host(&self, name: &str) -> Result<&Docker, Error> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.docker)
            .ok_or_else(|| Error::DeployLockfile {
                lockfile: String::new(),
                why: format!("containers of this environment run on `{name}`, which `deploy.hosts` no longer names"),
            })
    }

    fn shown(&self, p: &Path) -> String {
        p.strip_prefix(&self.opts.project)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// Deploys `target`; on failure, rolls back when `rollback` and there is something to
    /// roll back to.
    fn run(
        &self,
        target: &Path,
        action: DeployAction,
        rollback: bool,
        dry_run: bool,
        on: &dyn Fn(DeployEvent<'_>),
    ) -> Result<DeployReport, Error> {
        let env = &self.opts.env;
        let shown = self.shown(target);
        let text = crate::lockfiles::read_lockfile_text(target, &shown)?;
        let lock_digest = Digest::of(text.as_bytes()).to_string();
        let lock = cascade_lock::read(&shown, &text)?;
        if lock.environment != *env {
            return Err(Error::DeployLockfile {
                lockfile: shown,
                why: format!("it is a lockfile of `{}`, not of `{env}`", lock.environment),
            });
        }
        // The target image of every deployed component.
        let mut images: BTreeMap<String, String> = BTreeMap::new();
        for c in &self.components {
            let image = lock
                .nodes
                .get(&c.component)
                .and_then(|n| n.image.as_ref())
                .ok_or_else(|| Error::DeployLockfile {
                    lockfile: shown.clone(),
                    why: format!("it has no image for `{}`", c.component),
                })?;
            images.insert(c.component.clone(), image.digest.clone());
        }
        let history = read_history(&self.opts.project, env)?;
        let running = running_on(&self.hosts, env)?;
        let plan = self.plan(&images, &running);
        let flat: Vec<ContainerInfo> = running.values().flatten().cloned().collect();
        let running_lock = running_lockfile(&flat, &history);
        let diff = running_lock
            .as_ref()
            .filter(|p| **p != shown)
            .and_then(|p| {
                let old = crate::read_lockfile(&self.opts.project.join(p), p).ok()?;
                Some(diff_lockfiles(
                    Some((p.as_str(), &old)),
                    (shown.as_str(), &lock),
                    &|_, _, _| None,
                ))
            });
        let mut report = DeployReport {
            environment: env.clone(),
            action,
            lockfile: shown.clone(),
            running: running_lock,
            dry_run,
            plan,
            diff,
            replaced: Vec::new(),
            outcome: DeployOutcome::DryRun,
            failure: None,
            rollback: None,
            no_rollback: None,
            history: Layout::history_rel(env),
            notifications: Vec::new(),
        };
        on(DeployEvent::Plan(&report));
        if dry_run {
            return Ok(report);
        }
        let image_ids = self.load_images(&lock, &report.plan, on)?;
        let roll = Roll {
            image_ids: &image_ids,
            images: &images,
            lock_digest: &lock_digest,
            running: &running,
            on,
        };
        let failure = self.apply(
            &report.plan,
            &roll,
            action == DeployAction::AutoRollback,
            &mut report.replaced,
        )?;
        let outcome = match &failure {
            None => DeployOutcome::Deployed,
            Some(_) if interrupted() => DeployOutcome::Interrupted,
            Some(_) => DeployOutcome::Failed,
        };
        report.outcome = outcome;
        self.record(Deployment {
            at: self.opts.stamp.clone(),
            action: action.as_str().to_string(),
            outcome: outcome.as_str().to_string(),
            lockfile: shown.clone(),
            lockfile_digest: lock_digest.clone(),
            images: images.clone(),
            detail: failure
                .as_ref()
                .map(|f| format!("`{}` on `{}`: {}", f.container, f.host, f.detail)),
            hosts: self.what_runs()?,
        })?;
        let Some(failure) = failure else {
            return Ok(report);
        };
        on(DeployEvent::Failed(&failure));
        report.failure = Some(failure);
        if !rollback {
            report.no_rollback = Some("--no-rollback: the failed state is left running".into());
            return Ok(report);
        }
        self.roll_back(&history, &lock_digest, &mut report, on)?;
        Ok(report)
    }

    /// After a failed roll: back to what was deployed before this attempt (read before
    /// it was recorded), on the hosts already changed, newest first.
    fn roll_back(
        &self,
        history: &History,
        lock_digest: &str,
        report: &mut DeployReport,
        on: &dyn Fn(DeployEvent<'_>),
    ) -> Result<(), Error> {
        match history.current() {
            Some(previous) if previous.lockfile_digest != lock_digest => {
                let to = self.opts.project.join(&previous.lockfile);
                // The rollback runs to its end: the interrupt has been honoured by
                // stopping this deploy (a second signal exits at once, in the CLI).
                INTERRUPTED.store(false, Ordering::SeqCst);
                on(DeployEvent::RollingBack {
                    to: &previous.lockfile,
                });
                let back = self.run(&to, DeployAction::AutoRollback, false, false, on)?;
                report.rollback = Some(Box::new(back));
            }
            Some(_) => {
                report.no_rollback = Some(
                    "the previous deployment is this same lockfile; nothing older to go back to"
                        .into(),
                );
            }
            None => {
                // Nothing was deployed before: the previous state is no containers.
                for c in self.components.iter().rev() {
                    for host in c.hosts.iter().rev() {
                        let docker = self.host(host)?;
                        for name in c.container_names() {
                            if let Some(info) = Self::engine(docker.container(&name))? {
                                if self.ours(&info) {
                                    Self::engine(docker.remove(&info.id))?;
                                    on(DeployEvent::Removed {
                                        component: &c.component,
                                        host,
                                        container: &name,
                                    });
                                }
                            }
                        }
                    }
                }
                report.no_rollback = Some(
                    "nothing was deployed before: the containers of this deploy were removed"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Host → component → image digest, as the containers' labels say now.
    fn what_runs(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, Error> {
        let mut out = BTreeMap::new();
        for (host, infos) in running_on(&self.hosts, &self.opts.env)? {
            let images = infos
                .iter()
                .filter_map(|i| {
                    Some((
                        i.labels.get(L_COMPONENT)?.clone(),
                        i.labels.get(L_IMAGE)?.clone(),
                    ))
                })
                .collect();
            out.insert(host, images);
        }
        Ok(out)
    }

    /// Each step of the roll: a component on a host (graph order, then the fleet's), as
    /// the target wants it against what runs; then what runs but is no longer placed.
    fn plan(
        &self,
        images: &BTreeMap<String, String>,
        running: &BTreeMap<String, Vec<ContainerInfo>>,
    ) -> Vec<PlannedComponent> {
        let mut out = Vec::new();
        let none = Vec::new();
        for c in &self.components {
            for host in &self.hosts {
                let on_host = running.get(&host.name).unwrap_or(&none);
                let mine: Vec<&ContainerInfo> = on_host
                    .iter()
                    .filter(|i| i.labels.get(L_COMPONENT) == Some(&c.component))
                    .collect();
                if c.hosts.contains(&host.name) {
                    out.push(self.step(c, &host.name, &mine, images));
                } else if !mine.is_empty() {
                    out.push(removed(
                        &c.component,
                        &host.name,
                        &mine,
                        "no longer placed on this host",
                    ));
                }
            }
        }
        // Components that run but are no longer deployed.
        let deployed: BTreeSet<&str> = self
            .components
            .iter()
            .map(|c| c.component.as_str())
            .collect();
        for host in &self.hosts {
            let mut gone: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
            for i in running.get(&host.name).unwrap_or(&none) {
                if let Some(c) = i.labels.get(L_COMPONENT) {
                    if !deployed.contains(c.as_str()) {
                        gone.entry(c.clone()).or_default().push(i);
                    }
                }
            }
            for (name, infos) in gone {
                out.push(removed(&name, &host.name, &infos, "no longer in `deploy:`"));
            }
        }
        out
    }

    /// One component on one host, against its containers there (`mine`).
    fn step(
        &self,
        c: &DeployComponent,
        host: &str,
        mine: &[&ContainerInfo],
        images: &BTreeMap<String, String>,
    ) -> PlannedComponent {
        let want_image = images.get(&c.component).cloned();
        let want_config = config_digest(c);
        let want_secrets = self.secret_digest(&c.component);
        let names = c.container_names();
        let mut reasons = Vec::new();
        let before = mine.first().and_then(|i| i.labels.get(L_IMAGE)).cloned();
        if mine.is_empty() {
            reasons.push("not running".to_string());
        } else {
            if mine
                .iter()
                .any(|i| i.labels.get(L_IMAGE) != want_image.as_ref())
            {
                reasons.push(format!(
                    "image {} → {}",
                    before.as_ref().map_or("?".into(), short_digest),
                    want_image.as_ref().map_or("?".into(), short_digest)
                ));
            }
            if mine
                .iter()
                .any(|i| i.labels.get(L_CONFIG) != Some(&want_config))
            {
                reasons.push("deploy config changed".to_string());
            }
            let had_secrets = |i: &&&ContainerInfo| {
                i.labels.get(L_SECRETS).map(String::as_str).unwrap_or("") != want_secrets
            };
            if mine.iter().any(|i| had_secrets(&i)) {
                reasons.push("secrets changed".to_string());
            }
            let have: BTreeSet<&str> = mine.iter().map(|i| i.name.as_str()).collect();
            let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
            if have != want {
                reasons.push(format!("containers {} → {}", have.len(), want.len()));
            }
            if let Some(stopped) = mine.iter().find(|i| !i.running) {
                reasons.push(format!("`{}` is {}", stopped.name, stopped.state));
            }
        }
        let change = match (mine.is_empty(), reasons.is_empty()) {
            (true, _) => DeployChange::Added,
            (false, true) => DeployChange::Unchanged,
            (false, false) => DeployChange::Changed,
        };
        PlannedComponent {
            name: c.component.clone(),
            host: host.to_string(),
            change,
            reasons,
            image_before: before,
            image_after: want_image,
            containers: names,
        }
    }

    fn secret_digest(&self, component: &str) -> String {
        self.secrets
            .get(component)
            .map(Secrets::digest)
            .unwrap_or_default()
    }

    /// The engine's image id for each step to (re)create, by (component, host), loading
    /// from the store what that host's engine does not have.
    fn load_images(
        &self,
        lock: &Lockfile,
        plan: &[PlannedComponent],
        on: &dyn Fn(DeployEvent<'_>),
    ) -> Result<BTreeMap<(String, String), String>, Error> {
        let mut ids = BTreeMap::new();
        let todo: Vec<&PlannedComponent> = plan
            .iter()
            .filter(|p| matches!(p.change, DeployChange::Changed | DeployChange::Added))
            .collect();
        if todo.is_empty() {
            return Ok(ids);
        }
        let store = Store::open(&self.store)?;
        let layout = OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?;
        for p in todo {
            let Some(image) = lock.nodes.get(&p.name).and_then(|n| n.image.as_ref()) else {
                continue;
            };
            let docker = self.host(&p.host)?;
            let digest: OciDigest = image.digest.parse().map_err(Error::Image)?;
            // The engine names an image by its config digest (classic image store).
            let config = layout
                .image_blobs(&digest)
                .map_err(Error::Image)?
                .get(1)
                .copied();
            let have = match config {
                Some(c) => Self::engine(docker.image_id(&c.to_string()))?,
                None => None,
            };
            let id = match have {
                Some(id) => id,
                None => {
                    let r = ImageRef {
                        reference: image.reference.clone(),
                        digest,
                    };
                    // Streamed from the store to that engine (over its ssh connection
                    // too): the digest that runs is the lockfile's, never a tag's.
                    let id =
                        crate::publish::load(docker, &store, &layout, &r).map_err(|message| {
                            Error::Load {
                                reference: image.reference.clone(),
                                message,
                            }
                        })?;
                    on(DeployEvent::Loaded {
                        component: &p.name,
                        host: &p.host,
                        image: &image.reference,
                    });
                    id
                }
            };
            ids.insert((p.name.clone(), p.host.clone()), id);
        }
        Ok(ids)
    }

    /// Whether cascade deploy of this environment created `info`.
    fn ours(&self, info: &ContainerInfo) -> bool {
        info.labels.get("cascade").map(String::as_str) == Some("1")
            && info.labels.get(L_ENV) == Some(&self.opts.env)
    }

    /// A name taken by a container cascade did not create stops the deploy before
    /// anything is touched.
    fn check_foreign(&self, plan: &[PlannedComponent]) -> Result<(), Error> {
        for p in plan
            .iter()
            .filter(|p| matches!(p.change, DeployChange::Changed | DeployChange::Added))
        {
            let docker = self.host(&p.host)?;
            for name in &p.containers {
                if let Some(other) = Self::engine(docker.container(name))? {
                    if !self.ours(&other) {
                        return Err(Error::ForeignContainer {
                            name: name.clone(),
                            env: self.opts.env.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The roll: component by component in graph order (a rollback: in reverse), and
    /// within a component `max_unavailable` hosts at a time, each batch health-checked
    /// before the next starts; the first failure (or an interrupt) stops it. Then removes
    /// what is no longer deployed, downstream first.
    fn apply(
        &self,
        plan: &[PlannedComponent],
        roll: &Roll<'_>,
        reverse: bool,
        replaced: &mut Vec<ComponentReport>,
    ) -> Result<Option<DeployFailure>, Error> {
        self.check_foreign(plan)?;
        let mut order: Vec<&DeployComponent> = self.components.iter().collect();
        if reverse {
            order.reverse();
        }
        for c in order {
            let mut steps: Vec<&PlannedComponent> = plan
                .iter()
                .filter(|p| {
                    p.name == c.component
                        && matches!(p.change, DeployChange::Changed | DeployChange::Added)
                })
                .collect();
            if reverse {
                steps.reverse();
            }
            for batch in steps.chunks(self.max_unavailable) {
                if let Some(f) = self.roll_batch(c, batch, roll, replaced)? {
                    return Ok(Some(f));
                }
            }
        }
        // Downstream first when taking containers away.
        for p in plan
            .iter()
            .rev()
            .filter(|p| p.change == DeployChange::Removed)
        {
            let docker = self.host(&p.host)?;
            for name in &p.containers {
                if let Some(i) = Self::engine(docker.container(name))? {
                    Self::engine(docker.stop(&i.id, STOP_GRACE))?;
                    Self::engine(docker.remove(&i.id))?;
                    (roll.on)(DeployEvent::Removed {
                        component: &p.name,
                        host: &p.host,
                        container: name,
                    });
                }
            }
        }
        Ok(None)
    }

    /// One batch of hosts of one component: every container swapped, then every one
    /// health-checked; the first that fails is the roll's failure.
    fn roll_batch(
        &self,
        c: &DeployComponent,
        batch: &[&PlannedComponent],
        roll: &Roll<'_>,
        replaced: &mut Vec<ComponentReport>,
    ) -> Result<Option<DeployFailure>, Error> {
        let started = match self.swap_batch(c, batch, roll)? {
            Ok(started) => started,
            Err(interrupted) => return Ok(Some(interrupted)),
        };
        let (reports, failure) = self.check_batch(c, started, roll.on)?;
        if failure.is_none() {
            self.remove_unwanted_replicas(c, batch, roll)?;
        }
        replaced.extend(reports.into_values());
        Ok(failure)
    }

    /// The swap (a batch's first step): each host's old container stopped and removed,
    /// the new one created and started; an interrupt before a host is the roll's failure.
    fn swap_batch<'p>(
        &self,
        c: &DeployComponent,
        batch: &[&'p PlannedComponent],
        roll: &Roll<'_>,
    ) -> Result<Result<Vec<Started<'p>>, DeployFailure>, Error> {
        let mut started: Vec<Started<'_>> = Vec::new();
        for step in batch {
            if interrupted() {
                return Ok(Err(DeployFailure {
                    component: c.component.clone(),
                    host: step.host.clone(),
                    container: c.container.clone(),
                    detail: "interrupted before this host was replaced".into(),
                    log_tail: Vec::new(),
                }));
            }
            let Some(image_id) = roll
                .image_ids
                .get(&(c.component.clone(), step.host.clone()))
            else {
                continue;
            };
            let docker = self.host(&step.host)?;
            for name in &step.containers {
                (roll.on)(DeployEvent::Replacing {
                    component: &c.component,
                    host: &step.host,
                    container: name,
                });
                // The swap: a signal now only sets the flag, so it always completes.
                let old = Self::engine(docker.container(name))?;
                if let Some(old) = &old {
                    if !self.ours(old) {
                        return Err(Error::ForeignContainer {
                            name: name.clone(),
                            env: self.opts.env.clone(),
                        });
                    }
                    Self::engine(docker.stop(&old.id, STOP_GRACE))?;
                    Self::engine(docker.remove(&old.id))?;
                }
                let spec = self.container_spec(
                    c,
                    &step.host,
                    name,
                    image_id,
                    roll.images,
                    roll.lock_digest,
                );
                let id = Self::engine(docker.create_deployed(&spec))?;
                Self::engine(docker.start(&id))?;
                started.push(Started {
                    step,
                    name: name.clone(),
                    old_id: old.map(|o| o.id),
                    new_id: id,
                });
            }
        }
        Ok(Ok(started))
    }

    /// A batch's second step: every started container health-checked (or, without a
    /// check, still running); the reports by host, and the first failure.
    fn check_batch<'s>(
        &self,
        c: &DeployComponent,
        started: Vec<Started<'s>>,
        on: &dyn Fn(DeployEvent<'_>),
    ) -> Result<(BTreeMap<&'s str, ComponentReport>, Option<DeployFailure>), Error> {
        let mut reports: BTreeMap<&str, ComponentReport> = BTreeMap::new();
        let mut failure = None;
        for s in started {
            let docker = self.host(&s.step.host)?;
            let outcome = match &c.health {
                Some(h) => {
                    let check = health_spec(h);
                    Self::engine(docker.wait_healthy(&s.new_id, &check, &interrupted))?
                }
                None => self.still_running(docker, &s.new_id)?,
            };
            let r = ReplacedContainer {
                name: s.name.clone(),
                old_id: s.old_id,
                new_id: s.new_id,
                healthy: outcome.passed,
                attempts: outcome.attempts,
                detail: outcome.detail.clone(),
                duration_ms: outcome.elapsed.as_millis() as u64,
            };
            on(DeployEvent::Replaced {
                component: &c.component,
                host: &s.step.host,
                container: &r,
            });
            reports
                .entry(s.step.host.as_str())
                .or_insert_with(|| ComponentReport {
                    name: c.component.clone(),
                    host: s.step.host.clone(),
                    containers: Vec::new(),
                })
                .containers
                .push(r);
            if !outcome.passed && failure.is_none() {
                failure = Some(DeployFailure {
                    component: c.component.clone(),
                    host: s.step.host.clone(),
                    container: s.name,
                    detail: outcome.detail,
                    log_tail: outcome.log_tail,
                });
            }
        }
        Ok((reports, failure))
    }

    /// A batch's last step, when it passed: replicas no longer wanted, on its hosts.
    fn remove_unwanted_replicas(
        &self,
        c: &DeployComponent,
        batch: &[&PlannedComponent],
        roll: &Roll<'_>,
    ) -> Result<(), Error> {
        let none = Vec::new();
        for step in batch {
            let docker = self.host(&step.host)?;
            for old in roll
                .running
                .get(&step.host)
                .unwrap_or(&none)
                .iter()
                .filter(|i| {
                    i.labels.get(L_COMPONENT) == Some(&c.component)
                        && !step.containers.contains(&i.name)
                })
            {
                Self::engine(docker.remove(&old.id))?;
                (roll.on)(DeployEvent::Removed {
                    component: &c.component,
                    host: &step.host,
                    container: &old.name,
                });
            }
        }
        Ok(())
    }

    /// Without a health check, a container must at least still run a moment after its
    /// start.
    fn still_running(
        &self,
        docker: &Docker,
        id: &str,
    ) -> Result<cascade_docker::HealthOutcome, Error> {
        std::thread::sleep(Duration::from_millis(500));
        let info = Self::engine(docker.container(id))?;
        let running = info.as_ref().is_some_and(|i| i.running);
        let log_tail = if running {
            Vec::new()
        } else {
            docker.last_log_lines(id).unwrap_or_default()
        };
        Ok(cascade_docker::HealthOutcome {
            passed: running,
            attempts: 0,
            detail: if running {
                "running (no health check declared)".into()
            } else {
                format!(
                    "the container is {} (no health check declared)",
                    info.map_or("gone".to_string(), |i| i.state)
                )
            },
            log_tail,
            elapsed: Duration::from_millis(500),
        })
    }

    fn container_spec(
        &self,
        c: &DeployComponent,
        host: &str,
        name: &str,
        image_id: &str,
        images: &BTreeMap<String, String>,
        lock_digest: &str,
    ) -> ContainerSpec {
        let mut ports: Vec<Publish> = c
            .ports
            .iter()
            .map(|p| Publish {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port,
                container: p.container,
            })
            .collect();
        // An http health check is probed on 127.0.0.1: publish its port there when the
        // manifest does not (the engine picks the host port).
        if let Some(Probe::Http { port, .. }) = c.health.as_ref().map(|h| &h.probe) {
            if !ports
                .iter()
                .any(|p| p.container == *port && p.host_ip == "127.0.0.1")
            {
                ports.push(Publish {
                    host_ip: "127.0.0.1".into(),
                    host_port: None,
                    container: *port,
                });
            }
        }
        let mut labels = BTreeMap::from([
            (L_ENV.to_string(), self.opts.env.clone()),
            (L_COMPONENT.to_string(), c.component.clone()),
            (L_HOST.to_string(), host.to_string()),
            (
                L_IMAGE.to_string(),
                images.get(&c.component).cloned().unwrap_or_default(),
            ),
            (L_CONFIG.to_string(), config_digest(c)),
            (L_LOCKFILE.to_string(), lock_digest.to_string()),
        ]);
        let secrets = self.secrets.get(&c.component);
        if let Some(s) = secrets.filter(|s| !s.digest().is_empty()) {
            labels.insert(L_SECRETS.to_string(), s.digest());
        }
        let mut env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // Which node it is, for software that needs an identity per host (a cluster's
        // members); derived from the placement, so not part of the config digest.
        env.push(format!("CASCADE_HOST={host}"));
        env.extend(secrets.into_iter().flat_map(Secrets::env));
        ContainerSpec {
            name: name.to_string(),
            image: image_id.to_string(),
            labels,
            env,
            ports,
            binds: c
                .volumes
                .iter()
                .map(|v| {
                    format!(
                        "{}:{}{}",
                        v.source,
                        v.target,
                        if v.read_only { ":ro" } else { "" }
                    )
                })
                .collect(),
            restart: c.restart.clone(),
        }
    }

    /// Appends to `deployments/<env>.yaml`, atomically (temp file, fsync, rename).
    fn record(&self, d: Deployment) -> Result<(), Error> {
        let mut h = read_history(&self.opts.project, &self.opts.env)?;
        h.environment = self.opts.env.clone();
        h.deployments.push(d);
        let path = history_path(&self.opts.project, &self.opts.env);
        Store::write_atomic(&path, cascade_lock::write_history(&h).as_bytes())?;
        Ok(())
    }
}

/// A step that takes a component's containers off a host.
fn removed(name: &str, host: &str, infos: &[&ContainerInfo], why: &str) -> PlannedComponent {
    PlannedComponent {
        name: name.to_string(),
        host: host.to_string(),
        change: DeployChange::Removed,
        reasons: vec![why.into()],
        image_before: infos.first().and_then(|i| i.labels.get(L_IMAGE)).cloned(),
        image_after: None,
        containers: infos.iter().map(|i| i.name.clone()).collect(),
    }
}

/// `<project>/deployments/<env>.yaml`.
pub fn history_path(project: &Path, env: &str) -> PathBuf {
    Layout::new(project).history(env)
}

/// The deploy history of `env` (empty when there is none yet).
pub fn read_history(project: &Path, env: &str) -> Result<History, Error> {
    let path = history_path(project, env);
    let shown = Layout::history_rel(env);
    let limit = crate::bounded::HISTORY_LIMIT;
    match crate::bounded::read(&path, limit, true) {
        Ok(bytes) => {
            let text = crate::load::utf8(&shown, bytes)?;
            Ok(cascade_lock::read_history(&shown, &text)?)
        }
        Err(e) if e.not_found() => Ok(History {
            environment: env.to_string(),
            deployments: Vec::new(),
        }),
        Err(e) => Err(e.into_error(&shown, "a deploy history", limit)),
    }
}

/// The lockfile the running containers say they came from, as the history names it.
fn running_lockfile(running: &[ContainerInfo], history: &History) -> Option<String> {
    let digests: BTreeSet<&String> = running
        .iter()
        .filter_map(|i| i.labels.get(L_LOCKFILE))
        .collect();
    // Containers of several lockfiles (a partial deploy) have no one lockfile.
    let [digest] = digests.into_iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    history
        .deployments
        .iter()
        .rev()
        .find(|d| &d.lockfile_digest == digest)
        .map(|d| d.lockfile.clone())
}

/// A digest of everything in a component's `deploy:` entry, so that a changed port, env
/// or volume replaces its containers. JSON objects are `BTreeMap`s: the key order is
/// fixed.
fn config_digest(c: &DeployComponent) -> String {
    let health = c.health.as_ref().map(|h| {
        serde_json::json!({
            "probe": match &h.probe {
                Probe::Http { port, path } => serde_json::json!({ "http": { "port": port, "path": path } }),
                Probe::Command(argv) => serde_json::json!({ "command": argv }),
            },
            "interval_ms": h.interval.as_millis() as u64,
            "timeout_ms": h.timeout.as_millis() as u64,
            "retries": h.retries,
            "start_period_ms": h.start_period.as_millis() as u64,
        })
    });
    let v = serde_json::json!({
        "container": c.container,
        "ports": c.ports.iter().map(|p| serde_json::json!([p.host_ip, p.host_port, p.container])).collect::<Vec<_>>(),
        "env": c.env,
        "volumes": c.volumes.iter().map(|v| serde_json::json!([v.source, v.target, v.read_only])).collect::<Vec<_>>(),
        "restart": c.restart,
        "replicas": c.replicas,
        "health": health,
    });
    Digest::of(v.to_string().as_bytes()).to_string()
}

/// A deployed container's health, from one probe of its check made now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Running, with no health check declared.
    Running,
    Stopped,
    /// The probe itself failed.
    Unknown,
}

named!(Health { Healthy => "healthy", Unhealthy => "unhealthy", Running => "running", Stopped => "stopped", Unknown => "unknown" });

/// One running container, for `cascade status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerStatus {
    pub component: String,
    /// The host it runs on.
    pub host: String,
    pub name: String,
    pub id: String,
    /// `running`, `exited`, …
    pub state: String,
    pub health: Health,
    pub detail: String,
    pub image: String,
    pub lockfile_digest: String,
    /// The lockfile the history names for `lockfile_digest`, when it does.
    pub lockfile: Option<String>,
    /// Whether its secrets differ from what the environment's `secrets:` hold now
    /// (only when they can be read here).
    pub secrets_changed: bool,
    /// `127.0.0.1:18080->8080`.
    pub ports: Vec<String>,
}

/// A host that runs something else than the rest of the fleet.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Straggler {
    pub host: String,
    /// The lockfiles its containers came from (as the history names them, else their
    /// digests).
    pub lockfiles: Vec<String>,
}

/// `cascade status`: what runs for `env` on each host, from which lockfile, and how
/// healthy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    pub environment: String,
    /// The lockfile the history names for the running containers' label, when every
    /// container of every host agrees.
    pub lockfile: Option<String>,
    /// The hosts, in the fleet's order.
    pub hosts: Vec<String>,
    pub containers: Vec<ContainerStatus>,
    /// Whether every host runs the same lockfile (false after an interrupted roll).
    pub uniform: bool,
    /// The hosts that are not on the fleet's newest lockfile (the history's current),
    /// when the fleet is not uniform.
    pub stragglers: Vec<Straggler>,
    /// The history's newest entry.
    pub last: Option<Deployment>,
}

/// `cascade status --env E`.
pub fn status(project: &Path, env: &str) -> Result<StatusReport, Error> {
    let loaded = crate::load(project, env)?;
    let deploy = loaded
        .graph
        .environment
        .deploy
        .clone()
        .ok_or_else(|| Error::NoDeploy {
            env: env.to_string(),
        })?;
    let hosts = connect_hosts(&deploy)?;
    let history = read_history(project, env)?;
    let running = running_on(&hosts, env)?;
    let by_component: BTreeMap<&str, &DeployComponent> = deploy
        .components
        .iter()
        .map(|c| (c.component.as_str(), c))
        .collect();
    // Secrets that cannot be read here (a variable only the deploy machine has) are
    // simply not compared.
    let secrets = secrets::resolve(&deploy.components, &loaded.environment_dir()).ok();
    let name_of = |digest: &str| {
        history
            .deployments
            .iter()
            .rev()
            .find(|d| d.lockfile_digest == digest)
            .map(|d| d.lockfile.clone())
    };
    let mut containers = Vec::new();
    for h in &hosts {
        for i in running.get(&h.name).into_iter().flatten() {
            let component = i.labels.get(L_COMPONENT).cloned().unwrap_or_default();
            let decl = by_component.get(component.as_str());
            let (health, detail) = probe_now(&h.docker, i, decl.and_then(|c| c.health.as_ref()));
            let lockfile_digest = i.labels.get(L_LOCKFILE).cloned().unwrap_or_default();
            let secrets_changed = secrets.as_ref().is_some_and(|s| {
                let want = s.get(&component).map(Secrets::digest).unwrap_or_default();
                i.labels.get(L_SECRETS).map(String::as_str).unwrap_or("") != want
            });
            containers.push(ContainerStatus {
                component,
                host: h.name.clone(),
                name: i.name.clone(),
                id: i.id.clone(),
                state: i.state.clone(),
                health,
                detail,
                image: i.labels.get(L_IMAGE).cloned().unwrap_or_default(),
                lockfile: name_of(&lockfile_digest),
                lockfile_digest,
                secrets_changed,
                ports: i
                    .ports
                    .iter()
                    .map(|(c, ip, hp)| format!("{ip}:{hp}->{c}"))
                    .collect(),
            });
        }
    }
    let flat: Vec<ContainerInfo> = running.values().flatten().cloned().collect();
    let digests: BTreeSet<&str> = containers
        .iter()
        .map(|c| c.lockfile_digest.as_str())
        .collect();
    let uniform = digests.len() <= 1;
    let newest = history.current().map(|d| d.lockfile_digest.clone());
    let stragglers = if uniform {
        Vec::new()
    } else {
        hosts
            .iter()
            .filter_map(|h| {
                let mine: BTreeSet<&str> = containers
                    .iter()
                    .filter(|c| c.host == h.name)
                    .map(|c| c.lockfile_digest.as_str())
                    .collect();
                let on_newest = newest
                    .as_deref()
                    .is_some_and(|n| mine.len() == 1 && mine.contains(n));
                (!on_newest && !mine.is_empty()).then(|| Straggler {
                    host: h.name.clone(),
                    lockfiles: mine
                        .iter()
                        .map(|d| name_of(d).unwrap_or_else(|| d.to_string()))
                        .collect(),
                })
            })
            .collect()
    };
    Ok(StatusReport {
        environment: env.to_string(),
        lockfile: running_lockfile(&flat, &history),
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        containers,
        uniform,
        stragglers,
        last: history.deployments.last().cloned(),
    })
}

/// (health, detail) of a running container: one probe of its check, now.
fn probe_now(
    docker: &Docker,
    i: &ContainerInfo,
    check: Option<&cascade_manifest::HealthCheck>,
) -> (Health, String) {
    match (i.running, check) {
        (false, _) => (Health::Stopped, i.state.clone()),
        (true, None) => (Health::Running, "no health check declared".into()),
        (true, Some(h)) => {
            let check = HealthSpec {
                retries: 1,
                start_period: Duration::ZERO,
                ..health_spec(h)
            };
            match docker.wait_healthy(&i.id, &check, &|| false) {
                Ok(o) if o.passed => (Health::Healthy, o.detail),
                Ok(o) => (Health::Unhealthy, o.detail),
                Err(e) => (Health::Unknown, e.to_string()),
            }
        }
    }
}

/// The engine's side of a declared health check.
fn health_spec(h: &cascade_manifest::HealthCheck) -> HealthSpec {
    HealthSpec {
        probe: match &h.probe {
            Probe::Http { port, path } => cascade_docker::Probe::Http {
                port: *port,
                path: path.clone(),
            },
            Probe::Command(argv) => cascade_docker::Probe::Command { argv: argv.clone() },
        },
        interval: h.interval,
        timeout: h.timeout,
        retries: h.retries,
        start_period: h.start_period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_manifest::PortMap;

    /// The report's JSON and the history name these states as they did when they were
    /// strings (deploy tests need Docker, so this pins them everywhere).
    #[test]
    fn states_keep_their_names() {
        let json = |v: &dyn erased::Named| v.json();
        for (got, want) in [
            (json(&DeployAction::Deploy), "deploy"),
            (json(&DeployAction::Rollback), "rollback"),
            (json(&DeployAction::AutoRollback), "auto-rollback"),
            (json(&DeployChange::Unchanged), "unchanged"),
            (json(&DeployChange::Changed), "changed"),
            (json(&DeployChange::Added), "added"),
            (json(&DeployChange::Removed), "removed"),
            (json(&DeployOutcome::Deployed), "deployed"),
            (json(&DeployOutcome::DryRun), "dry-run"),
            (json(&DeployOutcome::Failed), "failed"),
            (json(&DeployOutcome::Interrupted), "interrupted"),
            (json(&Health::Healthy), "healthy"),
            (json(&Health::Unhealthy), "unhealthy"),
            (json(&Health::Running), "running"),
            (json(&Health::Stopped), "stopped"),
            (json(&Health::Unknown), "unknown"),
        ] {
            assert_eq!(got.0, format!("\"{want}\""));
            assert_eq!(got.1, want);
        }
    }

    mod erased {
        /// A state's JSON and its `as_str`, side by side.
        pub(super) trait Named {
            fn json(&self) -> (String, &'static str);
        }
        macro_rules! named {
            ($($t:ty),*) => {$(
                impl Named for $t {
                    fn json(&self) -> (String, &'static str) {
                        (serde_json::to_string(self).unwrap(), self.as_str())
                    }
                }
            )*};
        }
        named!(
            super::DeployAction,
            super::DeployChange,
            super::DeployOutcome,
            super::Health
        );
    }

    fn component() -> DeployComponent {
        DeployComponent {
            component: "web".into(),
            container: "e-web".into(),
            ports: vec![PortMap {
                host_ip: "127.0.0.1".into(),
                host_port: Some(18080),
                container: 8080,
            }],
            env: BTreeMap::new(),
            volumes: Vec::new(),
            restart: "unless-stopped".into(),
            replicas: 1,
            health: None,
            hosts: vec!["local".into()],
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn the_config_digest_changes_with_any_field_and_only_then() {
        let a = component();
        assert_eq!(config_digest(&a), config_digest(&component()));
        let mut b = component();
        b.ports[0].host_port = Some(18081);
        let mut c = component();
        c.env.insert("X".into(), "1".into());
        let mut d = component();
        d.replicas = 2;
        for other in [b, c, d] {
            assert_ne!(config_digest(&a), config_digest(&other));
        }
    }

    fn info(name: &str, lockfile: &str) -> ContainerInfo {
        ContainerInfo {
            id: name.into(),
            name: name.into(),
            labels: BTreeMap::from([(L_LOCKFILE.to_string(), lockfile.to_string())]),
            running: true,
            state: "running".into(),
            image: "sha256:x".into(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn the_running_lockfile_is_named_only_when_every_container_agrees() {
        let deployed = |digest: &str, path: &str| Deployment {
            at: "20261123T000000Z".into(),
            action: "deploy".into(),
            outcome: "deployed".into(),
            lockfile: path.into(),
            lockfile_digest: digest.into(),
            images: BTreeMap::new(),
            detail: None,
            hosts: BTreeMap::new(),
        };
        let history = History {
            environment: "e".into(),
            deployments: vec![
                deployed("blake3:a", "lockfiles/a.yaml"),
                deployed("blake3:b", "lockfiles/b.yaml"),
            ],
        };
        let both = [info("x", "blake3:a"), info("y", "blake3:a")];
        assert_eq!(
            running_lockfile(&both, &history).as_deref(),
            Some("lockfiles/a.yaml")
        );
        let mixed = [info("x", "blake3:a"), info("y", "blake3:b")];
        assert_eq!(running_lockfile(&mixed, &history), None);
        assert_eq!(running_lockfile(&[info("x", "blake3:z")], &history), None);
        assert_eq!(running_lockfile(&[], &history), None);
    }
}
