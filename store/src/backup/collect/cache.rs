//! The backup cache file (`<data>/cache/backup-<selection>`; the module
//! docs of `collect` say what it holds and when it is used): reading and
//! checking it, writing it, and the keyed MAC both caches use.

use std::{collections::BTreeMap, path::PathBuf};

use bbsync_protocol::{InstanceId, ManifestId, ObjectId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::{
    Chunks, IdSet, Item, ObjView,
    assemble::{Bounds, Entry, for_each_entry},
};
use crate::Store;

/// Cache file format.
const CACHE_FORMAT: u16 = 1;
/// The cache MAC's context.
const CACHE_CONTEXT: &[u8] = b"bbsync/backup-cache/v1\0";
/// Bytes of one object in the cache's object table: object id, manifest
/// id, file hash, version, plaintext length, kind index, flags, index of
/// its first chunk reference, chunk count.
pub(super) const OBJ_LEN: usize = 16 + 32 + 32 + 8 + 8 + 4 + 1 + 4 + 4;
/// Largest cache header [`Store::peek_backup_cache`] reads (its kinds and
/// its incomplete objects' names).
const MAX_PEEKED_HEADER: usize = 16 << 20;
/// Bytes of one chunk reference: id, stored length.
pub(super) const CHUNK_LEN: usize = 32 + 4;

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
pub(super) struct Cache {
    pub(super) bytes: Vec<u8>,
    /// Where the object and chunk tables start in `bytes`.
    pub(super) objs_at: usize,
    pub(super) chunks_at: usize,
    pub(super) objects: usize,
    pub(super) kinds: Vec<String>,
    pub(super) incomplete: Vec<(ObjectId, String)>,
    pub(super) store_seq: u64,
}

impl Cache {
    pub(super) fn obj(&self, i: usize) -> &[u8] {
        &self.bytes[self.objs_at + i * OBJ_LEN..self.objs_at + (i + 1) * OBJ_LEN]
    }

    /// Object `i` of the table (checked when the cache was read).
    pub(super) fn view(&self, i: usize) -> ObjView<'_> {
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

impl Cache {
    /// The first object of the table whose id is not below `id`.
    pub(super) fn position(&self, id: Option<ObjectId>, or: usize) -> usize {
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

impl Store {
    pub(super) fn backup_cache_path(&self, selection: &str) -> PathBuf {
        let h = Sha256::digest(selection.as_bytes());
        self.dir()
            .join("cache")
            .join(format!("backup-{}", hex::encode(&h[..8])))
    }

    /// Keyed BLAKE3 (the local record-MAC key) of a cache file's body,
    /// under `context`.
    fn cache_mac(&self, context: &[u8], body: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.record_key);
        h.update(context);
        for part in body {
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    /// The body of a cache file whose MAC (its last 32 bytes) checks out.
    pub(crate) fn check_cache_mac<'a>(&self, context: &[u8], bytes: &'a [u8]) -> Option<&'a [u8]> {
        let (body, mac) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if self.cache_mac(context, &[body]) != mac {
            tracing::debug!("a cache file does not check out; not used");
            return None;
        }
        Some(body)
    }

    /// Writes a cache file: its body (`parts`, one after the other) and
    /// their MAC, into a temp file renamed over `path` (not synced: a cache
    /// lost or torn in a crash does not check out, and is not used).
    pub(crate) fn write_cache_file(
        &self,
        context: &[u8],
        path: &std::path::Path,
        parts: &[&[u8]],
    ) -> std::io::Result<()> {
        let mac = self.cache_mac(context, parts);
        let dir = path.parent().unwrap_or(self.dir());
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let tmp = dir.join(format!(".cache-{:016x}.tmp", rand_u64()));
        let res = write_private(&tmp, parts, &mac).and_then(|()| std::fs::rename(&tmp, path));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// The object count and change-log number of the cache of
    /// `selection`, from its header alone, if it names this store as it is
    /// (as [`Store::read_backup_cache`] checks, but neither its MAC nor its
    /// tables: an answer that only says whether a backup will probably
    /// find a cache that serves, never what the backup trusts).
    pub(super) fn peek_backup_cache(
        &self,
        selection: &str,
        token: &[u8; 16],
        store_seq: u64,
    ) -> Option<(usize, u64)> {
        use std::io::Read as _;
        let mut f = std::fs::File::open(self.backup_cache_path(selection)).ok()?;
        let mut len = [0u8; 4];
        f.read_exact(&mut len).ok()?;
        let hlen = u32::from_be_bytes(len) as usize;
        if hlen > MAX_PEEKED_HEADER {
            return None;
        }
        let mut head = vec![0u8; hlen];
        f.read_exact(&mut head).ok()?;
        let h: Header = postcard::from_bytes(&head).ok()?;
        let fits = h.format == CACHE_FORMAT
            && h.instance == self.instance_id()
            && h.selection == selection
            && &h.token == token
            && h.store_seq <= store_seq;
        fits.then(|| Some((usize::try_from(h.objects).ok()?, h.store_seq)))
            .flatten()
    }

    /// The cache of `selection`, if it exists, checks out and is of this
    /// store as it is (its token, a change-log number not beyond the
    /// store's); every record of its tables checked once here.
    pub(super) fn read_backup_cache(
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
    pub(super) fn write_backup_cache(
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
        let hlen = (hb.len() as u32).to_be_bytes();
        self.write_cache_file(
            CACHE_CONTEXT,
            &self.backup_cache_path(selection),
            &[&hlen, &hb, &objs, &chunks],
        )
    }
}

fn write_private(path: &std::path::Path, parts: &[&[u8]], mac: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    for part in parts {
        f.write_all(part)?;
    }
    f.write_all(mac)
}

pub(super) fn rand_u64() -> u64 {
    rand::RngCore::next_u64(&mut rand::rngs::OsRng)
}

pub(super) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}
