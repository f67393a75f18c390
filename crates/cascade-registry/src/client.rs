//! `Client`: one registry, its credentials, its cached tokens and the retry policy;
//! every request goes through [`Client::exchange`].

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::Body;

use crate::credentials::Credentials;
use crate::reference::{check_repository, check_tag};
use crate::{OciDigest, RegistryError};

/// The manifest media types we push and ask for.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Registries refuse manifests over 4 MiB; so do we, on the way in.
const MANIFEST_LIMIT: u64 = 4 << 20;
/// Error bodies and token responses are small; anything bigger is not worth reading.
const SMALL_BODY_LIMIT: u64 = 64 << 10;
/// No single backoff (nor a `Retry-After`) waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// How many times a failed request is tried again (so `retries + 1` attempts in
    /// all). Retried: HTTP 5xx and 429, timeouts, refused or broken connections.
    pub retries: u32,
    /// The wait before the first retry; doubled before each next one (no jitter, so a
    /// run behaves the same each time).
    pub initial_backoff: Duration,
    /// A request fails (and is retried) after this long without progress: connecting,
    /// or any single read or write. It does not cap a whole transfer, so a large layer
    /// on a slow link is not cut off while bytes still flow.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retries: 4,
            initial_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
        }
    }
}

/// A client for one registry. Cheap to share between threads (`&Client`); tokens are
/// cached inside.
pub struct Client {
    registry: String,
    /// `http://host:port` or `https://host:port`, no trailing slash.
    base: String,
    creds: Credentials,
    opts: ClientOptions,
    agent: ureq::Agent,
    auth: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    /// The registry asked for Basic auth once: send it on every request from then on.
    basic: bool,
    /// Bearer tokens by the scope they were asked for (a cache, never iterated).
    tokens: HashMap<String, String>,
}

/// Hand-written: never the password, never a token.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base", &self.base)
            .field("credentials", &self.creds)
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Head,
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Head => "HEAD",
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

pub(crate) enum ReqBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Streamed from the file, which is opened again for every attempt.
    File(&'a Path),
}

/// One request, as [`Client::exchange`] sends it (again, after a retry or a 401).
pub(crate) struct Req<'a> {
    pub method: Method,
    pub url: String,
    /// What the request is, for messages: method and path, never a query or a header.
    pub what: String,
    /// The token scope it needs (`repository:<name>:pull`); `None` for requests that do
    /// not negotiate auth (token requests, which carry their own).
    pub scope: Option<String>,
    /// An `Authorization` value to send as is (token requests).
    pub fixed_auth: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: ReqBody<'a>,
    /// A 404 goes to the caller instead of being an error.
    pub allow_404: bool,
    pub retries: u32,
}

/// What a caller's response handler decides.
pub(crate) enum Step<T> {
    Done(T),
    /// A transient failure of the response itself (a body cut short): try again.
    Retry(String),
}

