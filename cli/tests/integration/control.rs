//! While `bbsync serve` owns a data dir, the other commands on it are
//! carried out by the serving node through the control socket: same output,
//! same exit codes, relative paths resolved in the caller's directory, and
//! what they import is served to peers at once.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

use crate::common::*;

#[test]
fn commands_run_through_the_serving_node() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    init(&src, "source");
    init(&dst, "clone");
    let server = serve(&src);

    // The socket is there and owner-only.
    let meta = std::fs::symlink_metadata(src.join("control.sock"))?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Writes go through the node (sled is locked by it, so a local open
    // would fail): import, trust.
    let imported = json(&src, &["import-bbs", tree.to_str().unwrap()]);
    assert!(imported["new"].as_u64().unwrap() > 0, "{imported}");
    ok(&src, &["trust", "add", &card(&dst), "--role", "full"]);
    let listed = json(&src, &["ls"]);
    assert_eq!(
        listed.as_array().unwrap().len() as u64,
        imported["new"].as_u64().unwrap()
    );
    let (code, v) = verify(&src, &["--read-data"]);
    assert_eq!(code, 0, "{v}");

    // A relative destination is the caller's, not the node's.
    bbsync(&src)
        .current_dir(tmp.path())
        .args(["export-bbs", "out-rel"])
        .assert()
        .success();
    assert_same_tree(&tree, &tmp.path().join("out-rel"));

    // Failures keep their one-line error and exit code.
    let o = run(&src, &["export", "file:nope", "x"]);
    let line = assert_one_line_error(&o, "unknown object through the socket");
    assert!(line.contains("nope"), "{line}");
    let o = run(&src, &["serve"]);
    let line = assert_one_line_error(&o, "a second serve");
    assert!(line.contains("already serving"), "{line}");

    // Peers see what was imported while the node serves, including a post
    // written after their first clone.
    let first = json(&dst, &["clone", &server.addr]);
    assert_eq!(first["complete"], true, "{first}");
    write(
        &tree.join("boards/general/99.json"),
        "{\"id\":99,\"body\":\"written while serving\"}",
    );
    let again = json(&src, &["import-bbs", tree.to_str().unwrap()]);
    assert_eq!(again["new"], 1, "{again}");
    let second = json(&dst, &["clone", &server.addr]);
    assert_eq!(second["objects"], 1, "{second}");
    assert_eq!(second["complete"], true, "{second}");
    let out = tmp.path().join("out-dst");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);

    // The output through the socket is the output of a local run.
    let through = ok(&src, &["ls"]);
    assert!(server.stop().success());
    let local = ok(&src, &["ls"]);
    assert_eq!(through, local);
    assert!(!src.join("control.sock").exists(), "socket left behind");
    Ok(())
}

#[test]
fn a_socket_left_by_a_killed_node_is_ignored() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let data = tmp.path().join("d");
    init(&data, "a");
    let mut server = serve(&data);
    server.child.kill()?; // SIGKILL: no clean-up
    server.child.wait()?;
    assert!(data.join("control.sock").exists());
    wait_unlocked(&data);
    // Commands run locally again, and a new node takes the socket over.
    ok(&data, &["status"]);
    let server = serve(&data);
    ok(&data, &["status"]);
    drop(server);
    Ok(())
}

/// Issue 10, item 8: before the client sends anything (its arguments and
/// `BBSYNC_*` environment, `BBSYNC_PASSPHRASE` included), the data dir and
/// the socket must belong to its uid, the data dir must not be writable by
/// others, and the process behind the socket must run as its uid. These
/// tests plant sockets as another uid, so they need root (CI runs as root).
fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// A socket listening at `path` in this process: counts the connections
/// and the bytes it receives.
struct FakeNode {
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeNode {
    fn listen(path: &std::path::Path) -> FakeNode {
        use std::{io::Read as _, sync::atomic::Ordering};
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                c.fetch_add(1, Ordering::SeqCst);
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut buf = Vec::new();
                let _ = conn.read_to_end(&mut buf);
                b.fetch_add(buf.len(), Ordering::SeqCst);
            }
        });
        FakeNode { connections, bytes }
    }

    fn received(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// Runs `bbsync status` on `data` with a passphrase in the environment.
fn status_with_secret(data: &std::path::Path) -> Out {
    bbsync(data)
        .env("BBSYNC_PASSPHRASE", "hunter2-do-not-send")
        .arg("status")
        .output()
        .unwrap()
        .into()
}

#[test]
fn the_client_refuses_a_socket_or_data_dir_of_another_user() -> TestResult {
    if !is_root() {
        eprintln!("skipped: needs root to plant a socket as another uid");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("d");
    init(&data, "victim");
    let sock = data.join("control.sock");
    let fake = FakeNode::listen(&sock);

    // A socket that belongs to another uid.
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534))?;
    let line = assert_one_line_error(&status_with_secret(&data), "a foreign socket");
    assert_eq!(
        line,
        format!(
            "error: control socket {} belongs to uid 65534, not to this user (uid 0); refusing to hand the command to it",
            sock.display()
        )
    );
    std::os::unix::fs::chown(&sock, Some(0), Some(0))?;

    // A data dir that others may write (they could swap the socket).
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))?;
    let line = assert_one_line_error(&status_with_secret(&data), "a world-writable data dir");
    assert_eq!(
        line,
        format!(
            "error: data dir {} is writable by other users (mode 0777); refusing to use its control socket (chmod go-w it)",
            data.display()
        )
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;

    // A data dir that belongs to another uid.
    std::os::unix::fs::chown(&data, Some(65534), Some(65534))?;
    let line = assert_one_line_error(&status_with_secret(&data), "a foreign data dir");
    assert_eq!(
        line,
        format!(
            "error: data dir {} belongs to uid 65534, not to this user (uid 0); refusing to hand the command to its control socket",
            data.display()
        )
    );
    std::os::unix::fs::chown(&data, Some(0), Some(0))?;

    // Not once did the client connect, let alone send its environment.
    assert_eq!(fake.received(), (0, 0));
    Ok(())
}

