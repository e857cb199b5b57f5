//! Step A of a verify: the chunk index and the pack files (length,
//! trailer, and with `read_data` every indexed chunk re-hashed), then
//! both compared with what the records reference.

use std::collections::{HashMap, HashSet};

use bbsync_protocol::{ChunkId, chunk::check_chunk_id};
use rayon::prelude::*;

use super::{Problem, ProblemClass};
use crate::{
    Store,
    error::Result,
    packs::{
        ENTRY_HEADER_LEN, FOOTER_LEN, Footer, HEADER_LEN, Location, PackId, check_header,
        decode_entry_header, footer_fits, parse_footer, parse_trailer,
        spans::{Span, read_spans},
    },
    progress::Progress,
};

/// What the pack checks found: problems of whole packs, and for chunks
/// (by index record) the class and detail of what is wrong with them.
#[derive(Default)]
struct PackFindings {
    packs: Vec<Problem>,
    chunks: HashMap<ChunkId, (ProblemClass, String)>,
    bytes_read: u64,
}

/// Records a chunk's first problem.
fn bad_chunk(f: &mut PackFindings, id: ChunkId, class: ProblemClass, detail: String) {
    f.chunks.entry(id).or_insert((class, detail));
}

/// Every chunk of `records` corrupt, for one reason (their pack).
fn every_chunk_bad(f: &mut PackFindings, records: &[(ChunkId, Location)], detail: &str) {
    for (id, _) in records {
        bad_chunk(f, *id, ProblemClass::CorruptChunk, detail.to_string());
    }
}

fn pack_problem(class: ProblemClass, pack: &PackId, detail: String) -> Problem {
    Problem {
        class,
        object: None,
        object_id: None,
        chunk: None,
        pack: Some(pack.to_hex()),
        detail,
    }
}

/// Where a pack's body ends, and its trailer if it is sealed (its
/// committed length if it is the open pack): a truncated pack, a missing
/// or misfit footer and a bad trailer are recorded as pack problems.
fn pack_body(
    f: &mut PackFindings,
    pack: &PackId,
    shown: &str,
    file_len: u64,
    committed: Option<u64>,
    read: &dyn Fn(&mut [u8], u64) -> std::io::Result<()>,
) -> (u64, Option<Vec<crate::packs::Entry>>) {
    if let Some(c) = committed {
        if file_len < c {
            f.packs.push(pack_problem(
                ProblemClass::TruncatedPack,
                pack,
                format!("{shown}: {file_len} bytes, {c} committed"),
            ));
        }
        return (c.min(file_len), None);
    }
    let mut tail = [0u8; FOOTER_LEN as usize];
    let footer =
        if file_len >= HEADER_LEN + FOOTER_LEN && read(&mut tail, file_len - FOOTER_LEN).is_ok() {
            parse_footer(&tail)
        } else {
            Footer::Absent
        };
    let Footer::Present {
        count,
        trailer_offset,
        sum,
    } = footer
    else {
        f.packs.push(pack_problem(
            ProblemClass::TruncatedPack,
            pack,
            format!("{shown}: sealed, but its trailer is gone (cut short at {file_len} bytes)"),
        ));
        return (file_len, None);
    };
    if !footer_fits(count, trailer_offset, file_len) {
        f.packs.push(pack_problem(
            ProblemClass::PackTrailerMismatch,
            pack,
            format!("{shown}: its footer does not fit the file ({count} entries from {trailer_offset}, {file_len} bytes)"),
        ));
        return (file_len - FOOTER_LEN, None);
    }
    let mut tb = vec![0u8; (file_len - FOOTER_LEN - u64::from(trailer_offset)) as usize];
    let trailer = match read(&mut tb, u64::from(trailer_offset))
        .map_err(|e| e.to_string())
        .and_then(|()| parse_trailer(pack, &tb, &sum, trailer_offset))
    {
        Ok(entries) => Some(entries),
        Err(e) => {
            f.packs.push(pack_problem(
                ProblemClass::PackTrailerMismatch,
                pack,
                format!("{shown}: {e}"),
            ));
            None
        }
    };
    (u64::from(trailer_offset), trailer)
}

/// The index records of a pack: each listed by its trailer (if it has
/// one), each inside its body.
fn records_fit(
    f: &mut PackFindings,
    pack: &PackId,
    shown: &str,
    records: &[(ChunkId, Location)],
    body_end: u64,
    trailer: Option<&[crate::packs::Entry]>,
) {
    if let Some(t) = trailer {
        let listed: HashSet<(ChunkId, u32, u32)> =
            t.iter().map(|e| (e.id, e.offset, e.len)).collect();
        for (id, loc) in records {
            if !listed.contains(&(*id, loc.offset, loc.len)) {
                f.packs.push(pack_problem(
                    ProblemClass::PackTrailerMismatch,
                    pack,
                    format!(
                        "{shown}: the index puts chunk {} at {}, which its trailer does not list",
                        id.short(),
                        loc.offset
                    ),
                ));
            }
        }
    }
    for (id, loc) in records {
        if loc.end() > body_end {
            bad_chunk(
                f,
                *id,
                ProblemClass::CorruptChunk,
                format!(
                    "pack {shown} is cut short: the chunk ends at {}, the pack's data at {body_end}",
                    loc.end()
                ),
            );
        }
    }
}

