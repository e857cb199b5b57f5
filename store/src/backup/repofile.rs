//! The serde types of every file in a backup repository (docs/backup.md
//! describes them byte by byte).

use std::collections::BTreeMap;

use bbsync_protocol::{ManifestId, ObjectId, Role, encoding};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// The repository format this build writes and reads.
pub const REPO_FORMAT: u16 = 1;
/// Format of the snapshot files this build writes: `{format: 2, snapshot:
/// base64 of the host-signed wire bytes}` ([`SignedSnapshotFile`]).
/// Format 1 ([`LegacySnapshotFile`], unsigned JSON) is still read.
pub const SNAPSHOT_FILE_FORMAT: u16 = 2;
/// Largest manifest file read (a manifest plus its envelope).
pub const MAX_MANIFEST_FILE: usize = 48 * 1024 * 1024;

/// `repo.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoFile {
    /// Repository format.
    pub format: u16,
    /// Random id of this repository (hex).
    pub repo_id: String,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

/// `manifests/<ManifestId>`: a signed manifest and its full envelope, as
/// the store holds them (postcard).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Format number (1).
    pub format: u16,
    /// Wire bytes of the signed manifest.
    pub manifest: ByteBuf,
    /// Wire bytes of each envelope entry.
    pub envelope: Vec<ByteBuf>,
}

impl ManifestFile {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes strictly.
    pub fn decode(bytes: &[u8]) -> bbsync_protocol::Result<Self> {
        let f: ManifestFile = encoding::decode("manifest file", bytes, MAX_MANIFEST_FILE)?;
        encoding::check_format("manifest file", f.format)?;
        Ok(f)
    }
}

/// One object of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapObject {
    /// Object id (hex).
    #[serde(with = "hex_object_id")]
    pub object_id: ObjectId,
    /// Version.
    pub version: u64,
    /// Manifest id (hex).
    #[serde(with = "hex_manifest_id")]
    pub manifest_id: ManifestId,
}

/// A trusted instance, as the backed-up store held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapTrust {
    /// Its card string (`bbsync1...`, self-signed).
    pub card: String,
    /// `full` or `blind` in the file.
    #[serde(with = "role_text")]
    pub role: Role,
}

/// A [`Role`] written as `full` or `blind` (its `Display` and `FromStr`),
/// as snapshot files have always held it.
mod role_text {
    use bbsync_protocol::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(role)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `snapshots/<id>.json` as written since snapshots are signed: the wire
/// bytes of a host-signed [`bbsync_protocol::Snapshot`], base64 (RFC 4648,
/// with padding).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedSnapshotFile {
    /// [`SNAPSHOT_FILE_FORMAT`].
    pub format: u16,
    /// base64 of the signed snapshot's wire bytes.
    pub snapshot: String,
}

/// `snapshots/<id>.json` as written before snapshots were signed (format
/// 1): plain JSON whose object list only has an unkeyed checksum, so anyone
/// who can write the repository can change it. Read for `backups list`,
/// `show` and `verify`; restored only with `--trust-host`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySnapshotFile {
    /// Repository format it was written with (1).
    pub format: u16,
    /// `<utc>-<short>`, also the file name without `.json`.
    pub id: String,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The same, in ms since the epoch.
    pub created_ms: u64,
    /// The card string of the instance whose store was backed up.
    pub host: String,
    /// The host's name.
    pub host_name: String,
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
    /// Objects by kind.
    pub counts: BTreeMap<String, u64>,
    /// Sum of the stored (sealed) chunk lengths of the objects.
    pub bytes: u64,
    /// Sum of the plaintext lengths of the objects.
    pub plaintext_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// The host's trust table.
    pub trust: Vec<SnapTrust>,
    /// Identity escrow file in `keys/`, if this backup included one.
    pub identity_escrow: Option<String>,
    /// The objects, sorted by object id.
    pub objects: Vec<SnapObject>,
    /// SHA-256 (hex) over the object list: for each object in order, its
    /// 16-byte id, its version as 8 bytes big-endian and its 32-byte
    /// manifest id.
    pub objects_sha256: String,
}

