//! What `status`, `ls`, the admin HTTP API and `/metrics` show of a store:
//! computed here once, printed by each front end its own way.

use std::collections::BTreeMap;

use bbsync_protocol::ObjectId;
use serde::Serialize;

use crate::{ObjectState, Result, Store};

/// Counts and sizes of a store (`bbsync status`, `GET /api/v1/status`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreSummary {
    /// This instance's id (hex).
    pub instance_id: String,
    /// This instance's name.
    pub name: String,
    /// The store's schema version.
    pub schema_version: u32,
    /// The last change-log number.
    pub seq: u64,
    /// Live objects (not deleted).
    pub objects: u64,
    /// Live objects by kind.
    pub objects_by_kind: BTreeMap<String, u64>,
    /// Plaintext bytes of the live objects, by kind.
    pub bytes_by_kind: BTreeMap<String, u64>,
    /// Tombstones.
    pub deleted: u64,
    /// Live objects whose chunks are not all on disk.
    pub incomplete: u64,
    /// Plaintext bytes of the live objects.
    pub plaintext_bytes: u64,
    /// Stored (sealed) bytes the live objects reference.
    pub referenced_bytes: u64,
    /// Chunks in the chunk index (stored in pack files).
    pub chunks: u64,
    /// Stored bytes of those chunks.
    pub chunk_bytes: u64,
    /// Pack files on disk.
    pub packs: u64,
    /// Bytes of the pack files on disk.
    pub pack_bytes: u64,
    /// Instances in the trust table.
    pub trusted: u64,
    /// Whether identity.key is sealed with a passphrase.
    pub identity_encrypted: bool,
    /// The pins of a restore that is running or stopped before it
    /// finished (`restore-pins`; expired ones are not shown).
    pub restore_pins: Option<RestorePinsSummary>,
}

/// What the pins of a restore say (see [`StoreSummary::restore_pins`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestorePinsSummary {
    /// The snapshot that restore takes (empty: pins of an older bbsync).
    pub snapshot: String,
    /// Its repository.
    pub repo: String,
    /// Chunks pinned.
    pub chunks: u64,
    /// Seconds until a collection drops them.
    pub expires_in_secs: u64,
}

/// Which objects [`Store::list_objects`] returns.
#[derive(Debug, Clone, Default)]
pub struct ObjectFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only names containing this text.
    pub name_contains: Option<String>,
    /// Include tombstones.
    pub include_deleted: bool,
}

/// `ok`, `incomplete` or `deleted`: the state word `ls` prints.
pub fn state_word(st: &ObjectState) -> &'static str {
    if st.deleted {
        "deleted"
    } else if !st.complete {
        "incomplete"
    } else {
        "ok"
    }
}

impl Store {
    /// Counts and sizes of this store (reads every object record and lists
    /// the chunk index and the pack files).
    pub fn summary(&self) -> Result<StoreSummary> {
        let mut s = StoreSummary {
            instance_id: self.instance_id().to_hex(),
            name: self.card()?.name.clone(),
            schema_version: self.db().schema_version()?,
            seq: self.db().last_seq()?,
            trusted: self.trust_list()?.len() as u64,
            identity_encrypted: self.identity_is_sealed()?,
            restore_pins: self.held_restore_pins()?.map(|p| RestorePinsSummary {
                chunks: p.ids.len() as u64,
                expires_in_secs: p.expires_in().as_secs(),
                snapshot: p.snapshot,
                repo: p.repo,
            }),
            ..Default::default()
        };
        for r in self.db().objects() {
            let (_, st) = r?;
            if st.deleted {
                s.deleted += 1;
                continue;
            }
            s.objects += 1;
            if !st.complete {
                s.incomplete += 1;
            }
            s.plaintext_bytes += st.plaintext_len;
            s.referenced_bytes += st.stored_len;
            *s.objects_by_kind.entry(st.kind.clone()).or_default() += 1;
            *s.bytes_by_kind.entry(st.kind.clone()).or_default() += st.plaintext_len;
        }
        for (_, len) in self.packs().list()? {
            s.chunks += 1;
            s.chunk_bytes += len;
        }
        for (_, len) in self.packs().pack_files()?.into_iter().flatten() {
            s.packs += 1;
            s.pack_bytes += len;
        }
        Ok(s)
    }

    /// The objects `filter` selects, sorted by kind, then name.
    pub fn list_objects(&self, filter: &ObjectFilter) -> Result<Vec<(ObjectId, ObjectState)>> {
        let mut rows = Vec::new();
        for r in self.db().objects() {
            let (id, st) = r?;
            if filter.kind.as_ref().is_some_and(|k| *k != st.kind)
                || (st.deleted && !filter.include_deleted)
                || filter
                    .name_contains
                    .as_ref()
                    .is_some_and(|n| !st.name.contains(n.as_str()))
            {
                continue;
            }
            rows.push((id, st));
        }
        rows.sort_by(|a, b| (&a.1.kind, &a.1.name).cmp(&(&b.1.kind, &b.1.name)));
        Ok(rows)
    }
}
