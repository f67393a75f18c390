//! `cascade deploy`, `cascade status` and `cascade rollback --deploy`: the plan on stdout,
//! progress on stderr, or one JSON document with `--json`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use cascade::{
    DeployAction, DeployChange, DeployEvent, DeployOptions, DeployOutcome, DeployReport, ExitCode,
    StatusReport,
};

use crate::{default_store, fail, secs, stamp_now, Io};

#[derive(clap::Args, Debug)]
pub(crate) struct DeployArgs {
    /// The environment (`graph/environments/<ENV>.yaml`, with a `deploy:` section).
    #[arg(long, value_name = "ENV")]
    env: String,
    /// The lockfile to deploy [default: the environment's newest].
    #[arg(long, value_name = "LOCKFILE")]
    lock: Option<PathBuf>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// After a failed health check, leave the failed state running (for debugging).
    #[arg(long)]
    no_rollback: bool,
    /// The store directory, where the images are [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// The environment.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn deploy(project: &Path, args: DeployArgs, io: Io<'_>) -> ExitCode {
    let opts = DeployOptions {
        project: project.to_path_buf(),
        env: args.env,
        store: default_store(project, args.store.as_ref()),
        lock: args.lock,
        action: DeployAction::Deploy,
        dry_run: args.dry_run,
        no_rollback: args.no_rollback,
        stamp: stamp_now(),
    };
    run(io, args.json, |on| cascade::deploy(&opts, on))
}

/// `cascade rollback --env E --deploy [--yes]`.
pub(crate) fn rollback(
    project: &Path,
    env: String,
    store: Option<PathBuf>,
    yes: bool,
    json: bool,
    mut io: Io<'_>,
) -> ExitCode {
    let color = io.color && !json;
    let (now, to) = match cascade::rollback_target(project, &env) {
        Ok(t) => t,
        Err(e) => return fail(&mut io, &e, json, color),
    };
    let question = format!("roll `{env}` back from {now} to {to}?");
    if !yes {
        if !std::io::stdin().is_terminal() {
            io.err_line(&format!(
                "error: {question} Not asked: stdin is not a terminal; pass --yes to confirm"
            ));
            return ExitCode::BadInput;
        }
        io.err_line(&format!("{question} [y/N]"));
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            io.err_line("not rolled back");
            return ExitCode::Ok;
        }
    }
    let opts = DeployOptions {
        project: project.to_path_buf(),
        env,
        store: default_store(project, store.as_ref()),
        lock: None,
        action: DeployAction::Rollback,
        dry_run: false,
        no_rollback: true,
        stamp: stamp_now(),
    };
    run(io, json, |on| cascade::rollback_deploy(&opts, on))
}

