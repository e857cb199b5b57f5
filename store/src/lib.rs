//! # bbsync-store
//!
//! The encrypted, content-addressed store of a bbsync node: sled metadata
//! (in the crate-private `db` module, the only one that touches sled),
//! sealed chunks in pack files under `<data>/packs/` with a chunk index in
//! sled ([`packs`]), import of files, directories and whole BBS trees,
//! export, verification and garbage collection. [`Store`] is spread by
//! concern: `open.rs` (init, open, recovery), `trust.rs` (the trust
//! table, recipients), `records.rs` (object records, the record MAC,
//! content keys), `gc.rs`, `changes.rs` (the change log and follow
//! cursors), and one file per job beside them (import, export, sync,
//! verify, rekey, live, invite, backup).
//!
//! ```text
//! <data>/identity.key          secrets (0600), optionally sealed with a passphrase
//! <data>/config.toml           operator settings
//! <data>/db/                   sled metadata and the chunk index
//! <data>/packs/ab/<id>.pack    sealed chunks appended into pack files (~16 MiB)
//! ```

pub mod archive;
pub mod backup;
pub mod backup_api;
pub mod bbs;
mod changes;
pub mod config;
pub(crate) mod db;
mod error;
pub mod export;
pub mod failpoint;
mod gc;
pub mod identity_file;
pub mod import;
pub mod inspect;
pub mod invite;
pub mod layout;
pub mod live;
pub mod migrate;
mod open;
pub mod packs;
pub mod progress;
mod records;
pub mod rekey;
pub mod seal;
mod spool;
pub mod sqlite;
pub mod summary;
pub mod sync;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
mod trust;
pub mod verify;

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bbsync_protocol::{Identity, InstanceCard, InstanceId, Signed};

pub use config::Config;
pub use db::{ObjectState, PACKS_SCHEMA, SCHEMA_VERSION, TrustRecord};
use error::Context;
pub use error::{ErrorKind, Result, SnapshotFault, StoreError};
pub(crate) use records::entry_fits;

/// An open store. One process holds it at a time (sled's file lock).
pub struct Store {
    dir: PathBuf,
    identity: Identity,
    db: Arc<db::Db>,
    packs: packs::Packs,
    config: Config,
    write_lock: Mutex<()>,
    unwrapper: bbsync_protocol::Unwrapper,
    record_key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

const IDENTITY_FILE: &str = "identity.key";
/// The pack directory inside a data dir.
pub const PACKS_DIR: &str = "packs";
/// Temp files of long operations inside a data dir (spools, a rotation's plaintext).
pub const TMP_DIR: &str = "tmp";
const CONFIG_FILE: &str = "config.toml";
/// Chunks a restore in progress copied (32-byte ids, concatenated): kept
/// by every collection until a restore finishes, so that a restore that
/// stopped resumes instead of copying them again (backup/restore.rs).
pub const RESTORE_PINS: &str = "restore-pins";

/// Serializes a duration as seconds (f64), for `--json` reports.
pub fn serialize_secs<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Writes a file atomically and durably: temp, fsync, rename, fsync of the dir.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    failpoint::hit("file.rename").ctx(|| format!("renaming into {}", path.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming into {}", path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

impl Store {
    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This instance's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This instance's id.
    pub fn instance_id(&self) -> InstanceId {
        self.identity.instance_id()
    }

    /// The operator settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database. Crate-private: node and CLI read through the store's
    /// methods, and every write goes through a method that checks what it
    /// records.
    pub(crate) fn db(&self) -> &db::Db {
        &self.db
    }

    /// The pack files and the chunk index.
    pub fn packs(&self) -> &packs::Packs {
        &self.packs
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This instance's signed card.
    pub fn card(&self) -> Result<Signed<InstanceCard>> {
        self.identity
            .card(Vec::new(), self.identity.created_at_ms())
            .ctx(|| "signing the instance card".to_string())
    }
}
