//! [IO] The Remote Execution API (REAPI v2, bazelbuild/remote-apis) behind a small
//! blocking API, for any engine that speaks it (BuildGrid, Buildbarn, BuildBuddy,
//! NativeLink, EngFlow).
//!
//! - [`Client`]: capabilities, the CAS (missing blobs first, batches within the
//!   server's limit, ByteStream for big blobs; every blob read is checked against its
//!   sha256 and size before anyone sees it), the action cache, and `Execute` with
//!   `WaitExecution` when the stream breaks;
//! - [`merkle`]: directories on disk as REAPI `Directory` trees, output paths as an
//!   `ActionResult`'s outputs, and both back onto disk;
//! - [`bots`]: the Remote Workers API (`google.devtools.remoteworkers.v1test2`), which
//!   `bazel-remote-apis` lacks: what a worker speaks to BuildGrid's scheduler.
//!
//! gRPC is async; the client owns a private tokio runtime and blocks on it, so the rest
//! of cascade stays threads (as cascade-docker does for bollard).

pub mod bots;
pub mod merkle;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use cascade_image::OciDigest;
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use re::{Action, ActionResult, Command, Digest, Directory};

/// The generated messages, for callers that build Actions and Commands.
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as proto;
pub use bazel_remote_apis::google::protobuf::{Any, Duration as ProtoDuration, Timestamp};
pub use bazel_remote_apis::google::rpc::Status as RpcStatus;
pub use prost;
pub use tonic::Code;

/// What went wrong talking to the engine. Never holds the bearer token.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ReapiError {
    #[error("`{url}` is not a remote: {why}")]
    #[diagnostic(
        code(cascade::remote_url),
        help("write `grpc://HOST:PORT[/INSTANCE]`, or `grpcs://` for TLS")
    )]
    Url { url: String, why: String },
    #[error("{call} on {url}: {message}")]
    Call {
        url: String,
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{call} on {url}: no answer within {secs} s")]
    Timeout {
        url: String,
        call: &'static str,
        secs: u64,
    },
    #[error("{url} sent {what}")]
    Bad { url: String, what: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ReapiError {
    /// The gRPC code of a failed call (`Unknown` for everything that is not a call).
    pub fn code(&self) -> tonic::Code {
        match self {
            ReapiError::Call { code, .. } => *code,
            ReapiError::Timeout { .. } => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Unknown,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReapiError {
        let what = what.into();
        move |source| ReapiError::Io { what, source }
    }
}

/// `grpc://HOST:PORT[/INSTANCE]` or `grpcs://…`, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The REAPI instance name (may be empty, and may contain `/`).
    pub instance: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ReapiError> {
        let bad = |why: &str| ReapiError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("grpcs://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("grpc://") {
            (false, r)
        } else {
            return Err(bad("it must start with `grpc://` or `grpcs://`"));
        };
        let (authority, instance) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad(
                "credentials do not go in the URL: set CASCADE_REMOTE_TOKEN",
            ));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| bad("it needs a port: `grpc://HOST:PORT`"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("`{port}` is not a port")))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        {
            return Err(bad(&format!("`{host}` is not a host name")));
        }
        let instance = instance.trim_end_matches('/').to_string();
        if instance.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("an instance name has no `.` or `..` parts"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            tls,
            instance,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "grpcs" } else { "grpc" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)?;
        if !self.instance.is_empty() {
            write!(f, "/{}", self.instance)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bearer token (`CASCADE_REMOTE_TOKEN`), sent as `authorization`, never printed.
    pub token: Option<String>,
    /// A PEM file of the engine's CA, for `grpcs://` to an engine with its own CA.
    pub ca: Option<std::path::PathBuf>,
    /// Connecting, and each unary call.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            ca: None,
            timeout: Duration::from_secs(20),
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(crate) type Chan = InterceptedService<Channel, Auth>;

/// The server's limits, from `GetCapabilities`.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// The most bytes one batch call may carry (0: no limit said; we use 4 MiB).
    pub max_batch: usize,
    pub exec_enabled: bool,
    pub sha256: bool,
    pub update_enabled: bool,
}

/// The messages gRPC decodes may be this big (trees of big outputs; BuildGrid's own
/// limit is near 4 MiB anyway).
const MAX_MESSAGE: usize = 64 << 20;
/// What a batch carries at most when the server names no limit, and the room left for
/// the framing of each blob in a batch.
const DEFAULT_BATCH: usize = 4 << 20;
const PER_BLOB_OVERHEAD: usize = 256;
/// ByteStream chunks.
const CHUNK: usize = 1 << 20;

/// A blocking REAPI client for one endpoint (cheap to share across threads).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    rt: tokio::runtime::Runtime,
    channel: Chan,
    endpoint: Endpoint,
    timeout: Duration,
    caps: OnceLock<Capabilities>,
}

/// Where an upload's bytes are.
pub enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// `Digest` of bytes, sha256 as REAPI's engines want.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest {
        hash: OciDigest::of(bytes).hex(),
        size_bytes: bytes.len() as i64,
    }
}

