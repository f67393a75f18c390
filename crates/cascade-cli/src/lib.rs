//! cascade-cli: the command line. Parses arguments (clap), calls an operation of the
//! `cascade` crate, renders what happened (text on stderr, or one JSON document on
//! stdout with `--json`), and turns it into an exit code from the one table,
//! `cascade::ExitCode` (docs/exit-codes.md).

mod columns;
mod deploy;
mod explain;
mod lock;
mod progress;
mod release;
mod sign;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use cascade::{BuildOptions, BuildReport, Event, ExitCode, NodeReport, NodeStatus, PlanOptions};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cascade",
    version,
    about = "A content-addressed build graph over many git repositories"
)]
struct Cli {
    /// The project directory (holding `graph/` and `recipes/`).
    #[arg(long, global = true, default_value = ".", value_name = "DIR")]
    project: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an environment: resolve, build what changed, write a lockfile.
    Build(BuildArgs),
    /// Show what a build would do and why, without running a step.
    Plan(PlanArgs),
    /// Explain why one component would rebuild, down to the root cause.
    Why(WhyArgs),
    /// Print the graph of an environment, with each node's plan state.
    Graph(GraphArgs),
    /// Work with the images cascade built.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Work with lockfiles.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Pin an environment to what another environment's lockfile built.
    Promote(lock::PromoteArgs),
    /// Release trains: versions from conventional commits, tagged in every repository.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Build an environment's previous lockfile again and make it the newest; with
    /// --deploy, deploy the previously deployed lockfile instead.
    Rollback(RollbackArgs),
    /// Run an environment's lockfile on the Docker Engine, with health checks and
    /// automatic rollback.
    Deploy(deploy::DeployArgs),
    /// What runs for an environment, how healthy, from which lockfile.
    Status(deploy::StatusArgs),
    /// Remove from the store what the newest lockfiles of every environment do not need.
    Gc(GcArgs),
    /// Inspect and check the store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Write a signing key pair (`cascade.key`, mode 0600, and `cascade.pub`).
    Keygen(sign::KeygenArgs),
    /// Check an image's signatures, those of every image a lockfile names, or a release
    /// bundle's signed checksums.
    Verify(sign::VerifyArgs),
    /// Write a lockfile's release: its artifacts, image manifests and SPDX SBOMs, with
    /// `SHA256SUMS` and, with a key, its detached signature `SHA256SUMS.asc`.
    ReleaseBundle(sign::BundleArgs),
    /// Run Actions for a REAPI engine that hands out work through the Remote Workers
    /// API (BuildGrid's bots), in cascade's sandbox: cascade's Actions or anyone's.
    Worker(WorkerArgs),
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The engine: `grpc://HOST:PORT[/INSTANCE]` (`grpcs://` for TLS; a bearer token
    /// from CASCADE_REMOTE_TOKEN).
    #[arg(long, env = "CASCADE_REMOTE", value_name = "URL")]
    server: String,
    /// How many Actions run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    capacity: u32,
    /// The worker's store: runner images and work directories [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// The bot's name, unique on the engine [default: cascade-<host>-<pid>].
    #[arg(long)]
    name: Option<String>,
    /// Stop after this many Actions.
    #[arg(long, value_name = "N")]
    max_actions: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Entries and bytes per kind, and the hit rate of the last builds.
    Stats(StoreArgs),
    /// Re-hash every entry; exit 1 and list the corrupt ones.
    Verify(VerifyArgs),
    /// The same as `cascade gc`.
    Gc(GcArgs),
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    common: StoreArgs,
    /// Remove the corrupt entries (they are rebuilt or fetched when next needed).
    #[arg(long)]
    repair: bool,
}

#[derive(clap::Args, Debug)]
struct GcArgs {
    /// How many of each environment's newest lockfiles stay reproducible from the store.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    keep: u32,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Also delete the entries of this remote cache (`oci://host/repo`) that no kept
    /// lockfile references. Never taken from CASCADE_REMOTE_CACHE: deleting is asked for.
    #[arg(long, value_name = "URL")]
    remote_cache: Option<String>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RollbackArgs {
    #[command(flatten)]
    common: EnvArgs,
    /// Roll back to this lockfile instead of the previous one.
    #[arg(long, value_name = "LOCKFILE")]
    to: Option<PathBuf>,
    /// Load the images into the local Docker Engine.
    #[arg(long)]
    load: bool,
    /// Push the images to the registries the lockfile names (they are re-tagged there).
    #[arg(long)]
    push: bool,
    /// How many nodes build at once [default: the number of CPUs].
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Redeploy the previously deployed lockfile (`deployments/<ENV>.yaml`) instead of
    /// building.
    #[arg(long, conflicts_with_all = ["to", "load", "push", "jobs"])]
    deploy: bool,
    /// With --deploy: do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, requires = "deploy")]
    yes: bool,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Write a component's image, as a lockfile records it, to an OCI archive (for
    /// `docker load -i` or `skopeo copy oci-archive:…`).
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// The component whose image to export.
    #[arg(value_name = "NODE")]
    node: String,
    #[command(flatten)]
    common: EnvArgs,
    /// The lockfile to take the image from [default: the environment's newest].
    #[arg(long, value_name = "LOCKFILE")]
    lock: Option<PathBuf>,
    /// Where to write the archive.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
}

/// What every command that reads an environment takes.
#[derive(clap::Args, Debug)]
struct EnvArgs {
    /// The environment (`graph/environments/<ENV>.yaml`).
    #[arg(long, value_name = "ENV")]
    env: String,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// The environment (`graph/environments/<ENV>.yaml`); with --lock, the lockfile's.
    #[arg(long, value_name = "ENV", required_unless_present = "lock")]
    env: Option<String>,
    /// The store directory [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Build exactly what this lockfile pins (commits, trees, recipes), not the manifests.
    #[arg(long, value_name = "LOCKFILE", conflicts_with = "dry_run")]
    lock: Option<PathBuf>,
    /// With --lock: rebuild every node from scratch and compare every digest with the
    /// lockfile's, naming the files that differ.
    #[arg(long, requires = "lock")]
    check: bool,
    /// With --lock: write a new lockfile after the replay (by default none is written).
    #[arg(long, requires = "lock")]
    write_lock: bool,
    /// With --lock: a host tool that differs from the lockfile's is an error.
    #[arg(long, requires = "lock")]
    strict: bool,
    /// How many nodes build at once [default: the number of CPUs].
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Keep building what does not depend on a failed node.
    #[arg(long)]
    keep_going: bool,
    /// Run no step: print the plan instead (the same as `cascade plan`).
    #[arg(long)]
    dry_run: bool,
    /// Load every image into the local Docker Engine.
    #[arg(long)]
    load: bool,
    /// Push every image to the environment's registry (after its smoke tests passed).
    #[arg(long)]
    push: bool,
    /// Do not run the smoke tests; the lockfile records them as skipped.
    #[arg(long)]
    skip_tests: bool,
    /// With --push: sign each pushed image with this secret key (a file, or `env:VAR`
    /// for a variable holding it) [default: the environment's `sign:`].
    #[arg(long, value_name = "KEY", requires = "push", value_parser = parse_key_location)]
    sign: Option<cascade::KeyLocation>,
    /// Share results through an OCI registry: `oci://host[:port]/repository`
    /// [default: the environment's `remote_cache:`].
    #[arg(long, env = "CASCADE_REMOTE_CACHE", value_name = "URL")]
    remote_cache: Option<String>,
    /// A REAPI engine as the shared cache: `grpc://HOST:PORT[/INSTANCE]` (`grpcs://`
    /// for TLS; a bearer token from CASCADE_REMOTE_TOKEN). Wins over --remote-cache.
    #[arg(long, env = "CASCADE_REMOTE", value_name = "URL")]
    remote: Option<String>,
    /// With --remote: run the nodes' Actions on the engine's workers.
    #[arg(long)]
    remote_exec: bool,
    /// Read, write or both (CI writes; laptops read).
    #[arg(long, value_enum, default_value = "read-write")]
    remote_cache_mode: RemoteModeArg,
    /// With --dry-run: compare with this lockfile instead of the newest.
    #[arg(long, value_name = "LOCKFILE", requires = "dry_run")]
    against: Option<PathBuf>,
    /// Where container steps and smoke tests run: `sandbox` (cascade's own Linux
    /// namespaces, no daemon) or `docker`. Host steps always run in the sandbox.
    #[arg(long, env = "CASCADE_EXECUTOR", value_enum, default_value = "sandbox")]
    executor: ExecutorArg,
    /// Where steps' work directories go: a directory, or `store` for the store's disk.
    /// Default: /dev/shm when it is a tmpfs with 4 GiB free, else the store's disk.
    #[arg(long, env = "CASCADE_WORK_DIR", value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

pub(crate) fn parse_key_location(s: &str) -> Result<cascade::KeyLocation, String> {
    cascade::KeyLocation::parse(s)
        .ok_or_else(|| "expected a key file's path or `env:VAR`".to_string())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ExecutorArg {
    Sandbox,
    Docker,
}

#[derive(clap::Args, Debug)]
struct PlanArgs {
    #[command(flatten)]
    common: EnvArgs,
    /// Compare with this lockfile instead of the environment's newest.
    #[arg(long, value_name = "LOCKFILE")]
    against: Option<PathBuf>,
    /// Look up what the local store lacks in this remote cache too (`grpc://…` or
    /// `oci://…`); such nodes are `remote`: a build downloads them and runs no step.
    #[arg(long, env = "CASCADE_REMOTE", value_name = "URL")]
    remote: Option<String>,
}

#[derive(clap::Args, Debug)]
struct WhyArgs {
    /// The component to explain.
    #[arg(value_name = "NODE")]
    node: String,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(clap::Args, Debug)]
struct GraphArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// `text`, or `dot` for Graphviz (`cascade graph --format dot | dot -Tsvg`).
    #[arg(long, value_enum, default_value = "text")]
    format: GraphFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RemoteModeArg {
    Read,
    Write,
    ReadWrite,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GraphFormat {
    Text,
    Dot,
}

/// Runs the command line on the real stdout/stderr and returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    install_panic_hook();
    install_signal_handler();
    let color = std::io::stderr().is_terminal();
    let code = run_with(args, &mut std::io::stdout(), &mut std::io::stderr(), color);
    // Interrupted: the signal thread is removing what runs and exits with 130 when it
    // is done; the build ending under it (its steps killed) must not exit first.
    if cascade_exec::interrupted() {
        loop {
            std::thread::park();
        }
    }
    code
}

/// Runs the command line with the given output streams (tests run it in-process).
pub fn run_with<I, T>(
    args: I,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
    color: bool,
) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                ExitCode::BadInput
            } else {
                ExitCode::Ok
            };
            let text = if color {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            if e.use_stderr() {
                let _ = write!(err, "{text}");
            } else {
                let _ = write!(out, "{text}");
            }
            return code.code();
        }
    };
    let io = Io {
        out,
        err: Mutex::new(err),
        color,
    };
    let code = match cli.command {
        Command::Build(args) if args.dry_run => {
            let plan = PlanArgs {
                common: EnvArgs {
                    env: args.env.unwrap_or_default(),
                    store: args.store,
                    json: args.json,
                },
                against: args.against,
                remote: args.remote.or(args.remote_cache),
            };
            explain(&cli.project, plan, io, Explain::Plan)
        }
        Command::Build(args) => build(&cli.project, args, io),
        Command::Plan(args) => explain(&cli.project, args, io, Explain::Plan),
        Command::Why(args) => explain(&cli.project, args.plan, io, Explain::Why(args.node)),
        Command::Graph(args) => explain(&cli.project, args.plan, io, Explain::Graph(args.format)),
        Command::Image(ImageCommand::Export(args)) => export(&cli.project, args, io),
        Command::Lock(cmd) => lock::lock(&cli.project, cmd, io),
        Command::Promote(args) => lock::promote(&cli.project, args, io),
        Command::Release(cmd) => release::release(&cli.project, cmd, io),
        Command::Rollback(args) if args.deploy => deploy::rollback(
            &cli.project,
            args.common.env,
            args.common.store,
            args.yes,
            args.common.json,
            io,
        ),
        Command::Rollback(args) => rollback(&cli.project, args, io),
        Command::Deploy(args) => deploy::deploy(&cli.project, args, io),
        Command::Status(args) => deploy::status(&cli.project, args, io),
        Command::Gc(args) | Command::Cache(CacheCommand::Gc(args)) => gc(&cli.project, args, io),
        Command::Cache(CacheCommand::Stats(args)) => cache_stats(&cli.project, args, io),
        Command::Cache(CacheCommand::Verify(args)) => cache_verify(&cli.project, args, io),
        Command::Worker(args) => worker(&cli.project, args, io),
        Command::Keygen(args) => sign::keygen(args, io),
        Command::Verify(args) => sign::verify(&cli.project, args, io),
        Command::ReleaseBundle(args) => sign::release_bundle(&cli.project, args, io),
    };
    code.code()
}

pub(crate) struct Io<'a> {
    out: &'a mut (dyn Write + Send),
    err: Mutex<&'a mut (dyn Write + Send)>,
    color: bool,
}

