//! Creating and opening a data dir: the identity file (optionally sealed
//! with a passphrase), the database and its schema check, recovery of what
//! a crash left, and the chunk index's repair.

use std::{fs, path::Path};

use bbsync_protocol::Identity;

use crate::{error::Context, *};

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
        if db.last_seq()? > 0 || !db.has_no_objects() || !db.trusted()?.is_empty() {
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

    /// Flushes the database, then leaves the rest of its teardown to the
    /// end of the process: for a command that exits right after its work.
    /// sled's drop would free its page cache page by page and join its
    /// threads, 4-8 ms that a one-shot `verify` or `backup` spends after
    /// its work is done. Durable afterwards is what a drop would have made
    /// durable (an exit now is what a kill after a flush is, which sled
    /// recovers from as from any crash). The identity and the record key
    /// are dropped, and so zeroized, here. The database's lock is held
    /// until the exit: this process must not open the data dir again.
    pub fn close_at_exit(self) -> Result<()> {
        let Store { db, .. } = self;
        db.flush()?;
        std::mem::forget(db);
        Ok(())
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
}
