//! The bytes of a pack file (`docs/format.md` §12.1): pure encoding and
//! parsing, no I/O.
//!
//! ```text
//! pack    = header || entry* || [trailer || footer]          (trailer and footer once sealed)
//! header  = "bbsync-pack\n" (12) || version u32 BE (1) || pack id (16)                 32 bytes
//! entry   = chunk id (32) || len u32 BE || stored chunk bytes (len)
//! trailer = per entry listed: chunk id (32) || offset u32 BE || len u32 BE            40 bytes each
//! footer  = count u32 BE || trailer offset u32 BE
//!           || SHA-256(pack id || trailer) (32) || "bbpkend\n" (8)                     48 bytes
//! ```
//!
//! An entry's `offset` is where its stored bytes start (just after its
//! 36-byte entry header); the index and the trailer both point there.

use bbsync_protocol::{ChunkId, chunk::MAX_STORED_CHUNK, manifest::MIN_STORED_CHUNK};
use sha2::{Digest, Sha256};

/// Pack files are sealed once they reach about this size.
pub const PACK_TARGET: u64 = 16 * 1024 * 1024;
/// Bytes of the pack header.
pub const HEADER_LEN: u64 = 32;
/// Bytes of an entry header (chunk id, length) before each chunk.
pub const ENTRY_HEADER_LEN: u64 = 36;
/// Bytes of one trailer entry.
pub const TRAILER_ENTRY_LEN: u64 = 40;
/// Bytes of the footer that ends a sealed pack.
pub const FOOTER_LEN: u64 = 48;
/// The pack format this build writes and reads.
pub const PACK_VERSION: u32 = 1;

const MAGIC: &[u8; 12] = b"bbsync-pack\n";
const FOOTER_MAGIC: &[u8; 8] = b"bbpkend\n";

/// A pack's id: 16 random bytes drawn when the pack is created. The pack
/// lives at `packs/<first two hex digits>/<32 hex digits>.pack`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        PackId(b)
    }

    /// Lower-case hex (32 digits).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 bytes in hex, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// Parses a pack file name (`<32 hex>.pack`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let hex_part = name.strip_suffix(".pack")?;
        if hex_part.len() != 32
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(hex_part, &mut b).ok()?;
        Some(PackId(b))
    }

    /// Its path relative to the pack directory.
    pub fn rel_path(&self) -> String {
        let h = self.to_hex();
        format!("{}/{h}.pack", &h[..2])
    }
}

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackId({})", self.short())
    }
}

/// Where a chunk's stored bytes are: in which pack, from which offset, how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// Offset of the stored bytes (after the entry header).
    pub offset: u32,
    /// Stored length.
    pub len: u32,
}

impl Location {
    /// Bytes of an encoded location (the value of an index record).
    pub const ENCODED_LEN: usize = 24;

    /// pack id (16) || offset u32 BE || len u32 BE.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[..16].copy_from_slice(&self.pack.0);
        b[16..20].copy_from_slice(&self.offset.to_be_bytes());
        b[20..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// The inverse of [`Location::encode`]; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[..16]);
        Some(Location {
            pack: PackId(pack),
            offset: u32::from_be_bytes(b[16..20].try_into().ok()?),
            len: u32::from_be_bytes(b[20..24].try_into().ok()?),
        })
    }

    /// The end of the stored bytes.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// Whether `len` is a possible stored chunk length.
pub fn valid_chunk_len(len: u64) -> bool {
    (MIN_STORED_CHUNK as u64..=MAX_STORED_CHUNK as u64).contains(&len)
}

/// The 32-byte header of a new pack.
pub fn encode_header(id: &PackId) -> [u8; HEADER_LEN as usize] {
    let mut b = [0u8; HEADER_LEN as usize];
    b[..12].copy_from_slice(MAGIC);
    b[12..16].copy_from_slice(&PACK_VERSION.to_be_bytes());
    b[16..].copy_from_slice(&id.0);
    b
}

/// Checks a pack header against the id its file name gives.
pub fn check_header(b: &[u8], id: &PackId) -> Result<(), String> {
    if b.len() < HEADER_LEN as usize || &b[..12] != MAGIC {
        return Err("not a bbsync pack (bad header)".into());
    }
    let version = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    if version != PACK_VERSION {
        return Err(format!(
            "pack format {version} (this build reads {PACK_VERSION})"
        ));
    }
    if b[16..32] != id.0 {
        return Err("its header names another pack".into());
    }
    Ok(())
}

/// The 36-byte header written before a chunk's bytes.
pub fn encode_entry_header(id: &ChunkId, len: u32) -> [u8; ENTRY_HEADER_LEN as usize] {
    let mut b = [0u8; ENTRY_HEADER_LEN as usize];
    b[..32].copy_from_slice(id.as_bytes());
    b[32..].copy_from_slice(&len.to_be_bytes());
    b
}

/// Reads an entry header.
pub fn decode_entry_header(b: &[u8]) -> Option<(ChunkId, u32)> {
    if b.len() < ENTRY_HEADER_LEN as usize {
        return None;
    }
    let id = ChunkId::from_slice(&b[..32]).ok()?;
    Some((id, u32::from_be_bytes(b[32..36].try_into().ok()?)))
}

/// One entry of a pack (from its trailer, or found by walking its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of the stored bytes.
    pub offset: u32,
    /// Stored length.
    pub len: u32,
}