impl Io<'_> {
    fn err_line(&self, s: &str) {
        let mut e = self.err.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(e, "{s}");
    }

    fn json(&mut self, v: &impl serde::Serialize) {
        // Whole, in one write: stdout is line-buffered, and a big report has a line per
        // field.
        let mut text = serde_json::to_vec_pretty(v).unwrap_or_default();
        text.push(b'\n');
        let _ = self.out.write_all(&text);
        let _ = self.out.flush();
    }
}

/// On SIGINT/SIGTERM: start nothing more, kill the running steps (they are in their own
/// process groups, out of the terminal's reach), remove the containers (steps and smoke
/// tests) and exit 130. The store stays consistent: results are recorded only after a
/// node succeeds, by atomic renames.
fn install_signal_handler() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        let mut deferred = false;
        for sig in signals.forever() {
            // A deploy finishes its current container swap and rolls back first (see
            // cascade::deploy); a second signal does not wait.
            if !deferred && cascade::interrupt_deploy() {
                deferred = true;
                eprintln!("\ninterrupted (signal {sig}): finishing the current container swap, then rolling back (again to stop now)");
                continue;
            }
            cascade_exec::interrupt();
            cascade::cleanup_containers();
            eprintln!(
                "\ninterrupted (signal {sig}): running steps killed, containers removed, no lockfile written"
            );
            std::process::exit(ExitCode::Interrupted.code());
        }
    });
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            eprintln!(
                "error: this is a bug in cascade (exit code {}); please report it with the message above",
                ExitCode::Bug.code()
            );
        }));
    });
}

