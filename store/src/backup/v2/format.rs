//! The files of a format-2 repository, encoded and checked in memory
//! (docs/format.md §17). Nothing here reads or writes storage: callers hand
//! in the bytes they read and write the bytes they get.

use std::collections::HashMap;

use bbsync_protocol::{ChunkId, ManifestId, encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::repofile::MAX_MANIFEST_FILE;
use crate::packs::{
    ENTRY_HEADER_LEN, FOOTER_LEN, HEADER_LEN, PackId, TRAILER_ENTRY_LEN, valid_chunk_len,
};
use crate::packs::{check_header, encode_header, parse_footer};

/// The repository format of §17.
pub const CONFIG_FORMAT: u16 = 2;
/// Format of an index file.
pub const INDEX_FORMAT: u16 = 1;
/// Largest index file read.
pub const MAX_INDEX_FILE: usize = 64 * 1024 * 1024;
/// Entries per index file a backup writes at most.
pub const INDEX_FILE_ENTRIES: usize = 200_000;
/// Share of a store pack's entry bytes that must be wanted for the pack to
/// be put in whole (linked or uploaded) rather than repacked, in percent.
pub const MOSTLY_LIVE_PERCENT: u64 = 80;

/// `config` (JSON, unknown keys refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// [`CONFIG_FORMAT`].
    pub format: u16,
    /// Random id of this repository (32 hex).
    pub repo_id: String,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// Size a repacked pack is cut at, in bytes.
    pub pack_target: u64,
}

impl ConfigFile {
    /// Decodes and checks `config`; `loc` names the repository in errors.
    pub fn decode(loc: &str, bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Probe {
            format: u16,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| format!("{loc}/config is not a valid config file: {e}"))?;
        if probe.format != CONFIG_FORMAT {
            return Err(if probe.format > CONFIG_FORMAT {
                format!(
                    "backup repository {loc} has format {}; this bbsync reads formats 1 and {CONFIG_FORMAT} (upgrade bbsync)",
                    probe.format
                )
            } else {
                format!(
                    "{loc}/config says format {}, which has no config file",
                    probe.format
                )
            });
        }
        let c: ConfigFile = serde_json::from_slice(bytes)
            .map_err(|e| format!("{loc}/config is not a valid config file: {e}"))?;
        let id_ok = c.repo_id.len() == 32
            && c.repo_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !id_ok {
            return Err(format!(
                "{loc}/config is not a valid config file: repo_id must be 32 lower-case hex digits"
            ));
        }
        if !(HEADER_LEN + 1..=1 << 30).contains(&c.pack_target) {
            return Err(format!(
                "{loc}/config is not a valid config file: pack_target {} is out of range",
                c.pack_target
            ));
        }
        Ok(c)
    }

    /// Pretty-printed JSON with a final newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// What a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PackKind {
    /// Sealed chunks, under `data/` (entry ids are ChunkIds).
    Data,
    /// `ManifestFile`s, under `manifests/` (entry ids are ManifestIds).
    Manifests,
}

impl PackKind {
    /// The repository directory of packs of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            PackKind::Data => "data",
            PackKind::Manifests => "manifests",
        }
    }

    /// Whether an entry's bytes hash to its id (a chunk's id is checked as
    /// a ChunkId, a manifest file's as the SHA-256 of its bytes).
    pub fn entry_matches(self, id: &[u8; 32], data: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        match self {
            PackKind::Data => {
                bbsync_protocol::chunk::check_chunk_id(&bbsync_protocol::ChunkId(*id), data).is_ok()
            }
            PackKind::Manifests => Sha256::digest(data).as_slice() == id,
        }
    }

    /// Whether `len` is a possible entry length in a pack of this kind.
    pub fn valid_len(self, len: u64) -> bool {
        match self {
            PackKind::Data => valid_chunk_len(len),
            PackKind::Manifests => (1..=MAX_MANIFEST_FILE as u64).contains(&len),
        }
    }

    /// The pack's path in the repository.
    pub fn path(self, id: &PackId) -> String {
        match self {
            PackKind::Data => data_pack_path(id),
            PackKind::Manifests => manifest_pack_path(id),
        }
    }
}

/// `data/<hh>/<32 hex>.pack`.
pub fn data_pack_path(id: &PackId) -> String {
    format!("data/{}", id.rel_path())
}

