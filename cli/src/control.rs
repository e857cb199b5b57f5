//! The local control socket. One process owns a data dir (sled locks it);
//! while `bbsync serve` runs, every other command on that data dir connects
//! to `<data>/control.sock` and the running node carries it out on its own
//! store, with the client's arguments, working directory and `BBSYNC_*`
//! environment. The client prints what comes back and exits with the
//! command's exit code, so the hand-over is invisible to scripts.
//!
//! The socket is created owner-only (0600) and every connection's peer uid
//! must be this process's uid. The client checks the other way round before
//! it sends anything (its arguments and `BBSYNC_*` environment, which may
//! hold `BBSYNC_PASSPHRASE`): the data dir and the socket belong to its
//! uid, the data dir is not writable by others, and the process listening
//! on the socket runs as its uid (`SO_PEERCRED`).
//!
//! Wire format: the client sends one JSON line ([`Request`]); the node
//! answers with frames ([`crate::frame`]): stdout, stderr, and last the
//! exit code.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail};
use bbsync_store::Store;
use clap::Parser as _;
use serde::{Deserialize, Serialize};

use crate::{
    Cli, Command, Ctx,
    frame::{FrameWriter, ReadFrameError, TAG_ERR, TAG_EXIT, TAG_OUT, read_frame},
    output::Sink,
};

const SOCKET: &str = "control.sock";
/// Largest request line (arguments, working directory, environment).
const MAX_REQUEST: u64 = 1 << 20;

/// What a client asks the running node to do.
#[derive(Serialize, Deserialize)]
struct Request {
    argv: Vec<String>,
    cwd: PathBuf,
    env: std::collections::BTreeMap<String, String>,
}

fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Checks that the data dir and the socket in it belong to this process's
/// uid and that no one else can replace the socket (a data dir writable by
/// others), before anything is sent to it.
fn check_socket_owner(
    data_dir: &Path,
    path: &Path,
    socket: &std::fs::Metadata,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::getuid().as_raw();
    let dir = std::fs::metadata(data_dir)
        .with_context(|| format!("reading data dir {}", data_dir.display()))?;
    if dir.uid() != me {
        bail!(
            "data dir {} belongs to uid {}, not to this user (uid {me}); refusing to hand the command to its control socket",
            data_dir.display(),
            dir.uid()
        );
    }
    if dir.mode() & 0o022 != 0 {
        bail!(
            "data dir {} is writable by other users (mode {:04o}); refusing to use its control socket (chmod go-w it)",
            data_dir.display(),
            dir.mode() & 0o7777
        );
    }
    if socket.uid() != me {
        bail!(
            "control socket {} belongs to uid {}, not to this user (uid {me}); refusing to hand the command to it",
            path.display(),
            socket.uid()
        );
    }
    Ok(())
}

