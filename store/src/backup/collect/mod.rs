//! Step 1 of a backup (either format): what the snapshot holds, read from
//! the store, and the backup cache that makes this step cheap when little
//! changed since the last backup of the same selection.
//!
//! **The cache** (`<data>/cache/backup-<selection>`, docs/backup.md
//! "Incremental backups") keeps, per object the selection takes, what a
//! snapshot needs of it (version, manifest id, kind, plaintext length,
//! chunks) and the SHA-256 of its manifest file, as of a change-log number
//! of the store. A backup reads the cache, then only the records changed
//! since that number, instead of every record and every manifest. It is
//! valid only for this instance's store as it was: the file is keyed with
//! the instance's local record-MAC key (a file it did not write is not
//! used), and it names the store's unlogged-write token (replaced before
//! any record write that takes no change-log number: rekey, local state,
//! migration). Anything that does not check out (another token, a change
//! log number beyond the store's, a damaged or foreign file, too many
//! changes) means a full read, as without a cache; the cache is then
//! written anew. Nothing in it is trusted for the repository: which chunks
//! and manifest files the repository has is always its index's answer.

mod assemble;
mod cache;

use std::collections::{BTreeMap, HashSet};

use bbsync_protocol::{ChunkId, Manifest, ManifestId, ObjectId, SnapshotObject, Unverified};
use rayon::prelude::*;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use self::assemble::collected;
use self::cache::{CHUNK_LEN, Cache, rand_u64};
use super::{create::BackupOptions, repofile::ManifestFile};
use crate::sync::Selection;
use crate::{
    Store,
    backup_api::ObjectRecord,
    error::{Result, StoreError},
};

/// What a snapshot of a store holds (step 1 of a backup, both formats).
pub(crate) struct Collected {
    /// The objects, sorted by object id.
    pub objects: Vec<SnapshotObject>,
    /// Each object's manifest file (see [`CollectedManifest`]).
    pub manifests: Vec<CollectedManifest>,
    /// Objects by kind.
    pub counts: BTreeMap<String, u64>,
    /// Plaintext bytes of the live objects.
    pub plaintext_bytes: u64,
    /// Distinct chunks of the live objects, with their stored length.
    pub chunks: Vec<(ChunkId, u32)>,
    /// Sum of those lengths.
    pub bytes: u64,
    /// Incomplete objects left out (`kind:name`).
    pub skipped_incomplete: Vec<String>,
    /// Whether the backup cache served (objects read from the store: the
    /// changed ones only).
    pub from_cache: bool,
}

/// One object's manifest file (its signed manifest and envelope, as the
/// store holds them).
pub(crate) struct CollectedManifest {
    /// The object.
    pub object_id: ObjectId,
    /// The manifest.
    pub manifest_id: ManifestId,
    /// SHA-256 of the file's bytes.
    pub file: [u8; 32],
    /// The file's bytes, when the collection read the record; `None` when
    /// the cache served it ([`Store::manifest_file`] reads it).
    pub bytes: Option<Vec<u8>>,
}

/// One object the selection takes, read from its record.
struct Taken {
    version: u64,
    manifest_id: ManifestId,
    file: [u8; 32],
    kind: String,
    deleted: bool,
    plaintext_len: u64,
    chunks: Vec<(ChunkId, u32)>,
}

/// One object of the selection read from its record: taken, or left out
/// as incomplete (`kind:name`).
enum Item {
    Taken(Taken),
    Incomplete(String),
}

/// Records read (the changed ones, or all), sorted by object id, with
/// their manifest files' bytes.
#[derive(Default)]
struct Fresh {
    items: Vec<(ObjectId, Item)>,
    bytes: BTreeMap<ObjectId, Vec<u8>>,
}

/// A set of ids (hashes already, from this store's own records), hashed
/// by a few multiply-rotate rounds over their bytes under a random key:
/// cheaper than SipHash, which the sets of a backup's 25,000 objects and
/// chunks spent most of their time in.
type IdSet<T> = HashSet<T, IdHash>;

#[derive(Clone, Copy)]
struct IdHash(u64);

