//! How an import reads a source that is or holds a SQLite database: through
//! snapshots (see the module above), never the live file.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use bbsync_protocol::Shape;

use super::{Snapshot, chunk_size, recently_changed, snapshot, starts_with_header, temp_path};
use crate::{
    Store,
    archive::{Anchor, TreeDir, Walk, archive_len},
    bbs::Source,
    error::Result,
};

/// The stat digest recorded for a source whose database changed within
/// [`super::RACY_WINDOW`] before its snapshot: it matches no real digest
/// (those are SHA-256 outputs), so the next import takes a snapshot again
/// and compares fingerprints instead of trusting the file metadata.
pub const RECHECK_DIGEST: [u8; 32] = [0; 32];

/// Files smaller than this cannot be databases with content (one page is
/// at least 512 bytes), so they are not opened to look for the header.
const MIN_DATABASE_FILE: u64 = 512;

/// A source to read in place of the one found in the tree: its databases
/// replaced by snapshots, which live as long as this value.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// What to read.
    pub source: Source,
    /// Fixed chunk size, for a source that is one database file.
    pub chunk_size: Option<usize>,
    /// Snapshots taken.
    pub count: u64,
    /// Time spent taking and checking them.
    pub elapsed: Duration,
    _snapshots: Vec<Snapshot>,
}

/// Where a snapshot is read from: an anchor in `<data>/tmp` (opened like
/// every import source, checked against the snapshot's own metadata).
fn snapshot_anchor(snap: &Snapshot) -> Result<Anchor> {
    let path = snap.path();
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(crate::StoreError::Invalid(format!(
                "snapshot path {} has no directory or no UTF-8 name",
                path.display()
            )));
        }
    };
    let tmp = TreeDir::open(dir)?;
    let c = tmp.child(name)?;
    Ok(tmp.anchor(name, c.meta))
}

/// Whether the file `anchor` points at is a database: opened like every
/// import source (a swap is refused here as it would be at the read), but
/// whatever its size now: a live database grows, and is read through its
/// snapshot; any other file is opened again, with its size checked, when
/// it is read.
fn anchored_database(anchor: &Anchor, size: u64) -> Result<bool> {
    if size < MIN_DATABASE_FILE {
        return Ok(false);
    }
    let mut f = anchor.open_live_file()?;
    Ok(starts_with_header(&mut f))
}

/// Takes a snapshot of the database `anchor` points at into `<data>/tmp`;
/// also says whether it changed within the racy window before `started`.
fn take(
    data_dir: &std::path::Path,
    anchor: &Anchor,
    started: SystemTime,
) -> Result<(Snapshot, bool)> {
    let (snap, dir, name) = snapshot(anchor, temp_path(data_dir, "snapshot")?)?;
    let racy = recently_changed(&dir, &name, started);
    tracing::debug!(path = %anchor.path().display(), bytes = snap.len, elapsed = ?snap.elapsed, "database snapshot");
    Ok((snap, racy))
}

impl Store {
    /// Takes a snapshot of every SQLite database in `src` (the file itself,
    /// or the files of a directory that start with the header), each read
    /// through the source's anchor. `None` when there is none: the source
    /// is read as it is.
    pub(crate) fn prepare_databases(&self, src: &Source) -> Result<Option<Prepared>> {
        let started = SystemTime::now();
        match (&src.shape, &src.walk) {
            (Shape::File, _) => {
                if !anchored_database(&src.anchor, src.len)? {
                    return Ok(None);
                }
                let (snap, racy) = take(self.dir(), &src.anchor, started)?;
                let source = Source {
                    kind: src.kind.clone(),
                    name: src.name.clone(),
                    owner: src.owner.clone(),
                    shown_path: Some(src.path()),
                    anchor: snapshot_anchor(&snap)?,
                    shape: Shape::File,
                    mode: src.mode,
                    walk: None,
                    len: snap.len,
                    stat_digest: if racy {
                        RECHECK_DIGEST
                    } else {
                        src.stat_digest
                    },
                    content_bytes: src.content_bytes,
                };
                Ok(Some(Prepared {
                    source,
                    chunk_size: Some(chunk_size(snap.len, snap.page_size)),
                    count: 1,
                    elapsed: snap.elapsed,
                    _snapshots: vec![snap],
                }))
            }
            (Shape::Dir, Some(walk)) => {
                let mut entries = walk.entries.clone();
                let mut substitutes = BTreeMap::new();
                let mut snaps = Vec::new();
                let mut racy = false;
                let mut root = None;
                for e in entries.iter_mut() {
                    let Some(size) = e.size else { continue };
                    if size < MIN_DATABASE_FILE {
                        continue;
                    }
                    // The directory the walk saw (opened once, when it
                    // holds a file that may be a database).
                    let dir = match &root {
                        Some(d) => d,
                        None => root.insert(src.anchor.open_dir()?),
                    };
                    let anchor = dir.anchor(&e.path, e.meta);
                    if !anchored_database(&anchor, size)? {
                        continue;
                    }
                    let (snap, r) = take(self.dir(), &anchor, started)?;
                    racy |= r;
                    e.size = Some(snap.len);
                    substitutes.insert(e.path.clone(), snapshot_anchor(&snap)?);
                    snaps.push(snap);
                }
                if snaps.is_empty() {
                    return Ok(None);
                }
                let walk = Walk {
                    entries,
                    file_bytes: walk.file_bytes,
                    stat_digest: walk.stat_digest,
                    substitutes,
                };
                let source = Source {
                    kind: src.kind.clone(),
                    name: src.name.clone(),
                    owner: src.owner.clone(),
                    shown_path: Some(src.path()),
                    anchor: src.anchor.clone(),
                    shape: Shape::Dir,
                    mode: src.mode,
                    len: archive_len(&walk),
                    walk: Some(Box::new(walk)),
                    stat_digest: if racy {
                        RECHECK_DIGEST
                    } else {
                        src.stat_digest
                    },
                    content_bytes: src.content_bytes,
                };
                Ok(Some(Prepared {
                    source,
                    chunk_size: None,
                    count: snaps.len() as u64,
                    elapsed: snaps.iter().map(|s| s.elapsed).sum(),
                    _snapshots: snaps,
                }))
            }
            (Shape::Dir, None) => Ok(None),
        }
    }
}

/// Snapshots taken by one import, summed over its threads.
#[derive(Debug, Default)]
pub(crate) struct SnapshotTally {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl SnapshotTally {
    /// Counts the snapshots of one prepared source.
    pub fn add(&self, p: &Prepared) {
        self.count.fetch_add(p.count, Ordering::Relaxed);
        self.nanos
            .fetch_add(p.elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (snapshots, their total time).
    pub fn totals(&self) -> (u64, Duration) {
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        )
    }
}
