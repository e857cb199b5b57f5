//! # bbsync-store
//!
//! The encrypted, content-addressed store of a bbsync node: sled metadata
//! (in [`db`], the only module that touches sled), chunk files under
//! `<data>/chunks/`, import of files, directories and whole BBS trees,
//! export, verification and garbage collection.
//!
//! ```text
//! <data>/identity.key   secrets (0600)
//! <data>/config.toml    operator settings
//! <data>/db/            sled metadata
//! <data>/chunks/ab/<id> one file per sealed chunk
//! ```

pub mod archive;
pub mod backup;
pub mod bbs;
pub mod chunks;
pub mod config;
pub mod db;
mod error;
pub mod export;
pub mod failpoint;
pub mod import;
pub mod progress;
pub mod rekey;
pub mod sync;
pub mod verify;

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use bbsync_protocol::{
    ContentKey, EnvelopeEntry, Identity, InstanceCard, InstanceId, Manifest, ObjectId, Role,
    Signed, Unverified, WrapSession, card_from_str,
};

pub use config::Config;
pub use db::{ObjectState, SCHEMA_VERSION, TrustRecord};
use error::Context;
pub use error::{ErrorKind, Result, StoreError};

/// An open store. One process holds it at a time (sled's file lock).
pub struct Store {
    dir: PathBuf,
    identity: Identity,
    db: db::Db,
    chunks: chunks::ChunkFiles,
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
const CONFIG_FILE: &str = "config.toml";

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

/// Whether a verified entry is for exactly this manifest's object version.
pub(crate) fn entry_fits(e: &EnvelopeEntry, m: &Manifest) -> bool {
    e.object_id == m.object_id && e.version == m.version
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
        let identity = Identity::generate(name, bbsync_protocol::now_ms())
            .ctx(|| "creating the identity".to_string())?;
        Self::init_with(dir, identity)
    }

    /// Creates a new store in `dir` (new or empty) with a given identity
    /// (a restore of an escrowed identity, for disaster recovery).
    pub fn init_with(dir: &Path, identity: Identity) -> Result<Self> {
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
        // The database first: if another process races us, its lock stops us
        // before we write an identity.
        let db = db::Db::open(&dir.join("db"), dir, true)?;
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
        write_file_atomic(&dir.join(IDENTITY_FILE), &identity.to_file_bytes(), 0o600)?;
        let chunks = chunks::ChunkFiles::open(&dir.join("chunks"))?;
        let record_key = identity.local_key("record-mac");
        Ok(Store {
            dir: dir.to_path_buf(),
            identity,
            db,
            chunks,
            config: Config::default(),
            write_lock: Mutex::new(()),
            unwrapper: bbsync_protocol::Unwrapper::new(),
            record_key,
        })
    }

    /// Opens an existing store.
    pub fn open(dir: &Path) -> Result<Self> {
        check_data_dir(dir)?;
        let id_path = dir.join(IDENTITY_FILE);
        let id_bytes = match fs::read(&id_path) {
            Ok(b) => zeroize::Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotInitialized(dir.to_path_buf()));
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", id_path.display())),
        };
        let identity = Identity::from_file_bytes(&id_bytes)
            .ctx(|| format!("loading {}", id_path.display()))?;
        let config = Config::load(&dir.join(CONFIG_FILE))?;
        if !dir.join("db").is_dir() {
            return Err(StoreError::NotInitialized(dir.to_path_buf()));
        }
        let db = db::Db::open(&dir.join("db"), dir, false)?;
        let chunks = chunks::ChunkFiles::open(&dir.join("chunks"))?;
        let record_key = identity.local_key("record-mac");
        let store = Store {
            dir: dir.to_path_buf(),
            identity,
            db,
            chunks,
            config,
            write_lock: Mutex::new(()),
            unwrapper: bbsync_protocol::Unwrapper::new(),
            record_key,
        };
        if store.chunks.recovered() || store.db.gc_pending()? {
            // The last writer stopped between publishing chunks and recording
            // them, or between replacing versions and collecting their old
            // chunks: what no manifest references is garbage from that write.
            let (n, bytes) = store.gc()?;
            tracing::info!(
                files = n,
                bytes,
                "recovered from an interrupted write: removed unreferenced chunk files"
            );
        }
        Ok(store)
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

    /// The database.
    pub fn db(&self) -> &db::Db {
        &self.db
    }

