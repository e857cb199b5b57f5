//! Garbage collection of the chunk index and the packs: unreferenced
//! chunks leave the index, packs left empty are deleted, and a sealed pack
//! whose dead share reaches [`REPACK_THRESHOLD`] is repacked (its live
//! chunks appended to the open pack) and deleted once the new copies and
//! their index records are durable.

use std::collections::{HashMap, HashSet};

use bbsync_protocol::{ChunkId, chunk::check_chunk_id};
use serde::Serialize;

use super::{ENTRY_HEADER_LEN, Location, PackId, Packs, Staged};
use crate::{
    db::IndexChange,
    error::{Context, Result},
    failpoint,
};

/// A sealed pack is repacked once this share of its bytes is dead (chunks
/// no longer indexed).
pub const REPACK_THRESHOLD: f64 = 0.25;
/// Live bytes moved per publish while repacking.
const REPACK_GROUP: u64 = 64 * 1024 * 1024;

/// What a collection did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    /// Chunks dropped from the index (nothing references them).
    pub chunks_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// Packs repacked (live chunks moved, pack deleted).
    pub packs_repacked: u64,
    /// Chunks moved by repacking.
    pub chunks_moved: u64,
    /// Packs deleted (repacked or left empty).
    pub packs_deleted: u64,
    /// Bytes of the pack files deleted.
    pub bytes_freed: u64,
    /// Bytes written anew by repacking.
    pub bytes_moved: u64,
}

impl Packs {
    /// Drops every index record whose chunk `referenced` does not want,
    /// deletes sealed packs left without indexed chunks, and repacks sealed
    /// packs whose dead share reaches [`REPACK_THRESHOLD`]. Packs that no
    /// index record ever named are left alone (`verify` reports them).
    pub fn collect(&self, referenced: &(dyn Fn(&ChunkId) -> bool + Sync)) -> Result<GcReport> {
        let mut report = GcReport::default();
        let open: HashSet<PackId> = self.open_packs().into_iter().map(|(p, _)| p).collect();
        // 1. Unreferenced records go; live bytes per pack.
        let mut remove = Vec::new();
        let mut live: HashMap<PackId, u64> = HashMap::new();
        let mut had: HashSet<PackId> = HashSet::new();
        for r in self.db.index_iter() {
            let (id, loc) = r?;
            had.insert(loc.pack);
            if referenced(&id) {
                *live.entry(loc.pack).or_default() += u64::from(loc.len) + ENTRY_HEADER_LEN;
            } else {
                report.chunks_removed += 1;
                report.bytes_removed += u64::from(loc.len);
                remove.push(id);
            }
        }
        if !remove.is_empty() {
            failpoint::hit("gc.drop").ctx(|| "dropping unreferenced chunks".to_string())?;
            self.db.apply_index(
                IndexChange {
                    remove,
                    ..Default::default()
                },
                true,
            )?;
        }
        // 2. Sealed packs: empty ones go, mostly dead ones are repacked.
        let mut empty = Vec::new();
        let mut candidates = Vec::new();
        for (pack, len) in self.pack_files()?.into_iter().flatten() {
            if open.contains(&pack) {
                continue;
            }
            let l = live.get(&pack).copied().unwrap_or(0);
            if l == 0 {
                if had.contains(&pack) {
                    empty.push((pack, len));
                }
                continue;
            }
            if len > 0 && (len.saturating_sub(l)) as f64 / len as f64 >= REPACK_THRESHOLD {
                candidates.push((pack, len));
            }
        }
        if !empty.is_empty() {
            let ids: Vec<PackId> = empty.iter().map(|(p, _)| *p).collect();
            self.db.apply_index(
                IndexChange {
                    doomed: Some(ids.clone()),
                    ..Default::default()
                },
                true,
            )?;
            // Recorded as doomed above: deleted, then the list cleared.
            self.delete_doomed()?;
            report.packs_deleted += ids.len() as u64;
            report.bytes_freed += empty.iter().map(|(_, l)| *l).sum::<u64>();
        }
        if !candidates.is_empty() {
            self.repack(&candidates, &mut report)?;
        }
        Ok(report)
    }

    /// Moves the indexed chunks of `packs` into the open pack, in groups:
    /// each group's new copies are published together with the list of
    /// packs they empty (one atomic batch), then those packs are deleted.
    fn repack(&self, packs: &[(PackId, u64)], report: &mut GcReport) -> Result<()> {
        let wanted: HashSet<PackId> = packs.iter().map(|(p, _)| *p).collect();
        let mut moves: HashMap<PackId, Vec<(ChunkId, Location)>> = HashMap::new();
        for r in self.db.index_iter() {
            let (id, loc) = r?;
            if wanted.contains(&loc.pack) {
                moves.entry(loc.pack).or_default().push((id, loc));
            }
        }
        let mut staged: Vec<Staged> = Vec::new();
        let mut doomed: Vec<(PackId, u64)> = Vec::new();
        let mut group_bytes = 0u64;
        for (pack, len) in packs {
            let entries = moves.remove(pack).unwrap_or_default();
            let path = self.path(pack);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(pack = %path.display(), "not repacked: {e}");
                    continue;
                }
            };
            // Every live chunk must check out; a damaged pack stays as it
            // is for `verify` to report (and fetch-missing to replace).
            let mut ok = true;
            for (id, loc) in &entries {
                let chunk = bytes.get(loc.offset as usize..loc.end() as usize);
                if chunk.is_none_or(|c| check_chunk_id(id, c).is_err()) {
                    tracing::warn!(pack = %path.display(), chunk = %id.short(), "not repacked: a chunk in it is damaged (run `bbsync verify --read-data`)");
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            for (id, loc) in &entries {
                let chunk = &bytes[loc.offset as usize..loc.end() as usize];
                match self.stage(*id, chunk) {
                    Ok(s) => staged.push(s),
                    Err(e) => {
                        self.discard(staged);
                        return Err(e);
                    }
                }
                report.chunks_moved += 1;
                report.bytes_moved += u64::from(loc.len);
                group_bytes += u64::from(loc.len);
            }
            doomed.push((*pack, *len));
            if group_bytes >= REPACK_GROUP {
                self.finish_repack_group(std::mem::take(&mut staged), &mut doomed, report)?;
                group_bytes = 0;
            }
        }
        self.finish_repack_group(staged, &mut doomed, report)
    }

    fn finish_repack_group(
        &self,
        staged: Vec<Staged>,
        doomed: &mut Vec<(PackId, u64)>,
        report: &mut GcReport,
    ) -> Result<()> {
        if doomed.is_empty() {
            self.discard(staged);
            return Ok(());
        }
        let ids: Vec<PackId> = doomed.iter().map(|(p, _)| *p).collect();
        // The new copies and the list of packs they replace: one batch.
        let published = self.publish_with(staged, Some(ids.clone()))?;
        // Referenced already: nothing more to record.
        self.recorded(published);
        failpoint::hit("gc.repack").ctx(|| "repacking".to_string())?;
        // Recorded as doomed with the copies: deleted, then the list cleared.
        self.delete_doomed()?;
        report.packs_repacked += ids.len() as u64;
        report.packs_deleted += ids.len() as u64;
        report.bytes_freed += doomed.iter().map(|(_, l)| *l).sum::<u64>();
        doomed.clear();
        Ok(())
    }
}
