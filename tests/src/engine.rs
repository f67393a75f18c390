//! A REAPI engine of a test's own (BuildGrid, through `.ci/services/bgd-server.sh`, on
//! a free port with its own database and CAS directory) and `cascade worker` processes
//! attached to it, so a test can kill either mid-build.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The state directory the service scripts use.
fn services_dir() -> PathBuf {
    std::env::var_os("CASCADE_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cascade-services"))
}

/// A value of `buildgrid.env`, which `.ci/services/buildgrid.sh` writes.
pub fn bgd_env(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(services_dir().join("buildgrid.env")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// PostgreSQL's `host:port`, from the connection string BuildGrid uses.
fn pg_addr() -> Option<String> {
    let url = bgd_env("CASCADE_BGD_PG")?;
    let after = url.split_once('@')?.1;
    Some(after.split('/').next()?.to_string())
}

/// Whether BuildGrid is installed and PostgreSQL runs (`.ci/services/buildgrid.sh`).
pub fn buildgrid() -> bool {
    let ok = bgd_env("CASCADE_BGD").is_some()
        && pg_addr().is_some_and(|a| TcpStream::connect(a).is_ok());
    crate::require(
        "BuildGrid and PostgreSQL",
        ok,
        "run .ci/services/buildgrid.sh",
    )
}

/// The `cascade` binary, built once per test process (`cargo test` builds it for the
/// CLI's own tests; this makes sure when one package's tests run alone).
pub fn cascade_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = xtask::workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "cascade-cli", "--bin", "cascade"])
            .current_dir(&root)
            .status()
            .expect("cargo build the cascade binary");
        assert!(status.success(), "building the cascade binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug/cascade")
    })
    .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A BuildGrid server of this test's own.
pub struct Engine {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    db: String,
    keepalive: u32,
}

impl Engine {
    /// Starts one, its bot sessions expiring after `keepalive` seconds (a vanished
    /// worker's lease is requeued after that).
    pub fn start(keepalive: u32) -> Engine {
        let port = free_port();
        let db = format!("bgd_test_{}_{port}", std::process::id());
        let mut e = Engine {
            child: None,
            port,
            dir: tempfile::tempdir().expect("an engine directory"),
            db,
            keepalive,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let script = xtask::workspace_root().join(".ci/services/bgd-server.sh");
        let log = std::fs::File::create(self.dir.path().join("bgd.log")).expect("the engine's log");
        let child = Command::new("bash")
            .arg(script)
            .arg(self.dir.path().join("engine"))
            .arg(self.port.to_string())
            .arg(&self.db)
            .env("CASCADE_BGD_KEEPALIVE", self.keepalive.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the engine's log"))
            .stderr(log)
            .spawn()
            .expect("start bgd-server.sh");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Until a gRPC call answers (the port opens before the services are up).
    fn wait_ready(&self) {
        let t0 = Instant::now();
        let endpoint = cascade_reapi::Endpoint::parse(&self.url()).expect("the engine's URL");
        loop {
            let client = cascade_reapi::Client::new(
                &endpoint,
                &cascade_reapi::Options {
                    timeout: Duration::from_secs(2),
                    ..Default::default()
                },
            )
            .expect("a client");
            if client.capabilities().is_ok() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "the engine did not answer in 90 s:\n{}",
                std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the engine vanishes mid-call.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, database and CAS.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Where the engine keeps the blob `sha256_hex` on disk.
    pub fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("engine/cas/cas/objects")
            .join(&sha256_hex[..2])
            .join(&sha256_hex[2..])
    }

    /// A worker attached to this engine, named `name`, its own store under `dir`.
    pub fn worker(&self, name: &str, dir: &Path) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the worker's log");
        let mut cmd = Command::new(cascade_bin());
        cmd.args(["worker", "--server", &self.url(), "--name", name, "--store"])
            .arg(dir.join(format!("{name}-store")))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the worker's log"))
            .stderr(file);
        if let Some(share) = std::env::var_os("CASCADE_SANDBOX_SHARE") {
            cmd.env("CASCADE_SANDBOX_SHARE", share);
        }
        let child = cmd.spawn().expect("start cascade worker");
        let w = Worker {
            child: Some(child),
            log,
        };
        // Connected, so the first Action does not wait for the session.
        let t0 = Instant::now();
        while !w.log().contains("connected to") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "worker {name} did not connect:\n{}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        // The database too, best effort (a new machine has none left over anyway).
        if let (Some(bin), Some(addr)) = (bgd_env("CASCADE_PG_BIN"), pg_addr()) {
            let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, "5432"));
            let _ = Command::new(format!("{bin}/dropdb"))
                .args(["-h", host, "-p", port, "-U", "bgd", "--if-exists", &self.db])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A `cascade worker` process.
pub struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, mid-action if it runs one.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
