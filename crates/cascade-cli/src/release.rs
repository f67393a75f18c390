//! `cascade release plan` and `cascade release tag`: the plan (per component the bump,
//! the commits that decided it and the changelog section) on stdout, as text or one JSON
//! document; conflicts with the compatibility matrix and refusals as diagnostics on
//! stderr; failed `notify:` hooks as warnings on stderr.

use std::path::{Path, PathBuf};

use cascade::{
    Bump, ComponentRelease, Delivery, ExitCode, Outcome, PreMajor, ReleaseOptions, ReleasePlan,
};

use crate::{fail, render, Io};

/// Exit code of a plan whose versions break the compatibility matrix: a check failed.

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ReleaseCommand {
    /// Propose the next version of every component of a lockfile, from the conventional
    /// commits since each one's last release, checked against the compatibility matrix.
    Plan(ReleaseArgs),
    /// Create the proposed version tags (annotated) on the commits the lockfile built,
    /// in every repository or none.
    Tag(TagArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ReleaseArgs {
    /// The environment whose newest lockfile is released.
    #[arg(long, value_name = "ENV", required_unless_present = "lock")]
    env: Option<String>,
    /// Release this lockfile instead of the newest of --env.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// A pre-release channel: `--pre rc` proposes `X.Y.Z-rc.1`, then `-rc.2`.
    #[arg(long, value_name = "CHANNEL")]
    pre: Option<String>,
    /// Below 1.0.0, a breaking change bumps the minor version (release-please's
    /// `bump-minor-pre-major`; off by default, as there).
    #[arg(long)]
    bump_minor_pre_major: bool,
    /// Below 1.0.0, a feature bumps the patch version (release-please's
    /// `bump-patch-for-minor-pre-major`; off by default, as there).
    #[arg(long)]
    bump_patch_for_minor_pre_major: bool,
    /// The store directory, where remote repositories are mirrored [default: <project>/cache].
    #[arg(long, env = "CASCADE_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TagArgs {
    #[command(flatten)]
    release: ReleaseArgs,
    /// Push the tags: a local repository's to its `origin`, a URL's back to it.
    #[arg(long)]
    push: bool,
}

impl ReleaseArgs {
    fn options(self, project: &Path) -> (ReleaseOptions, bool) {
        (
            ReleaseOptions {
                project: project.to_path_buf(),
                env: self.env,
                lock: self.lock,
                store: crate::default_store(project, self.store.as_ref()),
                pre: self.pre,
                rules: PreMajor {
                    bump_minor_pre_major: self.bump_minor_pre_major,
                    bump_patch_for_minor_pre_major: self.bump_patch_for_minor_pre_major,
                },
            },
            self.json,
        )
    }
}

pub(crate) fn release(project: &Path, cmd: ReleaseCommand, mut io: Io<'_>) -> ExitCode {
    match cmd {
        ReleaseCommand::Plan(args) => {
            let (opts, json) = args.options(project);
            let color = io.color && !json;
            match cascade::release_plan(&opts) {
                Ok(plan) => {
                    if json {
                        io.json(&plan);
                    } else {
                        let _ = write!(io.out, "{}", plan_text(&plan));
                    }
                    match &plan.diagnostics {
                        Some(d) => {
                            io.err_line(render(d, color).trim_end());
                            ExitCode::Failed
                        }
                        None => ExitCode::Ok,
                    }
                }
                Err(e) => fail(&mut io, &e, json, color),
            }
        }
        ReleaseCommand::Tag(args) => {
            let push = args.push;
            let (opts, json) = args.release.options(project);
            let color = io.color && !json;
            match cascade::release_tag(&opts, push) {
                Ok(report) => {
                    hook_warnings(&io, &report.notifications);
                    if json {
                        io.json(&report);
                    } else {
                        let mut s = format!("release tag {}\n", report.plan.lockfile);
                        for t in &report.tags {
                            let action = match t.action {
                                cascade::TagAction::Created => "created",
                                cascade::TagAction::Existing => "exists ",
                            };
                            s.push_str(&format!(
                                "  {action}  {}  {} on {}\n",
                                t.component,
                                t.tag,
                                cascade::short_sha(&t.commit)
                            ));
                            if let Some(w) = &t.changelog {
                                s.push_str(&changelog_line(w));
                            }
                        }
                        for p in &report.pushed {
                            s.push_str(&format!("pushed to {p}\n"));
                        }
                        let created = report
                            .tags
                            .iter()
                            .filter(|t| t.action == cascade::TagAction::Created)
                            .count();
                        s.push_str(&format!(
                            "{created} tag{} created, {} already there\n",
                            if created == 1 { "" } else { "s" },
                            report.tags.len() - created
                        ));
                        let _ = write!(io.out, "{s}");
                    }
                    ExitCode::Ok
                }
                Err(e) => fail(&mut io, &e, json, color),
            }
        }
    }
}

/// Where a changelog commit went, under its tag's line.
fn changelog_line(w: &cascade::ChangelogWrite) -> String {
    let branch = match &w.branch {
        cascade::BranchMove::Moved { branch } => format!("; `{branch}` moved to it"),
        cascade::BranchMove::MovedOn { branch, head } => format!(
            "; `{branch}` left at {} (it moved on since the build)",
            cascade::short_sha(head)
        ),
        cascade::BranchMove::CheckedOut { branch } => {
            format!("; `{branch}` left alone (checked out in a work tree)")
        }
        cascade::BranchMove::NotABranch => String::new(),
    };
    format!(
        "           wrote {} in a commit on {}{branch}\n",
        w.file,
        cascade::short_sha(&w.parent)
    )
}

/// A warning on stderr per `notify:` hook that did not take its event (the operation
/// itself succeeded).
pub(crate) fn hook_warnings(io: &Io<'_>, deliveries: &[Delivery]) {
    for d in deliveries {
        if let Outcome::Failed { reason } = &d.outcome {
            io.err_line(&format!(
                "warning: notify hook {} failed after {} attempt{}: {reason}",
                d.target,
                d.attempts,
                if d.attempts == 1 { "" } else { "s" }
            ));
        }
    }
}

fn bump_word(b: Bump) -> &'static str {
    match b {
        Bump::None => "none",
        Bump::Patch => "patch",
        Bump::Minor => "minor",
        Bump::Major => "major",
    }
}

/// A table (component, current → next, bump, status), then per component its reasons
/// and changelog section.
pub(crate) fn plan_text(plan: &ReleasePlan) -> String {
    let mut s = format!(
        "release plan {} ({}){}\n\n",
        plan.environment,
        plan.lockfile,
        plan.pre
            .as_deref()
            .map(|p| format!(", pre-release channel `{p}`"))
            .unwrap_or_default()
    );
    let width = plan
        .components
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &plan.components {
        s.push_str(&format!("  {:<width$}  {}\n", c.name, summary(c)));
    }
    for c in plan.components.iter().filter(|c| !c.commits.is_empty()) {
        s.push_str(&format!("\n{} {}:\n", c.name, c.next));
        for r in &c.commits {
            s.push_str(&format!(
                "  {} {} ({})\n",
                r.short,
                r.subject,
                bump_word(r.bump)
            ));
        }
        if c.hidden + c.ignored > 0 {
            s.push_str(&format!(
                "  and {} commit{} without a bump, {} not conventional\n",
                c.hidden,
                if c.hidden == 1 { "" } else { "s" },
                c.ignored
            ));
        }
        s.push('\n');
        for line in c.changelog.lines() {
            s.push_str(format!("  {line}").trim_end());
            s.push('\n');
        }
    }
    if !plan.conflicts.is_empty() {
        s.push_str(&format!(
            "\n{} rule{} of the compatibility matrix broken by this release\n",
            plan.conflicts.len(),
            if plan.conflicts.len() == 1 { "" } else { "s" }
        ));
    }
    s
}

fn summary(c: &ComponentRelease) -> String {
    match c.status {
        cascade::ReleaseStatus::Release => format!(
            "{} → {}  {}  tag {}",
            c.last_release.as_deref().unwrap_or("(none)"),
            c.next,
            bump_word(c.bump),
            c.tag.as_deref().unwrap_or_default()
        ),
        cascade::ReleaseStatus::Released => format!(
            "{}  released (tag {} on {})",
            c.next,
            c.tag.as_deref().unwrap_or_default(),
            cascade::short_sha(&c.commit)
        ),
        cascade::ReleaseStatus::NoRelease => format!(
            "{}  no release ({} commit{} without a bump, {} not conventional)",
            c.current,
            c.hidden,
            if c.hidden == 1 { "" } else { "s" },
            c.ignored
        ),
    }
}