/// `manifests/<hh>/<32 hex>.pack`.
pub fn manifest_pack_path(id: &PackId) -> String {
    format!("manifests/{}", id.rel_path())
}

/// `index/<64 hex>` of an index file's bytes.
pub fn index_path(bytes: &[u8]) -> String {
    format!("index/{}", hex::encode(Sha256::digest(bytes)))
}

/// `snapshots/<id>` (format 2: the raw signed bytes, no `.json`).
pub fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}")
}

/// `keys/<instance hex>-<seq>`: one escrow, never replaced.
pub fn key_path(instance_hex: &str, seq: u64) -> String {
    format!("keys/{instance_hex}-{seq:06}")
}

/// `<instance hex>-<seq>` of a key file's name (in `keys/`).
pub fn key_name(name: &str) -> Option<(&str, u64)> {
    let (inst, seq) = name.rsplit_once('-')?;
    let ok = !inst.is_empty() && !seq.is_empty() && seq.bytes().all(|c| c.is_ascii_digit());
    Some((inst, seq.parse().ok().filter(|_| ok)?))
}

/// The directory of sequence claims (§17.5): `seqs/<seq>` exists while a
/// backup that drew that snapshot sequence has not written its snapshot.
pub const SEQ_CLAIMS: &str = "seqs";

/// `seqs/<seq>` (at least 6 digits, as in snapshot ids).
pub fn seq_claim_path(seq: u64) -> String {
    format!("{SEQ_CLAIMS}/{seq:06}")
}

/// The sequence of a claim's name (in `seqs/`).
pub fn seq_claim_name(name: &str) -> Option<u64> {
    (!name.is_empty() && name.len() <= 20 && name.bytes().all(|c| c.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// One entry of an index file: an id, where its bytes start in the pack
/// (after the 36-byte entry header) and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// ChunkId or ManifestId bytes.
    pub id: [u8; 32],
    /// Offset of the entry's bytes in the pack.
    pub offset: u32,
    /// Their length.
    pub len: u32,
}

impl IndexEntry {
    /// End of the entry's bytes.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// The entries of one pack in an index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// Data or manifests.
    pub kind: PackKind,
    /// The pack.
    pub pack: [u8; 16],
    /// The pack file's length.
    pub pack_len: u64,
    /// Strictly increasing by offset, each inside the body.
    pub entries: Vec<IndexEntry>,
}

/// Which manifest file (by the SHA-256 of its bytes, its entry id in a
/// manifest pack) holds a manifest as of an index file's `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRef {
    /// The ManifestId.
    pub manifest: [u8; 32],
    /// SHA-256 of the `ManifestFile` bytes.
    pub file: [u8; 32],
}

/// `index/<sha256>` (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// [`INDEX_FORMAT`].
    pub format: u16,
    /// Sequence number of the snapshot whose backup wrote it (decides
    /// between two files of one manifest: the higher wins).
    pub seq: u64,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
    /// The manifests whose file this backup added or changed (a new
    /// envelope after `rekey` gives a new file for the same ManifestId).
    pub manifests: Vec<ManifestRef>,
}

impl IndexFile {
    /// Encodes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes an index file read from `path` and checks it: its name is
    /// the SHA-256 of its bytes, and every pack's entries are in order, do
    /// not overlap, lie inside the pack's body and have possible lengths.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, String> {
        if path != index_path(bytes) {
            return Err(format!(
                "{path}: its content does not hash to its name (changed or damaged)"
            ));
        }
        let f: IndexFile = encoding::decode("index file", bytes, MAX_INDEX_FILE)
            .map_err(|e| format!("{path}: {e}"))?;
        if f.format != INDEX_FORMAT {
            return Err(format!(
                "{path}: index format {} (this bbsync reads {INDEX_FORMAT}; upgrade bbsync)",
                f.format
            ));
        }
        for p in &f.packs {
            check_entries(p.kind, &p.entries, p.pack_len)
                .map_err(|e| format!("{path}: pack {}: {e}", PackId(p.pack).short()))?;
        }
        Ok(f)
    }
}

