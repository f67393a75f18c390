//! Docker's own SSH transport (`DOCKER_HOST=ssh://user@host[:port]`), done the way the
//! docker CLI does it: every connection to the engine is an `ssh … docker system
//! dial-stdio` process whose stdin and stdout carry the Engine API. The system's OpenSSH
//! client makes the connection, so keys come from the ssh agent or `~/.ssh` (or the file
//! `CASCADE_SSH_CONFIG` names, passed as `ssh -F`), and host keys are checked against
//! `known_hosts` with `StrictHostKeyChecking=yes`: an unknown host is refused, never
//! accepted silently. `BatchMode=yes`: nothing ever waits for a password.
//!
//! bollard speaks HTTP over a unix socket, so a [`Proxy`] listens on a private socket
//! (a 0700 temporary directory) and bridges each connection to its own ssh process.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// `ssh://user@host[:port]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
}

impl SshTarget {
    /// Parses `ssh://user@host[:port]`; the user is required (a deploy never guesses
    /// who it logs in as), and the host is a name or an address, no path.
    pub fn parse(url: &str) -> Result<SshTarget, String> {
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| format!("`{url}` is not an ssh:// URL"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some((user, hostport)) = rest.split_once('@') else {
            return Err("it names no user: write `ssh://user@host[:port]`".into());
        };
        let ok_user = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !user.starts_with('-');
        if !ok_user {
            return Err(format!("`{user}` is not a user name"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{p}` is not a port"))?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        let ok_host = !host.is_empty()
            && !host.starts_with('-')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        if !ok_host {
            return Err(format!("`{host}` is not a host name or address"));
        }
        Ok(SshTarget {
            user: user.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// The ssh command that opens one Engine API stream.
    fn command(&self) -> Command {
        let mut c = self.base();
        c.arg("--")
            .arg(&self.host)
            .args(["docker", "system", "dial-stdio"]);
        c
    }

    /// `ssh -W 127.0.0.1:PORT`: stdin and stdout carried to a port on the far host's
    /// loopback, where a deployed container publishes what its health check probes.
    fn forward(&self, port: u16) -> Command {
        let mut c = self.base();
        c.arg("-W")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--")
            .arg(&self.host);
        c
    }

    fn base(&self) -> Command {
        let mut c = Command::new("ssh");
        if let Some(cfg) = std::env::var_os("CASCADE_SSH_CONFIG").filter(|v| !v.is_empty()) {
            c.arg("-F").arg(cfg);
        }
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-l",
            &self.user,
        ]);
        if let Some(p) = self.port {
            c.arg("-p").arg(p.to_string());
        }
        c
    }

    /// `GET path` (HTTP/1.0) to `port` on the far host's loopback through ssh: the
    /// status and at most `limit` bytes of the body, within `budget`.
    pub(crate) fn http_get(
        &self,
        port: u16,
        path: &str,
        budget: std::time::Duration,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut child = self
            .forward(port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("ssh gave no pipes".into());
        };
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = stdin.write_all(request.as_bytes()).and_then(|()| {
                (&mut stdout)
                    .take(limit as u64 + 16 * 1024)
                    .read_to_end(&mut buf)
            });
            let _ = tx.send(r.map(|_| buf));
        });
        let got = rx.recv_timeout(budget);
        let _ = child.kill();
        let _ = child.wait();
        let raw = match got {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(format!("through ssh: {e}")),
            Err(_) => return Err(format!("no answer within {}s", budget.as_secs_f64())),
        };
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| "no HTTP response (nothing listens there?)".to_string())?;
        let status = std::str::from_utf8(&raw[..head_end])
            .ok()
            .and_then(|h| h.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "not an HTTP response".to_string())?;
        let mut body = raw[head_end + 4..].to_vec();
        body.truncate(limit);
        Ok((status, body))
    }
}

/// A private unix socket whose every connection is bridged to an ssh process.
pub(crate) struct Proxy {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    /// What the last ssh process said on stderr when it failed (host key refused,
    /// permission denied…), for the error that follows.
    last_error: Arc<Mutex<Option<String>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn start(target: &SshTarget) -> io::Result<Proxy> {
        let dir = tempfile::Builder::new().prefix("cascade-ssh-").tempdir()?;
        let listener = UnixListener::bind(dir.path().join("docker.sock"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(Mutex::new(None));
        let accept = {
            let (stop, last_error, target) = (stop.clone(), last_error.clone(), target.clone());
            std::thread::Builder::new()
                .name("cascade-ssh".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let last_error = last_error.clone();
                        let target = target.clone();
                        let _ = std::thread::Builder::new()
                            .name("cascade-ssh-conn".into())
                            .spawn(move || bridge(conn, &target, &last_error));
                    }
                })?
        };
        Ok(Proxy {
            dir,
            stop,
            last_error,
            accept: Some(accept),
        })
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(self.socket());
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies one connection both ways through a new ssh process, until either side ends.
fn bridge(conn: UnixStream, target: &SshTarget, last_error: &Mutex<Option<String>>) {
    let spawned = target
        .command()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child: Child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Ok(mut l) = last_error.lock() {
                *l = Some(format!("cannot run ssh: {e}"));
            }
            return;
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let Ok(mut from_client) = conn.try_clone() else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let mut to_client = conn;
    let up = std::thread::spawn(move || {
        let _ = copy(&mut from_client, &mut stdin);
        // The client is done sending: closing ssh's stdin tells the far end.
        drop(stdin);
    });
    let _ = copy(&mut stdout, &mut to_client);
    // ssh is done: what it said goes on record before the client sees the connection
    // close, so the error the client reports can quote it (a refused host key).
    let mut said = String::new();
    let _ = stderr.take(64 * 1024).read_to_string(&mut said);
    let status = child.wait();
    if status.is_ok_and(|s| !s.success()) && !said.trim().is_empty() {
        if let Ok(mut l) = last_error.lock() {
            *l = Some(said.trim().to_string());
        }
    }
    let _ = to_client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

/// Copies until the end, each read forwarded at once. A plain loop: with `io::copy`
/// (which may splice between a socket and a pipe) the first request never reached the
/// engine, and a request-response protocol needs every read passed on as it comes.
fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        total += n as u64;
    }
}

/// The socket path as bollard takes it.
pub(crate) fn unix_url(p: &Path) -> String {
    format!("unix://{}", p.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_need_a_user_and_a_plain_host() {
        assert_eq!(
            SshTarget::parse("ssh://deploy@node1.example.com:2222"),
            Ok(SshTarget {
                user: "deploy".into(),
                host: "node1.example.com".into(),
                port: Some(2222)
            })
        );
        assert_eq!(
            SshTarget::parse("ssh://root@127.0.0.1").map(|t| t.port),
            Ok(None)
        );
        assert!(SshTarget::parse("ssh://node1").is_err(), "no user");
        assert!(SshTarget::parse("ssh://@node1").is_err());
        assert!(SshTarget::parse("ssh://-oProxyCommand=x@h").is_err());
        assert!(SshTarget::parse("ssh://u@-oProxyCommand=x").is_err());
        assert!(SshTarget::parse("ssh://u@h:0").is_err());
        assert!(SshTarget::parse("ssh://u@h:99999").is_err());
        assert!(SshTarget::parse("ssh://u@h/path").is_err());
        assert!(SshTarget::parse("tcp://h").is_err());
    }
}
