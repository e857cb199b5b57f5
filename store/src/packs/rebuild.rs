//! Rebuilding the chunk index from the packs alone (`bbsync repair-index`,
//! and automatically at open when the index is missing).
//!
//! A sealed pack is read through its trailer (checksummed, each entry
//! checked against the entry header it points to); a pack without a valid
//! trailer (the open pack, or a damaged trailer) is walked entry by entry
//! from its header, up to the first entry that is cut short or impossible.
//! Every chunk is re-hashed before it is indexed: a damaged chunk is left
//! out (and reported) rather than indexed. Walked packs become open packs
//! again, so their tail (a damaged trailer included) is cut off and they are
//! sealed anew once full.

use std::time::{Duration, Instant};

use bbsync_protocol::chunk::check_chunk_id;
use serde::Serialize;

use super::{
    ENTRY_HEADER_LEN, Entry, FOOTER_LEN, Footer, Location, Packs, check_header,
    decode_entry_header, footer_fits, parse_footer, parse_trailer, walk_entries,
};
use crate::{
    db::IndexChange,
    error::{Context, Result, StoreError},
    failpoint,
    progress::Progress,
};

/// What a rebuild of the index found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RebuildReport {
    /// Pack files read.
    pub packs: u64,
    /// Of which read through a valid trailer.
    pub sealed: u64,
    /// Of which walked entry by entry (open, or trailer damaged).
    pub walked: u64,
    /// Chunks indexed.
    pub chunks: u64,
    /// Bytes of the packs read.
    pub bytes: u64,
    /// What was left out, and why (damaged chunks, unreadable packs).
    pub skipped: Vec<String>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// How a pack's entries were found.
enum Found {
    /// Through its valid trailer.
    Trailer,
    /// Walked: it has a footer but its trailer does not check out. Left as
    /// it is (`verify` reports `pack-trailer-mismatch`).
    WalkedSealed,
    /// Walked: no footer (an open pack); its valid entries end here.
    WalkedOpen(u64),
}

/// The entries a pack's own bytes vouch for.
fn entries_of(bytes: &[u8], pack: &super::PackId) -> (Vec<Entry>, Found) {
    let len = bytes.len() as u64;
    let footer = if len >= FOOTER_LEN {
        parse_footer(&bytes[(len - FOOTER_LEN) as usize..])
    } else {
        Footer::Absent
    };
    if let Footer::Present {
        count,
        trailer_offset,
        sum,
    } = footer
        && footer_fits(count, trailer_offset, len)
        && let Ok(entries) = parse_trailer(
            pack,
            &bytes[trailer_offset as usize..(len - FOOTER_LEN) as usize],
            &sum,
            trailer_offset,
        )
        && entries.iter().all(|e| {
            let h = u64::from(e.offset) - ENTRY_HEADER_LEN;
            bytes
                .get(h as usize..e.offset as usize)
                .and_then(decode_entry_header)
                == Some((e.id, e.len))
        })
    {
        return (entries, Found::Trailer);
    }
    let (entries, stop, _) = walk_entries(bytes);
    match footer {
        Footer::Present { .. } => (entries, Found::WalkedSealed),
        Footer::Absent => (entries, Found::WalkedOpen(stop)),
    }
}

impl Packs {
    /// Rebuilds the chunk index from the pack files (see the module docs).
    /// Holds the pack writer for its whole run; resumable: the index is
    /// marked incomplete (durably) first and complete at the end, and an
    /// open finding it incomplete rebuilds it again.
    pub fn rebuild_index(&self, progress: &dyn Progress) -> Result<RebuildReport> {
        let start = Instant::now();
        let mut report = RebuildReport::default();
        let mut opened = Vec::new();
        {
            let w = self.writer();
            if w.packs.iter().any(|p| p.pending > 0) || w.unrecorded > 0 {
                return Err(StoreError::Invalid(
                    "chunks are being written; repair the index when no other command runs".into(),
                ));
            }
            self.db.set_index_complete(false)?;
            self.db.clear_index()?;
            let files: Vec<_> = self.pack_files()?.into_iter().flatten().collect();
            progress.start(
                "repair-index",
                files.len() as u64,
                files.iter().map(|(_, l)| *l).sum(),
            );
            for (pack, len) in files {
                let path = self.path(&pack);
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        report
                            .skipped
                            .push(format!("pack {}: unreadable: {e}", path.display()));
                        progress.advance(1, len);
                        continue;
                    }
                };
                if let Err(e) = check_header(&bytes, &pack) {
                    report.skipped.push(format!("pack {}: {e}", path.display()));
                    progress.advance(1, len);
                    continue;
                }
                report.packs += 1;
                report.bytes += len;
                let (entries, found) = entries_of(&bytes, &pack);
                match found {
                    Found::Trailer => report.sealed += 1,
                    Found::WalkedSealed => {
                        report.walked += 1;
                        report.skipped.push(format!(
                            "pack {}: its trailer does not match its content; indexed from its entries",
                            path.display()
                        ));
                    }
                    // An open pack with entries takes appends again (its
                    // tail, an interrupted append, is cut off); one without
                    // any valid entry is left as it is.
                    Found::WalkedOpen(stop) => {
                        report.walked += 1;
                        if entries.is_empty() {
                            report
                                .skipped
                                .push(format!("pack {}: no valid entry", path.display()));
                        } else {
                            opened.push((pack, stop));
                        }
                    }
                }
                let mut put = Vec::with_capacity(entries.len());
                for e in entries {
                    let chunk = &bytes
                        [e.offset as usize..(u64::from(e.offset) + u64::from(e.len)) as usize];
                    if check_chunk_id(&e.id, chunk).is_err() {
                        report.skipped.push(format!(
                            "chunk {} in pack {}: content does not hash to its id",
                            e.id.short(),
                            path.display()
                        ));
                        continue;
                    }
                    put.push((
                        e.id,
                        Location {
                            pack,
                            offset: e.offset,
                            len: e.len,
                        },
                    ));
                }
                report.chunks += put.len() as u64;
                failpoint::hit("index.rebuild").ctx(|| "rebuilding the index".to_string())?;
                self.db.apply_index(
                    IndexChange {
                        put,
                        ..Default::default()
                    },
                    false,
                )?;
                progress.advance(1, len);
            }
            progress.finish();
            self.db.apply_index(
                IndexChange {
                    open_packs: Some(opened),
                    doomed: Some(Vec::new()),
                    ..Default::default()
                },
                true,
            )?;
            self.db.set_index_complete(true)?;
        }
        // The walked packs are open packs now: cut their tails, reload.
        self.load_open()?;
        report.elapsed = start.elapsed();
        Ok(report)
    }
}
