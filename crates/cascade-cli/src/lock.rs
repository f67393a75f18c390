//! `cascade lock diff` and `cascade promote`: lockfiles as the unit of release.

use std::path::Path;

use crate::Io;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LockCommand {
    /// Compare two lockfiles: the deploy plan from one to the other.
    Diff(DiffArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct DiffArgs {}

#[derive(clap::Args, Debug)]
pub(crate) struct PromoteArgs {}

pub(crate) fn lock(_project: &Path, _cmd: LockCommand, io: Io<'_>) -> i32 {
    io.err_line("not built yet");
    crate::EXIT_BUG
}

pub(crate) fn promote(_project: &Path, _args: PromoteArgs, io: Io<'_>) -> i32 {
    io.err_line("not built yet");
    crate::EXIT_BUG
}