/// Renders a diagnostic as users see it: file, line, column, the value underlined.
/// Colour only on a terminal.
/// `cascade lock diff`'s text for `diff` (for the fuzz corpus replay, which must reach
/// the CLI's own rendering).
pub fn lock_diff_text(diff: &cascade::LockDiff) -> String {
    lock::diff_text("lock diff", diff)
}

pub fn render(diag: &dyn miette::Diagnostic, color: bool) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    if handler
        .render_report(&mut out, &columns::Columns::new(diag))
        .is_err()
    {
        out = format!("error: {diag}");
    }
    out
}

pub(crate) fn stamp_now() -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "00000000T000000Z".to_string())
}

pub(crate) fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn node_line(r: &NodeReport) -> String {
    let mut line = node_status_line(r);
    if let Some(i) = &r.image {
        line.push_str(&format!("\n           image {} {}", i.reference, i.digest));
    }
    for w in &r.warnings {
        line.push_str(&format!("\n           warning: {w}"));
    }
    line
}

fn node_status_line(r: &NodeReport) -> String {
    let version = format!("{} {}", r.version, &r.commit[..r.commit.len().min(7)]);
    match &r.status {
        NodeStatus::Cached if r.remote => {
            format!("  cached   {:<14} {version}  (remote cache)", r.name)
        }
        NodeStatus::Cached => format!("  cached   {:<14} {version}", r.name),
        NodeStatus::Built if r.remote_exec.is_some() => {
            let x = r.remote_exec.clone().unwrap_or_default();
            format!(
                "  built    {:<14} {version}  in {} on {}{} (upload {}, execute {}, download {})",
                r.name,
                secs(r.duration_ms),
                if x.worker.is_empty() {
                    "the engine"
                } else {
                    &x.worker
                },
                if x.engine_cached {
                    ", from the engine's cache"
                } else {
                    ""
                },
                secs(x.upload_ms),
                secs(x.execute_ms),
                secs(x.download_ms)
            )
        }
        NodeStatus::Built => format!(
            "  built    {:<14} {version}  in {}",
            r.name,
            secs(r.duration_ms)
        ),
        NodeStatus::Failed {
            error,
            log_tail,
            log_path,
            ..
        } => {
            let mut s = format!("  FAILED   {:<14} {version}  {error}", r.name);
            if !log_tail.is_empty() {
                s.push_str(&format!(
                    "\n           last {} lines of the log:",
                    log_tail.len()
                ));
                for l in log_tail {
                    s.push_str(&format!("\n           | {l}"));
                }
            }
            if let Some(p) = log_path {
                s.push_str(&format!("\n           full log: {}", p.display()));
            }
            s
        }
        NodeStatus::Skipped { because } => format!("  skipped  {:<14} {because}", r.name),
        NodeStatus::NotStarted => format!("  stopped  {:<14} not started after a failure", r.name),
    }
}

