//! `bbsync migrate`: moves the chunks of a data dir that keeps one file per
//! chunk (`<data>/chunks/<hh>/<id>`, schemas before [`PACKS_SCHEMA`]) into
//! pack files, in place.
//!
//! Crash-safe and resumable: chunk files are copied into packs through the
//! normal write path (appended, `fdatasync`, then indexed, in groups of
//! [`GROUP_BYTES`] or [`GROUP_CHUNKS`]); the old files stay untouched until every referenced
//! chunk is indexed, then the schema number is set (flushed) and only then
//! is `chunks/` removed. A rerun after a crash skips what is indexed
//! already; one after the schema was set only finishes removing `chunks/`
//! (an ordinary open does that too).
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

use bbsync_protocol::{ChunkId, chunk::check_chunk_id};
use serde::Serialize;

use crate::{
    PACKS_SCHEMA, Store,
    error::{Context, Result},
    failpoint,
    packs::Staged,
    progress::Progress,
};

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
    /// Migrates the data dir `dir` to pack files (see the module docs).
    pub fn migrate(dir: &Path, progress: &dyn Progress) -> Result<MigrateReport> {
        let start = Instant::now();
        let store = Store::open_with(dir, true)?;
        let found = store.db().schema_version()?;
        let mut report = MigrateReport {
            from_schema: found,
            to_schema: found.max(PACKS_SCHEMA),
            ..Default::default()
        };
        let old = dir.join(CHUNKS_DIR);
        if found < PACKS_SCHEMA {
            store.copy_chunk_files(&old, &mut report, progress)?;
            // Every referenced chunk is indexed: the index is complete.
            store.db().set_index_complete(true)?;
            failpoint::hit("migrate.schema").ctx(|| "setting the schema".to_string())?;
            store.db().set_schema_version(PACKS_SCHEMA)?;
        }
        report.removed_chunk_dir = store.remove_old_chunk_dir()?;
        report.elapsed = start.elapsed();
        Ok(report)
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
            for c in self.manifest_unchecked(&id)?.chunks {
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
