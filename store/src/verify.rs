//! `verify`: checks every object, envelope and chunk, and classifies each
//! problem found (DESIGN §5).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, EnvelopeEntry, InstanceId, Manifest, ObjectId, Unverified, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    ObjectState, Store, StoreError,
    error::Result,
    packs::{
        ENTRY_HEADER_LEN, FOOTER_LEN, Footer, HEADER_LEN, Location, PackId, check_header,
        decode_entry_header, footer_fits, parse_footer, parse_trailer,
    },
    progress::Progress,
    sync::verify_slots,
};

/// The classes of problems `verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemClass {
    /// A manifest references a chunk that is not on disk.
    MissingChunk,
    /// A chunk file's bytes do not hash to its id (or have the wrong length).
    CorruptChunk,
    /// A chunk file no manifest references.
    OrphanChunk,
    /// A manifest whose signature fails or whose author is not trusted.
    BadManifestSignature,
    /// An envelope entry for this instance that fails to verify or unwrap.
    BadEnvelope,
    /// No envelope entry for this instance.
    Undecryptable,
    /// The object is recorded as not yet complete.
    IncompleteObject,
    /// A pack file is shorter than what its trailer, the index or the
    /// database says it holds (cut short).
    TruncatedPack,
    /// A pack's header or trailer does not match its content, or the index
    /// points at a place its trailer does not list.
    PackTrailerMismatch,
}

impl fmt::Display for ProblemClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemClass::MissingChunk => "missing-chunk",
            ProblemClass::CorruptChunk => "corrupt-chunk",
            ProblemClass::OrphanChunk => "orphan-chunk",
            ProblemClass::BadManifestSignature => "bad-manifest-signature",
            ProblemClass::BadEnvelope => "bad-envelope",
            ProblemClass::Undecryptable => "undecryptable",
            ProblemClass::IncompleteObject => "incomplete-object",
            ProblemClass::TruncatedPack => "truncated-pack",
            ProblemClass::PackTrailerMismatch => "pack-trailer-mismatch",
        })
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Its class.
    pub class: ProblemClass,
    /// The object concerned (`kind:name`), if any.
    pub object: Option<String>,
    /// The object id, if any.
    pub object_id: Option<String>,
    /// The chunk concerned, if any.
    pub chunk: Option<String>,
    /// The pack concerned, if any (its id).
    pub pack: Option<String>,
    /// What exactly is wrong.
    pub detail: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Objects checked (tombstones included).
    pub objects: u64,
    /// Chunk references checked.
    pub chunks: u64,
    /// Bytes of pack files read and re-hashed (with `read_data`).
    pub bytes_read: u64,
    /// Pack files checked.
    pub packs: u64,
    /// Whether chunk contents were re-hashed.
    pub read_data: bool,
    /// Everything found, sorted by class.
    pub problems: Vec<Problem>,
    /// Count per class.
    pub counts: HashMap<String, u64>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct ObjInfo<'a> {
    /// Its kind and name (formatted `kind:name` only for a problem).
    st: &'a ObjectState,
    id: ObjectId,
}

impl ObjInfo<'_> {
    fn problem(&self, class: ProblemClass, detail: String) -> Problem {
        Problem {
            class,
            object: Some(format!("{}:{}", self.st.kind, self.st.name)),
            object_id: Some(self.id.to_hex()),
            chunk: None,
            pack: None,
            detail,
        }
    }
}

/// Objects checked together (one signature batch run per group and kind).
const GROUP: usize = 256;

/// Groups checked in parallel between two reads of the object records (the
/// records of one round are in memory at once; the rest stream).
const GROUPS_PER_ROUND: usize = 16;

/// A chunk reference to check: the chunk, its length per the manifest, the
/// object, and the chunk's location once the index was read.
struct ChunkRef {
    id: ChunkId,
    len: u32,
    object: ObjectId,
    loc: Option<Location>,
}

/// Problems found, and the chunk references to check.
type Checked = (Vec<Problem>, Vec<ChunkRef>);

type SignedResult<T> = bbsync_protocol::Result<bbsync_protocol::Signed<T>>;

