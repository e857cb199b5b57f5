//! Backup snapshots, signed by the instance whose store was backed up (its
//! *host*).
//!
//! A backup repository is written by whoever can write its directory or
//! bucket; nothing in it is trusted because of where it lies. The host signs
//! every snapshot (formats 3 and 2: `ed25519("bbsync/snapshot/v2/sha256\0" ||
//! SHA-256(body))`; format 1: `ed25519("bbsync/snapshot/v1\0" || body)`),
//! carried in the [`crate::signed`] wire wrapper like manifests, so that a restore can
//! check who took it and that its object list and trust table are exactly
//! what that host wrote. Format 3 also signs, through one digest, the
//! manifest file the host backed up for each object
//! ([`Snapshot::manifest_files`]). Whether the host itself is to be believed is the
//! restoring node's decision (its own id, an instance it trusts `full`, or
//! one the operator names), never the repository's.
//!
//! The type is independent of the repository layout: repository format 1
//! keeps the wire bytes base64-encoded in `snapshots/<id>.json`, a later
//! format can store them as they are.

use serde::{Deserialize, Serialize};

use crate::{
    Error, InstanceCard, InstanceId, ManifestId, ObjectId, Result, Role,
    encoding::FORMAT_V1,
    manifest::{MAX_VERSION, check_kind},
    signed::{Signed, SignedBody, Unverified},
};

/// One object version a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotObject {
    /// The object.
    pub object_id: ObjectId,
    /// Its version.
    pub version: u64,
    /// The id of that version's manifest.
    pub manifest_id: ManifestId,
}

/// One entry of the host's trust table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTrust {
    /// Wire bytes of the instance's self-signed card.
    #[serde(with = "serde_bytes")]
    pub card: Vec<u8>,
    /// Its role on the host.
    pub role: Role,
}

/// One backup: what it holds and who took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format number (1).
    pub format: u16,
    /// `<YYYYMMDDTHHMMSSZ>-<8 hex>`: also the snapshot's name in a repository.
    pub id: String,
    /// When it was taken (ms since the epoch).
    pub created_ms: u64,
    /// The host: the instance whose store this is, and the signer.
    pub host: InstanceId,
    /// Wire bytes of the host's self-signed card (its name and x25519 key).
    #[serde(with = "serde_bytes")]
    pub host_card: Vec<u8>,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// bbsync version that wrote it.
    pub bbsync_version: String,
    /// Store schema version of the host.
    pub schema_version: u32,
    /// The `--only` filters it was taken with (empty: everything).
    pub only: Vec<String>,
    /// Objects by kind, sorted by kind.
    pub counts: Vec<(String, u64)>,
    /// Sum of the stored (sealed) chunk lengths of the objects.
    pub bytes: u64,
    /// Sum of the plaintext lengths of the objects.
    pub plaintext_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// The host's trust table.
    pub trust: Vec<SnapshotTrust>,
    /// Repository path of the identity escrow this backup wrote, if any.
    pub identity_escrow: Option<String>,
    /// The objects, sorted by object id (each once).
    pub objects: Vec<SnapshotObject>,
    /// Format 3 and later: [`manifest_files_digest`] of the manifest files
    /// the host backed up for `objects` (`None` in formats 1 and 2). A
    /// reader that finds the same digest over the files a repository holds
    /// for these objects knows that those files are byte for byte the ones
    /// the host signed for. Written by hand after `objects` (32 raw bytes),
    /// so not part of serde's view of the type.
    #[serde(skip)]
    pub manifest_files: Option<[u8; 32]>,
}

/// Domain of [`manifest_files_digest`].
pub const MANIFEST_FILES_DOMAIN: &[u8] = b"bbsync/snapshot/manifest-files/v1\0";

/// The digest a format-3 snapshot signs over the manifest files of its
/// objects: SHA-256 of [`MANIFEST_FILES_DOMAIN`], then each file's
/// SHA-256 (32 bytes: a backup repository's file hash, the `ManifestRef`
/// of format 2), in the order of the snapshot's objects. A file a reader
/// cannot find counts as 32 zero bytes (the digest then differs).
pub fn manifest_files_digest(files: impl IntoIterator<Item = Option<[u8; 32]>>) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(MANIFEST_FILES_DOMAIN);
    for f in files {
        h.update(f.unwrap_or([0; 32]));
    }
    h.finalize().into()
}

