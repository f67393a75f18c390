//! cascade-exec: running steps and scheduling nodes.
//!
//! - [`host`]: the host runner. Each step is `sh -e -c <run>` in the node's work
//!   directory, with a clean environment, a PATH that holds only the declared tools,
//!   umask 022, its own process group, and a timeout that kills the whole group.
//! - [`sandbox`]: the host runner's write sandbox (Landlock): a step writes only in its
//!   work directory, its `TMPDIR`, its log and `/dev`.
//! - [`schedule`]: runs a DAG of nodes on a bounded pool of threads, dependencies
//!   strictly first, stopping (or not, with keep-going) after a failure; [`Slots`]
//!   bound how many of them run an Action at once.
//!
//! Plain threads, not an async runtime: every unit of work is a blocking child
//! process or file copy, and a pool of `--jobs` threads (plus two that look nodes up
//! in the cache) is all the parallelism needed.

pub mod host;
pub mod landlock;
pub mod namespace;
pub mod sandbox;
pub mod schedule;

pub use host::{
    interrupt, interrupted, kill_running_steps, resolve_tool, Commands, HostRun, ResolvedTool,
    RunError, Step, ToolError, Tools,
};
pub use sandbox::{RootFs, SandboxRun};
pub use schedule::{schedule, Outcome, Slot, Slots};