pub(crate) fn summary(r: &BuildReport) -> String {
    let mut s = format!(
        "built {}, cached {}, failed {}, skipped {} in {}",
        r.built,
        r.cached,
        r.failed,
        r.skipped,
        secs(r.duration_ms)
    );
    if let Some(rc) = &r.remote_cache {
        if rc.errors > 0 {
            // Loud, once: a misconfigured cache must not go unnoticed.
            s.push_str(&format!(
                "\nremote cache: {} error{}, {} hit{} — check the remote ({})",
                rc.errors,
                if rc.errors == 1 { "" } else { "s" },
                rc.hits,
                if rc.hits == 1 { "" } else { "s" },
                rc.url
            ));
        } else {
            s.push_str(&format!(
                "\nremote cache: {} hit{}, {} miss{}, {} upload{}",
                rc.hits,
                if rc.hits == 1 { "" } else { "s" },
                rc.misses,
                if rc.misses == 1 { "" } else { "es" },
                rc.uploads,
                if rc.uploads == 1 { "" } else { "s" }
            ));
        }
        for p in &rc.problems {
            s.push_str(&format!("\n  {p}"));
        }
    }
    if let Some(replay) = &r.replay {
        let what = if replay.check { "checked" } else { "replayed" };
        let n = replay.mismatches.len();
        s.push_str(&format!(
            "\n{what} {}: {}",
            replay.lockfile.display(),
            match n {
                0 if r.success() => "every digest reproduced".to_string(),
                0 => "the build did not finish".to_string(),
                n => format!("{n} digest{} differ", if n == 1 { "" } else { "s" }),
            }
        ));
        if !replay.risks.is_empty() {
            s.push_str(&format!(
                "\n{} node(s) built with other tools than the lockfile's (see the warnings)",
                replay.risks.len()
            ));
        }
    }
    match (&r.lockfile, &r.replay) {
        (Some(l), _) => s.push_str(&format!("\nlockfile: {}", l.display())),
        (None, Some(_)) if r.success() => {
            s.push_str("\nno new lockfile written (--write-lock writes one)")
        }
        (None, _) => s.push_str("\nno lockfile written: the build did not succeed"),
    }
    s
}

