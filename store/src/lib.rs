//! # bbsync-store
//!
//! The encrypted, content-addressed store of a bbsync node: sled metadata
//! (in [`db`], the only module that touches sled), sealed chunks in pack
//! files under `<data>/packs/` with a chunk index in sled ([`packs`]),
//! import of files, directories and whole BBS trees, export, verification
//! and garbage collection.
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
pub mod config;
pub mod db;
mod error;
pub mod export;
pub mod failpoint;
pub mod identity_file;
pub mod import;
pub mod inspect;
pub mod invite;
pub mod layout;
pub mod live;
pub mod migrate;
pub mod packs;
pub mod progress;
pub mod rekey;
pub mod seal;
mod spool;
pub mod sqlite;
pub mod summary;
pub mod sync;
pub mod verify;

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bbsync_protocol::{
    ContentKey, EnvelopeEntry, Identity, InstanceCard, InstanceId, Manifest, ObjectId, Role,
    Signed, Unverified, WrapSession, card_from_str,
};

pub use config::Config;
pub use db::{ObjectState, PACKS_SCHEMA, SCHEMA_VERSION, TrustRecord};
use error::Context;
pub use error::{ErrorKind, Result, SnapshotFault, StoreError};

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

fn check_data_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StoreError::NotInitialized(dir.to_path_buf()))
        }
        Err(e) => Err(e).ctx(|| format!("reading {}", dir.display())),
    }
}