impl Client {
    /// A client for `registry` (`host[:port]`). Plain `http://` for loopback hosts and
    /// for those listed in `CASCADE_INSECURE_REGISTRIES` (comma-separated `host[:port]`),
    /// `https://` otherwise.
    pub fn new(registry: &str, creds: Credentials, opts: ClientOptions) -> Client {
        let env = std::env::var("CASCADE_INSECURE_REGISTRIES").ok();
        let insecure = is_insecure(registry, env.as_deref());
        let scheme = if insecure { "http" } else { "https" };
        let mut config = ureq::Agent::config_builder()
            // Statuses are ours to interpret (401 → auth, 404 → absent, 5xx → retry).
            .http_status_as_error(false)
            .timeout_connect(Some(opts.timeout))
            .timeout_per_read(Some(opts.timeout))
            .timeout_per_write(Some(opts.timeout))
            // Blob downloads may be redirected to storage; credentials follow only to
            // the same host.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("cascade/", env!("CARGO_PKG_VERSION")))
            // Bytes exactly as stored (they are hashed), even if another crate in the
            // build turns on ureq's transparent gzip.
            .accept_encoding("identity");
        if is_loopback(registry) {
            // A proxy from the environment cannot reach our own loopback.
            config = config.proxy(None);
        }
        Client {
            registry: registry.to_string(),
            base: format!("{scheme}://{registry}"),
            creds,
            opts,
            agent: config.build().new_agent(),
            auth: Mutex::new(AuthState::default()),
        }
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The digest of the manifest `reference` (a tag or a digest) names, or `None` if
    /// the registry has none.
    pub fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<OciDigest>, RegistryError> {
        self.check_manifest_ref(repository, reference)?;
        let req = self.req(
            Method::Head,
            format!("/v2/{repository}/manifests/{reference}"),
            pull(repository),
        );
        let req = Req {
            headers: vec![("Accept", MANIFEST_ACCEPT.to_string())],
            allow_404: true,
            ..req
        };
        let header = self.exchange(&req, |resp| {
            if resp.status().as_u16() == 404 {
                return Ok(Step::Done(None));
            }
            Ok(Step::Done(Some(header(&resp, "docker-content-digest"))))
        })?;
        match header {
            None => Ok(None),
            Some(Some(d)) => OciDigest::parse(&d).map(Some).map_err(|_| {
                self.protocol(
                    &req.what,
                    format!("`Docker-Content-Digest` is `{d}`, not a sha256 digest"),
                )
            }),
            // No digest header (allowed by the spec for HEAD): hash the manifest itself.
            Some(None) => self
                .get_manifest(repository, reference)
                .map(|(d, _)| Some(d)),
        }
    }

    /// Every tag of the repository (none when the registry does not know it), following
    /// the `Link: <…>; rel="next"` pages of the distribution spec.
    pub fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        self.check_name(repository)?;
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut next = Some(format!("{}/v2/{repository}/tags/list?n=1000", self.base));
        while let Some(url) = next.take() {
            let req = Req {
                url,
                allow_404: true,
                ..self.req(
                    Method::Get,
                    format!("/v2/{repository}/tags/list"),
                    pull(repository),
                )
            };
            let page = self.exchange(&req, |mut resp| {
                if resp.status().as_u16() == 404 {
                    return Ok(Step::Done(None));
                }
                self.expect_status(&req.what, &resp, &[200])?;
                let link = header(&resp, "link");
                match resp
                    .body_mut()
                    .with_config()
                    .limit(TAGS_LIMIT)
                    .read_to_vec()
                {
                    Ok(b) => Ok(Step::Done(Some((b, link)))),
                    Err(e) => Ok(Step::Retry(format!(
                        "reading the body: {}",
                        self.scrub(&e.to_string())
                    ))),
                }
            })?;
            let Some((body, link)) = page else { break };
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(&req.what, format!("not a tag list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            if let Some(target) = link.as_deref().and_then(next_link) {
                next = Some(self.resolve_location(&req.what, target)?);
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Deletes the manifest `digest` (and so every tag naming it); `false` when the
    /// registry did not have it. A registry that forbids deletes refuses (an error).
    pub fn delete_manifest(
        &self,
        repository: &str,
        digest: &OciDigest,
    ) -> Result<bool, RegistryError> {
        self.check_name(repository)?;
        let req = Req {
            allow_404: true,
            ..self.req(
                Method::Delete,
                format!("/v2/{repository}/manifests/{digest}"),
                format!("repository:{repository}:pull,push,delete"),
            )
        };
        self.exchange(&req, |resp| match resp.status().as_u16() {
            404 => Ok(Step::Done(false)),
            _ => {
                self.expect_status(&req.what, &resp, &[200, 202])?;
                Ok(Step::Done(true))
            }
        })
    }

    /// Whether the repository has the blob.
    pub fn has_blob(&self, repository: &str, digest: &OciDigest) -> Result<bool, RegistryError> {
        self.check_name(repository)?;
        self.blob_exists(repository, digest, pull(repository))
    }

    pub(crate) fn blob_exists(
        &self,
        repository: &str,
        digest: &OciDigest,
        scope: String,
    ) -> Result<bool, RegistryError> {
        let req = Req {
            allow_404: true,
            ..self.req(
                Method::Head,
                format!("/v2/{repository}/blobs/{digest}"),
                scope,
            )
        };
        self.exchange(&req, |resp| Ok(Step::Done(resp.status().as_u16() != 404)))
    }

    /// The blob's bytes, at most `size_limit` of them, verified against `digest`.
    /// Anything else (too big, cut short, other bytes) is an error: a reader never gets
    /// bytes that do not hash to their name.
    pub fn get_blob(
        &self,
        repository: &str,
        digest: &OciDigest,
        size_limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let req = self.blob_request(repository, digest)?;
        let too_large = || RegistryError::TooLarge {
            digest: *digest,
            limit: size_limit,
        };
        let bytes = self.exchange(&req, |mut resp| {
            if resp.status().as_u16() == 404 {
                return Err(self.not_found(repository, &digest.to_string()));
            }
            self.expect_status(&req.what, &resp, &[200])?;
            // Refuse early what the registry says is too big.
            if resp.body().content_length().is_some_and(|n| n > size_limit) {
                return Err(too_large());
            }
            match resp
                .body_mut()
                .with_config()
                .limit(size_limit)
                .read_to_vec()
            {
                Ok(b) => Ok(Step::Done(b)),
                Err(ureq::Error::BodyExceedsLimit(_)) => Err(too_large()),
                Err(e) => Ok(Step::Retry(format!(
                    "reading the body: {}",
                    self.scrub(&e.to_string())
                ))),
            }
        })?;
        self.check_blob(repository, digest, &OciDigest::of(&bytes))?;
        Ok(bytes)
    }

    /// `GET /v2/<repository>/blobs/<digest>`, where a 404 is an answer.
    fn blob_request(&self, repository: &str, digest: &OciDigest) -> Result<Req<'_>, RegistryError> {
        self.check_name(repository)?;
        Ok(Req {
            allow_404: true,
            ..self.req(
                Method::Get,
                format!("/v2/{repository}/blobs/{digest}"),
                pull(repository),
            )
        })
    }

    /// Bytes that do not hash to the digest they were asked for are never accepted.
    fn check_blob(
        &self,
        repository: &str,
        digest: &OciDigest,
        actual: &OciDigest,
    ) -> Result<(), RegistryError> {
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("blob `{}/{repository}@{digest}`", self.registry),
                expected: *digest,
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Like [`Client::get_blob`], but streams the blob into `dest` (created or
    /// truncated, and truncated again for each retry) instead of memory; returns its
    /// size. On any error `dest` may hold a partial blob: the caller discards it.
    pub fn get_blob_to_file(
        &self,
        repository: &str,
        digest: &OciDigest,
        size_limit: u64,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let req = self.blob_request(repository, digest)?;
        let too_large = || RegistryError::TooLarge {
            digest: *digest,
            limit: size_limit,
        };
        let local = |source: std::io::Error| RegistryError::Write {
            path: dest.to_path_buf(),
            source,
        };
        let (actual, size) = self.exchange(&req, |mut resp| {
            if resp.status().as_u16() == 404 {
                return Err(self.not_found(repository, &digest.to_string()));
            }
            self.expect_status(&req.what, &resp, &[200])?;
            if resp.body().content_length().is_some_and(|n| n > size_limit) {
                return Err(too_large());
            }
            let file = File::create(dest).map_err(local)?;
            let mut w = cascade_image::HashingWriter::new(std::io::BufWriter::new(file));
            let mut body = resp.body_mut().as_reader();
            let mut buf = vec![0u8; 256 << 10];
            let mut n = 0u64;
            loop {
                // A read error is the network's (retried); a write error is ours
                // (disk full), which retrying would not help.
                let got = match body.read(&mut buf) {
                    Ok(got) => got,
                    Err(e) => {
                        return Ok(Step::Retry(format!(
                            "reading the body: {}",
                            self.scrub(&e.to_string())
                        )))
                    }
                };
                if got == 0 {
                    break;
                }
                n += got as u64;
                if n > size_limit {
                    return Err(too_large());
                }
                w.write_all(&buf[..got]).map_err(local)?;
            }
            let (mut inner, d, _) = w.finish();
            inner.flush().map_err(local)?;
            Ok(Step::Done((d, n)))
        })?;
        self.check_blob(repository, digest, &actual)?;
        Ok(size)
    }

    /// The manifest `reference` (a tag or a digest) names: its digest and its bytes.
    /// When `reference` is a digest, the bytes must hash to it; a `Docker-Content-Digest`
    /// that disagrees with the bytes is an error too.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(OciDigest, Vec<u8>), RegistryError> {
        self.check_manifest_ref(repository, reference)?;
        let req = Req {
            headers: vec![("Accept", MANIFEST_ACCEPT.to_string())],
            allow_404: true,
            ..self.req(
                Method::Get,
                format!("/v2/{repository}/manifests/{reference}"),
                pull(repository),
            )
        };
        let (claimed, bytes) = self.exchange(&req, |mut resp| {
            if resp.status().as_u16() == 404 {
                return Err(self.not_found(repository, reference));
            }
            self.expect_status(&req.what, &resp, &[200])?;
            let claimed = header(&resp, "docker-content-digest");
            match resp
                .body_mut()
                .with_config()
                .limit(MANIFEST_LIMIT)
                .read_to_vec()
            {
                Ok(b) => Ok(Step::Done((claimed, b))),
                Err(ureq::Error::BodyExceedsLimit(_)) => Err(self.protocol(
                    &req.what,
                    format!("the manifest is larger than {MANIFEST_LIMIT} bytes"),
                )),
                Err(e) => Ok(Step::Retry(format!(
                    "reading the body: {}",
                    self.scrub(&e.to_string())
                ))),
            }
        })?;
        let actual = OciDigest::of(&bytes);
        let what = || format!("manifest `{}/{repository}:{reference}`", self.registry);
        if let Ok(expected) = OciDigest::parse(reference) {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    what: what(),
                    expected,
                    actual: actual.to_string(),
                });
            }
        }
        if let Some(c) = claimed {
            if c != actual.to_string() {
                return Err(RegistryError::DigestMismatch {
                    what: what(),
                    expected: actual,
                    actual: c,
                });
            }
        }
        Ok((actual, bytes))
    }

    // ---- the request machinery ----

    pub(crate) fn check_name(&self, repository: &str) -> Result<(), RegistryError> {
        check_repository(repository).map_err(|reason| RegistryError::InvalidReference {
            reference: format!("{}/{repository}", self.registry),
            reason: reason.to_string(),
        })
    }

    /// A request to `path` on this registry, with the defaults.
    pub(crate) fn req(&self, method: Method, path: String, scope: String) -> Req<'static> {
        Req {
            method,
            url: format!("{}{path}", self.base),
            what: format!("`{} {path}`", method.as_str()),
            scope: Some(scope),
            fixed_auth: None,
            headers: Vec::new(),
            body: ReqBody::Empty,
            allow_404: false,
            retries: self.opts.retries,
        }
    }