fn store_dir(project: &std::path::Path, args: &EnvArgs) -> PathBuf {
    default_store(project, args.store.as_ref())
}

pub(crate) fn default_store(project: &std::path::Path, store: Option<&PathBuf>) -> PathBuf {
    cascade::Layout::new(project).store(store.map(PathBuf::as_path))
}

/// `cascade rollback`: the previous lockfile (or `--to`), replayed, written as the
/// newest, so the environment's history says what is current.
fn rollback(project: &std::path::Path, args: RollbackArgs, mut io: Io<'_>) -> ExitCode {
    let env = args.common.env.clone();
    let target = match args.to.clone() {
        Some(t) => t,
        None => match cascade::previous_lockfile(project, &env) {
            Some((newest, previous)) => {
                io.err_line(&format!(
                    "rolling back `{env}` from {} to {}",
                    shown(project, &newest),
                    shown(project, &previous)
                ));
                previous
            }
            None => {
                let e = cascade::Error::NoPrevious { env };
                let color = io.color && !args.common.json;
                return fail(&mut io, &e, args.common.json, color);
            }
        },
    };
    let build_args = BuildArgs {
        env: Some(args.common.env),
        store: args.common.store,
        json: args.common.json,
        lock: Some(target),
        check: false,
        write_lock: true,
        strict: false,
        jobs: args.jobs,
        keep_going: false,
        dry_run: false,
        load: args.load,
        push: args.push,
        skip_tests: true,
        against: None,
        remote_cache: None,
        remote: None,
        remote_exec: false,
        remote_cache_mode: RemoteModeArg::ReadWrite,
        // A rollback runs what the lockfile recorded, wherever it runs here.
        executor: match std::env::var("CASCADE_EXECUTOR").as_deref() {
            Ok("docker") => ExecutorArg::Docker,
            _ => ExecutorArg::Sandbox,
        },
        work_dir: std::env::var_os("CASCADE_WORK_DIR").map(PathBuf::from),
        sign: None,
    };
    build(project, build_args, io)
}