    /// The chunk files.
    pub fn chunks(&self) -> &chunks::ChunkFiles {
        &self.chunks
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
    pub fn record_mac(&self, manifest: &[u8], envelope: &[impl AsRef<[u8]>]) -> [u8; 32] {
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

    /// An object's record, and whether its bytes are exactly what this
    /// instance verified (its record MAC matches).
    fn checked_record(&self, id: &ObjectId) -> Result<(db::ObjectRecord, bool)> {
        let rec = self
            .db
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        let checked = self.record_checked(&rec);
        Ok((rec, checked))
    }

    fn manifest_in(
        &self,
        id: &ObjectId,
        rec: &db::ObjectRecord,
        checked: bool,
    ) -> Result<Signed<Manifest>> {
        Unverified::<Manifest>::decode(&rec.manifest)
            .and_then(|u| {
                if checked {
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
        let (rec, checked) = self.checked_record(id)?;
        self.manifest_in(id, &rec, checked)
    }

    /// The latest manifest and the content key, from one read of the record
    /// (what export, serving and re-import need).
    pub fn manifest_and_key(&self, id: &ObjectId) -> Result<(Signed<Manifest>, ContentKey)> {
        let (rec, checked) = self.checked_record(id)?;
        let m = self.manifest_in(id, &rec, checked)?;
        let entry = self.entry_in(&m, &rec, checked)?;
        let key = self.key_from(&m, entry)?;
        Ok((m, key))
    }

    /// The latest manifest as stored, without checking its signature (it was
    /// checked when it entered the database). For listing and GC only.
    pub fn manifest_unchecked(&self, id: &ObjectId) -> Result<Manifest> {
        let bytes = self
            .db
            .manifest(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        Ok(Unverified::<Manifest>::decode(&bytes)
            .ctx(|| format!("manifest of object {}", id.short()))?
            .dangerously_assume_verified()
            .into_value())
    }

    /// This instance's envelope entry for a manifest, verified: addressed to
    /// us, for this object version, wrapped by the author or a trusted `full`
    /// instance. `Ok(None)` when there is no entry for us.
    pub fn my_entry(&self, m: &Manifest) -> Result<Option<Signed<EnvelopeEntry>>> {
        let Some(rec) = self.db.record(&m.object_id)? else {
            return Ok(None);
        };
        let checked = self.record_checked(&rec);
        self.entry_in(m, &rec, checked)
    }

    fn entry_in(
        &self,
        m: &Manifest,
        rec: &db::ObjectRecord,
        checked: bool,
    ) -> Result<Option<Signed<EnvelopeEntry>>> {
        let (candidates, mut last_err) = self.entry_candidates(rec);
        let author = m.author;
        for u in candidates {
            let trusted = |w: &InstanceId| *w == author || self.is_full(w);
            let r = if checked {
                u.dangerously_verified_before(trusted)
            } else {
                u.verify(trusted)
            };
            match r {
                Ok(e) if entry_fits(&e, m) => return Ok(Some(e)),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e).ctx(|| format!("envelope of object {}", m.object_id.short())),
            None => Ok(None),
        }
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
        let entry = self.my_entry(m)?;
        self.key_from(m, entry)
    }

    fn key_from(&self, m: &Manifest, entry: Option<Signed<EnvelopeEntry>>) -> Result<ContentKey> {
        let entry = entry.ok_or_else(|| StoreError::Undecryptable(m.object_id.to_hex()))?;
        self.unwrap_entry(&entry)
            .ctx(|| format!("envelope of object {}", m.object_id.short()))
    }

    /// Unwraps an entry addressed to this instance (exchange results cached).
    pub fn unwrap_entry(
        &self,
        entry: &Signed<EnvelopeEntry>,
    ) -> bbsync_protocol::Result<ContentKey> {
        self.unwrapper.unwrap(&self.identity, entry)
    }

    /// This instance and every trusted `full` instance: the recipients of new envelopes.
    pub fn recipients(&self) -> Result<Vec<(InstanceId, [u8; 32])>> {
        let mut recipients = vec![(self.instance_id(), self.identity.x25519_public())];
        recipients.extend(self.full_recipients()?);
        Ok(recipients)
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

    /// Removes chunk files no manifest references. Returns (files, bytes) removed.
    pub fn gc(&self) -> Result<(u64, u64)> {
        let _g = self.lock();
        let referenced = self.referenced_chunks()?;
        let mut files = 0;
        let mut bytes = 0;
        for item in self.chunks.list()? {
            if let Ok((id, len)) = item
                && !referenced.contains(&id)
            {
                failpoint::check("gc.remove", || format!("removing chunk {}", id.short()))?;
                self.chunks.remove(&id)?;
                files += 1;
                bytes += len;
            }
        }
        self.db.clear_gc_pending()?;
        Ok((files, bytes))
    }

    /// Every chunk id referenced by a stored manifest.
    pub fn referenced_chunks(&self) -> Result<std::collections::HashSet<bbsync_protocol::ChunkId>> {
        let mut set = std::collections::HashSet::new();
        for r in self.db.objects() {
            let (id, st) = r?;
            if st.deleted {
                continue;
            }
            for c in self.manifest_unchecked(&id)?.chunks {
                set.insert(c.id);
            }
        }
        Ok(set)
    }
}
