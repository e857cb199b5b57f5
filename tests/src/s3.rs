//! A real S3 server for tests: `moto_server` (PyPI `moto[server]`) on
//! 127.0.0.1 with a bucket, stopped on drop, and a counting TCP proxy in
//! front of it that can be cut and restored (a server that fails mid-way
//! without losing what it holds).
//!
//! Found as `$BBSYNC_MOTO_SERVER`, else `moto_server` on `PATH`. When it is
//! missing, [`MotoServer::start`] returns `None` after saying so (a skip),
//! unless `BBSYNC_REQUIRE_S3=1`, where it panics (CI installs it; see
//! `.ci/run`).
//!
//! Only std: the store's tests include this file by path (the store cannot
//! depend on this crate, which depends on the store).

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The access key id the tests use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "bbsync-test-key";
/// The secret key the tests use (moto accepts any).
pub const SECRET_ACCESS_KEY: &str = "bbsync-test-secret";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// The moto_server executable, if there is one.
pub fn moto_server_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BBSYNC_MOTO_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

/// A running moto_server (killed on drop).
pub struct MotoServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 request and returns the status code (moto checks no
/// signature, so bucket set-up needs no S3 client).
fn http(port: u16, method: &str, path: &str) -> io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// Sends one HTTP/1.1 request with `headers` and `body`; returns the
/// status code and the body (read to the end: the connection is closed).
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all).into_owned();
    let (status, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {status:?}")))?;
    Ok((code, rest.to_string()))
}

/// Percent-encodes a form value.
fn form_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text between `<tag>` and `</tag>`, each occurrence.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_string());
        rest = &after[j + close.len()..];
    }
    out
}

