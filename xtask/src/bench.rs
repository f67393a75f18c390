//! `cargo xtask bench`: synthetic graphs (chain, wide, diamond-heavy; 1,000 and 10,000
//! nodes; trivial steps), each timed cold (empty store), no-op (everything cached) and
//! after a change to one leaf (a node nothing depends on); `plan` is timed on the
//! cached graph and after the change, and compared with the no-op build. A benchmark,
//! not a test: it prints figures and checks only that each run did what it should
//! (everything built, nothing built, one rebuilt; plan: all cached, one rebuild).
//! The `mono` shape is the diamond kept as one repository with one directory per node
//! (`dir:`), each step hashing its data and its inputs' outputs; its change is one
//! commit to the directory of a node ten layers above the last, which must rebuild
//! exactly that node and its 54 dependents (keys by content: the commit moves every
//! node's source, and only its tree changes).
//! `--image MB` times the assembly of one image layer; `--container STEPS` what running
//! steps in containers costs against running them on the host; `--peers` the same
//! lattice built by ninja, make and cascade (`peers.rs`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// n0 ← n1 ← n2 ← …
    Chain,
    /// One root, every other node depends on it.
    Wide,
    /// Layers of 10; each node depends on two nodes of the layer above.
    Diamond,
    /// Diamond, in one repository with a directory per node.
    Mono,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Wide => "wide",
            Shape::Diamond => "diamond",
            Shape::Mono => "mono",
        }
    }

    fn inputs(self, i: usize) -> Vec<usize> {
        match self {
            Shape::Chain => i.checked_sub(1).into_iter().collect(),
            Shape::Wide => {
                if i == 0 {
                    vec![]
                } else {
                    vec![0]
                }
            }
            Shape::Diamond | Shape::Mono => {
                const W: usize = 10;
                if i < W {
                    vec![]
                } else {
                    let layer_start = (i / W - 1) * W;
                    let a = layer_start + i % W;
                    let b = layer_start + (i + 1) % W;
                    let mut v = vec![a, b];
                    v.sort_unstable();
                    v.dedup();
                    v
                }
            }
        }
    }
}

fn node(i: usize) -> String {
    format!("n{i:05}")
}

/// Writes a project with `n` nodes of `shape`. Every node's source is its own branch
/// of one git repository (one commit holding one file), so moving one branch changes
/// exactly one node's source, as a commit in one of many repositories would.
/// A project's directories and its one (bare) repository, with a fixed signature.
fn project_skeleton(dir: &Path) -> Result<(git2::Repository, git2::Signature<'static>)> {
    fs::create_dir_all(dir.join("graph/environments"))?;
    fs::create_dir_all(dir.join("recipes"))?;
    let repo = git2::Repository::init_bare(dir.join("repo"))?;
    let sig = git2::Signature::new(
        "bench",
        "bench@example.com",
        &git2::Time::new(1_767_225_600, 0),
    )?;
    Ok((repo, sig))
}

/// The nodes that depend on `changed`, directly or not.
fn dependents(shape: Shape, n: usize, changed: usize) -> usize {
    let mut hit = vec![false; n];
    hit[changed] = true;
    // Inputs always come before their users, so one pass in order finds them all.
    for i in 0..n {
        if shape.inputs(i).into_iter().any(|j| hit[j]) {
            hit[i] = true;
        }
    }
    hit.iter().filter(|h| **h).count() - 1
}

/// A recipe whose output hashes its source file and its inputs' outputs, so a change
/// reaches every dependent (no early cutoff hides it): the peers' step too.
pub(crate) fn hashing_recipe(inputs: &[String], file: &str) -> String {
    let cats: String = inputs.iter().map(|i| format!(" inputs/{i}/out")).collect();
    format!(
        "inputs: [{}]\nrunner: {{ host: {{ tools: [sh, cat, cksum] }} }}\nsteps:\n  - name: make\n    run: 'cat {file}{cats} | cksum > out'\noutputs: [out]\n",
        inputs.join(", ")
    )
}

