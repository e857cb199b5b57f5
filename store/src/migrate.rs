//! Schema migrations, run by [`Store::open`] before anything else reads the
//! records. Each step takes the database from one schema to the next and
//! is written so that it can be interrupted at any point and run again:
//! the schema number is raised only after the step's writes are flushed,
//! and redoing a step on records it already rewrote gives the same records.
//!
//! | from | to | step |
//! |------|----|------|
//! | 1    | 2  | [`migrate_1_to_2`]: keep only envelope entries whose signatures verify; recompute record MACs |
//!
//! A later schema adds its step to [`STEPS`]; a store two schemas behind
//! runs both, in order.

use bbsync_protocol::{Manifest, Unverified};
use serde_bytes::ByteBuf;

use crate::{
    Store,
    db::{COMMIT_BATCH, SCHEMA_VERSION},
    error::{Result, StoreError},
};

/// One migration step: the schema it starts from, what it does, and the
/// function that does it.
pub type Step = (u32, &'static str, fn(&Store) -> Result<()>);

/// Every step, by the schema it starts from.
pub const STEPS: &[Step] = &[(
    1,
    "envelope entries re-checked (only those whose signatures verify are kept), record MACs recomputed",
    migrate_1_to_2,
)];

/// Brings the store's schema up to [`SCHEMA_VERSION`].
pub(crate) fn run(store: &mut Store) -> Result<()> {
    let mut v = store.db().schema_version()?;
    while v < SCHEMA_VERSION {
        let Some((from, what, step)) = STEPS.iter().find(|(from, _, _)| *from == v) else {
            return Err(StoreError::Corrupt(format!(
                "schema_version {v}: no migration from it to {SCHEMA_VERSION}"
            )));
        };
        tracing::info!(
            "migrating the data dir from schema {from} to {}: {what}",
            from + 1
        );
        step(store)?;
        v = from + 1;
        store.db().set_schema_version(v)?;
    }
    Ok(())
}

/// Schema 1 to 2. A schema-1 restore recorded every envelope entry of a
/// backup's manifest file and covered them all with the record MAC, while
/// it had checked only the first usable one; later reads trusted the MAC
/// and took the first candidate, so a forged entry could become this
/// node's key (issue 10, item 2). Here every record's entries are checked
/// again, in full: an entry is kept only if its signature verifies, its
/// wrapper is the manifest's author, this instance or an instance trusted
/// `full` now, and it is for the manifest's object version. The record MAC
/// is recomputed over what is kept, and only when the manifest's own
/// signature verifies (else the record is left as it is with its MAC
/// cleared, so that every read checks it in full and reports it). Entries
/// dropped are logged per object.
pub fn migrate_1_to_2(store: &Store) -> Result<()> {
    let ids: Vec<_> = store
        .db()
        .objects()
        .map(|r| r.map(|(id, _)| id))
        .collect::<Result<_>>()?;
    let mut dropped_total = 0usize;
    for (n, group) in ids.chunks(COMMIT_BATCH).enumerate() {
        for id in group {
            let Some(mut rec) = store.db().record(id)? else {
                continue;
            };
            // The signature only: the author's trust is checked on every
            // read anyway, and an entry by the author of an untrusted (but
            // authentic) manifest stays usable should the author be
            // trusted again.
            let manifest: Option<Manifest> = Unverified::<Manifest>::decode(&rec.manifest)
                .and_then(|u| u.verify(|_| true))
                .ok()
                .map(|m| m.into_value());
            if let Some(m) = &manifest {
                let raw: Vec<Vec<u8>> = rec.envelope.iter().map(|e| e.to_vec()).collect();
                let (kept, dropped) = store.verified_entries(m, &raw, &|w| store.is_full(w));
                if dropped > 0 {
                    tracing::warn!(
                        object = %id.short(),
                        name = %format!("{}:{}", rec.state.kind, rec.state.name),
                        dropped,
                        "migration: dropped envelope entries whose signatures do not verify"
                    );
                    dropped_total += dropped;
                }
                rec.envelope = kept.into_iter().map(ByteBuf::from).collect();
            }
            // A manifest that does not verify keeps its entries as they are,
            // unMAC'd: every read checks it in full and reports it.
            rec.state.checked_mac = manifest
                .is_some()
                .then(|| store.record_mac(&rec.manifest, &rec.envelope));
            store.db().put_record(id, &rec)?;
        }
        store.db().flush()?;
        crate::failpoint::hit("migrate.batch").map_err(|source| StoreError::Io {
            context: format!("migrating batch {n}"),
            source,
        })?;
    }
    if dropped_total > 0 {
        tracing::warn!(
            dropped = dropped_total,
            "migration to schema 2: envelope entries dropped in all"
        );
    }
    Ok(())
}
