//! Backup repositories (DESIGN §7, docs/backup.md): the store's sealed
//! chunks, its manifests with their full envelopes, and snapshot files that
//! list what one backup holds. A backup never decrypts anything; every
//! backup after the first copies only what the repository lacks.
//!
//! ```text
//! repo.json                    {format, repo_id, created}
//! chunks/ab/<hex>              sealed chunks, named by ChunkId
//! manifests/<ManifestId>       manifest + full envelope (postcard)
//! snapshots/<utc>-<short>.json one backup, signed by its host (base64 in JSON)
//! keys/identity.<id>           optional identity escrow (argon2id + AES-256-GCM)
//! ```
//!
//! Write order: chunks and manifests first, then one `syncfs`, then the
//! snapshot file (temp, fsync, rename, fsync of the directory). A crash
//! leaves no snapshot that points at missing data, and the next backup
//! reuses what was already copied.

pub mod backend;
pub mod check;
mod collect;
pub mod config;
pub mod create;
pub mod escrow;
pub mod history;
pub mod location;
pub mod migrate;
mod problem;
pub mod reader;
pub mod repofile;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod v2;

use std::{
    collections::HashSet,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

pub use backend::{Backend, LocalDir};
use bbsync_protocol::{
    ChunkId, ManifestId, Signed, Snapshot, Unverified, card_from_str, card_to_string,
};
pub use config::BackupConfig;
pub use location::{RepoLocation, RepoStorage, S3Settings};
pub use reader::RepoReader;
use repofile::{
    LegacySnapshotFile, SNAPSHOT_FILE_FORMAT, SignedSnapshotFile, SnapObject, SnapTrust,
};
pub use repofile::{REPO_FORMAT, RepoFile, SnapshotFile, SnapshotSignature};
pub use s3::{RequestCounts, S3Backend};
pub use v2::lock::LockFor;

use crate::error::{Result, StoreError};

/// The format a new repository gets unless told otherwise
/// (`backup --repo-format`, docs/backup.md).
pub const DEFAULT_REPO_FORMAT: u16 = v2::format::CONFIG_FORMAT;

/// An opened backup repository of either format: format 1 (§16 of
/// docs/format.md: a file per chunk and per manifest, `repo.json`) or
/// format 2 (§17: packs, index files, `config`). Every command works on it
/// through the same methods; the format is read from the repository.
#[derive(Clone)]
pub struct Repo {
    backend: Arc<dyn Backend>,
    kind: RepoKind,
    /// How long taking a lock waits for a conflicting holder (0: refuse at once).
    lock_wait: std::time::Duration,
}

#[derive(Clone)]
enum RepoKind {
    V1(RepoFile),
    V2(v2::Repo2),
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.backend.location())
            .finish()
    }
}

/// `chunks/ab/<hex>` of a chunk.
pub fn chunk_path(id: &ChunkId) -> String {
    let h = id.to_hex();
    format!("chunks/{}/{h}", &h[..2])
}

/// `manifests/<hex>` of a manifest.
pub fn manifest_path(id: &ManifestId) -> String {
    format!("manifests/{}", id.to_hex())
}

/// The sequence number a new snapshot gets among `ids`: one more than the
/// highest any of them has (old ids without one count as 0).
pub(crate) fn seq_after(ids: &[String]) -> u64 {
    ids.iter()
        .map(|i| snapshot_seq(i))
        .max()
        .unwrap_or(0)
        .saturating_add(1)
}

/// The per-repository sequence number of a snapshot id. Ids are
/// `<YYYYMMDDTHHMMSSZ>-<sequence, at least 6 digits>-<8 random hex>` since
/// issue 13 (the id is signed with the snapshot, so is its sequence); ids
/// written before, `<YYYYMMDDTHHMMSSZ>-<8 random hex>`, have sequence 0.
pub fn snapshot_seq(id: &str) -> u64 {
    let mut parts = id.split('-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(seq), Some(_), None)
            if (6..=19).contains(&seq.len()) && seq.bytes().all(|b| b.is_ascii_digit()) =>
        {
            seq.parse().unwrap_or(0)
        }
        _ => 0,
    }
}

