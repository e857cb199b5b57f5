//! Schema migrations, run by [`Store::open`] before anything else reads the
//! records. Each step takes the database from one schema to the next and
//! is written so that it can be interrupted at any point and run again:
//! the schema number is raised only after the step's writes are flushed,
//! and redoing a step on records it already rewrote gives the same records.
//!
//! | from | to | step |
//! |------|----|------|
//! | 1    | 2  | [`migrate_1_to_2`]: keep only envelope entries whose signatures verify; recompute record MACs |
//! | 2    | 3  | [`migrate_2_to_3`]: chunks moved from one file per chunk into pack files, index built |
//!
//! A later schema adds its step to [`STEPS`]; a store two schemas behind
//! runs both, in order.
//!
//! ## Schema 2 to 3: pack files
//!
//! Moves the chunks of a data dir that keeps one file per chunk
//! (`<data>/chunks/<hh>/<id>`, schemas before [`PACKS_SCHEMA`]) into pack
//! files, in place, on the first open by this build (or with `bbsync
//! migrate`, which shows its progress).
//!
//! Crash-safe and resumable: chunk files are copied into packs through the
//! normal write path (appended, `fdatasync`, then indexed, in groups of
//! [`GROUP_BYTES`] or [`GROUP_CHUNKS`]); the old files stay untouched until
//! every referenced chunk is indexed, then the schema number is set
//! (flushed) and only then is `chunks/` removed. A rerun after a crash
//! skips what is indexed already; one after the schema was set only
//! finishes removing `chunks/` (every open does that).
//!
//! Only chunks that a stored manifest references are moved, each checked
//! against its id and length on the way; damaged ones are left out and
//! listed (their objects then show `missing-chunk` in `verify`, and
//! `fetch-missing` brings them back from a peer). Unreferenced chunk files
//! and temp files of an interrupted write of the old layout are dropped
//! with the directory.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use bbsync_protocol::{ChunkId, Manifest, Unverified, chunk::check_chunk_id};
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::{
    PACKS_SCHEMA, Store,
    db::{COMMIT_BATCH, SCHEMA_VERSION},
    error::{Context, Result, StoreError},
    failpoint,
    packs::Staged,
    progress::Progress,
};

/// One migration step: the schema it starts from, what it does, and the
/// function that does it (with the progress to report to and the report
/// of the move to packs to fill in).
pub type Step = (
    u32,
    &'static str,
    fn(&Store, &dyn Progress, &mut MigrateReport) -> Result<()>,
);

/// Every step, by the schema it starts from.
pub const STEPS: &[Step] = &[
    (
        1,
        "envelope entries re-checked (only those whose signatures verify are kept), record MACs recomputed",
        |s, _, _| migrate_1_to_2(s),
    ),
    (
        2,
        "chunks moved from one file per chunk into pack files",
        migrate_2_to_3,
    ),
];

/// Brings the store's schema up to [`SCHEMA_VERSION`]. Returns the report
/// of the move to pack files when it ran (or had to finish).
pub(crate) fn run(store: &mut Store, progress: &dyn Progress) -> Result<Option<MigrateReport>> {
    let start = Instant::now();
    let mut v = store.db().schema_version()?;
    let mut report = MigrateReport {
        from_schema: v,
        to_schema: v,
        ..Default::default()
    };
    let ran = v < PACKS_SCHEMA;
    while v < SCHEMA_VERSION {
        let Some((from, what, step)) = STEPS.iter().find(|(from, _, _)| *from == v) else {
            return Err(StoreError::Corrupt(format!(
                "schema_version {v}: no migration from it to {SCHEMA_VERSION}"
            )));
        };
        tracing::info!(
            "migrating the data dir from schema {from} to {}: {what}",
            from + 1
        );
        step(store, progress, &mut report)?;
        v = from + 1;
        if v == PACKS_SCHEMA {
            failpoint::hit("migrate.schema").ctx(|| "setting the schema".to_string())?;
        }
        store.db().set_schema_version(v)?;
        report.to_schema = v;
    }
    if !ran {
        return Ok(None);
    }
    report.removed_chunk_dir = store.remove_old_chunk_dir()?;
    report.elapsed = start.elapsed();
    tracing::info!(
        moved = report.chunks_moved,
        bytes = report.bytes_moved,
        damaged = report.chunks_damaged.len(),
        missing = report.chunks_missing,
        "migrated the data dir to pack files"
    );
    Ok(Some(report))
}

