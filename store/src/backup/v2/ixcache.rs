//! What a backup asks of a repository's index ([`IndexView`]), and the
//! local index cache that answers it without reading every index file.
//!
//! A backup only asks whether the repository holds a chunk, a manifest's
//! current file, a manifest file or a pack, and the highest sequence of
//! its index files. Index files are named by the SHA-256 of their bytes
//! and never change, so what a set of them says can be kept: the cache
//! (`<data>/cache/index-<repository>`) holds the names of the index files
//! it was made from and, sorted, the ids they index. A backup lists
//! `index/`; when every name the cache was made from is still there, it
//! reads only the index files added since (another host's backups, its
//! own last one) and asks both; when one is gone (a prune rewrote it) or
//! the cache does not check out (it is keyed with the instance's local
//! record-MAC key, like the backup cache), it reads every index file, as
//! without a cache, and writes the cache anew. The cache says only what
//! the repository's own index files said; it grants no trust.

use std::{collections::BTreeSet, sync::Arc};

use bbsync_protocol::{ChunkId, InstanceId, ManifestId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    format::{Index, IndexFile},
    repo::Repo2,
};
use crate::{Store, error::Result, packs::PackId};

/// What a backup asks of a repository's merged index.
pub trait IndexView: Sync {
    /// Whether a data pack holds the chunk.
    fn has_chunk(&self, id: &ChunkId) -> bool;
    /// The current file (SHA-256 of its bytes) of a manifest.
    fn manifest_file(&self, id: &ManifestId) -> Option<[u8; 32]>;
    /// Whether a manifest pack holds the file.
    fn has_file(&self, file: &[u8; 32]) -> bool;
    /// Whether an index file names the pack.
    fn has_pack(&self, pack: &PackId) -> bool;
    /// The highest `seq` of an index file (0 when none).
    fn top_seq(&self) -> u64;
}

impl IndexView for Index {
    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }
    fn manifest_file(&self, id: &ManifestId) -> Option<[u8; 32]> {
        self.manifests.get(id).map(|(_, f)| *f)
    }
    fn has_file(&self, file: &[u8; 32]) -> bool {
        self.files.contains_key(file)
    }
    fn has_pack(&self, pack: &PackId) -> bool {
        self.packs.contains_key(pack)
    }
    fn top_seq(&self) -> u64 {
        self.top_seq
    }
}

/// Cache file format.
const FORMAT: u16 = 1;
/// Index files read beside the cache beyond which it is written anew
/// (merged), and beyond which it is not used at all (everything read).
const REWRITE_AFTER: usize = 16;
const REWRITE_ENTRIES: usize = 4096;
const USE_UP_TO: usize = 256;
/// Record lengths in the cache's tables.
const CHUNK_REC: usize = 32;
const MANIFEST_REC: usize = 32 + 8 + 32;
const FILE_REC: usize = 32;
const PACK_REC: usize = 16;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u16,
    instance: InstanceId,
    repo_id: String,
    location: String,
    /// The index files it was made from.
    names: Vec<String>,
    top_seq: u64,
    chunks: u64,
    manifests: u64,
    files: u64,
    packs: u64,
}

/// Sorted fixed-size records, searched by their leading key (a key's
/// first `bits` bits pick its run of records through `dir`, sized to the
/// table: the ids are hashes, so a run holds about one record).
struct Table {
    data: Arc<Vec<u8>>,
    /// Where the records are in `data`.
    start: usize,
    len: usize,
    rec: usize,
    key: usize,
    /// `dir[p]`: the first record whose key's first `bits` bits are >= p.
    dir: Vec<u32>,
    bits: u32,
}

/// A key's first `bits` bits (keys are at least 2 bytes; `bits` <= 16).
fn prefix(key: &[u8], bits: u32) -> Option<usize> {
    let p = u16::from_be_bytes([*key.first()?, *key.get(1)?]);
    Some(usize::from(p >> (16 - bits)))
}

impl Table {
    fn of(mut recs: Vec<Vec<u8>>, rec: usize, key: usize) -> Table {
        recs.sort_unstable();
        let len = recs.len();
        Table::new(Arc::new(recs.concat()), 0, len, rec, key)
    }

