//! `cargo xtask bench --peers`: the same lattice built by cascade, ninja and make, side by
//! side in one run. `layers` × 100 packages, each taking two packages of the layer below
//! as inputs, one `cat … | cksum` step each. Timed: a cold build, a no-op, and a change
//! to one package of the bottom layer (which invalidates it and everything above it that
//! reaches it: 55 packages in 10 layers); the no-op and the change five times each up to
//! 2,000 nodes, each peer in turn, medians shown.
//!
//! ninja and make see a work tree (`pkgs/<p>/src.txt`, outputs `out/<p>`) and judge by
//! mtimes; cascade sees the same files as one git repository with a directory per
//! package (`dir:`), keys by content and runs each step in its sandbox. ninja is
//! installed (Debian's `ninja-build`) when it is missing.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::bench::{commit_dirs, hashing_recipe, timed_process, Result};

const WIDTH: usize = 100;

fn name(layer: usize, k: usize) -> String {
    format!("p{layer:03}x{k:03}")
}

/// The inputs of package `k` of `layer`: two of the layer below.
fn inputs(layer: usize, k: usize) -> Vec<String> {
    if layer == 0 {
        return Vec::new();
    }
    vec![name(layer - 1, k), name(layer - 1, (k + 1) % WIDTH)]
}

/// The source of a package: `variant` 0 is the original, each other one a change.
fn source(layer: usize, k: usize, variant: usize) -> String {
    match variant {
        0 => format!("{}\n", name(layer, k)),
        v => format!("{} changed {v}\n", name(layer, k)),
    }
}

/// The work tree (for ninja and make), its build files, and the cascade project over a
/// repository of the same files.
pub(crate) fn generate(dir: &Path, layers: usize) -> Result<()> {
    let tree = dir.join("tree");
    // ninja's own output directory: `cat … > out/p` needs it before the first step.
    fs::create_dir_all(tree.join("out"))?;
    let mut ninja = String::from("rule step\n  command = cat $in | cksum > $out\n");
    let mut make = String::from(".PHONY: all\n");
    let mut all = Vec::new();
    for layer in 0..layers {
        for k in 0..WIDTH {
            let p = name(layer, k);
            let src = tree.join("pkgs").join(&p);
            fs::create_dir_all(&src)?;
            fs::write(src.join("src.txt"), source(layer, k, 0))?;
            let ins: Vec<String> = inputs(layer, k)
                .into_iter()
                .map(|i| format!("out/{i}"))
                .collect();
            writeln!(
                ninja,
                "build out/{p}: step pkgs/{p}/src.txt {}",
                ins.join(" ")
            )?;
            writeln!(
                make,
                "out/{p}: pkgs/{p}/src.txt {}\n\t@mkdir -p out && cat $^ | cksum > $@",
                ins.join(" ")
            )?;
            all.push(format!("out/{p}"));
        }
    }
    make = format!("all: {}\n{make}", all.join(" "));
    fs::write(tree.join("build.ninja"), ninja)?;
    fs::write(tree.join("Makefile"), make)?;

    // cascade: one repository, a directory per package, the same files.
    let project = dir.join("cascade");
    fs::create_dir_all(project.join("graph/environments"))?;
    fs::create_dir_all(project.join("recipes"))?;
    let repo = git2::Repository::init_bare(project.join("repo"))?;
    commit(&repo, layers, None)?;
    let mut env = String::from("name: bench\nmode: branch\nsources:\n");
    for layer in 0..layers {
        for k in 0..WIDTH {
            let p = name(layer, k);
            writeln!(env, "  {p}: {{ repo: ../../repo, ref: main, dir: {p} }}")?;
            let recipe = hashing_recipe(&inputs(layer, k), "src.txt");
            fs::write(project.join("recipes").join(format!("{p}.yaml")), recipe)?;
        }
    }
    fs::write(project.join("graph/environments/bench.yaml"), env)?;
    Ok(())
}

/// A commit on `main` of the packages' tree; `changed` (a package and a variant) gets
/// other source.
fn commit(
    repo: &git2::Repository,
    layers: usize,
    changed: Option<((usize, usize), usize)>,
) -> Result<()> {
    let seconds = match changed {
        Some((_, variant)) => 1_767_225_600 + 3_600 * variant as i64,
        None => 1_767_225_600,
    };
    let sig = git2::Signature::new("bench", "bench@example.com", &git2::Time::new(seconds, 0))?;
    let dirs = (0..layers).flat_map(|layer| {
        (0..WIDTH).map(move |k| {
            (
                name(layer, k),
                source(
                    layer,
                    k,
                    match changed {
                        Some((at, variant)) if at == (layer, k) => variant,
                        _ => 0,
                    },
                ),
            )
        })
    });
    commit_dirs(repo, &sig, "src.txt", dirs)
}

/// Runs a peer in its work tree and times it.
fn peer(tree: &Path, program: &str, args: &[&str]) -> Result<f64> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .current_dir(tree)
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(secs)
}

fn ninja_available() -> Result<()> {
    if Command::new("ninja").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("bench: installing ninja-build");
    let sudo = if unsafe { libc::geteuid() } == 0 {
        vec![]
    } else {
        vec!["sudo"]
    };
    let run = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.clone();
        all.extend(args);
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            return Err(format!("`{}` failed", all.join(" ")).into());
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    run(&["apt-get", "install", "-y", "-qq", "ninja-build"])
}

