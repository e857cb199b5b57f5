//! `bbsync backup`: copies what the repository lacks (chunks as hard links
//! or copies, manifests with their envelopes), then writes the snapshot.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, Signed, Snapshot, SnapshotObject, SnapshotTrust, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;
use zeroize::Zeroizing;

pub(crate) use super::collect::{Collected, CollectedManifest, manifest_files_of};
use super::{
    Repo, chunk_path, escrow, list_chunks, manifest_path, new_snapshot_id, now_ms, repo_io_err,
};
use crate::{
    Store,
    error::{Result, StoreError},
    progress::Progress,
    sync::Selection,
};

/// What to back up and how.
#[derive(Debug, Default)]
pub struct BackupOptions {
    /// Which objects (default: all).
    pub selection: Selection,
    /// The `--only` values as given, recorded in the snapshot.
    pub only: Vec<String>,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Seal this instance's identity with this passphrase into `keys/`.
    pub identity_passphrase: Option<Zeroizing<String>>,
    /// Format 2: copy the store's sealed packs into the repository even
    /// where a hard link would do (a link shares the store file's inode, so
    /// damage to one is damage to both). Format 1: no effect (chunks live in
    /// packs, so every chunk is copied into its own file anyway).
    pub copy: bool,
}

/// What a backup did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BackupReport {
    /// The repository.
    pub repo: String,
    /// Whether this backup created it.
    pub repo_created: bool,
    /// The new snapshot's id.
    pub snapshot: String,
    /// Objects in the snapshot.
    pub objects: u64,
    /// Incomplete objects left out (their chunks are not all here).
    pub skipped_incomplete: Vec<String>,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Chunks the repository lacked and got.
    pub chunks_new: u64,
    /// Of those, put in as hard links.
    pub chunks_linked: u64,
    /// Sealed bytes of the new chunks.
    pub bytes_new: u64,
    /// Sealed bytes of all referenced chunks.
    pub bytes: u64,
    /// Manifest files written (new, or a changed envelope).
    pub manifests_new: u64,
    /// The identity escrow written, if any.
    pub identity_escrow: Option<String>,
    /// Whether the backup cache served the collection (only the records
    /// changed since the last backup of this selection were read).
    pub from_cache: bool,
    /// Format 2: index files read from the repository (the local index
    /// cache serves the others).
    pub index_files_read: u64,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

impl BackupReport {
    /// A report's counts of what the snapshot holds (the incomplete
    /// objects left out taken from `c`).
    pub(crate) fn of(repo: String, c: &mut Collected) -> BackupReport {
        BackupReport {
            repo,
            skipped_incomplete: std::mem::take(&mut c.skipped_incomplete),
            bytes: c.bytes,
            objects: c.objects.len() as u64,
            chunks: c.chunks.len() as u64,
            from_cache: c.from_cache,
            ..Default::default()
        }
    }
}

/// What a snapshot lists, from the collection (step 1 of a backup).
pub(crate) struct Listed {
    /// Objects by kind.
    pub counts: BTreeMap<String, u64>,
    /// Plaintext bytes of the live objects.
    pub plaintext_bytes: u64,
    /// The objects, sorted by object id.
    pub objects: Vec<SnapshotObject>,
    /// The digest of their manifest files ([`manifest_files_of`]).
    pub manifest_files: [u8; 32],
}

/// Chunk bytes and chunks copied per `syncfs` group (what an interrupted
/// backup keeps is whole groups).
const GROUP_BYTES: u64 = 64 * 1024 * 1024;
const GROUP_CHUNKS: usize = 256;

