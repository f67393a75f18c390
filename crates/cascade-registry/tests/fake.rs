//! Against fake registries that fail, stall and lie: retries, backoff limits, digest
//! checks, bearer tokens, and secrets kept out of every message. No service needed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cascade_registry::*;
use common::*;

fn fast(retries: u32) -> ClientOptions {
    ClientOptions {
        retries,
        initial_backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
    }
}

fn image() -> (
    tempfile::TempDir,
    cascade_image::OciLayout,
    cascade_image::ImageBuilt,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, image) = build_image(tmp.path(), "fake");
    (tmp, layout, image)
}

fn tags() -> Vec<String> {
    vec!["v1".to_string()]
}

#[test]
fn transient_503s_are_retried_until_the_push_succeeds() {
    let (_tmp, layout, image) = image();
    let reg = Arc::new(FakeRegistry::default());
    let seen = AtomicUsize::new(0);
    let r = reg.clone();
    let server = FakeServer::start(move |req| {
        // The first two requests fail, whatever they are.
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            return Reply::error(503, "UNAVAILABLE", "try later");
        }
        r.handle(req)
    });
    let c = Client::new(&server.addr, Credentials::None, fast(4));
    let report = c
        .push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap();
    let blobs = 1 + image.layers.len();
    assert_eq!(report.blobs_uploaded, blobs);
    // Per blob HEAD, POST, PUT; then two manifest PUTs; plus the two 503s.
    assert_eq!(server.requests().len(), 3 * blobs + 2 + 2);
    assert_eq!(
        reg.manifests.lock().unwrap().get("v1"),
        Some(&layout.read_blob(&image.manifest_digest).unwrap())
    );
}

#[test]
fn a_registry_that_always_fails_is_tried_retries_plus_one_times() {
    let (_tmp, layout, image) = image();
    let server = FakeServer::start(|_| Reply::error(500, "INTERNAL", "boom"));
    let c = Client::new(&server.addr, Credentials::None, fast(3));
    let err = c
        .push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap_err();
    assert_eq!(server.requests().len(), 4);
    match &err {
        // The first request is a HEAD: a status, no message.
        RegistryError::Unavailable { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert_eq!(last, "HTTP 500");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("failed 4 times"), "{err}");

    // A GET shows the registry's own message.
    let err = c.get_manifest("team/app", "v1").unwrap_err();
    assert_eq!(server.requests().len(), 8);
    match &err {
        RegistryError::Unavailable { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert_eq!(last, "HTTP 500: INTERNAL: boom");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_failed_upload_is_retried_on_a_new_session() {
    let (_tmp, layout, image) = image();
    let reg = Arc::new(FakeRegistry::default());
    let failed_puts = AtomicUsize::new(0);
    let r = reg.clone();
    let server = FakeServer::start(move |req| {
        if req.method == "PUT"
            && req.path().contains("/blobs/uploads/")
            && failed_puts.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Reply::status(502);
        }
        r.handle(req)
    });
    let c = Client::new(&server.addr, Credentials::None, fast(2));
    c.push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap();
    let posts = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1 + image.layers.len() + 1, "one extra session");
}

#[test]
fn other_client_errors_fail_at_once_with_the_registry_message() {
    let (_tmp, layout, image) = image();
    let reg = Arc::new(FakeRegistry::default());
    let r = reg.clone();
    let server = FakeServer::start(move |req| {
        if req.method == "PUT" && req.path().contains("/manifests/") {
            return Reply::error(400, "MANIFEST_INVALID", "manifest invalid");
        }
        r.handle(req)
    });
    let c = Client::new(&server.addr, Credentials::None, fast(4));
    let err = c
        .push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("MANIFEST_INVALID: manifest invalid"),
        "{err}"
    );
    let manifest_puts = server
        .requests()
        .iter()
        .filter(|r| r.path().contains("/manifests/"))
        .count();
    assert_eq!(manifest_puts, 1, "a 400 is not retried");
}

#[test]
fn a_wrong_manifest_digest_from_the_registry_is_an_error() {
    let (_tmp, layout, image) = image();
    let reg = Arc::new(FakeRegistry::default());
    let r = reg.clone();
    let lie = OciDigest::of(b"something else");
    let server = FakeServer::start(move |req| {
        if req.method == "PUT" && req.path().contains("/manifests/") {
            return Reply::status(201).header("Docker-Content-Digest", lie.to_string());
        }
        r.handle(req)
    });
    let c = Client::new(&server.addr, Credentials::None, fast(4));
    let err = c
        .push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&image.manifest_digest.to_string()), "{text}");
    assert!(text.contains(&lie.to_string()), "{text}");
    // The tag was never written: it comes after the manifest by digest.
    assert!(!server
        .requests()
        .iter()
        .any(|r| r.path().ends_with("/manifests/v1")));
}

