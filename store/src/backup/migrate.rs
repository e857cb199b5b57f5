//! `bbsync backups migrate`: a format-1 repository converted to format 2 in
//! place (docs/format.md §17.10), under an exclusive lock.
//!
//! Order, so that a migration that stops anywhere loses nothing and is
//! resumed by running it again:
//! 1. every snapshot must load and be signed (format 2 holds signed
//!    snapshots only); chunk and manifest files are checked as they are read;
//! 2. chunk files the format-2 index lacks into data packs, manifest files
//!    into manifest packs (each pack written whole), then one sync, then an
//!    index file naming them (every 200,000 entries or 1 GiB of packs, so a
//!    rerun skips what an earlier run indexed);
//! 3. each snapshot's signed bytes, unchanged, to `snapshots/<id>`; each
//!    `keys/identity.<host>` to `keys/<host>-000000`; one sync;
//! 4. `config` (the switch: from here on the repository is format 2; while
//!    `repo.json` is still there every command refuses it and says to run
//!    `backups migrate`, which then only finishes step 5);
//! 5. the format-1 files removed, `repo.json` last.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bbsync_protocol::{ChunkId, ManifestId, chunk::check_chunk_id};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    Backend, Repo, RepoFile, SnapshotSignature, list_chunks, manifest_path, now_ms, repo_io_err,
    repofile::{KeyFile, ManifestFile, SignedSnapshotFile},
    rfc3339, snapshot_path,
    v2::{
        Repo2,
        create::Reused,
        format::{
            CONFIG_FORMAT, ConfigFile, INDEX_FILE_ENTRIES, INDEX_FORMAT, Index, IndexFile,
            IndexPack, ManifestRef, PackBuilder, PackKind, index_path, key_path,
        },
    },
};
use crate::{
    error::{Result, StoreError},
    packs::PACK_TARGET,
    progress::Progress,
};

/// Pack bytes written between two index files.
const INDEX_EVERY_BYTES: u64 = 1 << 30;
/// Chunk files read at once (in parallel) before they go into packs.
const READ_BATCH: usize = 256;

/// What a migration did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MigrateReport {
    /// The repository.
    pub repo: String,
    /// It was format 2 already: nothing done.
    pub already: bool,
    /// An earlier migration had switched `config` already: this one only
    /// removed the format-1 files.
    pub finished_earlier_run: bool,
    /// Snapshots carried over.
    pub snapshots: u64,
    /// Chunk files packed by this run.
    pub chunks: u64,
    /// Chunk files an earlier, interrupted run had packed and indexed.
    pub chunks_done_before: u64,
    /// Manifest files packed by this run.
    pub manifests: u64,
    /// Data packs written.
    pub data_packs: u64,
    /// Manifest packs written.
    pub manifest_packs: u64,
    /// Index files written.
    pub index_files: u64,
    /// Identity escrows carried over.
    pub keys: u64,
    /// Format-1 files removed.
    pub files_removed: u64,
    /// Chunk bytes packed.
    pub bytes: u64,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// Packs written and not yet in an index file.
struct Pending<'a> {
    b: &'a dyn Backend,
    loc: String,
    packs: Vec<IndexPack>,
    refs: Vec<ManifestRef>,
    bytes: u64,
    entries: usize,
    report: &'a mut MigrateReport,
}

impl Pending<'_> {
    fn write_pack(&mut self, builder: PackBuilder) -> Result<()> {
        let (bytes, ip) = builder.finish();
        let path = ip.kind.path(&crate::packs::PackId(ip.pack));
        crate::failpoint::hit("repo_migrate.pack")
            .and_then(|()| self.b.write_lazy(&path, &bytes))
            .map_err(repo_io_err(format!("writing {}/{path}", self.loc)))?;
        match ip.kind {
            PackKind::Data => self.report.data_packs += 1,
            PackKind::Manifests => self.report.manifest_packs += 1,
        }
        self.bytes += bytes.len() as u64;
        self.entries += ip.entries.len();
        self.packs.push(ip);
        if self.bytes >= INDEX_EVERY_BYTES || self.entries >= INDEX_FILE_ENTRIES {
            self.write_index()?;
        }
        Ok(())
    }

    /// The packs durable, then an index file naming them.
    fn write_index(&mut self) -> Result<()> {
        if self.packs.is_empty() && self.refs.is_empty() {
            return Ok(());
        }
        crate::failpoint::hit("repo_migrate.sync")
            .and_then(|()| self.b.sync())
            .map_err(repo_io_err(format!("syncing {}", self.loc)))?;
        let f = IndexFile {
            format: INDEX_FORMAT,
            seq: 0,
            packs: std::mem::take(&mut self.packs),
            manifests: std::mem::take(&mut self.refs),
        };
        let bytes = f.encode();
        let path = index_path(&bytes);
        crate::failpoint::hit("repo_migrate.index")
            .and_then(|()| self.b.write(&path, &bytes))
            .map_err(repo_io_err(format!("writing {}/{path}", self.loc)))?;
        self.report.index_files += 1;
        self.bytes = 0;
        self.entries = 0;
        Ok(())
    }
}