/// The bytes of `<dir>/identity.key` (bounded), zeroized on drop.
fn read_identity_file(dir: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read as _;
    let path = dir.join(IDENTITY_FILE);
    let f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotInitialized(dir.to_path_buf()));
        }
        Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
    };
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.take(identity_file::MAX_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("reading {}", path.display()))?;
    if bytes.len() > identity_file::MAX_FILE {
        return Err(StoreError::Corrupt(format!(
            "{} is larger than an identity file can be",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Whether a verified entry is for exactly this manifest's object version.
pub(crate) fn entry_fits(e: &EnvelopeEntry, m: &Manifest) -> bool {
    e.object_id == m.object_id && e.version == m.version
}

/// An object's record as read from the database, and whether its bytes are
/// exactly those this instance verified or wrote (its record MAC matches,
/// [`Store::record_mac`]). Only [`Store::load`] makes one, so no caller can
/// declare a record checked.
pub(crate) struct Loaded {
    /// The record.
    pub(crate) rec: db::ObjectRecord,
    mac_ok: bool,
}

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
    /// Creates a new store (identity, database, config) in `dir`, which may
    /// exist if it is empty.
    pub fn init(dir: &Path, name: &str) -> Result<Self> {
        Self::init_sealed(dir, name, None)
    }

    /// [`Store::init`], with `identity.key` sealed with `passphrase` when
    /// one is given (at least [`seal::MIN_PASSPHRASE`] characters).
    pub fn init_sealed(dir: &Path, name: &str, passphrase: Option<&str>) -> Result<Self> {
        if let Some(p) = passphrase {
            seal::check_new_passphrase(p)?;
        }
        let identity = Identity::generate(name, bbsync_protocol::now_ms())
            .ctx(|| "creating the identity".to_string())?;
        Self::init_with_sealed(dir, identity, passphrase)
    }

    /// Creates a new store in `dir` (new or empty) with a given identity
    /// (a restore of an escrowed identity, for disaster recovery).
    pub fn init_with(dir: &Path, identity: Identity) -> Result<Self> {
        Self::init_with_sealed(dir, identity, None)
    }

    fn init_with_sealed(dir: &Path, identity: Identity, passphrase: Option<&str>) -> Result<Self> {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(StoreError::NotADirectory(dir.to_path_buf())),
            Ok(_) => {
                if dir.join(IDENTITY_FILE).exists() {
                    return Err(StoreError::AlreadyInitialized(dir.to_path_buf()));
                }
                // An init that stopped before its identity was durable left
                // a database (and maybe temp files): it is finished below,
                // once its database is known to hold nothing.
                let mut entries = fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))?;
                if !dir.join("db").is_dir() && entries.next().is_some() {
                    return Err(StoreError::Invalid(format!(
                        "{} is not empty and holds no bbsync store; init needs a new or empty directory",
                        dir.display()
                    )));
                }
            }
            Err(_) => fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?,
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("setting permissions of {}", dir.display()))?;
        // Sealed before anything is written (argon2 takes a moment, and a
        // failure leaves the directory as it was).
        let id_bytes = match passphrase {
            Some(p) => zeroize::Zeroizing::new(identity_file::seal_identity(&identity, p)?),
            None => identity.to_file_bytes(),
        };
        // The database first: if another process races us, its lock stops us
        // before we write an identity.
        let db = Arc::new(db::Db::open(&dir.join("db"), dir, true)?);
        if db.last_seq()? > 0 || db.object_count() > 0 || !db.trusted()?.is_empty() {
            // Content without an identity is not an interrupted init; a new
            // identity could read none of it.
            return Err(StoreError::Corrupt(format!(
                "{} holds a database with content but no {IDENTITY_FILE}; restore the identity \
                 (`bbsync restore` of a backup with its escrow) or start in a new directory",
                dir.display()
            )));
        }
        if !dir.join(CONFIG_FILE).exists() {
            write_file_atomic(
                &dir.join(CONFIG_FILE),
                config::DEFAULT_CONFIG.as_bytes(),
                0o644,
            )?;
        }
        // The identity last: it is what makes the directory a store, so an
        // init that stops before it can simply be run again.
        write_file_atomic(&dir.join(IDENTITY_FILE), &id_bytes, 0o600)?;
        let packs = packs::Packs::open(&dir.join(PACKS_DIR), db.clone())?;
        let record_key = identity.local_key("record-mac");
        Ok(Store {
            dir: dir.to_path_buf(),
            identity,
            db,
            packs,
            config: Config::default(),
            write_lock: Mutex::new(()),
            unwrapper: bbsync_protocol::Unwrapper::new(),
            record_key,
        })
    }

    /// Opens an existing store whose `identity.key` is not sealed (a sealed
    /// one is refused with [`StoreError::IdentityLocked`]: see
    /// [`Store::open_with_passphrase`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_passphrase(dir, None)
    }

    /// Whether the `identity.key` of the data dir `dir` is sealed with a
    /// passphrase (so that opening it needs one).
    pub fn identity_sealed(dir: &Path) -> Result<bool> {
        check_data_dir(dir)?;
        Ok(identity_file::is_sealed(&read_identity_file(dir)?))
    }

    /// Opens an existing store; `passphrase` opens a sealed `identity.key`
    /// (a wrong one is [`StoreError::Passphrase`] and changes nothing).
    pub fn open_with_passphrase(dir: &Path, passphrase: Option<&str>) -> Result<Self> {
        Ok(Self::open_migrating(dir, passphrase, &progress::NoProgress)?.0)
    }

    /// Opens an existing store, first migrating a data dir of an older
    /// schema (crash-safe and resumable; see [`migrate`]) with `progress`;
    /// returns what the move to pack files did, if it ran. A newer schema
    /// is refused and changes nothing. Then recovers from an interrupted
    /// write (unrecorded chunks are collected) and rebuilds a missing chunk
    /// index from the packs.
    pub(crate) fn open_migrating(
        dir: &Path,
        passphrase: Option<&str>,
        progress: &dyn progress::Progress,
    ) -> Result<(Self, Option<migrate::MigrateReport>)> {
        check_data_dir(dir)?;
        let id_path = dir.join(IDENTITY_FILE);
        let id_bytes = read_identity_file(dir)?;
        let identity = if identity_file::is_sealed(&id_bytes) {
            let shown = id_path.display().to_string();
            match passphrase {
                Some(p) => identity_file::open_sealed(&id_bytes, p, &shown)?,
                None => {
                    // The checksum first: a damaged file is not "locked".
                    identity_file::sealed_instance(&id_bytes, &shown)?;
                    return Err(StoreError::IdentityLocked(id_path));
                }
            }
        } else {
            Identity::from_file_bytes(&id_bytes).ctx(|| format!("loading {}", id_path.display()))?
        };
        let config = Config::load(&dir.join(CONFIG_FILE))?;
        if !dir.join("db").is_dir() {
            return Err(StoreError::NotInitialized(dir.to_path_buf()));
        }
        let db = Arc::new(db::Db::open(&dir.join("db"), dir, false)?);
        let packs = packs::Packs::open(&dir.join(PACKS_DIR), db.clone())?;
        let record_key = identity.local_key("record-mac");
        let mut store = Store {
            dir: dir.to_path_buf(),
            identity,
            db,
            packs,
            config,
            write_lock: Mutex::new(()),
            unwrapper: bbsync_protocol::Unwrapper::new(),
            record_key,
        };
        // An older schema is brought up to date (crash-safe, resumable)
        // before anything else reads the records.
        let moved = migrate::run(&mut store, progress)?;
        store.recover()?;
        Ok((store, moved))
    }

    /// What an open does after a crash: removes temp files a killed
    /// process left, rebuilds a missing index from the packs, and collects
    /// chunks published but never recorded.
    fn recover(&self) -> Result<()> {
        spool::sweep(&self.dir.join(TMP_DIR));
        // Snapshots and dumps of SQLite databases a killed process left
        // (plaintext; only this process can be using the data dir now).
        sqlite::sweep_temp(&self.dir.join(TMP_DIR));
        if self.dir.join(migrate::CHUNKS_DIR).exists() {
            // Left by a migration stopped after the schema was set.
            self.remove_old_chunk_dir()?;
        }
        if !self.db.index_complete()? {
            tracing::warn!(
                "the chunk index is missing or was being rebuilt: rebuilding it from the packs"
            );
            let (r, g) = self.repair_index(&progress::NoProgress)?;
            tracing::info!(
                packs = r.packs,
                chunks = r.chunks,
                dropped = g.chunks_removed,
                "chunk index rebuilt"
            );
            for s in &r.skipped {
                tracing::warn!("repair-index: {s}");
            }
        } else if self.db.collect_pending()? || self.db.gc_pending()? {
            // The last writer stopped between publishing chunks and
            // recording them, or between replacing versions and collecting
            // their old chunks: what no manifest references is garbage
            // from that write. A restore that stopped before its commit
            // keeps its copies, pinned, for its rerun (until the pins
            // expire: backup/restore/pins.rs).
            if let Some(p) = self.held_restore_pins()?
                && !p.ids.is_empty()
            {
                tracing::warn!(
                    "a restore{} stopped before it finished: the {} chunks it pins stay for {} h, so that running it again does not copy them again",
                    if p.snapshot.is_empty() {
                        String::new()
                    } else {
                        format!(" of snapshot {} from {}", p.snapshot, p.repo)
                    },
                    p.ids.len(),
                    p.expires_in().as_secs().div_ceil(3600),
                );
            }
            let r = self.gc()?;
            tracing::info!(
                chunks = r.chunks_removed,
                bytes = r.bytes_removed,
                "recovered from an interrupted write: dropped unreferenced chunks"
            );
        }
        Ok(())
    }

    /// Rebuilds the chunk index from the pack files alone, then drops what
    /// no manifest references (`bbsync repair-index`).
    pub fn repair_index(
        &self,
        progress: &dyn progress::Progress,
    ) -> Result<(packs::RebuildReport, packs::GcReport)> {
        let _g = self.lock();
        let r = self.packs.rebuild_index(progress)?;
        let referenced = self.referenced_chunks()?;
        let g = self.packs.collect(&|id| referenced.contains(id))?;
        self.packs.collected()?;
        Ok((r, g))
    }

    /// Whether this store's `identity.key` is sealed with a passphrase now.
    pub fn identity_is_sealed(&self) -> Result<bool> {
        Ok(identity_file::is_sealed(&read_identity_file(&self.dir)?))
    }

    /// Seals `identity.key` with `passphrase` (at least
    /// [`seal::MIN_PASSPHRASE`] characters), replacing the plain file
    /// atomically. Refused if it is sealed already.
    pub fn encrypt_identity(&self, passphrase: &str) -> Result<()> {
        let _g = self.lock();
        if self.identity_is_sealed()? {
            return Err(StoreError::Invalid(format!(
                "{} is encrypted already (decrypt it first to change the passphrase)",
                self.dir.join(IDENTITY_FILE).display()
            )));
        }
        let bytes = identity_file::seal_identity(&self.identity, passphrase)?;
        write_file_atomic(&self.dir.join(IDENTITY_FILE), &bytes, 0o600)
    }

    /// Replaces a sealed `identity.key` with the plain file (the store is
    /// open, so the passphrase was given already). Refused if it is not
    /// sealed.
    pub fn decrypt_identity(&self) -> Result<()> {
        let _g = self.lock();
        if !self.identity_is_sealed()? {
            return Err(StoreError::Invalid(format!(
                "{} is not encrypted",
                self.dir.join(IDENTITY_FILE).display()
            )));
        }
        write_file_atomic(
            &self.dir.join(IDENTITY_FILE),
            &self.identity.to_file_bytes(),
            0o600,
        )
    }

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

    /// The database, for reading (the writers are the store's own: every
    /// write goes through a method that checks what it records).
    pub fn db(&self) -> &db::Db {
        &self.db
    }

    /// Sets the recorded schema version, skipping every check. For tests of
    /// the schema refusal and migration only.
    pub fn dangerously_set_schema_version(&self, v: u32) -> Result<()> {
        self.db.set_schema_version(v)
    }

    /// Recomputes an object's record MAC over whatever its record holds now,
    /// as if this instance had verified it: the state a schema-1 restore
    /// left behind (issue 10, item 2), for the migration tests. Compiled
    /// only with the test feature `failpoints`; never in a release build.
    #[cfg(feature = "failpoints")]
    pub fn dangerously_remac_record(&self, id: &ObjectId) -> Result<()> {
        let _g = self.lock();
        let mut rec = self
            .db
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        rec.state.checked_mac = Some(self.record_mac(&rec.manifest, &rec.envelope));
        self.db.put_record(id, &rec)?;
        self.db.flush()
    }

    /// Replaces parts of an object's stored record with arbitrary bytes,
    /// keeping its record MAC as it was, so that the next read finds bytes
    /// this instance never verified. For tests that damage a store on
    /// purpose (and repair tools); never for data from outside.
    pub fn dangerously_edit_record(
        &self,
        id: &ObjectId,
        edit: impl FnOnce(&mut db::ObjectRecord),
    ) -> Result<()> {
        let _g = self.lock();
        let mut rec = self
            .db
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        edit(&mut rec);
        self.db.put_record(id, &rec)?;
        self.db.flush()
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

    /// The role of `id` from this instance's point of view (itself counts as full).
    pub fn role_of(&self, id: &InstanceId) -> Result<Option<Role>> {
        if *id == self.instance_id() {
            return Ok(Some(Role::Full));
        }
        Ok(self.db.trust(id)?.map(|r| r.role))
    }

    fn is_full(&self, id: &InstanceId) -> bool {
        matches!(self.role_of(id), Ok(Some(Role::Full)))
    }

    /// Adds (or updates the role of) a trusted instance from its card string.
    pub fn trust_add(&self, card: &str, role: Role) -> Result<(Signed<InstanceCard>, bool)> {
        let card = card_from_str(card).ctx(|| "reading the card".to_string())?;
        let existed = self.trust_card(&card, role)?;
        Ok((card, existed))
    }

    /// Trusts an instance by its verified card (e.g. a clone's source,
    /// pinned by the address the operator gave). Returns whether it was
    /// already trusted.
    pub fn trust_card(&self, card: &Signed<InstanceCard>, role: Role) -> Result<bool> {
        if card.instance == self.instance_id() {
            return Err(StoreError::Trust("that card is this instance's own".into()));
        }
        let _g = self.lock();
        let existed = self.db.trust(&card.instance)?.is_some();
        self.db.put_trust(
            &card.instance,
            &TrustRecord {
                role,
                card: card.bytes().to_vec(),
                added_at_ms: bbsync_protocol::now_ms(),
            },
        )?;
        Ok(existed)
    }

    /// A trusted instance's verified card and role; `None` when not trusted.
    pub fn trusted_card(&self, id: &InstanceId) -> Result<Option<(InstanceCard, Role)>> {
        let Some(rec) = self.db.trust(id)? else {
            return Ok(None);
        };
        let card = Unverified::<InstanceCard>::decode(&rec.card)
            .and_then(|u| u.verify_self_signed())
            .ctx(|| format!("trust record of {}", id.short()))?;
        Ok(Some((card.into_value(), rec.role)))
    }

    /// Resolves an instance id given in full or as a unique hex prefix (>= 8).
    pub fn resolve_instance(&self, spec: &str) -> Result<InstanceId> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec.len() < 8 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Trust(format!(
                "{spec:?} is not an instance id (give at least 8 hex digits)"
            )));
        }
        let hits: Vec<_> = self
            .db
            .trusted()?
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec))
            .collect();
        match hits.len() {
            1 => Ok(hits[0].0),
            0 => Err(StoreError::Trust(format!("no trusted instance {spec}"))),
            n => Err(StoreError::Trust(format!(
                "instance id {spec} is ambiguous ({n} matches)"
            ))),
        }
    }

    /// Removes a trusted instance.
    pub fn trust_remove(&self, id: &InstanceId) -> Result<()> {
        let _g = self.lock();
        if self.db.remove_trust(id)? {
            Ok(())
        } else {
            Err(StoreError::Trust(format!("no trusted instance {id}")))
        }
    }

    /// The trust table with each instance's verified card.
    pub fn trust_list(&self) -> Result<Vec<(InstanceCard, TrustRecord)>> {
        self.db
            .trusted()?
            .into_iter()
            .map(|(id, rec)| {
                let card = Unverified::<InstanceCard>::decode(&rec.card)
                    .and_then(|u| u.verify_self_signed())
                    .ctx(|| format!("trust record of {}", id.short()))?;
                Ok((card.into_value(), rec))
            })
            .collect()
    }

    /// Whether an owner is in `exclude_owners`: such objects are never
    /// served, and their keys are wrapped for this instance only.
    pub fn excluded_owner(&self, owner: Option<&str>) -> bool {
        owner.is_some_and(|o| self.config.exclude_owners.iter().any(|x| x == o))
    }

    /// The x25519 keys of every trusted `full` instance (recipients of new envelopes).
    pub fn full_recipients(&self) -> Result<Vec<(InstanceId, [u8; 32])>> {
        Ok(self
            .trust_list()?
            .into_iter()
            .filter(|(_, r)| r.role == Role::Full)
            .map(|(c, _)| (c.instance, c.x25519))
            .collect())
    }

    /// Resolves an object given as `kind:name`, or a hex id or id prefix (>= 4 digits).
    pub fn resolve(&self, spec: &str) -> Result<ObjectId> {
        if let Some((kind, name)) = spec.split_once(':')
            && bbsync_protocol::manifest::check_kind(kind).is_ok()
        {
            return self
                .db
                .lookup(kind, name)?
                .ok_or_else(|| StoreError::UnknownObject(spec.to_string()));
        }
        let lower = spec.to_ascii_lowercase();
        if lower.len() >= 4 && lower.len() <= 32 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = Vec::new();
            for r in self.db.objects() {
                let (id, _) = r?;
                if id.to_hex().starts_with(&lower) {
                    hits.push(id);
                }
            }
            return match hits.len() {
                1 => Ok(hits[0]),
                0 => Err(StoreError::UnknownObject(spec.to_string())),
                n => Err(StoreError::AmbiguousObject(spec.to_string(), n)),
            };
        }
        Err(StoreError::UnknownObject(spec.to_string()))
    }

    /// The object's state, or `UnknownObject`.
    pub fn state(&self, id: &ObjectId) -> Result<ObjectState> {
        self.db
            .object(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))
    }

    /// Keyed BLAKE3 (local-only key) over a manifest's and its envelope's
    /// exact bytes. Stored with an object when this instance has verified
    /// or written those bytes; a later read whose bytes still give the same
    /// MAC needs no new signature check (forging one takes this instance's
    /// secret, which could sign manifests anyway). Trust and format rules
    /// are still checked every time.
    pub(crate) fn record_mac(&self, manifest: &[u8], envelope: &[impl AsRef<[u8]>]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.record_key);
        h.update(b"bbsync/record-mac/v1\0");
        h.update(&(manifest.len() as u64).to_be_bytes());
        h.update(manifest);
        h.update(&(envelope.len() as u64).to_be_bytes());
        for e in envelope {
            h.update(&(e.as_ref().len() as u64).to_be_bytes());
            h.update(e.as_ref());
        }
        *h.finalize().as_bytes()
    }

    /// Whether a record's bytes are exactly what this instance verified.
    pub(crate) fn record_checked(&self, rec: &db::ObjectRecord) -> bool {
        rec.state.checked_mac.is_some()
            && rec.state.checked_mac == Some(self.record_mac(&rec.manifest, &rec.envelope))
    }

    /// An object's record with its verification state (see [`Loaded`]).
    pub(crate) fn load(&self, id: &ObjectId) -> Result<Loaded> {
        let rec = self
            .db
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        Ok(self.loaded(rec))
    }

    /// Wraps a record read from the database with its verification state.
    pub(crate) fn loaded(&self, rec: db::ObjectRecord) -> Loaded {
        let mac_ok = self.record_checked(&rec);
        Loaded { rec, mac_ok }
    }

    /// The record's manifest: its signature checked, or known checked
    /// because the record MAC matches; the author trusted (self or `full`)
    /// and the format rules applied in both cases.
    pub(crate) fn manifest_in(&self, id: &ObjectId, l: &Loaded) -> Result<Signed<Manifest>> {
        Unverified::<Manifest>::decode(&l.rec.manifest)
            .and_then(|u| {
                if l.mac_ok {
                    u.dangerously_verified_before(|a| self.is_full(a))
                } else {
                    u.verify(|a| self.is_full(a))
                }
            })
            .ctx(|| format!("manifest of object {}", id.short()))
    }

    /// The latest manifest, signature checked (or known checked, see
    /// [`Store::record_mac`]), author trusted (self or `full`).
    pub fn manifest(&self, id: &ObjectId) -> Result<Signed<Manifest>> {
        let l = self.load(id)?;
        self.manifest_in(id, &l)
    }

    /// The latest manifest and the content key, from one read of the record
    /// (what export, serving and re-import need).
    pub fn manifest_and_key(&self, id: &ObjectId) -> Result<(Signed<Manifest>, ContentKey)> {
        let l = self.load(id)?;
        let m = self.manifest_in(id, &l)?;
        let (_, key) = self.key_in(&m, &l)?;
        Ok((m, key))
    }

    /// The latest manifest as stored, without checking its signature (it was
    /// checked when it entered the database). For listing and GC only.
    pub fn dangerously_manifest_unverified(&self, id: &ObjectId) -> Result<Manifest> {
        let bytes = self
            .db
            .manifest(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        Ok(Unverified::<Manifest>::decode(&bytes)
            .ctx(|| format!("manifest of object {}", id.short()))?
            .dangerously_assume_verified()
            .into_value())
    }

    /// This instance's usable envelope entry for a manifest: addressed to
    /// us, for this object version, wrapped by the author or a trusted
    /// `full` instance, unwrapping to the key the manifest commits to.
    /// `Ok(None)` when there is no entry for us.
    pub fn my_entry(&self, m: &Manifest) -> Result<Option<Signed<EnvelopeEntry>>> {
        let Some(rec) = self.db.record(&m.object_id)? else {
            return Ok(None);
        };
        match self.key_in(m, &self.loaded(rec)) {
            Ok((e, _)) => Ok(Some(e)),
            Err(StoreError::Undecryptable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first entry of a record that is usable for `m` (see
    /// [`Store::my_entry`]) and the content key it holds. No entry for this
    /// instance: `Undecryptable`; entries, none usable: the last problem.
    pub(crate) fn key_in(
        &self,
        m: &Manifest,
        l: &Loaded,
    ) -> Result<(Signed<EnvelopeEntry>, ContentKey)> {
        let ctx = || format!("envelope of object {}", m.object_id.short());
        let protocol = |source| StoreError::Protocol {
            context: ctx(),
            source,
        };
        let (candidates, decode_err) = self.entry_candidates(&l.rec);
        let mut last_err: Option<StoreError> = decode_err.map(protocol);
        let author = m.author;
        for u in candidates {
            let trusted = |w: &InstanceId| *w == author || self.is_full(w);
            let r = if l.mac_ok {
                u.dangerously_verified_before(trusted)
            } else {
                u.verify(trusted)
            };
            match r {
                Ok(e) => match self.usable_entry(m, e) {
                    Ok(found) => return Ok(found),
                    Err(e) => last_err = Some(e),
                },
                Err(e) => last_err = Some(protocol(e)),
            }
        }
        Err(last_err.unwrap_or_else(|| StoreError::Undecryptable(m.object_id.to_hex())))
    }

    /// The checks on an entry after its signature: for this manifest's
    /// object version, unwraps, and the key matches the manifest's key
    /// commitment.
    pub(crate) fn usable_entry(
        &self,
        m: &Manifest,
        e: Signed<EnvelopeEntry>,
    ) -> Result<(Signed<EnvelopeEntry>, ContentKey)> {
        if e.recipient != self.instance_id() || !entry_fits(&e, m) {
            return Err(StoreError::Invalid(format!(
                "envelope entry of {} is for another instance or version",
                m.object_id.short()
            )));
        }
        let key = self.unwrap_for(m, &e)?;
        Ok((e, key))
    }

    /// The entries of a record that claim this instance as recipient (not
    /// yet verified), in stored order, and the last decoding error seen.
    pub(crate) fn entry_candidates(
        &self,
        rec: &db::ObjectRecord,
    ) -> (
        Vec<Unverified<EnvelopeEntry>>,
        Option<bbsync_protocol::Error>,
    ) {
        let me = self.instance_id();
        let mut out = Vec::new();
        let mut err = None;
        for raw in &rec.envelope {
            match Unverified::<EnvelopeEntry>::decode(raw) {
                // Entries for other instances are none of our business here.
                Ok(u) if u.claimed().recipient == me => out.push(u),
                Ok(_) => {}
                Err(e) => err = Some(e),
            }
        }
        (out, err)
    }

    /// The content key of a manifest's object.
    pub fn content_key(&self, m: &Manifest) -> Result<ContentKey> {
        let l = self.load(&m.object_id)?;
        Ok(self.key_in(m, &l)?.1)
    }

    /// Unwraps an entry addressed to this instance (exchange results
    /// cached) and checks the key against `m`'s key commitment
    /// ([`Manifest::check_key`]): the only way this store turns an entry
    /// into a content key.
    pub fn unwrap_for(&self, m: &Manifest, entry: &Signed<EnvelopeEntry>) -> Result<ContentKey> {
        let key = self
            .unwrapper
            .unwrap(&self.identity, entry)
            .and_then(|k| m.check_key(&k).map(|()| k))
            .ctx(|| format!("envelope entry of {}", m.object_id.short()))?;
        Ok(key)
    }

    /// Verifies the envelope entries of a manifest received whole (a peer's
    /// page, a backup's manifest file, a record written before schema 2):
    /// keeps the bytes of each entry whose signature checks, whose wrapper
    /// is the author, this instance or trusted (`trusted`), and that is for
    /// this object version; returns them and how many were dropped. What is
    /// recorded (and covered by a record MAC) is only what this returns.
    pub(crate) fn verified_entries(
        &self,
        m: &Manifest,
        raw: &[Vec<u8>],
        trusted: &dyn Fn(&InstanceId) -> bool,
    ) -> (Vec<Vec<u8>>, usize) {
        let (kept, _, dropped) = self.verified_entry_values(m, raw, trusted);
        (kept, dropped)
    }

    /// [`Store::verified_entries`], with the verified entries themselves
    /// (in the order of the kept bytes), so that a caller looking for its
    /// key does not check their signatures a second time.
    pub(crate) fn verified_entry_values(
        &self,
        m: &Manifest,
        raw: &[Vec<u8>],
        trusted: &dyn Fn(&InstanceId) -> bool,
    ) -> (Vec<Vec<u8>>, Vec<Signed<EnvelopeEntry>>, usize) {
        let me = self.instance_id();
        let author = m.author;
        let decoded: Vec<(usize, Unverified<EnvelopeEntry>)> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Unverified::<EnvelopeEntry>::decode(b).ok().map(|u| (i, u)))
            .collect();
        let idx: Vec<usize> = decoded.iter().map(|(i, _)| *i).collect();
        let results =
            bbsync_protocol::verify_many(decoded.into_iter().map(|(_, u)| u).collect(), |_, w| {
                *w == author || *w == me || trusted(w)
            });
        let mut kept = Vec::new();
        let mut values = Vec::new();
        for (i, r) in idx.into_iter().zip(results) {
            if let Ok(e) = r
                && entry_fits(&e, m)
            {
                kept.push(raw[i].clone());
                values.push(e);
            }
        }
        let dropped = raw.len() - kept.len();
        (kept, values, dropped)
    }

    /// This instance and every trusted `full` instance: the recipients of new envelopes.
    pub fn recipients(&self) -> Result<Vec<(InstanceId, [u8; 32])>> {
        let mut recipients = vec![(self.instance_id(), self.identity.x25519_public())];
        recipients.extend(self.full_recipients()?);
        Ok(recipients)
    }

    /// The recipients of an object's envelope: [`Store::recipients`], or
    /// this instance alone for an owner in `exclude_owners` (those objects
    /// never leave this node, and their entries would reach every backup).
    pub fn recipients_for<'a>(
        &self,
        all: &'a [(InstanceId, [u8; 32])],
        owner: Option<&str>,
    ) -> &'a [(InstanceId, [u8; 32])] {
        if self.excluded_owner(owner) {
            let me = self.instance_id();
            let n = all.iter().position(|(i, _)| *i == me).map_or(0, |p| p + 1);
            &all[..n]
        } else {
            all
        }
    }

    /// Builds envelope entries for `key` addressed to `recipients` in one wrap session.
    pub fn wrap_for(
        &self,
        session: &WrapSession<'_>,
        recipients: &[(InstanceId, [u8; 32])],
        object_id: ObjectId,
        version: u64,
        key: &ContentKey,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(recipients.len());
        for (id, x) in recipients {
            let e = session.wrap(object_id, version, *id, x, key).ctx(|| {
                format!(
                    "wrapping the key of {} for {}",
                    object_id.short(),
                    id.short()
                )
            })?;
            out.push(e.bytes().to_vec());
        }
        Ok(out)
    }

    /// Drops the chunks no manifest references from the index, deletes
    /// packs left empty and repacks packs mostly dead (see [`packs::Packs::collect`]).
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
