//! The admin HTTP API, the web dashboard and `/metrics` of a serving node
//! (`bbsync serve --http ADDR`), on the node's own tokio runtime (axum).
//!
//! - Auth ([`auth`]): `Authorization: Bearer <token>` with the admin token
//!   or the read-only token of `<data>/http.token`, or a browser session
//!   opened through a one-time login URL of `bbsync ui` (an HttpOnly,
//!   SameSite=Strict cookie; every state-changing request of a session
//!   carries its CSRF token in `X-CSRF-Token`). `/healthz` needs nothing;
//!   `/metrics` needs a token unless `metrics_without_auth = true`.
//! - Errors are JSON: `{"error": "<one line>", "status": <code>}` (unknown
//!   route 404, malformed JSON 400, a body over [`MAX_BODY`] 413, no or a
//!   bad credential 401, the read-only token or a missing CSRF token on a
//!   write 403).
//! - Jobs ([`jobs`]) run the library functions the CLI runs; their
//!   progress goes to the event log ([`events`]), which
//!   `GET /api/v1/events` streams as server-sent events.
//!
//! docs/http.md documents every route with an example.

pub mod api;
pub mod auth;
pub mod events;
pub mod jobs;
pub mod metrics;
pub mod ui;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Instant,
};

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bbsync_store::{ErrorKind, Store, StoreError};
use zeroize::Zeroizing;

use crate::{NodeError, NodeHandle};

/// Largest request body (a card, a job's arguments): 64 KiB.
pub const MAX_BODY: usize = 64 << 10;
/// The session cookie's name.
pub const COOKIE: &str = "bbsync_session";

/// Errors of the HTTP side; each has its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The token file cannot be used.
    #[error("token file {0}: {1}")]
    TokenFile(PathBuf, String),
    /// No node with `--http` runs for this data dir in this process.
    #[error(
        "no node is serving {0} with --http (start `bbsync serve --http 127.0.0.1:8080`, or set http_listen in config.toml)"
    )]
    NotServing(PathBuf),
    /// The HTTP address cannot be used.
    #[error("--http {0}: {1}")]
    Listen(String, String),
    /// No credential, or not a valid one.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Bad input.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// A body over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// A store error (its kind decides the status).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node error.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Something failed inside.
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::BadRequest(_) | HttpError::Listen(..) => StatusCode::BAD_REQUEST,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Store(StoreError::UnknownObject(_)) => StatusCode::NOT_FOUND,
            HttpError::Store(e) => match e.kind() {
                ErrorKind::Usage | ErrorKind::Security => StatusCode::BAD_REQUEST,
                ErrorKind::Busy => StatusCode::CONFLICT,
                ErrorKind::Io | ErrorKind::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
            },
            HttpError::Node(e) if e.kind() == crate::ErrorKind::Usage => StatusCode::BAD_REQUEST,
            HttpError::Node(_) => StatusCode::BAD_GATEWAY,
            HttpError::TokenFile(..) | HttpError::NotServing(_) | HttpError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The JSON error body.
pub fn error_body(status: StatusCode, message: &str) -> Response {
    let line = message.replace(['\n', '\r'], " ");
    (
        status,
        Json(serde_json::json!({ "error": line, "status": status.as_u16() })),
    )
        .into_response()
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("http: {self}");
        }
        let mut r = error_body(status, &self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"bbsync\""),
            );
        }
        r
    }
}

/// How `serve --http` serves.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// `/metrics` without a token.
    pub metrics_without_auth: bool,
    /// The addresses the node listens on (full, with /p2p/), for `status`.
    pub node_addrs: Vec<String>,
    /// The node's part of config.toml (the addresses it knows of peers).
    pub node_config: crate::NodeConfig,
    /// The backups' part of config.toml (the default repository, the
    /// scheduled backups, the S3 server).
    pub backup_config: bbsync_store::backup::BackupConfig,
}

