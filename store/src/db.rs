//! The metadata database. This is the only module that touches sled.
//!
//! One sled tree holds every record under a short prefix, so that a
//! multi-record change is one atomic `apply_batch`:
//!
//! | key                          | value                                                        |
//! |------------------------------|--------------------------------------------------------------|
//! | `meta/schema_version`        | u32 big-endian                                               |
//! | `meta/next_seq`              | u64 big-endian: next change-log number                       |
//! | `meta/gc_pending`            | present while replaced versions' chunks may be uncollected   |
//! | `o/` object_id               | postcard [`ObjectRecord`]: state, latest manifest, envelope  |
//! | `n/` kind `\0` name          | object_id                                                    |
//! | `c/` seq (u64 BE)            | object_id                                                    |
//! | `t/` instance_id             | postcard [`TrustRecord`]                                     |
//! | `u/` instance_id             | u64 big-endian: change-log cursor of a followed upstream     |
//!
//! One record per object (rather than one key each for state, manifest and
//! envelope) halves sled's memory and write cost on large imports.

use std::path::Path;

use bbsync_protocol::{InstanceId, ManifestId, ObjectId, Role, encoding};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Result, StoreError};

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Objects per atomic database batch in [`Db::commit`].
pub const COMMIT_BATCH: usize = 1024;

const K_SCHEMA: &[u8] = b"meta/schema_version";
const K_NEXT_SEQ: &[u8] = b"meta/next_seq";
const K_GC_PENDING: &[u8] = b"meta/gc_pending";
const MAX_RECORD: usize = 48 * 1024 * 1024;

/// What the store knows about the latest version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Latest version held.
    pub version: u64,
    /// Its manifest id.
    pub manifest_id: ManifestId,
    /// Change-log number of the change that brought this version.
    pub seq: u64,
    /// All chunks are on disk.
    pub complete: bool,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: Option<String>,
    /// Tombstone.
    pub deleted: bool,
    /// Plaintext length.
    pub plaintext_len: u64,
    /// Sum of stored chunk lengths.
    pub stored_len: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// Keyed fingerprint of the plaintext (local only), for unchanged-content detection.
    pub fingerprint: Option<[u8; 32]>,
    /// Digest of the source's file metadata at import (local only).
    pub stat_digest: Option<[u8; 32]>,
    /// Keyed MAC of the manifest and envelope bytes as this instance
    /// verified or wrote them (local only, see `Store::record_mac`).
    pub checked_mac: Option<[u8; 32]>,
}

/// Everything the store holds about one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's state.
    pub state: ObjectState,
    /// Wire bytes of the latest signed manifest.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// Wire bytes of the envelope entries of the latest version.
    pub envelope: Vec<ByteBuf>,
}

/// A trusted instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecord {
    /// Its role.
    pub role: Role,
    /// Its signed card bytes.
    pub card: Vec<u8>,
    /// When it was added (ms since the epoch).
    pub added_at_ms: u64,
}

/// One object's new records, applied atomically with others in a batch.
#[derive(Debug, Clone)]
pub struct ObjectWrite {
    /// The object.
    pub object_id: ObjectId,
    /// New state (its `seq` is assigned by [`Db::commit`]).
    pub state: ObjectState,
    /// Signed manifest wire bytes.
    pub manifest: Vec<u8>,
    /// Envelope entries (wire bytes).
    pub envelope: Vec<Vec<u8>>,
    /// The previous state, if any (to drop its change-log and name entries).
    pub previous: Option<ObjectState>,
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Passes a failpoint (see `failpoint.rs`); an injected error comes back as
/// sled's own I/O error would.
fn failpoint(name: &'static str) -> Result<()> {
    crate::failpoint::hit(name).map_err(|e| db_err(sled::Error::Io(e)))
}

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id);
    k
}

fn name_key(kind: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + kind.len() + 1 + name.len());
    k.extend_from_slice(b"n/");
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode_record(bytes: &[u8]) -> Result<ObjectRecord> {
    encoding::decode("object record", bytes, MAX_RECORD)
        .map_err(|e| StoreError::Corrupt(format!("object record: {e}")))
}

fn oid_from(bytes: &[u8]) -> Result<ObjectId> {
    ObjectId::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("object id: {e}")))
}

/// The fixed-size big-endian bytes of an integer record.
fn be_bytes<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N]> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} record")))
}

