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
//! | `u/` instance_id             | u64 big-endian: cursor of an upstream this node follows      |
//! | `x/` chunk_id                | [`Location`]: pack id, offset, length (the chunk index)      |
//! | `meta/index`                 | `01` once the chunk index is complete (absent: rebuild it)   |
//! | `meta/open_packs`            | the packs not sealed yet, each with its committed length     |
//! | `meta/collect`               | present while the index may hold chunks nothing references  |
//! | `meta/doomed_packs`          | packs to delete (their chunks live elsewhere now)            |
//! | `i/` invite_id               | postcard [`InviteRecord`] (an invite this node issued)       |
//!
//! One record per object (rather than one key each for state, manifest and
//! envelope) halves sled's memory and write cost on large imports.

use std::path::Path;

use bbsync_protocol::{
    ChunkId, InstanceId, InviteId, InviteRefusal, ManifestId, ObjectId, Role, encoding,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    error::{Result, StoreError},
    invite::InviteRecord,
    packs::{Location, PackId},
};

/// The schema this build writes: 3, chunks in pack files with a chunk
/// index (schemas 1 and 2 kept one file per chunk; 2 re-checked the
/// envelope entries).
/// Older ones are migrated at open (`crate::migrate`), newer ones refused.
pub const SCHEMA_VERSION: u32 = 3;
/// The first schema with pack files: older data dirs are migrated.
pub const PACKS_SCHEMA: u32 = 3;
/// How long opening a data dir waits for another process's lock on it
/// before reporting [`StoreError::InUse`].
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// Objects per atomic database batch in [`Db::commit`]. Small on purpose:
/// sled 0.34 holds the garbage of a whole batch until it ends (one
/// epoch guard per batch), so large batches cost hundreds of MB at scale
/// (measured: 200,000 inserts in batches of 8,192 peaked at 660 MB, in
/// batches of 256 at 64 MB).
pub const COMMIT_BATCH: usize = 128;

const K_SCHEMA: &[u8] = b"meta/schema_version";
const K_NEXT_SEQ: &[u8] = b"meta/next_seq";
const K_GC_PENDING: &[u8] = b"meta/gc_pending";
const K_INDEX: &[u8] = b"meta/index";
const K_OPEN_PACKS: &[u8] = b"meta/open_packs";
const K_COLLECT: &[u8] = b"meta/collect";
const K_DOOMED: &[u8] = b"meta/doomed_packs";
const K_LAST_VERIFY: &[u8] = b"meta/last_verify";
/// A random token replaced before every write of an object record that
/// takes no change-log number (`put_record`, `update_record`: rekey, local
/// state, migration): what is derived from the records as of a change-log
/// number (the backup cache) is valid only while this token is the same.
const K_UNLOGGED: &[u8] = b"meta/unlogged_token";
/// Index records per sled batch when many are written at once (see
/// [`COMMIT_BATCH`] for why this is small).
const INDEX_BATCH: usize = 256;
/// sled's page cache. Sorted bulk writes (imports, clones) do not need a
/// large one. (sled 0.34 evicts lazily: each of its 256 cache shards looks
/// at its accesses only 64 at a time, so a scan of the whole tree keeps
/// far more than this in memory until evictions catch up: about 140 MB
/// for 200,000 objects, whatever this is set to; measured.)
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
const MAX_RECORD: usize = 48 * 1024 * 1024;
/// Largest invite record (1,000 redemptions with their names fit).
const MAX_INVITE_RECORD: usize = 1024 * 1024;

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

/// What a redemption does, decided inside its transaction
/// ([`Db::redeem_invite`]).
#[derive(Debug, Clone)]
pub enum InviteDecision {
    /// Write the updated invite and trust the redeemer.
    Grant {
        /// The invite with one more use spent and the redeemer recorded.
        invite: InviteRecord,
        /// The redeemer's new trust record.
        trust: TrustRecord,
    },
    /// Nothing to write: the redeemer holds this role already.
    Again(Role),
}

/// Why a redemption transaction stopped.
enum TxStop {
    Refused(InviteRefusal),
    Corrupt(String),
}