impl Store {
    /// Backs this store up into `repo` (see the module docs; format 2:
    /// [`Store::backup_v2`] under a shared lock).
    pub fn backup(
        &self,
        repo: &Repo,
        opts: &BackupOptions,
        progress: &dyn Progress,
    ) -> Result<BackupReport> {
        if let Some(r2) = repo.v2() {
            let take_lock =
                || repo.lock(&self.instance_id().to_hex(), crate::backup::LockFor::BACKUP);
            return self.backup_v2_locked(r2, opts, progress, take_lock);
        }
        let _lock = repo.lock_format1_writer(&self.instance_id().to_hex())?;
        let start = Instant::now();
        let loc = repo.location();
        let b = repo.backend();
        // Labels and escrow first (bad input fails before anything is
        // copied), then 1. what the snapshot holds: live and deleted
        // objects, complete.
        let (mut report, escrow, c) = self.begin_backup(loc.clone(), opts)?;
        let Collected {
            objects,
            manifests,
            counts,
            plaintext_bytes,
            chunks,
            ..
        } = c;

        // 2. Chunks the repository lacks (see `copy_chunks_v1`).
        let (have, _) = list_chunks(b)?;
        let todo: Vec<(ChunkId, u32)> = chunks
            .into_iter()
            .filter(|(id, _)| !have.contains(id))
            .collect();
        self.copy_chunks_v1(repo, todo, &mut report, progress)?;

        // 3. Manifests: new ones, and those whose envelope changed (see
        // `write_manifests_v1`), and the escrow.
        report.manifests_new = self.write_manifests_v1(repo, &manifests)?;
        if let Some(k) = &escrow {
            let path = escrow::key_path(self.identity());
            let mut bytes = serde_json::to_vec_pretty(k)
                .map_err(|e| StoreError::Invalid(format!("encoding the key file: {e}")))?;
            bytes.push(b'\n');
            b.write_lazy(&path, &bytes)
                .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
            report.identity_escrow = Some(path);
        }
        // Links, renames and manifests durable before the snapshot names
        // them (nothing new: nothing to wait for).
        if report.chunks_new > 0 || report.manifests_new > 0 || report.identity_escrow.is_some() {
            crate::failpoint::hit("backup.sync")
                .and_then(|()| b.sync())
                .map_err(repo_io_err(format!("syncing {loc}")))?;
        }

        // 4. The snapshot, signed by this instance, last.
        // Its id carries the repository's next sequence number, so that
        // `latest` and `backups list` order backups taken within one
        // second (or on a host whose clock stepped back) as they were taken.
        let manifest_files = manifest_files_of(&objects, &manifests);
        let (id, snap) = self.sign_snapshot(
            repo.next_snapshot_seq()?,
            opts,
            &report,
            Listed {
                counts,
                plaintext_bytes,
                objects,
                manifest_files,
            },
        )?;
        crate::failpoint::hit("backup.snapshot")
            .map_err(repo_io_err(format!("writing the snapshot {id} into {loc}")))?;
        repo.write_snapshot(&snap)?;
        report.snapshot = id;
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Format 1, step 2: the chunks `todo` copied (checked against their
    /// id on the way) in groups made durable by one syncfs. Chunks are
    /// copied whatever `opts.copy` says: they live in packs, so there is
    /// no chunk file to link (format 2 links whole packs).
    fn copy_chunks_v1(
        &self,
        repo: &Repo,
        todo: Vec<(ChunkId, u32)>,
        report: &mut BackupReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let loc = repo.location();
        let b = repo.backend();
        progress.start(
            "backup",
            todo.len() as u64,
            todo.iter().map(|(_, l)| u64::from(*l)).sum(),
        );
        let mut groups: Vec<Vec<(ChunkId, u32)>> = Vec::new();
        let mut acc = GROUP_BYTES;
        for c in todo {
            if acc >= GROUP_BYTES || groups.last().is_some_and(|g| g.len() >= GROUP_CHUNKS) {
                groups.push(Vec::new());
                acc = 0;
            }
            acc += u64::from(c.1);
            if let Some(g) = groups.last_mut() {
                g.push(c);
            }
        }
        for g in groups {
            // Staged as temp files; then one syncfs makes the staged bytes
            // durable before any of them gets its name.
            let staged: Vec<Option<String>> = g
                .par_iter()
                .map(|(id, len)| -> Result<Option<String>> {
                    // Chunks live in packs: each is read and copied into the
                    // repository's one-file-per-chunk layout (format 1).
                    let dest = chunk_path(id);
                    let bytes = self.packs().read(id).map_err(|e| StoreError::Io {
                        context: format!("reading chunk {}", id.short()),
                        source: e,
                    })?;
                    check_chunk_id(id, &bytes).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "chunk {} in the store is damaged ({e}); run `bbsync verify --read-data`",
                            id.short()
                        ))
                    })?;
                    crate::failpoint::hit("backup.stage")
                        .and_then(|()| b.stage(&dest, &bytes))
                        .map_err(repo_io_err(format!("writing {loc}/{dest}")))?;
                    progress.advance(1, u64::from(*len));
                    Ok(Some(dest))
                })
                .collect::<Result<_>>()?;
            let staged: Vec<String> = staged.into_iter().flatten().collect();
            if !staged.is_empty() {
                crate::failpoint::hit("backup.sync_chunks")
                    .and_then(|()| b.sync())
                    .map_err(repo_io_err(format!("syncing {loc}")))?;
                for dest in &staged {
                    crate::failpoint::hit("backup.publish")
                        .and_then(|()| b.publish(dest))
                        .map_err(repo_io_err(format!("renaming into {loc}/{dest}")))?;
                }
            }
            report.chunks_new += g.len() as u64;
            report.bytes_new += g.iter().map(|(_, l)| u64::from(*l)).sum::<u64>();
        }
        progress.finish();
        report.chunks_linked = 0;
        Ok(())
    }
}

