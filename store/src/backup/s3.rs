//! A backup repository in S3-compatible object storage (AWS, MinIO, Ceph
//! RGW, Garage, ...), behind the synchronous [`Backend`] trait. Format 2
//! only (docs/format.md §17); docs/backup.md "S3" has the operator's view.
//!
//! The client is opendal's S3 service (docs/dev-notes.md says why) on a
//! small tokio runtime that this backend owns: every call hands its future
//! to that runtime and waits on a channel, which neither panics nor
//! deadlocks when the caller itself runs inside another tokio runtime (the
//! node's scheduled backups do).
//!
//! - `read_range` is a ranged GET; `write_new` a conditional create
//!   (`If-None-Match: *`), or, on a server that answers it with "not
//!   implemented", a HEAD then a PUT (said once in the log).
//! - `write_lazy` queues the upload on a bounded pool (`max_uploads`
//!   parallel PUTs, each holding its bytes); [`Backend::sync`] waits for
//!   all of them and returns the first failure with its path.
//! - Transient failures (5xx, 429 "slow down", timeouts, resets, refused
//!   connections) are retried with exponential backoff and jitter; other
//!   4xx answers are not.
//! - Every HTTP request is counted by kind, with the bytes sent and
//!   received ([`S3Backend::counts`], also through
//!   [`Backend::request_counts`]).
//! - `stage` uploads under a hidden temp name (`<dir>/.<name>.tmp`, left
//!   out by `list`), and `publish` copies it to its name on the server
//!   (CopyObject) and deletes the temp object: what was staged is invisible
//!   until then. `remove_temp_files` deletes the temp objects an
//!   interrupted backup left.

use std::{
    fmt,
    future::Future,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use opendal::{
    Buffer, HttpBody, HttpTransport, HttpTransporter, OperationContext, Operator,
    layers::{ConcurrentLimitLayer, RetryEvent, RetryLayer, TimeoutLayer},
    services,
};
use opendal_http_transport_reqwest::ReqwestTransport;
use tokio::{
    runtime::{Handle, Runtime},
    sync::Semaphore,
    task::JoinHandle,
};

use super::{backend::Backend, location::S3Settings};

/// Requests an [`S3Backend`] sent, by kind, and the bytes it moved. Every
/// HTTP request counts, retries included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// GET of an object (whole or a range).
    pub get: u64,
    /// PUT of an object, server-side copies (CopyObject) included.
    pub put: u64,
    /// LIST (a GET with `list-type=`, one per page of up to 1,000 names).
    pub list: u64,
    /// DELETE of an object.
    pub delete: u64,
    /// HEAD of an object (`size`, `write_new`'s fallback).
    pub head: u64,
    /// Any other request (POST: multipart uploads, batch deletes).
    pub other: u64,
    /// Requests that were retries of a failed one (also counted above).
    pub retries: u64,
    /// Request body bytes sent (object data of PUTs).
    pub bytes_up: u64,
    /// Response body bytes announced by the server for GETs (object data).
    pub bytes_down: u64,
}

impl RequestCounts {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.list + self.delete + self.head + self.other
    }

    /// The requests made since `earlier` (an earlier reading of the same
    /// backend).
    #[must_use]
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get.saturating_sub(earlier.get),
            put: self.put.saturating_sub(earlier.put),
            list: self.list.saturating_sub(earlier.list),
            delete: self.delete.saturating_sub(earlier.delete),
            head: self.head.saturating_sub(earlier.head),
            other: self.other.saturating_sub(earlier.other),
            retries: self.retries.saturating_sub(earlier.retries),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} GET, {} PUT, {} LIST, {} HEAD, {} DELETE",
            self.get, self.put, self.list, self.head, self.delete
        )?;
        if self.other > 0 {
            write!(f, ", {} other", self.other)?;
        }
        if self.retries > 0 {
            write!(f, " ({} retries)", self.retries)?;
        }
        write!(
            f,
            "; {} bytes up, {} bytes down",
            self.bytes_up, self.bytes_down
        )
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    head: AtomicU64,
    other: AtomicU64,
    retries: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Counters {
    fn read(&self) -> RequestCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            get: l(&self.get),
            put: l(&self.put),
            list: l(&self.list),
            delete: l(&self.delete),
            head: l(&self.head),
            other: l(&self.other),
            retries: l(&self.retries),
            bytes_up: l(&self.bytes_up),
            bytes_down: l(&self.bytes_down),
        }
    }
}

/// opendal's reqwest transport, counting each request on its way out.
struct CountingTransport {
    inner: ReqwestTransport,
    counts: Arc<Counters>,
}

