//! [IO] `cascade worker`: a worker for REAPI engines that hand out work through the
//! Remote Workers API (BuildGrid's bots). It runs any REAPI Action, cascade's or not,
//! in cascade's sandbox (`docs/remote-execution.md` says what an Action gets).
//!
//! One thread keeps the bot session: it reports every lease's state in each
//! `UpdateBotSession` (often enough for the server's keepalive), takes new leases up
//! to the capacity, and kills the ones the server cancels. Each lease runs on a thread
//! of its own: fetch the Action, its Command and input root from the CAS, run, upload
//! the outputs, hand back the `ActionResult`. When the server goes away the session is
//! opened again, with backoff, until it comes back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_exec::{Commands, ResolvedTool, RootFs, RunError, SandboxRun, Step, Tools};
use cascade_image::{OciDigest, OciLayout};
use cascade_reapi::bots::{BotSession, BotStatus, Device, Lease, LeaseState, Property, Worker};
use cascade_reapi::merkle::{self, Outputs};
use cascade_reapi::prost::Message;
use cascade_reapi::proto as re;
use cascade_reapi::Code;
use cascade_reapi::{Any, Blob, Client, Digest, RpcStatus};
use cascade_store::Store;

use crate::reapi::{cas_digest, quote};
use crate::rootfs::{Rootfs, Rootfses};
use crate::Error;

/// `cascade worker`'s settings.
pub struct WorkerOptions {
    /// `grpc://HOST:PORT[/INSTANCE]`.
    pub server: String,
    /// Leases run at once.
    pub capacity: usize,
    /// The worker's own store (runner images, work directories).
    pub store: PathBuf,
    /// The bot's name (unique per server); default `cascade-<host>-<pid>`.
    pub name: Option<String>,
    /// Where `cascade-tools` are looked up (the worker's PATH).
    pub tools_path: std::ffi::OsString,
    /// Stop after this many leases (tests and drains); `None` runs until killed.
    pub max_leases: Option<usize>,
}

/// What the worker does, for the CLI to show.
#[derive(Debug)]
pub enum WorkerEvent<'a> {
    Connected {
        session: &'a str,
        name: &'a str,
    },
    Started {
        lease: &'a str,
        action: &'a str,
    },
    Finished {
        lease: &'a str,
        exit_code: i32,
        status: i32,
        ms: u64,
    },
    Cancelled {
        lease: &'a str,
    },
    Lost {
        error: &'a str,
    },
}

/// A lease as this worker holds it.
struct Held {
    lease: Lease,
    started: Instant,
    cancel: Arc<AtomicBool>,
    done: Arc<Mutex<Option<Outcome>>>,
}

/// How a lease ended: its status, and its result when it ran.
type Outcome = (RpcStatus, Option<re::ActionResult>);

const ACTION_RESULT_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";

/// Runs until killed (or `max_leases` are done).
pub fn worker(opts: &WorkerOptions, on_event: &dyn Fn(WorkerEvent<'_>)) -> Result<(), Error> {
    let client = crate::reapi::client_for(&opts.server).map_err(|e| Error::RemoteCacheUrl {
        url: opts.server.clone(),
        why: e.to_string(),
    })?;
    let store = Store::open(&opts.store)?;
    let layout = OciLayout::open_or_create(store.oci_dir()).map_err(Error::Image)?;
    let name = opts.name.clone().unwrap_or_else(default_name);
    let ctx = Arc::new(Ctx {
        client,
        store,
        layout,
        rootfs: Rootfses::default(),
        tools: Tools::new(opts.tools_path.clone()),
        name: name.clone(),
    });
    // Lease threads say here when they are done, so a worker at capacity reports at once.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut bot = Bot {
        opts,
        on_event,
        ctx,
        name,
        done_tx,
        done_rx,
        finished: 0,
        backoff: Duration::from_millis(250),
    };
    loop {
        if cascade_exec::interrupted() {
            return Ok(());
        }
        let Some(session) = bot.open_session() else {
            continue;
        };
        match bot.run_session(session) {
            SessionEnd::Stop => return Ok(()),
            SessionEnd::Lost => continue,
        }
    }
}

