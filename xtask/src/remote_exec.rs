//! `cargo xtask bench --remote-exec [--sizes N]`: the `--peers` lattice (N nodes, 1,000 by
//! default) built locally and then on a BuildGrid engine with 1, 2 and 4 `cascade worker`
//! processes attached, in one run; then a clean store that gets every node from the
//! engine's cache, and a no-op with and without `--remote`. Each engine is a fresh one
//! (`.ci/services/bgd-server.sh`, which needs `.ci/services/buildgrid.sh` to have run), so
//! its action cache never answers for a build it did not see. Per node, the build's
//! report says how long the upload, the execution (queue and worker) and the download
//! took; their means say where the time goes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::Result;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh BuildGrid on a free port, its own database; killed when dropped.
struct Engine {
    child: Child,
    port: u16,
}

impl Engine {
    fn start(root: &Path, dir: &Path) -> Result<Engine> {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("bgd.log"))?;
        let child = Command::new("bash")
            .arg(root.join(".ci/services/bgd-server.sh"))
            .arg(dir.join("engine"))
            .arg(port.to_string())
            .arg(format!("bgd_bench_{}_{port}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let e = Engine { child, port };
        let endpoint = cascade_reapi::Endpoint::parse(&e.url())?;
        let t0 = Instant::now();
        loop {
            let c = cascade_reapi::Client::new(
                &endpoint,
                &cascade_reapi::Options {
                    timeout: Duration::from_secs(2),
                    ..Default::default()
                },
            )?;
            if c.capabilities().is_ok() {
                return Ok(e);
            }
            if t0.elapsed() > Duration::from_secs(90) {
                return Err(format!(
                    "the engine did not answer; see {} (did .ci/services/buildgrid.sh run?)",
                    dir.join("bgd.log").display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn workers(bin: &Path, engine: &Engine, n: usize, dir: &Path) -> Result<Workers> {
    let mut all = Workers(Vec::new());
    for i in 0..n {
        let log = dir.join(format!("worker-{i}.log"));
        let file = std::fs::File::create(&log)?;
        all.0.push(
            Command::new(bin)
                .args(["worker", "--server", &engine.url(), "--name"])
                .arg(format!("bench-{i}"))
                .arg("--store")
                .arg(dir.join(format!("worker-{i}-store")))
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()?,
        );
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)?.contains("connected to") {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("worker {i} did not connect: {}", log.display()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(all)
}

/// The release `cascade` binary (built if needed): the workers', and the one the peers
/// bench times.
pub(crate) fn cascade_bin(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "cascade-cli",
            "--bin",
            "cascade",
        ])
        .current_dir(root)
        .status()?;
    if !status.success() {
        return Err("building the cascade binary failed".into());
    }
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/cascade"))
}

/// One build, timed, on `store`.
fn build(project: &Path, store: &Path, extra: &[String]) -> Result<(f64, serde_json::Value)> {
    let mut args: Vec<String> = [
        "cascade",
        "--project",
        &project.display().to_string(),
        "build",
        "--env",
        "bench",
        "--json",
        "--store",
        &store.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let code = cascade_cli::run_with(args, &mut out, &mut err, false);
    let secs = t.elapsed().as_secs_f64();
    if code != 0 {
        return Err(format!(
            "bench build failed ({code}):\n{}",
            String::from_utf8_lossy(&err)
        )
        .into());
    }
    Ok((secs, serde_json::from_slice(&out)?))
}

/// The mean upload, execute and download time of the nodes that ran on a worker.
fn phases(report: &serde_json::Value) -> (f64, f64, f64, usize) {
    let mut sum = [0u64; 3];
    let mut n = 0;
    for node in report["nodes"].as_array().into_iter().flatten() {
        let x = &node["remote_exec"];
        if x.is_null() {
            continue;
        }
        n += 1;
        for (i, k) in ["upload_ms", "execute_ms", "download_ms"]
            .iter()
            .enumerate()
        {
            sum[i] += x[k].as_u64().unwrap_or(0);
        }
    }
    let mean = |s: u64| if n == 0 { 0.0 } else { s as f64 / n as f64 };
    (mean(sum[0]), mean(sum[1]), mean(sum[2]), n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secs(t: f64) -> String {
    if t < 1.0 {
        format!("{:.1} ms", t * 1000.0)
    } else {
        format!("{t:.2} s")
    }
}

pub fn run(base: &Path, nodes: usize, jobs: usize) -> Result<()> {
    let root = crate::workspace_root();
    let bin = cascade_bin(&root)?;
    let layers = (nodes / 100).max(1);
    let n = layers * 100;
    let dir = base.join(format!("remote-exec-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    crate::peers::generate(&dir, layers)?;
    let project = dir.join("cascade");
    let local_store = dir.join("store-local");
    let j = vec!["--jobs".to_string(), jobs.to_string()];
    let (local_cold, r) = build(&project, &local_store, &j)?;
    if r["built"] != n {
        return Err(format!("the local cold build built {} of {n}", r["built"]).into());
    }
    let (local_noop, _) = build(&project, &local_store, &j)?;

    println!("| {n} nodes | wall time | nodes built | mean upload / execute / download per node |");
    println!("|---|---|---|---|");
    println!(
        "| local cold build (--jobs {jobs}) | {} | {n} | |",
        secs(local_cold)
    );
    let mut last = None;
    for w in [1usize, 2, 4] {
        let edir = dir.join(format!("engine-{w}"));
        std::fs::create_dir_all(&edir)?;
        let engine = Engine::start(&root, &edir)?;
        let _workers = workers(&bin, &engine, w, &edir)?;
        // Enough in flight that no worker waits for the client.
        let jobs = (2 * w).max(jobs).to_string();
        let store = dir.join(format!("store-remote-{w}"));
        let extra = ["--remote", &engine.url(), "--remote-exec", "--jobs", &jobs].map(String::from);
        let (t, r) = build(&project, &store, &extra)?;
        let (u, e, d, ran) = phases(&r);
        if ran != n {
            return Err(format!("{ran} of {n} nodes ran on the workers").into());
        }
        println!(
            "| remote cold build, {w} worker{} (--jobs {jobs}) | {} | {ran} | {u:.1} / {e:.1} / {d:.1} ms |",
            if w == 1 { "" } else { "s" },
            secs(t)
        );
        last = Some(engine);
    }
    let engine = last.ok_or("no engine")?;
    let remote = ["--remote", &engine.url()].map(String::from);
    let clean = dir.join("store-clean");
    let mut extra = remote.to_vec();
    extra.extend(j.iter().cloned());
    let (cached, r) = build(&project, &clean, &extra)?;
    if r["remote_cache"]["hits"] != n {
        return Err(format!(
            "{} of {n} from the engine's cache",
            r["remote_cache"]["hits"]
        )
        .into());
    }
    // The no-ops are short: three more of each, interleaved, and the median of each.
    let (mut local_noops, mut remote_noops) = (vec![local_noop], Vec::new());
    for _ in 0..3 {
        remote_noops.push(build(&project, &clean, &extra)?.0);
        local_noops.push(build(&project, &local_store, &j)?.0);
    }
    println!(
        "| clean store, every node from the engine's cache | {} | 0 | |",
        secs(cached)
    );
    println!(
        "| no-op, local store (median of 4) | {} | 0 | |",
        secs(median(local_noops))
    );
    println!(
        "| no-op with --remote, all in the local store (median of 3) | {} | 0 | |",
        secs(median(remote_noops))
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