/// The same lies, told to `get_blob` (to memory) and `get_blob_to_file` (streamed).
type Get<'a> = dyn Fn(&Client, &OciDigest, u64) -> Result<Vec<u8>, RegistryError> + 'a;

fn never_accepts_bytes_that_do_not_match(get: &Get<'_>) {
    let good = b"the real blob contents".to_vec();
    let digest = OciDigest::of(&good);
    let mode = Arc::new(AtomicUsize::new(0));
    let m = mode.clone();
    let g = good.clone();
    let server = FakeServer::start(move |_| match m.load(Ordering::SeqCst) {
        // Cut short: Content-Length says more than is sent.
        0 => Reply {
            truncate_to: Some(5),
            ..Reply::status(200).body(g.clone())
        },
        // Other bytes of the same length.
        1 => Reply::status(200).body(vec![b'x'; g.len()]),
        // A prefix, honestly labelled.
        2 => Reply::status(200).body(g[..5].to_vec()),
        _ => Reply::status(200).body(g.clone()),
    });
    let c = Client::new(&server.addr, Credentials::None, fast(2));

    let err = get(&c, &digest, 1 << 20).unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 3, .. }),
        "{err}"
    );

    mode.store(1, Ordering::SeqCst);
    let err = get(&c, &digest, 1 << 20).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest.to_string()), "{err}");

    mode.store(2, Ordering::SeqCst);
    let err = get(&c, &digest, 1 << 20).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    mode.store(3, Ordering::SeqCst);
    let err = get(&c, &digest, 4).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { limit: 4, .. }),
        "{err}"
    );
    assert_eq!(get(&c, &digest, 1 << 20).unwrap(), good);
    assert_eq!(get(&c, &digest, good.len() as u64).unwrap(), good);
}

#[test]
fn get_blob_never_accepts_bytes_that_do_not_match() {
    never_accepts_bytes_that_do_not_match(&|c, d, limit| c.get_blob("team/app", d, limit));
}

#[test]
fn get_blob_to_file_never_accepts_bytes_that_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    never_accepts_bytes_that_do_not_match(&|c, d, limit| {
        let size = c.get_blob_to_file("team/app", d, limit, &file)?;
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len() as u64, size);
        Ok(bytes)
    });
}

