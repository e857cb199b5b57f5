//! `rekey`: bring every envelope in line with the trust table.
//!
//! For each object this instance can open, an entry is added for every
//! trusted `full` instance that lacks one and the entries of instances no
//! longer trusted are dropped. Only the envelope changes (the manifest, its
//! version and the chunks stay), so a second run changes nothing.
//!
//! Dropping an entry does not take back what its instance already holds:
//! it keeps the content key of the versions it could read. `--rotate`
//! therefore gives those objects a fresh content key instead: their content
//! is sealed again under the new key as a new version (new chunks, new
//! manifest, an envelope for the current trusted set), so no future version
//! is readable with the old key; the report lists what the removed
//! instances could still read from before (each object up to the version
//! they had an entry for).

use std::collections::{BTreeSet, HashSet};

use bbsync_protocol::{EnvelopeEntry, InstanceId, ObjectId, Unverified, WrapSession};
use serde::Serialize;

use crate::{
    Store, bbs,
    error::{Context, Result},
    progress::Progress,
};

/// What `rekey` changed (or, with `dry_run`, would change).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RekeyReport {
    /// Only reported, nothing written.
    pub dry_run: bool,
    /// Live objects looked at.
    pub objects: u64,
    /// Objects whose envelope changed.
    pub changed: Vec<EnvelopeChange>,
    /// Entries added, in all.
    pub entries_added: u64,
    /// Entries dropped, in all.
    pub entries_dropped: u64,
    /// Objects given a fresh content key (`--rotate`): `kind:name` and the
    /// new version.
    pub rotated: Vec<(String, u64)>,
    /// What instances no longer trusted could still read from before:
    /// `kind:name`, the last version they had an entry for, and who.
    pub exposed: Vec<Exposed>,
    /// Objects this instance cannot open (no entry for it): left as they are.
    pub unreadable: Vec<String>,
}

/// One object's envelope change.
#[derive(Debug, Clone, Serialize)]
pub struct EnvelopeChange {
    /// `kind:name`.
    pub object: String,
    /// Instances that get an entry (short ids).
    pub added: Vec<String>,
    /// Instances whose entry goes (short ids).
    pub dropped: Vec<String>,
}

/// An object an untrusted instance could read.
#[derive(Debug, Clone, Serialize)]
pub struct Exposed {
    /// `kind:name`.
    pub object: String,
    /// Up to this version.
    pub up_to_version: u64,
    /// The instances (short ids).
    pub readers: Vec<String>,
}

/// How [`Store::rekey`] runs; the default applies the changes and keeps
/// each object's content key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyOptions {
    /// Report what would change, write nothing.
    pub dry_run: bool,
    /// Give each object a new content key (re-encrypting its chunks), so
    /// that an instance dropped from the envelopes cannot read what comes
    /// next even with the old key.
    pub rotate: bool,
}