impl Store {
    /// Checks the manifests and this instance's envelope entries of a group
    /// of objects; `base` is the index of the group's first object. Records
    /// whose bytes still match the MAC this instance stored when it verified
    /// or wrote them (`Store::record_mac`) skip the signature math; all
    /// others are checked in ed25519 batches. Format rules and trust are
    /// checked for every record.
    fn check_group(&self, group: &[(ObjectId, ObjectState)]) -> Checked {
        let infos: Vec<ObjInfo> = group
            .iter()
            .map(|(id, st)| ObjInfo { st, id: *id })
            .collect();
        let base = 0;
        let mut ps = Vec::new();
        let mut refs = Vec::new();
        // 1. Manifests: decode all; verify the unchecked ones in one batch run.
        let mut pending = Vec::new();
        let mut results: Vec<Option<SignedResult<Manifest>>> = Vec::new();
        let mut batch = Vec::new();
        for (k, (id, st)) in group.iter().enumerate() {
            let idx = base + k;
            let info = &infos[idx];
            let rec = match self.db().record(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    ps.push(info.problem(ProblemClass::BadManifestSignature, e.to_string()));
                    continue;
                }
            };
            let checked = self.record_checked(&rec);
            match Unverified::<Manifest>::decode(&rec.manifest) {
                Ok(u) if checked => {
                    results.push(Some(u.dangerously_verified_before(|a| self.is_full(a))));
                    batch.push(None);
                }
                Ok(u) => {
                    results.push(None);
                    batch.push(Some(u));
                }
                Err(e) => {
                    ps.push(info.problem(
                        ProblemClass::BadManifestSignature,
                        format!("manifest of object {}: {e}", id.short()),
                    ));
                    continue;
                }
            }
            pending.push((idx, st, rec, checked));
        }
        let batched = verify_slots(batch, |_, author| self.is_full(author));
        for (r, v) in results.iter_mut().zip(batched) {
            if v.is_some() {
                *r = v;
            }
        }
        // 2. This instance's entries: candidates found, checked the same way.
        let mut batch = Vec::new();
        let mut rows = Vec::new();
        for ((idx, st, rec, checked), r) in pending.into_iter().zip(results) {
            let info = &infos[idx];
            let m = match r {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    ps.push(info.problem(
                        ProblemClass::BadManifestSignature,
                        format!("manifest of object {}: {e}", info.id.short()),
                    ));
                    // Its chunks are still referenced (not orphans): check them too.
                    if let Ok(u) = Unverified::<Manifest>::decode(&rec.manifest) {
                        let m = u.dangerously_assume_verified();
                        refs.extend(m.chunks.iter().map(|c| ChunkRef {
                            id: c.id,
                            len: c.len,
                            object: info.id,
                            loc: None,
                        }));
                    }
                    continue;
                }
                None => continue,
            };
            if m.id() != st.manifest_id || m.version != st.version {
                ps.push(info.problem(
                    ProblemClass::BadManifestSignature,
                    "manifest does not match the object record".into(),
                ));
            }
            if !st.complete {
                ps.push(info.problem(
                    ProblemClass::IncompleteObject,
                    "not all chunks fetched yet".into(),
                ));
            }
            if st.deleted {
                continue;
            }
            refs.extend(m.chunks.iter().map(|c| ChunkRef {
                id: c.id,
                len: c.len,
                object: info.id,
                loc: None,
            }));
            // Every entry addressed to us is a candidate (as for export).
            let (candidates, decode_err) = self.entry_candidates(&rec);
            let author = m.author;
            let trusted = |w: &InstanceId| *w == author || self.is_full(w);
            let mut candidates = candidates.into_iter();
            match (candidates.next(), decode_err) {
                (Some(u), _) if checked => {
                    let first = u.dangerously_verified_before(trusted);
                    rows.push((idx, m, Some(first), candidates.collect::<Vec<_>>()));
                    batch.push(None);
                }
                (Some(u), _) => {
                    rows.push((idx, m, None, candidates.collect::<Vec<_>>()));
                    batch.push(Some(u));
                }
                (None, Some(e)) => ps.push(info.problem(ProblemClass::BadEnvelope, e.to_string())),
                (None, None) => ps.push(info.problem(
                    ProblemClass::Undecryptable,
                    "no envelope entry for this instance".into(),
                )),
            }
        }
        let batched = verify_slots(batch, |i, w| *w == rows[i].1.author || self.is_full(w));
        // 3. Each object needs one usable entry: right version, unwraps.
        for ((idx, m, decided, others), verified) in rows.into_iter().zip(batched) {
            let Some(first) = decided.or(verified) else {
                continue; // (every row was decided or verified above)
            };
            let info = &infos[idx];
            let author = m.author;
            let usable = |r: SignedResult<EnvelopeEntry>| {
                r.map_err(|e| e.to_string()).and_then(|e| {
                    if !crate::entry_fits(&e, &m) {
                        return Err("entry is for another object version".to_string());
                    }
                    // Unwraps, and to the key the manifest commits to.
                    self.unwrap_for(&m, &e).map(drop).map_err(|e| e.to_string())
                })
            };
            let mut result = usable(first);
            for u in others {
                if result.is_ok() {
                    break;
                }
                if usable(u.verify(|w| *w == author || self.is_full(w))).is_ok() {
                    result = Ok(());
                }
            }
            if let Err(detail) = result {
                ps.push(info.problem(ProblemClass::BadEnvelope, detail));
            }
        }
        (ps, refs)
    }
}

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