struct Row {
    cold: [f64; 3],
    noop: [f64; 3],
    leaf: [f64; 3],
    rebuilt: u64,
    /// cascade's peak RSS (bytes) in the cold, no-op and changed builds.
    rss: [u64; 3],
    /// How many times the no-op and the change were measured (the medians are shown).
    rounds: usize,
}

/// Rounds of the no-op and the change at up to 2,000 nodes.
const ROUNDS: usize = 5;

fn measure(bin: &Path, dir: &Path, layers: usize, jobs: usize) -> Result<Row> {
    generate(dir, layers)?;
    let project = dir.join("cascade");
    let j = jobs.to_string();
    let n = (layers * WIDTH) as u64;
    // A package of the bottom layer, and how many it invalidates: itself and, in each
    // layer above, one more than in the layer below, up to the width.
    let leaf = (0, WIDTH / 2);
    let expected: u64 = (0..layers).map(|l| (l + 1).min(WIDTH) as u64).sum();
    let change = |tree: &Path, variant: usize| {
        fs::write(
            tree.join("pkgs").join(name(leaf.0, leaf.1)).join("src.txt"),
            source(leaf.0, leaf.1, variant),
        )
    };
    // This machine's timings move by tens of percent from one run to the next: the
    // no-op and the change are measured `rounds` times, each peer in turn, and the
    // medians reported (one round at 10,000 nodes, where a change takes seconds).
    let rounds = if n <= 2_000 { ROUNDS } else { 1 };

    // Each peer in a work tree of its own.
    let peers = [
        ("ninja", vec!["-j", j.as_str()]),
        ("make", vec!["-s", "-j", j.as_str()]),
    ];
    let trees: Vec<_> = peers
        .iter()
        .map(|(program, _)| dir.join(format!("tree-{program}")))
        .collect();
    for tree in &trees {
        copy_tree(&dir.join("tree"), tree)?;
    }
    let mut rss = [0u64; 3];
    let mut cascade = |what: usize| -> Result<(f64, u64)> {
        let (secs, report, peak) = timed_process(bin, &project, &["build", "--jobs", &j])?;
        rss[what] = rss[what].max(peak);
        let built = report["built"].as_u64().unwrap_or(0);
        match what {
            0 if built != n => Err(format!("cascade cold built {built} of {n}").into()),
            1 if built != 0 => Err(format!("cascade no-op built {built}").into()),
            2 if built != expected => {
                Err(format!("cascade rebuilt {built} after one change; expected {expected}").into())
            }
            _ => Ok((secs, built)),
        }
    };
    let repo = git2::Repository::open_bare(project.join("repo"))?;
    // times[figure][who]: ninja, make, cascade.
    let mut times: [[Vec<f64>; 3]; 3] = Default::default();
    for (figure, samples) in times.iter_mut().enumerate() {
        let rounds = if figure == 0 { 1 } else { rounds };
        for round in 1..=rounds {
            for (i, (program, args)) in peers.iter().enumerate() {
                if figure == 2 {
                    change(&trees[i], round)?;
                }
                samples[i].push(peer(&trees[i], program, args)?);
            }
            if figure == 2 {
                commit(&repo, layers, Some((leaf, round)))?;
            }
            samples[2].push(cascade(figure)?.0);
        }
    }
    let medians = |figure: usize| -> [f64; 3] {
        let mut out = [0.0; 3];
        for (who, t) in times[figure].iter().enumerate() {
            let mut t = t.clone();
            t.sort_by(f64::total_cmp);
            out[who] = t.get(t.len() / 2).copied().unwrap_or(f64::NAN);
        }
        out
    };
    Ok(Row {
        cold: medians(0),
        noop: medians(1),
        leaf: medians(2),
        rebuilt: expected,
        rss,
        rounds,
    })
}

/// Copies the generated work tree (files and directories only).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn secs(t: f64) -> String {
    if t < 1.0 {
        format!("{:.1} ms", t * 1000.0)
    } else {
        format!("{t:.2} s")
    }
}

pub fn run(base: &Path, sizes: &[usize], jobs: usize, keep: bool) -> Result<()> {
    ninja_available()?;
    let bin = crate::remote_exec::cascade_bin(&crate::workspace_root())?;
    println!("| figure | ninja | make | cascade | cascade ÷ ninja | target |");
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        let layers = (n / WIDTH).max(1);
        let dir = base.join(format!("peers-{n}"));
        let _ = fs::remove_dir_all(&dir);
        let row = measure(&bin, &dir, layers, jobs)?;
        let nodes = layers * WIDTH;
        let line = |what: String, t: [f64; 3], target: &str| {
            println!(
                "| {what} | {} | {} | {} | {:.2}× | {target} |",
                secs(t[0]),
                secs(t[1]),
                secs(t[2]),
                t[2] / t[0]
            );
        };
        line(format!("cold, {nodes}"), row.cold, "≤ 1.5×");
        let of = match row.rounds {
            1 => String::new(),
            r => format!(", median of {r}"),
        };
        line(format!("no-op, {nodes}{of}"), row.noop, "≤ 3×");
        line(
            format!("one leaf changed ({} rebuilt), {nodes}{of}", row.rebuilt),
            row.leaf,
            "≤ 1.5×",
        );
        let mb = |b: u64| format!("{:.0} MB", b as f64 / 1e6);
        println!(
            "| peak RSS of cascade, {nodes}: cold {}, no-op {}, changed {} | | | | | ≤ 200 MB at 10,000 |",
            mb(row.rss[0]),
            mb(row.rss[1]),
            mb(row.rss[2])
        );
        if !keep {
            let _ = fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}