    fn new(data: Arc<Vec<u8>>, start: usize, len: usize, rec: usize, key: usize) -> Table {
        // About one record per run: 2^bits >= len, between 2^4 and 2^16.
        let bits = (usize::BITS - len.leading_zeros()).clamp(4, 16);
        let mut dir = vec![len as u32; (1 << bits) + 1];
        let mut next = 0usize;
        let recs = data
            .get(start..start + len * rec)
            .unwrap_or_default()
            .chunks_exact(rec);
        for (i, r) in recs.enumerate() {
            let p = prefix(r, bits).unwrap_or(0);
            while next <= p {
                dir[next] = i as u32;
                next += 1;
            }
        }
        Table {
            data,
            start,
            len,
            rec,
            key,
            dir,
            bits,
        }
    }

    /// Whether the keys are strictly increasing (the first 8 bytes of two
    /// hashes nearly always decide, without a call to `memcmp`).
    fn is_sorted(&self) -> bool {
        let key = self.key;
        let head = |r: &[u8]| u64::from_be_bytes(r[..8].try_into().unwrap_or_default());
        let recs = self.bytes().chunks_exact(self.rec);
        recs.clone()
            .zip(recs.skip(1))
            .all(|(a, b)| match head(a).cmp(&head(b)) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => a[..key] < b[..key],
            })
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len * self.rec]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let p = prefix(key, self.bits)?;
        let (mut lo, mut hi) = (self.dir[p] as usize, self.dir[p + 1] as usize);
        let bytes = self.bytes();
        let head = |k: &[u8]| u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
        let want = head(key.get(..8)?);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = &bytes[mid * self.rec..(mid + 1) * self.rec];
            // (The first 8 bytes of two hashes nearly always decide.)
            match head(r).cmp(&want).then_with(|| r[..self.key].cmp(key)) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(r),
            }
        }
        None
    }

    fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes().chunks_exact(self.rec)
    }
}

/// The cached index with the index files added since, read in full.
pub struct CachedIndex {
    chunks: Table,
    /// Manifest id, seq (big-endian), file.
    manifests: Table,
    files: Table,
    packs: Table,
    top_seq: u64,
    names: Vec<String>,
    /// The index files added since the cache was made, and their names.
    extra: Index,
    extra_names: Vec<String>,
}

impl IndexView for CachedIndex {
    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.extra.chunks.contains_key(id) || self.chunks.get(&id.0).is_some()
    }
    fn manifest_file(&self, id: &ManifestId) -> Option<[u8; 32]> {
        let cached = self.manifests.get(&id.0).map(|r| {
            let seq = u64::from_be_bytes(r[32..40].try_into().unwrap_or_default());
            let file: [u8; 32] = r[40..72].try_into().unwrap_or_default();
            (seq, file)
        });
        let extra = self.extra.manifests.get(id).copied();
        match (cached, extra) {
            (Some(c), Some(e)) => Some(if e.0 >= c.0 { e.1 } else { c.1 }),
            (c, e) => c.or(e).map(|(_, f)| f),
        }
    }
    fn has_file(&self, file: &[u8; 32]) -> bool {
        self.extra.files.contains_key(file) || self.files.get(file).is_some()
    }
    fn has_pack(&self, pack: &PackId) -> bool {
        self.extra.packs.contains_key(pack) || self.packs.get(&pack.0).is_some()
    }
    fn top_seq(&self) -> u64 {
        self.top_seq.max(self.extra.top_seq)
    }
}

impl CachedIndex {
    /// The tables of a whole index (made from the index files `names`).
    fn of(ix: &Index, names: Vec<String>) -> CachedIndex {
        let mut c = CachedIndex {
            chunks: Table::of(Vec::new(), CHUNK_REC, 32),
            manifests: Table::of(Vec::new(), MANIFEST_REC, 32),
            files: Table::of(Vec::new(), FILE_REC, 32),
            packs: Table::of(Vec::new(), PACK_REC, 16),
            top_seq: 0,
            names,
            extra: Index::default(),
            extra_names: Vec::new(),
        };
        c.merge(ix);
        c
    }

    /// Merges an index into the tables (a manifest's higher seq wins).
    fn merge(&mut self, ix: &Index) {
        let recs = |keys: Vec<Vec<u8>>| {
            let mut keys = keys;
            keys.sort_unstable();
            keys
        };
        let chunks = recs(ix.chunks.keys().map(|k| k.0.to_vec()).collect());
        let manifests = recs(
            ix.manifests
                .iter()
                .map(|(id, (seq, file))| [&id.0[..], &seq.to_be_bytes(), &file[..]].concat())
                .collect(),
        );
        let files = recs(ix.files.keys().map(|k| k.to_vec()).collect());
        let packs = recs(ix.packs.keys().map(|k| k.0.to_vec()).collect());
        self.chunks = self.chunks.merged(&chunks, |_, _| false);
        // A manifest's file of a higher seq wins.
        self.manifests = self
            .manifests
            .merged(&manifests, |old, new| new[32..40] > old[32..40]);
        self.files = self.files.merged(&files, |_, _| false);
        self.packs = self.packs.merged(&packs, |_, _| false);
        self.top_seq = self.top_seq.max(ix.top_seq);
    }
}

