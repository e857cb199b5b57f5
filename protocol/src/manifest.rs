//! Signed object manifests.
//!
//! Format 2 (written since the key commitment) adds `key_commit` after the
//! fields of format 1: `HMAC-SHA256(K, "bbsync/key-commit/v1" || object_id)`
//! for a content version, `None` on a tombstone. Whoever unwraps a content
//! key checks it against the commitment ([`Manifest::check_key`]), so no
//! envelope entry, even one validly signed by a trusted wrapper, can make a
//! reader use another key for the object. Format 1 manifests (written before)
//! are still read; they commit to nothing (see `docs/format.md`).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{
    ChunkId, ContentKey, Error, InstanceId, ObjectId, Result,
    chunk::{CHUNK_HEADER_LEN, MAX_STORED_CHUNK, TAG_LEN},
    encoding::{FORMAT_V1, decode, encode},
    ids::ManifestId,
    signed::{Signed, SignedBody},
};

/// The manifest format this version writes: format 1 plus `key_commit`.
pub const MANIFEST_FORMAT: u16 = 2;

/// Highest object version a manifest or envelope entry may carry: 2^53 - 1,
/// the largest integer that every JSON reader holds exactly. There is always
/// room for a next version below `u64::MAX` ([`next_version`]).
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// The version after `v`, or `None` when `v` is already [`MAX_VERSION`]
/// (or above): an object at the last version cannot change any more.
pub fn next_version(v: u64) -> Option<u64> {
    if v < MAX_VERSION { Some(v + 1) } else { None }
}

const KEY_COMMIT_DOMAIN: &[u8] = b"bbsync/key-commit/v1";

/// The key commitment of a content key for one object:
/// `HMAC-SHA256(K, "bbsync/key-commit/v1" || object_id)`.
pub fn key_commitment(key: &ContentKey, object_id: &ObjectId) -> [u8; 32] {
    key_mac(key, object_id).finalize().into_bytes().into()
}

fn key_mac(key: &ContentKey, object_id: &ObjectId) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(KEY_COMMIT_DOMAIN);
    mac.update(object_id.as_bytes());
    mac
}

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
    /// Format 2: the content key's commitment ([`key_commitment`]); `None`
    /// on tombstones and in every format-1 manifest.
    pub key_commit: Option<[u8; 32]>,
}

/// The body layout of format 1 (no `key_commit`): read, and re-encoded only
/// to check that a format-1 body is canonical.
#[derive(Serialize, Deserialize)]
struct ManifestV1 {
    format: u16,
    object_id: ObjectId,
    version: u64,
    kind: String,
    name: String,
    owner: Option<String>,
    created_at_ms: u64,
    author: InstanceId,
    deleted: bool,
    plaintext_len: u64,
    chunks: Vec<ChunkRef>,
    #[serde(with = "serde_bytes")]
    meta: Option<Vec<u8>>,
}

impl From<ManifestV1> for Manifest {
    fn from(m: ManifestV1) -> Self {
        Manifest {
            format: m.format,
            object_id: m.object_id,
            version: m.version,
            kind: m.kind,
            name: m.name,
            owner: m.owner,
            created_at_ms: m.created_at_ms,
            author: m.author,
            deleted: m.deleted,
            plaintext_len: m.plaintext_len,
            chunks: m.chunks,
            meta: m.meta,
            key_commit: None,
        }
    }
}

impl Manifest {
    /// Checks that `key` is this object's content key: for a format-2
    /// content version, its commitment must equal `key_commit` (compared in
    /// constant time); a tombstone has no key; a format-1 manifest commits
    /// to nothing and accepts any key (the residual risk of old manifests,
    /// docs/format.md §7).
    pub fn check_key(&self, key: &ContentKey) -> Result<()> {
        match (&self.key_commit, self.format) {
            (Some(commit), _) => key_mac(key, &self.object_id)
                .verify_slice(commit)
                .map_err(|_| Error::KeyCommitment {
                    object: self.object_id.short(),
                    version: self.version,
                }),
            (None, FORMAT_V1) => Ok(()),
            (None, _) if self.deleted => {
                Err(Error::invalid("manifest", "a tombstone has no content key"))
            }
            (None, _) => Err(Error::invalid("manifest", "no key commitment")),
        }
    }
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

/// Checks an object name or owner: non-empty, bounded, no control
/// characters and no invisible formatting characters (bidi overrides and
/// isolates, zero-width spaces, ...; see [`crate::text::is_hidden`]).
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_OBJECT_NAME {
        return Err(Error::invalid(
            what,
            format!("must be 1..={MAX_OBJECT_NAME} bytes"),
        ));
    }
    if let Some(c) = crate::text::first_hidden(name) {
        return Err(Error::invalid(
            what,
            format!(
                "contains U+{:04X}, a control or invisible formatting character (names may hold neither)",
                c as u32
            ),
        ));
    }
    Ok(())
}

