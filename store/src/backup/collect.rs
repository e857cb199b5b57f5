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

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
};

use bbsync_protocol::{
    ChunkId, InstanceId, Manifest, ManifestId, ObjectId, SnapshotObject, Unverified,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::{create::BackupOptions, repofile::ManifestFile};
use crate::{
    Store,
    db::ObjectRecord,
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

/// Cache file format.
const CACHE_FORMAT: u16 = 1;
/// The cache MAC's context.
const CACHE_CONTEXT: &[u8] = b"bbsync/backup-cache/v1\0";
/// Bytes of one object in the cache's object table: object id, manifest
/// id, file hash, version, plaintext length, kind index, flags, index of
/// its first chunk reference, chunk count.
const OBJ_LEN: usize = 16 + 32 + 32 + 8 + 8 + 4 + 1 + 4 + 4;
/// Bytes of one chunk reference: id, stored length.
const CHUNK_LEN: usize = 32 + 4;
/// A backup whose changed objects are more than this share of the cached
/// ones (or more than [`MIN_CHANGES`]) reads the whole store instead.
const MAX_CHANGED_SHARE: usize = 4;
const MIN_CHANGES: usize = 4096;
/// A cache that served is written anew only when more changed records
/// than this were read (see [`Store::collect_backup`]).
const CACHE_REWRITE_CHANGES: usize = 256;

/// The cache file's header (postcard), before its tables and MAC.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u16,
    instance: InstanceId,
    /// The selection it was collected with (`Selection`'s debug form).
    selection: String,
    /// The store's unlogged-write token when it was read.
    token: [u8; 16],
    /// The store's last change-log number before it was read.
    store_seq: u64,
    kinds: Vec<String>,
    objects: u64,
    chunks: u64,
    /// Incomplete objects: id, `kind:name`.
    incomplete: Vec<(ByteBuf, String)>,
}

/// A cache file read and checked: its tables stay as they are in the
/// file (sorted by object id; each record checked once when read).
struct Cache {
    bytes: Vec<u8>,
    /// Where the object and chunk tables start in `bytes`.
    objs_at: usize,
    chunks_at: usize,
    objects: usize,
    kinds: Vec<String>,
    incomplete: Vec<(ObjectId, String)>,
    store_seq: u64,
}

impl Cache {
    fn obj(&self, i: usize) -> &[u8] {
        &self.bytes[self.objs_at + i * OBJ_LEN..self.objs_at + (i + 1) * OBJ_LEN]
    }

    /// Object `i` of the table (checked when the cache was read).
    fn view(&self, i: usize) -> ObjView<'_> {
        let o = self.obj(i);
        let at = |r: std::ops::Range<usize>| -> [u8; 32] { o[r].try_into().unwrap_or([0; 32]) };
        let u64_at = |i: usize| u64::from_be_bytes(o[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_be_bytes(o[i..i + 4].try_into().unwrap_or([0; 4]));
        let first = u32_at(101) as usize;
        let n = u32_at(105) as usize;
        let c = self.chunks_at + first * CHUNK_LEN;
        ObjView {
            id: ObjectId(o[0..16].try_into().unwrap_or([0; 16])),
            manifest_id: ManifestId(at(16..48)),
            file: at(48..80),
            version: u64_at(80),
            plaintext_len: u64_at(88),
            kind: self
                .kinds
                .get(u32_at(96) as usize)
                .map_or("", String::as_str),
            deleted: o[100] & 1 != 0,
            chunks: Chunks::Raw(&self.bytes[c..c + n * CHUNK_LEN]),
        }
    }
}

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

/// One object of the selection, wherever it was read from.
enum Entry<'a> {
    Taken(ObjView<'a>),
    Incomplete(ObjectId, &'a str),
}

/// Object ids from `lo` (inclusive) to `hi` (exclusive); `None`: no bound.
#[derive(Clone, Copy, Default)]
struct Bounds {
    lo: Option<ObjectId>,
    hi: Option<ObjectId>,
}

impl Bounds {
    fn holds(&self, id: &ObjectId) -> bool {
        self.lo.is_none_or(|l| *id >= l) && self.hi.is_none_or(|h| *id < h)
    }
}

impl Cache {
    /// The first object of the table whose id is not below `id`.
    fn position(&self, id: Option<ObjectId>, or: usize) -> usize {
        let Some(id) = id else { return or };
        let (mut lo, mut hi) = (0, self.objects);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.obj(mid)[..16] < id.0[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The objects of the selection within `bounds`, in object-id order: the
/// cache's, except those changed since, and the records read (`fresh`,
/// sorted, all within `bounds`).
fn for_each_entry<'a>(
    cache: Option<&'a Cache>,
    changed: &IdSet<ObjectId>,
    fresh: &'a [(ObjectId, Item)],
    bounds: Bounds,
    mut f: impl FnMut(Entry<'a>),
) {
    let fresh_entry = |(id, item): &'a (ObjectId, Item)| match item {
        Item::Taken(t) => Entry::Taken(ObjView {
            id: *id,
            version: t.version,
            manifest_id: t.manifest_id,
            file: t.file,
            kind: &t.kind,
            deleted: t.deleted,
            plaintext_len: t.plaintext_len,
            chunks: Chunks::List(&t.chunks),
        }),
        Item::Incomplete(name) => Entry::Incomplete(*id, name),
    };
    // Each entry, after the fresh ones whose id is below its own.
    let mut fresh = fresh.iter().peekable();
    let mut emit = |e: Entry<'a>, f: &mut dyn FnMut(Entry<'a>)| {
        let id = match &e {
            Entry::Taken(v) => v.id,
            Entry::Incomplete(id, _) => *id,
        };
        while let Some(n) = fresh.next_if(|n| n.0 < id) {
            f(fresh_entry(n));
        }
        f(e);
    };
    if let Some(c) = cache {
        // The incomplete objects (few) merged into the table's order.
        let mut inc = c
            .incomplete
            .iter()
            .filter(|(id, _)| bounds.holds(id) && !changed.contains(id))
            .peekable();
        let range = c.position(bounds.lo, 0)..c.position(bounds.hi, c.objects);
        for i in range {
            let v = c.view(i);
            while let Some((iid, name)) = inc.next_if(|(iid, _)| *iid < v.id) {
                emit(Entry::Incomplete(*iid, name), &mut f);
            }
            if !changed.contains(&v.id) {
                emit(Entry::Taken(v), &mut f);
            }
        }
        for (iid, name) in inc {
            emit(Entry::Incomplete(*iid, name), &mut f);
        }
    }
    for n in fresh {
        f(fresh_entry(n));
    }
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
        let token = self.db().unlogged_token()?;
        let store_seq = self.db().last_seq()?;
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
                self.all_records(opts)?,
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

    /// Every record the selection takes.
    fn all_records(&self, opts: &BackupOptions) -> Result<Fresh> {
        let mut recs = Vec::new();
        for r in self.db().records() {
            let (id, rec) = r?;
            if opts.selection.matches(&rec.state.kind, &rec.state.name) {
                recs.push((id, rec));
            }
        }
        fresh_of(recs)
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
        let changes = self.db().changes_since(cache.store_seq, limit + 1)?;
        if changes.len() > limit {
            return Ok(None);
        }
        let mut changed = IdSet::with_capacity_and_hasher(changes.len(), IdHash::new());
        changed.extend(changes.into_iter().map(|(_, id)| id));
        let mut recs = Vec::with_capacity(changed.len());
        for id in &changed {
            if let Some(rec) = self.db().record(id)?
                && opts.selection.matches(&rec.state.kind, &rec.state.name)
            {
                recs.push((*id, rec));
            }
        }
        Ok(Some((changed, fresh_of(recs)?)))
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
        let rec = self.db().record(&m.object_id)?;
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

    fn backup_cache_path(&self, selection: &str) -> PathBuf {
        let h = Sha256::digest(selection.as_bytes());
        self.dir()
            .join("cache")
            .join(format!("backup-{}", hex::encode(&h[..8])))
    }

    /// Keyed BLAKE3 (the local record-MAC key) of a cache file's body,
    /// under `context`.
    fn cache_mac(&self, context: &[u8], body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.record_key);
        h.update(context);
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// The body of a cache file whose MAC (its last 32 bytes) checks out.
    pub(crate) fn check_cache_mac<'a>(&self, context: &[u8], bytes: &'a [u8]) -> Option<&'a [u8]> {
        let (body, mac) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if self.cache_mac(context, body) != mac {
            tracing::debug!("a cache file does not check out; not used");
            return None;
        }
        Some(body)
    }

    /// Writes a cache file: `body` and its MAC, into a temp file renamed
    /// over `path` (not synced: a cache lost or torn in a crash does not
    /// check out, and is not used).
    pub(crate) fn write_cache_file(
        &self,
        context: &[u8],
        path: &std::path::Path,
        mut body: Vec<u8>,
    ) -> std::io::Result<()> {
        let mac = self.cache_mac(context, &body);
        body.extend_from_slice(&mac);
        let dir = path.parent().unwrap_or(self.dir());
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let tmp = dir.join(format!(".cache-{:016x}.tmp", rand_u64()));
        let res = write_private(&tmp, &body).and_then(|()| std::fs::rename(&tmp, path));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// The cache of `selection`, if it exists, checks out and is of this
    /// store as it is (its token, a change-log number not beyond the
    /// store's); every record of its tables checked once here.
    fn read_backup_cache(
        &self,
        selection: &str,
        token: &[u8; 16],
        store_seq: u64,
    ) -> Option<Cache> {
        let bytes = std::fs::read(self.backup_cache_path(selection)).ok()?;
        let body_len = self.check_cache_mac(CACHE_CONTEXT, &bytes)?.len();
        let hlen = be32(bytes.get(..4)?)? as usize;
        let h: Header = postcard::from_bytes(bytes.get(4..4 + hlen)?).ok()?;
        if h.format != CACHE_FORMAT
            || h.instance != self.instance_id()
            || h.selection != selection
            || &h.token != token
            || h.store_seq > store_seq
        {
            return None;
        }
        let objects = usize::try_from(h.objects).ok()?;
        let nchunks = usize::try_from(h.chunks).ok()?;
        let objs_at = 4 + hlen;
        let chunks_at = objs_at.checked_add(objects.checked_mul(OBJ_LEN)?)?;
        if chunks_at.checked_add(nchunks.checked_mul(CHUNK_LEN)?)? != body_len {
            return None;
        }
        let mut incomplete = Vec::with_capacity(h.incomplete.len());
        for (id, name) in h.incomplete {
            incomplete.push((ObjectId(id.as_slice().try_into().ok()?), name));
        }
        incomplete.sort_unstable_by_key(|(id, _)| *id);
        let c = Cache {
            bytes,
            objs_at,
            chunks_at,
            objects,
            kinds: h.kinds,
            incomplete,
            store_seq: h.store_seq,
        };
        // Strictly increasing ids, known kinds, chunk runs inside the table.
        let mut prev: Option<u128> = None;
        for i in 0..objects {
            let o = c.obj(i);
            let id = u128::from_be_bytes(o[..16].try_into().ok()?);
            let kind = be32(&o[96..100])? as usize;
            let first = be32(&o[101..105])? as usize;
            let n = be32(&o[105..109])? as usize;
            if prev.is_some_and(|p| p >= id) || kind >= c.kinds.len() || first + n > nchunks {
                return None;
            }
            prev = Some(id);
        }
        if c.incomplete.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        Some(c)
    }

    /// Writes the cache of `selection`: the objects of the collection.
    fn write_backup_cache(
        &self,
        selection: &str,
        token: &[u8; 16],
        store_seq: u64,
        cache: Option<&Cache>,
        changed: &IdSet<ObjectId>,
        fresh: &[(ObjectId, Item)],
    ) -> std::io::Result<()> {
        let mut kinds: Vec<String> = Vec::new();
        let mut kind_ix: BTreeMap<String, u32> = BTreeMap::new();
        let mut objs = Vec::new();
        let mut chunks = Vec::new();
        let mut incomplete = Vec::new();
        let mut n = 0u64;
        let mut nchunks = 0u32;
        for_each_entry(cache, changed, fresh, Bounds::default(), |e| match e {
            Entry::Taken(v) => {
                let k = match kind_ix.get(v.kind) {
                    Some(k) => *k,
                    None => {
                        kinds.push(v.kind.to_string());
                        let k = (kinds.len() - 1) as u32;
                        kind_ix.insert(v.kind.to_string(), k);
                        k
                    }
                };
                objs.extend_from_slice(v.id.as_bytes());
                objs.extend_from_slice(&v.manifest_id.0);
                objs.extend_from_slice(&v.file);
                objs.extend_from_slice(&v.version.to_be_bytes());
                objs.extend_from_slice(&v.plaintext_len.to_be_bytes());
                objs.extend_from_slice(&k.to_be_bytes());
                objs.push(u8::from(v.deleted));
                objs.extend_from_slice(&nchunks.to_be_bytes());
                objs.extend_from_slice(&(v.chunks.len() as u32).to_be_bytes());
                v.chunks.for_each(|c, len| {
                    chunks.extend_from_slice(&c.0);
                    chunks.extend_from_slice(&len.to_be_bytes());
                });
                n += 1;
                nchunks += v.chunks.len() as u32;
            }
            Entry::Incomplete(id, name) => {
                incomplete.push((ByteBuf::from(id.as_bytes().to_vec()), name.to_string()));
            }
        });
        let header = Header {
            format: CACHE_FORMAT,
            instance: self.instance_id(),
            selection: selection.to_string(),
            token: *token,
            store_seq,
            kinds,
            objects: n,
            chunks: u64::from(nchunks),
            incomplete,
        };
        let hb = postcard::to_allocvec(&header).map_err(std::io::Error::other)?;
        let mut body = Vec::with_capacity(4 + hb.len() + objs.len() + chunks.len() + 32);
        body.extend_from_slice(&(hb.len() as u32).to_be_bytes());
        body.extend_from_slice(&hb);
        body.extend_from_slice(&objs);
        body.extend_from_slice(&chunks);
        self.write_cache_file(CACHE_CONTEXT, &self.backup_cache_path(selection), body)
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn rand_u64() -> u64 {
    rand::RngCore::next_u64(&mut rand::rngs::OsRng)
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
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

/// The items of `recs` (each taken by the selection), sorted by object
/// id, with their manifest files encoded and hashed on all cores.
fn fresh_of(recs: Vec<(ObjectId, ObjectRecord)>) -> Result<Fresh> {
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
    let mut f = Fresh {
        items: Vec::with_capacity(done.len()),
        bytes: BTreeMap::new(),
    };
    for (id, item, bytes) in done {
        if let Some(b) = bytes {
            f.bytes.insert(id, b);
        }
        f.items.push((id, item));
    }
    f.items.sort_unstable_by_key(|(id, _)| *id);
    Ok(f)
}

/// What the snapshot holds: the cache's objects (but the changed ones)
/// and the records read, in object-id order; in two halves on two cores
/// when there are many.
fn collected(
    cache: Option<&Cache>,
    changed: &IdSet<ObjectId>,
    fresh: Fresh,
    from_cache: bool,
) -> Collected {
    let Fresh { items, bytes } = fresh;
    let n = cache.map_or(0, |c| c.objects) + items.len();
    let split = match cache {
        Some(c) if c.objects >= 4096 => Some(c.view(c.objects / 2).id),
        _ => None,
    };
    let (a, b) = match split {
        Some(mid) => {
            let at = items.partition_point(|(id, _)| *id < mid);
            let (lo, hi) = items.split_at(at);
            let lo_bounds = Bounds {
                lo: None,
                hi: split,
            };
            let hi_bounds = Bounds {
                lo: split,
                hi: None,
            };
            let (a, b) = rayon::join(
                || Part::of(cache, changed, lo, lo_bounds, &bytes, n / 2),
                || Part::of(cache, changed, hi, hi_bounds, &bytes, n / 2),
            );
            (a, Some(b))
        }
        None => (
            Part::of(cache, changed, &items, Bounds::default(), &bytes, n),
            None,
        ),
    };
    let mut c = Collected {
        objects: a.objects,
        manifests: a.manifests,
        counts: BTreeMap::new(),
        plaintext_bytes: a.plaintext_bytes,
        chunks: a.chunks,
        bytes: 0,
        skipped_incomplete: a.skipped,
        from_cache,
    };
    let mut counts = a.counts;
    if let Some(b) = b {
        c.objects.extend(b.objects);
        c.manifests.extend(b.manifests);
        c.plaintext_bytes += b.plaintext_bytes;
        c.skipped_incomplete.extend(b.skipped);
        // A chunk both halves reference counts once.
        c.chunks
            .extend(b.chunks.into_iter().filter(|(id, _)| !a.seen.contains(id)));
        for (k, v) in b.counts {
            *counts.entry(k).or_default() += v;
        }
    }
    c.bytes = c.chunks.iter().map(|(_, l)| u64::from(*l)).sum();
    c.counts = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    c
}

/// What one range of object ids contributes to a snapshot.
struct Part<'a> {
    objects: Vec<SnapshotObject>,
    manifests: Vec<CollectedManifest>,
    /// Its distinct chunks, and the set of them.
    chunks: Vec<(ChunkId, u32)>,
    seen: IdSet<ChunkId>,
    counts: BTreeMap<&'a str, u64>,
    plaintext_bytes: u64,
    skipped: Vec<String>,
}

impl<'a> Part<'a> {
    fn of(
        cache: Option<&'a Cache>,
        changed: &IdSet<ObjectId>,
        fresh: &'a [(ObjectId, Item)],
        bounds: Bounds,
        bytes: &BTreeMap<ObjectId, Vec<u8>>,
        n: usize,
    ) -> Part<'a> {
        let mut p = Part {
            objects: Vec::with_capacity(n),
            manifests: Vec::with_capacity(n),
            chunks: Vec::with_capacity(n),
            seen: IdSet::with_capacity_and_hasher(n, IdHash::new()),
            counts: BTreeMap::new(),
            plaintext_bytes: 0,
            skipped: Vec::new(),
        };
        for_each_entry(cache, changed, fresh, bounds, |e| {
            let v = match e {
                Entry::Taken(v) => v,
                Entry::Incomplete(_, name) => {
                    p.skipped.push(name.to_string());
                    return;
                }
            };
            if !v.deleted {
                v.chunks.for_each(|ch, len| {
                    if p.seen.insert(ch) {
                        p.chunks.push((ch, len));
                    }
                });
                p.plaintext_bytes += v.plaintext_len;
            }
            *p.counts.entry(v.kind).or_default() += 1;
            p.objects.push(SnapshotObject {
                object_id: v.id,
                version: v.version,
                manifest_id: v.manifest_id,
            });
            p.manifests.push(CollectedManifest {
                object_id: v.id,
                manifest_id: v.manifest_id,
                file: v.file,
                bytes: bytes.get(&v.id).cloned(),
            });
        });
        p
    }
}
