//! Content keys, content-defined chunking and chunk sealing.
//!
//! ```text
//! nonce  = HMAC-SHA256(K, "bbsync/chunk-nonce/v1" || flags || data)[..12]
//! stored = format(1) || flags(1) || nonce(12) || AES-256-GCM(K, nonce, data, aad = "bbsync/chunk/v1" || flags)
//! ChunkId = SHA-256(stored)
//! ```
//! `data` is the plaintext, or its zstd compression when that is smaller
//! (flags bit 0). The synthetic nonce makes sealing deterministic per key:
//! the same bytes under the same key give the same chunk, which is what
//! lets versions of an object share chunks and re-imports write nothing.
//! The nonce is taken over exactly the bytes that are encrypted (with the
//! flags), so two different AES-GCM inputs under one key never share a
//! nonce, whatever compression level or zstd version produced them.

use std::io::Read;

use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag, aead::AeadInPlace};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{ChunkId, Error, Result};

/// FastCDC minimum chunk size; objects smaller than this are one chunk.
pub const CHUNK_MIN: u32 = 64 * 1024;
/// FastCDC average chunk size.
pub const CHUNK_AVG: u32 = 256 * 1024;
/// FastCDC maximum chunk size (also the largest plaintext a chunk may open to).
pub const CHUNK_MAX: u32 = 1024 * 1024;
/// Format byte of a sealed chunk.
pub const CHUNK_FORMAT: u8 = 1;
/// Flag: the sealed data is zstd-compressed.
pub const FLAG_COMPRESSED: u8 = 1;
/// Bytes before the ciphertext: format, flags, nonce.
pub const CHUNK_HEADER_LEN: usize = 2 + 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// The largest stored chunk: header + max plaintext + tag.
pub const MAX_STORED_CHUNK: usize = CHUNK_HEADER_LEN + CHUNK_MAX as usize + TAG_LEN;

const NONCE_DOMAIN: &[u8] = b"bbsync/chunk-nonce/v1";
const AAD_DOMAIN: &[u8] = b"bbsync/chunk/v1";
const META_NONCE_DOMAIN: &[u8] = b"bbsync/meta-nonce/v1";
const META_AAD: &[u8] = b"bbsync/meta/v1";
/// Largest sealed meta blob.
pub const MAX_META: usize = 64 * 1024;

/// An object's 32-byte content key. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
        ContentKey(k)
    }

    /// A key from fixed bytes (test vectors, unwrapping).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ContentKey(bytes)
    }

    /// The raw key bytes (for wrapping).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey([redacted])")
    }
}

/// Whether and how to compress chunk data before sealing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store data as is.
    None,
    /// zstd at this level, kept only when it makes the chunk smaller.
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(1)
    }
}

/// A sealed chunk: its id and the bytes to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// SHA-256 of `bytes`.
    pub id: ChunkId,
    /// `format || flags || nonce || ciphertext || tag`.
    pub bytes: Vec<u8>,
}

/// The per-object sealing state (AES key schedule and keyed HMAC), built once
/// per object and used for all its chunks.
#[derive(Clone)]
pub struct ChunkCipher {
    aead: Aes256Gcm,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCipher([redacted])")
    }
}

thread_local! {
    /// One zstd compression context per thread and level, reused across
    /// chunks (creating a context costs more than compressing a small chunk).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        slot.as_mut().and_then(|(_, c)| c.compress(data).ok())
    })
}

/// A cheap guess whether zstd can gain anything: compress a sample from the
/// middle of a large chunk and require 3% savings on it.
fn worth_compressing(plaintext: &[u8], level: i32) -> bool {
    const SAMPLE: usize = 16 * 1024;
    if plaintext.len() <= 4 * SAMPLE {
        return true;
    }
    let start = plaintext.len() / 2 - SAMPLE / 2;
    let sample = &plaintext[start..start + SAMPLE];
    match compress(sample, level) {
        Some(c) => c.len() < SAMPLE * 97 / 100,
        None => false,
    }
}

impl ChunkCipher {
    /// Prepares sealing and opening under `key`.
    pub fn new(key: &ContentKey) -> Self {
        let aead = Aes256Gcm::new(key.as_bytes().into());
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        ChunkCipher { aead, mac }
    }