fn run(
    mut io: Io<'_>,
    json: bool,
    op: impl FnOnce(&dyn Fn(DeployEvent<'_>)) -> Result<DeployReport, cascade::Error>,
) -> ExitCode {
    let color = io.color && !json;
    let result = {
        let io = &io;
        // Progress goes to stderr with --json too: stdout keeps the one document.
        let on = move |e: DeployEvent<'_>| {
            for line in event_lines(&e) {
                io.err_line(&line);
            }
        };
        op(&on)
    };
    match result {
        Ok(r) => {
            crate::release::hook_warnings(&io, &r.notifications);
            if json {
                io.json(&r);
            } else {
                io.err_line(&summary(&r));
            }
            r.exit_code()
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

/// ` on HOST`, for a fleet's host (nothing for the one engine of a deploy without
/// `hosts:`).
fn on_host(host: &str) -> String {
    if host == cascade::LOCAL_HOST {
        String::new()
    } else {
        format!(" on {host}")
    }
}

fn event_lines(e: &DeployEvent<'_>) -> Vec<String> {
    match e {
        DeployEvent::Plan(r) => plan_lines(r),
        DeployEvent::Loaded {
            component,
            host,
            image,
        } => {
            vec![format!(
                "  loaded     {component:<12} {image}{}",
                on_host(host)
            )]
        }
        DeployEvent::Replacing {
            component,
            host,
            container,
        } => vec![format!(
            "  starting   {component:<12} {container}{}",
            on_host(host)
        )],
        DeployEvent::Replaced {
            component,
            host,
            container: c,
        } if c.healthy => vec![format!(
            "  healthy    {component:<12} {}{} in {} ({} attempt{})",
            c.name,
            on_host(host),
            secs(c.duration_ms),
            c.attempts,
            if c.attempts == 1 { "" } else { "s" }
        )],
        DeployEvent::Replaced {
            component,
            host,
            container: c,
        } => vec![format!(
            "  UNHEALTHY  {component:<12} {}{}: {}",
            c.name,
            on_host(host),
            c.detail
        )],
        DeployEvent::Failed(f) => {
            let mut v = vec![format!(
                "deploy failed: `{}` of `{}`{} is unhealthy",
                f.container,
                f.component,
                on_host(&f.host)
            )];
            if !f.log_tail.is_empty() {
                v.push(format!("  last {} lines of its log:", f.log_tail.len()));
                v.extend(f.log_tail.iter().map(|l| format!("  | {l}")));
            }
            v
        }
        DeployEvent::Removed {
            component,
            host,
            container,
        } => vec![format!(
            "  removed    {component:<12} {container}{}",
            on_host(host)
        )],
        DeployEvent::RollingBack { to } => vec![format!("rolling back to {to}")],
    }
}

fn plan_lines(r: &DeployReport) -> Vec<String> {
    let mut v = vec![format!(
        "{} plan for {}: {} (running: {})",
        r.action,
        r.environment,
        r.lockfile,
        r.running.as_deref().unwrap_or("unknown")
    )];
    let fleet = r.plan.iter().any(|p| p.host != cascade::LOCAL_HOST);
    let width = r.plan.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let hwidth = r.plan.iter().map(|p| p.host.len()).max().unwrap_or(0);
    let mut step = 0;
    for p in &r.plan {
        let why = if p.reasons.is_empty() {
            p.containers.join(", ")
        } else {
            p.reasons.join(", ")
        };
        if fleet {
            // The roll, step by step: what changes where, in the order it happens.
            let n = if p.change == DeployChange::Unchanged {
                "   ".to_string()
            } else {
                step += 1;
                format!("{step:>2}.")
            };
            v.push(format!(
                "  {n} {:<9}  {:<width$}  {:<hwidth$}  {why}",
                p.change, p.name, p.host
            ));
        } else {
            v.push(format!("  {:<9}  {:<width$}  {why}", p.change, p.name));
        }
    }
    // A dry run says what a failure would undo; a real roll's events say what happened.
    if fleet && step > 0 && r.dry_run {
        v.push(format!(
            "if a step fails, the hosts already changed go back to {}, newest first",
            r.running.as_deref().unwrap_or("what runs now")
        ));
    }
    if let Some(d) = &r.diff {
        let header = format!(
            "lock diff {} → {}",
            d.from.as_deref().unwrap_or("(none)"),
            d.to
        );
        v.extend(
            crate::lock::diff_text(&header, d)
                .lines()
                .map(str::to_string),
        );
    }
    v
}

fn summary(r: &DeployReport) -> String {
    let replaced = r.replaced.len();
    let unchanged = r
        .plan
        .iter()
        .filter(|p| p.change == DeployChange::Unchanged)
        .count();
    let mut s = match r.outcome {
        DeployOutcome::DryRun => format!("dry run: nothing changed ({} to replace)", r.plan.iter().filter(|p| p.change != DeployChange::Unchanged).count()),
        DeployOutcome::Deployed => format!(
            "deployed {}: {replaced} component{} (re)started, {unchanged} unchanged; recorded in {}",
            r.lockfile,
            if replaced == 1 { "" } else { "s" },
            r.history
        ),
        other @ (DeployOutcome::Failed | DeployOutcome::Interrupted) => {
            format!("{} {other}; recorded in {}", r.lockfile, r.history)
        }
    };
    if let Some(back) = &r.rollback {
        s.push_str(&format!(
            "\nrolled back to {}: {}",
            back.lockfile, back.outcome
        ));
    }
    if let Some(why) = &r.no_rollback {
        s.push_str(&format!("\nno rollback: {why}"));
    }
    s
}

pub(crate) fn status(project: &Path, args: StatusArgs, mut io: Io<'_>) -> ExitCode {
    let color = io.color && !args.json;
    match cascade::status(project, &args.env) {
        Ok(r) if args.json => {
            io.json(&r);
            ExitCode::Ok
        }
        Ok(r) => {
            let _ = write!(io.out, "{}", status_text(&r));
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, args.json, color),
    }
}

fn status_text(r: &StatusReport) -> String {
    let mut s = format!(
        "{}: {}\n",
        r.environment,
        match (&r.lockfile, r.containers.is_empty()) {
            (_, true) => "nothing running".to_string(),
            (Some(l), false) => format!("running {l}"),
            (None, false) => "running containers of several or unknown lockfiles".to_string(),
        }
    );
    let fleet = r.hosts.iter().any(|h| h != cascade::LOCAL_HOST);
    for c in &r.containers {
        let host = if fleet {
            format!("{:<10} ", c.host)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  {host}{:<12} {:<24} {:<9} {:<9} {} {}{}\n",
            c.component,
            c.name,
            c.state,
            c.health,
            cascade::short_digest(&c.image),
            c.ports.join(" "),
            if c.secrets_changed {
                " (secrets changed)"
            } else {
                ""
            }
        ));
    }
    if !r.uniform {
        s.push_str("not uniform: hosts run different lockfiles\n");
        for st in &r.stragglers {
            s.push_str(&format!("  {} runs {}\n", st.host, st.lockfiles.join(", ")));
        }
    }
    if let Some(d) = &r.last {
        s.push_str(&format!(
            "last: {} {} {} at {}\n",
            d.action, d.lockfile, d.outcome, d.at
        ));
    }
    s
}