/// How a snapshot's content is vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotSignature {
    /// Signed by its host, and the signature verified.
    Verified,
    /// A format-1 file: nothing but an unkeyed checksum.
    Unsigned,
}

/// A snapshot as read from a repository (either file format), checked:
/// a signed one's signature verified, an unsigned one's checksum matching.
/// Whether its host is to be believed is the restoring store's decision.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotFile {
    /// Snapshot file format: 2 (signed) or 1 (legacy, unsigned).
    pub format: u16,
    /// Whether the host's signature vouches for all of it.
    pub signature: SnapshotSignature,
    /// `<utc>-<short>`, also the file name without `.json`.
    pub id: String,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The same, in ms since the epoch.
    pub created_ms: u64,
    /// The card string of the instance whose store was backed up.
    pub host: String,
    /// The host's instance id (hex), its fingerprint.
    pub host_id: String,
    /// The host's name.
    pub host_name: String,
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
    /// Objects by kind.
    pub counts: BTreeMap<String, u64>,
    /// Sum of the stored (sealed) chunk lengths of the objects.
    pub bytes: u64,
    /// Sum of the plaintext lengths of the objects.
    pub plaintext_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// The host's trust table.
    pub trust: Vec<SnapTrust>,
    /// Identity escrow file in `keys/`, if this backup included one.
    pub identity_escrow: Option<String>,
    /// The objects, sorted by object id.
    pub objects: Vec<SnapObject>,
    /// SHA-256 (hex) over the object list (see [`objects_sha256`]); for a
    /// signed snapshot computed here, for display.
    pub objects_sha256: String,
    /// Snapshot format 3 and later: the digest its host signed over the
    /// objects' manifest files ([`bbsync_protocol::manifest_files_digest`]);
    /// `backups verify` does not check again the signature of a manifest
    /// whose file the host signed for this way.
    #[serde(skip)]
    pub manifest_files: Option<[u8; 32]>,
}

/// The checksum of an object list (see [`LegacySnapshotFile::objects_sha256`]).
pub fn objects_sha256(objects: &[SnapObject]) -> String {
    let mut h = Sha256::new();
    for o in objects {
        h.update(o.object_id.as_bytes());
        h.update(o.version.to_be_bytes());
        h.update(o.manifest_id.as_bytes());
    }
    hex::encode(h.finalize())
}

/// `keys/identity.<instance id>`: identity secrets sealed with a passphrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Format (1).
    pub format: u16,
    /// The instance (hex).
    pub instance: String,
    /// Its card string.
    pub card: String,
    /// `argon2id`.
    pub kdf: String,
    /// Argon2 memory cost in KiB.
    pub m_cost: u32,
    /// Argon2 iterations.
    pub t_cost: u32,
    /// Argon2 lanes.
    pub p_cost: u32,
    /// Salt (hex, 16 bytes).
    pub salt: String,
    /// AES-256-GCM nonce (hex, 12 bytes).
    pub nonce: String,
    /// AES-256-GCM of the identity file bytes (hex), aad `bbsync/identity-escrow/v1`.
    pub sealed: String,
}

macro_rules! hex_id {
    ($module:ident, $ty:ty) => {
        mod $module {
            use serde::{Deserialize, Deserializer, Serializer, de::Error};

            pub fn serialize<S: Serializer>(id: &$ty, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&id.to_hex())
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let s = String::deserialize(d)?;
                let bytes = hex::decode(&s).map_err(D::Error::custom)?;
                <$ty>::from_slice(&bytes).map_err(D::Error::custom)
            }
        }
    };
}

hex_id!(hex_object_id, bbsync_protocol::ObjectId);
hex_id!(hex_manifest_id, bbsync_protocol::ManifestId);
