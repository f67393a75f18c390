//! `Docker`: the connection, the private runtime, image loading, and the registry of
//! what this process created.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::error::{describe, is_not_found};
use crate::DockerError;

/// Where the engine is looked for when `DOCKER_HOST` is not set.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// The label (`key`, `value`) on every container and network cascade creates, so they
/// can be found (`docker ps --filter label=cascade=1`) and told apart from others.
pub const LABEL: (&str, &str) = ("cascade", "1");
/// The label holding the id of the process that created a container or network
/// (`docker ps -a --filter label=cascade.pid=1234`): what [`Docker::shut_down`] sweeps.
pub const LABEL_PID: &str = "cascade.pid";
/// How long [`Docker::shut_down`] waits for creations already sent to the engine.
const SHUT_DOWN_WAIT: Duration = Duration::from_secs(10);

/// How long connecting may take: the engine is local, so this is only a safeguard
/// against a socket that accepts but never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Every other request, except loads (bollard's default).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// A load streams a whole image and the engine unpacks it before answering.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The archive is streamed to the engine in chunks of this size, so an image of any size
/// is loaded in constant memory.
const LOAD_CHUNK: usize = 256 * 1024;

/// A connection to one Docker engine. Every method blocks the calling thread; the
/// value can be shared between threads (`&Docker` is enough).
pub struct Docker {
    pub(crate) client: bollard::Docker,
    rt: tokio::runtime::Runtime,
    endpoint: String,
    api_version: String,
    created: Mutex<Created>,
    /// Signalled when a creation ends (for [`Docker::shut_down`]).
    idle: Condvar,
    /// For an `ssh://` engine, the socket that bridges to ssh (after the client, so it
    /// outlives it).
    _ssh: Option<crate::ssh::Proxy>,
    /// For an `ssh://` engine, where it is: health checks probe its loopback through ssh.
    pub(crate) ssh_target: Option<crate::ssh::SshTarget>,
}

/// What this `Docker` created and has not removed yet, by id, and what it is creating.
#[derive(Default)]
struct Created {
    containers: BTreeSet<String>,
    networks: BTreeSet<String>,
    /// Creations sent to the engine whose ids are not registered yet.
    creating: usize,
    /// Set by [`Docker::shut_down`]: nothing new is created.
    closed: bool,
}

/// A creation in flight: registered so that [`Docker::shut_down`] waits for it (its id
/// must be registered before the sweep), and refused once shutting down.
pub(crate) struct Creating<'a> {
    docker: &'a Docker,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.docker.created().creating -= 1;
        self.docker.idle.notify_all();
    }
}

/// What a load brought in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The image id (`sha256:…`). With the engine's classic image store (docker.io 20.10)
    /// it is the digest of the image's config.
    pub id: String,
    /// The tags the engine reported (`name:tag`), in its order.
    pub tags: Vec<String>,
}

/// An endpoint we are willing to talk to.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `host:port` on the loopback interface.
    Tcp(String),
    /// Docker's SSH transport.
    Ssh(crate::ssh::SshTarget),
}

impl Docker {
    /// Connects to the engine named by `DOCKER_HOST` (`unix://…`, or `tcp://` on the
    /// loopback interface), or to [`DEFAULT_ENDPOINT`], pings it and negotiates the API
    /// version.
    pub fn connect() -> Result<Docker, DockerError> {
        let endpoint = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Docker::connect_to(&endpoint)
    }