/// The bot: what its sessions carry from one to the next, and hand to the lease threads
/// they start.
struct Bot<'a> {
    opts: &'a WorkerOptions,
    on_event: &'a dyn Fn(WorkerEvent<'_>),
    ctx: Arc<Ctx>,
    name: String,
    done_tx: std::sync::mpsc::Sender<()>,
    done_rx: std::sync::mpsc::Receiver<()>,
    /// Leases finished and reported.
    finished: usize,
    /// How long to wait before asking the server again after a failed call.
    backoff: Duration,
}

/// Why a session ended.
enum SessionEnd {
    /// Interrupted, or `max_leases` are done: the worker stops.
    Stop,
    /// The server no longer knows it: a new one is opened.
    Lost,
}

impl Bot<'_> {
    /// A new session, or `None` after a failed attempt (and the backoff).
    fn open_session(&mut self) -> Option<BotSession> {
        match self.ctx.client.create_bot_session(
            BotSession {
                bot_id: self.name.clone(),
                status: BotStatus::Ok as i32,
                worker: Some(worker_description(&self.name, self.opts.capacity)),
                ..Default::default()
            },
            Duration::from_secs(10),
        ) {
            Ok(session) => {
                (self.on_event)(WorkerEvent::Connected {
                    session: &session.name,
                    name: &self.name,
                });
                Some(session)
            }
            Err(e) => {
                self.lost(&e);
                None
            }
        }
    }

    /// Says the server was lost, and waits the backoff (which doubles, up to 5 s).
    fn lost(&mut self, e: &cascade_reapi::ReapiError) {
        (self.on_event)(WorkerEvent::Lost {
            error: &e.to_string(),
        });
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    /// One session: every lease's state reported in each update, until the worker
    /// stops or the session is lost (its leases are then cancelled).
    fn run_session(&mut self, mut session: BotSession) -> SessionEnd {
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        // CreateBotSession may already hand out work (a restarted worker's own leases).
        self.take_leases(&session, &mut held);
        // When the last call went through: a session the server has not heard from for
        // its keepalive is gone, and a new one is opened.
        let mut last_ok = Instant::now();
        loop {
            if cascade_exec::interrupted() {
                cancel_all(&held);
                return SessionEnd::Stop;
            }
            let any_done = held.values().any(Held::is_done);
            if held.len() >= self.opts.capacity && !any_done {
                // At capacity the server answers at once: wait for a lease to end (or
                // beat the keepalive) instead of asking again and again.
                let _ = self.done_rx.recv_timeout(Duration::from_secs(5));
            }
            while self.done_rx.try_recv().is_ok() {}
            // Every lease we hold, as it is now.
            session.leases = held.values().map(Held::state).collect();
            let reported: Vec<String> = session
                .leases
                .iter()
                .filter(|l| l.state == LeaseState::Completed as i32)
                .map(|l| l.id.clone())
                .collect();
            let wait = self.update_wait(&held, &session);
            let answer = match self.ctx.client.update_bot_session(session.clone(), wait) {
                Ok(s) => s,
                Err(e) => {
                    // A session the server no longer knows (an expired one is
                    // INVALID_ARGUMENT), or no answer for as long as the session lives:
                    // the server has requeued its leases, ours stop, a new session opens.
                    // Anything else (the engine restarting, a lost answer) is asked
                    // again, the same session, the leases still running.
                    let gone = matches!(e.code(), Code::InvalidArgument | Code::NotFound)
                        || last_ok.elapsed() > 2 * half_keepalive(&session);
                    self.lost(&e);
                    if gone {
                        cancel_all(&held);
                        return SessionEnd::Lost;
                    }
                    continue;
                }
            };
            last_ok = Instant::now();
            self.backoff = Duration::from_millis(250);
            self.report_finished(&reported, &mut held);
            if self.opts.max_leases.is_some_and(|m| self.finished >= m) && held.is_empty() {
                return SessionEnd::Stop;
            }
            session = answer;
            self.take_leases(&session, &mut held);
        }
    }

    /// How long the next update may wait. With room for work the server holds the call
    /// for 80% of its deadline (and hands out nothing under 3 s); each call renews the
    /// session, so the deadline stays within half the keepalive the session's expiry
    /// shows.
    fn update_wait(&self, held: &BTreeMap<String, Held>, session: &BotSession) -> Duration {
        if held.len() >= self.opts.capacity {
            Duration::from_secs(5)
        } else if held.is_empty() {
            Duration::from_secs(30).min(half_keepalive(session))
        } else {
            Duration::from_secs(4)
        }
    }

    /// The leases the server took back as completed: no longer held, and said.
    fn report_finished(&mut self, reported: &[String], held: &mut BTreeMap<String, Held>) {
        for id in reported {
            if let Some(h) = held.remove(id) {
                let (status, exit_code) = h.outcome();
                (self.on_event)(WorkerEvent::Finished {
                    lease: id,
                    exit_code,
                    status,
                    ms: h.started.elapsed().as_millis() as u64,
                });
                self.finished += 1;
            }
        }
    }

    /// What the server's answer says: cancellations, and new leases to start. A lease
    /// id that comes back after it was reported is the server retrying it (BuildGrid
    /// reuses the job's name), so it runs again.
    fn take_leases(&self, session: &BotSession, held: &mut BTreeMap<String, Held>) {
        // A lease the server no longer lists was cancelled (BuildGrid drops it rather
        // than sending CANCELLED).
        let listed: std::collections::BTreeSet<String> =
            session.leases.iter().map(|l| l.id.clone()).collect();
        held.retain(|id, h| {
            let keep = listed.contains(id) && h.lease_state_ok(session);
            if !keep {
                h.cancel.store(true, Ordering::Relaxed);
                (self.on_event)(WorkerEvent::Cancelled { lease: id });
            }
            keep
        });
        for lease in session.leases.clone() {
            let state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
            // New work arrives PENDING (the API) or already ACTIVE (BuildGrid).
            let new = matches!(state, LeaseState::Pending | LeaseState::Active)
                && !held.contains_key(&lease.id);
            if !new || held.len() >= self.opts.capacity {
                continue;
            }
            (self.on_event)(WorkerEvent::Started {
                lease: &lease.id,
                action: &describe(&lease),
            });
            held.insert(lease.id.clone(), self.start(lease));
        }
    }

    /// The lease, run on a thread of its own.
    fn start(&self, lease: Lease) -> Held {
        let h = Held {
            lease: lease.clone(),
            started: Instant::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            done: Arc::new(Mutex::new(None)),
        };
        let (ctx, cancel, done, tx) = (
            self.ctx.clone(),
            h.cancel.clone(),
            h.done.clone(),
            self.done_tx.clone(),
        );
        std::thread::spawn(move || {
            // A panic is a bug here, but must not leave the lease ACTIVE forever:
            // INTERNAL, which the server retries elsewhere.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.run_lease(&lease, &cancel)
            }))
            .unwrap_or_else(|_| {
                (
                    RpcStatus {
                        code: Code::Internal as i32,
                        message: "the worker failed running this action (a bug in cascade)".into(),
                        details: Vec::new(),
                    },
                    None,
                )
            });
            *done.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            let _ = tx.send(());
        });
        h
    }
}

