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
        c.arg("--")
            .arg(&self.host)
            .args(["docker", "system", "dial-stdio"]);
        c
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
    let _ = to_client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    let mut said = String::new();
    let _ = stderr.take(64 * 1024).read_to_string(&mut said);
    let status = child.wait();
    if status.is_ok_and(|s| !s.success()) && !said.trim().is_empty() {
        if let Ok(mut l) = last_error.lock() {
            *l = Some(said.trim().to_string());
        }
    }
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let n = io::copy(from, to)?;
    to.flush()?;
    Ok(n)
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
