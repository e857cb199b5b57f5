//! The routes: `/healthz`, `/metrics`, `/login`, `/logout`, the
//! dashboard's files, and `/api/v1/...` (docs/http.md).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use bbsync_protocol::Role;
use bbsync_store::{
    Store,
    backup::{
        Repo, RepoStorage, SnapshotSignature, history,
        schedule::{Cron, job_location},
    },
    summary::{ObjectFilter, state_word},
};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    COOKIE, HttpError, MAX_BODY, Shared,
    auth::{Access, same_secret},
    error_body,
    events::now_ms,
    jobs::{self, JobSpec},
    metrics, ui,
};

type St = State<Arc<Shared>>;
type ApiResult = Result<Response, HttpError>;

/// The routes of a server.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_route))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/", get(ui::index))
        .route("/app.js", get(ui::script))
        .route("/app.css", get(ui::style))
        .route("/api/v1/session", get(session))
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/objects", get(objects))
        .route("/api/v1/objects/{spec}", get(object))
        .route("/api/v1/trust", get(trust_list).post(trust_add))
        .route("/api/v1/trust/{id}", axum::routing::delete(trust_remove))
        .route("/api/v1/rekey", post(rekey))
        .route("/api/v1/jobs", get(jobs_list).post(jobs_start))
        .route("/api/v1/jobs/{id}", get(job_get))
        .route("/api/v1/backups", get(backups_list).post(backups_run))
        .route("/api/v1/backups/schedules", get(schedules))
        .route("/api/v1/backups/restores", get(restores))
        .route(
            "/api/v1/backups/{id}",
            get(backup_show).delete(backup_delete),
        )
        .route("/api/v1/backups/{id}/verify", post(backup_verify))
        .route("/api/v1/backups/{id}/restore", post(backup_restore))
        .route("/api/v1/backups/{id}/download", get(backup_download))
        .route("/api/v1/events", get(events))
        .route("/api/v1/log", get(log))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            loopback_host_only,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(shared)
}

/// On a loopback listener, a request must name a loopback host (`Host`, or
/// the authority of an HTTP/2 request): a web page whose DNS name is
/// rebound to 127.0.0.1 sends its own name and is refused before any route
/// (it could not authenticate, but it could reach `/healthz` and the login
/// page). A request naming no host at all is not a browser's and passes.
async fn loopback_host_only(State(s): St, req: Request, next: axum::middleware::Next) -> Response {
    if super::is_loopback(&s.addr) {
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("?"))
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if host.is_some_and(|h| !names_loopback(h)) {
            return HttpError::Forbidden(format!(
                "the Host header does not name a loopback address (a page of another site whose name points here?); use http://{}/",
                s.addr
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Whether `host` (`name[:port]`, IPv6 in brackets) is `localhost` or a
/// loopback address.
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    r
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_body(StatusCode::NOT_FOUND, &format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {}", uri.path()),
    )
}

// ---- auth -----------------------------------------------------------------

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who sent a request: `Access`, and whether through a browser session.
fn credential(
    method: &Method,
    headers: &HeaderMap,
    shared: &Shared,
) -> Result<(Access, bool), HttpError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                HttpError::Unauthorized(
                    "malformed Authorization header (expected `Bearer <token>`)".into(),
                )
            })?;
        let t = shared
            .tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if same_secret(token.as_bytes(), t.admin.as_bytes()) {
            return Ok((Access::Admin, false));
        }
        if same_secret(token.as_bytes(), t.read.as_bytes()) {
            return Ok((Access::Read, false));
        }
        return Err(HttpError::Unauthorized(
            "invalid token (see `bbsync http token`)".into(),
        ));
    }
    if let Some(id) = cookie_value(headers, COOKIE) {
        let csrf = shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .csrf_of(id)
            .ok_or_else(|| {
                HttpError::Unauthorized(
                    "the session has expired or is unknown; log in again through `bbsync ui`"
                        .into(),
                )
            })?;
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(sent.as_bytes(), csrf.as_bytes()) {
                return Err(HttpError::Forbidden(
                    "missing or wrong CSRF token (X-CSRF-Token) for a change made through a session"
                        .into(),
                ));
            }
        }
        return Ok((Access::Admin, true));
    }
    Err(HttpError::Unauthorized(
        "authentication required: send `Authorization: Bearer <token>` (see `bbsync http token`) or log in through `bbsync ui`".into(),
    ))
}