/// The socket file and the data dir are this user's, but the process that
/// listens on it is not (SO_PEERCRED): nothing is sent.
#[test]
fn the_client_refuses_a_node_running_as_another_user() -> TestResult {
    use std::{io::BufRead as _, os::unix::process::CommandExt as _};
    if !is_root() {
        eprintln!("skipped: needs root to run a listener as another uid");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let data = tmp.path().join("d");
    init(&data, "victim");
    let sock = data.join("control.sock");
    // Let uid 65534 create its socket there, then take the dir and the
    // socket file back: only the listening process stays foreign.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))?;
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(5)
got = b""
try:
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += b
except socket.timeout:
    pass
print(len(got), flush=True)
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    assert_eq!(line.trim(), "ready");
    std::os::unix::fs::chown(&sock, Some(0), Some(0))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;

    let o = status_with_secret(&data);
    let err = assert_one_line_error(&o, "a listener of another uid");
    assert_eq!(
        err,
        format!(
            "error: the process behind control socket {} runs as uid 65534, not as this user (uid 0); refusing to send it the command",
            sock.display()
        )
    );
    // The listener saw a connection that sent nothing.
    line.clear();
    out.read_line(&mut line)?;
    assert_eq!(
        line.trim(),
        "0",
        "the client sent its command to a foreign process"
    );
    child.wait()?;
    Ok(())
}

/// Sends one control request (a well-formed one, as the client would) to
/// the socket of `data` from a process running as `uid`; returns the bytes
/// the node answered before it closed the connection.
fn raw_request_as(uid: u32, data: &std::path::Path, argv: &[&str]) -> usize {
    use std::os::unix::process::CommandExt as _;
    let request = serde_json::json!({ "argv": argv, "cwd": "/", "env": {} }).to_string();
    // A reset or a broken pipe is the node closing without an answer.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        n = 0\n\
        try:\n\
        \x20   s.sendall(sys.argv[2].encode() + b'\\n')\n\
        \x20   while True:\n\
        \x20       b = s.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       n += len(b)\n\
        except (ConnectionResetError, BrokenPipeError):\n\
        \x20   pass\n\
        print(n)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(data.join("control.sock"))
        .arg(&request)
        .uid(uid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The node's side of item 8: a local user of another uid who reaches the
/// socket (here its modes are opened up on purpose; normally 0600 stops
/// it first) is refused on its peer credentials before the request is
/// read: a well-formed `trust add` changes nothing, and the same bytes from
/// this uid do.
#[test]
fn the_node_refuses_a_control_connection_of_another_user() -> TestResult {
    if !is_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return Ok(());
    }
    let tmp = bbsync_tests::tempdir()?;
    let data = tmp.path().join("d");
    init(&data, "a");
    let other = tmp.path().join("other");
    init(&other, "mallory");
    let card = ok(&other, &["id"])
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let server = serve(&data);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(
        data.join("control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )?;
    let argv = ["bbsync", "trust", "add", card.as_str(), "--role", "full"];

    let answered = raw_request_as(65534, &data, &argv);
    assert_eq!(answered, 0, "the node answered another uid");
    assert_eq!(json(&data, &["trust", "list"]), serde_json::json!([]));

    let answered = raw_request_as(0, &data, &argv);
    assert!(answered > 0, "the node did not answer its own uid");
    let t = json(&data, &["trust", "list"]);
    assert_eq!(t.as_array().map(Vec::len), Some(1), "{t}");
    drop(server);
    Ok(())
}