impl Table {
    /// This table with the sorted records `new` merged in (one pass over
    /// both): of two records with the same key, the new one replaces the
    /// old where `replace(old, new)`.
    fn merged(&self, new: &[Vec<u8>], replace: impl Fn(&[u8], &[u8]) -> bool) -> Table {
        let mut out = Vec::with_capacity((self.len + new.len()) * self.rec);
        let mut n = 0usize;
        let mut new = new.iter().filter(|r| r.len() == self.rec).peekable();
        for r in self.records() {
            while let Some(x) = new.next_if(|x| x[..self.key] < r[..self.key]) {
                out.extend_from_slice(x);
                n += 1;
            }
            match new.next_if(|x| x[..self.key] == r[..self.key]) {
                Some(x) if replace(r, x) => out.extend_from_slice(x),
                _ => out.extend_from_slice(r),
            }
            n += 1;
        }
        for x in new {
            out.extend_from_slice(x);
            n += 1;
        }
        Table::new(Arc::new(out), 0, n, self.rec, self.key)
    }
}

/// A repository's index for a backup: read whole, or from the cache.
pub enum RepoIndex {
    /// Every index file read (their names).
    Full(Box<Index>, Vec<String>),
    /// The cache and the index files added since.
    Cached(Box<CachedIndex>),
}

impl RepoIndex {
    /// Index files read from the repository (the cache serves the rest).
    pub fn files_read(&self) -> u64 {
        match self {
            RepoIndex::Full(ix, _) => ix.index_files,
            RepoIndex::Cached(c) => c.extra.index_files,
        }
    }

    /// The view.
    pub fn view(&self) -> &dyn IndexView {
        match self {
            RepoIndex::Full(ix, _) => &**ix,
            RepoIndex::Cached(c) => &**c,
        }
    }
}

impl Store {
    /// The index of `repo` for a backup: from the cache and the index files
    /// added since where it can (see the module docs), else every index
    /// file (the cache then written anew; a failure to is logged).
    pub(crate) fn backup_index(&self, repo: &Repo2) -> Result<RepoIndex> {
        let names = repo.index_names()?;
        let path = self.index_cache_path(repo);
        if let Some(mut c) = self.read_index_cache(repo, &path) {
            let have: BTreeSet<&str> = names.iter().map(String::as_str).collect();
            let known: BTreeSet<&str> = c.names.iter().map(String::as_str).collect();
            if known.is_subset(&have) && have.len() - known.len() <= USE_UP_TO {
                let new: Vec<String> = have.difference(&known).map(|s| (*s).to_string()).collect();
                c.extra = repo.load_index_files(&new)?;
                c.extra_names = new;
                return Ok(RepoIndex::Cached(Box::new(c)));
            }
        }
        let ix = repo.load_index_files(&names)?;
        Ok(RepoIndex::Full(Box::new(ix), names))
    }

    /// After a backup wrote the index files `files` (named `names`): the
    /// cache written anew with them when the index was read whole, or when
    /// what is read beside the cache has grown (more than
    /// [`REWRITE_AFTER`] files or [`REWRITE_ENTRIES`] entries); else left
    /// as it is (the next backup reads those files beside it). A failure
    /// to write is logged.
    pub(crate) fn update_index_cache(
        &self,
        repo: &Repo2,
        rix: RepoIndex,
        files: &[IndexFile],
        names: Vec<String>,
    ) {
        let mut new = Index::default();
        for f in files {
            new.add(f);
        }
        let mut c = match rix {
            RepoIndex::Full(ix, known) => CachedIndex::of(&ix, known),
            RepoIndex::Cached(mut c) => {
                let entries = c.extra.chunks.len() + c.extra.files.len() + new.chunks.len();
                let files = c.extra_names.len() + names.len();
                if files <= REWRITE_AFTER && entries <= REWRITE_ENTRIES {
                    return;
                }
                let extra = std::mem::take(&mut c.extra);
                c.merge(&extra);
                let extra_names = std::mem::take(&mut c.extra_names);
                c.names.extend(extra_names);
                *c
            }
        };
        c.merge(&new);
        c.names.extend(names);
        self.write_index_cache(repo, &self.index_cache_path(repo), &c);
    }