/// What every request handler reaches.
pub struct Shared {
    /// The node's store.
    pub store: Arc<Store>,
    /// The node.
    pub node: NodeHandle,
    /// The tokens (replaced by `bbsync http token --rotate`).
    pub tokens: RwLock<auth::Tokens>,
    /// Login codes and sessions.
    pub sessions: Mutex<auth::Sessions>,
    /// The event log.
    pub events: events::Events,
    /// The jobs.
    pub jobs: jobs::Jobs,
    /// Counters of `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The options.
    pub opts: HttpOptions,
    /// The address actually listened on.
    pub addr: SocketAddr,
    /// When the server started.
    pub started: Instant,
}

/// The servers running in this process, by data dir (for `bbsync ui` and
/// `bbsync http token --rotate` arriving through the control socket).
fn running() -> &'static Mutex<Vec<(PathBuf, Weak<Shared>)>> {
    static R: Mutex<Vec<(PathBuf, Weak<Shared>)>> = Mutex::new(Vec::new());
    &R
}

fn find(data_dir: &Path) -> Option<Arc<Shared>> {
    running()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(d, _)| d == data_dir)
        .and_then(|(_, w)| w.upgrade())
}

/// A one-time login URL of the server running for `data_dir` in this
/// process (what `bbsync ui` prints).
pub fn login_url(data_dir: &Path) -> Result<Zeroizing<String>, HttpError> {
    let s = find(data_dir).ok_or_else(|| HttpError::NotServing(data_dir.to_path_buf()))?;
    let code = s
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .new_code();
    Ok(Zeroizing::new(format!(
        "http://{}/login?code={}",
        s.addr, *code
    )))
}

/// The address of the server running for `data_dir` in this process.
pub fn serving_addr(data_dir: &Path) -> Option<SocketAddr> {
    find(data_dir).map(|s| s.addr)
}

/// Reads the token file again into the server running for `data_dir` in
/// this process, if any (after a rotation).
pub fn reload_tokens(data_dir: &Path) -> Result<(), HttpError> {
    if let Some(s) = find(data_dir) {
        let t = auth::load_or_create(data_dir)?;
        *s.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = t;
    }
    Ok(())
}

/// Whether `addr` is a loopback address.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// A running HTTP server; dropping it does not stop it, [`HttpServer::stop`] does.
#[derive(Debug)]
pub struct HttpServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl HttpServer {
    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
        let mut r = running()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.retain(|(_, w)| w.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, &self.shared)));
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the HTTP server of a serving node (inside its tokio runtime):
/// loads or creates the tokens, binds `opts.listen`, and serves until
/// stopped.
pub async fn serve(
    store: Arc<Store>,
    node: NodeHandle,
    opts: HttpOptions,
) -> Result<HttpServer, HttpError> {
    let tokens = auth::load_or_create(store.dir())?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| HttpError::Listen(opts.listen.to_string(), e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HttpError::Listen(opts.listen.to_string(), e.to_string()))?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        node,
        tokens: RwLock::new(tokens),
        sessions: Mutex::new(auth::Sessions::default()),
        events: events::Events::default(),
        jobs: jobs::Jobs::default(),
        metrics: Arc::new(metrics::Metrics::default()),
        opts,
        addr,
        started: Instant::now(),
    });
    running()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((store.dir().to_path_buf(), Arc::downgrade(&shared)));
    // Scheduled backups (`[[backup]]` in config.toml) count in the metrics
    // and the event log like the ones started through the API.
    let weak = Arc::downgrade(&shared);
    bbsync_store::backup::schedule::on_finished(move |f| {
        if let Some(shared) = weak.upgrade() {
            shared.metrics.job_finished("backup", f.seconds, f.ok);
            if f.ok {
                shared.metrics.backup_succeeded(&f.repo, f.seconds);
            }
            shared.events.emit(
                "backup.scheduled",
                serde_json::json!({
                    "repository": f.repo, "seconds": f.seconds, "ok": f.ok, "error": f.error,
                }),
            );
        }
    });
    let app = api::router(shared.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("http server stopped: {e}");
        }
    });
    Ok(HttpServer { addr, task, shared })
}
