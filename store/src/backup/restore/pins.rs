//! The pins of a restore in progress (`<data>/restore-pins`): the chunks
//! of the snapshot it restores, kept by every collection until the restore
//! finishes, so that a restore that stopped (a read or write error, a
//! crash, `kill -9`) and is run again finds the chunks it copied and does
//! not copy them again.
//!
//! The file names the snapshot and the repository, so that the rerun
//! (`bbsync restore --repo REPO` without a snapshot id) resumes that
//! snapshot rather than the latest one (which, after a safety snapshot, is
//! the store as it was). Pins older than [`PIN_TTL`] (by the file's
//! modification time) are dropped by the next collection: an operator who
//! never runs the restore again does not keep its chunks for ever. A
//! restore of another snapshot replaces them.
//!
//! Layout: `MAGIC`, then the snapshot id and the repository's location
//! (each a big-endian u16 length and UTF-8 bytes), then the 32-byte chunk
//! ids. A file of ids only (written by bbsync 0.1) is read as pins of an
//! unnamed restore. The file is this node's own (the data dir is not a
//! trust boundary); nothing in it grants trust: a restore that resumes
//! still checks the snapshot's host and every manifest and chunk.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use bbsync_protocol::ChunkId;

use crate::error::{Result, StoreError};

/// How long the pins of a restore that stopped keep its chunks.
pub const PIN_TTL: Duration = Duration::from_secs(24 * 3600);

const MAGIC: &[u8; 8] = b"BBSPINS2";

/// What a pins file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePins {
    /// The snapshot the restore took (empty: a file of bbsync 0.1).
    pub snapshot: String,
    /// The repository's location, as the restore printed it.
    pub repo: String,
    /// The pinned chunks.
    pub ids: Vec<ChunkId>,
    /// How old the pins are (by the file's modification time).
    pub age: Duration,
}

impl RestorePins {
    /// Whether the pins are older than [`PIN_TTL`].
    pub fn expired(&self) -> bool {
        self.age > PIN_TTL
    }

    /// How long until a collection drops them.
    pub fn expires_in(&self) -> Duration {
        PIN_TTL.saturating_sub(self.age)
    }

    /// Whether they are the pins of `snapshot` of `repo`.
    pub fn are_of(&self, repo: &str, snapshot: &str) -> bool {
        self.repo == repo && self.snapshot == snapshot
    }
}

impl crate::Store {
    /// Where this store's pins file is.
    pub(crate) fn restore_pins_path(&self) -> std::path::PathBuf {
        self.dir().join(crate::RESTORE_PINS)
    }

    /// The pins that hold chunks now: the file read, unless it expired.
    pub(crate) fn held_restore_pins(&self) -> Result<Option<RestorePins>> {
        Ok(read(&self.restore_pins_path())?.filter(|p| !p.expired()))
    }
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = format!("{what} {}", path.display());
    move |source| StoreError::Io { context, source }
}

/// The pins in `path`, if the file exists. A file that cannot be parsed
/// pins nothing (it is logged; the next restore or collection replaces or
/// removes it).
pub fn read(path: &Path) -> Result<Option<RestorePins>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "reading")(e)),
    };
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(io(path, "reading the time of"))?;
    let age = SystemTime::now().duration_since(age).unwrap_or_default();
    match parse(&bytes) {
        Some((snapshot, repo, ids)) => Ok(Some(RestorePins {
            snapshot,
            repo,
            ids,
            age,
        })),
        None => {
            tracing::warn!("{} is damaged: it pins nothing", path.display());
            Ok(Some(RestorePins {
                snapshot: String::new(),
                repo: String::new(),
                ids: Vec::new(),
                age,
            }))
        }
    }
}

fn parse(bytes: &[u8]) -> Option<(String, String, Vec<ChunkId>)> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        // bbsync 0.1: ids only.
        return bytes
            .len()
            .is_multiple_of(32)
            .then(|| (String::new(), String::new(), ids(bytes)));
    };
    let mut text = || -> Option<String> {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (s, tail) = tail.split_at_checked(len)?;
        rest = tail;
        String::from_utf8(s.to_vec()).ok()
    };
    let snapshot = text()?;
    let repo = text()?;
    rest.len()
        .is_multiple_of(32)
        .then(|| (snapshot, repo, ids(rest)))
}

fn ids(bytes: &[u8]) -> Vec<ChunkId> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| ChunkId::from_slice(c).ok())
        .collect()
}

/// Writes the pins of a restore of `snapshot` from `repo` (durably, before
/// any chunk is copied).
pub fn write(path: &Path, snapshot: &str, repo: &str, ids: &[ChunkId]) -> Result<()> {
    let mut out = Vec::with_capacity(8 + 4 + snapshot.len() + repo.len() + 32 * ids.len());
    out.extend_from_slice(MAGIC);
    for s in [snapshot, repo] {
        // (A location longer than 64 KiB is cut: the name is for messages
        // and for choosing the snapshot to resume, nothing else.)
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_be_bytes());
        out.extend_from_slice(&s.as_bytes()[..end]);
    }
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    crate::write_file_atomic(path, &out, 0o600)
}

/// Removes the pins file (a failure is only logged).
pub fn clear(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pins_round_trip_and_old_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pins");
        let ids = vec![ChunkId([1; 32]), ChunkId([2; 32])];
        write(&p, "20261130T000000Z-000001-abcd", "/srv/repo", &ids).unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!(r.ids, ids);
        assert!(r.are_of("/srv/repo", "20261130T000000Z-000001-abcd"));
        assert!(!r.expired());
        // bbsync 0.1: ids only, no names.
        std::fs::write(&p, [[1u8; 32], [2u8; 32]].concat()).unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!((r.ids, r.snapshot.as_str()), (ids, ""));
        // Damaged: pins nothing.
        std::fs::write(&p, b"BBSPINS2\x00\x09short").unwrap();
        assert!(read(&p).unwrap().unwrap().ids.is_empty());
        // Aged past the limit.
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - PIN_TTL - Duration::from_secs(60))
            .unwrap();
        assert!(read(&p).unwrap().unwrap().expired());
        clear(&p);
        assert!(read(&p).unwrap().is_none());
    }
}