/// Any valid credential: reads.
pub struct Reader;

impl FromRequestParts<Arc<Shared>> for Reader {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Self, HttpError> {
        credential(&parts.method, &parts.headers, s).map(|_| Reader)
    }
}

/// The admin token or a session (with its CSRF token): changes.
pub struct Writer;

impl FromRequestParts<Arc<Shared>> for Writer {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Self, HttpError> {
        match credential(&parts.method, &parts.headers, s)? {
            (Access::Admin, _) => Ok(Writer),
            (Access::Read, _) => Err(HttpError::Forbidden(
                "the read-only token cannot change anything; use the admin token".into(),
            )),
        }
    }
}

/// A JSON body whose rejections are JSON errors (400, or 413 over
/// [`MAX_BODY`]).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Shared>> for Body<T> {
    type Rejection = HttpError;
    async fn from_request(req: Request, s: &Arc<Shared>) -> Result<Self, HttpError> {
        match Json::<T>::from_request(req, s).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> HttpError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return HttpError::TooLarge(format!(
            "the request body is larger than {} KiB",
            MAX_BODY >> 10
        ));
    }
    match e {
        JsonRejection::MissingJsonContentType(_) => {
            HttpError::BadRequest("the body must be JSON (Content-Type: application/json)".into())
        }
        other => HttpError::BadRequest(format!("malformed JSON: {}", other.body_text())),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, HttpError> {
    q.map(|Query(v)| v)
        .map_err(|e| HttpError::BadRequest(format!("bad query: {}", e.body_text())))
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HttpError::Internal(format!("a task failed: {e}")))?
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

// ---- plain routes -----------------------------------------------------------

async fn healthz() -> Response {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn metrics_route(State(s): St, method: Method, headers: HeaderMap) -> ApiResult {
    if !s.opts.metrics_without_auth {
        credential(&method, &headers, &s)?;
    }
    let store = s.store.clone();
    let (summary, last_verify) =
        blocking(move || Ok((store.summary()?, store.last_verify()?))).await?;
    let peers = s.node.connected_peers().await?.len() as u64;
    let upstreams = crate::follow::registry()
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    let text = metrics::render(
        &s.metrics,
        metrics::Scrape {
            summary,
            peers,
            upstreams,
            stats: metrics::NodeStatsCopy::of(s.node.stats()),
            last_verify,
        },
    )
    .map_err(|e| HttpError::Internal(format!("encoding the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
struct LoginQuery {
    code: String,
}

async fn login(State(s): St, q: Result<Query<LoginQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    let id = s
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .redeem(&q.code)
        .ok_or_else(|| {
            HttpError::Unauthorized(
                "this login link is invalid, used already or expired; run `bbsync ui` again".into(),
            )
        })?;
    s.events.emit("login", json!({}));
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        *id,
        super::auth::SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_str(&cookie).map_err(|e| HttpError::Internal(e.to_string()))?,
    );
    Ok(r)
}

async fn logout(State(s): St, _w: Writer, headers: HeaderMap) -> ApiResult {
    if let Some(id) = cookie_value(&headers, COOKIE) {
        s.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .end(id);
    }
    let mut r = Json(json!({ "logged_out": true })).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "bbsync_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    Ok(r)
}

async fn session(State(s): St, method: Method, headers: HeaderMap) -> ApiResult {
    let (access, by_session) = credential(&method, &headers, &s)?;
    let csrf = if by_session {
        cookie_value(&headers, COOKIE).and_then(|id| {
            s.sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .csrf_of(id)
                .map(|c| (*c).clone())
        })
    } else {
        None
    };
    ok(json!({
        "access": if access == Access::Admin { "admin" } else { "read" },
        "session": by_session,
        "csrf": csrf,
    }))
}

// ---- status, peers, objects ---------------------------------------------

async fn status(State(s): St, _r: Reader) -> ApiResult {
    let store = s.store.clone();
    let (summary, card, ups) = blocking(move || {
        Ok((
            store.summary()?,
            bbsync_protocol::card_to_string(&store.card()?),
            crate::follow::upstreams(&store)?,
        ))
    })
    .await?;
    let peers = s.node.connected_peers().await?;
    let onion: Vec<&String> = s
        .opts
        .node_addrs
        .iter()
        .filter(|a| a.starts_with("/onion3/"))
        .collect();
    ok(json!({
        "instance_id": summary.instance_id,
        "name": summary.name,
        "card": card,
        "peer_id": s.node.peer_id().to_string(),
        "addresses": s.opts.node_addrs,
        "onion": onion,
        "http": format!("http://{}/", s.addr),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": s.started.elapsed().as_secs(),
        "store": summary,
        "peers_connected": peers.len(),
        "upstreams": ups,
        "jobs_running": s.jobs.list().iter().filter(|j| j.status == "running").count(),
    }))
}

async fn peers(State(s): St, _r: Reader) -> ApiResult {
    let connected = s.node.connected_peers().await?;
    let store = s.store.clone();
    let (ups, trusted) =
        blocking(move || Ok((crate::follow::upstreams(&store)?, store.trust_list()?))).await?;
    // Name and role of each connected peer from the trust table.
    let rows: Vec<Value> = connected
        .iter()
        .map(|p| {
            let t = trusted
                .iter()
                .find(|(c, _)| Some(c.instance.to_hex()) == p.instance);
            json!({
                "peer_id": p.peer_id, "instance": p.instance, "addr": p.addr,
                "connection_role": p.role, "connections": p.connections,
                "since_ms": p.since_ms, "last_seen_ms": p.last_seen_ms,
                "name": t.map(|(c, _)| c.name.clone()),
                "trust_role": t.map(|(_, r)| r.role.to_string()),
            })
        })
        .collect();
    ok(json!({ "connected": rows, "upstreams": ups }))
}

async fn upstreams(State(s): St, _r: Reader) -> ApiResult {
    let store = s.store.clone();
    let ups = blocking(move || Ok(crate::follow::upstreams(&store)?)).await?;
    ok(json!(ups))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectsQuery {
    kind: Option<String>,
    name: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Largest page of `GET /api/v1/objects`.
const MAX_PAGE: usize = 1000;

fn object_row(id: &bbsync_protocol::ObjectId, st: &bbsync_store::ObjectState) -> Value {
    json!({
        "id": id.to_hex(), "kind": st.kind, "name": st.name, "owner": st.owner,
        "version": st.version, "manifest_id": st.manifest_id.to_hex(), "seq": st.seq,
        "size": st.plaintext_len, "stored": st.stored_len, "chunks": st.chunks,
        "state": state_word(st),
    })
}

async fn objects(
    State(s): St,
    _r: Reader,
    q: Result<Query<ObjectsQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(HttpError::BadRequest(format!("limit must be 1-{MAX_PAGE}")));
    }
    let store = s.store.clone();
    let rows = blocking(move || {
        Ok(store.list_objects(&ObjectFilter {
            kind: q.kind,
            name_contains: q.name,
            include_deleted: q.all,
        })?)
    })
    .await?;
    let items: Vec<Value> = rows
        .iter()
        .skip(q.offset)
        .take(limit)
        .map(|(id, st)| object_row(id, st))
        .collect();
    ok(json!({ "total": rows.len(), "offset": q.offset, "limit": limit, "items": items }))
}

async fn object(State(s): St, _r: Reader, Path(spec): Path<String>) -> ApiResult {
    let store = s.store.clone();
    let v = blocking(move || {
        let id = store.resolve(&spec)?;
        let st = store.state(&id)?;
        Ok(object_row(&id, &st))
    })
    .await?;
    ok(v)
}

// ---- trust, rekey -----------------------------------------------------------

fn trust_rows(store: &Store) -> Result<Vec<Value>, HttpError> {
    Ok(store
        .trust_list()?
        .iter()
        .map(|(c, r)| {
            json!({
                "instance_id": c.instance.to_hex(), "name": c.name,
                "role": r.role.to_string(), "addresses": c.addresses,
                "added_at_ms": r.added_at_ms,
            })
        })
        .collect())
}

async fn trust_list(State(s): St, _r: Reader) -> ApiResult {
    let store = s.store.clone();
    ok(json!(blocking(move || trust_rows(&store)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustAdd {
    card: String,
    #[serde(default)]
    role: Option<String>,
}

async fn trust_add(State(s): St, _w: Writer, Body(b): Body<TrustAdd>) -> ApiResult {
    let role: Role = b
        .role
        .as_deref()
        .unwrap_or("full")
        .parse()
        .map_err(|e: bbsync_protocol::Error| HttpError::BadRequest(e.to_string()))?;
    let store = s.store.clone();
    let card = b.card.trim().to_string();
    // A card that does not decode or verify is bad input, not damage.
    let (c, existed) = blocking(move || {
        store.trust_add(&card, role).map_err(|e| match e {
            bbsync_store::StoreError::Protocol { .. } => HttpError::BadRequest(e.to_string()),
            other => other.into(),
        })
    })
    .await?;
    let v = json!({
        "instance_id": c.instance.to_hex(), "name": c.name,
        "role": role.to_string(), "updated": existed,
    });
    s.events.emit("trust.added", v.clone());
    ok(v)
}

async fn trust_remove(State(s): St, _w: Writer, Path(id): Path<String>) -> ApiResult {
    let store = s.store.clone();
    let removed = blocking(move || {
        let id = store.resolve_instance(&id)?;
        store.trust_remove(&id)?;
        Ok(id.to_hex())
    })
    .await?;
    let v = json!({ "removed": removed });
    s.events.emit("trust.removed", v.clone());
    ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyBody {
    #[serde(default)]
    objects: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rotate: bool,
}

async fn rekey(State(s): St, _w: Writer, Body(b): Body<RekeyBody>) -> ApiResult {
    let store = s.store.clone();
    let r = blocking(move || {
        let ids = b
            .objects
            .iter()
            .map(|o| store.resolve(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(store.rekey(
            &ids,
            bbsync_store::rekey::RekeyOptions {
                dry_run: b.dry_run,
                rotate: b.rotate,
            },
            &bbsync_store::progress::NoProgress,
        )?)
    })
    .await?;
    let v = serde_json::to_value(&r).map_err(|e| HttpError::Internal(e.to_string()))?;
    s.events.emit(
        "rekey",
        json!({ "dry_run": r.dry_run, "changed": r.changed.len(), "rotated": r.rotated.len() }),
    );
    ok(v)
}

// ---- jobs -----------------------------------------------------------------

async fn jobs_list(State(s): St, _r: Reader) -> ApiResult {
    ok(json!(s.jobs.list()))
}

fn started(state: jobs::JobState) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(json!(state))).into_response())
}

async fn jobs_start(State(s): St, _w: Writer, Body(spec): Body<JobSpec>) -> ApiResult {
    started(jobs::start(&s, spec)?)
}

async fn job_get(State(s): St, _r: Reader, Path(id): Path<String>) -> ApiResult {
    let n: u64 = id
        .parse()
        .map_err(|_| HttpError::BadRequest(format!("job id {id:?} is not a number")))?;
    let j = s
        .jobs
        .get(n)
        .ok_or_else(|| HttpError::NotFound(format!("no job {n}")))?;
    ok(json!(j))
}

// ---- backups ----------------------------------------------------------------

/// Opens a repository that must exist (a missing one is 404).
fn open_repo(storage: &RepoStorage) -> Result<Repo, HttpError> {
    if !storage.exists()? {
        return Err(HttpError::NotFound(format!(
            "no backup repository at {storage}"
        )));
    }
    Ok(storage.open()?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoQuery {
    repo: Option<String>,
}

async fn backups_list(
    State(s): St,
    _r: Reader,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let storage = jobs::repo_storage(&s, q.repo.as_deref())?;
    let v = blocking(move || {
        if !storage.exists()? {
            return Ok(json!({ "repo": storage.to_string(), "exists": false, "snapshots": [] }));
        }
        let repo = storage.open()?;
        let rows: Vec<Value> = repo
            .snapshots()?
            .iter()
            .rev()
            .map(|s| {
                json!({
                    "id": s.id, "created": s.created, "host": s.host_name,
                    "objects": s.objects.len(), "bytes": s.bytes,
                    "plaintext_bytes": s.plaintext_bytes, "tags": s.tags,
                    "description": s.description, "counts": s.counts,
                    "signed": s.signature == SnapshotSignature::Verified,
                })
            })
            .collect();
        Ok(json!({ "repo": repo.location(), "exists": true, "snapshots": rows }))
    })
    .await?;
    ok(v)
}

async fn backup_show(
    State(s): St,
    _r: Reader,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let storage = jobs::repo_storage(&s, q.repo.as_deref())?;
    let v = blocking(move || {
        let repo = open_repo(&storage)?;
        let id = repo.resolve_snapshot(&id)?;
        serde_json::to_value(repo.load_snapshot(&id)?)
            .map_err(|e| HttpError::Internal(e.to_string()))
    })
    .await?;
    ok(v)
}

/// `GET /api/v1/backups/{id}/download`: a format-2 repository's snapshot as
/// its export file (`backups export`: one tar that `restore --repo FILE`
/// and `clone --from-backup FILE` read in place), streamed from a temp
/// file that is unlinked once opened; a format-1 repository's snapshot
/// record as JSON (format 1 has no export).
async fn backup_download(
    State(s): St,
    _r: Reader,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let storage = jobs::repo_storage(&s, q.repo.as_deref())?;
    let tmp = s.store.dir().join("tmp");
    let (id, body) = blocking(move || {
        let repo = open_repo(&storage)?;
        let id = repo.resolve_snapshot(&id)?;
        let Some(r2) = repo.v2() else {
            let snap = repo.load_snapshot(&id)?;
            let body =
                serde_json::to_vec_pretty(&snap).map_err(|e| HttpError::Internal(e.to_string()))?;
            return Ok((id, Download::Record(body)));
        };
        std::fs::create_dir_all(&tmp).map_err(|e| HttpError::Internal(e.to_string()))?;
        let mut rnd = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut rnd);
        let file = tmp.join(format!(
            "download-{}.tar",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let exported = {
            let _lock = repo.lock("", bbsync_store::backup::LockFor::EXPORT)?;
            r2.export(&id, &file)
        };
        let opened = exported.and_then(|_| {
            std::fs::File::open(&file).map_err(|e| bbsync_store::StoreError::Io {
                context: format!("reading {}", file.display()),
                source: e,
            })
        });
        let _ = std::fs::remove_file(&file);
        Ok((id, Download::Export(opened?)))
    })
    .await?;
    // The id is the repository's own (checked by resolve_snapshot);
    // anything but [A-Za-z0-9._-] is dropped from the file name anyway.
    let name: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    Ok(match body {
        Download::Record(body) => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"snapshot-{name}.json\""),
                ),
            ],
            body,
        )
            .into_response(),
        Download::Export(file) => {
            let stream = futures::stream::unfold(Some(file), |file| async move {
                let mut f = file?;
                let r = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let n = std::io::Read::read(&mut f, &mut buf)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>((f, buf))
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                match r {
                    Ok((_, buf)) if buf.is_empty() => None,
                    Ok((f, buf)) => Some((Ok(buf), Some(f))),
                    Err(e) => Some((Err(e), None)),
                }
            });
            (
                [
                    (header::CONTENT_TYPE, "application/x-tar".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"bbsync-{name}.tar\""),
                    ),
                ],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
    })
}

/// What a download serves.
enum Download {
    /// A format-1 snapshot record (JSON).
    Record(Vec<u8>),
    /// A format-2 export file, opened (and already unlinked).
    Export(std::fs::File),
}

async fn backup_delete(
    State(s): St,
    _w: Writer,
    Path(id): Path<String>,
    q: Result<Query<RepoQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let storage = jobs::repo_storage(&s, q.repo.as_deref())?;
    let r = blocking(move || {
        Ok(open_repo(&storage)?
            .delete_snapshot(&id, bbsync_store::backup::retention::Removal::Apply)?)
    })
    .await?;
    let v = serde_json::to_value(&r).map_err(|e| HttpError::Internal(e.to_string()))?;
    s.events
        .emit("backup.deleted", json!({ "removed": r.removed }));
    ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

async fn backups_run(State(s): St, _w: Writer, Body(b): Body<BackupBody>) -> ApiResult {
    started(jobs::start(
        &s,
        JobSpec::Backup {
            repo: b.repo,
            only: b.only,
            description: b.description,
            tags: b.tags,
        },
    )?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    read_data: bool,
}

async fn backup_verify(
    State(s): St,
    _w: Writer,
    Path(id): Path<String>,
    Body(b): Body<VerifyBody>,
) -> ApiResult {
    started(jobs::start(
        &s,
        JobSpec::BackupVerify {
            repo: b.repo,
            // `all`: the whole repository, unreferenced files included.
            snapshot: (id != "all").then_some(id),
            read_data: b.read_data,
        },
    )?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    overwrite: bool,
    #[serde(default)]
    rekey: bool,
    #[serde(default)]
    skip_chunks: bool,
    #[serde(default = "yes")]
    safety_snapshot: bool,
    #[serde(default)]
    trust_host: Option<String>,
}

fn yes() -> bool {
    true
}

async fn backup_restore(
    State(s): St,
    _w: Writer,
    Path(id): Path<String>,
    Body(b): Body<RestoreBody>,
) -> ApiResult {
    started(jobs::start(
        &s,
        JobSpec::Restore {
            repo: b.repo,
            snapshot: Some(id),
            only: b.only,
            overwrite: b.overwrite,
            rekey: b.rekey,
            skip_chunks: b.skip_chunks,
            safety_snapshot: b.safety_snapshot,
            trust_host: b.trust_host,
        },
    )?)
}

async fn schedules(State(s): St, _r: Reader) -> ApiResult {
    let now = now_ms();
    let config = &s.opts.backup_config;
    let default = config.backup_repo_location(s.store.dir());
    let rows: Vec<Value> = config
        .jobs
        .iter()
        .map(|j| {
            // Where it backs up (a location holds no keys): its `repo`,
            // else the config's default.
            let repo = default
                .as_ref()
                .map_err(|_| ())
                .and_then(|d| job_location(j, d, s.store.dir()).map_err(|_| ()));
            let next = j
                .cron
                .parse::<Cron>()
                .ok()
                .and_then(|c| c.next_after(now))
                .map(bbsync_store::backup::rfc3339);
            json!({
                "cron": j.cron,
                "repo": repo.as_ref().map_or_else(
                    |_| j.repo.as_ref().map(|p| p.display().to_string()),
                    |l| Some(l.to_string()),
                ),
                "tags": j.tags,
                "keep_last": j.keep_last, "keep_daily": j.keep_daily,
                "keep_weekly": j.keep_weekly, "keep_monthly": j.keep_monthly,
                "next_run": next,
            })
        })
        .collect();
    ok(json!(rows))
}

async fn restores(State(s): St, _r: Reader) -> ApiResult {
    let dir = s.store.dir().to_path_buf();
    let v = blocking(move || Ok(history::list(&dir)?)).await?;
    ok(json!(v))
}

// ---- events ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

fn sse_event(e: &super::events::Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

async fn events(
    State(s): St,
    _r: Reader,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, HttpError> {
    let q = query(q)?;
    let last = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| HttpError::BadRequest("Last-Event-ID must be a number".into()))?,
        ),
        None => q.after,
    };
    let (mut rx, replay, gap) = s.events.subscribe(last);
    let stream = async_stream(move |tx| async move {
        let mut sent = last.unwrap_or(0);
        if let Some(first) = gap {
            let _ = tx
                .send(
                    SseEvent::default()
                        .event("gap")
                        .data(json!({ "missed_after": sent, "first_kept": first }).to_string()),
                )
                .await;
        }
        for e in replay {
            sent = e.id;
            if tx.send(sse_event(&e)).await.is_err() {
                return;
            }
        }
        loop {
            match rx.recv().await {
                Ok(e) if e.id <= sent => {}
                Ok(e) => {
                    sent = e.id;
                    if tx.send(sse_event(&e)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(
                            SseEvent::default()
                                .event("gap")
                                .data(json!({ "missed_after": sent, "dropped": n }).to_string()),
                        )
                        .await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

async fn log(State(s): St, _r: Reader, q: Result<Query<EventsQuery>, QueryRejection>) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(200).min(super::events::RING);
    ok(json!(s.events.tail(limit, q.after)))
}

#[cfg(test)]
mod tests {
    use super::names_loopback;

    #[test]
    fn loopback_host_names() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.8.9.1:1",
            "localhost",
            "LocalHost:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(names_loopback(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[::2]:80",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!names_loopback(bad), "{bad}");
        }
    }
}