fn damaged(loc: &str, path: &str, what: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {loc} is damaged: {path}: {what}; run `bbsync backups verify` (the repository is still format 1; nothing was switched)"
    ))
}

/// Converts the format-1 repository on `backend` to format 2 (see the
/// module docs). `host` names this instance in the lock; `lock_wait` is
/// how long to wait for other holders.
pub fn migrate(
    backend: Arc<dyn Backend>,
    host: &str,
    lock_wait: Duration,
    progress: &dyn Progress,
) -> Result<MigrateReport> {
    let start = Instant::now();
    let b = &*backend;
    let loc = backend.location();
    let mut report = MigrateReport {
        repo: loc.clone(),
        ..Default::default()
    };
    let read_json = |name: &str| -> Result<Option<Vec<u8>>> {
        match b.read(name) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(repo_io_err(format!("reading {loc}/{name}"))(e)),
        }
    };
    let config = read_json("config")?;
    let legacy = read_json("repo.json")?;
    let info: RepoFile = match (&config, &legacy) {
        (_, None) => {
            // Format 2 already, or no repository: `open` says which.
            Repo::open(backend.clone())?;
            report.already = true;
            report.elapsed = start.elapsed();
            return Ok(report);
        }
        (_, Some(bytes)) => serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Repo(format!("{loc}/repo.json is not a valid repo.json: {e}"))
        })?,
    };
    if info.format != super::REPO_FORMAT {
        return Err(StoreError::Repo(format!(
            "{loc}/repo.json says format {}; only format 1 is migrated",
            info.format
        )));
    }
    let cfg = match &config {
        Some(bytes) => {
            let c = ConfigFile::decode(&loc, bytes).map_err(StoreError::Repo)?;
            if c.repo_id != info.repo_id {
                return Err(StoreError::Repo(format!(
                    "backup repository {loc}: config (repository {}) and repo.json (repository {}) name different repositories; nothing was changed",
                    c.repo_id, info.repo_id
                )));
            }
            c
        }
        None => ConfigFile {
            format: CONFIG_FORMAT,
            repo_id: info.repo_id.clone(),
            created: rfc3339(now_ms()),
            pack_target: PACK_TARGET,
        },
    };
    let r2 = Repo2::from_parts(backend.clone(), cfg.clone());
    let _lock = r2.lock_waiting(host, crate::backup::LockFor::MIGRATION, lock_wait)?;

    if config.is_none() {
        let v1 = Repo::open(backend.clone())?;
        convert(&v1, &r2, &mut report, progress)?;
        crate::failpoint::hit("repo_migrate.config")
            .and_then(|()| b.write("config", &cfg.encode()))
            .map_err(repo_io_err(format!("writing {loc}/config")))?;
    } else {
        report.finished_earlier_run = true;
    }
    cleanup(b, &mut report)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Steps 1 to 3 of the module docs.
