//! `DockerError`: everything that stops an operation. A smoke test that runs and fails
//! is not an error: it is a [`crate::TestOutcome`] with `passed: false`.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DockerError {
    #[error("no Docker engine at `{endpoint}`: {reason}")]
    #[diagnostic(code(cascade::docker::unavailable))]
    Unavailable {
        endpoint: String,
        reason: String,
        /// What to do about it, which depends on what is missing.
        #[help]
        help: String,
    },

    #[error("could not start the runtime that drives the Docker client")]
    #[diagnostic(code(cascade::docker::runtime))]
    Runtime {
        #[source]
        source: io::Error,
    },

    #[error("the Docker client was called from inside an async runtime")]
    #[diagnostic(
        code(cascade::docker::async_context),
        help("cascade-docker is blocking: call it from a plain thread (e.g. `tokio::task::spawn_blocking`)")
    )]
    AsyncContext,

    #[error("could not read `{path}`")]
    #[diagnostic(code(cascade::docker::io))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("Docker could not load `{path}`: {message}")]
    #[diagnostic(
        code(cascade::docker::load),
        help("the archive must be a `docker load` tar with a `manifest.json` (cascade_image::export_archive writes one)")
    )]
    Load { path: PathBuf, message: String },

    #[error("image `{image}` is not in the Docker engine")]
    #[diagnostic(
        code(cascade::docker::image_not_found),
        help("load it first (`Docker::load_archive`); images are never pulled")
    )]
    ImageNotFound { image: String },

    #[error("the Docker engine failed to {action}: {message}")]
    #[diagnostic(
        code(cascade::docker::engine),
        help("the engine's own log (e.g. `journalctl -u docker`, or the dockerd.log of `.ci/services/docker.sh`) may say more")
    )]
    Engine {
        /// What was asked, as a verb phrase (`create network \`…\``).
        action: String,
        /// The engine's HTTP status, when it answered with one.
        status: Option<u16>,
        message: String,
    },

    #[error("invalid step: {reason}")]
    #[diagnostic(code(cascade::docker::step))]
    InvalidStep { reason: String },

    #[error("cascade is shutting down: no new container is started")]
    #[diagnostic(code(cascade::docker::shutting_down))]
    ShuttingDown,

    #[error("smoke test `{name}` is invalid: {reason}")]
    #[diagnostic(code(cascade::docker::smoke_test))]
    InvalidSmokeTest { name: String, reason: String },

    #[error("container `{container}` has no usable host port for {port}/tcp: {reason}")]
    #[diagnostic(
        code(cascade::docker::port),
        help("smoke tests publish the probed port on 127.0.0.1 only; the engine must honour that")
    )]
    PortNotPublished {
        container: String,
        port: u16,
        reason: String,
    },
}

impl DockerError {
    /// For `map_err`: the engine failed to do `action`.
    pub(crate) fn engine(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |e| {
            let (status, message) = describe(e);
            DockerError::Engine {
                action,
                status,
                message,
            }
        }
    }
}

/// The engine's status code and message, or the client's own error as text.
pub(crate) fn describe(e: bollard::errors::Error) -> (Option<u16>, String) {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        bollard::errors::Error::RequestTimeoutError => {
            (None, "the engine did not answer in time".to_string())
        }
        other => (None, other.to_string()),
    }
}

/// Whether the engine answered 404 (no such container, image or network).
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