impl Store {
    /// Checks one pack file and the index records pointing into it. Without
    /// `read_data` only its header, its footer and its length are read;
    /// with it the whole file is read sequentially and every indexed chunk
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
                for (id, _) in records {
                    bad_chunk(
                        &mut f,
                        *id,
                        ProblemClass::CorruptChunk,
                        format!("pack {shown} unreadable: {e}"),
                    );
                }
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
            for (id, _) in records {
                bad_chunk(
                    &mut f,
                    *id,
                    ProblemClass::CorruptChunk,
                    format!("pack {shown} is cut short"),
                );
            }
            return f;
        }
        if let Err(e) = check_header(&head, pack) {
            f.packs.push(pack_problem(
                ProblemClass::PackTrailerMismatch,
                pack,
                format!("{shown}: {e}"),
            ));
        }
        // Where the body ends, and the trailer if sealed.
        let mut trailer: Option<Vec<crate::packs::Entry>> = None;
        let body_end = match committed {
            Some(c) => {
                if file_len < c {
                    f.packs.push(pack_problem(
                        ProblemClass::TruncatedPack,
                        pack,
                        format!("{shown}: {file_len} bytes, {c} committed"),
                    ));
                }
                c.min(file_len)
            }
            None => {
                let mut tail = [0u8; FOOTER_LEN as usize];
                let footer = if file_len >= HEADER_LEN + FOOTER_LEN
                    && read(&mut tail, file_len - FOOTER_LEN).is_ok()
                {
                    parse_footer(&tail)
                } else {
                    Footer::Absent
                };
                match footer {
                    Footer::Absent => {
                        f.packs.push(pack_problem(
                            ProblemClass::TruncatedPack,
                            pack,
                            format!("{shown}: sealed, but its trailer is gone (cut short at {file_len} bytes)"),
                        ));
                        file_len
                    }
                    Footer::Present {
                        count,
                        trailer_offset,
                        sum,
                    } => {
                        if !footer_fits(count, trailer_offset, file_len) {
                            f.packs.push(pack_problem(
                                ProblemClass::PackTrailerMismatch,
                                pack,
                                format!("{shown}: its footer does not fit the file ({count} entries from {trailer_offset}, {file_len} bytes)"),
                            ));
                            file_len - FOOTER_LEN
                        } else {
                            let mut tb = vec![
                                0u8;
                                (file_len - FOOTER_LEN - u64::from(trailer_offset))
                                    as usize
                            ];
                            match read(&mut tb, u64::from(trailer_offset))
                                .map_err(|e| e.to_string())
                                .and_then(|()| parse_trailer(pack, &tb, &sum, trailer_offset))
                            {
                                Ok(entries) => trailer = Some(entries),
                                Err(e) => f.packs.push(pack_problem(
                                    ProblemClass::PackTrailerMismatch,
                                    pack,
                                    format!("{shown}: {e}"),
                                )),
                            }
                            u64::from(trailer_offset)
                        }
                    }
                }
            }
        };
        // Index records: inside the body, and listed by the trailer.
        if let Some(t) = &trailer {
            let listed: HashSet<(ChunkId, u32, u32)> =
                t.iter().map(|e| (e.id, e.offset, e.len)).collect();
            for (id, loc) in records {
                if !listed.contains(&(*id, loc.offset, loc.len)) {
                    f.packs.push(pack_problem(
                        ProblemClass::PackTrailerMismatch,
                        pack,
                        format!("{shown}: the index puts chunk {} at {}, which its trailer does not list", id.short(), loc.offset),
                    ));
                }
            }
        }
        for (id, loc) in records {
            if loc.end() > body_end {
                bad_chunk(
                    &mut f,
                    *id,
                    ProblemClass::CorruptChunk,
                    format!(
                        "pack {shown} is cut short: the chunk ends at {}, the pack's data at {body_end}",
                        loc.end()
                    ),
                );
            }
        }
        if !read_data {
            return f;
        }
        // The whole pack, sequentially, into this thread's buffer (kept
        // between packs: no page faults for a fresh 16 MiB each time).
        thread_local! {
            static PACK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PACK_BUF.with_borrow_mut(|buf| {
            if buf.len() < body_end as usize {
                buf.resize(body_end as usize, 0);
            }
            let bytes = &mut buf[..body_end as usize];
            self.check_pack_bytes(
                &mut f,
                pack,
                &shown,
                file_len,
                trailer.as_deref(),
                records,
                bytes,
                &read,
            );
        });
        f
    }

    /// The `read_data` part of [`Store::check_pack`]: reads the pack's body
    /// into `bytes` and checks every entry against the trailer and the index.
    #[allow(clippy::too_many_arguments)]
    fn check_pack_bytes(
        &self,
        f: &mut PackFindings,
        pack: &PackId,
        shown: &str,
        file_len: u64,
        trailer: Option<&[crate::packs::Entry]>,
        records: &[(ChunkId, Location)],
        bytes: &mut [u8],
        read: &dyn Fn(&mut [u8], u64) -> std::io::Result<()>,
    ) {
        if let Err(e) = read(bytes, 0) {
            for (id, _) in records {
                bad_chunk(
                    f,
                    *id,
                    ProblemClass::CorruptChunk,
                    format!("pack {shown} unreadable: {e}"),
                );
            }
            return;
        }
        f.bytes_read = file_len;
        let entry_at = |offset: u32| {
            (u64::from(offset) >= HEADER_LEN + ENTRY_HEADER_LEN)
                .then(|| {
                    let h = u64::from(offset) - ENTRY_HEADER_LEN;
                    bytes
                        .get(h as usize..offset as usize)
                        .and_then(decode_entry_header)
                })
                .flatten()
        };
        if let Some(t) = trailer
            && let Some(e) = t.iter().find(|e| entry_at(e.offset) != Some((e.id, e.len)))
        {
            f.packs.push(pack_problem(
                ProblemClass::PackTrailerMismatch,
                pack,
                format!("{shown}: its trailer lists chunk {} at {}, the pack holds something else there", e.id.short(), e.offset),
            ));
        }
        for (id, loc) in records {
            let Some(chunk) = bytes.get(loc.offset as usize..loc.end() as usize) else {
                continue; // reported above (cut short)
            };
            if entry_at(loc.offset) != Some((*id, loc.len)) {
                bad_chunk(
                    f,
                    *id,
                    ProblemClass::CorruptChunk,
                    format!("pack {shown} holds another entry at {}", loc.offset),
                );
            } else if check_chunk_id(id, chunk).is_err() {
                bad_chunk(
                    f,
                    *id,
                    ProblemClass::CorruptChunk,
                    "content does not hash to its id".into(),
                );
            }
        }
    }

    /// Step B of a verify: every object's record, manifest and envelope,
    /// in rounds of groups (the groups of a round checked in parallel, the
    /// signatures of each group in ed25519 batches). Returns the problems,
    /// the chunk references, the object count and the incomplete objects.
    #[allow(clippy::type_complexity)]
    fn check_records(&self) -> Result<(Vec<Problem>, Vec<ChunkRef>, u64, HashSet<ObjectId>)> {
        let mut problems = Vec::new();
        let mut refs: Vec<ChunkRef> = Vec::new();
        let mut objects = 0u64;
        let mut incomplete: HashSet<ObjectId> = HashSet::new();
        let mut records = self.db().objects();
        loop {
            let round: Vec<(ObjectId, ObjectState)> = records
                .by_ref()
                .take(GROUP * GROUPS_PER_ROUND)
                .collect::<Result<_>>()?;
            if round.is_empty() {
                break;
            }
            objects += round.len() as u64;
            incomplete.extend(
                round
                    .iter()
                    .filter(|(_, st)| !st.complete && !st.deleted)
                    .map(|(id, _)| *id),
            );
            let checked: Vec<Checked> = round
                .par_chunks(GROUP)
                .map(|group| self.check_group(group))
                .collect();
            for (ps, rs) in checked {
                problems.extend(ps);
                refs.extend(rs);
            }
        }
        Ok((problems, refs, objects, incomplete))
    }

    /// Step A of a verify (beside the records, step B): the chunk index
    /// read once, in chunk-id order and by pack; then the pack files
    /// checked in parallel (length, trailer, and with `read_data` every
    /// indexed chunk re-hashed). Nothing here needs the records: what the
    /// packs hold is compared with what the manifests reference in
    /// [`Store::chunk_problems`], once both are known.
    fn scan_packs(&self, read_data: bool, progress: &dyn Progress) -> Result<PackScan> {
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

    /// After steps A and B: the index merged with the references (both in
    /// chunk-id order: what is referenced and missing, what is indexed and
    /// referenced by nothing), then each referenced chunk that has a
    /// location against what the packs held. Returns the problems (the
    /// packs' own first).
    fn chunk_problems(
        &self,
        refs: &mut [ChunkRef],
        incomplete: &HashSet<ObjectId>,
        scan: PackScan,
    ) -> Result<Vec<Problem>> {
        let PackScan {
            index,
            mut problems,
            bad,
            on_disk,
            ..
        } = scan;
        let mut labels: HashMap<ObjectId, String> = HashMap::new();
        let mut label = |id: &ObjectId| -> String {
            labels
                .entry(*id)
                .or_insert_with(|| match self.db().object(id) {
                    Ok(Some(st)) => format!("{}:{}", st.kind, st.name),
                    _ => id.to_hex(),
                })
                .clone()
        };
        let chunk_problem = |class, r: &ChunkRef, label: String, detail: String| Problem {
            class,
            object: Some(label),
            object_id: Some(r.object.to_hex()),
            chunk: Some(r.id.to_hex()),
            pack: None,
            detail,
        };
        // The copies of a restore that stopped, pinned for its rerun (a day
        // at most): not orphans.
        let pinned: HashSet<ChunkId> =
            crate::backup::restore::pins::read(&self.dir().join(crate::RESTORE_PINS))?
                .filter(|p| !p.expired())
                .map(|p| p.ids.into_iter().collect())
                .unwrap_or_default();
        // 1. The index, merged with the references (both in chunk-id order).
        refs.sort_unstable_by_key(|a| a.id);
        let mut next = 0;
        let mut missing = |r: &ChunkRef, problems: &mut Vec<Problem>, detail: &str| {
            // An object marked incomplete is expected to lack chunks.
            if !incomplete.contains(&r.object) {
                let l = label(&r.object);
                problems.push(chunk_problem(
                    ProblemClass::MissingChunk,
                    r,
                    l,
                    detail.into(),
                ));
            }
        };
        for (id, loc) in index {
            while next < refs.len() && refs[next].id < id {
                missing(&refs[next], &mut problems, "not in the chunk index");
                next += 1;
            }
            let mut referenced = false;
            while next < refs.len() && refs[next].id == id {
                referenced = true;
                match loc {
                    Some(l) => refs[next].loc = Some(l),
                    None => missing(
                        &refs[next],
                        &mut problems,
                        "its index record is damaged (run `bbsync repair-index`)",
                    ),
                }
                next += 1;
            }
            match loc {
                Some(_) if !referenced && !pinned.contains(&id) => problems.push(Problem {
                    class: ProblemClass::OrphanChunk,
                    object: None,
                    object_id: None,
                    chunk: Some(id.to_hex()),
                    pack: None,
                    detail: "no manifest references this chunk".into(),
                }),
                None if !referenced => problems.push(Problem {
                    class: ProblemClass::MissingChunk,
                    object: None,
                    object_id: None,
                    chunk: Some(id.to_hex()),
                    pack: None,
                    detail: "its index record is damaged (run `bbsync repair-index`)".into(),
                }),
                _ => {}
            }
        }
        for r in &refs[next..] {
            missing(r, &mut problems, "not in the chunk index");
        }
        // 3. Each referenced chunk that has a location.
        for r in refs.iter() {
            let Some(loc) = r.loc else { continue };
            let p = if !on_disk.contains(&loc.pack) {
                if incomplete.contains(&r.object) {
                    None
                } else {
                    Some((
                        ProblemClass::MissingChunk,
                        format!(
                            "its pack {} is missing",
                            self.packs().path(&loc.pack).display()
                        ),
                    ))
                }
            } else if loc.len != r.len {
                Some((
                    ProblemClass::CorruptChunk,
                    format!("length {} (expected {})", loc.len, r.len),
                ))
            } else {
                bad.get(&r.id).cloned()
            };
            if let Some((class, detail)) = p {
                let l = label(&r.object);
                problems.push(chunk_problem(class, r, l, detail));
            }
        }
        Ok(problems)
    }
}