/// A commit on `main` of the mono repository holding `n` directories, on top of its
/// tip; `changed` gets other data.
fn commit_mono(
    repo: &git2::Repository,
    sig: &git2::Signature<'_>,
    n: usize,
    changed: Option<usize>,
) -> Result<()> {
    let dirs = (0..n).map(|i| {
        let data = match changed {
            Some(c) if c == i => "changed\n".to_string(),
            _ => format!("{i}\n"),
        };
        (node(i), data)
    });
    commit_dirs(repo, sig, "data", dirs)
}

/// Moves `main` to a new commit (on top of it, if it exists) whose tree has one
/// directory per `(name, text)`, holding `file` with that text.
pub(crate) fn commit_dirs(
    repo: &git2::Repository,
    sig: &git2::Signature<'_>,
    file: &str,
    dirs: impl Iterator<Item = (String, String)>,
) -> Result<()> {
    let mut root = repo.treebuilder(None)?;
    for (name, text) in dirs {
        let blob = repo.blob(text.as_bytes())?;
        let mut sub = repo.treebuilder(None)?;
        sub.insert(file, blob, 0o100644)?;
        root.insert(name, sub.write()?, 0o040000)?;
    }
    let tree = repo.find_tree(root.write()?)?;
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let oid = repo.commit(None, sig, sig, "packages", &tree, &parents)?;
    repo.reference("refs/heads/main", oid, true, "bench")?;
    Ok(())
}

/// Every shape but `mono`: each node's source is its own branch of one repository.
/// `mono`: one branch, `main`, with a directory `n<i>/` per node (`dir:`), and recipes
/// that hash their inputs' outputs.
fn generate(dir: &Path, shape: Shape, n: usize) -> Result<()> {
    let (repo, sig) = project_skeleton(dir)?;
    let mono = matches!(shape, Shape::Mono);
    if mono {
        commit_mono(&repo, &sig, n, None)?;
    } else {
        for i in 0..n {
            commit_node(&repo, &sig, i, format!("{i}\n").as_bytes())?;
        }
    }
    let mut env = String::from("name: bench\nmode: branch\nsources:\n");
    for i in 0..n {
        let rev = match mono {
            true => format!("ref: main, dir: {}", node(i)),
            false => format!("ref: {}", node(i)),
        };
        writeln!(env, "  {}: {{ repo: ../../repo, {rev} }}", node(i))?;
    }
    fs::write(dir.join("graph/environments/bench.yaml"), env)?;
    for i in 0..n {
        let inputs: Vec<String> = shape.inputs(i).into_iter().map(node).collect();
        let recipe = match mono {
            true => hashing_recipe(&inputs, "data"),
            false => format!(
                "inputs: [{}]\nrunner: {{ host: {{ tools: [sh] }} }}\nsteps:\n  - name: make\n    run: 'read x < data; echo \"$x $CASCADE_COMPONENT\" > out'\noutputs: [out]\n",
                inputs.join(", ")
            ),
        };
        fs::write(
            dir.join("recipes").join(format!("{}.yaml", node(i))),
            recipe,
        )?;
    }
    Ok(())
}

/// Points branch `n<i>` at a new root commit whose tree holds `data`.
fn commit_node(
    repo: &git2::Repository,
    sig: &git2::Signature<'_>,
    i: usize,
    data: &[u8],
) -> Result<()> {
    let blob = repo.blob(data)?;
    let mut tb = repo.treebuilder(None)?;
    tb.insert("data", blob, 0o100644)?;
    let tree = repo.find_tree(tb.write()?)?;
    let oid = repo.commit(None, sig, sig, &node(i), &tree, &[])?;
    repo.reference(&format!("refs/heads/{}", node(i)), oid, true, "bench")?;
    Ok(())
}

/// Moves the last node's branch: a leaf of the graph (nothing depends on it) in every
/// shape, so exactly one node should rebuild.
fn change_leaf(dir: &Path, n: usize) -> Result<()> {
    let repo = git2::Repository::open_bare(dir.join("repo"))?;
    let sig = git2::Signature::new(
        "bench",
        "bench@example.com",
        &git2::Time::new(1_767_229_200, 0),
    )?;
    commit_node(&repo, &sig, n - 1, b"changed\n")
}

