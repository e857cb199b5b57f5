//! The admin HTTP API of `serve --http` against real serving nodes: every
//! route with and without credentials, the read-only token on changes,
//! sessions and their CSRF token, bad input (404/400/413 in the JSON error
//! shape), a clone job over the API whose result equals the CLI's, its
//! progress events (resumable with Last-Event-ID), and `/metrics` parsed
//! as Prometheus text with its counters moving after the clone.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Child,
    sync::mpsc,
    time::Duration,
};

use crate::common::*;
use serde_json::{Value, json};

/// A `serve --http` node, killed on drop.
struct HttpNode {
    child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    base: String,
}

impl Drop for HttpNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve --listen 127.0.0.1:0 --http 127.0.0.1:0 EXTRA...` and
/// reads its two lines (address, `http: URL`).
fn serve_http(data: &Path, extra: &[&str]) -> HttpNode {
    let mut child = serve_http_command(data).args(extra).spawn().unwrap();
    let base = read_serve_http_base(&mut child);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    HttpNode { child, base }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// One HTTP exchange: status, headers we look at, body.
struct Reply {
    status: u16,
    set_cookie: Option<String>,
    location: Option<String>,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts the JSON error shape with this status; returns the message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["status"], status, "{v}");
        let msg = v["error"].as_str().unwrap().to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        msg
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    /// Session cookie and (maybe) CSRF token.
    Session(&'a str, Option<&'a str>),
}

fn request(method: &str, url: &str, cred: Cred, body: Option<&str>) -> Reply {
    let a = agent();
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    match cred {
        Cred::None => {}
        Cred::Bearer(t) => b = b.header("Authorization", format!("Bearer {t}")),
        Cred::Session(cookie, csrf) => {
            b = b.header("Cookie", format!("bbsync_session={cookie}"));
            if let Some(c) = csrf {
                b = b.header("X-CSRF-Token", c);
            }
        }
    }
    let resp = match body {
        Some(text) => a
            .run(
                b.header("Content-Type", "application/json")
                    .body(text.to_string())
                    .unwrap(),
            )
            .unwrap(),
        None => a.run(b.body(()).unwrap()).unwrap(),
    };
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let status = resp.status().as_u16();
    let set_cookie = header("set-cookie");
    let location = header("location");
    let content_type = header("content-type").unwrap_or_default();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    Reply {
        status,
        set_cookie,
        location,
        content_type,
        body,
    }
}

fn get(n: &HttpNode, path: &str, cred: Cred) -> Reply {
    request("GET", &format!("{}{path}", n.base), cred, None)
}

fn post(n: &HttpNode, path: &str, cred: Cred, body: &Value) -> Reply {
    request(
        "POST",
        &format!("{}{path}", n.base),
        cred,
        Some(&body.to_string()),
    )
}

/// Logs in through a fresh `bbsync ui` URL; returns the session cookie's
/// value and the session's CSRF token.
fn login(data: &Path) -> (String, String) {
    let url = ok(data, &["ui"]).trim().to_string();
    assert!(url.contains("/login?code="), "{url}");
    let r = request("GET", &url, Cred::None, None);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/"));
    let cookie = r.set_cookie.unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("bbsync_session=")
        .unwrap()
        .to_string();
    // The URL works once.
    request("GET", &url, Cred::None, None).error(401);
    let base = url.split("/login").next().unwrap();
    let s = request(
        "GET",
        &format!("{base}/api/v1/session"),
        Cred::Session(&value, None),
        None,
    );
    assert_eq!(s.status, 200, "{}", s.body);
    let csrf = s.json()["csrf"].as_str().unwrap().to_string();
    (value, csrf)
}

/// Waits until job `id` is over; returns its state.
fn wait_job(n: &HttpNode, token: &str, id: u64) -> Value {
    let mut last = Value::Null;
    wait_for(120, &format!("job {id} to finish"), || {
        last = get(n, &format!("/api/v1/jobs/{id}"), Cred::Bearer(token)).json();
        last["status"] != "running"
    });
    last
}

/// A source with the mini BBS that trusts `mirrors`.
fn source(root: &Path, mirrors: &[&Path]) -> std::path::PathBuf {
    let tree = root.join("tree");
    mini_bbs(&tree);
    let src = root.join("src");
    init(&src, "source");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    for m in mirrors {
        ok(&src, &["trust", "add", &card(m), "--role", "full"]);
    }
    src
}

#[test]
fn every_route_refuses_requests_without_valid_credentials() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let other = tmp.path().join("other");
    init(&other, "other");
    let data = tmp.path().join("node");
    init(&data, "node");
    let token = ok(&data, &["http", "token"]).trim().to_string();
    let read = ok(&data, &["http", "token", "--read-only"])
        .trim()
        .to_string();
    assert!(token.starts_with("bba_") && read.starts_with("bbr_"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("http.token"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let n = serve_http(&data, &[]);
    let before = served_snapshot(&data);

    // (method, path, body, changes something)
    let routes: Vec<(&str, &str, Option<Value>, bool)> = vec![
        ("GET", "/metrics", None, false),
        ("GET", "/api/v1/session", None, false),
        ("GET", "/api/v1/status", None, false),
        ("GET", "/api/v1/peers", None, false),
        ("GET", "/api/v1/upstreams", None, false),
        ("GET", "/api/v1/objects", None, false),
        ("GET", "/api/v1/objects/config:bbs.toml", None, false),
        ("GET", "/api/v1/trust", None, false),
        (
            "POST",
            "/api/v1/trust",
            Some(json!({"card": card(&other)})),
            true,
        ),
        ("DELETE", "/api/v1/trust/0123456789abcdef", None, true),
        (
            "POST",
            "/api/v1/rekey",
            Some(json!({"dry_run": true})),
            true,
        ),
        ("GET", "/api/v1/jobs", None, false),
        (
            "POST",
            "/api/v1/jobs",
            Some(json!({"kind": "verify"})),
            true,
        ),
        ("GET", "/api/v1/jobs/1", None, false),
        ("GET", "/api/v1/backups", None, false),
        ("POST", "/api/v1/backups", Some(json!({})), true),
        ("GET", "/api/v1/backups/schedules", None, false),
        ("GET", "/api/v1/backups/restores", None, false),
        ("GET", "/api/v1/backups/latest", None, false),
        ("DELETE", "/api/v1/backups/latest", None, true),
        (
            "POST",
            "/api/v1/backups/latest/verify",
            Some(json!({})),
            true,
        ),
        (
            "POST",
            "/api/v1/backups/latest/restore",
            Some(json!({})),
            true,
        ),
        ("GET", "/api/v1/backups/latest/download", None, false),
        ("GET", "/api/v1/events", None, false),
        ("GET", "/api/v1/log", None, false),
        ("POST", "/logout", None, true),
    ];
    for (method, path, body, _) in &routes {
        let url = format!("{}{path}", n.base);
        let b = body.as_ref().map(Value::to_string);
        let msg = request(method, &url, Cred::None, b.as_deref()).error(401);
        assert!(
            msg.contains("authentication required"),
            "{method} {path}: {msg}"
        );
        let msg = request(method, &url, Cred::Bearer("bba_0000"), b.as_deref()).error(401);
        assert!(msg.contains("invalid token"), "{method} {path}: {msg}");
        let msg = request(method, &url, Cred::Session("forged", None), b.as_deref()).error(401);
        assert!(msg.contains("session"), "{method} {path}: {msg}");
    }
    // Nothing changed, nothing was read into a job.
    assert_eq!(served_snapshot(&data).ls, before.ls);
    assert_eq!(served_snapshot(&data).trust, before.trust);
    let jobs = get(&n, "/api/v1/jobs", Cred::Bearer(&token)).json();
    assert_eq!(jobs, json!([]));

    // The read-only token: every change is 403 and changes nothing.
    for (method, path, body, write) in &routes {
        let url = format!("{}{path}", n.base);
        let b = body.as_ref().map(Value::to_string);
        if *write {
            let msg = request(method, &url, Cred::Bearer(&read), b.as_deref()).error(403);
            assert!(msg.contains("read-only token"), "{msg}");
        }
    }
    assert_eq!(served_snapshot(&data).trust, before.trust);
    assert_eq!(
        get(&n, "/api/v1/jobs", Cred::Bearer(&token)).json(),
        json!([])
    );
    // ...and reads.
    for path in [
        "/api/v1/status",
        "/api/v1/trust",
        "/metrics",
        "/api/v1/objects",
    ] {
        assert_eq!(get(&n, path, Cred::Bearer(&read)).status, 200, "{path}");
    }
    // /healthz needs nothing; it tells nothing but liveness.
    let h = get(&n, "/healthz", Cred::None);
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");

    // A session: reads with the cookie; changes only with its CSRF token.
    let (cookie, csrf) = login(&data);
    assert_eq!(
        get(&n, "/api/v1/status", Cred::Session(&cookie, None)).status,
        200
    );
    let add = json!({"card": card(&other), "role": "blind"});
    let msg = post(&n, "/api/v1/trust", Cred::Session(&cookie, None), &add).error(403);
    assert!(msg.contains("CSRF"), "{msg}");
    let msg = post(
        &n,
        "/api/v1/trust",
        Cred::Session(&cookie, Some("wrong")),
        &add,
    )
    .error(403);
    assert!(msg.contains("CSRF"), "{msg}");
    assert_eq!(served_snapshot(&data).trust, before.trust);
    let r = post(
        &n,
        "/api/v1/trust",
        Cred::Session(&cookie, Some(&csrf)),
        &add,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["role"], "blind");
    let trusted = json(&data, &["trust", "list"]);
    assert_eq!(trusted[0]["name"], "other");
    // The admin token removes it again.
    let id = trusted[0]["instance_id"].as_str().unwrap();
    let r = request(
        "DELETE",
        &format!("{}/api/v1/trust/{}", n.base, &id[..12]),
        Cred::Bearer(&token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["removed"], id);
    assert_eq!(json(&data, &["trust", "list"]), json!([]));
    // Logout ends the session.
    let r = request(
        "POST",
        &format!("{}/logout", n.base),
        Cred::Session(&cookie, Some(&csrf)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    get(&n, "/api/v1/status", Cred::Session(&cookie, None)).error(401);

    // Bad input: JSON errors with the right status, nothing changed.
    let msg = get(&n, "/api/v1/nothing-here", Cred::Bearer(&token)).error(404);
    assert!(msg.contains("/api/v1/nothing-here"), "{msg}");
    get(&n, "/nothing", Cred::None).error(404);
    let url = format!("{}/api/v1/trust", n.base);
    let msg = request("POST", &url, Cred::Bearer(&token), Some("{\"card\": ")).error(400);
    assert!(msg.starts_with("malformed JSON"), "{msg}");
    let msg = request(
        "POST",
        &url,
        Cred::Bearer(&token),
        Some("{\"kard\": \"x\"}"),
    )
    .error(400);
    assert!(msg.contains("kard"), "{msg}");
    let msg = post(
        &n,
        "/api/v1/trust",
        Cred::Bearer(&token),
        &json!({"card": "bbsync1garbage"}),
    )
    .error(400);
    assert!(msg.contains("card"), "{msg}");
    let big = format!("{{\"card\": \"{}\"}}", "a".repeat(100_000));
    let msg = request("POST", &url, Cred::Bearer(&token), Some(&big)).error(413);
    assert!(msg.contains("64 KiB"), "{msg}");
    let msg = post(
        &n,
        "/api/v1/jobs",
        Cred::Bearer(&token),
        &json!({"kind": "clone", "addr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .error(400);
    assert!(msg.contains("/p2p/"), "{msg}");
    let msg = post(
        &n,
        "/api/v1/jobs",
        Cred::Bearer(&token),
        &json!({"kind": "mine-bitcoin"}),
    )
    .error(400);
    assert!(msg.contains("mine-bitcoin"), "{msg}");
    get(&n, "/api/v1/jobs/99", Cred::Bearer(&token)).error(404);
    get(&n, "/api/v1/jobs/x", Cred::Bearer(&token)).error(400);
    get(&n, "/api/v1/objects?limit=0", Cred::Bearer(&token)).error(400);
    get(&n, "/api/v1/objects/config:nothing", Cred::Bearer(&token)).error(404);
    let r = request("PUT", &url, Cred::Bearer(&token), Some("{}"));
    r.error(405);
    assert_eq!(served_snapshot(&data).trust, before.trust);
    assert_eq!(served_snapshot(&data).ls, before.ls);

    // Rotation: the old tokens stop working at once in the running node.
    let new = ok(&data, &["http", "token", "--rotate"]).trim().to_string();
    assert_ne!(new, token);
    get(&n, "/api/v1/status", Cred::Bearer(&token)).error(401);
    get(&n, "/api/v1/status", Cred::Bearer(&read)).error(401);
    assert_eq!(get(&n, "/api/v1/status", Cred::Bearer(&new)).status, 200);
    Ok(())
}

#[test]
fn the_http_address_and_the_token_file_are_checked() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("node");
    init(&data, "node");
    let o = run(
        &data,
        &[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "0.0.0.0:0",
        ],
    );
    let line = assert_one_line_error(&o, "a non-loopback --http");
    assert_mentions(
        &line,
        &["0.0.0.0:0", "not a loopback address", "--http-allow-remote"],
    );
    let o = run(
        &data,
        &[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "localhost",
        ],
    );
    let line = assert_one_line_error(&o, "a malformed --http");
    assert_mentions(&line, &["--http localhost", "IP address and port"]);
    // `ui` needs a running `serve --http`.
    let o = run(&data, &["ui"]);
    let line = assert_one_line_error(&o, "ui without serve");
    assert_mentions(&line, &["no node is serving", "--http"]);
    // A token file others can read is refused, and so is serving with it.
    ok(&data, &["http", "token"]);
    let path = data.join("http.token");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let o = run(&data, &["http", "token"]);
    let line = assert_one_line_error(&o, "a readable token file");
    assert_mentions(&line, &["http.token", "0644", "chmod 600"]);
    let o = run(
        &data,
        &[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let line = assert_one_line_error(&o, "serve with a readable token file");
    assert_mentions(&line, &["http.token", "chmod 600"]);
    Ok(())
}

/// Reads server-sent events from `url` in a thread: (id, kind, data).
fn sse(
    url: &str,
    token: &str,
    last_id: Option<u64>,
) -> mpsc::Receiver<(Option<u64>, String, Value)> {
    let (tx, rx) = mpsc::channel();
    let mut b = ureq::http::Request::builder()
        .uri(url)
        .header("Authorization", format!("Bearer {token}"));
    if let Some(id) = last_id {
        b = b.header("Last-Event-ID", id.to_string());
    }
    let req = b.body(()).unwrap();
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = a.run(req).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let reader = BufReader::new(resp.into_body().into_reader());
    std::thread::spawn(move || {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !kind.is_empty() {
                    let v = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if tx.send((id, std::mem::take(&mut kind), v)).is_err() {
                        return;
                    }
                }
                id = None;
                data.clear();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    });
    rx
}

/// The value of a sample of `family` with `labels` in Prometheus text.
pub(crate) fn sample(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == family && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `ls --all --json` rows without the fields local to a store.
fn content(data: &Path) -> Vec<Value> {
    let mut rows: Vec<Value> = json(data, &["ls", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!({
                "id": r["id"], "kind": r["kind"], "name": r["name"], "version": r["version"],
                "manifest_id": r["manifest_id"], "size": r["size"], "stored": r["stored"],
                "chunks": r["chunks"], "state": r["state"],
            })
        })
        .collect();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    rows
}

#[test]
fn a_clone_job_over_the_api_equals_the_cli_clone_with_live_progress_and_metrics() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (api_dst, cli_dst) = (tmp.path().join("api"), tmp.path().join("cli"));
    init(&api_dst, "api-mirror");
    init(&cli_dst, "cli-mirror");
    let src = source(tmp.path(), &[&api_dst, &cli_dst]);
    let server = serve(&src);
    // The source's card names no address; config.toml's `peers` does.
    let config = api_dst.join("config.toml");
    let text = std::fs::read_to_string(&config)?;
    assert!(text.contains("\npeers = []\n"), "{text}");
    let text = text.replace(
        "\npeers = []\n",
        &format!("\npeers = [{:?}]\n", server.addr),
    );
    std::fs::write(&config, text)?;
    let n = serve_http(&api_dst, &[]);
    let token = ok(&api_dst, &["http", "token"]).trim().to_string();

    // Metrics before: parsed as Prometheus text, nothing received yet.
    let m = get(&n, "/metrics", Cred::Bearer(&token));
    assert!(
        m.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type
    );
    assert_eq!(
        sample(
            &m.body,
            "bbsync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m.body, "bbsync_chunks_total", &[("direction", "received")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&m.body, "bbsync_objects", &[("kind", "message")]),
        None
    );

    let events = sse(&format!("{}/api/v1/events", n.base), &token, None);
    let r = post(
        &n,
        "/api/v1/jobs",
        Cred::Bearer(&token),
        &json!({"kind": "clone", "addr": server.addr}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_u64().unwrap();
    let job = wait_job(&n, &token, id);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["complete"], true, "{job}");
    assert!(job["result"]["chunks_fetched"].as_u64().unwrap() > 0);
    assert!(!job["log"].as_array().unwrap().is_empty());

    // Its events: started, progress of its phases, finished; ids increase.
    let mut seen = Vec::new();
    let mut last_id = 0;
    loop {
        let (eid, kind, data) = events.recv_timeout(Duration::from_secs(60))?;
        let eid = eid.unwrap();
        assert!(eid > last_id, "ids must increase: {eid} after {last_id}");
        last_id = eid;
        if data["data"]["id"] == id {
            seen.push((eid, kind.clone(), data["data"].clone()));
        }
        if kind == "job.finished" && data["data"]["id"] == id {
            assert_eq!(data["data"]["status"], "succeeded");
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds[0], "job.started", "{kinds:?}");
    assert!(
        seen.iter()
            .any(|(_, k, d)| k == "job.progress" && d["phase"] == "chunks"),
        "{kinds:?}"
    );
    // Resuming with Last-Event-ID replays exactly what followed that id.
    let (resume_from, _, _) = seen[1].clone();
    let again = sse(
        &format!("{}/api/v1/events", n.base),
        &token,
        Some(resume_from),
    );
    let (first, _, _) = again.recv_timeout(Duration::from_secs(30))?;
    assert_eq!(first, Some(resume_from + 1));

    // The CLI's clone of the same source gives the same store content.
    let cli = json(&cli_dst, &["clone", &server.addr]);
    assert_eq!(cli["complete"], true);
    assert_eq!(content(&api_dst), content(&cli_dst));
    assert_eq!(job["result"]["objects"], cli["objects"]);
    assert_eq!(job["result"]["chunks_fetched"], cli["chunks_fetched"]);
    assert_eq!(job["result"]["bytes"], cli["bytes"]);
    let (code, v) = verify(&api_dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");

    // Axon's "clone configuration from peer" on the trusted source (now
    // pinned in the trust table): nothing new to take.
    let src_id = json(&src, &["status"])["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(
        &n,
        "/api/v1/jobs",
        Cred::Bearer(&token),
        &json!({"kind": "clone", "instance": &src_id[..12], "only": ["config"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let again = wait_job(&n, &token, r.json()["id"].as_u64().unwrap());
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["result"]["objects"], 0, "{again}");
    assert_eq!(again["result"]["chunks_fetched"], 0, "{again}");

    // Metrics after: the counters moved, the store gauges show the clone
    // (two clone jobs ran, the second fetched nothing).
    let m = get(&n, "/metrics", Cred::Bearer(&token)).body;
    let received = sample(&m, "bbsync_chunks_total", &[("direction", "received")]).unwrap();
    assert_eq!(received, job["result"]["chunks_fetched"].as_f64().unwrap());
    let bytes = sample(
        &m,
        "bbsync_chunk_bytes_transferred_total",
        &[("direction", "received")],
    )
    .unwrap();
    assert_eq!(bytes, job["result"]["bytes"].as_f64().unwrap());
    assert_eq!(
        sample(&m, "bbsync_objects", &[("kind", "message")]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            "bbsync_job_duration_seconds_count",
            &[("kind", "clone"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    // The status the API shows is the node's real state.
    let s = get(&n, "/api/v1/status", Cred::Bearer(&token)).json();
    let st = json(&api_dst, &["status"]);
    assert_eq!(s["store"]["objects"], st["objects"]);
    assert_eq!(s["instance_id"], st["instance_id"]);
    assert_eq!(s["card"].as_str().unwrap(), card(&api_dst));
    let objs = get(
        &n,
        "/api/v1/objects?kind=message&limit=1",
        Cred::Bearer(&token),
    )
    .json();
    assert_eq!(objs["total"], 2);
    assert_eq!(objs["items"].as_array().unwrap().len(), 1);

    // A backup job, then the backups list, show, verify and restore history.
    let r = post(
        &n,
        "/api/v1/backups",
        Cred::Bearer(&token),
        &json!({"tags": ["api"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let b = wait_job(&n, &token, r.json()["id"].as_u64().unwrap());
    assert_eq!(b["status"], "succeeded", "{b}");
    let list = get(&n, "/api/v1/backups", Cred::Bearer(&token)).json();
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{list}");
    assert_eq!(snaps[0]["id"], b["result"]["snapshot"]);
    assert_eq!(snaps[0]["tags"], json!(["api"]));
    let cli_list = json(&api_dst, &["backups", "list"]);
    assert_eq!(cli_list[0]["id"], snaps[0]["id"]);
    // The dashboard's Download: the snapshot's export file (format 2, the
    // default), which the CLI reads in place.
    let mut resp = agent()
        .get(&format!("{}/api/v1/backups/latest/download", n.base))
        .header("Authorization", &format!("Bearer {token}"))
        .call()?;
    assert_eq!(resp.status().as_u16(), 200);
    let tar = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    let file = tmp.path().join("download.tar");
    std::fs::write(&file, &tar)?;
    let from_file = json(
        &api_dst,
        &["backups", "list", "--repo", file.to_str().unwrap()],
    );
    assert_eq!(from_file[0]["id"], snaps[0]["id"]);
    ok(
        &api_dst,
        &[
            "backups",
            "verify",
            "--read-data",
            "--repo",
            file.to_str().unwrap(),
        ],
    );
    let m = get(&n, "/metrics", Cred::Bearer(&token)).body;
    assert!(
        m.contains("bbsync_backup_last_success_timestamp_seconds{"),
        "{m}"
    );
    Ok(())
}

/// One raw HTTP/1.1 GET with this `Host` line (none: no `Host` at all);
/// returns the status line and the body.
fn raw_get(n: &HttpNode, path: &str, host: Option<&str>, token: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = n.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn a_request_naming_another_host_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("node");
    init(&data, "node");
    let token = ok(&data, &["http", "token"]).trim().to_string();
    let n = serve_http(&data, &[]);
    let port = n.base.rsplit_once(':').unwrap().1.to_string();
    // A page whose DNS name was rebound to 127.0.0.1 sends its own name:
    // refused before any route, even /healthz, even with the token.
    for host in ["evil.example", &format!("evil.example:{port}"), "10.0.0.1"] {
        for path in ["/healthz", "/api/v1/status", "/"] {
            let (status, body) = raw_get(&n, path, Some(host), &token);
            assert!(status.contains(" 403 "), "{host} {path}: {status}");
            assert!(
                body.contains("the Host header does not name a loopback address"),
                "{body}"
            );
        }
    }
    // Loopback names pass (and a request without Host, which no browser sends).
    for host in [
        Some(format!("127.0.0.1:{port}")),
        Some(format!("localhost:{port}")),
        Some("LOCALHOST".to_string()),
        None,
    ] {
        let (status, body) = raw_get(&n, "/api/v1/status", host.as_deref(), &token);
        assert!(status.contains(" 200 "), "{host:?}: {status} {body}");
    }
    Ok(())
}

/// The samples of `family` in Prometheus text, by their `class` label.
fn by_class(text: &str, family: &str) -> std::collections::BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == family)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.labels.get("class").unwrap_or("").to_string(), v)
        })
        .collect()
}

#[test]
fn the_verify_metrics_show_the_last_verify_of_the_store_by_the_cli_across_restarts() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = source(tmp.path(), &[]);
    let token = ok(&data, &["http", "token"]).trim().to_string();
    // Before any verify: no verify samples at all (not a reassuring 0).
    let n = serve_http(&data, &[]);
    let m = get(&n, "/metrics", Cred::Bearer(&token)).body;
    assert_eq!(sample(&m, "bbsync_verify_last_problems", &[]), None, "{m}");
    drop(n);
    wait_unlocked(&data);

    // A clean verify by the CLI, on the stopped node: seen by the next serve.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let (code, _) = verify(&data, &[]);
    assert_eq!(code, 0);
    let n = serve_http(&data, &[]);
    let m = get(&n, "/metrics", Cred::Bearer(&token)).body;
    assert_eq!(
        sample(&m, "bbsync_verify_last_problems", &[]),
        Some(0.0),
        "{m}"
    );
    let at = sample(&m, "bbsync_verify_last_timestamp_seconds", &[]).unwrap();
    assert!(at >= before.floor(), "{at} < {before}");
    assert!(by_class(&m, "bbsync_verify_problems").is_empty(), "{m}");
    drop(n);
    wait_unlocked(&data);

    // Lost chunks: the CLI's verify fails, and the metrics say so by class,
    // with the same counts as its report.
    let lost: Vec<_> = real_chunks(&data).into_iter().take(2).collect();
    lose_chunks(&data, &lost);
    wait_unlocked(&data);
    let (code, report) = verify(&data, &[]);
    assert_eq!(code, 1);
    let n = serve_http(&data, &[]);
    let m = get(&n, "/metrics", Cred::Bearer(&token)).body;
    let classes = by_class(&m, "bbsync_verify_problems");
    let expected: std::collections::BTreeMap<String, f64> = report["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    assert!(!expected.is_empty(), "{report}");
    assert_eq!(classes, expected, "{m}");
    assert_eq!(
        sample(&m, "bbsync_verify_last_problems", &[]),
        Some(report["problems"].as_array().unwrap().len() as f64)
    );
    Ok(())
}