impl Store {
    /// Rekeys `only` (all live objects when empty); see the module docs.
    pub fn rekey(
        &self,
        only: &[ObjectId],
        opts: RekeyOptions,
        progress: &dyn Progress,
    ) -> Result<RekeyReport> {
        let RekeyOptions { dry_run, rotate } = opts;
        let mut report = RekeyReport {
            dry_run,
            ..Default::default()
        };
        let recipients = self.recipients()?;
        let session = WrapSession::new(self.identity());
        let ids: Vec<ObjectId> = if only.is_empty() {
            self.db()
                .objects()
                .map(|r| r.map(|(id, _)| id))
                .collect::<Result<_>>()?
        } else {
            only.to_vec()
        };
        let mut to_rotate = Vec::new();
        {
            let _g = self.lock();
            for id in &ids {
                let Some(rec) = self.db().record(id)? else {
                    continue;
                };
                if rec.state.deleted || !rec.state.complete {
                    continue;
                }
                report.objects += 1;
                let label = format!("{}:{}", rec.state.kind, rec.state.name);
                let l = self.loaded(rec);
                let m = self.manifest_in(id, &l)?;
                let key = match self.key_in(&m, &l) {
                    Ok((_, k)) => k,
                    Err(_) => {
                        report.unreadable.push(label);
                        continue;
                    }
                };
                let mut rec = l.rec;
                // An excluded owner's object is for this instance only.
                let recipients = self.recipients_for(&recipients, rec.state.owner.as_deref());
                let wanted: BTreeSet<InstanceId> = recipients.iter().map(|(i, _)| *i).collect();
                // Only entries whose signatures verify are kept (and then
                // MAC'd): the others go, whoever they claim to be for.
                let raw: Vec<Vec<u8>> = rec.envelope.iter().map(|e| e.to_vec()).collect();
                let (verified, forged) = self.verified_entries(&m, &raw, &|w| self.is_full(w));
                if forged > 0 {
                    tracing::warn!(
                        "rekey: {label}: dropped {forged} envelope entries whose signatures do not verify"
                    );
                }
                report.entries_dropped += forged as u64;
                // Who holds an entry now.
                let mut keep = Vec::new();
                let mut have = BTreeSet::new();
                let mut dropped = BTreeSet::new();
                for raw in verified {
                    match Unverified::<EnvelopeEntry>::decode(&raw) {
                        Ok(u) if wanted.contains(&u.claimed().recipient) => {
                            have.insert(u.claimed().recipient);
                            keep.push(raw);
                        }
                        Ok(u) => {
                            dropped.insert(u.claimed().recipient);
                        }
                        Err(_) => {}
                    }
                }
                if !dropped.is_empty() {
                    report.exposed.push(Exposed {
                        object: label.clone(),
                        up_to_version: m.version,
                        readers: dropped.iter().map(|i| i.short()).collect(),
                    });
                    if rotate {
                        to_rotate.push((*id, label, rec.state.owner.clone()));
                        continue;
                    }
                }
                let missing: Vec<(InstanceId, [u8; 32])> = recipients
                    .iter()
                    .filter(|(i, _)| !have.contains(i))
                    .copied()
                    .collect();
                if missing.is_empty() && dropped.is_empty() {
                    if forged > 0 && !dry_run {
                        rec.envelope = keep.into_iter().map(serde_bytes::ByteBuf::from).collect();
                        rec.state.checked_mac = Some(self.record_mac(&rec.manifest, &rec.envelope));
                        self.db().put_record(id, &rec)?;
                    }
                    continue;
                }
                report.entries_added += missing.len() as u64;
                report.entries_dropped += dropped.len() as u64;
                report.changed.push(EnvelopeChange {
                    object: label,
                    added: missing.iter().map(|(i, _)| i.short()).collect(),
                    dropped: dropped.iter().map(|i| i.short()).collect(),
                });
                if dry_run {
                    continue;
                }
                keep.extend(self.wrap_for(&session, &missing, *id, m.version, &key)?);
                rec.envelope = keep.into_iter().map(serde_bytes::ByteBuf::from).collect();
                rec.state.checked_mac = Some(self.record_mac(&rec.manifest, &rec.envelope));
                self.db().put_record(id, &rec)?;
            }
            self.db().flush()?;
        }
        if rotate && !to_rotate.is_empty() {
            if dry_run {
                report.rotated = to_rotate
                    .iter()
                    .map(|(id, label, _)| {
                        let v = self.db().object(id).ok().flatten().map_or(0, |s| s.version);
                        (label.clone(), v + 1)
                    })
                    .collect();
            } else {
                report.rotated = self.rotate(&to_rotate, progress)?;
            }
        }
        Ok(report)
    }

    /// Seals the content of each object again under a fresh key, as a new
    /// version: written out to a private temp dir, then imported with the
    /// rotation flag (so unchanged content still gets the new key).
    fn rotate(
        &self,
        objects: &[(ObjectId, String, Option<String>)],
        progress: &dyn Progress,
    ) -> Result<Vec<(String, u64)>> {
        let tmp = self
            .dir()
            .join("tmp")
            .join(format!("rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let result = (|| {
            let mut sources = Vec::new();
            let mut set = HashSet::new();
            for (i, (id, _, owner)) in objects.iter().enumerate() {
                let st = self
                    .db()
                    .object(id)?
                    .ok_or_else(|| crate::StoreError::UnknownObject(id.to_hex()))?;
                let path = tmp.join(i.to_string());
                self.export_object(id, &path)?;
                sources.push(bbs::source_for_path(
                    &path,
                    &st.kind,
                    &st.name,
                    owner.clone(),
                )?);
                set.insert(*id);
            }
            self.run_import(sources, false, &set, progress)?;
            objects
                .iter()
                .map(|(id, label, _)| {
                    let v = self.db().object(id)?.map_or(0, |s| s.version);
                    Ok((label.clone(), v))
                })
                .collect()
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }
}