/// What step A of a verify found (see [`Store::scan_packs`]).
struct PackScan {
    /// The chunk index in chunk-id order (`None`: a damaged record).
    index: Vec<(ChunkId, Option<Location>)>,
    /// Problems of the packs themselves (stray files, trailers, a missing
    /// open pack).
    problems: Vec<Problem>,
    /// Chunks whose bytes in their pack are wrong, with the first problem.
    bad: HashMap<ChunkId, (ProblemClass, String)>,
    bytes_read: u64,
    packs: u64,
    on_disk: HashSet<PackId>,
}

impl Store {
    /// Checks the whole store. With `read_data`, every chunk referenced is
    /// re-hashed (in parallel on all cores); otherwise only presence and length.
    pub fn verify(&self, read_data: bool, progress: &dyn Progress) -> Result<VerifyReport> {
        let start = Instant::now();
        let _g = self.lock();
        if read_data {
            // Read from disk while the manifests are checked.
            self.packs().prefetch_all();
        }
        // A. The chunk index and the packs (with read_data every chunk
        // re-hashed), beside B. the records: their manifests and envelopes
        // checked and the chunks they reference listed. Both use every
        // core; neither needs the other until the two are compared.
        let (scan, records) = rayon::join(
            || self.scan_packs(read_data, progress),
            || self.check_records(),
        );
        let (mut problems, mut refs, objects, incomplete) = records?;
        let scan = scan?;
        let (bytes_read, packs) = (scan.bytes_read, scan.packs);
        let chunks = refs.len() as u64;
        let chunk_problems = self.chunk_problems(&mut refs, &incomplete, scan)?;
        drop(refs);
        let mut seen = HashSet::new();
        for p in chunk_problems {
            if seen.insert((
                p.class,
                p.chunk.clone(),
                p.object_id.clone(),
                p.detail.clone(),
            )) {
                problems.push(p);
            }
        }
        problems
            .sort_by(|a, b| (a.class, &a.object, &a.chunk).cmp(&(b.class, &b.object, &b.chunk)));
        let mut counts = HashMap::new();
        for p in &problems {
            *counts.entry(p.class.to_string()).or_insert(0) += 1;
        }
        let report = VerifyReport {
            objects,
            chunks,
            bytes_read,
            packs,
            read_data,
            problems,
            counts,
            elapsed: start.elapsed(),
        };
        let last = LastVerify {
            time_ms: crate::backup::now_ms(),
            read_data,
            problems: report.problems.len() as u64,
            counts: report.counts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        // A record for monitoring (`/metrics`, `status`): a verify whose
        // record cannot be written still reports what it found.
        if let Err(e) = serde_json::to_vec(&last)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
            .and_then(|v| self.db().set_last_verify(&v))
        {
            tracing::warn!("could not record the outcome of this verify: {e}");
        }
        Ok(report)
    }

    /// The outcome of the last `verify` of this store, by the CLI or the
    /// admin API (`None` before the first one, or when the record does not
    /// parse).
    pub fn last_verify(&self) -> Result<Option<LastVerify>> {
        Ok(self
            .db()
            .last_verify()?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

/// What the last `verify` of a store found, kept in the store for
/// monitoring.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LastVerify {
    /// When it ended (Unix ms).
    pub time_ms: u64,
    /// Whether chunk contents were re-hashed.
    pub read_data: bool,
    /// Problems found.
    pub problems: u64,
    /// Problems by class.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// Makes sure a failing verify maps to an error the CLI can exit on.
pub fn report_error(r: &VerifyReport) -> Option<StoreError> {
    if r.is_ok() {
        None
    } else {
        Some(StoreError::Corrupt(format!(
            "verify found {} problem(s)",
            r.problems.len()
        )))
    }
}