fn worker(project: &std::path::Path, args: WorkerArgs, mut io: Io<'_>) -> ExitCode {
    let opts = cascade::WorkerOptions {
        server: args.server.clone(),
        capacity: args.capacity as usize,
        store: default_store(project, args.store.as_ref()),
        name: args.name.clone(),
        tools_path: std::env::var_os("PATH").unwrap_or_default(),
        max_leases: args.max_actions,
    };
    let color = io.color;
    let result = {
        let on_event = |e: cascade::WorkerEvent<'_>| {
            io.err_line(&match e {
                cascade::WorkerEvent::Connected { session, name } => {
                    format!("worker {name}: connected to {} ({session})", args.server)
                }
                cascade::WorkerEvent::Started { lease, action } => {
                    format!("  started  {lease}  action {action}")
                }
                cascade::WorkerEvent::Finished {
                    lease,
                    exit_code,
                    status,
                    ms,
                } => format!(
                    "  finished {lease}  exit {exit_code}{}  in {}",
                    if status == 0 {
                        String::new()
                    } else {
                        format!(", status {status}")
                    },
                    secs(ms)
                ),
                cascade::WorkerEvent::Cancelled { lease } => format!("  cancelled {lease}"),
                cascade::WorkerEvent::Lost { error } => {
                    format!("worker: the engine is unreachable, retrying: {error}")
                }
            })
        };
        cascade::worker(&opts, &on_event)
    };
    match result {
        Ok(()) => ExitCode::Ok,
        Err(e) => fail(&mut io, &e, false, color),
    }
}