    /// Like [`Docker::connect`], to the given endpoint.
    pub fn connect_to(endpoint: &str) -> Result<Docker, DockerError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DockerError::AsyncContext);
        }
        let unavailable = |reason: String, help: String| DockerError::Unavailable {
            endpoint: endpoint.to_string(),
            reason,
            help,
        };
        let parsed = parse_endpoint(endpoint).map_err(|reason| {
            unavailable(
                reason,
                "set DOCKER_HOST to `unix:///path/to/docker.sock`, `ssh://user@host[:port]` or `tcp://127.0.0.1:PORT`".into(),
            )
        })?;
        // One thread, IO and timers: every call is `block_on` from the caller's thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| DockerError::Runtime { source })?;
        let _in_rt = rt.enter();
        let version = bollard::API_DEFAULT_VERSION;
        let ssh = match &parsed {
            Endpoint::Ssh(target) => Some(crate::ssh::Proxy::start(target).map_err(|e| {
                unavailable(
                    format!("cannot start the ssh bridge: {e}"),
                    INSTALL_HELP.into(),
                )
            })?),
            _ => None,
        };
        let client = match &parsed {
            Endpoint::Ssh(_) => {
                let socket = ssh.as_ref().map(|p| p.socket()).unwrap_or_default();
                bollard::Docker::connect_with_unix(
                    &crate::ssh::unix_url(&socket),
                    REQUEST_TIMEOUT_SECS,
                    version,
                )
            }
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(unavailable(
                        format!("`{}` does not exist", path.display()),
                        INSTALL_HELP.into(),
                    ));
                }
                bollard::Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT_SECS, version)
            }
            Endpoint::Tcp(addr) => bollard::Docker::connect_with_http(
                &format!("tcp://{addr}"),
                REQUEST_TIMEOUT_SECS,
                version,
            ),
        }
        .map_err(|e| unavailable(e.to_string(), INSTALL_HELP.into()))?;

        let client = rt
            .block_on(async {
                match tokio::time::timeout(CONNECT_TIMEOUT, client.ping()).await {
                    Err(_) => Err((
                        format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                        None,
                    )),
                    Ok(Err(e)) => Err((describe_connect(&e), io_kind(&e))),
                    Ok(Ok(_)) => client
                        .negotiate_version()
                        .await
                        .map_err(|e| (format!("version negotiation failed: {e}"), None)),
                }
            })
            .map_err(|(reason, kind)| {
                // Over ssh, what ssh said is the reason (a refused host key, a login).
                if let Some(said) = ssh.as_ref().and_then(|p| p.last_error()) {
                    return unavailable(
                        format!("ssh failed: {said}"),
                        "check that `ssh user@host docker version` works without a prompt: the key in the ssh agent or ~/.ssh (or CASCADE_SSH_CONFIG's), the host's key in known_hosts (cascade never accepts an unknown one), docker on the far end".into(),
                    );
                }
                let help = match kind {
                    Some(io::ErrorKind::PermissionDenied) => {
                        "run as root, or add the user to the `docker` group (then log in again)"
                    }
                    Some(io::ErrorKind::ConnectionRefused) | Some(io::ErrorKind::NotFound) => {
                        "nothing is listening there: start `dockerd` (`.ci/services/docker.sh` installs docker.io and starts it), or set DOCKER_HOST to a running engine"
                    }
                    _ => "check that `dockerd` is running and healthy (`docker version` asks it), or set DOCKER_HOST to a running engine",
                };
                unavailable(reason, help.into())
            })?;
        drop(_in_rt);
        let api_version = client.client_version().to_string();
        Ok(Docker {
            client,
            rt,
            endpoint: endpoint.to_string(),
            api_version,
            created: Mutex::new(Created::default()),
            idle: Condvar::new(),
            _ssh: ssh,
            ssh_target: match parsed {
                Endpoint::Ssh(t) => Some(t),
                _ => None,
            },
        })
    }

    /// The endpoint this connection talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The negotiated Engine API version (`1.41` with Debian 12's docker.io).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// `docker load` of an archive (such as `cascade_image::export_archive` writes),
    /// streamed from disk. Returns the image id and the tags the engine reported.
    pub fn load_archive(&self, path: &Path) -> Result<Loaded, DockerError> {
        let file = File::open(path).map_err(|source| DockerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let load_failed = |message: String| DockerError::Load {
            path: path.to_path_buf(),
            message,
        };
        let client = self.client.clone().with_timeout(LOAD_TIMEOUT);
        let (tags, mut ids) = self.run(async {
            // Reading a local file blocks only briefly, and only this private runtime.
            let body = futures_util::stream::unfold(Some(file), |file| async move {
                let mut file = file?;
                let mut buf = vec![0; LOAD_CHUNK];
                match read_some(&mut file, &mut buf) {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            });
            let options = ImportImageOptionsBuilder::new().quiet(true).build();
            let mut progress = client.import_image_stream(options, body, None);
            let (mut tags, mut ids) = (Vec::new(), Vec::new());
            while let Some(item) = progress.next().await {
                let info = item.map_err(|e| load_failed(describe(e).1))?;
                // The engine reports each image as a line of text, the only place it
                // says what it loaded.
                for line in info.stream.as_deref().unwrap_or_default().lines() {
                    if let Some(id) = line.strip_prefix("Loaded image ID: ") {
                        ids.push(id.trim().to_string());
                    } else if let Some(tag) = line.strip_prefix("Loaded image: ") {
                        tags.push(tag.trim().to_string());
                    }
                }
            }
            Ok((tags, ids))
        })?;
        for tag in &tags {
            match self.image_id(tag)? {
                Some(id) => ids.push(id),
                None => {
                    return Err(load_failed(format!(
                        "the engine reported `{tag}` but does not know it"
                    )))
                }
            }
        }
        let id = match ids.split_first() {
            None => return Err(load_failed("the engine reported no image".into())),
            Some((first, rest)) => {
                if rest.iter().any(|i| i != first) {
                    return Err(load_failed(format!(
                        "the archive holds several images ({}); load one at a time",
                        ids.join(", ")
                    )));
                }
                first.clone()
            }
        };
        Ok(Loaded { id, tags })
    }

    /// The id (`sha256:…`) of the image `reference` (`name:tag`, or an id), or `None`
    /// when the engine does not have it.
    pub fn image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        self.run(async {
            match self.client.inspect_image(reference).await {
                Ok(image) => Ok(image.id),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(DockerError::engine(format!("inspect image `{reference}`"))(
                    e,
                )),
            }
        })
    }

    /// Removes every container and network this `Docker` created and has not removed
    /// yet (containers forced, then networks), e.g. from a Ctrl-C handler while a smoke
    /// test runs on another thread. Tries them all; returns the first failure.
    pub fn cleanup_all_cascade_resources(&self) -> Result<(), DockerError> {
        let (containers, networks) = {
            let created = self.created();
            (created.containers.clone(), created.networks.clone())
        };
        let mut first_error = None;
        for id in &containers {
            if let Err(e) = self.remove_container(id) {
                first_error.get_or_insert(e);
            }
        }
        for id in &networks {
            if let Err(e) = self.remove_network(id) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What an interrupted process does before it exits: refuses to create anything from
    /// now on, waits (up to 10 s) for the creations the engine is still answering, then
    /// removes every container and network this `Docker` created, and any other this
    /// process's id is on ([`LABEL_PID`]). Tries them all; returns the first failure.
    pub fn shut_down(&self) -> Result<(), DockerError> {
        {
            let deadline = Instant::now() + SHUT_DOWN_WAIT;
            let mut created = self.created();
            created.closed = true;
            while created.creating > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                created = self
                    .idle
                    .wait_timeout(created, left)
                    .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
        }
        let mut first_error = self.cleanup_all_cascade_resources().err();
        if let Err(e) = self.sweep() {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes what the engine lists with this process's [`LABEL_PID`]: containers (and
    /// networks) whose creation this process never saw answered.
    fn sweep(&self) -> Result<(), DockerError> {
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_PID}={}", std::process::id())],
        )]);
        let (containers, networks) = self.run(async {
            let containers = self
                .client
                .list_containers(Some(
                    ListContainersOptionsBuilder::new()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(DockerError::engine("list this process's containers"))?;
            let networks = self
                .client
                .list_networks(Some(
                    ListNetworksOptionsBuilder::new().filters(&filters).build(),
                ))
                .await
                .map_err(DockerError::engine("list this process's networks"))?;
            Ok((containers, networks))
        })?;
        let mut first_error = None;
        for id in containers.into_iter().filter_map(|c| c.id) {
            if let Err(e) = self.remove_container(&id) {
                first_error.get_or_insert(e);
            }
        }
        for id in networks.into_iter().filter_map(|n| n.id) {
            if let Err(e) = self.remove_network(&id) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Registers a creation about to be sent to the engine; refused after
    /// [`Docker::shut_down`]. Register its id ([`Docker::track_container`]) before
    /// dropping the guard.
    pub(crate) fn creating(&self) -> Result<Creating<'_>, DockerError> {
        let mut created = self.created();
        if created.closed {
            return Err(DockerError::ShuttingDown);
        }
        created.creating += 1;
        Ok(Creating { docker: self })
    }

    /// The labels of everything this process creates: [`LABEL`] and [`LABEL_PID`].
    pub(crate) fn labels() -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            (LABEL.0.to_string(), LABEL.1.to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
        ])
    }

    /// Runs `future` to completion on the private runtime.
    pub(crate) fn run<T>(
        &self,
        future: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, DockerError> {
        // `block_on` inside another runtime would panic; this is the caller's mistake,
        // so it is an error (and a guard's `Drop` just leaves its resources registered).
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DockerError::AsyncContext);
        }
        self.rt.block_on(future)
    }

    fn created(&self) -> MutexGuard<'_, Created> {
        // The registry is two sets; a panic elsewhere cannot leave them inconsistent.
        self.created
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ids still registered: (containers, networks).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (Vec<String>, Vec<String>) {
        let created = self.created();
        (
            created.containers.iter().cloned().collect(),
            created.networks.iter().cloned().collect(),
        )
    }

    pub(crate) fn track_container(&self, id: &str) {
        self.created().containers.insert(id.to_string());
    }

    pub(crate) fn track_network(&self, id: &str) {
        self.created().networks.insert(id.to_string());
    }

    /// Force-removes a container (and its anonymous volumes). One that is already
    /// gone, or already being removed, counts as removed.
    pub(crate) fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        self.run(async {
            match self.client.remove_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("already in progress") => Ok(()),
                Err(e) => Err(DockerError::engine(format!("remove container `{id}`"))(e)),
            }
        })?;
        self.created().containers.remove(id);
        Ok(())
    }

    /// Removes a network; one that is already gone counts as removed.
    pub(crate) fn remove_network(&self, id: &str) -> Result<(), DockerError> {
        self.run(async {
            let mut tries = 0;
            loop {
                match self.client.remove_network(id).await {
                    Ok(()) => return Ok(()),
                    Err(e) if is_not_found(&e) => return Ok(()),
                    // The engine detaches a force-removed container's endpoint
                    // asynchronously; until then the network is "in use".
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 403 | 409 | 500,
                        ..
                    }) if tries < 10 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(DockerError::engine(format!("remove network `{id}`"))(e)),
                }
            }
        })?;
        self.created().networks.remove(id);
        Ok(())
    }
}

