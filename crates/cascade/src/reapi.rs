//! [IO] A REAPI engine as the remote cache and as an executor (`--remote grpc://…`,
//! `--remote-exec`). The mapping (the key Action, the executed Action, the metadata
//! cascade adds) is in `docs/remote-execution.md`.
//!
//! Cache: a node is looked up by its *key Action*, made from the node key and the
//! declared outputs alone (no source is hashed, so a no-op stays as fast as a local
//! one); its result is downloaded, every blob checked against its sha256, the output
//! tree re-ingested into the store and its blake3 compared with the one cascade
//! recorded. Execution: the node's Action, its work directory as the input root, runs
//! on the engine's workers; the result comes back the same way.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cascade_core::{Digest as Blake3, NodeKey};
use cascade_image::{OciDigest, OciLayout};
use cascade_reapi::merkle::{self, Merkle, Outputs};
use cascade_reapi::prost::Message;
use cascade_reapi::proto as re;
use cascade_reapi::{digest_of, digest_of_message, show, Blob, Client, Digest};
use cascade_store::{ActionResult, Store};

use crate::execute::{Action, ActionRoot};
use crate::remote::{RemoteMode, Tally};

/// A run error for a stage of remote execution that is not the steps' own failure.
fn setup(what: &str, e: String) -> cascade_exec::RunError {
    cascade_exec::RunError::Setup {
        what: what.to_string(),
        source: std::io::Error::other(e),
    }
}

/// What a key Action's entry on the engine is made of (see `publish`).
struct Entry<'a> {
    key: &'a NodeKey,
    action: &'a Digest,
    key_blobs: Vec<(Digest, Vec<u8>)>,
    outputs: &'a Outputs,
    log: &'a Path,
    key_manifest: &'a [u8],
    result: &'a ActionResult,
}

/// The type URL of cascade's metadata in an action result.
const META_TYPE: &str = "type.cascade.dev/cascade.ResultV1";
const KEY_ACTION_SALT: &[u8] = b"cascade key action v1";
/// What cascade's metadata may weigh; anything bigger is not ours.
const META_LIMIT: usize = 16 * 1024;

/// cascade's own facts about a result, beside the REAPI outputs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    key: String,
    output: String,
    log: String,
    key_manifest: String,
}

pub(crate) struct ReapiCache {
    client: Client,
    pub(crate) tally: Tally,
}

/// Where an executed node ran, and how long each phase took.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RemoteRun {
    /// The worker, as the engine's result names it.
    pub worker: String,
    pub upload_ms: u64,
    /// From `Execute` to the result: queueing and running on the worker.
    pub execute_ms: u64,
    pub download_ms: u64,
    /// The engine answered from its own action cache (it ran this Action before).
    pub engine_cached: bool,
}

fn bad(what: impl std::fmt::Display) -> String {
    what.to_string()
}

impl ReapiCache {
    pub(crate) fn new(
        url: &str,
        mode: RemoteMode,
    ) -> Result<ReapiCache, cascade_reapi::ReapiError> {
        let client = client_for(url)?;
        Ok(ReapiCache {
            tally: Tally::new(&client.endpoint().to_string(), mode),
            client,
        })
    }

    /// The engine hashes as we do (sha256), or nothing is asked of it.
    fn speaks_sha256(&self) -> Result<(), String> {
        match self.client.capabilities().map_err(bad)?.sha256 {
            true => Ok(()),
            false => Err("the engine does not offer sha256 digests".into()),
        }
    }

    /// The key Action of a node: its Command and Action, encoded, and the Action's digest.
    fn key_action(key: &NodeKey, outputs: &[String]) -> (Digest, Vec<(Digest, Vec<u8>)>) {
        let mut paths = outputs.to_vec();
        paths.sort();
        paths.dedup();
        let command = re::Command {
            arguments: vec!["cascade-node".into(), key.to_string()],
            output_paths: paths,
            ..Default::default()
        };
        let (cd, cb) = digest_of_message(&command);
        let action = re::Action {
            command_digest: Some(cd.clone()),
            input_root_digest: Some(merkle::empty_dir()),
            salt: KEY_ACTION_SALT.to_vec(),
            ..Default::default()
        };
        let (ad, ab) = digest_of_message(&action);
        let empty = (
            merkle::empty_dir(),
            re::Directory::default().encode_to_vec(),
        );
        (ad.clone(), vec![(cd, cb), (ad, ab), empty])
    }