fn gc(project: &std::path::Path, args: GcArgs, mut io: Io<'_>) -> ExitCode {
    let color = io.color && !args.json;
    let opts = cascade::GcOptions {
        project: project.to_path_buf(),
        store: default_store(project, args.store.as_ref()),
        keep: args.keep as usize,
        dry_run: args.dry_run,
        remote: args.remote_cache.clone(),
    };
    match cascade::gc(&opts) {
        Ok(r) if args.json => json_ok(&mut io, &r),
        Ok(r) => {
            let verb = if r.dry_run { "would remove" } else { "removed" };
            io.err_line(&format!(
                "kept the closure of {} lockfile{}; {verb} {} entr{} ({})",
                r.roots.len(),
                if r.roots.len() == 1 { "" } else { "s" },
                r.report.removed_entries(),
                if r.report.removed_entries() == 1 {
                    "y"
                } else {
                    "ies"
                },
                bytes(r.report.freed_bytes())
            ));
            for (kind, (n, b)) in &r.report.removed {
                io.err_line(&format!("  {kind:<8} {n} ({})", bytes(*b)));
            }
            if let Some(rc) = &r.remote {
                io.err_line(&format!(
                    "remote cache {}: kept {} entr{}; {verb} {}",
                    rc.url,
                    rc.kept,
                    if rc.kept == 1 { "y" } else { "ies" },
                    rc.removed
                ));
            }
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

fn cache_stats(project: &std::path::Path, args: StoreArgs, mut io: Io<'_>) -> ExitCode {
    let color = io.color && !args.json;
    match cascade::cache_stats(&default_store(project, args.store.as_ref())) {
        Ok(s) if args.json => json_ok(&mut io, &s),
        Ok(s) => {
            let mut out = format!("store {}", s.store.display());
            for (kind, c) in &s.entries {
                out.push_str(&format!(
                    "\n  {kind:<8} {:>8} entries  {:>10}",
                    c.entries,
                    bytes(c.bytes)
                ));
            }
            match s.hit_rate {
                Some(r) => out.push_str(&format!(
                    "\nhit rate of the last {} build{}: {:.0}% ({} from the remote cache)",
                    s.builds.len(),
                    if s.builds.len() == 1 { "" } else { "s" },
                    r * 100.0,
                    s.builds.iter().map(|b| b.remote_hits).sum::<usize>()
                )),
                None => out.push_str("\nno build recorded on this store yet"),
            }
            let _ = writeln!(io.out, "{out}");
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

fn cache_verify(project: &std::path::Path, args: VerifyArgs, mut io: Io<'_>) -> ExitCode {
    let json = args.common.json;
    let color = io.color && !json;
    match cascade::cache_verify(
        &default_store(project, args.common.store.as_ref()),
        args.repair,
    ) {
        Ok(v) => {
            if json {
                io.json(&v);
            } else {
                let total: usize = v.checked.values().sum();
                let mut out = format!("checked {total} entries: {} corrupt", v.corrupt.len());
                for c in &v.corrupt {
                    out.push_str(&format!(
                        "\n  {:<8} {}{}",
                        c.kind,
                        c.path.display(),
                        if c.removed { " (removed)" } else { "" }
                    ));
                }
                if !v.corrupt.is_empty() && !args.repair {
                    out.push_str("\n--repair removes them; they are rebuilt when next needed");
                }
                let _ = writeln!(io.out, "{out}");
            }
            // Corruption found is a failure, even when repaired: something broke it.
            if v.corrupt.is_empty() {
                ExitCode::Ok
            } else {
                ExitCode::Failed
            }
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

fn shown(project: &std::path::Path, p: &std::path::Path) -> String {
    p.strip_prefix(project).unwrap_or(p).display().to_string()
}

fn build(project: &std::path::Path, args: BuildArgs, mut io: Io<'_>) -> ExitCode {
    let json = args.json;
    let color = io.color && !json;
    let opts = build_options(project, &args);
    let result = {
        // A live bar only where a person watches: stderr is a terminal (`color`) and
        // stdout is not a JSON document being produced.
        let progress = progress::Progress::new(&io.err, color);
        let r = cascade::build(&opts, &|e: Event<'_>| progress.event(e));
        progress.finish();
        r
    };
    match result {
        Ok(report) => {
            release::hook_warnings(&io, &report.notifications);
            if json {
                io.json(&report);
            } else {
                io.err_line(&summary(&report));
            }
            let code = report.exit_code();
            // The process ends now (see `BuildOptions::exiting`).
            std::mem::forget(report);
            code
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

/// What `cascade build` does with these arguments.
fn build_options(project: &std::path::Path, args: &BuildArgs) -> BuildOptions {
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    BuildOptions {
        sign: args.sign.clone(),
        exiting: true,
        work_dir: args.work_dir.clone(),
        executor: match args.executor {
            ExecutorArg::Sandbox => cascade::ExecutorKind::Sandbox,
            ExecutorArg::Docker => cascade::ExecutorKind::Docker,
        },
        project: project.to_path_buf(),
        env: args.env.clone().unwrap_or_default(),
        store: default_store(project, args.store.as_ref()),
        jobs,
        keep_going: args.keep_going,
        stamp: stamp_now(),
        tools: cascade_exec::Tools::from_env(),
        publish: cascade::PublishOptions {
            load: args.load,
            push: args.push,
            skip_tests: args.skip_tests,
        },
        replay: cascade::ReplayOptions {
            lock: args.lock.clone(),
            check: args.check,
            write_lock: args.write_lock,
            strict: args.strict,
        },
        remote: cascade::RemoteOptions {
            url: args
                .remote
                .clone()
                .filter(|u| !u.is_empty())
                .or_else(|| args.remote_cache.clone()),
            mode: match args.remote_cache_mode {
                RemoteModeArg::Read => cascade::RemoteMode::Read,
                RemoteModeArg::Write => cascade::RemoteMode::Write,
                RemoteModeArg::ReadWrite => cascade::RemoteMode::ReadWrite,
            },
            exec: args.remote_exec,
        },
    }
}

/// `verify --rebuild`: `build --lock LOCKFILE --check` on `store`, its report and
/// progress as `build` shows them.
pub(crate) fn rebuild_check(
    project: &std::path::Path,
    lockfile: &std::path::Path,
    store: &std::path::Path,
    io: &Io<'_>,
    color: bool,
) -> Result<cascade::BuildReport, cascade::Error> {
    // `--opt=value`, so a path that starts with `-` is still a value.
    let with = |opt: &str, p: &std::path::Path| {
        let mut o = std::ffi::OsString::from(opt);
        o.push(p.as_os_str());
        o
    };
    let argv = [
        "cascade".into(),
        "build".into(),
        with("--lock=", lockfile),
        "--check".into(),
        with("--store=", store),
    ];
    let args = match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Build(args),
            ..
        }) => args,
        // These arguments are ours and always parse; a bug otherwise.
        other => unreachable!("`build --lock --check` did not parse: {other:?}"),
    };
    let opts = build_options(project, &args);
    let progress = progress::Progress::new(&io.err, color);
    let r = cascade::build(&opts, &|e: Event<'_>| progress.event(e));
    progress.finish();
    r
}

/// Renders an operation's error (and its JSON form with `--json`); returns its exit code.
pub(crate) fn fail(io: &mut Io<'_>, e: &cascade::Error, json: bool, color: bool) -> ExitCode {
    io.err_line(render(e, color).trim_end());
    let code = e.exit_code();
    if json {
        io.json(&serde_json::json!({
            "error": {
                "message": e.to_string(),
                "code": miette::Diagnostic::code(e).map(|c| c.to_string()),
                "exit_code": code.code(),
            }
        }));
    }
    code
}

fn export(project: &std::path::Path, args: ExportArgs, mut io: Io<'_>) -> ExitCode {
    let json = args.common.json;
    let color = io.color && !json;
    let store = store_dir(project, &args.common);
    match cascade::export_image(
        project,
        &args.common.env,
        &store,
        &args.node,
        args.lock.as_deref(),
        &args.output,
    ) {
        Ok(image) => {
            if json {
                io.json(&serde_json::json!({
                    "ref": image.reference,
                    "digest": image.digest.to_string(),
                    "archive": args.output,
                }));
            } else {
                io.err_line(&format!(
                    "wrote {} ({}) to {}",
                    image.reference,
                    image.digest,
                    args.output.display()
                ));
            }
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

enum Explain {
    Plan,
    Why(String),
    Graph(GraphFormat),
}

/// `plan`, `why` and `graph`: one plan, rendered three ways. Exit 0 whatever the plan
/// says: it is a report, not a check.
fn explain(project: &std::path::Path, args: PlanArgs, mut io: Io<'_>, what: Explain) -> ExitCode {
    let json = args.common.json;
    let color = io.color && !json;
    let opts = PlanOptions {
        project: project.to_path_buf(),
        env: args.common.env.clone(),
        store: store_dir(project, &args.common),
        tools: cascade_exec::Tools::from_env(),
        against: args.against,
        remote: args.remote.filter(|u| !u.is_empty()),
    };
    let plan = match cascade::plan(&opts) {
        Ok(p) => p,
        Err(e) => return fail(&mut io, &e, json, color),
    };
    let text = match what {
        Explain::Plan if json => return json_ok(&mut io, &plan),
        Explain::Plan => explain::plan_text(&plan),
        Explain::Why(name) => {
            let Some(why) = plan.why(&name) else {
                let names = plan.nodes.iter().map(|n| n.name.as_str());
                let e = cascade::Error::UnknownComponent {
                    help: match closest(&name, names) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("`cascade graph --env {}` lists them", plan.environment),
                    },
                    name,
                    env: plan.environment.clone(),
                };
                return fail(&mut io, &e, json, color);
            };
            if json {
                return json_ok(&mut io, &why);
            }
            explain::why_text(&why, &plan)
        }
        Explain::Graph(_) if json => return json_ok(&mut io, &plan),
        Explain::Graph(GraphFormat::Text) => explain::graph_text(&plan),
        Explain::Graph(GraphFormat::Dot) => explain::graph_dot(&plan),
    };
    let _ = writeln!(io.out, "{text}");
    ExitCode::Ok
}

fn json_ok(io: &mut Io<'_>, v: &impl serde::Serialize) -> ExitCode {
    io.json(v);
    ExitCode::Ok
}

/// The most similar name, if any is similar enough to be a likely typo.
fn closest<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (strsim::damerau_levenshtein(name, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min()
        .map(|(_, n)| n)
}
