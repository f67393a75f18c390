//! [IO] publish: after every node built, the images meet the world. Smoke tests run
//! against them in Docker, `--load` loads them into the engine, `--push` sends them to
//! the environment's registry; only when all of that succeeded is the lockfile written
//! (by the caller), with the tests' results.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_docker::Docker;
use cascade_image::OciLayout;
use cascade_lock::TestResult;
use cascade_manifest::{Probe, SmokeTest};
use cascade_registry::{Client, ClientOptions, Reference};
use cascade_store::Store;

use crate::image::ImageRef;
use crate::Error;

/// What to do with the images once they are built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Load every image into the local Docker Engine.
    pub load: bool,
    /// Push every image to the environment's registry.
    pub push: bool,
    /// Do not run smoke tests; the lockfile records them as skipped.
    pub skip_tests: bool,
}

/// How a smoke test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    Failed,
    /// Not run: `--skip-tests`, or no engine to run it in.
    Skipped,
}

/// One smoke test's result, as the report shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TestReport {
    pub name: String,
    pub status: TestStatus,
    pub attempts: u32,
    /// What the last probe saw; why it failed.
    pub detail: String,
    /// The container's last log lines, when it failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    pub duration_ms: u64,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.status != TestStatus::Failed
    }

    pub fn result(&self) -> TestResult {
        match self.status {
            TestStatus::Skipped => TestResult::Skipped,
            TestStatus::Passed | TestStatus::Failed => TestResult::Passed,
        }
    }
}

/// The engine a build is using, so an interrupt can remove what it started.
static ENGINE: Mutex<Option<Arc<Docker>>> = Mutex::new(None);

/// Removes the containers and networks this process started, and starts no more (for
/// SIGINT/SIGTERM).
pub fn cleanup_containers() {
    let engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(d) = engine {
        let _ = d.shut_down();
    }
}

/// The process's connection to Docker, made on first use and registered for
/// [`cleanup_containers`]: smoke tests and container steps share it.
pub(crate) fn engine() -> Result<Arc<Docker>, cascade_docker::DockerError> {
    let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = &*engine {
        return Ok(d.clone());
    }
    let d = Arc::new(Docker::connect()?);
    *engine = Some(d.clone());
    Ok(d)
}

/// Connects to Docker when this build needs it: before anything is built, so a missing
/// engine costs no build time.
pub(crate) fn engine_for(
    opts: &PublishOptions,
    any_tests: bool,
) -> Result<Option<Arc<Docker>>, Error> {
    let why = if opts.load {
        "--load"
    } else if any_tests && !opts.skip_tests {
        "the smoke tests (`tests:`)"
    } else {
        return Ok(None);
    };
    match engine() {
        Ok(d) => Ok(Some(d)),
        Err(source) => Err(Error::Docker {
            needed_by: why.to_string(),
            source,
        }),
    }
}

/// `--push` needs a registry in the environment: checked before anything is built.
pub(crate) fn push_target(
    opts: &PublishOptions,
    registry: Option<&str>,
    env: &str,
) -> Result<(), Error> {
    if opts.push && registry.is_none() {
        return Err(Error::NoRegistry {
            env: env.to_string(),
        });
    }
    Ok(())
}

/// Placeholders of `body_contains`, filled for one node.
pub(crate) struct Facts<'a> {
    pub component: &'a str,
    pub commit: &'a str,
    pub version: &'a str,
}

fn fill(s: &str, f: &Facts<'_>) -> String {
    s.replace("{commit}", f.commit)
        .replace("{short_sha}", &f.commit[..f.commit.len().min(7)])
        .replace("{version}", f.version)
        .replace("{component}", f.component)
}

fn to_docker(t: &SmokeTest, facts: &Facts<'_>) -> cascade_docker::SmokeTest {
    let mut d = match &t.probe {
        Probe::Http { port, path } => cascade_docker::SmokeTest::http(&t.name, *port, path),
        Probe::Command(argv) => cascade_docker::SmokeTest::command(&t.name, argv.clone()),
    };
    d.expect = cascade_docker::Expect {
        status: t.expect.status,
        body_contains: t.expect.body_contains.as_deref().map(|b| fill(b, facts)),
        exit_code: t.expect.exit_code,
    };
    d.timeout = t.timeout;
    d
}