struct Timed {
    secs: f64,
    built: u64,
    cached: u64,
}

fn build(dir: &Path, jobs: usize) -> Result<Timed> {
    let j = timed(dir, &["build", "--jobs", &jobs.to_string()])?;
    Ok(Timed {
        secs: j.0,
        built: j.1["built"].as_u64().unwrap_or(0),
        cached: j.1["cached"].as_u64().unwrap_or(0),
    })
}

/// `cascade plan`: seconds, and how many nodes it says are cached and will rebuild.
fn plan(dir: &Path) -> Result<(f64, u64, u64)> {
    let (secs, j) = timed(dir, &["plan"])?;
    let count = |k: &str| j[k].as_u64().unwrap_or(0);
    Ok((secs, count("cached"), count("rebuild")))
}

fn timed(dir: &Path, command: &[&str]) -> Result<(f64, serde_json::Value)> {
    let args = cascade_args(dir, command);
    let mut out = Vec::new();
    let mut err = Vec::new();
    // Flush what the previous build wrote first, so the kernel's writeback of it is not
    // counted against this run.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let code = cascade_cli::run_with(args, &mut out, &mut err, false);
    let secs = t.elapsed().as_secs_f64();
    report(command, code, &out, &err).map(|v| (secs, v))
}

/// `cascade --project DIR COMMAND --env bench --json --store DIR/cache …`.
fn cascade_args(dir: &Path, command: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "cascade".into(),
        "--project".into(),
        dir.display().to_string(),
        command[0].into(),
        "--env".into(),
        "bench".into(),
        "--json".into(),
        "--store".into(),
        dir.join("cache").display().to_string(),
    ];
    args.extend(command[1..].iter().map(|s| s.to_string()));
    args
}

fn report(command: &[&str], code: i32, out: &[u8], err: &[u8]) -> Result<serde_json::Value> {
    if code != 0 {
        return Err(format!(
            "bench {} failed ({code}):\n{}",
            command[0],
            String::from_utf8_lossy(err)
        )
        .into());
    }
    Ok(serde_json::from_slice(out)?)
}

/// As [`timed`], but the release `cascade` binary as a process of its own, the way the
/// peers run: its start-up is part of what a user waits for. Also returns its peak RSS
/// in bytes (`wait4`'s `ru_maxrss`).
pub(crate) fn timed_process(
    bin: &Path,
    dir: &Path,
    command: &[&str],
) -> Result<(f64, serde_json::Value, u64)> {
    use std::io::Read;
    use std::process::Stdio;
    let args = cascade_args(dir, command);
    // SAFETY: as in `timed`.
    unsafe { libc::sync() };
    let t = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = stderr.read_to_end(&mut e);
        e
    });
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_end(&mut out)?;
    err.extend(reader.join().unwrap_or_default());
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes into both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which nothing else reaps.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let rss = usage.ru_maxrss as u64 * 1024;
    report(command, code, &out, &err).map(|v| (secs, v, rss))
}