/// Trailer and footer for the `entries` of a pack whose body ends at
/// `trailer_offset`.
pub fn encode_trailer(pack: &PackId, entries: &[Entry], trailer_offset: u32) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(entries.len() * TRAILER_ENTRY_LEN as usize + FOOTER_LEN as usize);
    for e in entries {
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
    }
    let mut h = Sha256::new();
    h.update(pack.0);
    h.update(&out);
    let sum: [u8; 32] = h.finalize().into();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(&trailer_offset.to_be_bytes());
    out.extend_from_slice(&sum);
    out.extend_from_slice(FOOTER_MAGIC);
    out
}

/// What the last 48 bytes of a file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footer {
    /// No footer magic: the pack is not sealed (or was cut short).
    Absent,
    /// A footer: how many trailer entries, where the trailer starts, its checksum.
    Present {
        /// Trailer entries.
        count: u32,
        /// Offset of the trailer (= end of the body).
        trailer_offset: u32,
        /// SHA-256(pack id || trailer).
        sum: [u8; 32],
    },
}

/// Parses the footer from the last [`FOOTER_LEN`] bytes of a file.
pub fn parse_footer(tail: &[u8]) -> Footer {
    if tail.len() != FOOTER_LEN as usize || &tail[40..] != FOOTER_MAGIC {
        return Footer::Absent;
    }
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&tail[8..40]);
    Footer::Present {
        count: u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]),
        trailer_offset: u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]]),
        sum,
    }
}

/// Checks a footer's geometry against the file length: the trailer must
/// sit between the header and the footer and fill that space exactly.
pub fn footer_fits(count: u32, trailer_offset: u32, file_len: u64) -> bool {
    let t = u64::from(trailer_offset);
    t >= HEADER_LEN && t + u64::from(count) * TRAILER_ENTRY_LEN + FOOTER_LEN == file_len
}

/// Decodes and checks a trailer (`bytes` = the trailer entries, without
/// the footer): checksum, then every entry inside the body, in increasing
/// order, not overlapping, each with a possible chunk length.
pub fn parse_trailer(
    pack: &PackId,
    bytes: &[u8],
    sum: &[u8; 32],
    trailer_offset: u32,
) -> Result<Vec<Entry>, String> {
    if !bytes.len().is_multiple_of(TRAILER_ENTRY_LEN as usize) {
        return Err("trailer length is not a whole number of entries".into());
    }
    let mut h = Sha256::new();
    h.update(pack.0);
    h.update(bytes);
    if h.finalize().as_slice() != sum {
        return Err("trailer checksum mismatch".into());
    }
    let mut out = Vec::with_capacity(bytes.len() / TRAILER_ENTRY_LEN as usize);
    let mut min_offset = HEADER_LEN + ENTRY_HEADER_LEN;
    for e in bytes.chunks_exact(TRAILER_ENTRY_LEN as usize) {
        let id = ChunkId::from_slice(&e[..32]).map_err(|e| e.to_string())?;
        let offset = u32::from_be_bytes([e[32], e[33], e[34], e[35]]);
        let len = u32::from_be_bytes([e[36], e[37], e[38], e[39]]);
        let end = u64::from(offset) + u64::from(len);
        if u64::from(offset) < min_offset || end > u64::from(trailer_offset) {
            return Err(format!(
                "trailer entry of chunk {} at {offset} is out of place",
                id.short()
            ));
        }
        if !valid_chunk_len(u64::from(len)) {
            return Err(format!(
                "trailer entry of chunk {} has an impossible length {len}",
                id.short()
            ));
        }
        min_offset = end + ENTRY_HEADER_LEN;
        out.push(Entry { id, offset, len });
    }
    Ok(out)
}