impl IdHash {
    fn new() -> IdHash {
        IdHash(rand_u64())
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
    }
    fn write_usize(&mut self, _: usize) {}
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A backup whose changed objects are more than this share of the cached
/// ones (or more than [`MIN_CHANGES`]) reads the whole store instead.
const MAX_CHANGED_SHARE: usize = 4;
const MIN_CHANGES: usize = 4096;
/// A cache that served is written anew only when more changed records
/// than this were read (see [`Store::collect_backup`]).
const CACHE_REWRITE_CHANGES: usize = 256;
/// Bytes of manifest files a collection keeps for the backup to write;
/// the others are read from their records again when they are written
/// (at 200,000 objects, keeping every file held 90 MB, and twice while the
/// parts were assembled).
const FRESH_BYTES_KEPT: usize = 16 * 1024 * 1024;
/// Records read and encoded at once when every record is read.
const FRESH_ROUND: usize = 8192;

/// Chunk references of an object: from the cache, or from its record.
#[derive(Clone, Copy)]
enum Chunks<'a> {
    Raw(&'a [u8]),
    List(&'a [(ChunkId, u32)]),
}

impl Chunks<'_> {
    fn len(&self) -> usize {
        match self {
            Chunks::Raw(b) => b.len() / CHUNK_LEN,
            Chunks::List(l) => l.len(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(ChunkId, u32)) {
        match self {
            Chunks::Raw(b) => {
                for c in b.chunks_exact(CHUNK_LEN) {
                    let id = ChunkId(c[..32].try_into().unwrap_or([0; 32]));
                    f(
                        id,
                        u32::from_be_bytes(c[32..36].try_into().unwrap_or([0; 4])),
                    );
                }
            }
            Chunks::List(l) => {
                for (id, len) in *l {
                    f(*id, *len);
                }
            }
        }
    }
}

/// One object the snapshot takes, wherever it was read from.
struct ObjView<'a> {
    id: ObjectId,
    version: u64,
    manifest_id: ManifestId,
    file: [u8; 32],
    kind: &'a str,
    deleted: bool,
    plaintext_len: u64,
    chunks: Chunks<'a>,
}

impl Store {
    /// Step 1 of a backup: the live and deleted objects the selection
    /// takes, complete ones only, with their manifests and chunks; from the
    /// backup cache and the records changed since, where the cache is
    /// valid (see the module docs), else from every record. Writes the
    /// cache for the next backup when it did not serve or many records
    /// changed (a failure to is logged, not an error).
    pub(crate) fn collect_backup(&self, opts: &BackupOptions) -> Result<Collected> {
        let selection = format!("{:?}", opts.selection);
        // Both read before any record: what changes from here on is read
        // again by the next backup.
        let token = self.change_log_token()?;
        let store_seq = self.last_seq()?;
        let t = std::time::Instant::now();
        let cache = self.read_backup_cache(&selection, &token, store_seq);
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        let served = match &cache {
            Some(c) => self.changed_records(opts, c)?,
            None => None,
        };
        tracing::debug!(
            read_ms,
            changes_ms = t.elapsed().as_secs_f64() * 1e3 - read_ms,
            "backup: cache read, changed records read"
        );
        let (cache, changed, fresh) = match served {
            Some((changed, fresh)) => (cache, changed, fresh),
            None => (
                None,
                IdSet::with_hasher(IdHash::new()),
                self.all_records(&opts.selection, FRESH_BYTES_KEPT)?,
            ),
        };
        let from_cache = cache.is_some();
        // A cache that served with few changes is kept as it is: the next
        // backup reads those few records again, which costs less than
        // writing the whole cache each time.
        if !(from_cache && fresh.items.len() <= CACHE_REWRITE_CHANGES) {
            let res = self.write_backup_cache(
                &selection,
                &token,
                store_seq,
                cache.as_ref(),
                &changed,
                &fresh.items,
            );
            if let Err(e) = res {
                tracing::warn!(
                    "could not write the backup cache (the next backup reads every record): {e}"
                );
            }
        }
        Ok(collected(cache.as_ref(), &changed, fresh, from_cache))
    }

    /// Whether a backup of `selection` will probably find a backup cache
    /// that serves (see the module docs) and read only the records changed
    /// since; `false` means it would read every record. Only the cache's
    /// header is read: the backup checks the whole file as ever (a cache
    /// that fails that check makes it read every record itself).
    pub fn backup_cache_serves(&self, selection: &Selection) -> Result<bool> {
        let token = self.change_log_token()?;
        let store_seq = self.last_seq()?;
        let name = format!("{selection:?}");
        let Some((objects, cache_seq)) = self.peek_backup_cache(&name, &token, store_seq) else {
            return Ok(false);
        };
        let limit = MIN_CHANGES.max(objects / MAX_CHANGED_SHARE);
        Ok(self.changes_since(cache_seq, limit + 1)?.len() <= limit)
    }

    /// Makes sure a backup of `selection` finds a backup cache that
    /// serves: when none would ([`Store::backup_cache_serves`]), reads
    /// every record the selection takes and writes the cache. Returns
    /// whether it did. `bbsync backup` of a large store has this done by
    /// a process of its own (`bbsync backup-cache`) before it opens the
    /// store for the backup: the pages such a read leaves in sled's cache
    /// and the malloc arenas it grows are then not held under the
    /// snapshot being assembled (at 200,000 objects a store's first
    /// backup peaked at 297-330 MB of RSS in one process).
    pub fn prepare_backup_cache(&self, selection: &Selection) -> Result<bool> {
        if self.backup_cache_serves(selection)? {
            return Ok(false);
        }
        let name = format!("{selection:?}");
        let token = self.change_log_token()?;
        let store_seq = self.last_seq()?;
        let fresh = self.all_records(selection, 0)?;
        let none = IdSet::with_hasher(IdHash::new());
        self.write_backup_cache(&name, &token, store_seq, None, &none, &fresh.items)
            .map_err(|e| StoreError::Io {
                context: format!("writing the backup cache under {}", self.dir().display()),
                source: e,
            })?;
        Ok(true)
    }

    /// Every record the selection takes, with the first `keep` bytes of
    /// their manifest files.
    fn all_records(&self, selection: &Selection, keep: usize) -> Result<Fresh> {
        let mut f = Fresh::default();
        let mut kept = FRESH_BYTES_KEPT.saturating_sub(keep);
        let mut recs = Vec::with_capacity(FRESH_ROUND);
        for r in self.stored_records() {
            let (id, rec) = r?;
            if selection.matches(&rec.state.kind, &rec.state.name) {
                recs.push((id, rec));
            }
            if recs.len() == FRESH_ROUND {
                fresh_into(std::mem::take(&mut recs), &mut f, &mut kept)?;
            }
        }
        fresh_into(recs, &mut f, &mut kept)?;
        f.items.sort_unstable_by_key(|(id, _)| *id);
        Ok(f)
    }

    /// The objects changed since the cache was made, and those of them
    /// the selection takes, read; `None` when too many changed (reading
    /// everything is then cheaper).
    fn changed_records(
        &self,
        opts: &BackupOptions,
        cache: &Cache,
    ) -> Result<Option<(IdSet<ObjectId>, Fresh)>> {
        let limit = MIN_CHANGES.max(cache.objects / MAX_CHANGED_SHARE);
        let changes = self.changes_since(cache.store_seq, limit + 1)?;
        if changes.len() > limit {
            return Ok(None);
        }
        let mut changed = IdSet::with_capacity_and_hasher(changes.len(), IdHash::new());
        changed.extend(changes.into_iter().map(|(_, id)| id));
        let mut recs = Vec::with_capacity(changed.len());
        for id in &changed {
            if let Some(rec) = self.stored_record(id)?
                && opts.selection.matches(&rec.state.kind, &rec.state.name)
            {
                recs.push((*id, rec));
            }
        }
        let mut f = Fresh::default();
        fresh_into(recs, &mut f, &mut 0)?;
        f.items.sort_unstable_by_key(|(id, _)| *id);
        Ok(Some((changed, f)))
    }

    /// The manifest file of `m` and its SHA-256: its bytes if the
    /// collection read them, else the object's record now (an envelope
    /// changed since by a rekey gives new bytes and a new hash: the
    /// newer envelope of the same manifest). An object whose manifest
    /// changed since the collection is an error: the snapshot names the
    /// older manifest, which the store no longer holds.
    pub(crate) fn manifest_file(&self, m: &CollectedManifest) -> Result<([u8; 32], Vec<u8>)> {
        if let Some(b) = &m.bytes {
            return Ok((m.file, b.clone()));
        }
        let rec = self.stored_record(&m.object_id)?;
        match rec {
            Some(rec) if rec.state.manifest_id == m.manifest_id => {
                let bytes = manifest_file_bytes(rec);
                let file = Sha256::digest(&bytes).into();
                Ok((file, bytes))
            }
            _ => Err(StoreError::Invalid(format!(
                "object {} changed during the backup; run the backup again",
                m.object_id.short()
            ))),
        }
    }
}

/// The digest a format-3 snapshot signs over its objects' manifest files
/// ([`bbsync_protocol::manifest_files_digest`]), from the hashes the
/// collection made (or its cache kept): the files of the backup's
/// objects, as this store holds them (a file the repository later holds in
/// another version, after a rekey, makes the digest differ, and a verify
/// then checks those manifests' signatures as before).
pub(crate) fn manifest_files_of(
    objects: &[SnapshotObject],
    manifests: &[CollectedManifest],
) -> [u8; 32] {
    let same_order = objects.len() == manifests.len()
        && objects
            .iter()
            .zip(manifests)
            .all(|(o, m)| o.object_id == m.object_id && o.manifest_id == m.manifest_id);
    if same_order {
        return bbsync_protocol::manifest_files_digest(manifests.iter().map(|m| Some(m.file)));
    }
    let by_object: std::collections::HashMap<ObjectId, &CollectedManifest> =
        manifests.iter().map(|m| (m.object_id, m)).collect();
    bbsync_protocol::manifest_files_digest(objects.iter().map(|o| {
        by_object
            .get(&o.object_id)
            .filter(|m| m.manifest_id == o.manifest_id)
            .map(|m| m.file)
    }))
}

/// A record's manifest file bytes.
fn manifest_file_bytes(rec: ObjectRecord) -> Vec<u8> {
    ManifestFile {
        format: 1,
        manifest: ByteBuf::from(rec.manifest),
        envelope: rec.envelope,
    }
    .encode()
}

/// The items of `recs` (each taken by the selection) added to `f`, with
/// their manifest files encoded and hashed on all cores; their bytes kept
/// while `kept` stays within [`FRESH_BYTES_KEPT`].
fn fresh_into(recs: Vec<(ObjectId, ObjectRecord)>, f: &mut Fresh, kept: &mut usize) -> Result<()> {
    let done: Vec<(ObjectId, Item, Option<Vec<u8>>)> = recs
        .into_par_iter()
        .map(|(id, rec)| -> Result<_> {
            let st = &rec.state;
            if !st.complete && !st.deleted {
                let name = format!("{}:{}", st.kind, st.name);
                return Ok((id, Item::Incomplete(name), None));
            }
            let m = Unverified::<Manifest>::decode(&rec.manifest)
                .map_err(|e| {
                    StoreError::Corrupt(format!("manifest of object {}: {e}", id.short()))
                })?
                .dangerously_assume_verified();
            let (version, manifest_id, kind, deleted) =
                (st.version, st.manifest_id, st.kind.clone(), st.deleted);
            let bytes = manifest_file_bytes(rec);
            let taken = Taken {
                version,
                manifest_id,
                file: Sha256::digest(&bytes).into(),
                kind,
                deleted,
                plaintext_len: m.plaintext_len,
                chunks: m.chunks.iter().map(|c| (c.id, c.len)).collect(),
            };
            Ok((id, Item::Taken(taken), Some(bytes)))
        })
        .collect::<Result<_>>()?;
    f.items.reserve(done.len());
    for (id, item, bytes) in done {
        if let Some(b) = bytes
            && *kept + b.len() <= FRESH_BYTES_KEPT
        {
            *kept += b.len();
            f.bytes.insert(id, b);
        }
        f.items.push((id, item));
    }
    Ok(())
}