/// The id of a new snapshot taken at `created_ms` with sequence `seq`.
pub fn new_snapshot_id(created_ms: u64, seq: u64) -> String {
    let mut short = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut short);
    format!(
        "{}-{seq:06}-{}",
        rfc3339(created_ms).replace([':', '-'], ""),
        hex::encode(short)
    )
}

/// The snapshot `spec` names among `ids` (both formats): an exact id, a
/// unique prefix, or a unique random suffix.
pub(crate) fn match_snapshot_id(ids: &[String], spec: &str, location: &str) -> Result<String> {
    if ids.iter().any(|i| i == spec) {
        return Ok(spec.to_string());
    }
    let hits: Vec<&String> = ids
        .iter()
        .filter(|i| !spec.is_empty() && (i.starts_with(spec) || i.rsplit('-').next() == Some(spec)))
        .collect();
    match hits.len() {
        1 => Ok(hits[0].clone()),
        0 => Err(StoreError::Invalid(format!(
            "no snapshot {spec} in {location}"
        ))),
        n => Err(StoreError::Invalid(format!(
            "snapshot {spec} is ambiguous ({n} matches)"
        ))),
    }
}

/// `snapshots/<id>.json`.
pub fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}.json")
}

/// `items` cut into consecutive slices of about `max` bytes each (by
/// `len`; at least one item per slice).
pub(crate) fn byte_batches<T>(
    items: &[T],
    max: u64,
    len: impl Fn(&T) -> u64,
) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut acc = 0u64;
        let mut n = 0;
        while n < rest.len() && (n == 0 || acc + len(&rest[n]) <= max) {
            acc += len(&rest[n]);
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

pub(crate) fn repo_io_err(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io {
        context: what,
        source,
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of a day number since 1970-01-01
/// (Howard Hinnant's civil-from-days).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-26T03:50:12Z` for ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Lists `chunks/` as a set of chunk ids; names that are not chunk ids are
/// returned apart (as paths).
pub fn list_chunks(b: &dyn Backend) -> Result<(HashSet<ChunkId>, Vec<String>)> {
    let mut ids = HashSet::new();
    let mut strays = Vec::new();
    for d in b
        .list("chunks")
        .map_err(repo_io_err(format!("listing {}/chunks", b.location())))?
    {
        let dir = format!("chunks/{d}");
        for name in b
            .list(&dir)
            .map_err(repo_io_err(format!("listing {}/{dir}", b.location())))?
        {
            match hex::decode(&name)
                .ok()
                .and_then(|v| ChunkId::from_slice(&v).ok())
            {
                Some(id) if name.starts_with(&d) && d.len() == 2 => {
                    ids.insert(id);
                }
                _ => strays.push(format!("{dir}/{name}")),
            }
        }
    }
    Ok((ids, strays))
}

impl Repo {
    /// The storage.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The storage, shared.
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// The repository format: 1 or 2.
    pub fn format(&self) -> u16 {
        match &self.kind {
            RepoKind::V1(i) => i.format,
            RepoKind::V2(r) => r.config.format,
        }
    }

    /// The random id of the repository.
    pub fn repo_id(&self) -> &str {
        match &self.kind {
            RepoKind::V1(i) => &i.repo_id,
            RepoKind::V2(r) => &r.config.repo_id,
        }
    }

    /// The format-2 repository, when it is one.
    pub fn v2(&self) -> Option<&v2::Repo2> {
        match &self.kind {
            RepoKind::V1(_) => None,
            RepoKind::V2(r) => Some(r),
        }
    }

    /// How long commands wait for a conflicting lock (`--lock-wait`).
    pub fn lock_wait(&self) -> std::time::Duration {
        self.lock_wait
    }

    /// The same repository whose locks wait up to `wait` for a
    /// conflicting holder to go (`--lock-wait`; default: refuse at once).
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Repo {
        self.lock_wait = wait;
        self
    }

    /// Takes a lock on a format-2 repository for `what` (exclusive for
    /// migrate, prune and delete; shared for backup, restore, verify,
    /// export and stats), waiting up to the repository's lock wait. A
    /// format-1 repository has no locks: `None`.
    pub fn lock(&self, host: &str, what: LockFor) -> Result<Option<v2::lock::LockGuard>> {
        match &self.kind {
            RepoKind::V2(_) if self.backend.is_read_only() => Ok(None),
            RepoKind::V1(_) => Ok(None),
            RepoKind::V2(r) => r.lock_waiting(host, what, self.lock_wait).map(Some),
        }
    }

    /// The shared lock of a backup into a format-1 repository: format 1
    /// has no locks of its own, but a migration to format 2 takes an
    /// exclusive one, and a format-1 backup must not run into it.
    pub(crate) fn lock_format1_writer(&self, host: &str) -> Result<v2::lock::LockGuard> {
        v2::Repo2::from_parts(
            self.backend.clone(),
            v2::format::ConfigFile {
                format: REPO_FORMAT,
                repo_id: self.repo_id().to_string(),
                created: String::new(),
                pack_target: crate::packs::PACK_TARGET,
            },
        )
        .lock_waiting(host, LockFor::BACKUP, self.lock_wait)
    }

    /// A reader of the repository's manifests and chunks: format 2 loads
    /// its index once here.
    pub fn reader(&self) -> Result<RepoReader<'_>> {
        let index = match &self.kind {
            RepoKind::V1(_) => None,
            RepoKind::V2(r) => Some(r.load_index()?),
        };
        Ok(RepoReader {
            repo: self,
            index,
            pack_sizes: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Opens the repository in a local directory.
    pub fn open_dir(dir: &Path) -> Result<Repo> {
        Repo::open(Arc::new(LocalDir::new(dir)))
    }

    /// Opens the repository at a local path: a directory, or an export
    /// file (`backups export`) read in place, read only.
    pub fn open_path(path: &Path) -> Result<Repo> {
        if path.is_file() {
            let t = v2::tar::TarBackend::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::Repo(e.to_string())
                } else {
                    repo_io_err(format!("reading {}", path.display()))(e)
                }
            })?;
            return Repo::open(Arc::new(t));
        }
        Repo::open_dir(path)
    }

    /// Opens a repository of either format: `config` (format 2) or
    /// `repo.json` (format 1) must be there, not both (a migration that
    /// stopped before its end: `backups migrate` finishes it).
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repo> {
        let loc = backend.location();
        let has = |name: &str| {
            backend
                .size(name)
                .map(|s| s.is_some())
                .map_err(repo_io_err(format!("reading {loc}/{name}")))
        };
        let (config, legacy) = (has("config")?, has("repo.json")?);
        if config && legacy {
            return Err(StoreError::Repo(format!(
                "backup repository {loc} holds both config (format 2) and repo.json (format 1): a migration to format 2 stopped before its end; run `bbsync backups migrate --repo {loc}` to finish it"
            )));
        }
        if config {
            let r = v2::Repo2::open(backend.clone())?;
            return Ok(Repo {
                backend,
                kind: RepoKind::V2(r),
                lock_wait: std::time::Duration::ZERO,
            });
        }
        if !legacy
            && !backend
                .list("index")
                .map_err(repo_io_err(format!("listing {loc}/index")))?
                .is_empty()
        {
            return Err(StoreError::Repo(format!(
                "{loc} is not a bbsync backup repository (no config)"
            )));
        }
        let bytes = match backend.read("repo.json") {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Repo(format!(
                    "{loc} is not a bbsync backup repository (no repo.json)"
                )));
            }
            Err(e) => return Err(repo_io_err(format!("reading {loc}/repo.json"))(e)),
        };
        #[derive(serde::Deserialize)]
        struct Probe {
            format: u16,
        }
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Repo(format!("{loc}/repo.json is not a valid repo.json: {e}"))
        })?;
        if probe.format > REPO_FORMAT {
            return Err(StoreError::Repo(format!(
                "backup repository {loc} has format {}; this bbsync reads format {REPO_FORMAT} (upgrade bbsync)",
                probe.format
            )));
        }
        let info: RepoFile = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Repo(format!("{loc}/repo.json is not a valid repo.json: {e}"))
        })?;
        Ok(Repo {
            backend,
            kind: RepoKind::V1(info),
            lock_wait: std::time::Duration::ZERO,
        })
    }

    /// Opens the repository of a storage that is not a local directory
    /// (S3), creating a format-2 one when nothing is there yet (`config`
    /// and `repo.json` both absent). Format 1 lives in local directories
    /// only: asking for it here is refused.
    pub fn open_or_create(backend: Arc<dyn Backend>, format: u16) -> Result<(Repo, bool)> {
        let loc = backend.location();
        let has = |name: &str| {
            backend
                .size(name)
                .map(|s| s.is_some())
                .map_err(repo_io_err(format!("reading {loc}/{name}")))
        };
        if has("config")? || has("repo.json")? {
            return Ok((Repo::open(backend)?, false));
        }
        if format != v2::format::CONFIG_FORMAT {
            return Err(StoreError::Invalid(format!(
                "--repo-format {format}: {loc} is not a local directory, and only format 2 lives elsewhere (nothing was backed up)"
            )));
        }
        let r = v2::Repo2::create(backend.clone())?;
        Ok((
            Repo {
                backend,
                kind: RepoKind::V2(r),
                lock_wait: std::time::Duration::ZERO,
            },
            true,
        ))
    }

    /// Opens the repository in a local directory, creating it in `format`
    /// (1 or 2, [`DEFAULT_REPO_FORMAT`] unless the operator says) when the
    /// directory does not exist or is empty. An existing repository keeps
    /// its format: `format` only says what a new one gets.
    pub fn open_or_create_dir(dir: &Path, format: u16) -> Result<(Repo, bool)> {
        if format != REPO_FORMAT && format != v2::format::CONFIG_FORMAT {
            return Err(StoreError::Invalid(format!(
                "--repo-format {format}: this bbsync writes repository formats 1 and 2"
            )));
        }
        let empty = match std::fs::read_dir(dir) {
            // (A temp repo.json or config is a creation that was interrupted.)
            Ok(rd) => rd
                .flatten()
                .all(|e| e.file_name() == ".repo.json.tmp" || e.file_name() == ".config.tmp"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(repo_io_err(format!("reading {}", dir.display()))(e)),
        };
        if !empty {
            return Ok((Repo::open_dir(dir)?, false));
        }
        // Owner-only, whatever the umask: a repository holds the store's
        // ciphertext, every envelope and possibly the identity escrow.
        backend::create_private_dir(dir)
            .map_err(repo_io_err(format!("creating {}", dir.display())))?;
        if format == v2::format::CONFIG_FORMAT {
            let backend: Arc<dyn Backend> = Arc::new(LocalDir::new(dir));
            let r = v2::Repo2::create(backend.clone())?;
            return Ok((
                Repo {
                    backend,
                    kind: RepoKind::V2(r),
                    lock_wait: std::time::Duration::ZERO,
                },
                true,
            ));
        }
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let info = RepoFile {
            format: REPO_FORMAT,
            repo_id: hex::encode(id),
            created: rfc3339(now_ms()),
        };
        let backend: Arc<dyn Backend> = Arc::new(LocalDir::new(dir));
        let mut bytes = serde_json::to_vec_pretty(&info)
            .map_err(|e| StoreError::Invalid(format!("encoding repo.json: {e}")))?;
        bytes.push(b'\n');
        crate::failpoint::hit("backup.repo_config")
            .and_then(|()| backend.write("repo.json", &bytes))
            .map_err(repo_io_err(format!("writing {}/repo.json", dir.display())))?;
        Ok((
            Repo {
                backend,
                kind: RepoKind::V1(info),
                lock_wait: std::time::Duration::ZERO,
            },
            true,
        ))
    }

    /// Snapshot ids, oldest first: by their per-repository sequence
    /// ([`snapshot_seq`]; ids written before it have sequence 0 and come
    /// first), then by name (which starts with the UTC second).
    pub fn snapshot_ids(&self) -> Result<Vec<String>> {
        if let RepoKind::V2(r) = &self.kind {
            return r.snapshot_ids();
        }
        let mut ids: Vec<String> = self
            .backend
            .list("snapshots")
            .map_err(repo_io_err(format!(
                "listing {}/snapshots",
                self.location()
            )))?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort_by(|a, b| (snapshot_seq(a), a).cmp(&(snapshot_seq(b), b)));
        Ok(ids)
    }

    /// The sequence number the next snapshot of this repository gets: one
    /// more than the highest any snapshot in it has.
    pub fn next_snapshot_seq(&self) -> Result<u64> {
        Ok(seq_after(&self.snapshot_ids()?))
    }

    /// The latest snapshot: the highest sequence number; among snapshots
    /// that share it (two writers at once, or ids of the same second
    /// written before sequence numbers) the latest signed creation time
    /// (its file is read and checked: a damaged one is an error, not
    /// skipped).
    fn latest_of(&self, ids: &[String]) -> Result<String> {
        let Some(last) = ids.last() else {
            return Err(StoreError::Invalid(format!(
                "no snapshot in {} yet",
                self.location()
            )));
        };
        let seq = snapshot_seq(last);
        let second = |i: &str| i.split('-').next().unwrap_or("").to_string();
        let peers: Vec<&String> = ids
            .iter()
            .filter(|i| snapshot_seq(i) == seq && (seq > 0 || second(i) == second(last)))
            .collect();
        if peers.len() == 1 {
            return Ok(last.clone());
        }
        let mut best: Option<(u64, String)> = None;
        for id in peers {
            let s = self.load_snapshot(id)?;
            let key = (s.created_ms, id.clone());
            if best.as_ref().is_none_or(|b| key > *b) {
                best = Some(key);
            }
        }
        Ok(best.map_or_else(|| last.clone(), |(_, id)| id))
    }

    /// Resolves a snapshot given in full, as a unique prefix, by its
    /// random suffix, or `latest` (see [`Repo::snapshot_ids`]).
    pub fn resolve_snapshot(&self, spec: &str) -> Result<String> {
        let ids = self.snapshot_ids()?;
        if spec == "latest" {
            return self.latest_of(&ids);
        }
        match_snapshot_id(&ids, spec, &self.location())
    }

    /// Reads and checks a snapshot file: a signed one (format 2) must
    /// decode and its host's signature verify; an unsigned legacy one
    /// (format 1) must be valid JSON whose checksum matches its object list.
    /// Either way its id must match its name. The host is not judged here:
    /// that is the restoring store's decision.
    pub fn load_snapshot(&self, id: &str) -> Result<SnapshotFile> {
        if let RepoKind::V2(r) = &self.kind {
            return r.load_snapshot(id);
        }
        let path = snapshot_path(id);
        let bytes = match self.backend.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Invalid(format!(
                    "no snapshot {id} in {}",
                    self.location()
                )));
            }
            Err(e) => {
                return Err(repo_io_err(format!("reading {}/{path}", self.location()))(
                    e,
                ));
            }
        };
        let not_valid = |e: &dyn std::fmt::Display| {
            StoreError::Repo(format!(
                "snapshot {id}: {path} is not a valid snapshot file ({e})"
            ))
        };
        #[derive(serde::Deserialize)]
        struct Probe {
            format: u16,
        }
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| not_valid(&e))?;
        let s = match probe.format {
            SNAPSHOT_FILE_FORMAT => {
                let f: SignedSnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| not_valid(&e))?;
                let wire = data_encoding::BASE64
                    .decode(f.snapshot.as_bytes())
                    .map_err(|e| not_valid(&format!("snapshot: {e}")))?;
                let un = Unverified::<Snapshot>::decode(&wire).map_err(|e| not_valid(&e))?;
                // Self-signed by the host it names (the card inside is
                // checked to be the host's by validation).
                let signed = un.verify(|_| true).map_err(|e| match e.kind() {
                    bbsync_protocol::ErrorKind::BadSignature => StoreError::BadSnapshot {
 fault: crate::SnapshotFault::BadSignature,
 message: format!(
                        "snapshot {id}: bad signature: {path} was changed after its host signed it"
                    ),
 },
                    _ => not_valid(&e),
                })?;
                view_of(signed)?
            }
            1 => {
                let s: LegacySnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| not_valid(&e))?;
                let sum = repofile::objects_sha256(&s.objects);
                if sum != s.objects_sha256 {
                    return Err(StoreError::BadSnapshot {
                        fault: crate::SnapshotFault::ChecksumMismatch,
                        message: format!(
                            "snapshot {id}: checksum mismatch: the file says {}, its object list hashes to {sum}",
                            s.objects_sha256
                        ),
                    });
                }
                legacy_view(s)
            }
            f => {
                return Err(StoreError::Repo(format!(
                    "snapshot {id}: written in snapshot format {f}; this bbsync reads formats 1 and {SNAPSHOT_FILE_FORMAT} (upgrade bbsync)"
                )));
            }
        };
        if s.id != id {
            return Err(StoreError::Repo(format!(
                "snapshot {id}: {path} says it is snapshot {}",
                s.id
            )));
        }
        Ok(s)
    }

    /// Writes a signed snapshot file durably (the last step of a backup).
    pub(crate) fn write_snapshot(&self, s: &Signed<Snapshot>) -> Result<()> {
        let file = SignedSnapshotFile {
            format: SNAPSHOT_FILE_FORMAT,
            snapshot: data_encoding::BASE64.encode(s.bytes()),
        };
        let mut bytes = serde_json::to_vec(&file)
            .map_err(|e| StoreError::Invalid(format!("encoding the snapshot: {e}")))?;
        bytes.push(b'\n');
        let path = snapshot_path(&s.id);
        self.backend
            .write(&path, &bytes)
            .map_err(repo_io_err(format!("writing {}/{path}", self.location())))
    }

    /// The path of a snapshot in this repository's format (for messages).
    pub fn snapshot_path(&self, id: &str) -> String {
        match &self.kind {
            RepoKind::V1(_) => snapshot_path(id),
            RepoKind::V2(_) => v2::format::snapshot_path(id),
        }
    }

    /// Reads and decodes a format-1 manifest file (not yet verified).
    pub fn read_manifest(&self, id: &ManifestId) -> Result<repofile::ManifestFile> {
        let path = manifest_path(id);
        let bytes = match self.backend.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Repo(format!("{path} is missing")));
            }
            Err(e) => {
                return Err(repo_io_err(format!("reading {}/{path}", self.location()))(
                    e,
                ));
            }
        };
        repofile::ManifestFile::decode(&bytes)
            .map_err(|e| StoreError::Repo(format!("{path} is damaged: {e}")))
    }
}