    fn index_cache_path(&self, repo: &Repo2) -> std::path::PathBuf {
        let h = Sha256::digest(format!("{}\n{}", repo.config.repo_id, repo.location()));
        self.dir()
            .join("cache")
            .join(format!("index-{}", hex::encode(&h[..8])))
    }

    fn read_index_cache(&self, repo: &Repo2, path: &std::path::Path) -> Option<CachedIndex> {
        let bytes = std::fs::read(path).ok()?;
        let body = self.check_cache_mac(b"bbsync/index-cache/v1\0", &bytes)?;
        let (hlen, rest) = body.split_at_checked(4)?;
        let hlen = u32::from_be_bytes(hlen.try_into().ok()?) as usize;
        let hb = rest.get(..hlen)?;
        let h: Header = postcard::from_bytes(hb).ok()?;
        if h.format != FORMAT
            || h.instance != self.instance_id()
            || h.repo_id != repo.config.repo_id
            || h.location != repo.location()
        {
            return None;
        }
        let end = body.len();
        let data = Arc::new(bytes);
        let mut at = 4 + hlen;
        let mut take = |n: u64, rec: usize, key: usize| -> Option<Table> {
            let n = usize::try_from(n).ok()?;
            let len = n.checked_mul(rec)?;
            if at.checked_add(len)? > end {
                return None;
            }
            let t = Table::new(data.clone(), at, n, rec, key);
            at += len;
            // Sorted and unique, or not used.
            t.is_sorted().then_some(t)
        };
        let c = CachedIndex {
            chunks: take(h.chunks, CHUNK_REC, 32)?,
            manifests: take(h.manifests, MANIFEST_REC, 32)?,
            files: take(h.files, FILE_REC, 32)?,
            packs: take(h.packs, PACK_REC, 16)?,
            top_seq: h.top_seq,
            names: h.names,
            extra: Index::default(),
            extra_names: Vec::new(),
        };
        (at == end).then_some(c)
    }

    fn write_index_cache(&self, repo: &Repo2, path: &std::path::Path, c: &CachedIndex) {
        let h = Header {
            format: FORMAT,
            instance: self.instance_id(),
            repo_id: repo.config.repo_id.clone(),
            location: repo.location(),
            names: c.names.clone(),
            top_seq: c.top_seq,
            chunks: c.chunks.len() as u64,
            manifests: c.manifests.len() as u64,
            files: c.files.len() as u64,
            packs: c.packs.len() as u64,
        };
        let res = postcard::to_allocvec(&h)
            .map_err(std::io::Error::other)
            .and_then(|hb| {
                let mut body = Vec::new();
                body.extend_from_slice(&(hb.len() as u32).to_be_bytes());
                body.extend_from_slice(&hb);
                for t in [&c.chunks, &c.manifests, &c.files, &c.packs] {
                    body.extend_from_slice(t.bytes());
                }
                self.write_cache_file(b"bbsync/index-cache/v1\0", path, body)
            });
        if let Err(e) = res {
            tracing::warn!(
                "could not write the index cache of {} (the next backup reads every index file): {e}",
                repo.location()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Tables of every size class find exactly their keys, and an unsorted
    /// one is refused.
    #[test]
    fn tables_find_their_keys_at_every_size() {
        for n in [0usize, 1, 2, 15, 16, 17, 300, 5_000, 70_000] {
            let key = |i: usize| {
                let h = Sha256::digest(i.to_be_bytes());
                let mut r = h.to_vec();
                r.extend_from_slice(&(i as u64).to_be_bytes());
                r
            };
            let t = Table::of((0..n).map(key).collect(), 40, 32);
            assert_eq!(t.len(), n);
            assert!(t.is_sorted());
            for i in (0..n).step_by(7) {
                let k = key(i);
                assert_eq!(t.get(&k[..32]), Some(&k[..]), "n={n} i={i}");
            }
            for i in n..n + 50 {
                assert_eq!(t.get(&key(i)[..32]), None, "n={n} absent {i}");
            }
            if n >= 2 {
                let mut data = t.bytes().to_vec();
                data.rotate_left(40);
                let u = Table::new(Arc::new(data), 0, n, 40, 32);
                assert!(!u.is_sorted(), "n={n}");
            }
        }
    }
}