pub fn run(args: &[String]) -> Result<()> {
    let mut sizes = vec![1_000usize, 10_000];
    let mut shapes = vec![Shape::Chain, Shape::Wide, Shape::Diamond, Shape::Mono];
    let mut jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut keep = false;
    let mut image_mb: Option<usize> = None;
    let mut remote_mb: Option<usize> = None;
    let mut container_steps: Option<usize> = None;
    let mut peers = false;
    let mut remote_exec = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a value like 1000,10000")?;
                sizes = v
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--shapes" => {
                let v = it
                    .next()
                    .ok_or("--shapes needs a value like chain,wide,diamond,mono")?;
                shapes = v
                    .split(',')
                    .map(|s| match s {
                        "chain" => Ok(Shape::Chain),
                        "wide" => Ok(Shape::Wide),
                        "diamond" => Ok(Shape::Diamond),
                        "mono" => Ok(Shape::Mono),
                        other => Err(format!("unknown shape `{other}`")),
                    })
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--jobs" => jobs = it.next().ok_or("--jobs needs a number")?.parse()?,
            "--keep" => keep = true,
            "--peers" => peers = true,
            "--remote-exec" => remote_exec = true,
            "--image" => {
                let v = it.next().ok_or("--image needs a size in MB, like 100")?;
                image_mb = Some(v.parse()?);
            }
            "--remote" => {
                let v = it.next().ok_or("--remote needs a size in MB, like 256")?;
                remote_mb = Some(v.parse()?);
            }
            "--container" => {
                let v = it
                    .next()
                    .ok_or("--container needs a number of steps, like 20")?;
                container_steps = Some(v.parse()?);
            }
            other => return Err(format!("unknown bench argument `{other}`").into()),
        }
    }
    let base: PathBuf = std::env::temp_dir().join(format!("cascade-bench-{}", std::process::id()));
    if let Some(mb) = image_mb {
        return image_bench(&base, mb);
    }
    if let Some(mb) = remote_mb {
        return remote_bench(&base, mb);
    }
    if let Some(steps) = container_steps {
        return container_bench(&base, steps);
    }
    if remote_exec {
        return crate::remote_exec::run(&base, sizes[0], jobs);
    }
    if peers {
        let r = crate::peers::run(&base, &sizes, jobs, keep);
        if !keep {
            let _ = fs::remove_dir_all(&base);
        }
        return r;
    }
    println!(
        "| shape | nodes | cold build | no-op build | plan, all cached | one-leaf change: plan | one-leaf change: build (rebuilt) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for &shape in &shapes {
            let dir = base.join(format!("{}-{n}", shape.name()));
            let _ = fs::remove_dir_all(&dir);
            generate(&dir, shape, n)?;
            let cold = build(&dir, jobs)?;
            if cold.built != n as u64 {
                return Err(format!("cold build built {} of {n}", cold.built).into());
            }
            let noop = build(&dir, jobs)?;
            if noop.built != 0 || noop.cached != n as u64 {
                return Err(format!("no-op build built {}", noop.built).into());
            }
            let (plan_cached, cached, _) = plan(&dir)?;
            if cached != n as u64 {
                return Err(format!("plan of a built graph: {cached} of {n} cached").into());
            }
            // What the change must rebuild: the leaf alone, or in `mono` node 0 and
            // every node below it.
            let expected = match shape {
                Shape::Mono => {
                    let repo = git2::Repository::open_bare(dir.join("repo"))?;
                    let sig = git2::Signature::new(
                        "bench",
                        "bench@example.com",
                        &git2::Time::new(1_767_229_200, 0),
                    )?;
                    // A node ten layers above the last: it and its 54 dependents, as
                    // a leaf package with dependents in a monorepo.
                    let changed = (n / 10).saturating_sub(10) * 10;
                    commit_mono(&repo, &sig, n, Some(changed))?;
                    1 + dependents(shape, n, changed)
                }
                _ => {
                    change_leaf(&dir, n)?;
                    1
                }
            };
            let (plan_leaf, _, rebuild) = plan(&dir)?;
            if rebuild != 1 {
                return Err(format!("plan after one leaf changed: {rebuild} rebuild").into());
            }
            let leaf = build(&dir, jobs)?;
            if leaf.built != expected as u64 || leaf.cached != (n - expected) as u64 {
                return Err(format!(
                    "after the change: {} built, {} cached; expected {expected} built",
                    leaf.built, leaf.cached
                )
                .into());
            }
            let pct = |t: f64| (t / noop.secs - 1.0) * 100.0;
            println!(
                "| {} | {n} | {:.2} s | {:.3} s | {:.3} s ({:+.0}%) | {:.3} s ({:+.0}%) | {:.3} s ({}) |",
                shape.name(),
                cold.secs,
                noop.secs,
                plan_cached,
                pct(plan_cached),
                plan_leaf,
                pct(plan_leaf),
                leaf.secs,
                leaf.built
            );
            if !keep {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    if keep {
        println!("projects kept in {}", base.display());
    } else {
        let _ = fs::remove_dir_all(&base);
    }
    Ok(())
}

/// Assembling a layer of an `mb` MB output (seeded pseudo-random bytes in 64 files)
/// against gzip-ing the same bytes once with the same compressor and level: the tar,
/// the two sha256 passes and the blob write are what the ratio shows.
fn image_bench(base: &Path, mb: usize) -> Result<()> {
    use std::io::Write;
    let src = base.join("image-src");
    fs::create_dir_all(&src)?;
    let files = 64;
    let per_file = mb * 1024 * 1024 / files;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut all = Vec::with_capacity(mb * 1024 * 1024);
    for f in 0..files {
        let mut data = Vec::with_capacity(per_file);
        while data.len() < per_file {
            // xorshift64*: fast, seeded, and incompressible enough to be a worst case.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        data.truncate(per_file);
        fs::write(src.join(format!("f{f:02}")), &data)?;
        all.extend_from_slice(&data);
    }
    unsafe { libc::sync() };
    let t = Instant::now();
    let mut gz = flate2::write::GzEncoder::new(
        std::io::sink(),
        flate2::Compression::new(cascade_image::GZIP_LEVEL),
    );
    gz.write_all(&all)?;
    gz.finish()?;
    let gzip = t.elapsed().as_secs_f64();
    drop(all);

    let layout = cascade_image::OciLayout::open_or_create(base.join("image-layout"))?;
    let entries = cascade_image::entries_from_dir(&src, "/data", None)?;
    let t = Instant::now();
    let layer = cascade_image::write_layer(&layout, &entries, 1_767_225_600)?;
    let assemble = t.elapsed().as_secs_f64();
    println!("| output | gzip once | image layer (tar + sha256 ×2 + gzip + write) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {mb} MB in {files} files | {gzip:.2} s | {assemble:.2} s ({} bytes) | {:.2}× |",
        layer.descriptor.size,
        assemble / gzip
    );
    let _ = fs::remove_dir_all(base);
    Ok(())
}

/// One node whose output is a single `mb` MB file, through the remote cache on the
/// registry at 127.0.0.1:5000: built and uploaded from one store, then downloaded into
/// an empty one. Blobs are streamed, so the process's peak memory stays far below the
/// file's size; the figures are the peak RSS of this process after each phase.
fn remote_bench(base: &Path, mb: usize) -> Result<()> {
    let dir = base.join("remote");
    let (repo, sig) = project_skeleton(&dir)?;
    commit_node(&repo, &sig, 0, b"0\n")?;
    fs::write(
        dir.join("graph/environments/bench.yaml"),
        format!(
            "name: bench\nmode: branch\nsources:\n  {}: {{ repo: ../../repo, ref: {} }}\n",
            node(0),
            node(0)
        ),
    )?;
    fs::write(
        dir.join(format!("recipes/{}.yaml", node(0))),
        format!(
            "runner: {{ host: {{ tools: [sh, head] }} }}\nsteps:\n  - name: make\n    run: head -c {} /dev/urandom > out\noutputs: [out]\n",
            mb << 20
        ),
    )?;
    let cache = format!("oci://127.0.0.1:5000/cascade-bench-{}", std::process::id());
    let peak_mb = || {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        u.ru_maxrss as f64 / 1024.0
    };
    let start = peak_mb();
    let (write, j) = timed(&dir, &["build", "--remote-cache", &cache])?;
    if j["remote_cache"]["uploads"] != 1 {
        return Err(format!("the upload did not happen: {}", j["remote_cache"]).into());
    }
    let after_write = peak_mb();
    fs::remove_dir_all(dir.join("cache"))?;
    let (read, j) = timed(&dir, &["build", "--remote-cache", &cache])?;
    if j["remote_cache"]["hits"] != 1 {
        return Err(format!("the download did not happen: {}", j["remote_cache"]).into());
    }
    let after_read = peak_mb();
    println!(
        "| output | build + upload | download | peak RSS before | after upload | after download |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| one {mb} MB file | {write:.2} s | {read:.2} s | {start:.0} MB | {after_write:.0} MB | {after_read:.0} MB |"
    );
    let _ = fs::remove_dir_all(base);
    Ok(())
}

/// `steps` trivial steps (`mkdir -p out`), side by side in one run: a host runner run
/// directly (`CASCADE_SANDBOX=off`, the floor: one process a step) and in the sandbox;
/// an image runner (a busybox image the graph builds) in the sandbox and, when an
/// engine answers, in Docker. The first build of each (the image unpacked or loaded),
/// then three rebuilds (a changed `env`), each timed by the node's own `duration_ms`.
fn container_bench(base: &Path, steps: usize) -> Result<()> {
    let dir = base.join("container");
    let _ = fs::remove_dir_all(&dir);
    let (repo, sig) = project_skeleton(&dir)?;
    commit_node(&repo, &sig, 0, b"data\n")?;
    let docker = cascade_docker::Docker::connect().is_ok();
    let mut env = String::from("name: bench\nmode: branch\nsources:\n");
    for name in ["tc", "host", "box"] {
        writeln!(env, "  {name}: {{ repo: ../../repo, ref: {} }}", node(0))?;
    }
    fs::write(dir.join("graph/environments/bench.yaml"), env)?;
    fs::write(
        dir.join("recipes/tc.yaml"),
        "runner: { host: { tools: [sh, mkdir, ln, cp, busybox] } }\n\
         steps:\n  - name: rootfs\n    run: |\n      mkdir -p rootfs/bin\n      cp \"$(command -v busybox)\" rootfs/bin/busybox\n      ln -s busybox rootfs/bin/sh\n      ln -s busybox rootfs/bin/mkdir\n\
         outputs: [rootfs]\n\
         image:\n  base: scratch\n  layers: [{ from: rootfs, to: / }]\n  env: { PATH: /bin }\n",
    )?;
    let recipe = |runner: &str, round: usize| {
        let mut r = format!("runner: {runner}\nenv: {{ ROUND: \"{round}\" }}\nsteps:\n");
        for i in 0..steps {
            let _ = writeln!(r, "  - {{ name: s{i}, run: 'mkdir -p out' }}");
        }
        r.push_str("outputs: [out]\n");
        r
    };
    // (label, executor, CASCADE_SANDBOX=off?, node): each configuration gets rounds of
    // its own, so every one of them starts with its own first build.
    let mut configs = vec![
        ("host runner, no sandbox", "sandbox", true, "host"),
        ("host runner, sandbox", "sandbox", false, "host"),
        ("image runner, sandbox", "sandbox", false, "box"),
    ];
    if docker {
        configs.push(("image runner, Docker", "docker", false, "box"));
    }
    let mut round = 0;
    let mut results = Vec::new();
    for (label, executor, off, name) in &configs {
        if *off {
            std::env::set_var("CASCADE_SANDBOX", "off");
        } else {
            std::env::remove_var("CASCADE_SANDBOX");
        }
        let mut times = Vec::new();
        // A fresh store per configuration: its first build unpacks or loads the image.
        let _ = fs::remove_dir_all(dir.join("cache"));
        for _ in 0..4 {
            round += 1;
            fs::write(
                dir.join("recipes/host.yaml"),
                recipe("{ host: { tools: [sh, mkdir] } }", round),
            )?;
            fs::write(
                dir.join("recipes/box.yaml"),
                recipe("{ container: { image: tc } }", round),
            )?;
            let (_, j) = timed(&dir, &["build", "--jobs", "1", "--executor", executor])?;
            let n = j["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == *name))
                .ok_or("no such node")?;
            if n["status"] != "built" {
                return Err(format!("`{name}` was not built: {n}").into());
            }
            times.push(n["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0);
        }
        results.push((*label, times));
    }
    std::env::remove_var("CASCADE_SANDBOX");
    let floor = results[0].1[1..].iter().sum::<f64>() / 3.0;
    println!("| {steps} steps | first build | rebuilds (mean of 3) | per step, over no sandbox |");
    println!("|---|---|---|---|");
    for (label, times) in &results {
        let mean = times[1..].iter().sum::<f64>() / 3.0;
        println!(
            "| {label} | {:.3} s | {mean:.3} s | +{:.1} ms |",
            times[0],
            (mean - floor) / steps as f64 * 1000.0
        );
    }
    if !docker {
        println!("(no Docker Engine answered: the Docker row is left out)");
    }
    let _ = fs::remove_dir_all(base);
    Ok(())
}