fn decode_invite(bytes: &[u8]) -> Result<InviteRecord> {
    let r: InviteRecord = encoding::decode("invite record", bytes, MAX_INVITE_RECORD)
        .map_err(|e| StoreError::Corrupt(format!("invite record: {e}")))?;
    if r.format != 1 {
        return Err(StoreError::Corrupt(format!(
            "invite record of format {} (this version reads 1)",
            r.format
        )));
    }
    Ok(r)
}

fn decode_trust(bytes: &[u8]) -> Result<TrustRecord> {
    encoding::decode("trust record", bytes, 64 * 1024)
        .map_err(|e| StoreError::Corrupt(format!("trust record: {e}")))
}

/// One object's new records, applied atomically with others in a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectWrite {
    /// The object.
    pub object_id: ObjectId,
    /// New state (its `seq` is assigned by [`Db::commit`]).
    pub state: ObjectState,
    /// Signed manifest wire bytes.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// Envelope entries (wire bytes).
    pub envelope: Vec<ByteBuf>,
    /// The previous state, if any (to drop its change-log and name entries).
    pub previous: Option<ObjectState>,
}

/// A change of the chunk index and the pack bookkeeping, applied by
/// [`Db::apply_index`].
#[derive(Debug, Default)]
pub struct IndexChange {
    /// Index records to write.
    pub put: Vec<(ChunkId, Location)>,
    /// Index records to remove.
    pub remove: Vec<ChunkId>,
    /// The new list of open packs with their committed lengths, if it changes.
    pub open_packs: Option<Vec<(PackId, u64)>>,
    /// Sets or clears the collect marker: the index may hold chunks that
    /// nothing references (published and not yet recorded, or left by a
    /// commit that replaced objects), so an open after a crash collects.
    pub collect: Option<bool>,
    /// The new list of packs to delete, if it changes.
    pub doomed: Option<Vec<PackId>>,
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
    /// Bumped (and its receivers woken) after every commit and every trust
    /// change: what long-poll subscriptions of followers await, without a
    /// thread, and what the node watches to refresh its trusted peers.
    changed: tokio::sync::watch::Sender<u64>,
}

