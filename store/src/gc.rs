//! Garbage collection: what the records and a stopped restore's pins
//! reference, and dropping the rest from the packs.

use crate::*;

impl Store {
    /// Drops the pins of a restore that stopped (`bbsync gc
    /// --drop-restore-pins`): the next collection takes the chunks it
    /// copied. Returns what they pinned, if there were pins.
    pub fn drop_restore_pins(&self) -> Result<Option<backup::restore::pins::RestorePins>> {
        let _g = self.lock();
        let path = self.restore_pins_path();
        let pins = backup::restore::pins::read(&path)?;
        if pins.is_some() {
            std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                context: format!("removing {}", path.display()),
                source,
            })?;
        }
        Ok(pins)
    }

    /// Removes every chunk neither a manifest nor the pins of a restore
    /// that stopped reference (pins older than a day are dropped first).
    pub fn gc(&self) -> Result<packs::GcReport> {
        let _g = self.lock();
        let pins = self.restore_pins_path();
        if backup::restore::pins::read(&pins)?.is_some_and(|p| p.expired()) {
            tracing::info!(
                "dropping the pins of a restore that stopped more than a day ago: its chunks are collected"
            );
            backup::restore::pins::clear(&pins);
        }
        let referenced = self.referenced_chunks()?;
        let r = self.packs.collect(&|id| referenced.contains(id))?;
        self.packs.collected()?;
        self.db.clear_gc_pending()?;
        Ok(r)
    }

    /// Every chunk id referenced by a stored manifest, and those a
    /// restore in progress or stopped pins ([`RESTORE_PINS`], unless expired).
    pub fn referenced_chunks(&self) -> Result<std::collections::HashSet<bbsync_protocol::ChunkId>> {
        let mut set = std::collections::HashSet::new();
        if let Some(p) = self.held_restore_pins()? {
            set.extend(p.ids);
        }
        for r in self.db.objects() {
            let (id, st) = r?;
            if st.deleted {
                continue;
            }
            for c in self.dangerously_manifest_unverified(&id)?.chunks {
                set.insert(c.id);
            }
        }
        Ok(set)
    }
}
