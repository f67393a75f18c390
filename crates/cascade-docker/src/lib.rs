//! cascade-docker: the Docker Engine behind a small blocking API: load an image archive
//! ([`Docker::load_archive`]), look an image up ([`Docker::image_id`]), smoke-test an
//! image by running it and probing it ([`Docker::smoke_test`]), run a build step in a
//! container of its own ([`Docker::run_step`]), and run deployed containers: create,
//! start, stop, find by label, wait for a health check ([`Docker::wait_healthy`], used
//! by `cascade deploy`).
//!
//! Why these choices:
//! - `bollard` speaks the Engine API directly over the unix socket (or a loopback
//!   `tcp://`), so there is no `docker` CLI to find, no output to scrape, and errors
//!   come back as status codes. It negotiates the API version on connect: Debian's
//!   `docker.io` is 20.10 (API 1.41), older than bollard's default.
//! - bollard is async; the rest of cascade is plain threads (ARCHITECTURE.md). So each
//!   [`Docker`] owns a private current-thread tokio runtime and every public method is
//!   blocking (`block_on`), which keeps tokio out of every other crate's signatures.
//!   Calling these methods from inside another tokio runtime is refused with an error
//!   rather than a panic.
//! - The http probe uses `ureq` (blocking, plain HTTP only, no proxy from the
//!   environment, no redirects): a correct HTTP/1.1 client with per-request timeouts in
//!   one small crate, instead of a hand-written parser that would mishandle chunked
//!   bodies.
//!
//! Isolation and cleanup:
//! - A smoke test runs its container on a bridge network of its own, labelled
//!   `cascade=1`, and publishes the probed port on 127.0.0.1 only, with a port the
//!   engine picks. Probes go to that loopback port, never to a container's bridge IP.
//! - The container and the network are owned by a guard whose `Drop` removes them
//!   (container forced first, then the network), so they go away on success, failure,
//!   error or panic.
//! - Every smoke-test and step container and network a [`Docker`] creates is also kept
//!   in a registry until it is removed, so [`Docker::cleanup_all_cascade_resources`] can
//!   remove what is left from a Ctrl-C handler, where no guard gets to run.
//!   [`Docker::shut_down`] (what the handler calls) also refuses new creations, waits for
//!   those in flight, and sweeps what carries this process's id ([`LABEL_PID`]). Deployed
//!   containers are meant to stay, so they are not registered; `cascade deploy` finds
//!   them by label.
//!
//! A build step ([`Docker::run_step`]) runs `/bin/sh -e -c <script>` in a fresh
//! container: no network, a read-only root filesystem with a private `/tmp`, the work
//! directory as the only writable mount (the source and inputs in it mounted read-only
//! over themselves), a non-root user, no capabilities, memory and pid limits, and a
//! timeout after which it is killed. Its log is streamed as it comes.

mod deploy;
mod engine;
mod error;
mod smoke;
mod ssh;
mod step;

pub use deploy::{ContainerInfo, ContainerSpec, HealthOutcome, HealthSpec, Publish, FIRST_RETRY};
pub use engine::{Docker, Loaded, DEFAULT_ENDPOINT, LABEL, LABEL_PID};
pub use error::DockerError;
pub use smoke::{
    judge_command, judge_http, probe_until, Attempt, Expect, Probe, ProbeEnd, SmokeTest,
    TestOutcome, LOG_TAIL_LINES, MAX_INTERVAL,
};
pub use ssh::SshTarget;
pub use step::{StepEnd, StepSpec, STEP_MEMORY, STEP_PIDS, STEP_WORKDIR};
