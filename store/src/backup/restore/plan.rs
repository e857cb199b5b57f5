//! Steps 1 to 3 of a restore: the trust it brings, the objects it
//! restores, the chunks it copies. Everything is read and checked here;
//! nothing is written but the spool of the records to commit (under
//! `<data>/tmp/`, removed when the restore ends).
//!
//! Memory does not grow with the objects' manifests: they are checked in
//! groups, in the order of their places in the repository's packs, and
//! what a restore will write goes to a spool ([`RestoreRecords`]) as soon
//! as it is checked. What stays per object is its [`Candidate`] (about 70
//! bytes) and its chunks' ids, until the chunks to copy are known.

use std::collections::HashSet;

use bbsync_protocol::{ChunkId, InstanceCard, InstanceId, Role, Signed};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{AcceptedHost, RestoreOptions, RestoreReport, TrustTableFate, damaged};
use crate::{
    Store,
    backup::{
        Repo, RepoReader, SnapshotFile,
        check::{check_manifests, check_manifests_grouped},
        repofile::SnapObject,
    },
    backup_api::{PreparedRecord, RestoreRecords, RestoredObject, name_taken},
    error::Result,
};

/// What step 2 decided: the records to commit (spooled, in the snapshot's
/// order) and what step 3 needs.
pub(super) struct Plan {
    /// The records, committed once the chunks are copied.
    pub(super) records: RestoreRecords,
    /// Every chunk of the planned objects, once (what the pins name).
    pub(super) chunks: Vec<ChunkId>,
    /// The chunks the store lacks, each present in the repository at its
    /// size (empty with `--skip-chunks`).
    pub(super) needed: Vec<(ChunkId, u32)>,
}

/// One snapshot object that verified, is selected, is written by an
/// accepted author and is newer than the store's: restored unless its name
/// is taken or no key of this instance's opens it.
struct Candidate {
    /// Its place in the snapshot.
    index: u32,
    /// A digest of its kind and name; `None` for a deletion (which takes no
    /// name).
    name: Option<[u8; 32]>,
    /// Another object of the snapshot, earlier in it, takes the same name.
    second: bool,
    /// Envelope entries left out.
    dropped: u32,
    /// A key unwraps for this instance (or it is a deletion).
    has_key: bool,
    /// Its chunks: `[start, end)` in [`Checked::chunks`].
    chunks: (u32, u32),
    /// What is reported of it, rarely needed (kept apart to keep a
    /// candidate small).
    rare: Option<Box<Rare>>,
}

/// What a candidate's report may need.
struct Rare {
    /// `kind:name`.
    label: String,
    /// Why its name is not free here (another live object holds it).
    held: Option<String>,
    /// The first of its chunks the repository lacks or holds damaged:
    /// (where, what).
    damage: Option<(String, String)>,
}

/// What one snapshot object's checks found.
enum Looked {
    /// Its manifest file is damaged: (where, what).
    Damaged(String, String),
    /// Outside the selection.
    NotSelected,
    /// Refused: (label, why).
    Refused(String, String),
    /// The store has this version or a later one.
    Existing,
    /// Possibly restored; the record to write if it is (`None`: it would
    /// not be, whatever its name: no key, or its name is held here) and its
    /// chunks (id, length, whether the store holds it).
    Candidate(Candidate, Option<PreparedRecord>, Vec<(ChunkId, u32, bool)>),
}

/// What the checks of every snapshot object found (step 2, first pass).
#[derive(Default)]
struct Checked {
    candidates: Vec<Candidate>,
    chunks: Vec<(ChunkId, u32, bool)>,
    /// The first damaged manifest in the snapshot's order: (index, where,
    /// what).
    damaged: Option<(u32, String, String)>,
}

/// The trust a restore adds (step 1): the host named by `--trust-host`,
/// or the trust table of this instance's own snapshot restored into an
/// empty one; and the instances whose signatures it accepts meanwhile.
pub(super) struct NewTrust {
    /// Cards to trust, with their roles (written with the records).
    pub(super) cards: Vec<(Signed<InstanceCard>, Role)>,
    /// This instance, the snapshot's host and the `full` cards above (the
    /// store's own `full` instances are asked separately).
    pub(super) accepted: HashSet<InstanceId>,
}

/// The digest a name is compared by (kind and name, length-prefixed).
fn name_digest(kind: &str, name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    h.update(name.as_bytes());
    h.finalize().into()
}