impl HttpTransport for CountingTransport {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let c = &self.counts;
        let method = req.method().clone();
        let query = req.uri().query().unwrap_or_default();
        let counter = match method {
            http::Method::GET if query.contains("list-type=") || query.contains("delimiter=") => {
                &c.list
            }
            http::Method::GET => &c.get,
            http::Method::PUT => &c.put,
            http::Method::DELETE => &c.delete,
            http::Method::HEAD => &c.head,
            _ => &c.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.bytes_up
            .fetch_add(req.body().len() as u64, Ordering::Relaxed);
        let resp = self.inner.fetch(req).await?;
        if method == http::Method::GET && resp.status().is_success() {
            let len = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            c.bytes_down.fetch_add(len, Ordering::Relaxed);
        }
        Ok(resp)
    }
}

/// The first failed lazy upload: its path, and what went wrong.
type Failure = (String, io::ErrorKind, String);

/// A repository under `s3://bucket/prefix` (see the module docs).
pub struct S3Backend {
    op: Operator,
    location: String,
    counts: Arc<Counters>,
    uploads: Arc<Semaphore>,
    pending: Mutex<Vec<JoinHandle<()>>>,
    failed: Arc<Mutex<Option<Failure>>>,
    /// The server answered a conditional create with "not implemented".
    no_conditional_create: AtomicBool,
    handle: Handle,
    /// Reads worth running at once (twice `max_uploads`; the requests
    /// themselves are bounded by the client's limit layer).
    reads: usize,
    /// Owned, shut down in the background on drop (a runtime dropped
    /// normally inside another runtime's thread panics).
    runtime: Option<Runtime>,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An opendal error as an `io::Error`: absent objects are `NotFound`, a
/// failed condition is `AlreadyExists`; the text is opendal's kind and the
/// server's message (never a credential: requests are signed, and signed
/// headers are not part of opendal's errors).
fn io_err(e: &opendal::Error) -> io::Error {
    // A missing bucket is not a missing object: say so, and do not let a
    // caller take it for "no repository here yet".
    if e.message().contains("NoSuchBucket") {
        return io::Error::other("the bucket does not exist (S3 NoSuchBucket)");
    }
    let kind = match e.kind() {
        opendal::ErrorKind::NotFound => io::ErrorKind::NotFound,
        opendal::ErrorKind::ConditionNotMatch => io::ErrorKind::AlreadyExists,
        opendal::ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
        opendal::ErrorKind::RangeNotSatisfied => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    };
    // opendal's message, then the innermost cause (e.g. "Connection
    // refused"), on one line.
    let mut text = one_line(e.message());
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut root = None;
    while let Some(c) = cause {
        root = Some(c.to_string());
        cause = c.source();
    }
    if let Some(r) = root {
        text = format!("{text}: {}", one_line(&r));
    }
    let msg = match e.kind() {
        opendal::ErrorKind::NotFound => "no such object".to_string(),
        // (A HEAD's refusal has no body: then opendal says nothing more.)
        opendal::ErrorKind::PermissionDenied if text.trim().is_empty() => {
            "access denied (check the keys and the bucket's policy)".to_string()
        }
        opendal::ErrorKind::PermissionDenied => {
            format!("access denied (check the keys and the bucket's policy): {text}")
        }
        _ if e.is_persistent() => format!("S3 request failed after retries: {text}"),
        _ => format!("S3 request failed: {text}"),
    };
    io::Error::new(kind, msg)
}

/// A server's message on one line, and not overlong.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if s.chars().count() > 300 {
        out.push_str("...");
    }
    out
}

/// The temp name `stage` uploads under.
fn tmp_key(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.tmp"),
        None => format!(".{path}.tmp"),
    }
}

fn is_tmp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Checks a repository path before it becomes an object key: relative,
/// `/`-separated, no empty, `.` or `..` segment.
fn key(path: &str) -> io::Result<&str> {
    let ok = !path.is_empty()
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
    if ok {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} is not a repository path"),
        ))
    }
}

/// Whether a failed conditional create means the server does not
/// implement `If-None-Match` (rather than a real failure).
fn not_implemented(e: &opendal::Error) -> bool {
    e.kind() == opendal::ErrorKind::Unsupported || {
        let t = e.to_string();
        t.contains("NotImplemented") || t.contains("501")
    }
}

