//! The store operations backups need (store/src/backup/), as narrow public
//! methods: backup code reaches nothing crate-private (no `db` records,
//! no `ObjectWrite`, no `received_state`), so that `backup/` could become
//! a crate of its own on this API.

use std::collections::HashSet;

use bbsync_protocol::{
    ChunkId, ContentKey, EnvelopeEntry, InstanceCard, InstanceId, Manifest, ObjectId, Role, Signed,
    encoding,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub use crate::db::ObjectRecord;
use crate::{
    ObjectState, Store, TrustRecord,
    db::ObjectWrite,
    error::{Result, StoreError},
    spool::Spool,
};

/// One object a restore records (see [`Store::record_restored`]): its
/// manifest, verified and checked whole, with the envelope entries whose
/// signatures verified ([`Store::verified_envelope`]).
#[derive(Debug)]
pub struct RestoredObject {
    /// The verified manifest.
    pub manifest: Signed<Manifest>,
    /// The envelope entries kept (wire bytes); only these are MAC'd.
    pub envelope: Vec<Vec<u8>>,
    /// The object's state here before, if the store holds it
    /// ([`Store::object_state`]).
    pub previous: Option<ObjectState>,
}

/// What [`Store::record_restored`] wrote.
#[derive(Debug, Default)]
pub struct RestoredRecords {
    /// The objects recorded, in the order given.
    pub objects: Vec<ObjectId>,
    /// Of those, live objects still lacking chunks.
    pub incomplete: u64,
    /// Of those, replacing a version held here.
    pub replaced: u64,
}

/// Why [`Store::record_restored`] failed, and whether records may have
/// been written: chunks copied for them may be undone only `Before`.
#[derive(Debug)]
pub enum RecordError {
    /// Nothing of the objects was written (trust may have been).
    Before(StoreError),
    /// The records' commit had begun: some may be written (a flush that
    /// failed does not undo them).
    Writing(StoreError),
}

/// The records a restore will write, spooled under `<data>/tmp/` as its
/// objects are checked (memory does not grow with them), committed in key
/// order by [`Store::record_restored`] once the chunks are copied; removed
/// when dropped.
pub struct RestoreRecords {
    spool: Spool<PendingRecord>,
    /// Some record replaces a version held here.
    replaces: bool,
}

impl RestoreRecords {
    /// Adds a record under `key`.
    pub fn push(&mut self, key: u64, r: PreparedRecord) -> Result<()> {
        self.replaces |= r.replaces;
        let mut k = [0u8; 16];
        k[8..].copy_from_slice(&key.to_be_bytes());
        self.spool.push_encoded(k, r.bytes)
    }

    /// Leaves out the records pushed under `keys`.
    pub fn forget(&mut self, keys: &HashSet<u64>) {
        self.spool.retain(|k| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[8..]);
            !keys.contains(&u64::from_be_bytes(b))
        });
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.spool.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.spool.len() == 0
    }
}

/// One record of a restore, encoded ([`Store::restore_record`]).
pub struct PreparedRecord {
    bytes: Vec<u8>,
    replaces: bool,
}

/// What the spool of a restore holds per object: its write and its chunks
/// (the object is complete if the store holds them all at the commit).
#[derive(Serialize, Deserialize)]
struct PendingRecord {
    write: ObjectWrite,
    chunks: Vec<(ChunkId, u32)>,
}

/// Why an object may not take the name `kind:name`: another has it.
pub fn name_taken(kind: &str, name: &str) -> String {
    crate::sync::name_taken(kind, name)
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Before(e)
    }
}

impl Store {
    /// The change log's generation: its numbers (and a backup cache built
    /// on them) describe the records only while this token is the same (a
    /// record written without a change-log entry replaces it first).
    pub fn change_log_token(&self) -> Result<[u8; 16]> {
        self.db().unlogged_token()
    }

