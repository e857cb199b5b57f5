//! Passphrases (for `identity.key` at rest and for identity escrows).
//!
//! Sources, the first one set wins:
//! 1. `--passphrase-file FILE` (env `BBSYNC_PASSPHRASE_FILE`);
//! 2. `BBSYNC_PASSPHRASE`;
//! 3. `$CREDENTIALS_DIRECTORY/passphrase` (systemd's `LoadCredential=`),
//!    for the process itself only (never for a command that a serving node
//!    carries out: that one has its own environment);
//! 4. a prompt on the terminal (`/dev/tty`, without echo), likewise.
//!
//! A passphrase file holds the passphrase on its first line (one trailing
//! newline is not part of it), at most 4 KiB, and must not be readable by
//! every user.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

use crate::Ctx;

/// Name of the systemd credential `serve` reads (`LoadCredential=passphrase:FILE`).
pub const CREDENTIAL: &str = "passphrase";
/// Largest passphrase file read.
const MAX_FILE: u64 = 4096;

/// Whether the data dir's `identity.key` opens without a prompt: it is
/// not sealed, or a passphrase source other than the terminal is set
/// (one that another bbsync process started by this one finds too).
pub fn without_prompt(ctx: &Ctx) -> anyhow::Result<bool> {
    if !bbsync_store::Store::identity_sealed(&ctx.data_dir)? {
        return Ok(true);
    }
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .is_some_and(|d| Path::new(&d).join(CREDENTIAL).exists());
    Ok(ctx.passphrase_file.is_some()
        || ctx
            .env("BBSYNC_PASSPHRASE_FILE")
            .is_some_and(|p| !p.is_empty())
        || ctx.env("BBSYNC_PASSPHRASE").is_some()
        || credential)
}

/// The passphrase for `what` (named in errors and in the prompt). With
/// `confirm`, a prompt asks twice (for something sealed anew).
pub fn get(ctx: &Ctx, what: &str, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let file = match (&ctx.passphrase_file, ctx.env("BBSYNC_PASSPHRASE_FILE")) {
        (Some(p), _) => Some(ctx.path(p)),
        (None, Some(p)) if !p.is_empty() => Some(ctx.path(Path::new(p))),
        _ => None,
    };
    if let Some(f) = file {
        return read_file(&f);
    }
    if let Some(p) = ctx.env("BBSYNC_PASSPHRASE") {
        return Ok(Zeroizing::new(p.to_string()));
    }
    if ctx.remote() {
        bail!(
            "{what} needs a passphrase: set BBSYNC_PASSPHRASE or give --passphrase-file (a command carried out by the serving node cannot prompt)"
        );
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let f = Path::new(&dir).join(CREDENTIAL);
        if f.exists() {
            return read_file(&f);
        }
    }
    let first = prompt(&format!("passphrase for {what}: ")).with_context(|| {
        format!(
            "{what} needs a passphrase: set BBSYNC_PASSPHRASE, give --passphrase-file, or run on a terminal"
        )
    })?;
    if confirm {
        let again = prompt("again: ")?;
        if *again != *first {
            bail!("the passphrases do not match");
        }
    }
    Ok(first)
}

/// Reads a passphrase file (see the module docs).
fn read_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let f = std::fs::File::open(path)
        .with_context(|| format!("reading passphrase file {}", path.display()))?;
    let mode = f
        .metadata()
        .with_context(|| format!("reading passphrase file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        bail!(
            "passphrase file {} is readable by every user (mode {:04o}); chmod o-r it",
            path.display(),
            mode & 0o7777
        );
    }
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading passphrase file {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!(
            "passphrase file {} is larger than {MAX_FILE} bytes",
            path.display()
        );
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("passphrase file {} is not UTF-8", path.display()))?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if line.is_empty() {
        bail!("passphrase file {} is empty", path.display());
    }
    if line.contains('\n') {
        bail!(
            "passphrase file {} holds more than one line",
            path.display()
        );
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// Asks on the terminal, without echo.
pub fn prompt(text: &str) -> anyhow::Result<Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal")?;
    let old = tcgetattr(&tty).context("no terminal")?;
    let mut quiet = old.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    let mut w = &tty;
    w.write_all(text.as_bytes())?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet).context("turning off echo")?;
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Flush, &old);
    r?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}
