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
    format::{Index, IndexFile, PackKind},
    repo::Repo2,
    table::Table,
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
    /// [`IndexView::has_chunk`] of each id, in order.
    fn has_chunks(&self, ids: &[ChunkId]) -> Vec<bool> {
        ids.iter().map(|id| self.has_chunk(id)).collect()
    }
    /// [`IndexView::manifest_file`] of each id, in order.
    fn manifest_files(&self, ids: &[ManifestId]) -> Vec<Option<[u8; 32]>> {
        ids.iter().map(|id| self.manifest_file(id)).collect()
    }
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

impl CachedIndex {
    /// A manifest's current file: the cache's record of it (`cached`) or
    /// the entry of an index file read beside the cache, the higher seq's.
    fn current_file(&self, id: &ManifestId, cached: Option<&[u8]>) -> Option<[u8; 32]> {
        let cached = cached.map(|r| {
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
}

impl IndexView for CachedIndex {
    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunks.get(&id.0).is_some() || self.extra.chunks.contains_key(id)
    }
    fn manifest_file(&self, id: &ManifestId) -> Option<[u8; 32]> {
        self.current_file(id, self.manifests.get(&id.0))
    }
    // A backup asks these of every chunk and manifest of the store: in
    // groups ([`Table::get_each`]), not one lookup at a time.
    fn has_chunks(&self, ids: &[ChunkId]) -> Vec<bool> {
        let mut out = vec![false; ids.len()];
        self.chunks
            .get_each(ids.iter().map(|id| &id.0[..]), |i, r| {
                out[i] = r.is_some() || self.extra.chunks.contains_key(&ids[i]);
            });
        out
    }
    fn manifest_files(&self, ids: &[ManifestId]) -> Vec<Option<[u8; 32]>> {
        let mut out = vec![None; ids.len()];
        self.manifests
            .get_each(ids.iter().map(|id| &id.0[..]), |i, r| {
                out[i] = self.current_file(&ids[i], r);
            });
        out
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
        self.merge_recs(Recs::of_index(ix));
    }

    /// Merges sorted records into the tables (a manifest's higher seq wins).
    fn merge_recs(&mut self, r: Recs) {
        self.chunks = self.chunks.merged(r.chunks.as_flattened(), |_, _| false);
        // A manifest's file of a higher seq wins.
        self.manifests = self
            .manifests
            .merged(r.manifests.as_flattened(), |old, new| {
                new[32..40] > old[32..40]
            });
        self.files = self.files.merged(r.files.as_flattened(), |_, _| false);
        self.packs = self.packs.merged(r.packs.as_flattened(), |_, _| false);
        self.top_seq = self.top_seq.max(r.top_seq);
    }
}

/// What index contents add to the cache's tables, as their records: each
/// kind sorted by key, each key once (a manifest at its highest seq).
/// Fixed-size records, so that 200,000 of them are one allocation each,
/// not one per key.
#[derive(Default)]
struct Recs {
    chunks: Vec<[u8; CHUNK_REC]>,
    manifests: Vec<[u8; MANIFEST_REC]>,
    files: Vec<[u8; FILE_REC]>,
    packs: Vec<[u8; PACK_REC]>,
    top_seq: u64,
}

/// A manifest's cache record: its id, the seq (big-endian), its file.
fn manifest_rec(id: &[u8; 32], seq: u64, file: &[u8; 32]) -> [u8; MANIFEST_REC] {
    let mut r = [0u8; MANIFEST_REC];
    r[..32].copy_from_slice(id);
    r[32..40].copy_from_slice(&seq.to_be_bytes());
    r[40..].copy_from_slice(file);
    r
}

impl Recs {
    fn of_index(ix: &Index) -> Recs {
        let mut r = Recs {
            chunks: ix.chunks.keys().map(|k| k.0).collect(),
            manifests: ix
                .manifests
                .iter()
                .map(|(id, (seq, file))| manifest_rec(&id.0, *seq, file))
                .collect(),
            files: ix.files.keys().copied().collect(),
            packs: ix.packs.keys().map(|k| k.0).collect(),
            top_seq: ix.top_seq,
        };
        r.sort();
        r
    }

    /// The records of index files, as [`Index::add`] of each would leave
    /// them (without the index's maps).
    fn of_files(files: &[IndexFile]) -> Recs {
        let mut r = Recs::default();
        for f in files {
            r.top_seq = r.top_seq.max(f.seq);
            for p in &f.packs {
                r.packs.push(p.pack);
                match p.kind {
                    PackKind::Data => r.chunks.extend(p.entries.iter().map(|e| e.id)),
                    PackKind::Manifests => r.files.extend(p.entries.iter().map(|e| e.id)),
                }
            }
            r.manifests.extend(
                f.manifests
                    .iter()
                    .map(|m| manifest_rec(&m.manifest, f.seq, &m.file)),
            );
        }
        r.sort();
        r
    }

    /// Each kind sorted and each key kept once; of a manifest's records,
    /// the one of the highest seq, and of equal seqs the first.
    fn sort(&mut self) {
        self.chunks.sort_unstable();
        self.chunks.dedup();
        self.files.sort_unstable();
        self.files.dedup();
        self.packs.sort_unstable();
        self.packs.dedup();
        // By id, then seq descending (stable: equal seqs keep their order).
        self.manifests.sort_by(|a, b| {
            a[..32]
                .cmp(&b[..32])
                .then_with(|| b[32..40].cmp(&a[32..40]))
        });
        self.manifests
            .dedup_by(|later, first| later[..32] == first[..32]);
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
        let new = Recs::of_files(files);
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
        c.merge_recs(new);
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
                let hlen = (hb.len() as u32).to_be_bytes();
                let parts = [
                    &hlen[..],
                    &hb,
                    c.chunks.bytes(),
                    c.manifests.bytes(),
                    c.files.bytes(),
                    c.packs.bytes(),
                ];
                self.write_cache_file(b"bbsync/index-cache/v1\0", path, &parts)
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
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::backup::v2::format::{INDEX_FORMAT, IndexEntry, IndexPack, ManifestRef};

    fn h(tag: &str, i: u64) -> [u8; 32] {
        Sha256::digest(format!("{tag}{i}")).into()
    }

    fn empty() -> CachedIndex {
        CachedIndex::of(&Index::default(), Vec::new())
    }

    /// Index files whose records overlap: a chunk and a pack named twice,
    /// a manifest whose file changes in a later file (higher seq), and one
    /// named again by a file of a lower seq, read after it.
    fn files() -> Vec<IndexFile> {
        let entries = |tag: &str, r: std::ops::Range<u64>| -> Vec<IndexEntry> {
            r.map(|i| IndexEntry {
                id: h(tag, i),
                offset: (i * 10) as u32,
                len: 10,
            })
            .collect()
        };
        let pack = |kind, n: u8, e| IndexPack {
            kind,
            pack: [n; 16],
            pack_len: 1_000,
            entries: e,
        };
        let refs = |r: std::ops::Range<u64>, file_tag: &str| -> Vec<ManifestRef> {
            r.map(|i| ManifestRef {
                manifest: h("m", i),
                file: h(file_tag, i),
            })
            .collect()
        };
        let file = |seq, packs, manifests| IndexFile {
            format: INDEX_FORMAT,
            seq,
            packs,
            manifests,
        };
        vec![
            file(
                3,
                vec![
                    pack(PackKind::Data, 1, entries("c", 0..300)),
                    pack(PackKind::Manifests, 2, entries("f", 0..100)),
                ],
                refs(0..100, "f"),
            ),
            file(
                7,
                vec![
                    pack(PackKind::Data, 3, entries("c", 250..400)),
                    pack(PackKind::Data, 1, entries("c", 0..10)),
                    pack(PackKind::Manifests, 4, entries("g", 50..80)),
                ],
                refs(50..80, "g"),
            ),
            file(
                5,
                vec![pack(PackKind::Manifests, 5, entries("k", 60..120))],
                refs(60..120, "k"),
            ),
        ]
    }

    /// The records of index files, merged into the cache's tables, are
    /// what merging the same files read into an `Index` gives: the same
    /// chunks, files and packs once each, and each manifest at its file
    /// of the highest seq; into a non-empty cache too.
    #[test]
    fn records_of_index_files_merge_as_the_index_of_them_does() {
        let files = files();
        let mut ix = Index::default();
        for f in &files {
            ix.add(f);
        }
        let tables = |c: &CachedIndex| {
            [&c.chunks, &c.manifests, &c.files, &c.packs]
                .map(|t| t.bytes().to_vec())
                .to_vec()
        };
        let mut by_index = empty();
        by_index.merge(&ix);
        let mut by_recs = empty();
        by_recs.merge_recs(Recs::of_files(&files));
        assert_eq!(tables(&by_recs), tables(&by_index));
        assert_eq!(by_recs.top_seq, 7);
        assert_eq!(by_recs.chunks.len(), 400);
        assert_eq!(by_recs.packs.len(), 5);
        assert_eq!(by_recs.files.len(), 100 + 30 + 60);
        assert_eq!(by_recs.manifests.len(), 120);
        for (i, tag) in [(10, "f"), (55, "g"), (70, "g"), (85, "k"), (110, "k")] {
            let r = by_recs.manifests.get(&h("m", i)).unwrap_or_default();
            assert_eq!(r.get(40..), Some(&h(tag, i)[..]), "manifest {i}");
        }
        // Merged into a cache that has the first file already.
        let (first, rest) = files.split_at(1);
        let mut by_recs = empty();
        by_recs.merge_recs(Recs::of_files(first));
        by_recs.merge_recs(Recs::of_files(rest));
        let mut by_index = empty();
        by_index.merge(&ix);
        assert_eq!(tables(&by_recs), tables(&by_index));
    }
}