/// The process's rustls provider for reqwest: ring, the provider the rest
/// of the workspace uses (tor, libp2p), unless one is installed already.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl S3Backend {
    /// A backend for the repository under `prefix` (no leading or trailing
    /// `/`; empty: the bucket's root) of `bucket`. Nothing is sent yet.
    pub fn open(bucket: &str, prefix: &str, settings: &S3Settings) -> io::Result<S3Backend> {
        let location = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bbsync-s3")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| io::Error::other(format!("starting the S3 client: {e}")))?;
        let counts = Arc::new(Counters::default());
        let transport = CountingTransport {
            inner: ReqwestTransport::new(client),
            counts: counts.clone(),
        };

        let mut b = services::S3::default()
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .region(&settings.region)
            .access_key_id(&settings.access_key_id)
            .secret_access_key(settings.secret_access_key.expose())
            // Only what we pass: no ~/.aws files, no instance metadata.
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(t) = &settings.session_token {
            b = b.session_token(t.expose());
        }
        if let Some(ep) = &settings.endpoint {
            b = b.endpoint(ep);
        }
        if !settings.path_style {
            b = b.enable_virtual_host_style();
        }
        let retry_counts = counts.clone();
        let loc = location.clone();
        let op = Operator::new(b)
            .map_err(|e| io_err(&e))?
            .with_context(
                OperationContext::new().with_http_transport(HttpTransporter::new(transport)),
            )
            .layer(
                TimeoutLayer::new()
                    .with_timeout(settings.request_timeout)
                    .with_io_timeout(settings.request_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_factor(2.0)
                    .with_min_delay(settings.retry_min_delay)
                    .with_max_delay(Duration::from_secs(20))
                    .with_max_times(settings.max_retries)
                    .with_notify(move |ev: RetryEvent<'_>| {
                        retry_counts.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "{loc}: {} failed ({}), retry {} in {:.1} s",
                            ev.op,
                            one_line(ev.err.message()),
                            ev.attempt,
                            ev.retry_after.as_secs_f64()
                        );
                    }),
            )
            .layer(ConcurrentLimitLayer::new(
                settings.max_uploads.max(1) * 2 + 4,
            ));
        Ok(S3Backend {
            op,
            location,
            counts,
            uploads: Arc::new(Semaphore::new(settings.max_uploads.max(1))),
            pending: Mutex::new(Vec::new()),
            failed: Arc::new(Mutex::new(None)),
            no_conditional_create: AtomicBool::new(false),
            handle,
            reads: settings.max_uploads.max(1) * 2,
            runtime: Some(runtime),
        })
    }

    /// The requests sent so far.
    pub fn counts(&self) -> RequestCounts {
        self.counts.read()
    }

    /// Runs `f` on this backend's runtime and waits for it (from any
    /// thread, inside another runtime or not).
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 client stopped (its runtime is shut down)"))
    }

    /// The first failed lazy upload, as an error, if there is one; `take`
    /// clears it.
    fn failure(&self, take: bool) -> io::Result<()> {
        let mut f = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let found = if take { f.take() } else { f.clone() };
        match found {
            None => Ok(()),
            Some((path, kind, msg)) => {
                Err(io::Error::new(kind, format!("uploading {path}: {msg}")))
            }
        }
    }

    fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let op = self.op.clone();
        let k = key(path)?.to_string();
        let data = bytes.to_vec();
        self.run(async move { op.write(&k, data).await })?
            .map(|_| ())
            .map_err(|e| io_err(&e))
    }

    /// Queues an upload of `bytes` to `path`; `label` names it in errors.
    fn put_lazy(&self, path: &str, label: String, bytes: &[u8]) -> io::Result<()> {
        let k = key(path)?.to_string();
        self.failure(false)?;
        // Wait for a free slot here, in the caller: at most `max_uploads`
        // buffers are held at once.
        let permit = self
            .run(self.uploads.clone().acquire_owned())?
            .map_err(|_| io::Error::other("the S3 upload pool is closed"))?;
        let op = self.op.clone();
        let data = bytes.to_vec();
        let failed = self.failed.clone();
        let h = self.handle.spawn(async move {
            let _permit = permit;
            if let Err(e) = op.write(&k, data).await {
                let e = io_err(&e);
                let mut f = failed.lock().unwrap_or_else(PoisonError::into_inner);
                if f.is_none() {
                    *f = Some((label, e.kind(), e.to_string()));
                }
            }
        });
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.retain(|h| !h.is_finished());
        p.push(h);
        Ok(())
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn read_concurrency(&self) -> usize {
        self.reads
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let op = self.op.clone();
        let k = key(path)?.to_string();
        self.run(async move { op.read(&k).await })?
            .map(|b| b.to_vec())
            .map_err(|e| io_err(&e))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len);
        let short = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} is shorter than {end} bytes"),
            )
        };
        if len == 0 {
            // No request can ask for nothing: a HEAD says whether it is there.
            return match self.size(path)? {
                Some(n) if n >= offset => Ok(Vec::new()),
                Some(_) => Err(short()),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such object")),
            };
        }
        let op = self.op.clone();
        let k = key(path)?.to_string();
        let got = self.run(async move { op.read_with(&k).range(offset..end).await })?;
        match got {
            Ok(b) if b.len() as u64 == len => Ok(b.to_vec()),
            Ok(_) => Err(short()),
            // Past the end: a 416 (InvalidRange), or fewer bytes than
            // asked for (opendal's completeness check; it retries that
            // first, as it would a cut connection).
            Err(e)
                if e.kind() == opendal::ErrorKind::RangeNotSatisfied
                    || e.to_string().contains("InvalidRange")
                    || e.message().contains("got too little data") =>
            {
                Err(short())
            }
            Err(e) => Err(io_err(&e)),
        }
    }

    fn write(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.put(path, bytes)
    }

    fn write_new(&self, path: &str, bytes: &[u8]) -> io::Result<bool> {
        if !self.no_conditional_create.load(Ordering::Relaxed) {
            let op = self.op.clone();
            let k = key(path)?.to_string();
            let data = bytes.to_vec();
            let r = self.run(async move { op.write_with(&k, data).if_not_exists(true).await })?;
            match r {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => return Ok(false),
                Err(e) if not_implemented(&e) => {
                    self.no_conditional_create.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: the S3 server does not implement conditional writes (If-None-Match); \
                         creating {path} by checking first, then writing (a race between two \
                         writers is caught by the lock's second check)",
                        self.location
                    );
                }
                Err(e) => return Err(io_err(&e)),
            }
        }
        if self.size(path)?.is_some() {
            return Ok(false);
        }
        self.put(path, bytes).map(|()| true)
    }

    fn write_lazy(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.put_lazy(path, path.to_string(), bytes)
    }

    fn stage(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        key(path)?;
        self.put_lazy(&tmp_key(path), format!("{path} (staged)"), bytes)
    }

    fn publish(&self, path: &str) -> io::Result<()> {
        let op = self.op.clone();
        let k = key(path)?.to_string();
        let tmp = tmp_key(path);
        self.run(async move {
            op.copy(&tmp, &k).await?;
            op.delete(&tmp).await
        })?
        .map_err(|e| io_err(&e))
    }

    fn size(&self, path: &str) -> io::Result<Option<u64>> {
        let op = self.op.clone();
        let k = key(path)?.to_string();
        match self.run(async move { op.stat(&k).await })? {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&e)),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let dir = dir.trim_end_matches('/');
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", key(dir)?)
        };
        let op = self.op.clone();
        let p = prefix.clone();
        let entries = self
            .run(async move { op.list(&p).await })?
            .map_err(|e| io_err(&e))?;
        let mut out: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                let rest = e.path().strip_prefix(prefix.as_str())?;
                let name = rest.trim_end_matches('/');
                (!name.is_empty() && !name.contains('/') && !is_tmp(name)).then(|| name.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let op = self.op.clone();
        let k = key(path)?.to_string();
        match self.run(async move { op.delete(&k).await })? {
            Err(e) if e.kind() != opendal::ErrorKind::NotFound => Err(io_err(&e)),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let handles =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let joined = self.run(async move {
            let mut panicked = false;
            for h in handles {
                panicked |= h.await.is_err();
            }
            panicked
        })?;
        self.failure(true)?;
        if joined {
            return Err(io::Error::other("an S3 upload task panicked"));
        }
        Ok(())
    }

    fn link_from(&self, _src: &Path, _path: &str) -> io::Result<bool> {
        Ok(false)
    }

    fn local_path(&self, _path: &str) -> Option<PathBuf> {
        None
    }

    fn remove_temp_files(&self) -> io::Result<u64> {
        let op = self.op.clone();
        let entries = self
            .run(async move { op.list_with("").recursive(true).await })?
            .map_err(|e| io_err(&e))?;
        let mut n = 0;
        for e in entries {
            let p = e.path().to_string();
            let name = p.rsplit('/').next().unwrap_or_default();
            if is_tmp(name) {
                self.remove(&p)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn request_counts(&self) -> Option<RequestCounts> {
        Some(self.counts())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_and_keys() {
        assert_eq!(tmp_key("data/ab/x.pack"), "data/ab/.x.pack.tmp");
        assert_eq!(tmp_key("config"), ".config.tmp");
        assert!(is_tmp(".x.pack.tmp") && !is_tmp("x.pack"));
        assert!(key("data/ab/x.pack").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b"] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_since_and_display() {
        let a = RequestCounts {
            get: 1,
            put: 2,
            ..Default::default()
        };
        let b = RequestCounts {
            get: 3,
            put: 7,
            retries: 1,
            bytes_up: 10,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!((d.get, d.put, d.total()), (2, 5, 7));
        assert_eq!(
            d.to_string(),
            "2 GET, 5 PUT, 0 LIST, 0 HEAD, 0 DELETE (1 retries); 10 bytes up, 0 bytes down"
        );
    }
}