    /// The output digest the engine's entry for `key` names (its metadata only).
    pub(crate) fn peek(&self, key: &NodeKey, outputs: &[String]) -> Option<String> {
        self.speaks_sha256().ok()?;
        let (action, _) = Self::key_action(key, outputs);
        let result = self.client.get_action_result(&action).ok()??;
        meta_of(&result)
            .ok()
            .filter(|m| m.key == key.to_string())
            .map(|m| m.output)
    }

    /// Looks `key` up; on a hit, every output is downloaded, checked and stored, and the
    /// action result is recorded locally. `None` on a miss or any failure.
    pub(crate) fn fetch(
        &self,
        store: &Store,
        key: &NodeKey,
        outputs: &[String],
        node: &str,
    ) -> Option<ActionResult> {
        if !self.tally.reads() {
            return None;
        }
        let r = self.try_fetch(store, key, outputs);
        self.tally.fetched(r, |e| {
            format!("`{node}`: reading {}: {e}", self.client.endpoint())
        })
    }

    fn try_fetch(
        &self,
        store: &Store,
        key: &NodeKey,
        outputs: &[String],
    ) -> Result<Option<ActionResult>, String> {
        self.speaks_sha256()?;
        let (action, _) = Self::key_action(key, outputs);
        let Some(result) = self.client.get_action_result(&action).map_err(bad)? else {
            return Ok(None);
        };
        let meta = meta_of(&result)?;
        if meta.key != key.to_string() {
            return Err(format!("the entry names another key ({})", meta.key));
        }
        let tmp = store.temp_dir().map_err(bad)?;
        let r = self.take_result(store, &result, outputs, tmp.path(), Some(&meta))?;
        // The key manifest, so `why` can explain a result from the engine.
        let km = parse_digest(&meta.key_manifest)?;
        let bytes = self.client.read_present(&km).map_err(bad)?;
        if Blake3::of(&bytes) != key.0 {
            return Err("its key manifest does not hash to the key".into());
        }
        store.put_key_manifest(&bytes).map_err(bad)?;
        store.put_action(key, &r).map_err(bad)?;
        Ok(Some(r))
    }

    /// Downloads `result`'s outputs and log under `tmp`, into the store; checks them
    /// against cascade's metadata when there is some.
    fn take_result(
        &self,
        store: &Store,
        result: &re::ActionResult,
        outputs: &[String],
        tmp: &Path,
        meta: Option<&Meta>,
    ) -> Result<ActionResult, String> {
        let out = tmp.join("out");
        merkle::fetch_outputs(&self.client, result, &out).map_err(bad)?;
        let ingested = store.ingest_outputs(&out, outputs).map_err(bad)?;
        let log = tmp.join("log");
        self.fetch_log(result, &log).map_err(bad)?;
        let (log_digest, _) = store.put_blob_file(&log).map_err(bad)?;
        if let Some(m) = meta {
            if ingested.digest.to_string() != m.output {
                return Err(format!(
                    "outputs that make {} although the entry says {}",
                    ingested.digest, m.output
                ));
            }
            if log_digest.to_string() != m.log {
                return Err("a log that is not the one recorded".into());
            }
        }
        Ok(ActionResult {
            output: ingested.digest,
            log: log_digest,
        })
    }

    /// stdout then stderr into `log` (a cascade worker merges them into stdout).
    fn fetch_log(
        &self,
        result: &re::ActionResult,
        log: &Path,
    ) -> Result<(), cascade_reapi::ReapiError> {
        use std::io::Write;
        let mut f = fs::File::create(log).map_err(|e| io_err("create the log", e))?;
        for (raw, digest) in [
            (&result.stdout_raw, &result.stdout_digest),
            (&result.stderr_raw, &result.stderr_digest),
        ] {
            if !raw.is_empty() {
                f.write_all(raw).map_err(|e| io_err("write the log", e))?;
            } else if let Some(d) = digest.as_ref().filter(|d| d.size_bytes > 0) {
                let part = log.with_extension("part");
                self.client.read_to_file(d, &part)?;
                let mut src = fs::File::open(&part).map_err(|e| io_err("read the log", e))?;
                std::io::copy(&mut src, &mut f).map_err(|e| io_err("write the log", e))?;
                let _ = fs::remove_file(&part);
            }
        }
        Ok(())
    }

