//! Helpers shared by the integration tests: the real registries (or a skip), a small
//! image, a counting forwarder and a fake registry, all with std::net and threads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cascade_image::{
    assemble, entries_from_dir, ConfigSpec, ImageBuilt, ImageSpec, LayerSpec, OciDigest, OciLayout,
};

pub const AUTH_USER: &str = "cascade";
pub const AUTH_PASSWORD: &str = "cascade-test-password";

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The registry at `$env_var` (default `default`), if something listens there. Missing:
/// a skip with a message, or a failure under `CI=true`, where `.ci/run` starts it.
pub fn registry(env_var: &str, default: &str) -> Option<String> {
    let addr = std::env::var(env_var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string());
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(addr);
    }
    assert!(
        !in_ci(),
        "no registry on {addr}, and CI=true requires one: run .ci/services/registry.sh"
    );
    eprintln!("skipping: no registry on {addr} (run .ci/services/registry.sh)");
    None
}

pub fn open_registry() -> Option<String> {
    registry("CASCADE_TEST_REGISTRY", "127.0.0.1:5000")
}

pub fn auth_registry() -> Option<String> {
    registry("CASCADE_TEST_REGISTRY_AUTH", "127.0.0.1:5001")
}

/// Whether skopeo runs; the same skip-or-fail rule.
pub fn skopeo_available() -> bool {
    match Command::new("skopeo").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(
                !in_ci(),
                "skopeo is not installed, and CI=true requires it (apt-get install skopeo)"
            );
            eprintln!("skipping the skopeo check: skopeo not installed");
            false
        }
    }
}

/// A string unique to this process and call: repositories and image contents differ
/// from run to run, so a first push really uploads, even to a registry that persists.
pub fn nonce() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{t:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A two-layer image whose first layer holds `nonce`, in a layout under `root`.
pub fn build_image(root: &Path, nonce: &str) -> (OciLayout, ImageBuilt) {
    let app = root.join("src/app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::write(app.join("bin/hello"), format!("#!/bin/sh\necho {nonce}\n")).unwrap();
    std::fs::write(app.join("README"), b"cascade-registry test image\n").unwrap();
    let share = root.join("src/share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("data.txt"), b"the same in every run\n").unwrap();

    let layout = OciLayout::open_or_create(root.join("layout")).unwrap();
    let built = assemble(
        &layout,
        &ImageSpec {
            config: ConfigSpec {
                entrypoint: Some(vec!["/app/bin/hello".into()]),
                ..Default::default()
            },
            layers: vec![
                LayerSpec {
                    entries: entries_from_dir(&app, "/app", None).unwrap(),
                    created_by: "test: app".into(),
                    comment: None,
                },
                LayerSpec {
                    entries: entries_from_dir(&share, "/usr/share/test", None).unwrap(),
                    created_by: "test: share".into(),
                    comment: None,
                },
            ],
            source_date_epoch: 1_700_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    (layout, built)
}

// ---- a counting forwarder ----

/// Listens on 127.0.0.1:0 and forwards every connection to `upstream`, recording each
/// request line it passes on. Clients talk to it as if it were the registry (the Host
/// header is passed through, so the registry's upload URLs point back here).
pub struct Forwarder {
    pub addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Forwarder {
    pub fn start(upstream: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let log = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let upstream = upstream.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = forward(client, &upstream, &log);
                });
            }
        });
        Forwarder { addr, requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many `POST …/blobs/uploads/` (new upload sessions) went through.
    pub fn uploads(&self) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.starts_with("POST ") && l.contains("/blobs/uploads/"))
            .count()
    }
}

fn forward(client: TcpStream, upstream: &str, log: &Mutex<Vec<String>>) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let mut to_client = client.try_clone()?;
    let mut from_server = server.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut reader = BufReader::new(client);
    let mut to_server = server;
    // Requests are parsed (head, then a Content-Length body) so that only request
    // lines are counted, never bytes of a layer that happen to look like one.
    while let Some(head) = read_head(&mut reader)? {
        let first = head.lines().next().unwrap_or_default().to_string();
        log.lock().unwrap().push(first);
        let headers = parse_headers(&head);
        assert!(
            !headers
                .get("transfer-encoding")
                .is_some_and(|v| v.contains("chunked")),
            "the client sent a chunked body; the forwarder only handles Content-Length"
        );
        to_server.write_all(head.as_bytes())?;
        let len: u64 = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        io::copy(&mut (&mut reader).take(len), &mut to_server)?;
    }
    let _ = to_server.shutdown(Shutdown::Write);
    Ok(())
}