    /// An absolute URL for a `Location` header (absolute, or a path on this registry).
    pub(crate) fn resolve_location(&self, what: &str, loc: &str) -> Result<String, RegistryError> {
        if loc.starts_with("https://") || loc.starts_with("http://") {
            Ok(loc.to_string())
        } else if loc.starts_with('/') {
            Ok(format!("{}{loc}", self.base))
        } else {
            Err(self.protocol(what, format!("`Location: {loc}` is not a URL")))
        }
    }

    pub(crate) fn retries(&self) -> u32 {
        self.opts.retries
    }

    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.opts
            .initial_backoff
            .checked_mul(factor)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }

    /// Sends `req` until it gets an answer `handle` accepts: negotiates auth on a 401
    /// (once per call: a second 401 is `Unauthorized`), retries transient failures with
    /// backoff, and turns other 4xx statuses into `Rejected` with the registry's message.
    pub(crate) fn exchange<T>(
        &self,
        req: &Req<'_>,
        mut handle: impl FnMut(Response<Body>) -> Result<Step<T>, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut failures = 0u32;
        let mut authenticated = false;
        loop {
            let mut retry_after = None;
            let why = match self.send(req)? {
                Err(e) if retryable(&e) => self.scrub(&e.to_string()),
                Err(e) => {
                    return Err(RegistryError::Transport {
                        registry: self.registry.clone(),
                        what: req.what.clone(),
                        message: self.scrub(&e.to_string()),
                    })
                }
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    match status {
                        401 => {
                            let challenge = resp
                                .headers()
                                .get_all("www-authenticate")
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .map(str::to_string)
                                .collect::<Vec<_>>();
                            match &req.scope {
                                Some(scope) if !authenticated => {
                                    self.authenticate(&challenge, scope)?;
                                    authenticated = true;
                                    // Not a failure: the next attempt carries credentials.
                                    continue;
                                }
                                _ => return Err(self.unauthorized()),
                            }
                        }
                        404 if req.allow_404 => match handle(resp)? {
                            Step::Done(t) => return Ok(t),
                            Step::Retry(why) => why,
                        },
                        429 | 500..=599 => {
                            retry_after = resp
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .map(Duration::from_secs);
                            format!("HTTP {status}{}", self.error_message(&mut resp, ": "))
                        }
                        400..=499 => {
                            return Err(RegistryError::Rejected {
                                registry: self.registry.clone(),
                                what: req.what.clone(),
                                status,
                                message: match self.error_message(&mut resp, "") {
                                    m if m.is_empty() => "(no message)".to_string(),
                                    m => m,
                                },
                            })
                        }
                        _ => match handle(resp)? {
                            Step::Done(t) => return Ok(t),
                            Step::Retry(why) => why,
                        },
                    }
                }
            };
            if failures >= req.retries {
                return Err(RegistryError::Unavailable {
                    registry: self.registry.clone(),
                    what: req.what.clone(),
                    attempts: failures + 1,
                    last: why,
                });
            }
            let wait = self.backoff(failures).max(retry_after.unwrap_or_default());
            std::thread::sleep(wait.min(MAX_BACKOFF));
            failures += 1;
        }
    }

    /// One HTTP exchange. The outer error is local (a file to upload); the inner one is
    /// the transport's.
    fn send(&self, req: &Req<'_>) -> Result<Result<Response<Body>, ureq::Error>, RegistryError> {
        let auth = match &req.fixed_auth {
            Some(a) => Some(a.clone()),
            None => self.authorization(req),
        };
        let headers = req
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(auth.as_deref().map(|a| ("Authorization", a)));
        Ok(match req.method {
            Method::Head => with_headers(self.agent.head(&req.url), headers).call(),
            Method::Get => with_headers(self.agent.get(&req.url), headers).call(),
            Method::Delete => with_headers(self.agent.delete(&req.url), headers).call(),
            Method::Post | Method::Put => {
                let b = if req.method == Method::Post {
                    self.agent.post(&req.url)
                } else {
                    self.agent.put(&req.url)
                };
                let b = with_headers(b, headers);
                match &req.body {
                    ReqBody::Empty => b.send_empty(),
                    ReqBody::Bytes(bytes) => b.send(*bytes),
                    ReqBody::File(path) => {
                        // ureq sends a `File` with its length as Content-Length.
                        let f = File::open(path).map_err(|source| RegistryError::Io {
                            path: path.to_path_buf(),
                            source,
                        })?;
                        b.send(f)
                    }
                }
            }
        })
    }

    /// The `Authorization` value this request carries, if any: a token cached for its
    /// scope, else Basic once the registry asked for it. Never sent to another origin.
    fn authorization(&self, req: &Req<'_>) -> Option<String> {
        let scope = req.scope.as_ref()?;
        if !self.same_origin(&req.url) {
            return None;
        }
        let state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = state.tokens.get(scope) {
            return Some(format!("Bearer {t}"));
        }
        if state.basic {
            return self.creds.basic_header();
        }
        None
    }

    fn same_origin(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }

    /// Answers a `WWW-Authenticate` challenge: remembers Basic, or fetches a Bearer token
    /// for `scope` and caches it.
    fn authenticate(&self, challenges: &[String], scope: &str) -> Result<(), RegistryError> {
        let parsed: Vec<Challenge> = challenges
            .iter()
            .filter_map(|c| parse_challenge(c))
            .collect();
        if let Some(bearer) = parsed
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        {
            let token = self.fetch_token(bearer, scope)?;
            let mut state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
            state.tokens.insert(scope.to_string(), token);
            return Ok(());
        }
        // Basic, or no challenge we understand: credentials are all we can offer.
        if parsed.is_empty()
            || parsed
                .iter()
                .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            if self.creds.is_none() {
                return Err(self.unauthorized());
            }
            let mut state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
            // A stale token for this scope would otherwise shadow Basic.
            state.tokens.remove(scope);
            state.basic = true;
            return Ok(());
        }
        Err(RegistryError::Protocol {
            registry: self.registry.clone(),
            what: "a 401 answer".into(),
            message: "its `WWW-Authenticate` names neither Basic nor Bearer".into(),
        })
    }

    /// A manifest reference is a tag or a digest; nothing else may reach a URL path.
    fn check_manifest_ref(&self, repository: &str, reference: &str) -> Result<(), RegistryError> {
        self.check_name(repository)?;
        if OciDigest::parse(reference).is_ok() {
            return Ok(());
        }
        check_tag(reference).map_err(|reason| RegistryError::InvalidReference {
            reference: format!("{}/{repository}:{reference}", self.registry),
            reason: format!("{reason} (or use a `sha256:` digest)"),
        })
    }

    /// GETs a token from the challenge's realm (with Basic auth when we have
    /// credentials, anonymously otherwise) for the challenge's scope and ours.
    fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<String, RegistryError> {
        let what = "the token request".to_string();
        let Some(realm) = challenge.param("realm") else {
            return Err(self.protocol(&what, "the Bearer challenge has no realm".into()));
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(self.protocol(&what, format!("the Bearer realm `{realm}` is not a URL")));
        }
        let mut query = Vec::new();
        if let Some(s) = challenge.param("service") {
            query.push(format!("service={}", encode_query(s)));
        }
        // The registry's scope first; ours too when it differs (push needs pull,push
        // while a HEAD's challenge may ask for pull only), so one token serves both.
        let theirs = challenge.param("scope");
        if let Some(s) = theirs {
            query.push(format!("scope={}", encode_query(s)));
        }
        if theirs != Some(scope) && !scope.is_empty() {
            query.push(format!("scope={}", encode_query(scope)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}{sep}{}", query.join("&"))
        };
        let req = Req {
            method: Method::Get,
            url,
            what: what.clone(),
            scope: None,
            fixed_auth: self.creds.basic_header(),
            headers: Vec::new(),
            body: ReqBody::Empty,
            allow_404: false,
            retries: self.opts.retries,
        };
        self.exchange(&req, |mut resp| {
            self.expect_status(&what, &resp, &[200])?;
            let body = match resp
                .body_mut()
                .with_config()
                .limit(SMALL_BODY_LIMIT)
                .read_to_vec()
            {
                Ok(b) => b,
                Err(e) => return Ok(Step::Retry(self.scrub(&e.to_string()))),
            };
            #[derive(serde::Deserialize)]
            struct TokenResponse {
                token: Option<String>,
                access_token: Option<String>,
            }
            // The body holds the token: its parse errors are not quoted.
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                self.protocol(&what, "the token response is not the expected JSON".into())
            })?;
            match parsed.token.or(parsed.access_token) {
                Some(t) if !t.is_empty() => Ok(Step::Done(t)),
                _ => Err(self.protocol(&what, "the token response has no `token`".into())),
            }
        })
    }

    pub(crate) fn expect_status(
        &self,
        what: &str,
        resp: &Response<Body>,
        ok: &[u16],
    ) -> Result<(), RegistryError> {
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            Ok(())
        } else {
            Err(self.protocol(what, format!("HTTP {status}, expected {ok:?}")))
        }
    }

    pub(crate) fn protocol(&self, what: &str, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            what: what.to_string(),
            message: self.scrub(&message),
        }
    }

    fn not_found(&self, repository: &str, reference: &str) -> RegistryError {
        RegistryError::NotFound {
            registry: self.registry.clone(),
            repository: repository.to_string(),
            reference: reference.to_string(),
        }
    }

    fn unauthorized(&self) -> RegistryError {
        let hint = if self.creds.is_none() {
            format!(
                "it needs credentials: set CASCADE_REGISTRY_AUTH=user:password, or run `docker login {}`",
                self.registry
            )
        } else {
            format!(
                "the credentials were refused: check CASCADE_REGISTRY_AUTH, or run `docker login {}` again",
                self.registry
            )
        };
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            hint,
        }
    }

    /// The registry's error document as `CODE: message; …` (or the start of whatever
    /// it sent), prefixed with `prefix` when there is anything to say.
    fn error_message(&self, resp: &mut Response<Body>, prefix: &str) -> String {
        let body = resp
            .body_mut()
            .with_config()
            .limit(SMALL_BODY_LIMIT)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorEntry>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorEntry {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let text = match serde_json::from_slice::<Errors>(&body) {
            Ok(e) if !e.errors.is_empty() => e
                .errors
                .iter()
                .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (false, true) => e.code.clone(),
                    _ => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
                .trim()
                .to_string(),
        };
        if text.is_empty() {
            String::new()
        } else {
            format!("{prefix}{}", self.scrub(&text))
        }
    }

    /// Removes every form of our secrets from a text that came from elsewhere (a
    /// registry's message, a transport error), in case one echoes them.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.creds.secrets() {
            if !s.is_empty() {
                out = out.replace(&s, "<redacted>");
            }
        }
        let state = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        for t in state.tokens.values() {
            if !t.is_empty() {
                out = out.replace(t.as_str(), "<redacted>");
            }
        }
        out
    }
}