    /// After a node was built: publish its result under the key Action, unless the
    /// engine has one (the first writer wins; another output is reported).
    pub(crate) fn upload(
        &self,
        store: &Store,
        key: &NodeKey,
        result: &ActionResult,
        outputs: &[String],
        node: &str,
    ) {
        if !self.tally.writes() {
            return;
        }
        let r = self.try_upload(store, key, result, outputs, node);
        self.tally.uploaded(r, |e| {
            format!("`{node}`: writing {}: {e}", self.client.endpoint())
        });
    }

    fn try_upload(
        &self,
        store: &Store,
        key: &NodeKey,
        result: &ActionResult,
        outputs: &[String],
        node: &str,
    ) -> Result<bool, String> {
        self.speaks_sha256()?;
        let (action, key_blobs) = Self::key_action(key, outputs);
        if let Some(theirs) = self.client.get_action_result(&action).map_err(bad)? {
            let output = meta_of(&theirs).map(|m| m.output).unwrap_or_else(|e| e);
            if output != result.output.to_string() {
                self.tally.with(|r| {
                    r.problems.push(format!(
                        "reproducibility: `{node}` (key {}) is {output} on the engine but {} here; the engine keeps the first",
                        key.short(12),
                        result.output
                    ))
                });
            }
            return Ok(false);
        }
        // The outputs as files again (the store's tree, materialized), the log and the
        // key manifest beside them.
        let tmp = store.temp_dir().map_err(bad)?;
        let out = tmp.path().join("out");
        fs::create_dir(&out).map_err(bad)?;
        store.materialize(&result.output, &out).map_err(bad)?;
        let collected = Outputs::collect(&out, outputs).map_err(bad)?;
        let log = tmp.path().join("log");
        store.copy_blob_to(&result.log, &log).map_err(bad)?;
        let key_manifest = store.get_key_manifest(key).map_err(bad)?;
        let mut ar = re::ActionResult::default();
        collected.fill(&mut ar);
        ar.stdout_digest = Some(file_digest(&log)?);
        let entry = Entry {
            key,
            action: &action,
            key_blobs,
            outputs: &collected,
            log: &log,
            key_manifest: &key_manifest,
            result,
        };
        self.publish(entry, ar)?;
        Ok(true)
    }

    /// Uploads what a key Action's entry names (blobs first) and then the entry, `ar`.
    fn publish(&self, entry: Entry<'_>, mut ar: re::ActionResult) -> Result<(), String> {
        let Entry {
            key,
            action,
            key_blobs,
            outputs,
            log,
            key_manifest,
            result,
        } = entry;
        let km = digest_of(key_manifest);
        let meta = serde_json::to_vec(&Meta {
            key: key.to_string(),
            output: result.output.to_string(),
            log: result.log.to_string(),
            key_manifest: show(&km),
        })
        .map_err(bad)?;
        let mut blobs = outputs.blobs.all();
        for (d, b) in &key_blobs {
            blobs.push((d.clone(), Blob::Bytes(b)));
        }
        blobs.push((km, Blob::Bytes(key_manifest)));
        if let Some(d) = &ar.stdout_digest {
            blobs.push((d.clone(), Blob::File(log)));
        }
        self.client.upload(&blobs).map_err(bad)?;
        ar.execution_metadata
            .get_or_insert_with(Default::default)
            .auxiliary_metadata
            .push(cascade_reapi::Any {
                type_url: META_TYPE.into(),
                value: meta,
            });
        self.client.update_action_result(action, &ar).map_err(bad)
    }