/// The digest of a message as it is encoded.
pub fn digest_of_message(m: &impl Message) -> (Digest, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// `hash/size`, how digests are printed and named in ByteStream.
pub fn show(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

impl Client {
    /// A client for `endpoint`; connects lazily, so an engine that is down costs the
    /// first call, not this.
    pub fn new(endpoint: &Endpoint, opts: &Options) -> Result<Client, ReapiError> {
        let url = endpoint.to_string();
        let bad = |why: String| ReapiError::Url {
            url: url.clone(),
            why,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cascade-reapi")
            .enable_all()
            .build()
            .map_err(ReapiError::io("start the gRPC runtime"))?;
        let scheme = if endpoint.tls { "https" } else { "http" };
        let mut ep = tonic::transport::Endpoint::from_shared(format!(
            "{scheme}://{}:{}",
            endpoint.host, endpoint.port
        ))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(opts.timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
        if endpoint.tls {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .domain_name(endpoint.host.clone())
                .with_native_roots();
            if let Some(ca) = &opts.ca {
                // Bounded: certificates are a few KiB.
                const CA_LIMIT: u64 = 1 << 20;
                let mut pem = Vec::new();
                std::fs::File::open(ca)
                    .and_then(|f| {
                        std::io::Read::read_to_end(
                            &mut std::io::Read::take(f, CA_LIMIT + 1),
                            &mut pem,
                        )
                    })
                    .map_err(ReapiError::io(format!("read the CA `{}`", ca.display())))?;
                if pem.len() as u64 > CA_LIMIT {
                    return Err(bad(format!(
                        "the CA `{}` is larger than 1 MiB",
                        ca.display()
                    )));
                }
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        let token = match &opts.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| bad("the token is not printable ASCII".into()))?,
            ),
            None => None,
        };
        // connect_lazy needs the runtime it will run on.
        let channel = {
            let _guard = rt.enter();
            ep.connect_lazy()
        };
        Ok(Client {
            inner: Arc::new(Inner {
                rt,
                channel: InterceptedService::new(channel, Auth(token)),
                endpoint: endpoint.clone(),
                timeout: opts.timeout,
                caps: OnceLock::new(),
            }),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub fn instance(&self) -> &str {
        &self.inner.endpoint.instance
    }

    pub(crate) fn channel(&self) -> Chan {
        self.inner.channel.clone()
    }

    /// Runs `f` on the runtime, bounded by `timeout`.
    pub(crate) fn block<T>(
        &self,
        call: &'static str,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, ReapiError> {
        let url = self.inner.endpoint.to_string();
        // The timer must be made inside the runtime.
        match self
            .inner
            .rt
            .block_on(async move { tokio::time::timeout(timeout, f).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(s)) => Err(ReapiError::Call {
                url,
                call,
                code: s.code(),
                message: status_message(&s),
            }),
            Err(_) => Err(ReapiError::Timeout {
                url,
                call,
                secs: timeout.as_secs(),
            }),
        }
    }

    /// A digest as the server sent it: 64 lowercase hex digits and a size that is not
    /// negative, or nothing is asked for with it.
    pub fn check(&self, d: &Digest) -> Result<(), ReapiError> {
        let hex = d.hash.len() == 64
            && d.hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || d.size_bytes < 0 {
            return Err(self.bad(format!("a digest that is not one (`{}`)", show(d))));
        }
        Ok(())
    }

    fn bad(&self, what: impl Into<String>) -> ReapiError {
        ReapiError::Bad {
            url: self.inner.endpoint.to_string(),
            what: what.into(),
        }
    }

    fn cas(&self) -> re::content_addressable_storage_client::ContentAddressableStorageClient<Chan> {
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn bytestream(&self) -> bs::byte_stream_client::ByteStreamClient<Chan> {
        bs::byte_stream_client::ByteStreamClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn ac(&self) -> re::action_cache_client::ActionCacheClient<Chan> {
        re::action_cache_client::ActionCacheClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// `GetCapabilities`, asked once per client.
    pub fn capabilities(&self) -> Result<Capabilities, ReapiError> {
        if let Some(c) = self.inner.caps.get() {
            return Ok(c.clone());
        }
        let mut client = re::capabilities_client::CapabilitiesClient::new(self.channel());
        let instance = self.instance().to_string();
        let caps = self.block("GetCapabilities", self.inner.timeout, async move {
            client
                .get_capabilities(re::GetCapabilitiesRequest {
                    instance_name: instance,
                })
                .await
                .map(|r| r.into_inner())
        })?;
        let cache = caps.cache_capabilities.unwrap_or_default();
        let sha256 = re::digest_function::Value::Sha256 as i32;
        let exec = caps.execution_capabilities.unwrap_or_default();
        let c = Capabilities {
            // Within what we decode too, whatever the server says.
            max_batch: match usize::try_from(cache.max_batch_total_size_bytes) {
                Ok(0) | Err(_) => DEFAULT_BATCH,
                Ok(n) => n.min(MAX_MESSAGE / 2),
            },
            exec_enabled: exec.exec_enabled,
            // An engine that lists none speaks sha256 (the API's default).
            sha256: cache.digest_functions.is_empty() || cache.digest_functions.contains(&sha256),
            update_enabled: cache
                .action_cache_update_capabilities
                .is_some_and(|u| u.update_enabled),
        };
        Ok(self.inner.caps.get_or_init(|| c).clone())
    }

    /// The digests of `digests` that the CAS lacks.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ReapiError> {
        let mut missing = Vec::new();
        // Request size stays well under any server's limit: ~80 bytes a digest.
        for chunk in digests.chunks(10_000) {
            let mut cas = self.cas();
            let req = re::FindMissingBlobsRequest {
                instance_name: self.instance().to_string(),
                blob_digests: chunk.to_vec(),
                digest_function: 0,
            };
            let got = self.block("FindMissingBlobs", self.inner.timeout, async move {
                cas.find_missing_blobs(req).await.map(|r| r.into_inner())
            })?;
            missing.extend(got.missing_blob_digests);
        }
        Ok(missing)
    }

    /// Uploads the blobs the CAS lacks: small ones in batches within the server's
    /// limit, big ones through ByteStream.
    pub fn upload(&self, blobs: &[(Digest, Blob<'_>)]) -> Result<usize, ReapiError> {
        let mut wanted: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
        wanted.sort_by(|a, b| a.hash.cmp(&b.hash));
        wanted.dedup();
        let missing: std::collections::BTreeSet<String> = self
            .find_missing(&wanted)?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let max = self.capabilities()?.max_batch;
        let mut batch: Vec<re::batch_update_blobs_request::Request> = Vec::new();
        let mut batch_size = 0;
        let mut sent = std::collections::BTreeSet::new();
        for (d, blob) in blobs {
            if !missing.contains(&d.hash) || !sent.insert(d.hash.clone()) {
                continue;
            }
            let size = usize::try_from(d.size_bytes).map_err(|_| self.bad("a negative size"))?;
            if !in_batch(d.size_bytes, max / 2) {
                self.write_stream(d, blob)?;
                continue;
            }
            if batch_size + size + PER_BLOB_OVERHEAD > max {
                self.batch_update(std::mem::take(&mut batch))?;
                batch_size = 0;
            }
            let data = match blob {
                Blob::Bytes(b) => b.to_vec(),
                Blob::File(p) => read_exactly(p, d)?,
            };
            if data.len() != size {
                return Err(changed(d));
            }
            batch_size += size + PER_BLOB_OVERHEAD;
            batch.push(re::batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data,
                compressor: 0,
            });
        }
        if !batch.is_empty() {
            self.batch_update(batch)?;
        }
        Ok(sent.len())
    }

    fn batch_update(
        &self,
        requests: Vec<re::batch_update_blobs_request::Request>,
    ) -> Result<(), ReapiError> {
        let mut cas = self.cas();
        let req = re::BatchUpdateBlobsRequest {
            instance_name: self.instance().to_string(),
            requests,
            digest_function: 0,
        };
        let got = self.block("BatchUpdateBlobs", self.inner.timeout * 3, async move {
            cas.batch_update_blobs(req).await.map(|r| r.into_inner())
        })?;
        for r in got.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                return Err(self.bad(format!(
                    "an error for {}: {}",
                    r.digest.as_ref().map(show).unwrap_or_default(),
                    s.message
                )));
            }
        }
        Ok(())
    }

    fn write_stream(&self, d: &Digest, blob: &Blob<'_>) -> Result<(), ReapiError> {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            prefix(self.instance()),
            uuid::Uuid::new_v4(),
            d.hash,
            d.size_bytes
        );
        // Chunks are read as they are sent: a big layer is never whole in memory. A file
        // that does not have the digest's size by its end is refused.
        let total = u64::try_from(d.size_bytes).map_err(|_| self.bad("a negative size"))?;
        let mut source: Box<dyn std::io::Read + Send> = match blob {
            Blob::Bytes(b) => Box::new(std::io::Cursor::new(b.to_vec())),
            Blob::File(p) => Box::new(
                std::fs::File::open(p)
                    .map_err(ReapiError::io(format!("read `{}`", p.display())))?,
            ),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<bs::WriteRequest>(4);
        let digest = d.clone();
        let reader = std::thread::spawn(move || -> Result<(), ReapiError> {
            use std::io::Read;
            let mut offset: u64 = 0;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = source
                        .read(&mut chunk[filled..])
                        .map_err(ReapiError::io("read a blob to upload"))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                chunk.truncate(filled);
                let end = offset + filled as u64;
                if end > total || (filled < CHUNK && end != total) {
                    return Err(changed(&digest));
                }
                let req = bs::WriteRequest {
                    resource_name: if offset == 0 {
                        resource.clone()
                    } else {
                        String::new()
                    },
                    write_offset: offset as i64,
                    finish_write: end == total,
                    data: chunk,
                };
                if tx.blocking_send(req).is_err() {
                    return Ok(()); // the call ended; its error says why
                }
                offset = end;
                if offset == total {
                    return Ok(());
                }
            }
        });
        let mut client = self.bytestream();
        let secs = 30 + total / (1 << 20);
        let got = self.block("ByteStream.Write", Duration::from_secs(secs), async move {
            client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        });
        let read = reader
            .join()
            .map_err(|_| self.bad("the upload's reader failed"))?;
        read?;
        let got = got?;
        if got.committed_size != d.size_bytes && got.committed_size != -1 {
            return Err(self.bad(format!(
                "committed {} of {} bytes for {}",
                got.committed_size,
                d.size_bytes,
                show(d)
            )));
        }
        Ok(())
    }

    /// Reads one blob, checked against its digest; `None` when the CAS lacks it.
    /// Held in memory, so at most [`MAX_MESSAGE`] bytes: for messages (Directory, Tree,
    /// Command, …) and small files; big ones go through [`Client::read_to_file`].
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReapiError> {
        self.check(d)?;
        if d.size_bytes as usize > MAX_MESSAGE {
            return Err(self.bad(format!(
                "a digest of {} bytes where a message or a small file was expected",
                d.size_bytes
            )));
        }
        let max = self.capabilities()?.max_batch;
        let data = if in_batch(d.size_bytes, max) {
            let mut cas = self.cas();
            let req = re::BatchReadBlobsRequest {
                instance_name: self.instance().to_string(),
                digests: vec![d.clone()],
                acceptable_compressors: Vec::new(),
                digest_function: 0,
            };
            let got = self.block("BatchReadBlobs", self.inner.timeout * 3, async move {
                cas.batch_read_blobs(req).await.map(|r| r.into_inner())
            })?;
            let Some(r) = got.responses.into_iter().next() else {
                return Err(self.bad("an empty batch read"));
            };
            match r.status.map(|s| s.code).unwrap_or(0) {
                0 => r.data,
                5 => return Ok(None), // NOT_FOUND
                code => {
                    return Err(self.bad(format!("code {code} reading {}", show(d))));
                }
            }
        } else {
            let mut out = Vec::new();
            match self.read_stream(d, &mut out) {
                Ok(()) => out,
                Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        if data.len() as i64 != d.size_bytes || OciDigest::of(&data).hex() != d.hash {
            return Err(self.bad(format!("a blob that does not match its digest {}", show(d))));
        }
        Ok(Some(data))
    }

    /// Reads a blob that must be there.
    pub fn read_present(&self, d: &Digest) -> Result<Vec<u8>, ReapiError> {
        self.read(d)?
            .ok_or_else(|| self.bad(format!("no blob {} (missing from the CAS)", show(d))))
    }

    /// Reads a blob into a new file at `dest`, checked against its digest as it comes;
    /// a blob that does not match leaves no file.
    pub fn read_to_file(&self, d: &Digest, dest: &Path) -> Result<(), ReapiError> {
        use std::io::Write;
        self.check(d)?;
        let max = self.capabilities()?.max_batch;
        if in_batch(d.size_bytes, max) {
            let data = self.read_present(d)?;
            return std::fs::write(dest, data)
                .map_err(ReapiError::io(format!("write `{}`", dest.display())));
        }
        let file = std::fs::File::create(dest)
            .map_err(ReapiError::io(format!("create `{}`", dest.display())))?;
        let mut w = cascade_image::HashingWriter::new(std::io::BufWriter::new(file));
        let read = self.read_stream(d, &mut w);
        let (mut inner, got, size) = w.finish();
        let flushed = inner.flush();
        let ok =
            read.is_ok() && flushed.is_ok() && size as i64 == d.size_bytes && got.hex() == d.hash;
        if !ok {
            let _ = std::fs::remove_file(dest);
            read?;
            flushed.map_err(ReapiError::io(format!("write `{}`", dest.display())))?;
            return Err(self.bad(format!("a blob that does not match its digest {}", show(d))));
        }
        Ok(())
    }

    fn read_stream(&self, d: &Digest, out: &mut impl std::io::Write) -> Result<(), ReapiError> {
        use futures_util::StreamExt;
        let resource = format!(
            "{}blobs/{}/{}",
            prefix(self.instance()),
            d.hash,
            d.size_bytes
        );
        let mut client = self.bytestream();
        let secs = 30 + (d.size_bytes as u64 / (1 << 20));
        let limit = d.size_bytes;
        // Chunks are written as they arrive; more than the digest says is refused.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let url = self.inner.endpoint.to_string();
        let fut = async move {
            let mut stream = client
                .read(bs::ReadRequest {
                    resource_name: resource,
                    read_offset: 0,
                    read_limit: 0,
                })
                .await?
                .into_inner();
            let mut total: i64 = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                total += chunk.data.len() as i64;
                if total > limit {
                    return Err(tonic::Status::out_of_range(
                        "more bytes than the digest says",
                    ));
                }
                if tx.send(chunk.data).await.is_err() {
                    break;
                }
            }
            Ok(())
        };
        let handle = self
            .inner
            .rt
            .spawn(async move { tokio::time::timeout(Duration::from_secs(secs), fut).await });
        while let Some(chunk) = rx.blocking_recv() {
            out.write_all(&chunk)
                .map_err(ReapiError::io("write a downloaded blob"))?;
        }
        match self.inner.rt.block_on(handle) {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(s))) => Err(ReapiError::Call {
                url,
                call: "ByteStream.Read",
                code: s.code(),
                message: status_message(&s),
            }),
            Ok(Err(_)) => Err(ReapiError::Timeout {
                url,
                call: "ByteStream.Read",
                secs,
            }),
            Err(e) => Err(self.bad(format!("a broken read: {e}"))),
        }
    }

    /// The action cache's entry for `action`, or `None`.
    pub fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, ReapiError> {
        let mut ac = self.ac();
        let req = re::GetActionResultRequest {
            instance_name: self.instance().to_string(),
            action_digest: Some(action.clone()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: Vec::new(),
            digest_function: 0,
        };
        match self.block("GetActionResult", self.inner.timeout, async move {
            ac.get_action_result(req).await.map(|r| r.into_inner())
        }) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn update_action_result(
        &self,
        action: &Digest,
        result: &ActionResult,
    ) -> Result<(), ReapiError> {
        let mut ac = self.ac();
        let req = re::UpdateActionResultRequest {
            instance_name: self.instance().to_string(),
            action_digest: Some(action.clone()),
            action_result: Some(result.clone()),
            results_cache_policy: None,
            digest_function: 0,
        };
        self.block("UpdateActionResult", self.inner.timeout, async move {
            ac.update_action_result(req).await.map(|_| ())
        })
    }

    /// Executes `action` (its Command and input root already in the CAS) and waits for
    /// its result, at most `timeout`. A stream that breaks is resumed with
    /// `WaitExecution`. `stage` is told each stage the engine reports.
    pub fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
        timeout: Duration,
        stage: &(dyn Fn(Stage) + Sync),
    ) -> Result<re::ExecuteResponse, ReapiError> {
        use futures_util::StreamExt;
        let instance = self.instance().to_string();
        let channel = self.channel();
        let action = action.clone();
        let fut = async move {
            let mut client = re::execution_client::ExecutionClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE);
            let mut name: Option<String> = None;
            let mut broken = 0;
            loop {
                let stream = match &name {
                    None => {
                        client
                            .execute(re::ExecuteRequest {
                                instance_name: instance.clone(),
                                skip_cache_lookup,
                                action_digest: Some(action.clone()),
                                execution_policy: None,
                                results_cache_policy: None,
                                digest_function: 0,
                                inline_stdout: false,
                                inline_stderr: false,
                                inline_output_files: Vec::new(),
                            })
                            .await
                    }
                    Some(n) => {
                        client
                            .wait_execution(re::WaitExecutionRequest { name: n.clone() })
                            .await
                    }
                };
                let mut stream = match stream {
                    Ok(s) => s.into_inner(),
                    Err(s) if name.is_some() && broken < 5 && retryable(s.code()) => {
                        broken += 1;
                        tokio::time::sleep(Duration::from_millis(200 << broken)).await;
                        continue;
                    }
                    Err(s) => return Err(s),
                };
                loop {
                    match stream.next().await {
                        Some(Ok(op)) => {
                            // Progress: only cuts in a row count against the limit.
                            broken = 0;
                            name = Some(op.name.clone());
                            if let Some(m) = op.metadata.as_ref().and_then(|a| {
                                re::ExecuteOperationMetadata::decode(a.value.as_slice()).ok()
                            }) {
                                stage(Stage::from_i32(m.stage));
                            }
                            if op.done {
                                return finished(op);
                            }
                        }
                        Some(Err(s)) if name.is_some() && broken < 5 && retryable(s.code()) => {
                            broken += 1;
                            break;
                        }
                        Some(Err(s)) => return Err(s),
                        // Ended without `done`: ask again where it is.
                        None if name.is_some() && broken < 5 => {
                            broken += 1;
                            break;
                        }
                        None => return Err(tonic::Status::unavailable("the stream ended early")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200 << broken)).await;
            }
        };
        self.block("Execute", timeout, fut)
    }
}

/// How far an execution is, as the engine says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Unknown,
    CacheCheck,
    Queued,
    Executing,
    Completed,
}

impl Stage {
    fn from_i32(v: i32) -> Stage {
        match v {
            1 => Stage::CacheCheck,
            2 => Stage::Queued,
            3 => Stage::Executing,
            4 => Stage::Completed,
            _ => Stage::Unknown,
        }
    }
}

fn finished(op: Operation) -> Result<re::ExecuteResponse, tonic::Status> {
    match op.result {
        Some(operation::Result::Response(any)) => re::ExecuteResponse::decode(any.value.as_slice())
            .map_err(|e| tonic::Status::internal(format!("not an ExecuteResponse: {e}"))),
        Some(operation::Result::Error(s)) => {
            Err(tonic::Status::new(tonic::Code::from_i32(s.code), s.message))
        }
        None => Err(tonic::Status::internal(
            "a finished operation without a result",
        )),
    }
}

/// Codes worth asking again for: the engine restarted, or the stream was cut.
fn retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Aborted
    )
}

/// A status's message, or its code when the server said nothing.
fn status_message(s: &tonic::Status) -> String {
    let m = s.message().trim();
    if m.is_empty() {
        format!("{:?}", s.code())
    } else {
        // Transport errors carry their cause in the source chain.
        let mut text = m.to_string();
        let mut src = std::error::Error::source(s);
        while let Some(e) = src {
            text.push_str(&format!(": {e}"));
            src = e.source();
        }
        text
    }
}

/// Whether a blob of `size` goes in a batch call of at most `max` bytes.
fn in_batch(size: i64, max: usize) -> bool {
    usize::try_from(size).is_ok_and(|s| s.saturating_add(PER_BLOB_OVERHEAD) <= max)
}

/// A file read whole for a batch, refused when it no longer has the digest's size.
fn read_exactly(p: &Path, d: &Digest) -> Result<Vec<u8>, ReapiError> {
    // Never more than the digest's size (plus one byte, to see that it grew).
    let want = u64::try_from(d.size_bytes).map_err(|_| changed(d))?;
    let mut data = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, want + 1), &mut data))
        .map_err(ReapiError::io(format!("read `{}`", p.display())))?;
    if data.len() as i64 != d.size_bytes {
        return Err(changed(d));
    }
    Ok(data)
}

fn changed(d: &Digest) -> ReapiError {
    ReapiError::Io {
        what: format!("upload {}", show(d)),
        source: std::io::Error::other("the file changed while it was uploaded"),
    }
}

/// `instance/` for resource names, or nothing for the empty instance.
fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for (url, host, port, tls, instance) in [
            ("grpc://127.0.0.1:50051", "127.0.0.1", 50051, false, ""),
            (
                "grpcs://cache.example:443/main",
                "cache.example",
                443,
                true,
                "main",
            ),
            ("grpc://h:1/a/b/", "h", 1, false, "a/b"),
        ] {
            let e = Endpoint::parse(url).unwrap();
            assert_eq!(
                (e.host.as_str(), e.port, e.tls, e.instance.as_str()),
                (host, port, tls, instance)
            );
            assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e);
        }
        for bad in [
            "http://h:1",
            "grpc://h",
            "grpc://h:x",
            "grpc://u:p@h:1",
            "grpc://:1",
            "grpc://h:1/../x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