/// Walks the entries of a pack body held in `body` (the file from offset 0,
/// up to where the body ends or as far as it was read). Returns the entries
/// whose header and bytes are complete, and where the walk stopped; the
/// walk stops at the end of `body` or at the first entry header that is
/// impossible (then `Err` says why, with the entries before it).
pub fn walk_entries(body: &[u8]) -> (Vec<Entry>, u64, Option<String>) {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    let end = body.len() as u64;
    while pos < end {
        let Some((id, len)) = body
            .get(pos as usize..(pos + ENTRY_HEADER_LEN) as usize)
            .and_then(decode_entry_header)
        else {
            return (
                out,
                pos,
                Some(format!("entry header at {pos} is cut short")),
            );
        };
        if !valid_chunk_len(u64::from(len)) {
            return (
                out,
                pos,
                Some(format!(
                    "entry header at {pos} has an impossible length {len}"
                )),
            );
        }
        let offset = pos + ENTRY_HEADER_LEN;
        let stop = offset + u64::from(len);
        if stop > end {
            return (out, pos, Some(format!("entry at {pos} is cut short")));
        }
        out.push(Entry {
            id,
            offset: offset as u32,
            len,
        });
        pos = stop;
    }
    (out, pos, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn chunk(n: u8, len: usize) -> (ChunkId, Vec<u8>) {
        let b = vec![n; len];
        (ChunkId::of(&b), b)
    }

    #[test]
    fn a_pack_round_trips() {
        let id = PackId([7; 16]);
        let mut body = encode_header(&id).to_vec();
        let mut entries = Vec::new();
        for (n, len) in [(1u8, 30usize), (2, 5000), (3, 70)] {
            let (cid, b) = chunk(n, len);
            body.extend_from_slice(&encode_entry_header(&cid, len as u32));
            entries.push(Entry {
                id: cid,
                offset: body.len() as u32,
                len: len as u32,
            });
            body.extend_from_slice(&b);
        }
        let (walked, end, err) = walk_entries(&body);
        assert_eq!(walked, entries);
        assert_eq!(end, body.len() as u64);
        assert!(err.is_none());
        let t = encode_trailer(&id, &entries, body.len() as u32);
        let mut file = body.clone();
        file.extend_from_slice(&t);
        let tail = &file[file.len() - FOOTER_LEN as usize..];
        let Footer::Present {
            count,
            trailer_offset,
            sum,
        } = parse_footer(tail)
        else {
            panic!("no footer")
        };
        assert!(footer_fits(count, trailer_offset, file.len() as u64));
        let tb = &file[trailer_offset as usize..file.len() - FOOTER_LEN as usize];
        assert_eq!(
            parse_trailer(&id, tb, &sum, trailer_offset).unwrap(),
            entries
        );
        // The checksum binds the trailer to its pack.
        assert!(parse_trailer(&PackId([8; 16]), tb, &sum, trailer_offset).is_err());
        // Any flipped trailer byte is refused.
        for i in 0..tb.len() {
            let mut bad = tb.to_vec();
            bad[i] ^= 1;
            assert!(
                parse_trailer(&id, &bad, &sum, trailer_offset).is_err(),
                "byte {i}"
            );
        }
        // A cut pack has no footer; its walk stops at the cut.
        assert_eq!(
            parse_footer(&file[file.len() - 49..file.len() - 1]),
            Footer::Absent
        );
        let (w, _, err) = walk_entries(&body[..body.len() - 1]);
        assert_eq!(w.len(), 2);
        assert!(err.is_some());
        check_header(&body, &id).unwrap();
        assert!(check_header(&body, &PackId([9; 16])).is_err());
    }

    #[test]
    fn names_and_locations() {
        let id = PackId([0xab; 16]);
        assert_eq!(PackId::from_file_name(&format!("{id}.pack")), Some(id));
        assert_eq!(id.rel_path(), format!("ab/{id}.pack"));
        assert_eq!(PackId::from_file_name("AB.pack"), None);
        assert_eq!(PackId::from_file_name(&format!("{id}.pack.tmp")), None);
        let l = Location {
            pack: id,
            offset: 68,
            len: 1234,
        };
        assert_eq!(Location::decode(&l.encode()), Some(l));
        assert_eq!(Location::decode(&[0; 23]), None);
    }
}
