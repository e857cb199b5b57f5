//! The restore history of a data dir: one JSON line per restore (by the
//! CLI or the admin API) in `<data>/restore-history.jsonl`, owner-only.
//! It is a record for the operator, never read back as trusted input: the
//! dashboard shows it as text.

use std::{
    io::{BufRead as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::restore::RestoreReport;
use crate::StoreError;

/// The history file's name in the data dir.
pub const FILE: &str = "restore-history.jsonl";
/// Most entries [`list`] returns (the newest).
pub const MAX_LISTED: usize = 500;

/// One restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// When it ended (Unix ms).
    pub time_ms: u64,
    /// The repository.
    pub repo: String,
    /// The snapshot asked for (`latest` when none was named).
    pub asked: String,
    /// The snapshot restored, when it got that far.
    pub snapshot: Option<String>,
    /// Objects restored.
    pub restored: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Appends the outcome of a restore. A history that cannot be written is
/// logged, not an error of the restore.
pub fn record(
    data_dir: &Path,
    repo: &Path,
    asked: Option<&str>,
    outcome: &Result<RestoreReport, StoreError>,
) {
    let e = Entry {
        time_ms: super::now_ms(),
        repo: repo.display().to_string(),
        asked: asked.unwrap_or("latest").to_string(),
        snapshot: outcome.as_ref().ok().map(|r| r.snapshot.clone()),
        restored: outcome.as_ref().map_or(0, |r| r.restored),
        error: outcome.as_ref().err().map(ToString::to_string),
    };
    let r = (|| -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&e)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(data_dir.join(FILE))?;
        f.write_all(&line)
    })();
    if let Err(err) = r {
        tracing::warn!("writing the restore history: {err}");
    }
}

/// The newest entries (at most [`MAX_LISTED`]), newest first. Lines that do
/// not parse are skipped.
pub fn list(data_dir: &Path) -> Result<Vec<Entry>, StoreError> {
    let f = match std::fs::File::open(data_dir.join(FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("reading {}", data_dir.join(FILE).display()),
                source: e,
            });
        }
    };
    let mut v: Vec<Entry> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    v.reverse();
    v.truncate(MAX_LISTED);
    Ok(v)
}
