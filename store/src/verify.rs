//! `verify`: checks every object, envelope and chunk, and classifies each
//! problem found (DESIGN §5).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, EnvelopeEntry, InstanceId, Manifest, ObjectId, Unverified, chunk::check_chunk_id,
    verify_many,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::{ObjectState, Store, StoreError, error::Result, progress::Progress};

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
    /// Bytes re-hashed (with `read_data`).
    pub bytes_read: u64,
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

struct ObjInfo {
    label: String,
    id: ObjectId,
}

impl ObjInfo {
    fn problem(&self, class: ProblemClass, detail: String) -> Problem {
        Problem {
            class,
            object: Some(self.label.clone()),
            object_id: Some(self.id.to_hex()),
            chunk: None,
            detail,
        }
    }
}

/// Objects checked together (one signature batch run per group and kind).
const GROUP: usize = 256;

/// Problems found, and the chunk references to check: (chunk, length, object index).
type Checked = (Vec<Problem>, Vec<(ChunkId, u32, usize)>);

type SignedResult<T> = bbsync_protocol::Result<bbsync_protocol::Signed<T>>;

impl Store {
    /// Checks the manifests and this instance's envelope entries of a group
    /// of objects; `base` is the index of the group's first object. Records
    /// whose bytes still match the MAC this instance stored when it verified
    /// or wrote them (`Store::record_mac`) skip the signature math; all
    /// others are checked in ed25519 batches. Format rules and trust are
    /// checked for every record.
    fn check_group(
        &self,
        base: usize,
        group: &[(ObjectId, ObjectState)],
        infos: &[ObjInfo],
    ) -> Checked {
        let mut ps = Vec::new();
        let mut refs = Vec::new();
        // 1. Manifests: decode all; verify the unchecked ones in one batch run.
        let mut pending = Vec::new();
        let mut results: Vec<Option<SignedResult<Manifest>>> = Vec::new();
        let mut batch = Vec::new();
        let mut batch_slots = Vec::new();
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
                }
                Ok(u) => {
                    batch_slots.push(results.len());
                    results.push(None);
                    batch.push(u);
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
        let batched = verify_many(batch, |_, author| self.is_full(author));
        for (slot, r) in batch_slots.into_iter().zip(batched) {
            results[slot] = Some(r);
        }
        // 2. This instance's entries: candidates found, checked the same way.
        let mut batch = Vec::new();
        let mut batch_of = Vec::new();
        let mut decided = Vec::new();
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
                        refs.extend(m.chunks.iter().map(|c| (c.id, c.len, idx)));
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
            refs.extend(m.chunks.iter().map(|c| (c.id, c.len, idx)));
            // Every entry addressed to us is a candidate (as for export).
            let (candidates, decode_err) = self.entry_candidates(&rec);
            let author = m.author;
            let trusted = |w: &InstanceId| *w == author || self.is_full(w);
            let mut candidates = candidates.into_iter();
            match (candidates.next(), decode_err) {
                (Some(u), _) if checked => {
                    let first = u.dangerously_verified_before(trusted);
                    decided.push((idx, m, first, candidates.collect::<Vec<_>>()));
                }
                (Some(u), _) => {
                    batch.push(u);
                    batch_of.push((idx, m, candidates.collect::<Vec<_>>()));
                }
                (None, Some(e)) => ps.push(info.problem(ProblemClass::BadEnvelope, e.to_string())),
                (None, None) => ps.push(info.problem(
                    ProblemClass::Undecryptable,
                    "no envelope entry for this instance".into(),
                )),
            }
        }
        let batched = verify_many(batch, |i, w| *w == batch_of[i].1.author || self.is_full(w));
        decided.extend(
            batch_of
                .into_iter()
                .zip(batched)
                .map(|((idx, m, others), r)| (idx, m, r, others)),
        );
        // 3. Each object needs one usable entry: right version, unwraps.
        for (idx, m, first, others) in decided {
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

    /// Checks every referenced chunk: presence and length, and with
    /// `read_data` its hash (in parallel).
    fn chunk_problems(
        &self,
        refs: &[(ChunkId, u32, usize)],
        infos: &[ObjInfo],
        read_data: bool,
        progress: &dyn Progress,
    ) -> Vec<Option<Problem>> {
        refs.par_iter()
            .map(|(cid, len, idx)| {
                let info = &infos[*idx];
                let problem = |class, detail: String| {
                    Some(Problem {
                        class,
                        object: Some(info.label.clone()),
                        object_id: Some(info.id.to_hex()),
                        chunk: Some(cid.to_hex()),
                        detail,
                    })
                };
                let r = if read_data {
                    match self.chunks().read(cid) {
                        Ok(bytes) => {
                            if bytes.len() != *len as usize {
                                problem(
                                    ProblemClass::CorruptChunk,
                                    format!("length {} (expected {len})", bytes.len()),
                                )
                            } else if check_chunk_id(cid, &bytes).is_err() {
                                problem(
                                    ProblemClass::CorruptChunk,
                                    "content does not hash to its id".into(),
                                )
                            } else {
                                None
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            problem(ProblemClass::MissingChunk, "chunk file not found".into())
                        }
                        Err(e) => problem(ProblemClass::CorruptChunk, format!("unreadable: {e}")),
                    }
                } else {
                    match self.chunks().size(cid) {
                        None => problem(ProblemClass::MissingChunk, "chunk file not found".into()),
                        Some(n) if n != u64::from(*len) => problem(
                            ProblemClass::CorruptChunk,
                            format!("length {n} (expected {len})"),
                        ),
                        Some(_) => None,
                    }
                };
                progress.advance(1, u64::from(*len));
                r
            })
            .collect()
    }
}

impl Store {
    /// Checks the whole store. With `read_data`, every chunk referenced is
    /// re-hashed (in parallel on all cores); otherwise only presence and length.
    pub fn verify(&self, read_data: bool, progress: &dyn Progress) -> Result<VerifyReport> {
        let start = Instant::now();
        let _g = self.lock();
        let mut problems = Vec::new();
        let mut objects = Vec::new();
        for r in self.db().objects() {
            objects.push(r?);
        }
        // Manifests and envelopes: groups of objects in parallel, the
        // signatures of each group checked in ed25519 batches.
        let infos: Vec<ObjInfo> = objects
            .iter()
            .map(|(id, st)| ObjInfo {
                label: format!("{}:{}", st.kind, st.name),
                id: *id,
            })
            .collect();
        let checked: Vec<Checked> = objects
            .par_chunks(GROUP)
            .enumerate()
            .map(|(g, group)| self.check_group(g * GROUP, group, &infos))
            .collect();
        let mut refs = Vec::new();
        for (ps, rs) in checked {
            problems.extend(ps);
            refs.extend(rs);
        }
        // Chunks: presence, length, and with read_data the hash.
        let total_bytes: u64 = refs.iter().map(|r| u64::from(r.1)).sum();
        progress.start("verify", refs.len() as u64, total_bytes);
        // The chunk directory is listed (for orphans) while chunks are hashed.
        let (chunk_problems, listing): (Vec<Option<Problem>>, _) = rayon::join(
            || self.chunk_problems(&refs, &infos, read_data, progress),
            || self.chunks().list_names(),
        );
        let listing = listing?;
        progress.finish();
        let mut seen_missing = HashSet::new();
        for p in chunk_problems.into_iter().flatten() {
            // An object marked incomplete is expected to lack chunks: report it once.
            let incomplete = p.object_id.as_ref().is_some_and(|oid| {
                problems.iter().any(|q: &Problem| {
                    q.class == ProblemClass::IncompleteObject && q.object_id.as_ref() == Some(oid)
                })
            });
            if p.class == ProblemClass::MissingChunk && incomplete {
                continue;
            }
            if seen_missing.insert((p.class, p.chunk.clone(), p.object_id.clone())) {
                problems.push(p);
            }
        }
        // Orphans and stray files.
        let referenced: HashSet<ChunkId> = refs.iter().map(|r| r.0).collect();
        for item in listing {
            match item {
                Ok(id) if !referenced.contains(&id) => problems.push(Problem {
                    class: ProblemClass::OrphanChunk,
                    object: None,
                    object_id: None,
                    chunk: Some(id.to_hex()),
                    detail: "no manifest references this chunk".into(),
                }),
                Ok(_) => {}
                Err(path) => problems.push(Problem {
                    class: ProblemClass::OrphanChunk,
                    object: None,
                    object_id: None,
                    chunk: None,
                    detail: format!("stray file {}", path.display()),
                }),
            }
        }
        problems
            .sort_by(|a, b| (a.class, &a.object, &a.chunk).cmp(&(b.class, &b.object, &b.chunk)));
        let mut counts = HashMap::new();
        for p in &problems {
            *counts.entry(p.class.to_string()).or_insert(0) += 1;
        }
        Ok(VerifyReport {
            objects: objects.len() as u64,
            chunks: refs.len() as u64,
            bytes_read: if read_data { total_bytes } else { 0 },
            read_data,
            problems,
            counts,
            elapsed: start.elapsed(),
        })
    }
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