fn with_headers<'h, B>(
    mut b: ureq::RequestBuilder<B>,
    headers: impl Iterator<Item = (&'static str, &'h str)>,
) -> ureq::RequestBuilder<B> {
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b
}

pub(crate) fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

pub(crate) fn pull(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Transient transport failures: worth another attempt.
fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    )
}

/// The host of `host[:port]` (or `[v6]:port`).
fn host_of(registry: &str) -> &str {
    if let Some(v6) = registry.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether to speak plain HTTP to `registry`: loopback, or listed (as `host[:port]` or
/// `host`) in `insecure_list`, the value of `CASCADE_INSECURE_REGISTRIES`.
pub(crate) fn is_insecure(registry: &str, insecure_list: Option<&str>) -> bool {
    is_loopback(registry)
        || insecure_list.is_some_and(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .any(|e| {
                    e.eq_ignore_ascii_case(registry) || e.eq_ignore_ascii_case(host_of(registry))
                })
        })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn encode_query_value(s: &str) -> String {
    encode_query(s)
}

/// One `WWW-Authenticate` challenge: `Scheme k="v", k2=v2`.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"`:
/// quoted values may hold commas and `\`-escapes.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key.to_string(), value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// The target of a `Link` header's `rel="next"` entry (`<url>; rel="next"`).
fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

/// A tag list page is small JSON; anything this big is not one.
const TAGS_LIMIT: u64 = 16 << 20;

#[cfg(test)]
mod tests {
    #[test]
    fn the_next_page_is_the_link_marked_next() {
        use super::next_link;
        assert_eq!(
            next_link(r#"</v2/r/tags/list?n=2&last=b>; rel="next""#),
            Some("/v2/r/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel="next""#),
            Some("https://x/b")
        );
        assert_eq!(next_link(r#"</v2/r/tags/list?n=2>; rel="prev""#), None);
    }

    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c.param("service"), Some("registry.example.com"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));

        let c = parse_challenge(r#"Basic realm="cascade \"test\"", charset=UTF-8"#).unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some(r#"cascade "test""#));
        assert_eq!(c.param("charset"), Some("UTF-8"));

        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        for r in [
            "127.0.0.1:5000",
            "localhost",
            "LOCALHOST:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_insecure(r, None), "{r}");
        }
        assert!(!is_insecure("registry.example.com", None));
        assert!(!is_insecure("10.0.0.1:5000", Some("10.0.0.2:5000, other")));
        assert!(is_insecure("10.0.0.1:5000", Some("x, 10.0.0.1:5000")));
        assert!(is_insecure("reg.lan:5000", Some("reg.lan")));
        assert!(!is_insecure("reg.lan:5000", Some("reg.lan:6000")));

        let c = Client::new(
            "registry.example.com",
            Credentials::None,
            ClientOptions::default(),
        );
        assert_eq!(c.base, "https://registry.example.com");
        let c = Client::new(
            "127.0.0.1:5000",
            Credentials::None,
            ClientOptions::default(),
        );
        assert_eq!(c.base, "http://127.0.0.1:5000");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = Client::new(
            "127.0.0.1:1",
            Credentials::None,
            ClientOptions {
                initial_backoff: Duration::from_millis(200),
                ..Default::default()
            },
        );
        let waits: Vec<u128> = (0..4).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600]);
        assert_eq!(c.backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_client_is_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
    }

    #[test]
    fn manifest_references_are_tags_or_digests() {
        let c = Client::new("127.0.0.1:1", Credentials::None, ClientOptions::default());
        for bad in ["../x", "a/b", "", "sha256:zz", "v1?x=1"] {
            let err = c.manifest_digest("repo", bad).unwrap_err();
            assert!(
                matches!(err, RegistryError::InvalidReference { .. }),
                "{bad}: {err}"
            );
        }
        let err = c.get_manifest("Bad_Repo", "v1").unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidReference { .. }),
            "{err}"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn origin_check_does_not_match_a_longer_host() {
        let c = Client::new(
            "127.0.0.1:5000",
            Credentials::None,
            ClientOptions::default(),
        );
        assert!(c.same_origin("http://127.0.0.1:5000/v2/x"));
        assert!(!c.same_origin("http://127.0.0.1:50001/v2/x"));
        assert!(!c.same_origin("https://127.0.0.1:5000/v2/x"));
    }
}