/// Tells every held lease to stop.
fn cancel_all(held: &BTreeMap<String, Held>) {
    for h in held.values() {
        h.cancel.store(true, Ordering::Relaxed);
    }
}

impl Held {
    fn is_done(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The lease as it goes back to the server: ACTIVE while it runs, then COMPLETED
    /// with its status and result.
    fn state(&self) -> Lease {
        let mut l = self.lease.clone();
        match self.done.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some((status, result)) => {
                l.state = LeaseState::Completed as i32;
                l.status = Some(status);
                l.result = result.map(|r| Any {
                    type_url: ACTION_RESULT_TYPE.into(),
                    value: r.encode_to_vec(),
                });
            }
            None => l.state = LeaseState::Active as i32,
        }
        l
    }

    fn outcome(&self) -> (i32, i32) {
        match &*self.done.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((status, result)) => (status.code, result.as_ref().map_or(-1, |r| r.exit_code)),
            None => (0, -1),
        }
    }

    /// Whether the server still wants this lease run (not CANCELLED).
    fn lease_state_ok(&self, session: &BotSession) -> bool {
        session
            .leases
            .iter()
            .find(|l| l.id == self.lease.id)
            .is_some_and(|l| l.state != LeaseState::Cancelled as i32)
    }
}

/// Half the time the session has left, as its expiry says (at least 4 s, so the
/// server still hands out work).
fn half_keepalive(session: &BotSession) -> Duration {
    let now = now().seconds;
    let left = session
        .expire_time
        .as_ref()
        .map_or(60, |t| (t.seconds - now).clamp(8, 3600));
    Duration::from_secs((left / 2) as u64)
}