const INSTALL_HELP: &str = "install Docker (Debian: `apt-get install docker.io`) and start `dockerd` (`.ci/services/docker.sh` does both), or set DOCKER_HOST to a running engine (`unix:///path/to/docker.sock` or `tcp://127.0.0.1:PORT`)";

/// `unix:///path`, or `tcp://` / `http://` to a loopback host (port 2375 by default).
/// Plain tcp to another host would be an unauthenticated engine on the network, and
/// nothing here needs one.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint, String> {
    if endpoint.starts_with("ssh://") {
        return crate::ssh::SshTarget::parse(endpoint).map(Endpoint::Ssh);
    }
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err("a unix:// endpoint needs an absolute path".into());
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    let rest = endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| {
            "unsupported endpoint (use `unix:///path/to/docker.sock`, `ssh://user@host[:port]` or `tcp://127.0.0.1:PORT`)"
                .to_string()
        })?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, Some(p)),
        _ => (hostport, None),
    };
    let port = match port {
        None => 2375,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    match host {
        "127.0.0.1" | "localhost" | "[::1]" => Ok(Endpoint::Tcp(format!("{host}:{port}"))),
        _ => Err(format!(
            "`{host}` is not a loopback address; only a local engine is used (plain tcp to another host is unauthenticated)"
        )),
    }
}