/// Whether another process holds the lock sled takes on the database file
/// (`<path>/db`, an exclusive `flock`): probed with the same kind of lock,
/// released at once.
fn lock_held(path: &Path) -> bool {
    match std::fs::File::open(path.join("db")) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

impl Db {
    /// Opens (or, with `create`, creates) the database at `path`, checking its schema.
    pub fn open(path: &Path, data_dir: &Path, create: bool) -> Result<Self> {
        Self::open_checked(path, data_dir, create, true)
    }

    /// Opens an existing database whatever its schema number, for
    /// inspection only (`crate::inspect`): nothing that reads records
    /// through it may trust their layout.
    pub(crate) fn open_any_schema(path: &Path, data_dir: &Path) -> Result<Self> {
        Self::open_checked(path, data_dir, false, false)
    }

    fn open_checked(path: &Path, data_dir: &Path, create: bool, check: bool) -> Result<Self> {
        // Another process holding the lock may be a short command (`status`,
        // `ls` run while no node serves): wait a little for it rather than
        // fail at once (a `serve` started by systemd at the same moment
        // would otherwise exit). A long holder is still reported.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
                .map_err(|e| match e {
                    // sled reports a held lock as an untyped I/O error: ask
                    // the lock itself rather than read the message.
                    sled::Error::Io(ref io)
                        if io.kind() == std::io::ErrorKind::WouldBlock || lock_held(path) =>
                    {
                        StoreError::InUse(data_dir.to_path_buf())
                    }
                    other => db_err(other),
                });
            match opened {
                Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let tree = db.open_tree("bbsync").map_err(db_err)?;
        match tree.get(K_SCHEMA).map_err(db_err)? {
            Some(v) => {
                let found = u32_of(&v, "schema_version")?;
                if check && found > SCHEMA_VERSION {
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
                tree.insert(K_INDEX, &[1u8]).map_err(db_err)?;
                db.flush().map_err(db_err)?;
            }
            None => return Err(StoreError::Corrupt("database has no schema_version".into())),
        }
        Ok(Db {
            db,
            tree,
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Wakes every receiver of [`Db::watch_changes`] (after a commit, or
    /// when trust changed and waiting subscriptions must re-check it).
    pub fn notify_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that is woken by every later [`Db::notify_changed`]
    /// (`changed().await`; works in any async runtime). Create it before
    /// looking at the state it guards, so that no change is missed.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks objects complete, each under a new change-log number (so that
    /// those following this store see them once they can be served), in
    /// atomic batches, then flushes. Takes the records as the caller has
    /// just read them (under the store's lock, so they are current): each
    /// is rewritten, not read again. Batches are applied as `records`
    /// yields them; an error from it stops after the batches applied.
    /// Returns the objects marked.
    pub(crate) fn mark_complete(
        &self,
        records: impl Iterator<Item = Result<(ObjectId, ObjectRecord)>>,
    ) -> Result<Vec<ObjectId>> {
        let mut done = Vec::new();
        let applied = (|| {
            let mut seq = self.next_seq()?;
            let mut records = records.peekable();
            while records.peek().is_some() {
                let mut batch = sled::Batch::default();
                let mut marked = Vec::new();
                for r in records.by_ref().take(COMMIT_BATCH) {
                    let (id, mut rec) = r?;
                    batch.remove(key(b"c/", &rec.state.seq.to_be_bytes()));
                    rec.state.complete = true;
                    rec.state.seq = seq;
                    batch.insert(key(b"c/", &seq.to_be_bytes()), id.as_bytes().as_slice());
                    batch.insert(key(b"o/", id.as_bytes()), encoding::encode(&rec));
                    seq += 1;
                    marked.push(id);
                }
                batch.insert(K_NEXT_SEQ, &seq.to_be_bytes());
                failpoint("db.mark_complete")?;
                self.tree.apply_batch(batch).map_err(db_err)?;
                done.append(&mut marked);
            }
            Ok(())
        })();
        // What was applied is flushed and announced, even after an error.
        self.flush()?;
        self.notify_changed();
        applied.map(|()| done)
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

    /// Where this node last placed `id` in its live BBS tree, and what the
    /// tree held there then ([`crate::live`]); `None` if it never did.
    pub fn tree_record(&self, id: &ObjectId) -> Result<Option<crate::live::TreeRecord>> {
        self.tree
            .get(key(b"lt/", id.as_bytes()))
            .map_err(db_err)?
            .map(|v| {
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("tree record of {}: {e}", id.short())))
            })
            .transpose()
    }

    /// Records (not yet durably: the caller flushes) where `id` lies in the
    /// live tree and what is there; keeps the path index (`lp/`) in step.
    pub fn set_tree_record(&self, id: &ObjectId, rec: &crate::live::TreeRecord) -> Result<()> {
        let v = serde_json::to_vec(rec)
            .map_err(|e| StoreError::Corrupt(format!("tree record of {}: {e}", id.short())))?;
        if let Some(old) = self.tree_record(id)?
            && old.path != rec.path
        {
            self.tree
                .remove(key(b"lp/", old.path.as_bytes()))
                .map_err(db_err)?;
        }
        self.tree
            .insert(key(b"lt/", id.as_bytes()), v)
            .map_err(db_err)?;
        self.tree
            .insert(key(b"lp/", rec.path.as_bytes()), id.as_bytes())
            .map_err(db_err)?;
        Ok(())
    }

    /// Forgets the live-tree record of `id` (and its path in `lp/`).
    pub fn remove_tree_record(&self, id: &ObjectId) -> Result<()> {
        if let Some(old) = self.tree_record(id)? {
            let k = key(b"lp/", old.path.as_bytes());
            // Only if the path is still this object's.
            if self.tree.get(&k).map_err(db_err)?.as_deref() == Some(id.as_bytes().as_slice()) {
                self.tree.remove(k).map_err(db_err)?;
            }
        }
        self.tree
            .remove(key(b"lt/", id.as_bytes()))
            .map_err(db_err)?;
        Ok(())
    }

    /// Brings the path index `lp/` in line with the `lt/` records (given,
    /// as the caller read them): entries missing or pointing elsewhere are
    /// written, entries of no record removed. Reads only, when it is in
    /// line (records written before the index existed, or by an older
    /// build, are indexed here).
    pub fn sync_tree_paths(&self, records: &[(ObjectId, crate::live::TreeRecord)]) -> Result<()> {
        let mut want = std::collections::HashMap::with_capacity(records.len());
        for (id, rec) in records {
            let k = key(b"lp/", rec.path.as_bytes());
            if self.tree.get(&k).map_err(db_err)?.as_deref() != Some(id.as_bytes().as_slice()) {
                self.tree.insert(k.clone(), id.as_bytes()).map_err(db_err)?;
            }
            want.insert(k, *id);
        }
        for r in self.tree.scan_prefix(b"lp/") {
            let (k, v) = r.map_err(db_err)?;
            if want
                .get(k.as_ref())
                .is_none_or(|id| id.as_bytes().as_slice() != v.as_ref())
            {
                self.tree.remove(k).map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// The objects whose live-tree record lies at `path` or below it (by
    /// the path index, without reading the other records).
    pub fn tree_records_under(&self, path: &str) -> Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        for r in self.tree.scan_prefix(key(b"lp/", path.as_bytes())) {
            let (k, v) = r.map_err(db_err)?;
            let rest = &k[3 + path.len()..];
            if !(rest.is_empty() || rest.starts_with(b"/") || path.is_empty()) {
                continue;
            }
            out.push(
                ObjectId::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("tree path index: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Every live-tree record, by object.
    pub fn tree_records(&self) -> Result<Vec<(ObjectId, crate::live::TreeRecord)>> {
        self.tree
            .scan_prefix(b"lt/")
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                let id = ObjectId::from_slice(&k[3..])
                    .map_err(|e| StoreError::Corrupt(format!("tree record key: {e}")))?;
                let rec = serde_json::from_slice(&v).map_err(|e| {
                    StoreError::Corrupt(format!("tree record of {}: {e}", id.short()))
                })?;
                Ok((id, rec))
            })
            .collect()
    }

    /// Sets the schema version (the last step of a migration; tests of the
    /// newer-schema refusal use it through
    /// `Store::dangerously_set_schema_version`).
    pub(crate) fn set_schema_version(&self, v: u32) -> Result<()> {
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

    pub(crate) fn update_record(
        &self,
        id: &ObjectId,
        f: impl FnOnce(&mut ObjectRecord),
    ) -> Result<()> {
        let mut rec = self
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        f(&mut rec);
        failpoint("db.update_record")?;
        self.new_unlogged_token()?;
        self.tree
            .insert(key(b"o/", id.as_bytes()), encoding::encode(&rec))
            .map_err(db_err)?;
        Ok(())
    }

    /// Replaces an object's whole record (its change-log number stays).
    pub(crate) fn put_record(&self, id: &ObjectId, rec: &ObjectRecord) -> Result<()> {
        failpoint("db.update_record")?;
        self.new_unlogged_token()?;
        self.tree
            .insert(key(b"o/", id.as_bytes()), encoding::encode(rec))
            .map_err(db_err)?;
        Ok(())
    }

    /// Replaces the unlogged-write token (see `K_UNLOGGED`), before the
    /// record write it announces: sled recovers a prefix of its writes, so
    /// a record written without a change-log number is never seen with
    /// the old token.
    fn new_unlogged_token(&self) -> Result<[u8; 16]> {
        let mut t = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut t);
        self.tree.insert(K_UNLOGGED, &t).map_err(db_err)?;
        Ok(t)
    }

    /// The unlogged-write token (see `K_UNLOGGED`), made on first use.
    pub(crate) fn unlogged_token(&self) -> Result<[u8; 16]> {
        if let Some(v) = self.tree.get(K_UNLOGGED).map_err(db_err)?
            && let Ok(t) = <[u8; 16]>::try_from(v.as_ref())
        {
            return Ok(t);
        }
        self.new_unlogged_token()
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

    /// Updates local-only fields of an object's state (no new change).
    pub(crate) fn put_state(&self, id: &ObjectId, state: &ObjectState) -> Result<()> {
        self.update_record(id, |r| r.state = state.clone())
    }

    /// Every object and its state, in object-id order.
    pub fn objects(&self) -> impl Iterator<Item = Result<(ObjectId, ObjectState)>> + '_ {
        self.tree.scan_prefix(b"o/").map(|r| {
            let (k, v) = r.map_err(db_err)?;
            Ok((oid_from(&k[2..])?, decode_record(&v)?.state))
        })
    }

    /// Every object's whole record, in object-id order (one pass over the
    /// tree, each record decoded once).
    pub fn records(&self) -> impl Iterator<Item = Result<(ObjectId, ObjectRecord)>> + '_ {
        self.tree.scan_prefix(b"o/").map(|r| {
            let (k, v) = r.map_err(db_err)?;
            Ok((oid_from(&k[2..])?, decode_record(&v)?))
        })
    }

    /// The whole records of the objects among `ids` this store holds, in
    /// the order of `ids` (an id it does not hold is left out).
    pub fn records_of<'a>(
        &'a self,
        ids: &'a [ObjectId],
    ) -> impl Iterator<Item = Result<(ObjectId, ObjectRecord)>> + 'a {
        ids.iter()
            .filter_map(move |id| self.record(id).transpose().map(|r| Ok((*id, r?))))
    }

    /// Number of objects.
    pub fn object_count(&self) -> usize {
        self.tree.scan_prefix(b"o/").count()
    }

    /// Whether there is no object (one key looked at, not a count).
    pub fn has_no_objects(&self) -> bool {
        self.tree.scan_prefix(b"o/").next().is_none()
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
    ///
    /// The name index (`n/`) only ever names the object that holds the name:
    /// an old name is removed only if it still points at this object, and a
    /// tombstone never takes a name another object holds. (Callers refuse a
    /// live object that would take the name of another live one, see
    /// `Store::name_holder`.)
    pub(crate) fn commit(&self, writes: Vec<ObjectWrite>) -> Result<u64> {
        self.commit_from(writes.into_iter().map(Ok))
    }

    /// [`Db::commit`] of writes that come from an iterator (read back from
    /// a spool): the batches are applied as they fill; an error from the
    /// iterator stops the commit after the batches already applied.
    pub(crate) fn commit_from(
        &self,
        writes: impl Iterator<Item = Result<ObjectWrite>>,
    ) -> Result<u64> {
        let mut seq = self.next_seq()?;
        let mut writes = writes.peekable();
        // Names given in the running batch (earlier batches are applied, so
        // the tree has theirs: memory stays bounded by the batch).
        let mut named: std::collections::HashMap<Vec<u8>, ObjectId> =
            std::collections::HashMap::new();
        while writes.peek().is_some() {
            let mut batch = sled::Batch::default();
            for w in writes.by_ref().take(COMMIT_BATCH) {
                let w = w?;
                let oid = w.object_id.as_bytes();
                if let Some(prev) = &w.previous {
                    if prev.chunks > 0 && prev.manifest_id != w.state.manifest_id {
                        // The old version's chunks may now be garbage: until a
                        // GC has run, the next open collects them (a crash
                        // between this commit and the GC leaks nothing).
                        batch.insert(K_GC_PENDING, &[1u8]);
                    }
                    batch.remove(key(b"c/", &prev.seq.to_be_bytes()));
                    let old = name_key(&prev.kind, &prev.name);
                    if (prev.kind != w.state.kind || prev.name != w.state.name)
                        && self.name_holder_in(&named, &old)? == Some(w.object_id)
                    {
                        batch.remove(old.clone());
                        named.remove(&old);
                    }
                }
                let mut state = w.state;
                state.seq = seq;
                batch.insert(key(b"c/", &seq.to_be_bytes()), oid.as_slice());
                let nk = name_key(&state.kind, &state.name);
                // A live object always takes its name (no lookup needed); a
                // tombstone only a free name or its own.
                let takes_name = !state.deleted
                    || match self.name_holder_in(&named, &nk)? {
                        None => true,
                        Some(h) => h == w.object_id,
                    };
                if takes_name {
                    batch.insert(nk.clone(), oid.as_slice());
                    named.insert(nk, w.object_id);
                }
                let rec = ObjectRecord {
                    state,
                    manifest: w.manifest,
                    envelope: w.envelope,
                };
                batch.insert(key(b"o/", oid), encoding::encode(&rec));
                seq += 1;
            }
            batch.insert(K_NEXT_SEQ, &seq.to_be_bytes());
            failpoint("db.commit")?;
            self.tree.apply_batch(batch).map_err(db_err)?;
            named.clear();
        }
        self.flush()?;
        self.notify_changed();
        Ok(seq - 1)
    }

    // ---- the chunk index and pack bookkeeping ---------------------------

    /// Where a chunk is stored, if the index has it. An index record that
    /// does not decode is `Corrupt` (`bbsync repair-index` rebuilds it).
    pub fn index_get(&self, id: &ChunkId) -> Result<Option<Location>> {
        self.tree
            .get(key(b"x/", id.as_bytes()))
            .map_err(db_err)?
            .map(|v| {
                Location::decode(&v).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "index record of chunk {} is damaged (run `bbsync repair-index`)",
                        id.short()
                    ))
                })
            })
            .transpose()
    }

    /// Every index record, in chunk-id order.
    pub fn index_iter(&self) -> impl Iterator<Item = Result<(ChunkId, Location)>> + '_ {
        self.tree.scan_prefix(b"x/").map(|r| {
            let (k, v) = r.map_err(db_err)?;
            let id = ChunkId::from_slice(&k[2..])
                .map_err(|e| StoreError::Corrupt(format!("index key: {e}")))?;
            let loc = Location::decode(&v).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "index record of chunk {} is damaged (run `bbsync repair-index`)",
                    id.short()
                ))
            })?;
            Ok((id, loc))
        })
    }

    /// Every index record, in chunk-id order, with `None` for a record
    /// whose value does not decode (for `verify`, which reports it).
    pub fn index_iter_lenient(
        &self,
    ) -> impl Iterator<Item = Result<(ChunkId, Option<Location>)>> + '_ {
        self.tree.scan_prefix(b"x/").map(|r| {
            let (k, v) = r.map_err(db_err)?;
            let id = ChunkId::from_slice(&k[2..])
                .map_err(|e| StoreError::Corrupt(format!("index key: {e}")))?;
            Ok((id, Location::decode(&v)))
        })
    }

    /// Number of index records.
    pub fn index_len(&self) -> usize {
        self.tree.scan_prefix(b"x/").count()
    }

    /// Applies a change of the index and the pack bookkeeping, then
    /// flushes if `flush`. A small change is one atomic sled batch. A large
    /// one goes in batches of [`INDEX_BATCH`] records, in an order that is
    /// safe at every prefix (sled recovers a prefix of the batches applied):
    /// first the open packs' committed lengths and the setting of the
    /// collect marker (so that a cut at open never removes bytes an index
    /// record points at, and unrecorded records are collected), then the
    /// index records (sorted by chunk id), last the doomed list and the
    /// clearing of the collect marker (so that a pack is doomed only once
    /// every chunk moved out of it is indexed in its new place).
    pub fn apply_index(&self, change: IndexChange, flush: bool) -> Result<()> {
        let IndexChange {
            mut put,
            remove,
            open_packs,
            collect,
            doomed,
        } = change;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let apply =
            |batch: &mut sled::Batch| self.tree.apply_batch(std::mem::take(batch)).map_err(db_err);
        // 1. Bookkeeping that must come first.
        if let Some(packs) = open_packs {
            let mut v = Vec::with_capacity(packs.len() * 24);
            for (id, len) in packs {
                v.extend_from_slice(&id.0);
                v.extend_from_slice(&len.to_be_bytes());
            }
            batch.insert(K_OPEN_PACKS, v);
        }
        if collect == Some(true) {
            batch.insert(K_COLLECT, &[1u8]);
        }
        let large = put.len() + remove.len() > INDEX_BATCH;
        if large {
            apply(&mut batch)?;
        }
        // 2. The records, in key order: sled's B-tree then fills its pages
        //    one after the other instead of touching a random page each.
        put.sort_unstable_by_key(|a| a.0);
        for (id, loc) in put {
            batch.insert(key(b"x/", id.as_bytes()), loc.encode().as_slice());
            n += 1;
            if n % INDEX_BATCH == 0 {
                apply(&mut batch)?;
            }
        }
        for id in remove {
            batch.remove(key(b"x/", id.as_bytes()));
            n += 1;
            if n % INDEX_BATCH == 0 {
                apply(&mut batch)?;
            }
        }
        // 3. Bookkeeping that must come last.
        if collect == Some(false) {
            batch.remove(K_COLLECT);
        }
        if let Some(d) = doomed {
            if d.is_empty() {
                batch.remove(K_DOOMED);
            } else {
                let v: Vec<u8> = d.iter().flat_map(|p| p.0).collect();
                batch.insert(K_DOOMED, v);
            }
        }
        apply(&mut batch)?;
        if flush {
            self.flush()?;
        }
        Ok(())
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

    /// The outcome of the last `verify` of this store (JSON, written by
    /// [`crate::Store::verify`]), `None` before the first one.
    pub fn last_verify(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(K_LAST_VERIFY)
            .map_err(db_err)?
            .map(|v| v.to_vec()))
    }

    /// Records the outcome of a `verify` (see [`Db::last_verify`]).
    pub fn set_last_verify(&self, v: &[u8]) -> Result<()> {
        self.tree.insert(K_LAST_VERIFY, v).map_err(db_err)?;
        self.flush()
    }

    /// The packs not sealed yet, with the length of their bytes that are
    /// durable and indexed (what lies beyond is an interrupted append).
    pub fn open_packs(&self) -> Result<Vec<(PackId, u64)>> {
        let Some(v) = self.tree.get(K_OPEN_PACKS).map_err(db_err)? else {
            return Ok(Vec::new());
        };
        if !v.len().is_multiple_of(24) {
            return Err(StoreError::Corrupt("open packs record".into()));
        }
        Ok(v.chunks_exact(24)
            .map(|c| {
                let mut id = [0u8; 16];
                id.copy_from_slice(&c[..16]);
                let mut len = [0u8; 8];
                len.copy_from_slice(&c[16..]);
                (PackId(id), u64::from_be_bytes(len))
            })
            .collect())
    }

    /// Packs whose chunks were all moved elsewhere (a repack) and that are
    /// still to be deleted.
    pub fn doomed_packs(&self) -> Result<Vec<PackId>> {
        let Some(v) = self.tree.get(K_DOOMED).map_err(db_err)? else {
            return Ok(Vec::new());
        };
        if !v.len().is_multiple_of(16) {
            return Err(StoreError::Corrupt("doomed packs record".into()));
        }
        Ok(v.chunks_exact(16)
            .map(|c| {
                let mut id = [0u8; 16];
                id.copy_from_slice(c);
                PackId(id)
            })
            .collect())
    }

    /// Whether the collect marker is set: a process stopped between
    /// publishing chunks and recording them, or between a commit that
    /// replaced objects and the collection after it.
    pub fn collect_pending(&self) -> Result<bool> {
        Ok(self.tree.get(K_COLLECT).map_err(db_err)?.is_some())
    }

    /// Whether the chunk index is complete (set at init, after a migration
    /// and after a rebuild; absent while a rebuild runs or if the index was
    /// lost).
    pub fn index_complete(&self) -> Result<bool> {
        Ok(self
            .tree
            .get(K_INDEX)
            .map_err(db_err)?
            .is_some_and(|v| v.as_ref() == [1u8]))
    }

    /// Marks the index complete (`true`, flushed) or being rebuilt (`false`).
    pub fn set_index_complete(&self, complete: bool) -> Result<()> {
        if complete {
            self.tree.insert(K_INDEX, &[1u8]).map_err(db_err)?;
        } else {
            self.tree.remove(K_INDEX).map_err(db_err)?;
        }
        self.flush()
    }

    /// Removes every index record (the start of a rebuild), in batches.
    pub fn clear_index(&self) -> Result<()> {
        loop {
            let keys: Vec<sled::IVec> = self
                .tree
                .scan_prefix(b"x/")
                .keys()
                .take(INDEX_BATCH)
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err)?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for k in keys {
                batch.remove(k);
            }
            self.tree.apply_batch(batch).map_err(db_err)?;
        }
    }

    /// Writes raw bytes as the index record of `id`, without any check.
    /// Low level: for tests that damage a store on purpose.
    pub fn dangerously_put_index_raw(&self, id: &ChunkId, bytes: &[u8]) -> Result<()> {
        self.tree
            .insert(key(b"x/", id.as_bytes()), bytes)
            .map_err(db_err)?;
        self.flush()
    }

    /// Who holds a name key: as given earlier in the running commit, else
    /// as stored.
    fn name_holder_in(
        &self,
        named: &std::collections::HashMap<Vec<u8>, ObjectId>,
        k: &[u8],
    ) -> Result<Option<ObjectId>> {
        match named.get(k) {
            Some(id) => Ok(Some(*id)),
            None => self
                .tree
                .get(k)
                .map_err(db_err)?
                .map(|v| oid_from(&v))
                .transpose(),
        }
    }

    /// Adds or replaces a trusted instance (the node's view of who is
    /// trusted is refreshed through [`Db::watch_changes`]).
    pub(crate) fn put_trust(&self, id: &InstanceId, rec: &TrustRecord) -> Result<()> {
        failpoint("db.put_trust")?;
        self.tree
            .insert(key(b"t/", id.as_bytes()), encoding::encode(rec))
            .map_err(db_err)?;
        self.flush()?;
        self.notify_changed();
        Ok(())
    }

    /// Removes a trusted instance; false if it was not there. Waiting
    /// subscriptions wake up to re-check their peer's trust.
    pub(crate) fn remove_trust(&self, id: &InstanceId) -> Result<bool> {
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
            .map(|v| decode_trust(&v))
            .transpose()
    }

    /// Writes (durably) an invite record.
    pub(crate) fn put_invite(&self, rec: &InviteRecord) -> Result<()> {
        self.tree
            .insert(key(b"i/", rec.id.as_bytes()), encoding::encode(rec))
            .map_err(db_err)?;
        self.flush()
    }

    /// One invite this node issued.
    pub fn invite(&self, id: &InviteId) -> Result<Option<InviteRecord>> {
        self.tree
            .get(key(b"i/", id.as_bytes()))
            .map_err(db_err)?
            .map(|v| decode_invite(&v))
            .transpose()
    }

    /// Every invite this node issued, in id order.
    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        self.tree
            .scan_prefix(b"i/")
            .map(|r| decode_invite(&r.map_err(db_err)?.1))
            .collect()
    }

    /// Redeems invite `id` for `redeemer` in one transaction: `decide` sees
    /// the invite record and the redeemer's trust record as they are now
    /// and says what to write (the invite and the trust record, together)
    /// or why not. Durable before it returns; a granted redemption wakes
    /// the node (a trust change). `decide` may run more than once (a
    /// transaction retried after a conflict).
    pub(crate) fn redeem_invite(
        &self,
        id: &InviteId,
        redeemer: &InstanceId,
        decide: impl Fn(
            Option<InviteRecord>,
            Option<TrustRecord>,
        ) -> std::result::Result<InviteDecision, InviteRefusal>,
    ) -> Result<std::result::Result<InviteDecision, InviteRefusal>> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let ikey = key(b"i/", id.as_bytes());
        let tkey = key(b"t/", redeemer.as_bytes());
        let r = self.tree.transaction(|tx| {
            let stop = |s| ConflictableTransactionError::Abort(s);
            let inv = tx
                .get(&ikey)?
                .map(|v| decode_invite(&v))
                .transpose()
                .map_err(|e| stop(TxStop::Corrupt(e.to_string())))?;
            let trust = tx
                .get(&tkey)?
                .map(|v| decode_trust(&v))
                .transpose()
                .map_err(|e| stop(TxStop::Corrupt(e.to_string())))?;
            let d = decide(inv, trust).map_err(|r| stop(TxStop::Refused(r)))?;
            if let InviteDecision::Grant { invite, trust } = &d {
                tx.insert(ikey.as_slice(), encoding::encode(invite))?;
                tx.insert(tkey.as_slice(), encoding::encode(trust))?;
            }
            Ok(d)
        });
        match r {
            Ok(d) => {
                if matches!(d, InviteDecision::Grant { .. }) {
                    self.flush()?;
                    self.notify_changed();
                }
                Ok(Ok(d))
            }
            Err(TransactionError::Abort(TxStop::Refused(why))) => Ok(Err(why)),
            Err(TransactionError::Abort(TxStop::Corrupt(why))) => Err(StoreError::Corrupt(why)),
            Err(TransactionError::Storage(e)) => Err(db_err(e)),
        }
    }

    /// Every trusted instance.
    pub fn trusted(&self) -> Result<Vec<(InstanceId, TrustRecord)>> {
        self.tree
            .scan_prefix(b"t/")
            .map(|r| {
                let (k, v) = r.map_err(db_err)?;
                let id = InstanceId::from_slice(&k[2..])
                    .map_err(|e| StoreError::Corrupt(format!("trust key: {e}")))?;
                Ok((id, decode_trust(&v)?))
            })
            .collect()
    }
}