/// A request head up to and including the blank line, or `None` at a clean EOF.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Ok(Some(head));
        }
    }
}

fn parse_headers(head: &str) -> HashMap<String, String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

// ---- a fake HTTP server ----

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Lowercased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Declare the whole body's length but send only this many bytes, then close.
    pub truncate_to: Option<usize>,
    /// Wait this long before answering (to trigger the client's timeout).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Default::default()
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.body = b.into();
        self
    }

    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#
            ))
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1:0: one request per connection (`Connection:
/// close`), answered by `handler`; every request is recorded.
pub struct FakeServer {
    pub addr: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &*handler, &log);
                });
            }
        });
        FakeServer { addr, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers = parse_headers(&head);
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    let req = Request {
        method,
        target,
        headers,
        body,
    };
    log.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    if let Some(d) = reply.delay {
        std::thread::sleep(d);
    }
    let mut out = conn;
    let mut text = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    out.write_all(text.as_bytes())?;
    if req.method != "HEAD" {
        let n = reply.truncate_to.unwrap_or(reply.body.len());
        out.write_all(&reply.body[..n.min(reply.body.len())])?;
    }
    out.flush()?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

// ---- a fake registry on top of it ----

/// Enough of the distribution API for a push and reads: blobs, upload sessions (with
/// relative `Location`s), manifests. It verifies uploaded digests like a real one.
#[derive(Default)]
pub struct FakeRegistry {
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    pub manifests: Mutex<HashMap<String, Vec<u8>>>,
    uploads: AtomicUsize,
}

impl FakeRegistry {
    pub fn handle(&self, req: &Request) -> Reply {
        let path = req.path();
        if path == "/v2/" {
            return Reply::status(200);
        }
        if let Some((_, rest)) = path.split_once("/blobs/uploads/") {
            return match req.method.as_str() {
                "POST" => {
                    let n = self.uploads.fetch_add(1, Ordering::Relaxed);
                    let base = path.trim_end_matches('/');
                    Reply::status(202).header("Location", format!("{base}/{n}?_state=x"))
                }
                "PUT" if !rest.is_empty() => {
                    let Some(digest) = req.query("digest") else {
                        return Reply::error(400, "DIGEST_INVALID", "no digest");
                    };
                    if OciDigest::of(&req.body).to_string() != digest {
                        return Reply::error(400, "DIGEST_INVALID", "digest did not match");
                    }
                    self.blobs
                        .lock()
                        .unwrap()
                        .insert(digest.clone(), req.body.clone());
                    Reply::status(201).header("Docker-Content-Digest", digest)
                }
                _ => Reply::status(405),
            };
        }
        if let Some((_, digest)) = path.split_once("/blobs/") {
            return match self.blobs.lock().unwrap().get(digest) {
                Some(b) => Reply::status(200)
                    .header("Docker-Content-Digest", digest)
                    .body(b.clone()),
                None => Reply::error(404, "BLOB_UNKNOWN", "blob unknown"),
            };
        }
        if let Some((_, reference)) = path.split_once("/manifests/") {
            return match req.method.as_str() {
                "PUT" => {
                    let digest = OciDigest::of(&req.body).to_string();
                    let mut m = self.manifests.lock().unwrap();
                    m.insert(reference.to_string(), req.body.clone());
                    m.insert(digest.clone(), req.body.clone());
                    Reply::status(201).header("Docker-Content-Digest", digest)
                }
                _ => match self.manifests.lock().unwrap().get(reference) {
                    Some(b) => Reply::status(200)
                        .header("Docker-Content-Digest", OciDigest::of(b).to_string())
                        .body(b.clone()),
                    None => Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
                },
            };
        }
        Reply::status(404)
    }
}