/// The io::Error at the bottom of a client error, if any.
fn io_kind(e: &bollard::errors::Error) -> Option<io::ErrorKind> {
    if let bollard::errors::Error::SocketNotFoundError(_) = e {
        return Some(io::ErrorKind::NotFound);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

/// A connection failure in words, naming the underlying OS error.
fn describe_connect(e: &bollard::errors::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// `read`, retried on EINTR.
fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///var/run/docker.sock"),
            Ok(Endpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:2376"),
            Ok(Endpoint::Tcp("127.0.0.1:2376".into()))
        );
        assert_eq!(
            parse_endpoint("http://localhost"),
            Ok(Endpoint::Tcp("localhost:2375".into()))
        );
        assert_eq!(
            parse_endpoint("tcp://[::1]:7"),
            Ok(Endpoint::Tcp("[::1]:7".into()))
        );
        assert!(matches!(
            parse_endpoint("ssh://me@host:2222"),
            Ok(Endpoint::Ssh(crate::ssh::SshTarget {
                port: Some(2222),
                ..
            }))
        ));
        for bad in [
            "unix://relative.sock",
            "tcp://10.0.0.1:2375",
            "tcp://docker.example:2375",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:x",
            "ssh://host",
            "npipe:////./pipe/docker_engine",
            "/var/run/docker.sock",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_a_remote_engine_without_connecting() {
        let err = Docker::connect_to("tcp://192.0.2.1:2375")
            .err()
            .expect("a remote endpoint is refused");
        assert!(matches!(err, DockerError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    }

    #[test]
    fn a_missing_socket_says_what_to_install() {
        let err = Docker::connect_to("unix:///nonexistent/cascade/docker.sock")
            .err()
            .expect("no engine there");
        let DockerError::Unavailable { reason, help, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.contains("does not exist"), "{reason}");
        assert!(
            help.contains("docker.io") && help.contains("DOCKER_HOST"),
            "{help}"
        );
    }

    #[test]
    fn nothing_listening_is_unavailable() {
        // A port just freed on loopback: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let err = Docker::connect_to(&format!("tcp://127.0.0.1:{port}"))
            .err()
            .expect("nothing listens");
        let DockerError::Unavailable { help, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(help.contains("dockerd"), "{help}");
    }
}