fn default_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("cascade-{host}-{}", std::process::id())
}

/// What the bot tells the scheduler it is: the properties it matches on.
fn worker_description(name: &str, capacity: usize) -> Worker {
    let isa = crate::reapi::isa();
    Worker {
        devices: vec![Device {
            handle: name.to_string(),
            properties: vec![
                Property::new("OSFamily", "linux"),
                Property::new("ISA", isa),
            ],
        }],
        properties: Vec::new(),
        configs: vec![Property::new("capacity", &capacity.to_string())],
    }
}

fn describe(lease: &Lease) -> String {
    lease
        .payload
        .as_ref()
        .and_then(|p| action_digest_of(p).ok())
        .map(|d| cascade_reapi::show(&d))
        .unwrap_or_else(|| "an action".into())
}

/// What a lease carries: the Action itself, or its digest.
enum Payload {
    Action(re::Action),
    Digest(Digest),
}

fn payload_of(payload: &Any) -> Result<Payload, String> {
    let bad = |e: cascade_reapi::prost::DecodeError| e.to_string();
    if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Action")
    {
        re::Action::decode(payload.value.as_slice())
            .map(Payload::Action)
            .map_err(bad)
    } else if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Digest")
    {
        Digest::decode(payload.value.as_slice())
            .map(Payload::Digest)
            .map_err(bad)
    } else {
        Err(format!("a lease of type `{}`", payload.type_url))
    }
}

fn action_digest_of(payload: &Any) -> Result<Digest, String> {
    match payload_of(payload)? {
        Payload::Action(_) => Ok(cascade_reapi::digest_of(&payload.value)),
        Payload::Digest(d) => Ok(d),
    }
}

/// What every lease thread shares.
struct Ctx {
    client: Client,
    store: Store,
    layout: OciLayout,
    rootfs: Rootfses,
    tools: Tools,
    name: String,
}

/// A failure of one lease: its gRPC code and what to say.
struct LeaseError(Code, String);

impl Ctx {
    fn run_lease(
        &self,
        lease: &Lease,
        cancel: &AtomicBool,
    ) -> (RpcStatus, Option<re::ActionResult>) {
        match self.try_run(lease, cancel) {
            Ok((code, result)) => (
                RpcStatus {
                    code: code as i32,
                    message: String::new(),
                    details: Vec::new(),
                },
                Some(result),
            ),
            Err(LeaseError(code, message)) => (
                RpcStatus {
                    code: code as i32,
                    message,
                    details: Vec::new(),
                },
                None,
            ),
        }
    }