/// Checks a pack's entries against its length: in increasing order, each
/// after the header and its own entry header, not overlapping, inside the
/// body (before trailer and footer), of a possible length for `kind`.
pub fn check_entries(kind: PackKind, entries: &[IndexEntry], pack_len: u64) -> Result<(), String> {
    let body_end = pack_len.saturating_sub(FOOTER_LEN + TRAILER_ENTRY_LEN * entries.len() as u64);
    let mut min = HEADER_LEN + ENTRY_HEADER_LEN;
    for e in entries {
        if !kind.valid_len(u64::from(e.len)) {
            return Err(format!(
                "entry {} has an impossible length {}",
                hex::encode(&e.id[..8]),
                e.len
            ));
        }
        if u64::from(e.offset) < min || e.end() > body_end {
            return Err(format!(
                "entry {} at {} is out of place",
                hex::encode(&e.id[..8]),
                e.offset
            ));
        }
        min = e.end() + ENTRY_HEADER_LEN;
    }
    Ok(())
}

/// Where an id's bytes are in the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoLocation {
    /// The pack.
    pub pack: PackId,
    /// Offset of the bytes.
    pub offset: u32,
    /// Their length.
    pub len: u32,
}

/// Every index file of a repository, merged in memory.
#[derive(Debug, Default, Clone)]
pub struct Index {
    /// Chunk -> where (any copy will do: each is checked when read).
    pub chunks: HashMap<ChunkId, RepoLocation>,
    /// Manifest file (SHA-256 of its bytes) -> where.
    pub files: HashMap<[u8; 32], RepoLocation>,
    /// Manifest -> (seq of the index file, its file): the highest seq wins.
    pub manifests: HashMap<ManifestId, (u64, [u8; 32])>,
    /// Every pack an index file names, with its kind and length.
    pub packs: HashMap<PackId, (PackKind, u64)>,
    /// Index files merged.
    pub index_files: u64,
    /// The highest `seq` of an index file merged (0 when none).
    pub top_seq: u64,
}

impl Index {
    /// Room for the entries of `files` (at 200,000 objects, growing the
    /// maps one doubling at a time held each map's old and new tables at
    /// once: 50 MB).
    pub fn reserve_for(&mut self, files: &[IndexFile]) {
        let (mut chunks, mut manifest_files) = (0, 0);
        for p in files.iter().flat_map(|f| &f.packs) {
            match p.kind {
                PackKind::Data => chunks += p.entries.len(),
                PackKind::Manifests => manifest_files += p.entries.len(),
            }
        }
        self.chunks.reserve(chunks);
        self.files.reserve(manifest_files);
        self.manifests
            .reserve(files.iter().map(|f| f.manifests.len()).sum());
        self.packs
            .reserve(files.iter().map(|f| f.packs.len()).sum());
    }

    /// Adds one decoded index file.
    pub fn add(&mut self, f: &IndexFile) {
        self.index_files += 1;
        self.top_seq = self.top_seq.max(f.seq);
        for p in &f.packs {
            let pack = PackId(p.pack);
            self.packs.insert(pack, (p.kind, p.pack_len));
            for e in &p.entries {
                let at = RepoLocation {
                    pack,
                    offset: e.offset,
                    len: e.len,
                };
                match p.kind {
                    PackKind::Data => self.chunks.entry(ChunkId(e.id)).or_insert(at),
                    PackKind::Manifests => self.files.entry(e.id).or_insert(at),
                };
            }
        }
        for m in &f.manifests {
            let slot = self
                .manifests
                .entry(ManifestId(m.manifest))
                .or_insert((f.seq, m.file));
            if f.seq > slot.0 {
                *slot = (f.seq, m.file);
            }
        }
    }

    /// Where the current file of a manifest is.
    pub fn manifest(&self, id: &ManifestId) -> Option<([u8; 32], RepoLocation)> {
        let (_, file) = self.manifests.get(id)?;
        Some((*file, *self.files.get(file)?))
    }
}