impl MotoServer {
    /// One IAM call (Query API, form body), before authentication is on.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut body = String::from("Version=2010-05-08");
        for (k, v) in params {
            body.push_str(&format!("&{k}={}", form_value(v)));
        }
        // moto routes by the credential scope's service; the signature
        // is not checked while authentication is off.
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
        let (code, text) = exchange(
            self.port,
            "POST",
            "/",
            &[
                ("Authorization", auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 200, "IAM {params:?}: HTTP {code}: {text}");
        text
    }

    /// Makes moto check every later request like AWS does: a valid
    /// Signature V4 by a key of an IAM user whose policy allows the
    /// action. Creates that user (allowed `s3:*`) and its access key, and
    /// returns the key's id and secret. Create buckets first.
    pub fn require_auth(&self) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", "bbsync")]);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "bbsync"),
            ("PolicyName", "s3"),
            ("PolicyDocument", policy),
        ]);
        let text = self.iam(&[("Action", "CreateAccessKey"), ("UserName", "bbsync")]);
        let id = xml_values(&text, "AccessKeyId").pop().unwrap();
        let secret = xml_values(&text, "SecretAccessKey").pop().unwrap();
        self.set_auth(true);
        (id, secret)
    }

    /// Turns authentication on (`true`: every request from now) or off.
    pub fn set_auth(&self, on: bool) {
        let count = if on { "0" } else { "inf" };
        let (code, text) = exchange(
            self.port,
            "POST",
            "/moto-api/reset-auth",
            &[],
            count.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 200, "moto reset-auth: HTTP {code}: {text}");
    }

    /// The names of every object in `bucket` (an unsigned LIST: only
    /// while authentication is off).
    pub fn object_keys(&self, bucket: &str) -> Vec<String> {
        let (code, text) = exchange(
            self.port,
            "GET",
            &format!("/{bucket}?list-type=2&max-keys=1000"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(code, 200, "listing {bucket}: HTTP {code}: {text}");
        xml_values(&text, "Key")
    }

    /// Starts moto_server on a free port and waits until it answers;
    /// `None` (after printing why) when it is not installed and
    /// `BBSYNC_REQUIRE_S3` is not `1`.
    pub fn start() -> Option<MotoServer> {
        let Some(exe) = moto_server_path() else {
            assert!(
                std::env::var("BBSYNC_REQUIRE_S3").as_deref() != Ok("1"),
                "BBSYNC_REQUIRE_S3=1 but moto_server is not installed (set BBSYNC_MOTO_SERVER or put it on PATH; .ci/run installs it)"
            );
            eprintln!(
                "SKIPPED: moto_server not found (set BBSYNC_MOTO_SERVER or put it on PATH; BBSYNC_REQUIRE_S3=1 makes this a failure)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut s = MotoServer {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("moto_server exited ({st}): {}", s.log_text());
            }
            if http(port, "GET", "/").is_ok() {
                return Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s: {}",
                s.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let code = http(self.port, "PUT", &format!("/{name}")).unwrap();
        assert_eq!(code, 200, "creating bucket {name}: HTTP {code}");
    }

    /// moto's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts per HTTP method of the requests that went through a [`Proxy`].
pub type MethodCounts = BTreeMap<String, u64>;

#[derive(Default)]
struct ProxyState {
    counts: Mutex<MethodCounts>,
    /// While set, connections are refused (accepted and closed at once).
    cut: AtomicBool,
    /// Cut when this many more PUT requests have arrived (the one that
    /// reaches it is not forwarded); 0: never.
    cut_at_put: AtomicU64,
    /// Open connections (both sides), shut down by a cut.
    conns: Mutex<Vec<TcpStream>>,
    /// Requests whose framing the proxy could not follow (chunked bodies).
    unparsed: AtomicU64,
    /// PUTs carrying `If-None-Match: *` (conditional creates).
    conditional_puts: AtomicU64,
    /// Answer conditional PUTs with 501 NotImplemented (as a server
    /// without conditional writes does) instead of forwarding them.
    refuse_conditional: AtomicBool,
}

impl ProxyState {
    fn cut_now(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server: it counts the HTTP
/// requests that pass by method, and can be cut (every connection closed,
/// new ones refused) and restored. Stops accepting on drop.
pub struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut conns = st.conns.lock().unwrap();
                    conns.retain(|c| c.peer_addr().is_ok());
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let st2 = st.clone();
                thread::spawn(move || forward_requests(client, server, &st2));
                thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { port, state, stop }
    }

    /// Its URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests passed so far, by method (`GET`, `PUT`, ...).
    pub fn counts(&self) -> MethodCounts {
        self.state.counts.lock().unwrap().clone()
    }

    /// Requests of one method passed so far.
    pub fn count(&self, method: &str) -> u64 {
        self.counts().get(method).copied().unwrap_or(0)
    }

    /// Requests whose body framing the proxy could not follow (then the
    /// counts of that connection stop); tests expect none.
    pub fn unparsed(&self) -> u64 {
        self.state.unparsed.load(Ordering::SeqCst)
    }

    /// PUTs that carried `If-None-Match: *` (conditional creates).
    pub fn conditional_puts(&self) -> u64 {
        self.state.conditional_puts.load(Ordering::SeqCst)
    }

    /// Answers conditional PUTs (`If-None-Match: *`) with `501
    /// NotImplemented` from now on (`false`: forwards them again).
    pub fn refuse_conditional_puts(&self, on: bool) {
        self.state.refuse_conditional.store(on, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut_now();
    }

    /// Cuts when the `n`-th PUT from now arrives (that PUT is not
    /// forwarded): a failure at a known point of a run.
    pub fn cut_at_put(&self, n: u64) {
        self.state.cut_at_put.store(n, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.cut_at_put.store(0, Ordering::SeqCst);
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.state.cut_now();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies requests from `client` to `server`, one at a time, counting
/// each by method (headers parsed; a body of `Content-Length` bytes
/// copied as it is).
fn forward_requests(client: TcpStream, mut server: TcpStream, st: &ProxyState) {
    let mut r = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            let end = line == b"\r\n" || line == b"\n";
            head.extend_from_slice(&line);
            if end {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let method = text.split_whitespace().next().unwrap_or("?").to_string();
        let mut len = 0u64;
        let mut chunked = false;
        let mut conditional = false;
        for l in text.lines().skip(1) {
            if let Some((k, v)) = l.split_once(':') {
                if method == "PUT"
                    && k.trim().eq_ignore_ascii_case("if-none-match")
                    && v.trim() == "*"
                {
                    st.conditional_puts.fetch_add(1, Ordering::SeqCst);
                    conditional = true;
                }
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if k.trim().eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        if method == "PUT" {
            let left = st.cut_at_put.load(Ordering::SeqCst);
            if left == 1 {
                st.cut_at_put.store(0, Ordering::SeqCst);
                st.cut_now();
                return;
            }
            if left > 1 {
                st.cut_at_put.store(left - 1, Ordering::SeqCst);
            }
        }
        *st.counts.lock().unwrap().entry(method).or_default() += 1;
        if conditional && st.refuse_conditional.load(Ordering::SeqCst) {
            // Read the body, answer in place of the server (one request
            // at a time on a connection: nothing else is in flight).
            if io::copy(&mut (&mut r).take(len), &mut io::sink()).is_err() {
                return;
            }
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
            let answer = format!(
                "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if r.get_ref()
                .try_clone()
                .and_then(|mut c| c.write_all(answer.as_bytes()))
                .is_err()
            {
                return;
            }
            continue;
        }
        if server.write_all(&head).is_err() {
            return;
        }
        if chunked {
            st.unparsed.fetch_add(1, Ordering::SeqCst);
            let _ = io::copy(&mut r, &mut server);
            return;
        }
        if io::copy(&mut (&mut r).take(len), &mut server).is_err() {
            return;
        }
    }
}

/// Waits until `cond` holds, or panics with `what` after `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}