    fn try_run(
        &self,
        lease: &Lease,
        cancel: &AtomicBool,
    ) -> Result<(Code, re::ActionResult), LeaseError> {
        // 1. The Action, its Command and the platform they ask for.
        let (action, command) = self.fetch_action(lease)?;
        let props = platform(&action, &command);
        // 2. The work directory: the input root, with the outputs' parents made.
        let ws = self.workspace(&action, &command)?;
        // 3. The root the Action asked for.
        let root = self.root(&props, &ws.work)?;
        // 4. The command, run in the sandbox.
        let env = environment(&command, &props, root.image.is_some());
        let steps = [Step {
            name: "action".into(),
            run: script(&command.arguments, &ws.wd),
        }];
        let started = now();
        let ran = SandboxRun {
            work: &ws.work,
            scratch: &ws.scratch,
            root: root.fs(),
            read_only: &root.read_only,
            commands: Commands {
                env: &env,
                steps: &steps,
                timeout: timeout_of(&action),
                log: &ws.log,
                quiet: true,
                cancel: Some(cancel),
            },
        }
        .run();
        let completed = now();
        let (code, exit_code) = exit_status(&ran)?;
        // 5. The outputs and the log, uploaded, and the result.
        let result = self.upload(&ws, exit_code, started, completed)?;
        Ok((code, result))
    }

    /// Step 1: the lease's Action (carried, or fetched by its digest) and its Command.
    fn fetch_action(&self, lease: &Lease) -> Result<(re::Action, re::Command), LeaseError> {
        let payload = lease
            .payload
            .as_ref()
            .ok_or_else(|| LeaseError(Code::InvalidArgument, "a lease without payload".into()))?;
        let action: re::Action =
            match payload_of(payload).map_err(|e| LeaseError(Code::InvalidArgument, e))? {
                Payload::Action(a) => a,
                Payload::Digest(d) => {
                    let bytes = self
                        .client
                        .read_present(&d)
                        .map_err(|e| failed_precondition("the Action", &e))?;
                    re::Action::decode(bytes.as_slice())
                        .map_err(|e| LeaseError(Code::InvalidArgument, e.to_string()))?
                }
            };
        let cd = action.command_digest.clone().ok_or_else(|| {
            LeaseError(Code::InvalidArgument, "an Action without a Command".into())
        })?;
        let command = re::Command::decode(
            self.client
                .read_present(&cd)
                .map_err(|e| failed_precondition("the Command", &e))?
                .as_slice(),
        )
        .map_err(|e| LeaseError(Code::InvalidArgument, e.to_string()))?;
        if command.arguments.is_empty() {
            return Err(LeaseError(
                Code::InvalidArgument,
                "a Command without arguments".into(),
            ));
        }
        Ok((action, command))
    }