    /// The change-log entries after `since`, at most `limit`, as `(seq,
    /// object)`.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, ObjectId)>> {
        self.db().changes_since(since, limit)
    }

    /// Every object record as stored (state, manifest and envelope bytes,
    /// as this instance verified or wrote them), in object-id order. A
    /// backup copies these bytes; whoever reads them back checks them again.
    pub fn stored_records(&self) -> impl Iterator<Item = Result<(ObjectId, ObjectRecord)>> + '_ {
        self.db().records()
    }

    /// One object's record as stored (see [`Store::stored_records`]).
    pub fn stored_record(&self, id: &ObjectId) -> Result<Option<ObjectRecord>> {
        self.db().record(id)
    }

    /// The trust table as stored (each card's bytes, the role), for a
    /// snapshot's copy of it.
    pub fn trust_records(&self) -> Result<Vec<(InstanceId, TrustRecord)>> {
        self.db().trusted()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.db().has_no_objects()
    }

    /// Whether this store trusts no instance (a restore brings its own
    /// snapshot's trust table only into such a store).
    pub fn trust_table_is_empty(&self) -> Result<bool> {
        Ok(self.db().trusted()?.is_empty())
    }

    /// The object's state here, if the store holds it.
    pub fn object_state(&self, id: &ObjectId) -> Result<Option<ObjectState>> {
        self.db().object(id)
    }

    /// The envelope entries of a manifest read from a backup that may be
    /// kept: each whose signature checks, whose wrapper is the author,
    /// this instance or `trusted`, and that is for this object version.
    /// Returns their bytes, the verified entries (in the same order) and
    /// how many were dropped.
    pub fn verified_envelope(
        &self,
        m: &Manifest,
        raw: &[Vec<u8>],
        trusted: &dyn Fn(&InstanceId) -> bool,
    ) -> (Vec<Vec<u8>>, Vec<Signed<EnvelopeEntry>>, usize) {
        self.verified_entry_values(m, raw, trusted)
    }

    /// The content key of a verified entry: it must be this instance's,
    /// for `m`'s object version, unwrap, and match `m`'s key commitment.
    pub fn entry_key(&self, m: &Manifest, e: Signed<EnvelopeEntry>) -> Result<ContentKey> {
        self.usable_entry(m, e).map(|(_, k)| k)
    }

    /// Why `m` may not take its name here: another live object of this
    /// store holds it (`Ok` for a deletion or a free name).
    pub fn name_held(&self, m: &Manifest) -> std::result::Result<(), String> {
        self.name_held_here(m)
    }

    /// A restore's records, spooled until they are committed
    /// ([`Store::record_restored`]).
    pub fn restore_records(&self) -> RestoreRecords {
        RestoreRecords {
            spool: Spool::new(&self.dir().join(crate::TMP_DIR)),
            replaces: false,
        }
    }

    /// The record of one object a restore checked, ready to spool (its
    /// state MAC'd here, on the caller's thread, so that many are prepared
    /// at once).
    pub fn restore_record(&self, o: RestoredObject) -> PreparedRecord {
        let m = &o.manifest;
        // (Complete or not is decided at the commit, once the chunks are
        // copied.)
        let state = self.received_state(m, false, &o.envelope);
        let replaces = o.previous.is_some();
        let pending = PendingRecord {
            chunks: m.chunks.iter().map(|c| (c.id, c.len)).collect(),
            write: ObjectWrite {
                object_id: m.object_id,
                state,
                manifest: m.bytes().to_vec(),
                envelope: o.envelope.into_iter().map(ByteBuf::from).collect(),
                previous: o.previous,
            },
        };
        PreparedRecord {
            bytes: encoding::encode(&pending),
            replaces,
        }
    }

    /// Records what a restore checked, under the store's write lock: the
    /// `trust` first, then every object in one commit (each complete when
    /// the store holds all its chunks at their sizes). When a replaced
    /// version leaves chunks behind, the next open is told to collect
    /// them. The caller records its copied chunks only after this returns.
    pub fn record_restored(
        &self,
        trust: &[(Signed<InstanceCard>, Role)],
        records: RestoreRecords,
    ) -> std::result::Result<RestoredRecords, RecordError> {
        let _g = self.lock();
        for (card, role) in trust {
            self.db().put_trust(
                &card.instance,
                &TrustRecord {
                    role: *role,
                    card: card.bytes().to_vec(),
                    added_at_ms: bbsync_protocol::now_ms(),
                },
            )?;
        }
        let RestoreRecords { spool, replaces } = records;
        if replaces {
            self.packs().expect_garbage()?;
        }
        let mut out = RestoredRecords {
            objects: Vec::with_capacity(spool.len()),
            ..Default::default()
        };
        let written = if spool.len() == 0 {
            self.db().flush()
        } else {
            let writes = spool.drain_sorted().map(|r| {
                let PendingRecord { mut write, chunks } = r?;
                let deleted = write.state.deleted;
                let complete = chunks
                    .iter()
                    .all(|(id, len)| self.packs().size(id) == Some(u64::from(*len)));
                out.incomplete += u64::from(!complete && !deleted);
                out.replaced += u64::from(write.previous.is_some());
                write.state.complete = complete || deleted;
                out.objects.push(write.object_id);
                Ok(write)
            });
            self.db().commit_from(writes).map(|_| ())
        };
        written.map_err(RecordError::Writing)?;
        Ok(out)
    }
}
