//! Step 5 of a restore: the chunks the store lacks, copied from the
//! repository, and what keeps or undoes them once the records are (or are
//! not) committed.

use std::{path::PathBuf, sync::Mutex};

use bbsync_protocol::{ChunkId, chunk::check_chunk_id};
use rayon::prelude::*;

use super::{RestoreReport, damaged};
use crate::{
    Store,
    backup::{Repo, RepoReader, byte_batches, repo_io_err},
    error::{Result, StoreError},
    packs::Published,
    progress::Progress,
};

/// Chunk bytes staged per publish (two syncfs each).
const GROUP_BYTES: u64 = 128 * 1024 * 1024;
/// Chunk bytes read at once within a group, per read the backend runs at
/// once (held until staged, and the next batch is read meanwhile).
const READ_BYTES_PER_READ: u64 = 4 * 1024 * 1024;
/// Bounds of the bytes read at once: enough for a directory's reads to
/// overlap the hashing, and for object storage's parallel requests.
const READ_BYTES: std::ops::RangeInclusive<u64> = 8 * 1024 * 1024..=32 * 1024 * 1024;

/// The chunks one restore copied: durable (published) but not yet
/// recorded, so the dirty marker stays until [`ChunkCopy::finish`] (after
/// the records' commit), [`ChunkCopy::undo`] or [`ChunkCopy::abandon`].
#[must_use = "a chunk copy is finished, undone or abandoned"]
pub(super) struct ChunkCopy<'a> {
    store: &'a Store,
    pins: PathBuf,
    published: Vec<ChunkId>,
    tokens: Vec<Published>,
}

impl<'a> ChunkCopy<'a> {
    /// Pins the chunks of every planned object (durably, before the first
    /// is copied) when there is anything to copy, naming the snapshot and
    /// the repository (pins.rs): a restore that stops on a read or a write
    /// error (disk full, a repository that stops answering) or is killed
    /// keeps what it copied, and the next run finds those chunks present
    /// and does not copy them again; every collection keeps them until a
    /// restore finishes, another replaces them, or they expire
    /// ([`super::pins::PIN_TTL`]: then the next collection takes them, so
    /// no orphan outlives a day). Damage found in the repository undoes
    /// the copies instead (nothing was restored).
    pub(super) fn pin(
        store: &'a Store,
        (repo, snapshot): (&str, &str),
        chunks: &[ChunkId],
        needed: &[(ChunkId, u32)],
    ) -> Result<Self> {
        let pins = store.restore_pins_path();
        if !needed.is_empty() {
            super::pins::write(&pins, snapshot, repo, chunks)?;
        }
        Ok(ChunkCopy {
            store,
            pins,
            published: Vec::new(),
            tokens: Vec::new(),
        })
    }

    /// Copies `needed`, hashed as it is read, in groups made durable by
    /// publish. On an error the caller undoes the copy
    /// ([`ChunkCopy::undo`]).
    pub(super) fn copy(
        &mut self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        needed: &[(ChunkId, u32)],
        progress: &dyn Progress,
        report: &mut RestoreReport,
    ) -> Result<()> {
        let mut i = 0;
        while i < needed.len() {
            let mut acc = 0u64;
            let mut j = i;
            while j < needed.len() && acc < GROUP_BYTES {
                acc += u64::from(needed[j].1);
                j += 1;
            }
            let group = &needed[i..j];
            let store = self.store;
            let packs = store.packs();
            let staged = Mutex::new(Vec::new());
            let r = self.stage_group(repo, reader, group, &staged, progress);
            let staged = staged
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = r {
                packs.discard(staged);
                return Err(e);
            }
            let ids: Vec<ChunkId> = staged.iter().map(|s| s.id).collect();
            self.tokens.push(packs.publish(staged)?);
            self.published.extend(ids);
            report.chunks_copied += group.len() as u64;
            report.bytes_copied += acc;
            i = j;
        }
        Ok(())
    }

    /// Reads one group a slice at a time (runs of a pack in one request,
    /// several at once), then hashes and stages it on all cores; the next
    /// slice is read meanwhile (on object storage the reads are round
    /// trips, on a directory they overlap the hashing).
    fn stage_group(
        &self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        group: &[(ChunkId, u32)],
        staged: &Mutex<Vec<crate::packs::Staged>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let read_bytes = (READ_BYTES_PER_READ * repo.backend().read_concurrency() as u64)
            .clamp(*READ_BYTES.start(), *READ_BYTES.end());
        let batches: Vec<&[(ChunkId, u32)]> =
            byte_batches(group, read_bytes, |c| u64::from(c.1)).collect();
        std::thread::scope(|sc| {
            let read_ahead = |k: usize| {
                batches
                    .get(k)
                    .copied()
                    .map(|b| sc.spawn(move || reader.read_chunks(b)))
            };
            let mut next = read_ahead(0);
            for (k, batch) in batches.iter().enumerate() {
                let read = match next.take().map(std::thread::ScopedJoinHandle::join) {
                    Some(Ok(read)) => read,
                    // (a reader thread that panicked: read here instead)
                    _ => reader.read_chunks(batch),
                };
                next = read_ahead(k + 1);
                batch
                    .par_iter()
                    .zip(read)
                    .try_for_each(|((id, len), bytes)| {
                        let bytes = bytes.map_err(repo_io_err(format!(
                            "reading {}/{}",
                            repo.location(),
                            reader.chunk_path(id)
                        )))?;
                        if check_chunk_id(id, &bytes).is_err() {
                            return Err(damaged(
                                repo,
                                &reader.chunk_path(id),
                                &reader.bad_chunk(id),
                            ));
                        }
                        let s = self.store.packs().stage(*id, &bytes)?;
                        staged
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(s);
                        progress.advance(1, u64::from(*len));
                        Ok(())
                    })?;
            }
            Ok(())
        })
    }

    /// After `e`: an I/O error keeps the copies for the rerun (recorded as
    /// pinned: the pins file is durable already, so no collection takes
    /// them); any other error (damage, a refusal) removes them and the pins.
    pub(super) fn undo(self, e: &StoreError) {
        let ChunkCopy {
            store,
            pins,
            published,
            tokens,
        } = self;
        let packs = store.packs();
        if matches!(e, StoreError::Io { .. }) {
            for t in tokens {
                packs.recorded(t);
            }
            tracing::info!(
                "restore stopped: the {} chunks it copied stay for the next restore (pinned in {})",
                published.len(),
                store.restore_pins_path().display()
            );
            return;
        }
        let _ = packs.remove_many(&published);
        for t in tokens {
            packs.recorded(t);
        }
        super::pins::clear(&pins);
    }

    /// The records naming the copies are committed: the chunks are
    /// recorded (the dirty marker may go) and the pins removed.
    pub(super) fn finish(self) {
        for t in self.tokens {
            self.store.packs().recorded(t);
        }
        super::pins::clear(&self.pins);
    }

    /// The records' commit failed once writing had begun (some may be
    /// written): the chunks stay, and so does the dirty marker, so the
    /// next open collects what neither a record nor the pins name.
    pub(super) fn abandon(self) {
        drop(self.tokens);
    }
}
