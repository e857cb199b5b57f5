//! # bbsync-protocol
//!
//! The pure part of bbsync: identifiers, the instance identity and its signed
//! card, chunk sealing, signed manifests, key-envelope entries and checkpoints,
//! with their postcard encodings. Nothing here touches a file, a socket or a
//! runtime: every function takes bytes in memory and returns bytes or values,
//! so that the formats can be tested by vectors, property tests and fuzzers
//! (see `docs/format.md` in the repository for the byte-level description).
//!
//! Backup snapshots are signed by their host ([`Snapshot`]) the same way.
//!
//! Everything that carries a signature is decoded into an [`Unverified`]
//! value; the only way to reach the inner value is a `verify*` method that
//! checks the ed25519 signature (strictly) and asks the caller whether the
//! signer is trusted.

pub mod card;
pub mod checkpoint;
pub mod chunk;
pub mod encoding;
pub mod envelope;
mod error;
pub mod identity;
pub mod ids;
pub mod invite;
pub mod manifest;
pub mod signed;
pub mod snapshot;
pub mod text;
pub mod wire;

pub use card::{InstanceCard, card_from_str, card_to_string};
pub use checkpoint::{Checkpoint, RootBuilder};
pub use chunk::{ChunkCipher, Compression, ContentKey, SealedChunk};
pub use envelope::{EnvelopeEntry, Unwrapper, WrapSession, wrap_content_key};
pub use error::{Error, ErrorKind};
pub use identity::{Identity, Role};
pub use ids::{ChunkId, InstanceId, InviteId, ManifestId, ObjectId};
pub use invite::{Invite, InviteRefusal};
pub use manifest::{ChunkRef, MAX_VERSION, Manifest, ObjectMeta, Shape, key_commitment};
pub use signed::{Signed, SignedBody, Unverified, verify_many};
pub use snapshot::{
    MANIFEST_FILES_FORMAT, SNAPSHOT_FORMAT, Snapshot, SnapshotObject, SnapshotTrust,
    manifest_files_digest,
};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Current time in milliseconds since the Unix epoch, for callers that build
/// manifests and cards. (Reading the clock is the only ambient input here.)
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