fn convert(
    v1: &Repo,
    r2: &Repo2,
    report: &mut MigrateReport,
    progress: &dyn Progress,
) -> Result<()> {
    let b = v1.backend();
    let loc = v1.location();
    // 1. Every snapshot loads and is signed, before anything is written.
    let raw = signed_snapshots(v1)?;
    // What an earlier, interrupted run packed and indexed already.
    let ix: Index = r2.load_index()?;
    // Packs it wrote but did not index yet: checked, indexed below.
    let leftovers = r2.leftover_packs(&ix)?;
    let reused = Reused::of(&leftovers);
    let (have, _) = list_chunks(b)?;
    let mut todo: Vec<ChunkId> = Vec::new();
    for id in have {
        if ix.chunks.contains_key(&id) || reused.chunks.contains(&id) {
            report.chunks_done_before += 1;
        } else {
            todo.push(id);
        }
    }
    todo.sort();
    let mut manifests: Vec<ManifestId> = b
        .list("manifests")
        .map_err(repo_io_err(format!("listing {loc}/manifests")))?
        .into_iter()
        .filter_map(|n| {
            hex::decode(&n)
                .ok()
                .and_then(|v| ManifestId::from_slice(&v).ok())
        })
        .collect();
    manifests.sort();

    // 2. Packs, then index files naming them.
    let mut pending = Pending {
        b,
        loc: loc.clone(),
        entries: leftovers.iter().map(|p| p.entries.len()).sum(),
        bytes: leftovers.iter().map(|p| p.pack_len).sum(),
        packs: leftovers,
        refs: Vec::new(),
        report,
    };
    pack_chunks(r2, &todo, &mut pending, progress)?;
    pack_manifests(r2, &ix, &reused, manifests, &mut pending)?;
    pending.write_index()?;

    // 3. Snapshots (their signed bytes, unchanged) and escrows.
    for (id, wire) in &raw {
        let path = super::v2::format::snapshot_path(id);
        if b.size(&path)
            .map_err(repo_io_err(format!("reading {loc}/{path}")))?
            != Some(wire.len() as u64)
        {
            crate::failpoint::hit("repo_migrate.snapshot")
                .and_then(|()| b.write_lazy(&path, wire))
                .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
        }
        pending.report.snapshots += 1;
    }
    pending.report.keys += copy_escrows(b, &loc)?;
    b.sync().map_err(repo_io_err(format!("syncing {loc}")))?;
    Ok(())
}

/// Step 1: every snapshot of `v1`, loaded and signed, as its signed wire
/// bytes: (id, bytes).
fn signed_snapshots(v1: &Repo) -> Result<Vec<(String, Vec<u8>)>> {
    let b = v1.backend();
    let loc = v1.location();
    let ids = v1.snapshot_ids()?;
    let mut raw: Vec<(String, Vec<u8>)> = Vec::with_capacity(ids.len());
    for id in &ids {
        let s = v1.load_snapshot(id).map_err(|e| {
            StoreError::Repo(format!(
                "{e}; repair or delete it before migrating (nothing was migrated)"
            ))
        })?;
        if s.signature != SnapshotSignature::Verified {
            return Err(StoreError::Repo(format!(
                "snapshot {id} in {loc} is unsigned (written before bbsync signed snapshots), and format 2 holds signed snapshots only; take a new backup, delete it (`bbsync backups delete {id} --repo {loc}`), then migrate (nothing was migrated)"
            )));
        }
        let path = snapshot_path(id);
        let bytes = b
            .read(&path)
            .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
        let f: SignedSnapshotFile = serde_json::from_slice(&bytes)
            .map_err(|e| damaged(&loc, &path, &format!("not a valid snapshot file ({e})")))?;
        let wire = data_encoding::BASE64
            .decode(f.snapshot.as_bytes())
            .map_err(|e| damaged(&loc, &path, &format!("snapshot: {e}")))?;
        raw.push((id.clone(), wire));
    }
    Ok(raw)
}