impl Store {
    /// Step 1: what the snapshot's host brings (a `--trust-host` card, its
    /// own trust table); says in `report.trust_table` what happened to it.
    pub(super) fn restore_trust(
        &self,
        snap: &SnapshotFile,
        host: &AcceptedHost,
        report: &mut RestoreReport,
    ) -> Result<NewTrust> {
        let me = self.instance_id();
        let mut cards: Vec<(Signed<InstanceCard>, Role)> = Vec::new();
        if host.to_trust {
            cards.push((host.card.clone(), Role::Full));
        }
        match &host.own_table {
            Some(table) if self.trust_table_is_empty()? => {
                report.trust_table = TrustTableFate::Restored;
                for (card, role) in table {
                    if card.instance != me {
                        cards.push((card.clone(), *role));
                    }
                }
            }
            Some(table) if !table.is_empty() => report.trust_table = TrustTableFate::KeptOwn,
            Some(_) => report.trust_table = TrustTableFate::Empty,
            None if snap.trust.is_empty() => report.trust_table = TrustTableFate::Empty,
            None => report.trust_table = TrustTableFate::OtherHost,
        }
        let mut accepted: HashSet<InstanceId> = cards
            .iter()
            .filter(|(_, r)| *r == Role::Full)
            .map(|(c, _)| c.instance)
            .collect();
        accepted.insert(me);
        accepted.insert(host.card.instance);
        Ok(NewTrust { cards, accepted })
    }

    /// Steps 2 and 3: every manifest of the snapshot, read and checked
    /// before anything is written; what is restored (its records spooled,
    /// to be committed in the snapshot's order) and the chunks the store
    /// lacks, each present in the repository at its size
    /// (`report.chunks_present` counts those it has). The per-object checks
    /// (the store's record, each envelope entry's signature, whether a key
    /// unwraps, the chunks) run on all cores; what they decide is then
    /// applied in the snapshot's order, as one pass would.
    pub(super) fn plan_restore(
        &self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        snap: &SnapshotFile,
        opts: &RestoreOptions,
        full: &(dyn Fn(&InstanceId) -> bool + Sync),
        report: &mut RestoreReport,
    ) -> Result<Plan> {
        let mut records = self.restore_records();
        let Checked {
            mut candidates,
            chunks,
            damaged: damage,
        } = self.check_objects(reader, snap, opts, full, &mut records, report)?;
        if let Some((_, path, detail)) = damage {
            return Err(damaged(repo, &path, &detail));
        }
        // Of the objects of the snapshot that take one name, the first
        // takes it; the others are refused.
        candidates.par_sort_unstable_by_key(|c| (c.name, c.index));
        for i in 1..candidates.len() {
            if candidates[i].name.is_some() && candidates[i].name == candidates[i - 1].name {
                candidates[i].second = true;
            }
        }
        candidates.par_sort_unstable_by_key(|c| c.index);
        let mut plan = Plan {
            records,
            chunks: Vec::new(),
            needed: Vec::new(),
        };
        let mut seconds: Vec<u32> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for c in &candidates {
            if c.second {
                seconds.push(c.index);
                continue;
            }
            let rare = c.rare.as_deref();
            let label = || rare.map_or_else(String::new, |r| r.label.clone());
            if let Some(why) = rare.and_then(|r| r.held.clone()) {
                report.refused.push((label(), why));
                continue;
            }
            if c.dropped > 0 {
                tracing::warn!(
                    "{}: {} envelope entries left out (their signatures do not verify, or their wrapper is not trusted)",
                    label(),
                    c.dropped
                );
                report.entries_dropped += u64::from(c.dropped);
            }
            if !c.has_key {
                report.undecryptable.push(label());
                continue;
            }
            if let Some((path, detail)) = rare.and_then(|r| r.damage.as_ref()) {
                return Err(damaged(repo, path, detail));
            }
            for (id, len, present) in &chunks[c.chunks.0 as usize..c.chunks.1 as usize] {
                if seen.insert(*id) {
                    plan.chunks.push(*id);
                    if *present {
                        report.chunks_present += 1;
                    } else {
                        plan.needed.push((*id, *len));
                    }
                }
            }
        }
        if !seconds.is_empty() {
            self.refuse_seconds(repo, reader, snap, &seconds, &mut plan.records, report)?;
        }
        report.undecryptable.sort();
        report.refused.sort();
        Ok(plan)
    }