/// Builds one pack in memory in the store's pack format (§12.1): header,
/// entries, trailer and footer. Used for repacked data packs and for
/// manifest packs.
#[derive(Debug)]
pub struct PackBuilder {
    kind: PackKind,
    id: PackId,
    bytes: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl PackBuilder {
    /// A new, empty pack with a fresh random id.
    pub fn new(kind: PackKind) -> Self {
        let id = PackId::random();
        PackBuilder {
            kind,
            id,
            bytes: encode_header(&id).to_vec(),
            entries: Vec::new(),
        }
    }

    /// Its id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes so far (without trailer and footer).
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends an entry; refuses a length impossible for the kind, or a
    /// pack that would pass 4 GiB (offsets are u32).
    pub fn push(&mut self, id: [u8; 32], data: &[u8]) -> Result<(), String> {
        let len = data.len() as u64;
        if !self.kind.valid_len(len) {
            return Err(format!(
                "entry {} has an impossible length {len}",
                hex::encode(&id[..8])
            ));
        }
        let offset = self.len() + ENTRY_HEADER_LEN;
        let after = offset + len + TRAILER_ENTRY_LEN * (self.entries.len() as u64 + 1) + FOOTER_LEN;
        if after > u64::from(u32::MAX) {
            return Err("pack would pass 4 GiB".into());
        }
        self.bytes.extend_from_slice(&id);
        self.bytes.extend_from_slice(&(len as u32).to_be_bytes());
        self.bytes.extend_from_slice(data);
        self.entries.push(IndexEntry {
            id,
            offset: offset as u32,
            len: len as u32,
        });
        Ok(())
    }

    /// Seals the pack: its bytes and its index entry.
    pub fn finish(mut self) -> (Vec<u8>, IndexPack) {
        let trailer_offset = self.bytes.len() as u32;
        let mut trailer = Vec::with_capacity(self.entries.len() * TRAILER_ENTRY_LEN as usize);
        for e in &self.entries {
            trailer.extend_from_slice(&e.id);
            trailer.extend_from_slice(&e.offset.to_be_bytes());
            trailer.extend_from_slice(&e.len.to_be_bytes());
        }
        let mut h = Sha256::new();
        h.update(self.id.0);
        h.update(&trailer);
        let sum: [u8; 32] = h.finalize().into();
        self.bytes.extend_from_slice(&trailer);
        self.bytes
            .extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(&trailer_offset.to_be_bytes());
        self.bytes.extend_from_slice(&sum);
        self.bytes.extend_from_slice(b"bbpkend\n");
        let idx = IndexPack {
            kind: self.kind,
            pack: self.id.0,
            pack_len: self.bytes.len() as u64,
            entries: self.entries,
        };
        (self.bytes, idx)
    }
}

/// Reads the trailer of a whole sealed pack `bytes` named `id`: header,
/// footer geometry, trailer checksum, then the entries as
/// [`check_entries`] wants them and each entry header agreeing with its
/// trailer entry. Returns the entries (for `verify`, index rebuilds and
/// deciding whether a store pack is mostly live).
pub fn read_sealed_pack(
    kind: PackKind,
    id: &PackId,
    bytes: &[u8],
) -> Result<Vec<IndexEntry>, String> {
    let entries = read_trailer(kind, id, bytes, bytes.len() as u64, &mut |at, len| {
        Ok(bytes[at as usize..(at + len) as usize].to_vec())
    })?;
    for e in &entries {
        let h = (u64::from(e.offset) - ENTRY_HEADER_LEN) as usize;
        if !header_agrees(e, &bytes[h..]) {
            return Err(entry_header_disagrees(e));
        }
    }
    Ok(entries)
}

/// [`read_sealed_pack`] up to its last step: the header (`head`: the
/// pack's first bytes), the footer's geometry and the trailer's checksum
/// of a pack of `len` bytes whose footer and trailer `read(offset, len)`
/// gives (within `len`, as the footer's geometry was checked); the
/// entries the trailer lists, checked by [`check_entries`]. The entry
/// headers in the body are the caller's ([`header_agrees`]).
pub fn read_trailer(
    kind: PackKind,
    id: &PackId,
    head: &[u8],
    len: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>, String>,
) -> Result<Vec<IndexEntry>, String> {
    check_header(head, id)?;
    if len < HEADER_LEN + FOOTER_LEN {
        return Err("cut short (no footer)".into());
    }
    let tail = read(len - FOOTER_LEN, FOOTER_LEN)?;
    let crate::packs::Footer::Present {
        count,
        trailer_offset,
        sum,
    } = parse_footer(&tail)
    else {
        return Err("not sealed or cut short (no footer)".into());
    };
    if !crate::packs::footer_fits(count, trailer_offset, len) {
        return Err("footer does not fit the file length (cut short or extended)".into());
    }
    let trailer_at = u64::from(trailer_offset);
    let trailer = read(trailer_at, len - FOOTER_LEN - trailer_at)?;
    let mut h = Sha256::new();
    h.update(id.0);
    h.update(&trailer);
    if h.finalize().as_slice() != sum {
        return Err("trailer checksum mismatch".into());
    }
    let mut entries = Vec::with_capacity(count as usize);
    for t in trailer.chunks_exact(TRAILER_ENTRY_LEN as usize) {
        let mut eid = [0u8; 32];
        eid.copy_from_slice(&t[..32]);
        entries.push(IndexEntry {
            id: eid,
            offset: u32::from_be_bytes([t[32], t[33], t[34], t[35]]),
            len: u32::from_be_bytes([t[36], t[37], t[38], t[39]]),
        });
    }
    check_entries(kind, &entries, len)?;
    Ok(entries)
}

/// Whether `header` (the pack's bytes from `e`'s entry header on) starts
/// with the id and length the trailer gives for `e`.
pub fn header_agrees(e: &IndexEntry, header: &[u8]) -> bool {
    header.len() >= ENTRY_HEADER_LEN as usize
        && header[..32] == e.id
        && header[32..36] == e.len.to_be_bytes()
}

/// The error of an entry header that [`header_agrees`] refuses.
pub fn entry_header_disagrees(e: &IndexEntry) -> String {
    let h = u64::from(e.offset) - ENTRY_HEADER_LEN;
    format!("entry header at {h} disagrees with the trailer")
}

/// Whether a sealed store pack is put into the repository whole: the
/// entry bytes the snapshot wants (and the repository lacks) are at least
/// [`MOSTLY_LIVE_PERCENT`] of all its entry bytes.
pub fn mostly_live(entries: &[IndexEntry], wanted: impl Fn(&[u8; 32]) -> bool) -> bool {
    let total: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
    let live: u64 = entries
        .iter()
        .filter(|e| wanted(&e.id))
        .map(|e| u64::from(e.len))
        .sum();
    total > 0 && live * 100 >= total * MOSTLY_LIVE_PERCENT
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> ([u8; 32], Vec<u8>) {
        let data = vec![n; len];
        (Sha256::digest(&data).into(), data)
    }

    #[test]
    fn a_built_pack_reads_back_and_in_store_format() {
        let mut b = PackBuilder::new(PackKind::Data);
        let id = b.id();
        let items: Vec<_> = (1..=3).map(|n| chunk(n, 100 * usize::from(n))).collect();
        for (cid, d) in &items {
            b.push(*cid, d).unwrap();
        }
        let (bytes, idx) = b.finish();
        assert_eq!(idx.pack_len, bytes.len() as u64);
        let entries = read_sealed_pack(PackKind::Data, &id, &bytes).unwrap();
        assert_eq!(entries, idx.entries);
        for (e, (cid, d)) in entries.iter().zip(&items) {
            assert_eq!(&e.id, cid);
            assert_eq!(&bytes[e.offset as usize..e.end() as usize], &d[..]);
        }
        // The store's own trailer parser reads it too: it is a store pack.
        let crate::packs::Footer::Present {
            trailer_offset,
            sum,
            ..
        } = parse_footer(&bytes[bytes.len() - FOOTER_LEN as usize..])
        else {
            panic!("no footer");
        };
        let t = &bytes[trailer_offset as usize..bytes.len() - FOOTER_LEN as usize];
        let store = crate::packs::parse_trailer(&id, t, &sum, trailer_offset).unwrap();
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn damaged_packs_are_refused() {
        let mut b = PackBuilder::new(PackKind::Data);
        let id = b.id();
        let (cid, d) = chunk(7, 500);
        b.push(cid, &d).unwrap();
        let (bytes, _) = b.finish();
        let cut = &bytes[..bytes.len() - 1];
        assert!(read_sealed_pack(PackKind::Data, &id, cut).is_err());
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 60] ^= 1; // in the trailer
        assert_eq!(
            read_sealed_pack(PackKind::Data, &id, &flipped).unwrap_err(),
            "trailer checksum mismatch"
        );
        assert!(read_sealed_pack(PackKind::Data, &PackId::random(), &bytes).is_err());
        let mut hdr = bytes.clone();
        hdr[HEADER_LEN as usize] ^= 1; // the entry header's id
        assert!(
            read_sealed_pack(PackKind::Data, &id, &hdr)
                .unwrap_err()
                .contains("disagrees with the trailer")
        );
    }

    #[test]
    fn impossible_lengths_are_refused_per_kind() {
        let mut b = PackBuilder::new(PackKind::Data);
        assert!(b.push([1; 32], &[0u8; 5]).is_err());
        let mut m = PackBuilder::new(PackKind::Manifests);
        m.push([1; 32], &[0u8; 5]).unwrap();
        assert!(m.push([2; 32], &[]).is_err());
    }

    #[test]
    fn index_files_are_checked_against_their_name_and_packs() {
        let mut b = PackBuilder::new(PackKind::Data);
        let (cid, d) = chunk(3, 300);
        b.push(cid, &d).unwrap();
        let (_, p) = b.finish();
        let f = IndexFile {
            format: INDEX_FORMAT,
            seq: 4,
            packs: vec![p.clone()],
            manifests: vec![ManifestRef {
                manifest: [5; 32],
                file: cid,
            }],
        };
        let bytes = f.encode();
        let path = index_path(&bytes);
        assert_eq!(IndexFile::decode(&path, &bytes).unwrap(), f);
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(
            IndexFile::decode(&path, &bad)
                .unwrap_err()
                .contains("does not hash to its name")
        );
        // An entry out of the pack's body, even with a matching name.
        let mut q = p;
        q.entries[0].offset = (q.pack_len - 10) as u32;
        let g = IndexFile {
            format: INDEX_FORMAT,
            seq: 4,
            packs: vec![q],
            manifests: Vec::new(),
        };
        let gb = g.encode();
        assert!(
            IndexFile::decode(&index_path(&gb), &gb)
                .unwrap_err()
                .contains("out of place")
        );
    }

    #[test]
    fn the_newest_index_file_wins_for_a_manifest() {
        let mk = |seq: u64, offset: u32| IndexFile {
            format: INDEX_FORMAT,
            seq,
            packs: vec![IndexPack {
                kind: PackKind::Manifests,
                pack: [seq as u8; 16],
                pack_len: 1 << 20,
                entries: vec![IndexEntry {
                    id: [seq as u8; 32],
                    offset,
                    len: 10,
                }],
            }],
            manifests: vec![ManifestRef {
                manifest: [9; 32],
                file: [seq as u8; 32],
            }],
        };
        let mut ix = Index::default();
        ix.add(&mk(5, 100));
        ix.add(&mk(3, 200));
        ix.add(&mk(7, 300));
        ix.add(&mk(6, 400));
        let (file, at) = ix.manifest(&ManifestId([9; 32])).unwrap();
        assert_eq!((file, at.offset, at.pack), ([7; 32], 300, PackId([7; 16])));
        assert_eq!(ix.packs.len(), 4);
        assert_eq!(ix.index_files, 4);
    }

    #[test]
    fn config_round_trip_and_refusals() {
        let c = ConfigFile {
            format: CONFIG_FORMAT,
            repo_id: "0123456789abcdef0123456789abcdef".into(),
            created: "2026-11-30T08:00:00Z".into(),
            pack_target: 16 << 20,
        };
        assert_eq!(ConfigFile::decode("R", &c.encode()).unwrap(), c);
        let newer = br#"{"format":3,"repo_id":"x","created":"y","pack_target":1}"#;
        assert_eq!(
            ConfigFile::decode("R", newer).unwrap_err(),
            "backup repository R has format 3; this bbsync reads formats 1 and 2 (upgrade bbsync)"
        );
        let extra = br#"{"format":2,"repo_id":"0123456789abcdef0123456789abcdef","created":"y","pack_target":100,"x":1}"#;
        assert!(ConfigFile::decode("R", extra).is_err());
    }

    #[test]
    fn mostly_live_is_by_bytes() {
        let e = |n: u8, len: u32| IndexEntry {
            id: [n; 32],
            offset: 0,
            len,
        };
        let es = [e(1, 800), e(2, 200)];
        assert!(mostly_live(&es, |id| id[0] == 1));
        assert!(!mostly_live(&es, |id| id[0] == 2));
        assert!(!mostly_live(&[], |_| true));
    }
}
