//! `cascade lock diff` and `cascade promote`: lockfiles as the unit of release. Both
//! print their report on stdout (text, or one JSON document with `--json`); errors are
//! diagnostics on stderr.

use std::path::{Path, PathBuf};

use cascade::{Change, DiffFrom, DiffOptions, ExitCode, LockDiff, PromoteOptions, PromoteReport};

use crate::{fail, Io};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LockCommand {
    /// Compare two lockfiles: the deploy plan from one to the other.
    Diff(DiffArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct DiffArgs {
    /// The older lockfile.
    #[arg(
        value_name = "OLD",
        required_unless_present = "env",
        conflicts_with = "env"
    )]
    old: Option<PathBuf>,
    /// The newer lockfile.
    #[arg(
        value_name = "NEW",
        required_unless_present = "env",
        conflicts_with = "env"
    )]
    new: Option<PathBuf>,
    /// Compare the newest lockfile of ENV (instead of OLD)…
    #[arg(long, value_name = "ENV", requires = "to")]
    env: Option<String>,
    /// …with this lockfile (instead of NEW).
    #[arg(long, value_name = "FILE", requires = "env")]
    to: Option<PathBuf>,
    /// The store whose git mirrors count how far apart two commits of a remote source
    /// are (read only; nothing is fetched) [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PromoteArgs {
    /// The environment whose newest lockfile is promoted.
    #[arg(long, value_name = "ENV", required_unless_present = "lock")]
    from: Option<String>,
    /// The environment whose manifest is pinned to the lockfile's commits.
    #[arg(long, value_name = "ENV")]
    to: String,
    /// Promote this lockfile instead of the newest of --from.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Print the deploy plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Approve the promotion (needed to promote to prod).
    #[arg(long)]
    approve: bool,
    /// The store directory, where remote repositories are mirrored [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn lock(project: &Path, cmd: LockCommand, mut io: Io<'_>) -> ExitCode {
    let LockCommand::Diff(args) = cmd;
    let json = args.json;
    let color = io.color && !json;
    let (from, to) = match (args.env, args.to, args.old, args.new) {
        (Some(env), Some(to), _, _) => (DiffFrom::Newest(env), to),
        (_, _, Some(old), Some(new)) => (DiffFrom::File(old), new),
        // clap requires OLD and NEW, or --env and --to.
        _ => return ExitCode::BadInput,
    };
    let opts = DiffOptions {
        project: project.to_path_buf(),
        store: crate::default_store(project, args.store.as_ref()),
        from,
        to,
    };
    match cascade::lock_diff(&opts) {
        Ok(diff) if json => {
            io.json(&diff);
            ExitCode::Ok
        }
        Ok(diff) => {
            let header = format!(
                "lock diff {} → {}",
                diff.from.as_deref().unwrap_or("(none)"),
                diff.to
            );
            let _ = write!(io.out, "{}", diff_text(&header, &diff));
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

pub(crate) fn promote(project: &Path, args: PromoteArgs, mut io: Io<'_>) -> ExitCode {
    let json = args.json;
    let color = io.color && !json;
    let opts = PromoteOptions {
        project: project.to_path_buf(),
        from: args.from,
        to: args.to,
        lock: args.lock,
        store: crate::default_store(project, args.store.as_ref()),
        dry_run: args.dry_run,
        approve: args.approve,
    };
    match cascade::promote(&opts) {
        Ok(report) => {
            for w in &report.warnings {
                io.err_line(&format!("warning: {w}"));
            }
            crate::release::hook_warnings(&io, &report.notifications);
            if json {
                io.json(&report);
            } else {
                let _ = write!(io.out, "{}", promote_text(&report));
            }
            ExitCode::Ok
        }
        Err(e) => fail(&mut io, &e, json, color),
    }
}

/// The header, one line per node (`changed` ones name what changed), and the counts.
pub(crate) fn diff_text(header: &str, diff: &LockDiff) -> String {
    let width = diff.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    let mut s = format!("{header}\n");
    for n in &diff.nodes {
        let change = match n.change {
            Change::Unchanged => "unchanged",
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        };
        s.push_str(&format!(
            "  {change:<9}  {:<width$}  {}\n",
            n.name, n.message
        ));
    }
    s.push_str(&format!(
        "{} changed, {} unchanged, {} added, {} removed\n",
        diff.changed, diff.unchanged, diff.added, diff.removed
    ));
    if let Some([from, to]) = diff.key_formats {
        s.push_str(&format!(
            "keys: format {from} → {to} (every key differs; sources, outputs and images compared)\n"
        ));
    }
    s
}

fn promote_text(r: &PromoteReport) -> String {
    let mut s = format!(
        "promote {} → {} ({}){}\n\n",
        r.from,
        r.to,
        r.lockfile,
        if r.dry_run { ", dry run" } else { "" }
    );
    let header = match &r.plan.from {
        Some(f) => format!("deploy plan for {}: {f} → {}", r.to, r.plan.to),
        None => format!(
            "deploy plan for {}: (no lockfile yet) → {}",
            r.to, r.plan.to
        ),
    };
    s.push_str(&diff_text(&header, &r.plan));
    s.push_str(&format!("\n{}:\n", r.manifest));
    let width = r
        .sources
        .iter()
        .map(|x| x.name.len())
        .chain(r.kept.iter().chain(&r.not_promoted).map(String::len))
        .max()
        .unwrap_or(0);
    for x in &r.sources {
        let what = if x.changed {
            format!("{}: {} → {}", x.field, x.before, x.after)
        } else {
            format!("{}: {} (already pinned)", x.field, x.after)
        };
        s.push_str(&format!("  {:<width$}  {what}\n", x.name));
    }
    for k in &r.kept {
        s.push_str(&format!(
            "  {k:<width$}  kept as it is (not in the lockfile)\n"
        ));
    }
    for n in &r.not_promoted {
        s.push_str(&format!("  {n:<width$}  not promoted (not in {})\n", r.to));
    }
    let changes = r.sources.iter().filter(|x| x.changed).count();
    s.push('\n');
    s.push_str(&if r.written {
        format!(
            "wrote {}: {changes} source{} pinned\n",
            r.manifest,
            if changes == 1 { "" } else { "s" }
        )
    } else if r.dry_run {
        format!(
            "dry run: {} not changed ({changes} source{} would be pinned)\n",
            r.manifest,
            if changes == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "{} already pins the lockfile's commits: nothing to write\n",
            r.manifest
        )
    });
    s
}