    /// Step 2: a temporary directory with the input root fetched into `work`, the
    /// working directory checked and the outputs' parents made.
    fn workspace(
        &self,
        action: &re::Action,
        command: &re::Command,
    ) -> Result<Workspace, LeaseError> {
        let tmp = self
            .store
            .temp_dir()
            .map_err(|e| internal("a work directory", &e))?;
        let (work, scratch, log) = (
            tmp.path().join("work"),
            tmp.path().join("scratch"),
            tmp.path().join("log"),
        );
        fs::create_dir(&scratch).map_err(|e| internal("a scratch directory", &e))?;
        let root = action
            .input_root_digest
            .clone()
            .unwrap_or_else(merkle::empty_dir);
        merkle::fetch_dir(&self.client, &root, &work)
            .map_err(|e| failed_precondition("the input root", &e))?;
        let wd = match command.working_directory.as_str() {
            "" => PathBuf::new(),
            d => merkle::safe_relative(d)
                .map(Path::to_path_buf)
                .ok_or_else(|| {
                    LeaseError(Code::InvalidArgument, format!("working directory `{d}`"))
                })?,
        };
        #[allow(deprecated)] // engines older than v2.1 send output_files/output_directories
        let outputs: Vec<String> = if command.output_paths.is_empty() {
            command
                .output_files
                .iter()
                .chain(&command.output_directories)
                .cloned()
                .collect()
        } else {
            command.output_paths.clone()
        };
        // The working directory is a directory of the input root, reached through
        // directories only; outputs' parents are made there, never through a symlink.
        let wd_rel = command.working_directory.trim_end_matches('/').to_string();
        if !wd_rel.is_empty() && !merkle::beneath(&work, &format!("{wd_rel}/x")) {
            return Err(LeaseError(
                Code::InvalidArgument,
                format!("working directory `{wd_rel}` is not a directory of the input root"),
            ));
        }
        for o in &outputs {
            let full = if wd_rel.is_empty() {
                o.clone()
            } else {
                format!("{wd_rel}/{o}")
            };
            merkle::create_parents(&work, &full)
                .map_err(|e| LeaseError(Code::InvalidArgument, e.to_string()))?;
        }
        Ok(Workspace {
            _tmp: tmp,
            work,
            scratch,
            log,
            wd,
            outputs,
        })
    }

    /// Step 3: the image the platform names (`container-image`), unpacked, or the host
    /// with the tools it names; and what of `work` is read-only.
    fn root(&self, props: &BTreeMap<String, String>, work: &Path) -> Result<Root, LeaseError> {
        let image = props
            .get("container-image")
            .map(|v| self.image(v))
            .transpose()?;
        let tools = match &image {
            Some(_) => Vec::new(),
            None => self.tools_for(props.get("cascade-tools").map(String::as_str))?,
        };
        let rootfs = match &image {
            Some(d) => Some(
                self.rootfs
                    .get(&self.store, &self.layout, d)
                    .map_err(|e| internal("unpack the image", &e))?,
            ),
            None => None,
        };
        let read_only: Vec<String> = match &image {
            Some(_) => crate::container::read_only_entries(work)
                .map_err(|e| internal("list the input root", &e))?,
            None if work.join("inputs").is_dir() => vec!["inputs".into()],
            None => Vec::new(),
        };
        Ok(Root {
            image,
            tools,
            rootfs,
            read_only,
        })
    }