    /// Step 2, first pass: every object of the snapshot checked, in groups
    /// in the order of the manifests' places in the packs (each part of a
    /// manifest pack read once); the records of those that may be restored
    /// spooled into `records`.
    fn check_objects(
        &self,
        reader: &RepoReader<'_>,
        snap: &SnapshotFile,
        opts: &RestoreOptions,
        full: &(dyn Fn(&InstanceId) -> bool + Sync),
        records: &mut RestoreRecords,
        report: &mut RestoreReport,
    ) -> Result<Checked> {
        let mut out = Checked::default();
        check_manifests_grouped(reader, &snap.objects, |group, checked| {
            let looked: Vec<Looked> = group
                .par_iter()
                .zip(checked)
                .map(|(&i, c)| match c {
                    Ok(c) => self.look(c.manifest, &c.envelope, opts, full, reader),
                    Err((_, detail)) => Ok(Looked::Damaged(
                        reader.manifest_path(&snap.objects[i as usize].manifest_id),
                        detail,
                    )),
                })
                .collect::<Result<_>>()?;
            for (&i, l) in group.iter().zip(looked) {
                match l {
                    Looked::Damaged(path, detail) => {
                        if out.damaged.as_ref().is_none_or(|d| i < d.0) {
                            out.damaged = Some((i, path, detail));
                        }
                    }
                    Looked::NotSelected => report.skipped_selection += 1,
                    Looked::Refused(label, why) => report.refused.push((label, why)),
                    Looked::Existing => report.skipped_existing += 1,
                    // (Nothing is restored once a manifest is damaged.)
                    Looked::Candidate(..) if out.damaged.is_some() => {}
                    Looked::Candidate(mut c, record, chunks) => {
                        c.index = i;
                        let start = out.chunks.len() as u32;
                        out.chunks.extend(chunks);
                        c.chunks = (start, out.chunks.len() as u32);
                        if let Some(r) = record {
                            records.push(u64::from(i), r)?;
                        }
                        out.candidates.push(c);
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The checks of one snapshot object whose manifest verified (step 2).
    fn look(
        &self,
        m: Signed<bbsync_protocol::Manifest>,
        raw_envelope: &[Vec<u8>],
        opts: &RestoreOptions,
        full: &(dyn Fn(&InstanceId) -> bool + Sync),
        reader: &RepoReader<'_>,
    ) -> Result<Looked> {
        if !opts.selection.matches(&m.kind, &m.name) {
            return Ok(Looked::NotSelected);
        }
        let label = || format!("{}:{}", m.kind, m.name);
        if !full(&m.author) {
            let why = format!(
                "written by instance {}, which this node does not trust",
                m.author.short()
            );
            return Ok(Looked::Refused(label(), why));
        }
        let previous = self.object_state(&m.object_id)?;
        if let Some(p) = &previous
            && !opts.overwrite
            && p.version >= m.version
        {
            return Ok(Looked::Existing);
        }
        // Only entries whose signatures verify are kept (and MAC'd).
        let (envelope, values, dropped) = self.verified_envelope(&m, raw_envelope, full);
        // A key of this instance's that unwraps and matches (what `key_of`
        // looks for, on entries verified just above).
        let me = self.instance_id();
        let has_key = m.deleted
            || values
                .into_iter()
                .filter(|e| e.recipient == me)
                .any(|e| self.entry_key(&m, e).is_ok());
        let held = self.name_held(&m).err();
        let restorable = has_key && held.is_none();
        // Its chunks: held here, or present in the repository at their
        // sizes (the first that is not is kept, reported if it is restored).
        let mut chunks = Vec::new();
        let mut damage = None;
        if restorable && !m.deleted && !opts.skip_chunks {
            chunks.reserve(m.chunks.len());
            for c in &m.chunks {
                let present = self.packs().size(&c.id) == Some(u64::from(c.len));
                if !present
                    && damage.is_none()
                    && let Err(detail) = reader.check_chunk(&c.id, c.len, &label())?
                {
                    damage = Some((reader.chunk_path(&c.id), detail));
                }
                chunks.push((c.id, c.len, present));
            }
        }
        let rare = (!restorable || dropped > 0 || damage.is_some()).then(|| {
            Box::new(Rare {
                label: label(),
                held,
                damage,
            })
        });
        let candidate = Candidate {
            index: 0,
            name: (!m.deleted).then(|| name_digest(&m.kind, &m.name)),
            second: false,
            dropped: dropped as u32,
            has_key,
            chunks: (0, 0),
            rare,
        };
        let record = restorable.then(|| {
            self.restore_record(RestoredObject {
                manifest: m,
                envelope,
                previous,
            })
        });
        Ok(Looked::Candidate(candidate, record, chunks))
    }

    /// The objects refused because an earlier object of the snapshot takes
    /// their name (rare: a store's live objects have names of their own):
    /// left out of `records`, and reported, their manifests read again.
    fn refuse_seconds(
        &self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        snap: &SnapshotFile,
        seconds: &[u32],
        records: &mut RestoreRecords,
        report: &mut RestoreReport,
    ) -> Result<()> {
        records.forget(&seconds.iter().map(|&i| u64::from(i)).collect());
        let seconds: Vec<&SnapObject> =
            seconds.iter().map(|&i| &snap.objects[i as usize]).collect();
        for (o, c) in seconds.iter().zip(check_manifests(reader, &seconds)) {
            match c {
                Ok(c) => {
                    let m = &c.manifest;
                    report.refused.push((
                        format!("{}:{}", m.kind, m.name),
                        name_taken(&m.kind, &m.name),
                    ));
                }
                Err((_, detail)) => {
                    return Err(damaged(
                        repo,
                        &reader.manifest_path(&o.manifest_id),
                        &detail,
                    ));
                }
            }
        }
        Ok(())
    }
}