/// If a node is serving `data_dir`, has it run this process's command and
/// returns its exit code; `None` if no node is serving (no socket, or a
/// stale one left by a node that was killed).
pub fn forward(data_dir: &Path) -> anyhow::Result<Option<ExitCode>> {
    let path = socket_path(data_dir);
    // Only a socket file means a node (maybe); anything else is the local
    // command's business (a missing or bad data dir gets its own error).
    let socket = match std::fs::symlink_metadata(&path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => m,
        _ => return Ok(None),
    };
    check_socket_owner(data_dir, &path, &socket)?;
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "a node is serving {}, but its control socket cannot be used",
                    data_dir.display()
                )
            });
        }
    };
    // The process behind the socket must be this user's, whoever created
    // the file: nothing is sent before this check.
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .context("reading the uid of the process behind the control socket")?;
    let me = rustix::process::getuid();
    if cred.uid != me {
        bail!(
            "the process behind control socket {} runs as uid {}, not as this user (uid {}); refusing to send it the command",
            path.display(),
            cred.uid.as_raw(),
            me.as_raw()
        );
    }
    let argv = std::env::args_os()
        .map(|a| {
            a.into_string().map_err(|a| {
                anyhow!("argument {a:?} is not UTF-8; cannot hand it to the serving node")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A client's S3 keys stay with the client (only BBSYNC_* variables
    // travel): say so, rather than let the node's settings be used
    // silently for an s3:// repository.
    if argv.iter().any(|a| a.contains("s3://")) {
        let unused: Vec<&str> = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
        ]
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
        if !unused.is_empty() {
            eprintln!(
                "note: a node serves {}: the command runs there, with the node's S3 settings; this shell's {} are not used",
                data_dir.display(),
                unused.join(", ")
            );
        }
    }
    let req = Request {
        argv,
        cwd: std::env::current_dir().context("reading the working directory")?,
        env: crate::bbsync_env(),
    };
    tracing::debug!(
        "handing the command to the node serving {}",
        data_dir.display()
    );
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    let mut w = &stream;
    w.write_all(&line)
        .context("sending the command to the serving node")?;
    let mut r = BufReader::new(&stream);
    let lost =
        || anyhow!("the serving node closed the control connection before the command finished");
    loop {
        let (tag, body) = match read_frame(&mut r) {
            Ok(f) => f,
            Err(ReadFrameError::Lost) => return Err(lost()),
            Err(ReadFrameError::Oversized) => {
                bail!("the serving node sent an oversized output frame")
            }
        };
        match tag {
            TAG_OUT => {
                let mut o = std::io::stdout().lock();
                o.write_all(&body)?;
                o.flush()?;
            }
            TAG_ERR => {
                let mut e = std::io::stderr().lock();
                e.write_all(&body)?;
            }
            TAG_EXIT => return Ok(Some(ExitCode::from(body.first().copied().unwrap_or(1)))),
            t => bail!("the serving node sent an unknown frame type {t}"),
        }
    }
}

/// A listening control socket; the socket file is removed on drop.
pub struct Control {
    path: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a serving node hands the commands of its control-socket clients:
/// its store and the config.toml it read when it started.
#[derive(Clone)]
pub struct Served {
    /// The node's store.
    pub store: Arc<Store>,
    /// The node's config.toml.
    pub config: Arc<crate::config::Config>,
}

/// Opens the control socket of `data_dir` (whose store `served` holds, so
/// any socket file there is stale) and carries out each command that
/// arrives on its own thread.
pub fn listen(data_dir: &Path, served: Served) -> anyhow::Result<Control> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!("removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("removing a stale control socket"),
    }
    // Owner-only from the first moment: no one else may connect in between.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = UnixListener::bind(&path);
    rustix::process::umask(old);
    let listener = bound.with_context(|| format!("creating control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .context("restricting the control socket")?;
    let control = Control { path };
    let data_dir = data_dir.to_path_buf();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let served = served.clone();
                let data_dir = data_dir.clone();
                let _ = std::thread::Builder::new()
                    .name("control-cmd".into())
                    .spawn(move || {
                        if let Err(e) = handle(conn, &data_dir, served) {
                            tracing::warn!("control connection: {}", crate::one_line(&e));
                        }
                    });
            }
        })
        .context("starting the control thread")?;
    Ok(control)
}

fn handle(conn: UnixStream, data_dir: &Path, served: Served) -> anyhow::Result<()> {
    let cred = rustix::net::sockopt::socket_peercred(&conn).context("reading the peer's uid")?;
    if cred.uid != rustix::process::getuid() {
        bail!(
            "refused a control connection from uid {}",
            cred.uid.as_raw()
        );
    }
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST))
        .read_until(b'\n', &mut line)
        .context("reading the request")?;
    let req: Request = serde_json::from_slice(&line).context("malformed control request")?;
    let writer = Arc::new(Mutex::new(FrameWriter::new(conn.try_clone()?)));
    let out = Sink::Remote(writer.clone(), TAG_OUT);
    let err = Sink::Remote(writer.clone(), TAG_ERR);
    let code = run_request(req, data_dir, served, out, &err);
    let mut w = writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = w.frame(TAG_EXIT, &[code]);
    Ok(())
}

fn run_request(req: Request, data_dir: &Path, served: Served, out: Sink, err: &Sink) -> u8 {
    let cli = match Cli::try_parse_from(&req.argv) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let text = text.trim_end();
            if e.use_stderr() {
                err.line(text)
            } else {
                out.line(text)
            }
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    if matches!(cli.command, Command::Serve(_)) {
        err.line(&format!(
            "error: a node is already serving {} (pid {})",
            data_dir.display(),
            std::process::id()
        ));
        return 1;
    }
    tracing::info!(
        "control: running {:?}",
        req.argv.get(1).map(String::as_str).unwrap_or("")
    );
    let ctx = Ctx {
        data_dir: data_dir.to_path_buf(),
        json: cli.json,
        // Bars need the client's terminal; the summary line still comes.
        progress: false,
        quiet: cli.quiet,
        cwd: req.cwd,
        env: req.env,
        out,
        err: err.clone(),
        store: Some(served.store),
        config: Some(served.config),
        tor_config: cli.tor_config,
        tor_dial_budget: cli.tor_dial_budget,
        passphrase_file: cli.passphrase_file,
    };
    let command = cli.command;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::dispatch(&ctx, command)
    }));
    match result {
        Ok(Ok(code)) => exit_byte(code),
        Ok(Err(e)) => {
            err.line(&format!("error: {}", crate::one_line(&e)));
            1
        }
        Err(_) => {
            err.line("error: internal error in the serving node (see its log)");
            1
        }
    }
}

/// The byte of an `ExitCode` (std does not expose it; our commands only
/// return SUCCESS or FAILURE-like codes built from a u8).
fn exit_byte(code: ExitCode) -> u8 {
    if code == ExitCode::SUCCESS { 0 } else { 1 }
}