    /// Step 5: the outputs that exist (whatever the exit code, as REAPI asks) and the
    /// log uploaded, and the result that names them.
    fn upload(
        &self,
        ws: &Workspace,
        exit_code: i32,
        started: cascade_reapi::Timestamp,
        completed: cascade_reapi::Timestamp,
    ) -> Result<re::ActionResult, LeaseError> {
        let log = &ws.log;
        let collected = Outputs::collect(&ws.work.join(&ws.wd), &ws.outputs)
            .map_err(|e| internal("collect the outputs", &e))?;
        if !log.exists() {
            fs::write(log, b"").map_err(|e| internal("write the log", &e))?;
        }
        let stdout = merkle::hash_file(log).map_err(|e| internal("hash the log", &e))?;
        let mut blobs = collected.blobs.all();
        blobs.push((stdout.clone(), Blob::File(log)));
        self.client
            .upload(&blobs)
            .map_err(|e| LeaseError(Code::Unavailable, format!("upload the outputs: {e}")))?;
        let mut result = re::ActionResult {
            exit_code,
            stdout_digest: Some(stdout),
            stderr_digest: Some(cascade_reapi::digest_of(b"")),
            execution_metadata: Some(re::ExecutedActionMetadata {
                worker: self.name.clone(),
                execution_start_timestamp: Some(started),
                execution_completed_timestamp: Some(completed),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.client
            .upload(&[(cascade_reapi::digest_of(b""), Blob::Bytes(b""))])
            .map_err(|e| LeaseError(Code::Unavailable, format!("upload stderr: {e}")))?;
        collected.fill(&mut result);
        Ok(result)
    }

    /// `cas:sha256:<hex>/<size>`: the image, from the CAS into the worker's layout once.
    fn image(&self, value: &str) -> Result<OciDigest, LeaseError> {
        let bad = |why: &str| {
            LeaseError(
                Code::InvalidArgument,
                format!("container-image `{value}`: {why}"),
            )
        };
        let rest = value.strip_prefix("cas:").ok_or_else(|| {
            bad("this worker runs images from the engine's CAS only (`cas:sha256:<hex>/<size>`)")
        })?;
        let (digest, size) = rest.split_once('/').ok_or_else(|| bad("no size"))?;
        let digest: OciDigest = digest.parse().map_err(|_| bad("not a sha256 digest"))?;
        let size: u64 = size.parse().map_err(|_| bad("not a size"))?;
        if self.layout.image_blobs(&digest).is_ok() {
            return Ok(digest);
        }
        let fetch = |d: &OciDigest, size: u64| -> Result<(), LeaseError> {
            if self.layout.has_blob(d) {
                return Ok(());
            }
            let tmp = self
                .store
                .temp_dir()
                .map_err(|e| LeaseError(Code::Internal, e.to_string()))?;
            let file = tmp.path().join("blob");
            self.client
                .read_to_file(&cas_digest(d, size), &file)
                .map_err(|e| failed_precondition("the image", &e))?;
            let mut f =
                fs::File::open(&file).map_err(|e| LeaseError(Code::Internal, e.to_string()))?;
            self.layout
                .put_blob_reader(&mut f)
                .map_err(|e| LeaseError(Code::Internal, e.to_string()))?;
            Ok(())
        };
        fetch(&digest, size)?;
        let manifest: serde_json::Value = serde_json::from_slice(
            &self
                .layout
                .read_blob(&digest)
                .map_err(|e| LeaseError(Code::Internal, e.to_string()))?,
        )
        .map_err(|e| bad(&format!("not a manifest: {e}")))?;
        let descriptors = std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().into_iter().flatten());
        for d in descriptors {
            let digest: OciDigest = d["digest"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a descriptor without a digest"))?;
            let size = d["size"]
                .as_u64()
                .ok_or_else(|| bad("a descriptor without a size"))?;
            fetch(&digest, size)?;
        }
        self.layout
            .image_blobs(&digest)
            .map_err(|e| bad(&e.to_string()))?;
        Ok(digest)
    }

    /// The host tools an Action names (`cascade-tools: name=blake3:…,…`), found on this
    /// worker's PATH with the same digests, and `sh`.
    fn tools_for(&self, value: Option<&str>) -> Result<Vec<ResolvedTool>, LeaseError> {
        let mut wanted: BTreeMap<String, Option<String>> = BTreeMap::new();
        wanted.insert("sh".into(), None);
        for item in value.unwrap_or("").split(',').filter(|s| !s.is_empty()) {
            let (name, digest) = match item.split_once('=') {
                Some((n, d)) => (n, Some(d.to_string())),
                None => (item, None),
            };
            wanted.insert(name.to_string(), digest);
        }
        let mut out = Vec::new();
        for (name, digest) in wanted {
            let t = self
                .tools
                .resolve(&name)
                .map_err(|e| LeaseError(Code::FailedPrecondition, format!("tool `{name}`: {e}")))?;
            if let Some(d) = digest {
                if t.digest.to_string() != d {
                    return Err(LeaseError(
                        Code::FailedPrecondition,
                        format!(
                            "tool `{name}` is {} on this worker ({}), the action wants {d}",
                            t.digest,
                            t.path.display()
                        ),
                    ));
                }
            }
            out.push(t);
        }
        Ok(out)
    }
}

/// A lease's work directory; removed when dropped.
struct Workspace {
    _tmp: tempfile::TempDir,
    /// The input root, where the command runs.
    work: PathBuf,
    scratch: PathBuf,
    log: PathBuf,
    /// The Command's working directory, relative to `work`.
    wd: PathBuf,
    /// The Command's output paths, relative to `wd`.
    outputs: Vec<String>,
}

/// The root filesystem an Action runs on, and what of its work directory is read-only.
struct Root {
    image: Option<OciDigest>,
    tools: Vec<ResolvedTool>,
    rootfs: Option<Rootfs>,
    read_only: Vec<String>,
}

impl Root {
    fn fs(&self) -> RootFs<'_> {
        match &self.rootfs {
            Some(r) => RootFs::Image {
                rootfs: &r.tree,
                env: &r.config.env,
            },
            None => RootFs::Host { tools: &self.tools },
        }
    }
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> LeaseError {
    LeaseError(Code::Internal, format!("{what}: {e}"))
}

/// The Action's platform properties (v2.2), or else the Command's.
fn platform(action: &re::Action, command: &re::Command) -> BTreeMap<String, String> {
    #[allow(deprecated)]
    let platform = action
        .platform
        .clone()
        .filter(|p| !p.properties.is_empty())
        .or_else(|| command.platform.clone())
        .unwrap_or_default();
    platform
        .properties
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect()
}

/// The Command's environment.
fn environment(
    command: &re::Command,
    props: &BTreeMap<String, String>,
    image: bool,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    // An Action that is not cascade's names no tools: it sees the host's usual
    // directories on PATH unless it sets PATH itself (cascade's set it to the tools).
    if !image && !props.contains_key("cascade-tools") {
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
    }
    env
}

/// The shell line that runs the Command's arguments in its working directory.
fn script(arguments: &[String], wd: &Path) -> String {
    let argv: Vec<String> = arguments.iter().map(|a| quote(a)).collect();
    if wd.as_os_str().is_empty() {
        format!("exec {}", argv.join(" "))
    } else {
        format!(
            "cd {} && exec {}",
            quote(&wd.to_string_lossy()),
            argv.join(" ")
        )
    }
}

/// The Action's timeout; an hour when it sets none.
fn timeout_of(action: &re::Action) -> Duration {
    action
        .timeout
        .as_ref()
        .filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
        .unwrap_or(Duration::from_secs(3600))
}

/// The lease's code and the command's exit code for how the run ended; a cancelled
/// run or one that could not start ends the lease without a result.
fn exit_status(ran: &Result<(), RunError>) -> Result<(Code, i32), LeaseError> {
    Ok(match ran {
        Ok(()) => (Code::Ok, 0),
        Err(RunError::Failed { status, .. }) => (
            Code::Ok,
            status
                .strip_prefix("exit code ")
                .and_then(|c| c.parse().ok())
                .unwrap_or(128 + 9),
        ),
        Err(RunError::Timeout { .. }) => (Code::DeadlineExceeded, 128 + 9),
        Err(RunError::Cancelled) | Err(RunError::Interrupted) => {
            return Err(LeaseError(Code::Cancelled, "cancelled".into()))
        }
        Err(e @ RunError::Setup { .. }) => return Err(internal("run the action", e)),
    })
}

/// A blob the action needs could not be fetched: missing (the client's fault,
/// FAILED_PRECONDITION, as REAPI says) or unreachable (UNAVAILABLE: tried again).
fn failed_precondition(what: &str, e: &cascade_reapi::ReapiError) -> LeaseError {
    let code = match e.code() {
        Code::NotFound | Code::Unknown => Code::FailedPrecondition,
        _ => Code::Unavailable,
    };
    LeaseError(code, format!("fetch {what}: {e}"))
}

/// Wall time for the result's metadata (never hashed: an ActionResult is not a key).
fn now() -> cascade_reapi::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    cascade_reapi::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
