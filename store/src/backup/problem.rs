//! The classes of problems `backups verify` reports (docs/backup.md
//! "Verify"), for both repository formats.

use serde::Serialize;

/// The classes of problems `backups verify` reports (docs/backup.md
/// "Verify"), written in kebab case (`missing-chunk`) in text and JSON and
/// ordered by that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepoProblemClass {
    /// An index file that does not decode, or whose entry disagrees with a manifest (format 2).
    BadIndex,
    /// A file under `keys/` that is not a valid identity escrow.
    BadKeyFile,
    /// A manifest file that does not decode or verify, or that is not the manifest it is named for.
    BadManifest,
    /// A pack file that cannot be read, or whose header or trailer does not match (format 2).
    BadPack,
    /// A snapshot file that does not parse.
    BadSnapshot,
    /// A snapshot whose host's signature does not verify.
    BadSnapshotSignature,
    /// Chunk bytes that do not hash to their id.
    CorruptChunk,
    /// Manifest file bytes that do not hash to their name (format 2).
    CorruptManifest,
    /// A chunk a manifest names that the repository does not hold.
    MissingChunk,
    /// A manifest a snapshot names that the repository does not hold.
    MissingManifest,
    /// A pack file an index names that is not there (format 2).
    MissingPack,
    /// A chunk no snapshot references (format 1).
    OrphanChunk,
    /// A manifest no snapshot references (format 1).
    OrphanManifest,
    /// A snapshot file whose checksum does not match its content.
    SnapshotChecksum,
    /// A file that has no place in the repository layout (format 1).
    StrayFile,
    /// A chunk file shorter than its manifest says (format 1).
    TruncatedChunk,
    /// A pack file shorter than its index says (format 2).
    TruncatedPack,
    /// A pack file no index names (an interrupted backup; prune removes it).
    UnindexedPack,
    /// A snapshot written before snapshots were signed.
    UnsignedSnapshot,
    /// A chunk file longer than its manifest says (format 1).
    WrongSizeChunk,
    /// A pack file longer than its index says (format 2).
    WrongSizePack,
}

impl RepoProblemClass {
    /// The class's name, as printed (`missing-chunk`).
    pub fn as_str(self) -> &'static str {
        match self {
            RepoProblemClass::BadIndex => "bad-index",
            RepoProblemClass::BadKeyFile => "bad-key-file",
            RepoProblemClass::BadManifest => "bad-manifest",
            RepoProblemClass::BadPack => "bad-pack",
            RepoProblemClass::BadSnapshot => "bad-snapshot",
            RepoProblemClass::BadSnapshotSignature => "bad-snapshot-signature",
            RepoProblemClass::CorruptChunk => "corrupt-chunk",
            RepoProblemClass::CorruptManifest => "corrupt-manifest",
            RepoProblemClass::MissingChunk => "missing-chunk",
            RepoProblemClass::MissingManifest => "missing-manifest",
            RepoProblemClass::MissingPack => "missing-pack",
            RepoProblemClass::OrphanChunk => "orphan-chunk",
            RepoProblemClass::OrphanManifest => "orphan-manifest",
            RepoProblemClass::SnapshotChecksum => "snapshot-checksum",
            RepoProblemClass::StrayFile => "stray-file",
            RepoProblemClass::TruncatedChunk => "truncated-chunk",
            RepoProblemClass::TruncatedPack => "truncated-pack",
            RepoProblemClass::UnindexedPack => "unindexed-pack",
            RepoProblemClass::UnsignedSnapshot => "unsigned-snapshot",
            RepoProblemClass::WrongSizeChunk => "wrong-size-chunk",
            RepoProblemClass::WrongSizePack => "wrong-size-pack",
        }
    }
}

impl std::fmt::Display for RepoProblemClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (`pad`: a width such as `{:<18}` lines the classes up)
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for RepoProblemClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for RepoProblemClass {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By name, as the problems are listed.
impl Ord for RepoProblemClass {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl From<crate::SnapshotFault> for RepoProblemClass {
    fn from(fault: crate::SnapshotFault) -> Self {
        match fault {
            crate::SnapshotFault::BadSignature => RepoProblemClass::BadSnapshotSignature,
            crate::SnapshotFault::ChecksumMismatch => RepoProblemClass::SnapshotChecksum,
        }
    }
}
