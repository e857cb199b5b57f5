//! Steps 1 to 3 of a restore: the trust it brings, the objects it
//! restores, the chunks it copies. Everything is read and checked here;
//! nothing is written.

use std::collections::HashSet;

use bbsync_protocol::{ChunkId, InstanceCard, InstanceId, Role, Signed};
use rayon::prelude::*;

use super::{AcceptedHost, RestoreOptions, RestoreReport, TrustTableFate, damaged};
use crate::{
    ObjectState, Store,
    backup::{Repo, RepoReader, SnapshotFile, check::check_manifests, repofile::SnapObject},
    error::Result,
};

/// One object to restore, fully checked.
pub(super) struct Planned {
    pub(super) manifest: Signed<bbsync_protocol::Manifest>,
    pub(super) envelope: Vec<Vec<u8>>,
    pub(super) previous: Option<ObjectState>,
}

/// What the checks of one snapshot object found (restore, step 2).
enum Looked {
    /// Its manifest file is damaged: (where, what).
    Damaged(String, String),
    /// Outside the selection.
    NotSelected,
    /// Refused: (label, why).
    Refused(String, String),
    /// The store has this version or a later one.
    Existing,
    /// To restore, once its name is free.
    Candidate {
        label: String,
        /// Envelope entries left out.
        dropped: usize,
        /// A key unwraps for this instance (or it is a deletion).
        has_key: bool,
        planned: Box<Planned>,
    },
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

    /// Step 2: every manifest of the snapshot, read and checked before
    /// anything is written; what is restored, in the snapshot's order. The
    /// per-object checks (the store's record, each envelope entry's
    /// signature, whether a key unwraps) run on all cores; what they decide
    /// is then applied in the snapshot's order, as one pass would.
    pub(super) fn plan_restore(
        &self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        snap: &SnapshotFile,
        opts: &RestoreOptions,
        full: &(dyn Fn(&InstanceId) -> bool + Sync),
        report: &mut RestoreReport,
    ) -> Result<Vec<Planned>> {
        let refs: Vec<&SnapObject> = snap.objects.iter().collect();
        let checked: Vec<_> = snap
            .objects
            .iter()
            .zip(check_manifests(reader, &refs))
            .collect();
        let looked: Vec<Looked> = checked
            .into_par_iter()
            .map(|(o, c)| match c {
                Ok(c) => self.look(c.manifest, &c.envelope, opts, full),
                Err((_, detail)) => Ok(Looked::Damaged(
                    reader.manifest_path(&o.manifest_id),
                    detail,
                )),
            })
            .collect::<Result<_>>()?;
        let mut plan: Vec<Planned> = Vec::new();
        let mut names = HashSet::new();
        for l in looked {
            match l {
                Looked::Damaged(path, detail) => return Err(damaged(repo, &path, &detail)),
                Looked::NotSelected => report.skipped_selection += 1,
                Looked::Refused(label, why) => report.refused.push((label, why)),
                Looked::Existing => report.skipped_existing += 1,
                Looked::Candidate {
                    label,
                    dropped,
                    has_key,
                    planned,
                } => {
                    if let Err(why) = self.name_free(&planned.manifest, &mut names) {
                        report.refused.push((label, why));
                        continue;
                    }
                    if dropped > 0 {
                        tracing::warn!(
                            "{label}: {dropped} envelope entries left out (their signatures do not verify, or their wrapper is not trusted)"
                        );
                        report.entries_dropped += dropped as u64;
                    }
                    if !has_key {
                        report.undecryptable.push(label);
                        continue;
                    }
                    plan.push(*planned);
                }
            }
        }
        report.undecryptable.sort();
        report.refused.sort();
        Ok(plan)
    }

    /// The checks of one snapshot object whose manifest verified (step 2).
    fn look(
        &self,
        m: Signed<bbsync_protocol::Manifest>,
        raw_envelope: &[Vec<u8>],
        opts: &RestoreOptions,
        full: &(dyn Fn(&InstanceId) -> bool + Sync),
    ) -> Result<Looked> {
        if !opts.selection.matches(&m.kind, &m.name) {
            return Ok(Looked::NotSelected);
        }
        let label = format!("{}:{}", m.kind, m.name);
        if !full(&m.author) {
            let why = format!(
                "written by instance {}, which this node does not trust",
                m.author.short()
            );
            return Ok(Looked::Refused(label, why));
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
        Ok(Looked::Candidate {
            label,
            dropped,
            has_key,
            planned: Box::new(Planned {
                manifest: m,
                envelope,
                previous,
            }),
        })
    }

    /// Step 3: the chunks the store lacks, each present in the repository
    /// at its size (`report.chunks_present` counts those it has).
    pub(super) fn chunks_to_copy(
        &self,
        repo: &Repo,
        reader: &RepoReader<'_>,
        plan: &[Planned],
        report: &mut RestoreReport,
    ) -> Result<Vec<(ChunkId, u32)>> {
        let mut needed: Vec<(ChunkId, u32)> = Vec::new();
        let mut seen = HashSet::new();
        for p in plan {
            if p.manifest.deleted {
                continue;
            }
            for c in &p.manifest.chunks {
                if !seen.insert(c.id) {
                    continue;
                }
                if self.packs().size(&c.id) == Some(u64::from(c.len)) {
                    report.chunks_present += 1;
                    continue;
                }
                let label = format!("{}:{}", p.manifest.kind, p.manifest.name);
                if let Err(detail) = reader.check_chunk(&c.id, c.len, &label)? {
                    return Err(damaged(repo, &reader.chunk_path(&c.id), &detail));
                }
                needed.push((c.id, c.len));
            }
        }
        Ok(needed)
    }
}