fn u64_of(v: &[u8], what: &str) -> Result<u64> {
    Ok(u64::from_be_bytes(be_bytes(v, what)?))
}

fn u32_of(v: &[u8], what: &str) -> Result<u32> {
    Ok(u32::from_be_bytes(be_bytes(v, what)?))
}

/// The sled database of a store.
pub struct Db {
    db: sled::Db,
    tree: sled::Tree,
    /// Wakes those waiting for a new change-log entry (long-poll
    /// subscriptions of followers).
    changed: (std::sync::Mutex<()>, std::sync::Condvar),
}

impl Db {
    /// Opens (or, with `create`, creates) the database at `path`, checking its schema.
    pub fn open(path: &Path, data_dir: &Path, create: bool) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::InUse(data_dir.to_path_buf())
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::InUse(data_dir.to_path_buf())
                }
                other => db_err(other),
            })?;
        let tree = db.open_tree("bbsync").map_err(db_err)?;
        match tree.get(K_SCHEMA).map_err(db_err)? {
            Some(v) => {
                let found = u32_of(&v, "schema_version")?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            None if create => {
                tree.insert(K_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(db_err)?;
                tree.insert(K_NEXT_SEQ, &1u64.to_be_bytes())
                    .map_err(db_err)?;
                db.flush().map_err(db_err)?;
            }
            None => return Err(StoreError::Corrupt("database has no schema_version".into())),
        }
        Ok(Db {
            db,
            tree,
            changed: Default::default(),
        })
    }

    /// Wakes every [`Db::wait_for_change`] (after a commit, or when trust
    /// changed and waiting subscriptions must re-check it).
    pub fn notify_changed(&self) {
        let _g = self
            .changed
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.changed.1.notify_all();
    }

    /// Waits until the change log goes past `since`, or `timeout`, or a
    /// [`Db::notify_changed`]; returns the last change-log number.
    pub fn wait_for_change(&self, since: u64, timeout: std::time::Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self
            .changed
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let last = self.last_seq()?;
            let now = std::time::Instant::now();
            if last > since || now >= deadline {
                return Ok(last);
            }
            let (g2, res) = self
                .changed
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            g = g2;
            if !res.timed_out() {
                // Woken: report even without a new entry (trust may have changed).
                return self.last_seq();
            }
        }
    }

    /// Marks objects complete, each under a new change-log number (so that
    /// those following this store see them once they can be served), in
    /// atomic batches, then flushes.
    pub fn mark_complete(&self, ids: &[ObjectId]) -> Result<()> {
        let mut seq = self.next_seq()?;
        for group in ids.chunks(COMMIT_BATCH) {
            let mut batch = sled::Batch::default();
            for id in group {
                let Some(mut rec) = self.record(id)? else {
                    continue;
                };
                batch.remove(key(b"c/", &rec.state.seq.to_be_bytes()));
                rec.state.complete = true;
                rec.state.seq = seq;
                batch.insert(key(b"c/", &seq.to_be_bytes()), id.as_bytes().as_slice());
                batch.insert(key(b"o/", id.as_bytes()), encoding::encode(&rec));
                seq += 1;
            }
            batch.insert(K_NEXT_SEQ, &seq.to_be_bytes());
            failpoint("db.mark_complete")?;
            self.tree.apply_batch(batch).map_err(db_err)?;
        }
        self.flush()?;
        self.notify_changed();
        Ok(())
    }

    /// The change-log cursor kept for an upstream this node follows.
    pub fn cursor(&self, upstream: &InstanceId) -> Result<Option<u64>> {
        self.tree
            .get(key(b"u/", upstream.as_bytes()))
            .map_err(db_err)?
            .map(|v| u64_of(&v, "cursor"))
            .transpose()
    }

    /// Every upstream cursor kept.
    pub fn cursors(&self) -> Result<Vec<(InstanceId, u64)>> {
        self.tree
            .scan_prefix(b"u/")
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                let id = InstanceId::from_slice(&k[2..])
                    .map_err(|e| StoreError::Corrupt(format!("cursor key: {e}")))?;
                Ok((id, u64_of(&v, "cursor")?))
            })
            .collect()
    }

    /// Records (durably) the cursor of an upstream.
    pub fn set_cursor(&self, upstream: &InstanceId, seq: u64) -> Result<()> {
        failpoint("db.set_cursor")?;
        self.tree
            .insert(key(b"u/", upstream.as_bytes()), &seq.to_be_bytes())
            .map_err(db_err)?;
        self.flush()
    }

    /// Sets the schema version (tests of the newer-schema refusal use this).
    pub fn set_schema_version(&self, v: u32) -> Result<()> {
        self.tree
            .insert(K_SCHEMA, &v.to_be_bytes())
            .map_err(db_err)?;
        self.flush()
    }

    /// The schema version recorded.
    pub fn schema_version(&self) -> Result<u32> {
        let v = self
            .tree
            .get(K_SCHEMA)
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Corrupt("no schema_version".into()))?;
        u32_of(&v, "schema_version")
    }

    /// Flushes to disk.
    pub fn flush(&self) -> Result<()> {
        failpoint("db.flush")?;
        self.db.flush().map_err(db_err)?;
        Ok(())
    }

    fn next_seq(&self) -> Result<u64> {
        let v = self
            .tree
            .get(K_NEXT_SEQ)
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Corrupt("no next_seq".into()))?;
        u64_of(&v, "next_seq")
    }

    /// The highest change-log number assigned so far (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        Ok(self.next_seq()?.saturating_sub(1))
    }

    /// The whole record of one object.
    pub fn record(&self, id: &ObjectId) -> Result<Option<ObjectRecord>> {
        self.tree
            .get(key(b"o/", id.as_bytes()))
            .map_err(db_err)?
            .map(|v| decode_record(&v))
            .transpose()
    }

    fn update_record(&self, id: &ObjectId, f: impl FnOnce(&mut ObjectRecord)) -> Result<()> {
        let mut rec = self
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        f(&mut rec);
        failpoint("db.update_record")?;
        self.tree
            .insert(key(b"o/", id.as_bytes()), encoding::encode(&rec))
            .map_err(db_err)?;
        Ok(())
    }

    /// Replaces an object's whole record (its change-log number stays).
    pub fn put_record(&self, id: &ObjectId, rec: &ObjectRecord) -> Result<()> {
        failpoint("db.update_record")?;
        self.tree
            .insert(key(b"o/", id.as_bytes()), encoding::encode(rec))
            .map_err(db_err)?;
        Ok(())
    }

    /// The state of one object.
    pub fn object(&self, id: &ObjectId) -> Result<Option<ObjectState>> {
        Ok(self.record(id)?.map(|r| r.state))
    }

    /// The object with this kind and name.
    pub fn lookup(&self, kind: &str, name: &str) -> Result<Option<ObjectId>> {
        self.tree
            .get(name_key(kind, name))
            .map_err(db_err)?
            .map(|v| oid_from(&v))
            .transpose()
    }

    /// Wire bytes of the latest manifest.
    pub fn manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>> {
        Ok(self.record(id)?.map(|r| r.manifest))
    }

    /// Wire bytes of the latest version's envelope entries.
    pub fn envelope(&self, id: &ObjectId) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .record(id)?
            .map(|r| r.envelope.into_iter().map(ByteBuf::into_vec).collect())
            .unwrap_or_default())
    }

    /// Replaces the stored manifest bytes of an object without any check.
    /// Low level: for tests that damage a store on purpose, and for repair
    /// tools; normal writes go through [`Db::commit`].
    pub fn set_manifest_raw(&self, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        self.update_record(id, |r| r.manifest = bytes.to_vec())
    }

    /// Replaces the envelope of an object's latest version.
    pub fn set_envelope(&self, id: &ObjectId, entries: &[Vec<u8>]) -> Result<()> {
        let entries = entries.iter().map(|e| ByteBuf::from(e.clone())).collect();
        self.update_record(id, |r| r.envelope = entries)
    }

    /// Updates local-only fields of an object's state (no new change).
    pub fn put_state(&self, id: &ObjectId, state: &ObjectState) -> Result<()> {
        self.update_record(id, |r| r.state = state.clone())
    }

    /// Every object and its state, in object-id order.
    pub fn objects(&self) -> impl Iterator<Item = Result<(ObjectId, ObjectState)>> + '_ {
        self.tree.scan_prefix(b"o/").map(|r| {
            let (k, v) = r.map_err(db_err)?;
            Ok((oid_from(&k[2..])?, decode_record(&v)?.state))
        })
    }

    /// Number of objects.
    pub fn object_count(&self) -> usize {
        self.tree.scan_prefix(b"o/").count()
    }

    /// Changes after `since`, at most `limit`, as `(seq, object_id)`.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, ObjectId)>> {
        let start = key(b"c/", &since.saturating_add(1).to_be_bytes());
        let end = key(b"c/", &u64::MAX.to_be_bytes());
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                Ok((u64_of(&k[2..], "change-log key")?, oid_from(&v)?))
            })
            .collect()
    }

    /// Applies object writes, assigning each a new change-log number, then
    /// flushes. Returns the last number assigned. Each object's records (and
    /// the sequence counter) change together: writes go in atomic batches of
    /// [`COMMIT_BATCH`] objects, and sled recovers a prefix of the batches
    /// after a crash, so every object is either fully old or fully new.
    pub fn commit(&self, writes: Vec<ObjectWrite>) -> Result<u64> {
        let mut seq = self.next_seq()?;
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let mut batch = sled::Batch::default();
            for w in writes.by_ref().take(COMMIT_BATCH) {
                let oid = w.object_id.as_bytes();
                if let Some(prev) = &w.previous {
                    if prev.chunks > 0 && prev.manifest_id != w.state.manifest_id {
                        // The old version's chunks may now be garbage: until a
                        // GC has run, the next open collects them (a crash
                        // between this commit and the GC leaks nothing).
                        batch.insert(K_GC_PENDING, &[1u8]);
                    }
                    batch.remove(key(b"c/", &prev.seq.to_be_bytes()));
                    if prev.kind != w.state.kind || prev.name != w.state.name {
                        batch.remove(name_key(&prev.kind, &prev.name));
                    }
                }
                let mut state = w.state;
                state.seq = seq;
                batch.insert(key(b"c/", &seq.to_be_bytes()), oid.as_slice());
                batch.insert(name_key(&state.kind, &state.name), oid.as_slice());
                let rec = ObjectRecord {
                    state,
                    manifest: w.manifest,
                    envelope: w.envelope.into_iter().map(ByteBuf::from).collect(),
                };
                batch.insert(key(b"o/", oid), encoding::encode(&rec));
                seq += 1;
            }
            batch.insert(K_NEXT_SEQ, &seq.to_be_bytes());
            failpoint("db.commit")?;
            self.tree.apply_batch(batch).map_err(db_err)?;
        }
        self.flush()?;
        self.notify_changed();
        Ok(seq - 1)
    }

    /// Whether a commit replaced versions whose chunks no GC has collected
    /// since (see [`Db::commit`]).
    pub fn gc_pending(&self) -> Result<bool> {
        self.tree.contains_key(K_GC_PENDING).map_err(db_err)
    }

    /// A GC ran after every replacing commit: clears [`Db::gc_pending`].
    pub fn clear_gc_pending(&self) -> Result<()> {
        if self.tree.remove(K_GC_PENDING).map_err(db_err)?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds or replaces a trusted instance.
    pub fn put_trust(&self, id: &InstanceId, rec: &TrustRecord) -> Result<()> {
        failpoint("db.put_trust")?;
        self.tree
            .insert(key(b"t/", id.as_bytes()), encoding::encode(rec))
            .map_err(db_err)?;
        self.flush()
    }

    /// Removes a trusted instance; false if it was not there. Waiting
    /// subscriptions wake up to re-check their peer's trust.
    pub fn remove_trust(&self, id: &InstanceId) -> Result<bool> {
        failpoint("db.remove_trust")?;
        let had = self
            .tree
            .remove(key(b"t/", id.as_bytes()))
            .map_err(db_err)?
            .is_some();
        self.flush()?;
        self.notify_changed();
        Ok(had)
    }

    /// One trusted instance.
    pub fn trust(&self, id: &InstanceId) -> Result<Option<TrustRecord>> {
        self.tree
            .get(key(b"t/", id.as_bytes()))
            .map_err(db_err)?
            .map(|v| {
                encoding::decode("trust record", &v, 64 * 1024)
                    .map_err(|e| StoreError::Corrupt(format!("trust record: {e}")))
            })
            .transpose()
    }

    /// Every trusted instance.
    pub fn trusted(&self) -> Result<Vec<(InstanceId, TrustRecord)>> {
        self.tree
            .scan_prefix(b"t/")
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                let id = InstanceId::from_slice(&k[2..])
                    .map_err(|e| StoreError::Corrupt(format!("trust key: {e}")))?;
                let rec = encoding::decode("trust record", &v, 64 * 1024)
                    .map_err(|e| StoreError::Corrupt(format!("trust record: {e}")))?;
                Ok((id, rec))
            })
            .collect()
    }
}