/// The view of a verified signed snapshot.
pub(crate) fn view_of(signed: Signed<Snapshot>) -> Result<SnapshotFile> {
    let bad = |e: bbsync_protocol::Error| StoreError::Repo(format!("snapshot {}: {e}", signed.id));
    let host = signed.host_card().map_err(bad)?;
    let trust = signed
        .trust_cards()
        .map_err(bad)?
        .into_iter()
        .map(|(card, role)| SnapTrust {
            card: card_to_string(&card),
            role,
        })
        .collect();
    let objects: Vec<SnapObject> = signed
        .objects
        .iter()
        .map(|o| SnapObject {
            object_id: o.object_id,
            version: o.version,
            manifest_id: o.manifest_id,
        })
        .collect();
    let s = signed.value();
    Ok(SnapshotFile {
        format: SNAPSHOT_FILE_FORMAT,
        signature: SnapshotSignature::Verified,
        id: s.id.clone(),
        created: rfc3339(s.created_ms),
        created_ms: s.created_ms,
        host: card_to_string(&host),
        host_id: s.host.to_hex(),
        host_name: host.name.clone(),
        description: s.description.clone(),
        tags: s.tags.clone(),
        bbsync_version: s.bbsync_version.clone(),
        schema_version: s.schema_version,
        only: s.only.clone(),
        counts: s.counts.iter().cloned().collect(),
        bytes: s.bytes,
        plaintext_bytes: s.plaintext_bytes,
        chunks: s.chunks,
        trust,
        identity_escrow: s.identity_escrow.clone(),
        objects_sha256: repofile::objects_sha256(&objects),
        objects,
        manifest_files: s.manifest_files,
    })
}

