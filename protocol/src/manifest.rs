//! Signed object manifests.

use serde::{Deserialize, Serialize};

use crate::{
    ChunkId, Error, InstanceId, ObjectId, Result,
    chunk::{CHUNK_HEADER_LEN, MAX_STORED_CHUNK, TAG_LEN},
    ids::ManifestId,
    signed::{Signed, SignedBody},
};

/// One chunk of an object, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's id.
    pub id: ChunkId,
    /// Its stored (sealed) length in bytes.
    pub len: u32,
}

/// One version of one object, signed by the instance that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format number.
    pub format: u16,
    /// Fixed at creation.
    pub object_id: ObjectId,
    /// 1 for the first version, +1 on each change (tombstones included).
    pub version: u64,
    /// `config`, `applet`, `applet-data`, `message`, `file` or another lower-case word.
    pub kind: String,
    /// Name within the kind (a relative path for most kinds).
    pub name: String,
    /// Owning user, if any.
    pub owner: Option<String>,
    /// When this version was written (ms since the epoch).
    pub created_at_ms: u64,
    /// The instance that wrote and signed this version.
    pub author: InstanceId,
    /// A tombstone: the object was deleted in this version.
    pub deleted: bool,
    /// Total plaintext length.
    pub plaintext_len: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
    /// Encrypted [`ObjectMeta`] (the object's shape), sealed under the
    /// content key with [`crate::ChunkCipher::seal_meta`]; `None` on tombstones.
    #[serde(with = "serde_bytes")]
    pub meta: Option<Vec<u8>>,
}

/// The smallest possible sealed chunk: header and tag around empty data.
pub const MIN_STORED_CHUNK: usize = CHUNK_HEADER_LEN + TAG_LEN;

/// Longest object name in bytes.
pub const MAX_OBJECT_NAME: usize = 4096;
/// Longest kind in bytes.
pub const MAX_KIND: usize = 32;

/// Checks an object kind: 1-32 of `a-z`, `0-9`, `-`.
pub fn check_kind(kind: &str) -> Result<()> {
    if kind.is_empty()
        || kind.len() > MAX_KIND
        || !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(
            "object kind",
            format!("{kind:?} (1-{MAX_KIND} of a-z, 0-9, -)"),
        ));
    }
    Ok(())
}

/// Checks an object name or owner: non-empty, bounded, no control characters.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_OBJECT_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            what,
            format!("must be 1..={MAX_OBJECT_NAME} bytes without control characters"),
        ));
    }
    Ok(())
}

impl SignedBody for Manifest {
    const WHAT: &'static str = "manifest";
    const DOMAIN: &'static [u8] = b"bbsync/manifest/v1\0";
    const MAX_BODY: usize = 32 * 1024 * 1024;
    fn format(&self) -> u16 {
        self.format
    }
    fn signer(&self) -> InstanceId {
        self.author
    }
    fn validate(&self) -> Result<()> {
        check_kind(&self.kind)?;
        check_name("object name", &self.name)?;
        if let Some(owner) = &self.owner {
            check_name("object owner", owner)?;
        }
        if self.version == 0 {
            return Err(Error::invalid("manifest", "version 0"));
        }
        if self
            .meta
            .as_ref()
            .is_some_and(|m| m.len() > crate::chunk::MAX_META)
        {
            return Err(Error::invalid("manifest", "meta blob too large"));
        }
        if self.deleted
            && (!self.chunks.is_empty() || self.plaintext_len != 0 || self.meta.is_some())
        {
            return Err(Error::invalid("manifest", "tombstone with content"));
        }
        if self
            .chunks
            .iter()
            .any(|c| (c.len as usize) > MAX_STORED_CHUNK || (c.len as usize) < MIN_STORED_CHUNK)
        {
            return Err(Error::invalid("manifest", "chunk length out of range"));
        }
        Ok(())
    }
}

impl Signed<Manifest> {
    /// The manifest's id: SHA-256 of its signed body bytes.
    pub fn id(&self) -> ManifestId {
        ManifestId::of(self.body_bytes())
    }
}

/// What an object's plaintext is: the bytes of one file, or a directory
/// archive. Sealed into the manifest's `meta` field under the content key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// A single file's bytes.
    File,
    /// A deterministic directory archive (see `docs/format.md`).
    Dir,
}

/// The plaintext of a manifest's `meta` blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Format number.
    pub format: u16,
    /// File or directory.
    pub shape: Shape,
}

impl ObjectMeta {
    /// Encodes for sealing.
    pub fn encode(&self) -> Vec<u8> {
        crate::encoding::encode(self)
    }

    /// Decodes an opened meta blob.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let m: ObjectMeta = crate::encoding::decode("object meta", bytes, 1024)?;
        crate::encoding::check_format("object meta", m.format)?;
        Ok(m)
    }
}