    /// Runs `action` (its work directory `work` prepared) on the engine's workers; its
    /// outputs go to `out`, its log to `log`.
    pub(crate) fn execute(
        &self,
        layout: Option<&OciLayout>,
        action: &Action<'_>,
        work: &Path,
        out: &Path,
        log: &Path,
    ) -> Result<RemoteRun, cascade_exec::RunError> {
        let mut run = RemoteRun::default();
        // 1. An engine that executes, with sha256 digests.
        let caps = self
            .client
            .capabilities()
            .map_err(|e| setup("ask the engine what it does", e.to_string()))?;
        if !caps.exec_enabled || !caps.sha256 {
            return Err(setup(
                "execute on the engine",
                "it does not execute actions with sha256 digests (GetCapabilities)".into(),
            ));
        }
        // 2. The input root, the Command and the Action, uploaded.
        let t0 = Instant::now();
        let ad = self.upload_action(layout, action, work)?;
        run.upload_ms = t0.elapsed().as_millis() as u64;
        // 3. Executed.
        let t1 = Instant::now();
        // Queueing counts too: an engine whose workers are all busy is still working.
        let wait = action.timeout * 4 + Duration::from_secs(120);
        let response = self
            .client
            .execute(&ad, false, wait, &|_| {})
            .map_err(|e| setup("execute on the engine", e.to_string()))?;
        run.execute_ms = t1.elapsed().as_millis() as u64;
        run.engine_cached = response.cached_result;
        // 4. The log, the outcome, the outputs.
        let t2 = Instant::now();
        let status = response.status.unwrap_or_default();
        let result = response.result.unwrap_or_default();
        run.worker = result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.clone())
            .unwrap_or_default();
        self.outcome(action, &status, &result, log)?;
        merkle::fetch_outputs(&self.client, &result, out)
            .map_err(|e| setup("download the outputs", e.to_string()))?;
        run.download_ms = t2.elapsed().as_millis() as u64;
        Ok(run)
    }

    /// Uploads the input root at `work`, the Command and the Action (and the runner
    /// image's blobs); returns the Action's digest.
    fn upload_action(
        &self,
        layout: Option<&OciLayout>,
        action: &Action<'_>,
        work: &Path,
    ) -> Result<Digest, cascade_exec::RunError> {
        let root = Merkle::of_dir(work).map_err(|e| setup("hash the input root", e.to_string()))?;
        let (platform, image_blobs) = self
            .platform(layout, action)
            .map_err(|e| setup("describe the runner to the engine", e))?;
        let mut paths = action.outputs.to_vec();
        paths.sort();
        paths.dedup();
        let env: Vec<re::command::EnvironmentVariable> = action
            .env
            .iter()
            .map(|(k, v)| re::command::EnvironmentVariable {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        #[allow(deprecated)] // for engines older than v2.1, which read output_directories
        let command = re::Command {
            arguments: vec!["sh".into(), "-e".into(), "-c".into(), script(&action.steps)],
            environment_variables: env,
            output_paths: paths.clone(),
            output_directories: paths,
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (cd, cb) = digest_of_message(&command);
        let reapi_action = re::Action {
            command_digest: Some(cd.clone()),
            input_root_digest: Some(root.root.clone()),
            timeout: Some(cascade_reapi::ProtoDuration {
                seconds: action.timeout.as_secs() as i64,
                nanos: 0,
            }),
            platform: Some(platform),
            ..Default::default()
        };
        let (ad, ab) = digest_of_message(&reapi_action);
        let mut blobs = root.blobs.all();
        blobs.push((cd, Blob::Bytes(&cb)));
        blobs.push((ad.clone(), Blob::Bytes(&ab)));
        for (d, p) in &image_blobs {
            blobs.push((d.clone(), Blob::File(p)));
        }
        self.client
            .upload(&blobs)
            .map_err(|e| setup("upload the action", e.to_string()))?;
        Ok(ad)
    }

    /// The log first (it is what a failure shows), then the engine's status and the
    /// steps' exit code as a run error.
    fn outcome(
        &self,
        action: &Action<'_>,
        status: &cascade_reapi::RpcStatus,
        result: &re::ActionResult,
        log: &Path,
    ) -> Result<(), cascade_exec::RunError> {
        if let Err(e) = self.fetch_log(result, log) {
            if status.code == 0 {
                return Err(setup("download the log", e.to_string()));
            }
        }
        match status.code {
            0 => {}
            4 => {
                return Err(cascade_exec::RunError::Timeout {
                    step: "remote execution".into(),
                    after: action.timeout,
                })
            }
            code => {
                return Err(setup(
                    "execute on the engine",
                    format!("the engine answered code {code}: {}", status.message),
                ))
            }
        }
        if result.exit_code != 0 {
            return Err(cascade_exec::RunError::Failed {
                step: failed_step(log).unwrap_or_else(|| "remote execution".into()),
                status: format!("exit code {}", result.exit_code),
            });
        }
        Ok(())
    }

    /// The platform of an Action, and the image blobs a worker will fetch.
    fn platform(
        &self,
        layout: Option<&OciLayout>,
        action: &Action<'_>,
    ) -> Result<(re::Platform, Vec<(Digest, std::path::PathBuf)>), String> {
        let mut props: BTreeMap<String, String> = BTreeMap::new();
        props.insert("OSFamily".into(), "linux".into());
        props.insert("ISA".into(), isa().into());
        let mut blobs = Vec::new();
        match &action.root {
            ActionRoot::Host { tools } => {
                let mut t: Vec<String> = tools
                    .iter()
                    .map(|t| format!("{}={}", t.name, t.digest))
                    .collect();
                t.sort();
                props.insert("cascade-tools".into(), t.join(","));
            }
            ActionRoot::Image { digest, .. } => {
                let layout = layout.ok_or("no image layout")?;
                let all = layout.image_blobs(digest).map_err(bad)?;
                let mut manifest_size = 0;
                for d in all {
                    let p = layout.blob_path(&d);
                    let size = fs::metadata(&p).map_err(bad)?.len();
                    if d == *digest {
                        manifest_size = size;
                    }
                    blobs.push((cas_digest(&d, size), p));
                }
                props.insert(
                    "container-image".into(),
                    format!("cas:{digest}/{manifest_size}"),
                );
            }
        }
        let platform = re::Platform {
            properties: props
                .into_iter()
                .map(|(name, value)| re::platform::Property { name, value })
                .collect(),
        };
        Ok((platform, blobs))
    }
}

/// A client for the engine at `url`, the token and CA from the environment
/// (`CASCADE_REMOTE_TOKEN`, `CASCADE_REMOTE_CA`).
pub(crate) fn client_for(url: &str) -> Result<Client, cascade_reapi::ReapiError> {
    let endpoint = cascade_reapi::Endpoint::parse(url)?;
    Client::new(
        &endpoint,
        &cascade_reapi::Options {
            token: std::env::var("CASCADE_REMOTE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            ca: std::env::var_os("CASCADE_REMOTE_CA").map(std::path::PathBuf::from),
            timeout: Duration::from_secs(10),
        },
    )
}

/// This machine's `ISA` platform property, as REAPI engines spell it.
pub(crate) fn isa() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        other => other,
    }
}

/// The OCI digest of a blob as a CAS digest: both are sha256 of the bytes.
pub(crate) fn cas_digest(d: &OciDigest, size: u64) -> Digest {
    Digest {
        hash: d.hex(),
        size_bytes: size as i64,
    }
}

/// The steps as one POSIX shell script: each announced as the sandbox does, run by `sh
/// -e -c`, the first failure's exit code the script's.
fn script(steps: &[cascade_exec::Step]) -> String {
    let mut s = String::from("exec 2>&1\n");
    for step in steps {
        s.push_str(&format!(
            "printf '==> step %s\\n' {}\nsh -e -c {}\n",
            quote(&step.name),
            quote(&step.run)
        ));
    }
    s
}

/// Single-quoted for a POSIX shell.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The step a remote log ended in: its last `==> step` line.
fn failed_step(log: &Path) -> Option<String> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("==> step "))
        .map(str::to_string)
}

fn meta_of(result: &re::ActionResult) -> Result<Meta, String> {
    let any = result
        .execution_metadata
        .as_ref()
        .and_then(|m| {
            m.auxiliary_metadata
                .iter()
                .find(|a| a.type_url == META_TYPE)
        })
        .ok_or("an entry without cascade's metadata")?;
    if any.value.len() > META_LIMIT {
        return Err("cascade's metadata is too big".into());
    }
    serde_json::from_slice(&any.value).map_err(|e| format!("cascade's metadata: {e}"))
}

/// `hash/size` back into a digest.
fn parse_digest(s: &str) -> Result<Digest, String> {
    let (hash, size) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not hash/size"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not a sha256 digest"));
    }
    Ok(Digest {
        hash: hash.to_ascii_lowercase(),
        size_bytes: size.parse().map_err(|_| format!("`{s}` has no size"))?,
    })
}

fn file_digest(p: &Path) -> Result<Digest, String> {
    merkle::hash_file(p).map_err(bad)
}

fn io_err(what: &str, e: std::io::Error) -> cascade_reapi::ReapiError {
    cascade_reapi::ReapiError::Io {
        what: what.to_string(),
        source: e,
    }
}