/// Writes the image as an archive in the store's scratch space and loads it.
pub(crate) fn load(
    docker: &Docker,
    store: &Store,
    layout: &OciLayout,
    image: &ImageRef,
) -> Result<String, String> {
    let tmp = store.temp_dir().map_err(|e| e.to_string())?;
    let archive = tmp.path().join("image.tar");
    cascade_image::export_archive(layout, &image.digest, &image.reference, &archive)
        .map_err(|e| e.to_string())?;
    let loaded = docker
        .load_archive(&archive)
        .map_err(|e| format!("docker load: {e}"))?;
    Ok(loaded.id)
}

/// Runs one smoke test of an image where the build runs them (the sandbox or Docker);
/// `None` when there is nowhere to run it.
pub(crate) type SmokeRunner<'a> = dyn Fn(&ImageRef, &cascade_docker::SmokeTest) -> Option<Result<cascade_docker::TestOutcome, String>>
    + 'a;

/// Runs a node's smoke tests against its image, in order.
pub(crate) fn run_tests(
    smoke: &SmokeRunner<'_>,
    image: &ImageRef,
    tests: &[SmokeTest],
    facts: &Facts<'_>,
    skip: bool,
) -> Vec<TestReport> {
    tests
        .iter()
        .map(|t| {
            let skipped = |detail: &str| TestReport {
                name: t.name.clone(),
                status: TestStatus::Skipped,
                attempts: 0,
                detail: detail.to_string(),
                log_tail: Vec::new(),
                duration_ms: 0,
            };
            if skip {
                return skipped("--skip-tests");
            }
            match smoke(image, &to_docker(t, facts)) {
                None => skipped("no engine"),
                Some(Ok(o)) => TestReport {
                    name: t.name.clone(),
                    status: if o.passed {
                        TestStatus::Passed
                    } else {
                        TestStatus::Failed
                    },
                    attempts: o.attempts,
                    detail: o.detail,
                    log_tail: o.log_tail,
                    duration_ms: o.elapsed.as_millis() as u64,
                },
                Some(Err(e)) => TestReport {
                    name: t.name.clone(),
                    status: TestStatus::Failed,
                    attempts: 0,
                    detail: e,
                    log_tail: Vec::new(),
                    duration_ms: 0,
                },
            }
        })
        .collect()
}

/// One image pushed: its manifest's digest, and how many blobs went over the wire.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub reference: String,
    pub manifest: String,
    pub blobs_uploaded: usize,
    /// Blobs the registry already had.
    pub blobs_skipped: usize,
}

/// Pushes every image to its registry: blobs, then the manifest by digest, then the tag.
pub(crate) fn push(layout: &OciLayout, images: &[ImageRef]) -> Result<Vec<PushedImage>, Error> {
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let mut pushed = Vec::new();
    for image in images {
        let r = Reference::parse(&image.reference).map_err(|source| Error::Push {
            reference: image.reference.clone(),
            source,
        })?;
        if !clients.contains_key(&r.registry) {
            let creds =
                cascade_registry::credentials_for(&r.registry).map_err(|source| Error::Push {
                    reference: image.reference.clone(),
                    source,
                })?;
            let opts = ClientOptions {
                timeout: Duration::from_secs(60),
                ..ClientOptions::default()
            };
            clients.insert(r.registry.clone(), Client::new(&r.registry, creds, opts));
        }
        let client = &clients[&r.registry];
        let tags: Vec<String> = r.tag.iter().cloned().collect();
        let report = client
            .push(layout, &image.digest, &r.repository, &tags)
            .map_err(|source| Error::Push {
                reference: image.reference.clone(),
                source,
            })?;
        pushed.push(PushedImage {
            reference: image.reference.clone(),
            manifest: report.manifest.to_string(),
            blobs_uploaded: report.blobs_uploaded,
            blobs_skipped: report.blobs_skipped,
        });
    }
    Ok(pushed)
}