#[test]
fn get_manifest_checks_the_digest_it_was_asked_for() {
    let body = br#"{"schemaVersion":2}"#.to_vec();
    let right = OciDigest::of(&body);
    let b = body.clone();
    let server = FakeServer::start(move |req| {
        if req.path().ends_with("/manifests/lying-header") {
            return Reply::status(200)
                .header("Docker-Content-Digest", OciDigest::of(b"x").to_string())
                .body(b.clone());
        }
        Reply::status(200).body(b.clone())
    });
    let c = Client::new(&server.addr, Credentials::None, fast(0));
    assert_eq!(c.get_manifest("a", "v1").unwrap(), (right, body.clone()));
    assert_eq!(c.get_manifest("a", &right.to_string()).unwrap().0, right);
    let other = OciDigest::of(b"other");
    let err = c.get_manifest("a", &other.to_string()).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let err = c.get_manifest("a", "lying-header").unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[test]
fn a_stalled_request_times_out_and_is_retried() {
    let served = AtomicUsize::new(0);
    let server = FakeServer::start(move |_| {
        let reply =
            Reply::status(200).header("Docker-Content-Digest", OciDigest::of(b"m").to_string());
        if served.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply {
                delay: Some(Duration::from_secs(3)),
                ..reply
            };
        }
        reply
    });
    let c = Client::new(
        &server.addr,
        Credentials::None,
        ClientOptions {
            retries: 2,
            initial_backoff: Duration::from_millis(1),
            timeout: Duration::from_millis(300),
        },
    );
    let start = std::time::Instant::now();
    assert_eq!(
        c.manifest_digest("a", "v1").unwrap(),
        Some(OciDigest::of(b"m"))
    );
    assert_eq!(server.requests().len(), 2);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn nothing_listening_is_unavailable_after_the_retries() {
    // A port that was free a moment ago: connections are refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let c = Client::new(&addr, Credentials::None, fast(2));
    let err = c.manifest_digest("a", "v1").unwrap_err();
    assert!(
        matches!(err, RegistryError::Unavailable { attempts: 3, .. }),
        "{err}"
    );
    let diag: &dyn miette::Diagnostic = &err;
    assert!(diag
        .help()
        .is_some_and(|h| h.to_string().contains(".ci/services/registry.sh")));
}

#[test]
fn bearer_tokens_are_fetched_once_and_sent() {
    let (_tmp, layout, image) = image();
    let reg = Arc::new(FakeRegistry::default());
    let r = reg.clone();
    let realm = Arc::new(std::sync::Mutex::new(String::new()));
    let rl = realm.clone();
    let expected_basic = format!(
        "Basic {}",
        base64_encode(&format!("{AUTH_USER}:{AUTH_PASSWORD}"))
    );
    let server = FakeServer::start(move |req| {
        if req.path() == "/token" {
            if req.headers.get("authorization") != Some(&expected_basic) {
                return Reply::status(401);
            }
            return Reply::status(200).body(r#"{"token":"tok-123","expires_in":300}"#);
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer tok-123") {
            let scope = match req.method.as_str() {
                "HEAD" | "GET" => "pull",
                _ => "pull,push",
            };
            return Reply::status(401).header(
                "WWW-Authenticate",
                format!(
                    r#"Bearer realm="{}",service="fake-registry",scope="repository:team/app:{scope}""#,
                    rl.lock().unwrap()
                ),
            );
        }
        r.handle(req)
    });
    *realm.lock().unwrap() = format!("http://{}/token", server.addr);

    let c = Client::new(
        &server.addr,
        Credentials::Basic {
            username: AUTH_USER.into(),
            password: AUTH_PASSWORD.into(),
        },
        fast(0),
    );
    c.push(&layout, &image.manifest_digest, "team/app", &tags())
        .unwrap();
    let requests = server.requests();
    let token_requests: Vec<_> = requests.iter().filter(|r| r.path() == "/token").collect();
    assert_eq!(token_requests.len(), 1, "the token is cached");
    let t = token_requests[0];
    assert_eq!(t.query("service").as_deref(), Some("fake-registry"));
    assert!(
        t.target
            .contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush"),
        "{}",
        t.target
    );
    // One 401 (the first request), then everything with the token.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path() != "/token" && !r.headers.contains_key("authorization"))
            .count(),
        1
    );
    assert!(!format!("{c:?}").contains("tok-123"));
}

#[test]
fn a_registry_that_echoes_credentials_never_gets_them_into_a_message() {
    let password = "echo-me-if-you-can-77";
    let server = FakeServer::start(|req| {
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        if auth.is_empty() {
            return Reply::status(401).header("WWW-Authenticate", r#"Basic realm="x""#);
        }
        // A hostile or buggy registry quoting the header back, decoded too.
        let decoded = auth
            .strip_prefix("Basic ")
            .map(base64_decode)
            .unwrap_or_default();
        Reply::error(403, "DENIED", &format!("you sent {auth} ({decoded})"))
    });
    let c = Client::new(
        &server.addr,
        Credentials::Basic {
            username: "me".into(),
            password: password.into(),
        },
        fast(0),
    );
    let err = c.manifest_digest("a", "v1").unwrap_err();
    let err = match err {
        // HEAD has no body; GET shows the message.
        RegistryError::Rejected { .. } => c.get_manifest("a", "v1").unwrap_err(),
        other => other,
    };
    let text = format!("{err} | {err:?} | {c:?}");
    assert!(text.contains("DENIED"), "{text}");
    assert!(!text.contains(password), "{text}");
    assert!(
        !text.contains(&base64_encode(&format!("me:{password}"))),
        "{text}"
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn base64_decode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