/// Step 2: the chunk files `todo` (checked against their names) into
/// data packs.
fn pack_chunks(
    r2: &Repo2,
    todo: &[ChunkId],
    pending: &mut Pending<'_>,
    progress: &dyn Progress,
) -> Result<()> {
    let (b, loc) = (pending.b, pending.loc.clone());
    progress.start("migrate", todo.len() as u64, 0);
    let mut builder: Option<PackBuilder> = None;
    for batch in todo.chunks(READ_BATCH) {
        let read: Vec<(ChunkId, Vec<u8>)> = batch
            .par_iter()
            .map(|id| -> Result<(ChunkId, Vec<u8>)> {
                let path = super::chunk_path(id);
                let bytes = b
                    .read(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                check_chunk_id(id, &bytes)
                    .map_err(|_| damaged(&loc, &path, "content does not hash to its name"))?;
                Ok((*id, bytes))
            })
            .collect::<Result<_>>()?;
        for (id, bytes) in read {
            let p = builder.get_or_insert_with(|| PackBuilder::new(PackKind::Data));
            p.push(id.0, &bytes)
                .map_err(|e| damaged(&loc, &super::chunk_path(&id), &e))?;
            pending.report.chunks += 1;
            pending.report.bytes += bytes.len() as u64;
            progress.advance(1, bytes.len() as u64);
            if p.len() >= r2.config.pack_target
                && let Some(full) = builder.take()
            {
                pending.write_pack(full)?;
            }
        }
    }
    if let Some(p) = builder.take().filter(|p| !p.is_empty()) {
        pending.write_pack(p)?;
    }
    progress.finish();
    Ok(())
}

/// Step 2: the manifest files the index lacks (each decoded first) into
/// manifest packs, and every manifest's ref.
fn pack_manifests(
    r2: &Repo2,
    ix: &Index,
    reused: &Reused,
    manifests: Vec<ManifestId>,
    pending: &mut Pending<'_>,
) -> Result<()> {
    let (b, loc) = (pending.b, pending.loc.clone());
    let mut mb: Option<PackBuilder> = None;
    for mid in manifests {
        let path = manifest_path(&mid);
        let bytes = b
            .read(&path)
            .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
        ManifestFile::decode(&bytes).map_err(|e| damaged(&loc, &path, &e.to_string()))?;
        let file: [u8; 32] = Sha256::digest(&bytes).into();
        if ix.manifests.get(&mid).map(|(_, h)| *h) == Some(file) {
            continue;
        }
        if !ix.files.contains_key(&file) && !reused.files.contains(&file) {
            let p = mb.get_or_insert_with(|| PackBuilder::new(PackKind::Manifests));
            p.push(file, &bytes).map_err(|e| damaged(&loc, &path, &e))?;
            if p.len() >= r2.config.pack_target
                && let Some(full) = mb.take()
            {
                pending.write_pack(full)?;
            }
        }
        pending.refs.push(ManifestRef {
            manifest: mid.0,
            file,
        });
        pending.report.manifests += 1;
    }
    if let Some(p) = mb.take().filter(|p| !p.is_empty()) {
        pending.write_pack(p)?;
    }
    Ok(())
}

/// Step 3: each escrow `keys/identity.<host>` as `keys/<host>-0` (unless
/// there already); returns how many.
fn copy_escrows(b: &dyn Backend, loc: &str) -> Result<u64> {
    let mut keys = 0;
    for name in b
        .list("keys")
        .map_err(repo_io_err(format!("listing {loc}/keys")))?
    {
        let Some(host) = name.strip_prefix("identity.") else {
            continue;
        };
        let path = format!("keys/{name}");
        let bytes = b
            .read(&path)
            .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
        let k: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| damaged(loc, &path, &format!("not a valid identity escrow ({e})")))?;
        if k.instance != host {
            return Err(damaged(
                loc,
                &path,
                &format!("holds the escrow of instance {}", k.instance),
            ));
        }
        let dest = key_path(host, 0);
        if b.size(&dest)
            .map_err(repo_io_err(format!("reading {loc}/{dest}")))?
            .is_none()
        {
            b.write_lazy(&dest, &bytes)
                .map_err(repo_io_err(format!("writing {loc}/{dest}")))?;
        }
        keys += 1;
    }
    Ok(keys)
}

/// Step 5: the format-1 files go, `repo.json` last.
fn cleanup(b: &dyn Backend, report: &mut MigrateReport) -> Result<()> {
    let loc = b.location();
    crate::failpoint::hit("repo_migrate.cleanup")
        .map_err(repo_io_err(format!("removing the format-1 files of {loc}")))?;
    let rm = |path: &str, report: &mut MigrateReport| -> Result<()> {
        b.remove(path)
            .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
        report.files_removed += 1;
        Ok(())
    };
    let (chunks, strays) = list_chunks(b)?;
    for id in chunks {
        rm(&super::chunk_path(&id), report)?;
    }
    for name in b
        .list("manifests")
        .map_err(repo_io_err(format!("listing {loc}/manifests")))?
    {
        if name.len() == 64 && name.bytes().all(|c| c.is_ascii_hexdigit()) {
            rm(&format!("manifests/{name}"), report)?;
        }
    }
    for name in b
        .list("snapshots")
        .map_err(repo_io_err(format!("listing {loc}/snapshots")))?
    {
        if name.ends_with(".json") {
            rm(&format!("snapshots/{name}"), report)?;
        }
    }
    for name in b
        .list("keys")
        .map_err(repo_io_err(format!("listing {loc}/keys")))?
    {
        if name.starts_with("identity.") {
            rm(&format!("keys/{name}"), report)?;
        }
    }
    b.remove_temp_files()
        .map_err(repo_io_err(format!("removing temp files in {loc}")))?;
    // The emptied chunk directories (a local directory; object storage has
    // no directories). Files that are not chunks stay, and so their
    // directory: `backups verify` does not look there any more.
    if strays.is_empty()
        && let Some(dir) = b.local_path("chunks")
    {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    b.sync().map_err(repo_io_err(format!("syncing {loc}")))?;
    rm("repo.json", report)?;
    b.sync().map_err(repo_io_err(format!("syncing {loc}")))?;
    Ok(())
}
