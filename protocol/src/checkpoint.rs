//! Signed checkpoints: the proof that a clone is complete.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{InstanceId, ManifestId, ObjectId, signed::SignedBody};

/// `{instance, seq, count, root}` signed by `instance`: as of change `seq`
/// it served `count` objects whose sorted `(object_id, version, ManifestId)`
/// hash to `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format number.
    pub format: u16,
    /// The signer.
    pub instance: InstanceId,
    /// The change-log sequence number this checkpoint is as of.
    pub seq: u64,
    /// Number of objects covered.
    pub count: u64,
    /// The root hash (see [`RootBuilder`]).
    pub root: [u8; 32],
    /// When it was made (ms since the epoch).
    pub created_at_ms: u64,
}

impl SignedBody for Checkpoint {
    const WHAT: &'static str = "checkpoint";
    const DOMAIN: &'static [u8] = b"bbsync/checkpoint/v1\0";
    const MAX_BODY: usize = 512;
    fn format(&self) -> u16 {
        self.format
    }
    fn signer(&self) -> InstanceId {
        self.instance
    }
}

const ROOT_DOMAIN: &[u8] = b"bbsync/checkpoint-root/v1\0";

/// Collects `(object_id, version, manifest_id)` in any order and hashes them
/// sorted by object id:
/// `root = SHA-256(domain || for each: object_id(16) || version_be(8) || manifest_id(32))`.
#[derive(Debug, Default, Clone)]
pub struct RootBuilder {
    items: Vec<(ObjectId, u64, ManifestId)>,
}

impl RootBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one object.
    pub fn push(&mut self, object_id: ObjectId, version: u64, manifest: ManifestId) {
        self.items.push((object_id, version, manifest));
    }

    /// Number of objects added.
    pub fn count(&self) -> u64 {
        self.items.len() as u64
    }

    /// The root hash.
    pub fn finish(mut self) -> [u8; 32] {
        self.items.sort_unstable();
        let mut h = Sha256::new();
        h.update(ROOT_DOMAIN);
        for (o, v, m) in &self.items {
            h.update(o.as_bytes());
            h.update(v.to_be_bytes());
            h.update(m.as_bytes());
        }
        h.finalize().into()
    }
}