/// The snapshot format this version writes: 3, whose signature covers
/// `"bbsync/snapshot/v2/sha256\0" || SHA-256(body)` like format 2's, and
/// whose body ends with [`Snapshot::manifest_files`] (formats 1 and 2 end
/// with the object list; format 1's signature covers
/// `"bbsync/snapshot/v1\0" || body`; all three are read).
pub const SNAPSHOT_FORMAT: u16 = 3;

/// The first format whose body carries [`Snapshot::manifest_files`].
pub const MANIFEST_FILES_FORMAT: u16 = 3;

/// Longest snapshot id.
pub const MAX_SNAPSHOT_ID: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 4096;
/// Longest tag, `--only` value, version string or escrow path, in bytes.
pub const MAX_LABEL: usize = 256;

fn check_text(what: &'static str, s: &str, max: usize, empty_ok: bool) -> Result<()> {
    if (!empty_ok && s.is_empty()) || s.len() > max {
        return Err(Error::invalid(what, format!("must be 1..={max} bytes")));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            what,
            format!("contains the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Checks a snapshot description: at most [`MAX_DESCRIPTION`] bytes, no
/// control characters (a description is printed in listings).
pub fn check_description(s: &str) -> Result<()> {
    check_text("snapshot description", s, MAX_DESCRIPTION, true)
}

/// Checks a snapshot tag: 1..=[`MAX_LABEL`] bytes, no control characters.
pub fn check_tag(s: &str) -> Result<()> {
    check_text("snapshot tag", s, MAX_LABEL, false)
}

fn card_of(what: &'static str, bytes: &[u8]) -> Result<Signed<InstanceCard>> {
    Unverified::<InstanceCard>::decode(bytes)
        .and_then(|u| u.verify_self_signed())
        .map_err(|e| Error::invalid(what, e.to_string()))
}

impl Snapshot {
    /// The host's card, verified (self-signed, and of the host).
    pub fn host_card(&self) -> Result<Signed<InstanceCard>> {
        let card = card_of("snapshot host card", &self.host_card)?;
        if card.instance != self.host {
            return Err(Error::invalid(
                "snapshot",
                "the host card is another instance's",
            ));
        }
        Ok(card)
    }

    /// The trust table's cards, verified (self-signed), with their roles.
    pub fn trust_cards(&self) -> Result<Vec<(Signed<InstanceCard>, Role)>> {
        self.trust
            .iter()
            .map(|t| Ok((card_of("snapshot trust card", &t.card)?, t.role)))
            .collect()
    }
}

impl SignedBody for Snapshot {
    const WHAT: &'static str = "snapshot";
    const DOMAIN: &'static [u8] = b"bbsync/snapshot/v1\0";
    const PREHASH_DOMAIN: &'static [u8] = b"bbsync/snapshot/v2/sha256\0";
    /// 128 MiB: about two million objects.
    const MAX_BODY: usize = 128 * 1024 * 1024;
    const FORMAT: u16 = SNAPSHOT_FORMAT;
    fn format(&self) -> u16 {
        self.format
    }
    fn prehashed(&self) -> bool {
        self.format >= 2
    }
    /// postcard's encoding, with the object list (all but a few hundred
    /// bytes) written by hand: serde writes an id array a byte at a time,
    /// and [`crate::encoding::encode`] sizes before it writes.
    fn encode_body(&self) -> Vec<u8> {
        /// The fields before `objects`, borrowed, in their order.
        #[derive(Serialize)]
        struct Head<'a> {
            format: u16,
            id: &'a str,
            created_ms: u64,
            host: &'a InstanceId,
            #[serde(with = "serde_bytes")]
            host_card: &'a [u8],
            description: &'a str,
            tags: &'a [String],
            bbsync_version: &'a str,
            schema_version: u32,
            only: &'a [String],
            counts: &'a [(String, u64)],
            bytes: u64,
            plaintext_bytes: u64,
            chunks: u64,
            trust: &'a [SnapshotTrust],
            identity_escrow: &'a Option<String>,
        }
        let mut out = crate::encoding::encode(&Head {
            format: self.format,
            id: &self.id,
            created_ms: self.created_ms,
            host: &self.host,
            host_card: &self.host_card,
            description: &self.description,
            tags: &self.tags,
            bbsync_version: &self.bbsync_version,
            schema_version: self.schema_version,
            only: &self.only,
            counts: &self.counts,
            bytes: self.bytes,
            plaintext_bytes: self.plaintext_bytes,
            chunks: self.chunks,
            trust: &self.trust,
            identity_escrow: &self.identity_escrow,
        });
        out.reserve(10 + self.objects.len() * (16 + 10 + 32));
        crate::encoding::push_varint(&mut out, self.objects.len() as u64);
        for o in &self.objects {
            out.extend_from_slice(o.object_id.as_bytes());
            crate::encoding::push_varint(&mut out, o.version);
            out.extend_from_slice(o.manifest_id.as_bytes());
        }
        if self.format >= MANIFEST_FILES_FORMAT {
            // (`validate` refuses a format-3 snapshot without it)
            out.extend_from_slice(&self.manifest_files.unwrap_or_default());
        }
        out
    }
    fn decode_body(bytes: &[u8]) -> Result<Self> {
        // The format comes first (a varint), read before the rest: a format
        // this version does not know is refused as such, and from format 3
        // on the last 32 bytes are the manifest files' digest, the rest the
        // fields of format 2.
        let (format, _) = postcard::take_from_bytes::<u16>(bytes)
            .map_err(|_| Error::invalid(Self::WHAT, "bad format number"))?;
        if !(FORMAT_V1..=SNAPSHOT_FORMAT).contains(&format) {
            return Err(Error::UnsupportedFormat {
                what: Self::WHAT,
                found: format,
                supported: SNAPSHOT_FORMAT,
            });
        }
        let (fields, files) = if format >= MANIFEST_FILES_FORMAT {
            let at = bytes
                .len()
                .checked_sub(32)
                .ok_or_else(|| Error::invalid(Self::WHAT, "body too short"))?;
            let (fields, files) = bytes.split_at(at);
            let files: [u8; 32] = files
                .try_into()
                .map_err(|_| Error::invalid(Self::WHAT, "body too short"))?;
            (fields, Some(files))
        } else {
            (bytes, None)
        };
        let mut value: Self = crate::encoding::decode(Self::WHAT, fields, Self::MAX_BODY)?;
        value.manifest_files = files;
        Ok(value)
    }
    fn signer(&self) -> InstanceId {
        self.host
    }
    fn validate(&self) -> Result<()> {
        if !(FORMAT_V1..=SNAPSHOT_FORMAT).contains(&self.format) {
            return Err(Error::UnsupportedFormat {
                what: Self::WHAT,
                found: self.format,
                supported: SNAPSHOT_FORMAT,
            });
        }
        if (self.format >= MANIFEST_FILES_FORMAT) != self.manifest_files.is_some() {
            return Err(Error::invalid(
                "snapshot",
                "the manifest files' digest is there exactly from format 3 on",
            ));
        }
        if self.id.is_empty()
            || self.id.len() > MAX_SNAPSHOT_ID
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::invalid(
                "snapshot id",
                format!("{:?} (1-{MAX_SNAPSHOT_ID} of A-Z, a-z, 0-9, -)", self.id),
            ));
        }
        self.host_card()?;
        check_description(&self.description)?;
        for t in &self.tags {
            check_tag(t)?;
        }
        for o in &self.only {
            check_text("snapshot --only value", o, MAX_LABEL, false)?;
        }
        check_text("bbsync version", &self.bbsync_version, MAX_LABEL, false)?;
        if let Some(p) = &self.identity_escrow {
            check_text("identity escrow path", p, MAX_LABEL, false)?;
        }
        for (kind, _) in &self.counts {
            check_kind(kind)?;
        }
        if self.counts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::invalid("snapshot", "counts not sorted by kind"));
        }
        let cards = self.trust_cards()?;
        for (i, (c, _)) in cards.iter().enumerate() {
            if c.instance == self.host || cards[..i].iter().any(|(d, _)| d.instance == c.instance) {
                return Err(Error::invalid(
                    "snapshot",
                    "trust table names an instance twice, or the host",
                ));
            }
        }
        if self
            .objects
            .windows(2)
            .any(|w| w[0].object_id >= w[1].object_id)
        {
            return Err(Error::invalid(
                "snapshot",
                "objects not sorted by object id (or listed twice)",
            ));
        }
        if self
            .objects
            .iter()
            .any(|o| o.version == 0 || o.version > MAX_VERSION)
        {
            return Err(Error::invalid("snapshot", "object version out of range"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-3 snapshot with every field set.
    fn sample() -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            id: "20261130T000000Z-000001-abcd".into(),
            created_ms: 1_764_460_800_000,
            host: InstanceId([7; 32]),
            host_card: vec![1, 2, 3],
            description: "nightly".into(),
            tags: vec!["a".into(), "bb".into()],
            bbsync_version: "0.1.0".into(),
            schema_version: 4,
            only: vec!["message".into()],
            counts: vec![("file".into(), 3), ("message".into(), 300)],
            bytes: 1 << 40,
            plaintext_bytes: 12_345,
            chunks: 999,
            trust: vec![SnapshotTrust {
                card: vec![9; 200],
                role: Role::Blind,
            }],
            identity_escrow: Some("keys/x".into()),
            objects: (0..1000u64)
                .map(|i| SnapshotObject {
                    object_id: ObjectId([(i % 251) as u8; 16]),
                    version: i * i * 1000 + 1,
                    manifest_id: ManifestId([(i % 13) as u8; 32]),
                })
                .collect(),
            manifest_files: Some([5; 32]),
        }
    }

    /// The hand-written body is postcard's, byte for byte.
    #[test]
    fn the_body_by_hand_is_postcards() {
        let snap = sample();
        // Format 3: postcard's fields, then the 32 bytes of the digest.
        let with_files = |s: &Snapshot| {
            let mut b = crate::encoding::encode(s);
            b.extend_from_slice(&s.manifest_files.unwrap_or_default());
            b
        };
        assert_eq!(snap.encode_body(), with_files(&snap));
        let back = Snapshot::decode_body(&snap.encode_body()).expect("decodes");
        assert_eq!(back, snap);
        let empty = Snapshot {
            objects: Vec::new(),
            identity_escrow: None,
            ..snap.clone()
        };
        assert_eq!(empty.encode_body(), with_files(&empty));
        // Format 2: postcard's fields only.
        let v2 = Snapshot {
            format: 2,
            manifest_files: None,
            ..snap.clone()
        };
        assert_eq!(v2.encode_body(), crate::encoding::encode(&v2));
        assert_eq!(
            Snapshot::decode_body(&v2.encode_body()).expect("decodes"),
            v2
        );
    }

    #[test]
    fn the_manifest_files_digest_is_there_exactly_from_format_3_on() {
        let snap = Snapshot {
            objects: Vec::new(),
            manifest_files: None,
            ..sample()
        };
        let e = snap.validate().expect_err("format 3 without the digest");
        assert!(e.to_string().contains("from format 3 on"), "{e}");
        let v2 = Snapshot {
            format: 2,
            manifest_files: Some([1; 32]),
            ..snap.clone()
        };
        let e = v2.validate().expect_err("format 2 with a digest");
        assert!(e.to_string().contains("from format 3 on"), "{e}");
        // A format-3 body cut short is refused, not read as format 2.
        let body = Snapshot {
            manifest_files: Some([1; 32]),
            ..snap
        }
        .encode_body();
        assert!(Snapshot::decode_body(&body[..body.len() - 1]).is_err());
        assert!(Snapshot::decode_body(&body[..20]).is_err());
        // A later format is refused as such, whatever follows.
        let mut later = body.clone();
        later[0] = 4;
        let e = Snapshot::decode_body(&later).expect_err("format 4");
        assert_eq!(e.kind(), crate::ErrorKind::UnsupportedFormat, "{e}");
        // The digest depends on every file and on their order.
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ab = manifest_files_digest([Some(a), Some(b)]);
        assert_ne!(ab, manifest_files_digest([Some(b), Some(a)]));
        assert_ne!(ab, manifest_files_digest([Some(a), None]));
        assert_eq!(ab, manifest_files_digest([Some(a), Some(b)]));
    }
}