/// The view of an unsigned legacy snapshot (its host card as claimed).
fn legacy_view(s: LegacySnapshotFile) -> SnapshotFile {
    let host_id = card_from_str(&s.host)
        .map(|c| c.instance.to_hex())
        .unwrap_or_default();
    SnapshotFile {
        format: s.format,
        signature: SnapshotSignature::Unsigned,
        id: s.id,
        created: s.created,
        created_ms: s.created_ms,
        host: s.host,
        host_id,
        host_name: s.host_name,
        description: s.description,
        tags: s.tags,
        bbsync_version: s.bbsync_version,
        schema_version: s.schema_version,
        only: s.only,
        counts: s.counts,
        bytes: s.bytes,
        plaintext_bytes: s.plaintext_bytes,
        chunks: s.chunks,
        trust: s.trust,
        identity_escrow: s.identity_escrow,
        objects: s.objects,
        objects_sha256: s.objects_sha256,
        manifest_files: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_order_by_sequence_not_by_name() {
        let ms = 1_764_489_600_123;
        // Same millisecond, sequences across a digit boundary: the names
        // sort the other way, the sequence does not.
        let a = new_snapshot_id(ms, 999_999);
        let b = new_snapshot_id(ms, 1_000_000);
        assert!(b < a, "{a} {b}");
        assert_eq!((snapshot_seq(&a), snapshot_seq(&b)), (999_999, 1_000_000));
        assert!(a.starts_with("20251130T080000Z-999999-"), "{a}");
        // Ids written before sequence numbers: sequence 0.
        assert_eq!(snapshot_seq("20251130T080000Z-0a1b2c3d"), 0);
        assert_eq!(snapshot_seq("20251130T080000Z-12345-0a1b2c3d"), 0);
        assert_eq!(snapshot_seq("x-000001-y-z"), 0);
        let mut ids = vec![
            a.clone(),
            "20261231T000000Z-ffffffff".to_string(),
            b.clone(),
        ];
        ids.sort_by(|x, y| (snapshot_seq(x), x).cmp(&(snapshot_seq(y), y)));
        assert_eq!(ids, vec!["20261231T000000Z-ffffffff".to_string(), a, b]);
        // Every new id is a valid snapshot id for the signed type.
        let id = new_snapshot_id(ms, 1);
        assert!(id.len() <= bbsync_protocol::snapshot::MAX_SNAPSHOT_ID);
    }
}