impl SignedBody for Manifest {
    const WHAT: &'static str = "manifest";
    const DOMAIN: &'static [u8] = b"bbsync/manifest/v1\0";
    const MAX_BODY: usize = 32 * 1024 * 1024;
    const FORMAT: u16 = MANIFEST_FORMAT;
    fn format(&self) -> u16 {
        self.format
    }
    fn signer(&self) -> InstanceId {
        self.author
    }
    fn encode_body(&self) -> Vec<u8> {
        if self.format == FORMAT_V1 {
            encode(&ManifestV1 {
                format: self.format,
                object_id: self.object_id,
                version: self.version,
                kind: self.kind.clone(),
                name: self.name.clone(),
                owner: self.owner.clone(),
                created_at_ms: self.created_at_ms,
                author: self.author,
                deleted: self.deleted,
                plaintext_len: self.plaintext_len,
                chunks: self.chunks.clone(),
                meta: self.meta.clone(),
            })
        } else {
            encode(self)
        }
    }
    fn decode_body(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX_BODY {
            return Err(Error::TooLarge {
                what: Self::WHAT,
                len: bytes.len(),
                limit: Self::MAX_BODY,
            });
        }
        let (format, _) =
            postcard::take_from_bytes::<u16>(bytes).map_err(|e| Error::malformed(Self::WHAT, e))?;
        match format {
            FORMAT_V1 => Ok(decode::<ManifestV1>(Self::WHAT, bytes, Self::MAX_BODY)?.into()),
            MANIFEST_FORMAT => decode(Self::WHAT, bytes, Self::MAX_BODY),
            found => Err(Error::UnsupportedFormat {
                what: Self::WHAT,
                found,
                supported: MANIFEST_FORMAT,
            }),
        }
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
        if self.version > MAX_VERSION {
            return Err(Error::invalid(
                "manifest",
                format!(
                    "version {} is above the highest allowed ({MAX_VERSION})",
                    self.version
                ),
            ));
        }
        match (self.format, self.deleted, self.key_commit.is_some()) {
            (FORMAT_V1, _, true) => {
                return Err(Error::invalid("manifest", "format 1 has no key commitment"));
            }
            (MANIFEST_FORMAT, true, true) => {
                return Err(Error::invalid(
                    "manifest",
                    "tombstone with a key commitment",
                ));
            }
            (MANIFEST_FORMAT, false, false) => {
                return Err(Error::invalid("manifest", "no key commitment"));
            }
            _ => {}
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

/// The format of [`ObjectMeta`] this version writes: format 1 plus `mode`.
pub const OBJECT_META_FORMAT: u16 = 2;

/// The permission bits an object (and a directory archive entry) may
/// carry: `rwxrwxrwx`. Setuid, setgid and sticky are never recorded nor
/// written: modes come from a peer.
pub const MODE_BITS: u32 = 0o777;

/// The plaintext of a manifest's `meta` blob.
///
/// Format 1 is `format, shape`; format 2 (written since modes are kept)
/// adds `mode`: the permission bits ([`MODE_BITS`]) of the file, or of the
/// root directory of a directory object. A format-1 meta has no mode
/// (`None`): such an object is written with the umask, as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Format number (1 or 2).
    pub format: u16,
    /// File or directory.
    pub shape: Shape,
    /// Format 2: the permission bits (`0o000..=0o777`); `None` in format 1.
    pub mode: Option<u32>,
}

/// The layout of format 1.
#[derive(Serialize, Deserialize)]
struct ObjectMetaV1 {
    format: u16,
    shape: Shape,
}

/// The layout of format 2.
#[derive(Serialize, Deserialize)]
struct ObjectMetaV2 {
    format: u16,
    shape: Shape,
    mode: u32,
}

impl ObjectMeta {
    /// The meta this version writes: format 2, with `mode` masked to
    /// [`MODE_BITS`].
    pub fn new(shape: Shape, mode: u32) -> Self {
        ObjectMeta {
            format: OBJECT_META_FORMAT,
            shape,
            mode: Some(mode & MODE_BITS),
        }
    }

    /// Encodes for sealing (in the layout of its format; a format-1 meta
    /// drops `mode`, a format-2 one without a mode records 0).
    pub fn encode(&self) -> Vec<u8> {
        if self.format == FORMAT_V1 {
            encode(&ObjectMetaV1 {
                format: self.format,
                shape: self.shape,
            })
        } else {
            encode(&ObjectMetaV2 {
                format: self.format,
                shape: self.shape,
                mode: self.mode.unwrap_or(0),
            })
        }
    }

    /// Decodes an opened meta blob (format 1 or 2). A mode with bits
    /// outside [`MODE_BITS`] is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "object meta";
        const LIMIT: usize = 1024;
        if bytes.len() > LIMIT {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                limit: LIMIT,
            });
        }
        let (format, _) =
            postcard::take_from_bytes::<u16>(bytes).map_err(|e| Error::malformed(WHAT, e))?;
        match format {
            FORMAT_V1 => {
                let m: ObjectMetaV1 = decode(WHAT, bytes, LIMIT)?;
                Ok(ObjectMeta {
                    format: m.format,
                    shape: m.shape,
                    mode: None,
                })
            }
            OBJECT_META_FORMAT => {
                let m: ObjectMetaV2 = decode(WHAT, bytes, LIMIT)?;
                if m.mode & !MODE_BITS != 0 {
                    return Err(Error::invalid(
                        WHAT,
                        format!(
                            "mode {:#o} has bits outside {MODE_BITS:#o} (setuid, setgid and sticky are never kept)",
                            m.mode
                        ),
                    ));
                }
                Ok(ObjectMeta {
                    format: m.format,
                    shape: m.shape,
                    mode: Some(m.mode),
                })
            }
            found => Err(Error::UnsupportedFormat {
                what: WHAT,
                found,
                supported: OBJECT_META_FORMAT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn object_meta_format_2_encodes_the_mode_after_the_shape() {
        // format varint 2, shape variant 0/1, mode varint (0o640 = 416 =
        // 0xa0 0x03).
        let m = ObjectMeta::new(Shape::File, 0o640);
        assert_eq!(m.encode(), vec![2, 0, 0xa0, 0x03]);
        assert_eq!(ObjectMeta::decode(&m.encode()).unwrap(), m);
        let d = ObjectMeta::new(Shape::Dir, 0o755);
        assert_eq!(d.encode(), vec![2, 1, 0xed, 0x03]);
        assert_eq!(ObjectMeta::decode(&d.encode()).unwrap().mode, Some(0o755));
        // Setuid, setgid and sticky are masked when written...
        assert_eq!(ObjectMeta::new(Shape::File, 0o4755).mode, Some(0o755));
        // ...and refused when read.
        let e = ObjectMeta::decode(&[2, 0, 0xed, 0x13]).unwrap_err();
        assert!(
            e.to_string().contains("mode 0o4755 has bits outside 0o777"),
            "{e}"
        );
    }

    #[test]
    fn object_meta_format_1_reads_without_a_mode_and_re_encodes_the_same() {
        let v1 = [1u8, 1];
        let m = ObjectMeta::decode(&v1).unwrap();
        assert_eq!(
            m,
            ObjectMeta {
                format: 1,
                shape: Shape::Dir,
                mode: None
            }
        );
        assert_eq!(m.encode(), v1);
        // A format-1 blob with a mode after it is not format 1.
        assert!(ObjectMeta::decode(&[1, 0, 0xa0, 0x03]).is_err());
        let e = ObjectMeta::decode(&[3, 0, 0]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::UnsupportedFormat);
    }
}