    /// The synthetic nonce of the bytes to encrypt and their flags.
    pub fn nonce_for(&self, flags: u8, data: &[u8]) -> [u8; 12] {
        let mut mac = self.mac.clone();
        mac.update(NONCE_DOMAIN);
        mac.update(&[flags]);
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&tag[..12]);
        nonce
    }

    /// Seals one chunk of plaintext (at most [`CHUNK_MAX`] bytes).
    pub fn seal(&self, plaintext: &[u8], compression: Compression) -> Result<SealedChunk> {
        if plaintext.len() > CHUNK_MAX as usize {
            return Err(Error::invalid(
                "chunk",
                format!("plaintext of {} bytes exceeds {CHUNK_MAX}", plaintext.len()),
            ));
        }
        let compressed = match compression {
            Compression::Zstd(level)
                if !plaintext.is_empty() && worth_compressing(plaintext, level) =>
            {
                compress(plaintext, level).filter(|c| c.len() < plaintext.len())
            }
            _ => None,
        };
        let (flags, data): (u8, &[u8]) = match &compressed {
            Some(c) => (FLAG_COMPRESSED, c),
            None => (0, plaintext),
        };
        let nonce = self.nonce_for(flags, data);
        let mut bytes = Vec::with_capacity(CHUNK_HEADER_LEN + data.len() + TAG_LEN);
        bytes.push(CHUNK_FORMAT);
        bytes.push(flags);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(data);
        let aad = [AAD_DOMAIN, &[flags]].concat();
        let tag = self
            .aead
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad,
                &mut bytes[CHUNK_HEADER_LEN..],
            )
            .map_err(|_| Error::invalid("chunk", "AES-GCM refused the plaintext length"))?;
        bytes.extend_from_slice(&tag);
        Ok(SealedChunk {
            id: ChunkId::of(&bytes),
            bytes,
        })
    }

    /// Seals an object's metadata blob (the manifest's `meta` field):
    /// `nonce(12) || AES-256-GCM(K, nonce, meta, aad = "bbsync/meta/v1")` with
    /// `nonce = HMAC-SHA256(K, "bbsync/meta-nonce/v1" || meta)[..12]`.
    pub fn seal_meta(&self, meta: &[u8]) -> Result<Vec<u8>> {
        if meta.len() + 12 + TAG_LEN > MAX_META {
            return Err(Error::invalid("object meta", "too large"));
        }
        let mut mac = self.mac.clone();
        mac.update(META_NONCE_DOMAIN);
        mac.update(meta);
        let tag = mac.finalize().into_bytes();
        let mut out = Vec::with_capacity(12 + meta.len() + TAG_LEN);
        out.extend_from_slice(&tag[..12]);
        out.extend_from_slice(meta);
        let nonce = *Nonce::from_slice(&tag[..12]);
        let t = self
            .aead
            .encrypt_in_place_detached(&nonce, META_AAD, &mut out[12..])
            .map_err(|_| Error::invalid("object meta", "AES-GCM refused the length"))?;
        out.extend_from_slice(&t);
        Ok(out)
    }

    /// Opens a blob sealed by [`ChunkCipher::seal_meta`].
    pub fn open_meta(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 12 + TAG_LEN || sealed.len() > MAX_META {
            return Err(Error::malformed("object meta", "length out of range"));
        }
        let (nonce, rest) = sealed.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut data = ct.to_vec();
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                META_AAD,
                &mut data,
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::Decrypt {
                what: "object meta",
            })?;
        Ok(data)
    }

    /// Checks `stored` against `id`, then decrypts and decompresses it.
    pub fn open(&self, id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>> {
        check_chunk_id(id, stored)?;
        self.open_verified(stored)
    }

    /// Decrypts a chunk whose id the caller has already checked.
    pub fn open_verified(&self, stored: &[u8]) -> Result<Vec<u8>> {
        if stored.len() < CHUNK_HEADER_LEN + TAG_LEN || stored.len() > MAX_STORED_CHUNK {
            return Err(Error::malformed(
                "chunk",
                format!("length {} out of range", stored.len()),
            ));
        }
        if stored[0] != CHUNK_FORMAT {
            return Err(Error::UnsupportedFormat {
                what: "chunk",
                found: stored[0].into(),
                supported: CHUNK_FORMAT.into(),
            });
        }
        let flags = stored[1];
        if flags & !FLAG_COMPRESSED != 0 {
            return Err(Error::malformed(
                "chunk",
                format!("unknown flags {flags:#04x}"),
            ));
        }
        let nonce = Nonce::from_slice(&stored[2..14]);
        let (ct, tag) =
            stored[CHUNK_HEADER_LEN..].split_at(stored.len() - CHUNK_HEADER_LEN - TAG_LEN);
        let mut data = ct.to_vec();
        let aad = [AAD_DOMAIN, &[flags]].concat();
        self.aead
            .decrypt_in_place_detached(nonce, &aad, &mut data, Tag::from_slice(tag))
            .map_err(|_| Error::Decrypt { what: "chunk" })?;
        if flags & FLAG_COMPRESSED != 0 {
            zstd::bulk::decompress(&data, CHUNK_MAX as usize)
                .map_err(|e| Error::malformed("chunk", format!("zstd: {e}")))
        } else {
            Ok(data)
        }
    }
}

/// Checks that `stored` hashes to `id` (no key needed).
pub fn check_chunk_id(id: &ChunkId, stored: &[u8]) -> Result<()> {
    let actual = ChunkId::of(stored);
    if &actual == id {
        Ok(())
    } else {
        Err(Error::HashMismatch {
            expected: id.to_hex(),
            actual: actual.to_hex(),
        })
    }
}

/// Splits a byte stream into FastCDC chunks with the bbsync parameters.
pub fn chunker<R: Read>(reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
}

/// Splits bytes in memory with the bbsync parameters, returning chunk
/// ranges (the same boundaries as [`chunker`]; none for empty input).
pub fn chunk_ranges(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|c| c.offset..c.offset + c.length)
        .collect()
}