impl Store {
    /// Format 1, step 3: the manifest files that are new or whose envelope
    /// changed (rekey, trust changes); returns how many were written.
    /// Entries are of fixed size, so a changed envelope can have the old
    /// size: a file of the same size is read and its content compared.
    fn write_manifests_v1(&self, repo: &Repo, manifests: &[CollectedManifest]) -> Result<u64> {
        let loc = repo.location();
        let b = repo.backend();
        let written = AtomicU64::new(0);
        manifests.par_iter().try_for_each(|m| -> Result<()> {
            let path = manifest_path(&m.manifest_id);
            let (_, bytes) = self.manifest_file(m)?;
            let size = b
                .size(&path)
                .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
            let same = size == Some(bytes.len() as u64)
                && match b.read(&path) {
                    Ok(have) => have == bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(repo_io_err(format!("reading {loc}/{path}"))(e)),
                };
            if !same {
                crate::failpoint::hit("backup.manifest")
                    .and_then(|()| b.write_lazy(&path, &bytes))
                    .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(written.into_inner())
    }

    /// The start of a backup, both formats: the labels checked and the
    /// escrow sealed ([`Store::check_labels_and_seal`]), what the snapshot
    /// holds ([`Store::collect_backup`]), and the report's counts of it.
    pub(crate) fn begin_backup(
        &self,
        repo: String,
        opts: &BackupOptions,
    ) -> Result<(BackupReport, Option<super::repofile::KeyFile>, Collected)> {
        let escrow = self.check_labels_and_seal(opts)?;
        let mut c = self.collect_backup(opts)?;
        let report = BackupReport::of(repo, &mut c);
        Ok((report, escrow, c))
    }

    /// Step 0 of a backup (either format): the description and tags are
    /// checked and the identity escrow, if asked for, is sealed, so that
    /// bad input fails before anything is written.
    pub(crate) fn check_labels_and_seal(
        &self,
        opts: &BackupOptions,
    ) -> Result<Option<super::repofile::KeyFile>> {
        bbsync_protocol::snapshot::check_description(&opts.description)
            .map_err(|e| StoreError::Invalid(format!("--description: {e}")))?;
        for t in &opts.tags {
            bbsync_protocol::snapshot::check_tag(t)
                .map_err(|e| StoreError::Invalid(format!("--tag {t:?}: {e}")))?;
        }
        opts.identity_passphrase
            .as_deref()
            .map(|p| escrow::seal(self.identity(), p))
            .transpose()
    }

    /// The last step of a backup: the snapshot, signed by this instance,
    /// with its id (made of the time now and the repository's sequence
    /// number `seq`).
    pub(crate) fn sign_snapshot(
        &self,
        seq: u64,
        opts: &BackupOptions,
        report: &BackupReport,
        listed: Listed,
    ) -> Result<(String, Signed<Snapshot>)> {
        let Listed {
            counts,
            plaintext_bytes,
            objects,
            manifest_files,
        } = listed;
        let created_ms = now_ms();
        let id = new_snapshot_id(created_ms, seq);
        let card = self.card()?;
        let trust = self
            .trust_records()?
            .into_iter()
            .map(|(_, rec)| SnapshotTrust {
                card: rec.card,
                role: rec.role,
            })
            .collect();
        let signed = Signed::sign(
            self.identity(),
            Snapshot {
                format: bbsync_protocol::SNAPSHOT_FORMAT,
                id: id.clone(),
                created_ms,
                host: self.instance_id(),
                host_card: card.bytes().to_vec(),
                description: opts.description.clone(),
                tags: opts.tags.clone(),
                bbsync_version: env!("CARGO_PKG_VERSION").to_string(),
                schema_version: crate::SCHEMA_VERSION,
                only: opts.only.clone(),
                counts: counts.into_iter().collect(),
                bytes: report.bytes,
                plaintext_bytes,
                chunks: report.chunks,
                trust,
                identity_escrow: report.identity_escrow.clone(),
                objects,
                manifest_files: Some(manifest_files),
            },
        )
        .map_err(|e| StoreError::Invalid(format!("signing the snapshot: {e}")))?;
        Ok((id, signed))
    }
}
