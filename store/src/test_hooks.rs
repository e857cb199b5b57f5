//! Hooks for tests that damage a store on purpose: the raw database and
//! record edits that skip every check. Compiled only with the `test-hooks`
//! feature, which only the workspace's dev-dependencies turn on; a release
//! build has none of it, and node and CLI code reads through [`Store`]'s
//! methods.

pub use crate::db::{Db, IndexChange, ObjectRecord};
use crate::{Result, Store, StoreError};
use bbsync_protocol::ObjectId;

/// The store's raw database and edits that skip its checks.
pub trait Tamper {
    /// The database, to read or write it directly.
    fn raw_db(&self) -> &Db;

    /// Sets the recorded schema version, skipping every check (tests of
    /// the schema refusal and of migration).
    fn dangerously_set_schema_version(&self, v: u32) -> Result<()>;

    /// Recomputes an object's record MAC over whatever its record holds
    /// now, as if this instance had verified it: the state a schema-1
    /// restore left behind (issue 10, item 2), for the migration tests.
    fn dangerously_remac_record(&self, id: &ObjectId) -> Result<()>;

    /// Replaces parts of an object's stored record with arbitrary bytes,
    /// keeping its record MAC as it was, so that the next read finds bytes
    /// this instance never verified.
    fn dangerously_edit_record(
        &self,
        id: &ObjectId,
        edit: impl FnOnce(&mut ObjectRecord),
    ) -> Result<()>;
}

impl Tamper for Store {
    fn raw_db(&self) -> &Db {
        self.db()
    }

    fn dangerously_set_schema_version(&self, v: u32) -> Result<()> {
        self.db().set_schema_version(v)
    }

    fn dangerously_remac_record(&self, id: &ObjectId) -> Result<()> {
        let _g = self.lock();
        let mut rec = self
            .db()
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        rec.state.checked_mac = Some(self.record_mac(&rec.manifest, &rec.envelope));
        self.db().put_record(id, &rec)?;
        self.db().flush()
    }

    fn dangerously_edit_record(
        &self,
        id: &ObjectId,
        edit: impl FnOnce(&mut ObjectRecord),
    ) -> Result<()> {
        let _g = self.lock();
        let mut rec = self
            .db()
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        edit(&mut rec);
        self.db().put_record(id, &rec)?;
        self.db().flush()
    }
}