/// Schema 1 to 2. A schema-1 restore recorded every envelope entry of a
/// backup's manifest file and covered them all with the record MAC, while
/// it had checked only the first usable one; later reads trusted the MAC
/// and took the first candidate, so a forged entry could become this
/// node's key (issue 10, item 2). Here every record's entries are checked
/// again, in full: an entry is kept only if its signature verifies, its
/// wrapper is the manifest's author, this instance or an instance trusted
/// `full` now, and it is for the manifest's object version. The record MAC
/// is recomputed over what is kept, and only when the manifest's own
/// signature verifies (else the record is left as it is with its MAC
/// cleared, so that every read checks it in full and reports it). Entries
/// dropped are logged per object.
pub fn migrate_1_to_2(store: &Store) -> Result<()> {
    let ids: Vec<_> = store
        .db()
        .objects()
        .map(|r| r.map(|(id, _)| id))
        .collect::<Result<_>>()?;
    let mut dropped_total = 0usize;
    for (n, group) in ids.chunks(COMMIT_BATCH).enumerate() {
        for id in group {
            let Some(mut rec) = store.db().record(id)? else {
                continue;
            };
            // The signature only: the author's trust is checked on every
            // read anyway, and an entry by the author of an untrusted (but
            // authentic) manifest stays usable should the author be
            // trusted again.
            let manifest: Option<Manifest> = Unverified::<Manifest>::decode(&rec.manifest)
                .and_then(|u| u.verify(|_| true))
                .ok()
                .map(|m| m.into_value());
            if let Some(m) = &manifest {
                let raw: Vec<Vec<u8>> = rec.envelope.iter().map(|e| e.to_vec()).collect();
                let (kept, dropped) = store.verified_entries(m, &raw, &|w| store.is_full(w));
                if dropped > 0 {
                    tracing::warn!(
                        object = %id.short(),
                        name = %format!("{}:{}", rec.state.kind, rec.state.name),
                        dropped,
                        "migration: dropped envelope entries whose signatures do not verify"
                    );
                    dropped_total += dropped;
                }
                rec.envelope = kept.into_iter().map(ByteBuf::from).collect();
            }
            // A manifest that does not verify keeps its entries as they are,
            // unMAC'd: every read checks it in full and reports it.
            rec.state.checked_mac = manifest
                .is_some()
                .then(|| store.record_mac(&rec.manifest, &rec.envelope));
            store.db().put_record(id, &rec)?;
        }
        store.db().flush()?;
        crate::failpoint::hit("migrate.batch").map_err(|source| StoreError::Io {
            context: format!("migrating batch {n}"),
            source,
        })?;
    }
    if dropped_total > 0 {
        tracing::warn!(
            dropped = dropped_total,
            "migration to schema 2: envelope entries dropped in all"
        );
    }
    Ok(())
}

/// Bytes copied between two publishes (each makes a group durable and
/// indexed, so a rerun after a crash starts after it).
pub const GROUP_BYTES: u64 = 64 * 1024 * 1024;
/// Chunks copied between two publishes at most.
pub const GROUP_CHUNKS: usize = 1024;
/// The chunk directory of the old layout.
pub const CHUNKS_DIR: &str = "chunks";

/// What a migration did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MigrateReport {
    /// The schema found.
    pub from_schema: u32,
    /// The schema now.
    pub to_schema: u32,
    /// Chunk files copied into packs by this run.
    pub chunks_moved: u64,
    /// Their bytes.
    pub bytes_moved: u64,
    /// Referenced chunks indexed already (by an interrupted earlier run).
    pub chunks_already: u64,
    /// Referenced chunks with no file (objects that were incomplete or damaged).
    pub chunks_missing: u64,
    /// Chunk files left out because their content does not match their id
    /// or length, with the reason.
    pub chunks_damaged: Vec<String>,
    /// Chunk files nothing referenced (dropped with the directory).
    pub chunks_unreferenced: u64,
    /// Whether the old chunk directory was removed by this run.
    pub removed_chunk_dir: bool,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// Every well-named chunk file under the old chunk directory.
