//! Step B of a verify: the records, their manifests and this instance's
//! envelope entries (signatures in ed25519 batches unless the record MAC
//! says they were checked before), and the chunks they reference.

use std::collections::HashSet;

use bbsync_protocol::{EnvelopeEntry, InstanceId, Manifest, ObjectId, Unverified};
use rayon::prelude::*;

use super::{ChunkRef, Problem, ProblemClass};
use crate::{ObjectState, Store, db::ObjectRecord, error::Result, sync::verify_slots};

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

/// Problems found, and the chunk references to check.
type Checked = (Vec<Problem>, Vec<ChunkRef>);

type SignedResult<T> = bbsync_protocol::Result<bbsync_protocol::Signed<T>>;

/// A record whose manifest decoded: its place in the group, its state, the
/// record, and whether the record MAC vouched for it.
type ManifestRow<'a> = (usize, &'a ObjectState, &'a ObjectRecord, bool);

/// An object whose manifest verified: its place in the group, the
/// manifest, the verdict on its first entry candidate when the record MAC
/// vouched for it (else the batch decides), and the other candidates.
type EntryRow = (
    usize,
    bbsync_protocol::Signed<Manifest>,
    Option<SignedResult<EnvelopeEntry>>,
    Vec<Unverified<EnvelopeEntry>>,
);

impl Store {
    /// Checks the manifests and this instance's envelope entries of a group
    /// of objects. Records whose bytes still match the MAC this instance
    /// stored when it verified or wrote them (`Store::record_mac`) skip the
    /// signature math; all others are checked in ed25519 batches. Format
    /// rules and trust are checked for every record.
    fn check_group(&self, group: &[(ObjectId, ObjectRecord)]) -> Checked {
        let infos: Vec<ObjInfo> = group
            .iter()
            .map(|(id, rec)| ObjInfo {
                st: &rec.state,
                id: *id,
            })
            .collect();
        let mut ps = Vec::new();
        let mut refs = Vec::new();
        let manifests = self.group_manifests(group, &infos, &mut ps);
        let (rows, batched) = self.group_entries(manifests, &infos, &mut ps, &mut refs);
        self.usable_entries(rows, batched, &infos, &mut ps);
        (ps, refs)
    }

    /// Step 1 of [`Store::check_group`]: every record's manifest decoded;
    /// the manifests the record MAC does not vouch for
    /// verified in one batch run. Returns, for each record that decoded,
    /// its place in the group, state, record, whether the MAC vouched for
    /// it, and its manifest's verdict.
    fn group_manifests<'a>(
        &self,
        group: &'a [(ObjectId, ObjectRecord)],
        infos: &[ObjInfo],
        ps: &mut Vec<Problem>,
    ) -> Vec<(ManifestRow<'a>, Option<SignedResult<Manifest>>)> {
        let mut pending = Vec::new();
        let mut results: Vec<Option<SignedResult<Manifest>>> = Vec::new();
        let mut batch = Vec::new();
        for (idx, (id, rec)) in group.iter().enumerate() {
            let info = &infos[idx];
            let checked = self.record_checked(rec);
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
            pending.push((idx, &rec.state, rec, checked));
        }
        let batched = verify_slots(batch, |_, author| self.is_full(author));
        for (r, v) in results.iter_mut().zip(batched) {
            if v.is_some() {
                *r = v;
            }
        }
        pending.into_iter().zip(results).collect()
    }

    /// Step 2 of [`Store::check_group`]: each verified manifest matched
    /// with its record, its chunks referenced, and this instance's entries
    /// found; the first candidate of each checked like the manifests (the
    /// MAC, or one batch run). Returns the rows and the batch's verdicts.
    fn group_entries(
        &self,
        manifests: Vec<(ManifestRow<'_>, Option<SignedResult<Manifest>>)>,
        infos: &[ObjInfo],
        ps: &mut Vec<Problem>,
        refs: &mut Vec<ChunkRef>,
    ) -> (Vec<EntryRow>, Vec<Option<SignedResult<EnvelopeEntry>>>) {
        let mut batch = Vec::new();
        let mut rows = Vec::new();
        for ((idx, st, rec, checked), r) in manifests {
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
            let (candidates, decode_err) = self.entry_candidates(rec);
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
        (rows, batched)
    }

    /// Step 3 of [`Store::check_group`]: each object needs one usable
    /// entry (right version, unwraps to the key its manifest commits to);
    /// the other candidates are tried, verified one by one, only when the
    /// first is not.
    fn usable_entries(
        &self,
        rows: Vec<EntryRow>,
        batched: Vec<Option<SignedResult<EnvelopeEntry>>>,
        infos: &[ObjInfo],
        ps: &mut Vec<Problem>,
    ) {
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
    }

    /// Step B of a verify: every object's record, manifest and envelope,
    /// in rounds of groups (the groups of a round checked in parallel, the
    /// signatures of each group in ed25519 batches). Returns the problems,
    /// the chunk references, the object count and the incomplete objects.
    #[allow(clippy::type_complexity)]
    pub(super) fn check_records(
        &self,
    ) -> Result<(Vec<Problem>, Vec<ChunkRef>, u64, HashSet<ObjectId>)> {
        let mut problems = Vec::new();
        let mut refs: Vec<ChunkRef> = Vec::new();
        let mut objects = 0u64;
        let mut incomplete: HashSet<ObjectId> = HashSet::new();
        // Each record read and decoded once, here: its state, manifest and
        // entries are all checked from what this read.
        let mut records = self.db().records();
        loop {
            let round: Vec<(ObjectId, ObjectRecord)> = records
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
                    .filter(|(_, rec)| !rec.state.complete && !rec.state.deleted)
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
}