impl Store {
    /// Checks one pack file and the index records pointing into it. Without
    /// `read_data` only its header, its footer and its length are read;
    /// with it every indexed chunk is read back in offset order and
    /// re-hashed, and the trailer compared with the entries it lists.
    fn check_pack(
        &self,
        pack: &PackId,
        file_len: u64,
        committed: Option<u64>,
        records: &[(ChunkId, Location)],
        read_data: bool,
    ) -> PackFindings {
        let mut f = PackFindings::default();
        let path = self.packs().path(pack);
        let shown = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                every_chunk_bad(&mut f, records, &format!("pack {shown} unreadable: {e}"));
                return f;
            }
        };
        let read =
            |buf: &mut [u8], at: u64| std::os::unix::fs::FileExt::read_exact_at(&file, buf, at);
        // Header.
        let mut head = [0u8; HEADER_LEN as usize];
        if file_len < HEADER_LEN || read(&mut head, 0).is_err() {
            f.packs.push(pack_problem(
                ProblemClass::TruncatedPack,
                pack,
                format!("{shown}: shorter than its header"),
            ));
            every_chunk_bad(&mut f, records, &format!("pack {shown} is cut short"));
            return f;
        }
        if let Err(e) = check_header(&head, pack) {
            f.packs.push(pack_problem(
                ProblemClass::PackTrailerMismatch,
                pack,
                format!("{shown}: {e}"),
            ));
        }
        let (body_end, trailer) = pack_body(&mut f, pack, &shown, file_len, committed, &read);
        records_fit(&mut f, pack, &shown, records, body_end, trailer.as_deref());
        if !read_data {
            return f;
        }
        self.check_pack_bytes(
            &mut f,
            pack,
            &shown,
            file_len,
            body_end,
            trailer.as_deref(),
            records,
            &read,
        );
        f
    }

    /// The `read_data` part of [`Store::check_pack`]: every trailer entry's
    /// header and every indexed chunk (header and bytes) read back and
    /// checked, the chunks re-hashed. The pack is read in offset order, a
    /// window at a time ([`read_spans`]), so that what one
    /// read copies out of the page cache is still in the CPU's cache when
    /// it is hashed.
    #[allow(clippy::too_many_arguments)]
    fn check_pack_bytes(
        &self,
        f: &mut PackFindings,
        pack: &PackId,
        shown: &str,
        file_len: u64,
        body_end: u64,
        trailer: Option<&[crate::packs::Entry]>,
        records: &[(ChunkId, Location)],
        read: &dyn Fn(&mut [u8], u64) -> std::io::Result<()>,
    ) {
        // What to check, as (span start, span end, what): a trailer entry
        // needs its header, an indexed chunk its header and its bytes.
        let first_body = HEADER_LEN + ENTRY_HEADER_LEN;
        let mut spans: Vec<(u64, u64, Span)> = Vec::new();
        let mut bad_trailer: Option<usize> = None;
        for (i, e) in trailer.unwrap_or(&[]).iter().enumerate() {
            let at = u64::from(e.offset);
            if at < first_body || at > body_end {
                bad_trailer = Some(bad_trailer.map_or(i, |b| b.min(i)));
            } else {
                spans.push((at - ENTRY_HEADER_LEN, at, Span::Trailer(i)));
            }
        }
        for (i, (id, loc)) in records.iter().enumerate() {
            if loc.end() > body_end {
                continue; // reported (cut short) by records_fit
            }
            let at = u64::from(loc.offset);
            if at < first_body {
                bad_chunk(
                    f,
                    *id,
                    ProblemClass::CorruptChunk,
                    format!("pack {shown} holds another entry at {}", loc.offset),
                );
            } else {
                spans.push((at - ENTRY_HEADER_LEN, loc.end(), Span::Entry(i)));
            }
        }
        let read_all = read_spans(&mut spans, read, &mut |what, bytes| {
            let header = decode_entry_header(&bytes[..ENTRY_HEADER_LEN as usize]);
            match what {
                Span::Trailer(i) => {
                    let t = &trailer.unwrap_or(&[])[i];
                    if header != Some((t.id, t.len)) {
                        bad_trailer = Some(bad_trailer.map_or(i, |b| b.min(i)));
                    }
                }
                Span::Entry(i) => {
                    let (id, loc) = &records[i];
                    if header != Some((*id, loc.len)) {
                        bad_chunk(
                            f,
                            *id,
                            ProblemClass::CorruptChunk,
                            format!("pack {shown} holds another entry at {}", loc.offset),
                        );
                    } else if check_chunk_id(id, &bytes[ENTRY_HEADER_LEN as usize..]).is_err() {
                        bad_chunk(
                            f,
                            *id,
                            ProblemClass::CorruptChunk,
                            "content does not hash to its id".into(),
                        );
                    }
                }
            }
        });
        if let Err(e) = read_all {
            let detail = format!("pack {shown} unreadable: {e}");
            for (id, _) in records {
                bad_chunk(f, *id, ProblemClass::CorruptChunk, detail.clone());
            }
            return;
        }
        f.bytes_read = file_len;
        if let (Some(t), Some(i)) = (trailer, bad_trailer) {
            let e = &t[i];
            f.packs.push(pack_problem(
                ProblemClass::PackTrailerMismatch,
                pack,
                format!("{shown}: its trailer lists chunk {} at {}, the pack holds something else there", e.id.short(), e.offset),
            ));
        }
    }

    /// Step A of a verify (beside the records, step B): the chunk index
    /// read once, in chunk-id order and by pack; then the pack files
    /// checked in parallel (length, trailer, and with `read_data` every
    /// indexed chunk re-hashed). Nothing here needs the records: what the
    /// packs hold is compared with what the manifests reference in
    /// [`Store::chunk_problems`], once both are known.
    pub(super) fn scan_packs(&self, read_data: bool, progress: &dyn Progress) -> Result<PackScan> {
        let mut index = Vec::new();
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, Location)>> = HashMap::new();
        for rec in self.db().index_iter_lenient() {
            let (id, loc) = rec?;
            if let Some(l) = loc {
                by_pack.entry(l.pack).or_default().push((id, l));
            }
            index.push((id, loc));
        }
        let mut problems = Vec::new();
        let open: HashMap<PackId, u64> = self.packs().open_packs().into_iter().collect();
        let mut files = Vec::new();
        for item in self.packs().pack_files()? {
            match item {
                Ok(p) => files.push(p),
                Err(path) => problems.push(Problem {
                    class: ProblemClass::OrphanChunk,
                    object: None,
                    object_id: None,
                    chunk: None,
                    pack: None,
                    detail: format!("stray file {}", path.display()),
                }),
            }
        }
        let on_disk: HashSet<PackId> = files.iter().map(|(p, _)| *p).collect();
        progress.start(
            "verify",
            files.len() as u64,
            files.iter().map(|f| f.1).sum(),
        );
        let findings: Vec<PackFindings> = files
            .par_iter()
            .map(|(pack, len)| {
                let records = by_pack.get(pack).map(Vec::as_slice).unwrap_or(&[]);
                let mut f = self.check_pack(pack, *len, open.get(pack).copied(), records, read_data);
                if records.is_empty() && !open.contains_key(pack) {
                    f.packs.push(pack_problem(
                        ProblemClass::OrphanChunk,
                        pack,
                        format!("{}: no chunk in the index lives here (`bbsync repair-index` indexes its chunks)", self.packs().path(pack).display()),
                    ));
                }
                progress.advance(1, *len);
                f
            })
            .collect();
        progress.finish();
        drop(by_pack);
        let mut bad: HashMap<ChunkId, (ProblemClass, String)> = HashMap::new();
        let mut bytes_read = 0;
        for f in findings {
            problems.extend(f.packs);
            bad.extend(f.chunks);
            bytes_read += f.bytes_read;
        }
        for pack in open.keys() {
            if !on_disk.contains(pack) {
                problems.push(pack_problem(
                    ProblemClass::TruncatedPack,
                    pack,
                    format!(
                        "{}: the open pack is missing",
                        self.packs().path(pack).display()
                    ),
                ));
            }
        }
        Ok(PackScan {
            index,
            problems,
            bad,
            bytes_read,
            packs: files.len() as u64,
            on_disk,
        })
    }
}

/// What step A of a verify found (see [`Store::scan_packs`]).
pub(super) struct PackScan {
    /// The chunk index in chunk-id order (`None`: a damaged record).
    pub(super) index: Vec<(ChunkId, Option<Location>)>,
    /// Problems of the packs themselves (stray files, trailers, a missing
    /// open pack).
    pub(super) problems: Vec<Problem>,
    /// Chunks whose bytes in their pack are wrong, with the first problem.
    pub(super) bad: HashMap<ChunkId, (ProblemClass, String)>,
    pub(super) bytes_read: u64,
    pub(super) packs: u64,
    pub(super) on_disk: HashSet<PackId>,
}