fn chunk_files(dir: &Path) -> Result<Vec<(ChunkId, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for d in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let d = d.ctx(|| format!("listing {}", dir.display()))?;
        let name = d.file_name();
        let name = name.to_string_lossy();
        if name.len() != 2 || !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).ctx(|| format!("listing {}", d.path().display()))? {
            let f = f.ctx(|| format!("listing {}", d.path().display()))?;
            if let Some(id) = f
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<ChunkId>().ok())
                && id.to_hex()[..2] == *name
            {
                out.push((id, f.path()));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

impl Store {
    /// Opens the data dir `dir`, migrating it to the current schema with
    /// `progress` (`bbsync migrate`; any open migrates too, see the module
    /// docs), and says what the move to pack files did.
    pub fn migrate(
        dir: &Path,
        passphrase: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<MigrateReport> {
        let start = Instant::now();
        let (store, moved) = Store::open_migrating(dir, passphrase, progress)?;
        Ok(match moved {
            Some(r) => r,
            None => {
                let v = store.db().schema_version()?;
                MigrateReport {
                    from_schema: v,
                    to_schema: v,
                    elapsed: start.elapsed(),
                    ..Default::default()
                }
            }
        })
    }

    /// Removes `<data>/chunks/` once the schema says packs (what a crash
    /// during the last step of a migration leaves). Returns whether it was there.
    pub(crate) fn remove_old_chunk_dir(&self) -> Result<bool> {
        let old = self.dir().join(CHUNKS_DIR);
        if !old.exists() {
            return Ok(false);
        }
        failpoint::hit("migrate.cleanup").ctx(|| format!("removing {}", old.display()))?;
        fs::remove_dir_all(&old).ctx(|| format!("removing {}", old.display()))?;
        fs::File::open(self.dir())
            .and_then(|d| d.sync_all())
            .ctx(|| format!("syncing {}", self.dir().display()))?;
        Ok(true)
    }

    fn copy_chunk_files(
        &self,
        old: &Path,
        report: &mut MigrateReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let _g = self.lock();
        // What the manifests reference, with the stored length they expect.
        let mut wanted: HashMap<ChunkId, u32> = HashMap::new();
        for r in self.db().objects() {
            let (id, st) = r?;
            if st.deleted {
                continue;
            }
            for c in self.dangerously_manifest_unverified(&id)?.chunks {
                wanted.insert(c.id, c.len);
            }
        }
        let files = if old.is_dir() {
            chunk_files(old)?
        } else {
            Vec::new()
        };
        let mut todo = Vec::new();
        for (id, path) in files {
            match wanted.remove(&id) {
                None => report.chunks_unreferenced += 1,
                Some(_) if self.packs().contains(&id) => report.chunks_already += 1,
                Some(len) => todo.push((id, len, path)),
            }
        }
        report.chunks_missing = wanted
            .keys()
            .filter(|id| !self.packs().contains(id))
            .count() as u64;
        progress.start(
            "migrate",
            todo.len() as u64,
            todo.iter().map(|t| u64::from(t.1)).sum(),
        );
        let mut staged: Vec<Staged> = Vec::new();
        let mut group = 0u64;
        for (id, len, path) in todo {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    report
                        .chunks_damaged
                        .push(format!("{}: unreadable: {e}", path.display()));
                    progress.advance(1, u64::from(len));
                    continue;
                }
            };
            if bytes.len() != len as usize {
                report.chunks_damaged.push(format!(
                    "{}: {} bytes, the manifest says {len}",
                    path.display(),
                    bytes.len()
                ));
            } else if check_chunk_id(&id, &bytes).is_err() {
                report.chunks_damaged.push(format!(
                    "{}: content does not hash to its name",
                    path.display()
                ));
            } else {
                match self.packs().stage(id, &bytes) {
                    Ok(s) => staged.push(s),
                    Err(e) => {
                        self.packs().discard(staged);
                        progress.finish();
                        return Err(e);
                    }
                }
                report.chunks_moved += 1;
                report.bytes_moved += u64::from(len);
                group += u64::from(len);
            }
            progress.advance(1, u64::from(len));
            if group >= GROUP_BYTES || staged.len() >= GROUP_CHUNKS {
                self.publish_group(std::mem::take(&mut staged))?;
                group = 0;
            }
        }
        self.publish_group(staged)?;
        progress.finish();
        Ok(())
    }

    /// Makes a group of moved chunks durable and indexed; the manifests
    /// reference them already, so they count as recorded at once.
    fn publish_group(&self, staged: Vec<Staged>) -> Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        let p = self.packs().publish(staged)?;
        self.packs().recorded(p);
        failpoint::hit("migrate.group").ctx(|| "migrating chunks".to_string())?;
        Ok(())
    }
}

/// Schema 2 to 3: the chunk files of `<data>/chunks/` copied into packs
/// (see the module docs); the index is then complete.
pub fn migrate_2_to_3(
    store: &Store,
    progress: &dyn Progress,
    report: &mut MigrateReport,
) -> Result<()> {
    let old = store.dir().join(CHUNKS_DIR);
    store.copy_chunk_files(&old, report, progress)?;
    // Every referenced chunk is indexed: the index is complete.
    store.db().set_index_complete(true)
}
