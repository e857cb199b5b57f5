//! `bbsync backup` into a format-2 repository (docs/format.md §17.8):
//! data packs (a sealed store pack put in whole when mostly live, else the
//! missing chunks repacked), one manifest pack with the manifests the index
//! lacks, index file(s), the escrow, then the signed snapshot, last.

use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use bbsync_protocol::{ChunkId, ManifestId, chunk::check_chunk_id};
use rayon::prelude::*;

use super::{
    format::{
        INDEX_FILE_ENTRIES, INDEX_FORMAT, IndexEntry, IndexFile, IndexPack, ManifestRef,
        PackBuilder, PackKind, data_pack_path, index_path, key_path, mostly_live, read_sealed_pack,
        snapshot_path,
    },
    ixcache::IndexView,
    repo::Repo2,
};
use crate::{
    Store,
    backup::{
        byte_batches,
        create::{BackupOptions, BackupReport, Collected, CollectedManifest},
        repo_io_err,
        repofile::KeyFile,
    },
    error::{Result, StoreError},
    packs::{Location, PackId},
    progress::Progress,
};

/// Packs written (each whole under its final name, not yet durable: one
/// `sync` makes them durable before any index file names them) and the
/// index entries they bring. No rename anywhere: object storage has none,
/// and a PUT is atomic.
struct Written<'a> {
    repo: &'a Repo2,
    /// Packs written by this backup (not linked).
    written: u64,
    packs: Vec<IndexPack>,
}

impl Written<'_> {
    fn write(&mut self, bytes: &[u8], ip: IndexPack) -> Result<()> {
        let path = ip.kind.path(&PackId(ip.pack));
        let loc = self.repo.location();
        crate::failpoint::hit("backup.stage")
            .and_then(|()| self.repo.backend().write_lazy(&path, bytes))
            .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
        self.written += 1;
        self.packs.push(ip);
        Ok(())
    }

    /// Writes a builder's pack when it is full (or `force` and not empty).
    fn flush(&mut self, b: &mut Option<PackBuilder>, force: bool) -> Result<()> {
        let full = b
            .as_ref()
            .is_some_and(|p| !p.is_empty() && (force || p.len() >= self.repo.config.pack_target));
        if full && let Some(p) = b.take() {
            let (bytes, ip) = p.finish();
            self.write(&bytes, ip)?;
        }
        Ok(())
    }

    /// A sealed store pack whose bytes are mostly wanted, in whole: its
    /// wanted chunks checked, then linked (unless `copy`, or the backend
    /// cannot) or written. Returns whether it was linked.
    fn store_pack(
        &mut self,
        pack: &PackId,
        items: &[(ChunkId, Location)],
        src: &std::path::Path,
        bytes: Vec<u8>,
        entries: Vec<IndexEntry>,
        copy: bool,
    ) -> Result<bool> {
        items.par_iter().try_for_each(|(id, at)| {
            let stored = bytes
                .get(at.offset as usize..at.end() as usize)
                .unwrap_or_default();
            check_chunk_id(id, stored).map_err(|e| damaged(id, &e))
        })?;
        let dest = data_pack_path(pack);
        let loc = self.repo.location();
        let linked = !copy
            && self
                .repo
                .backend()
                .link_from(src, &dest)
                .map_err(repo_io_err(format!("linking {loc}/{dest}")))?;
        let ip = IndexPack {
            kind: PackKind::Data,
            pack: pack.0,
            pack_len: bytes.len() as u64,
            entries,
        };
        if linked {
            self.packs.push(ip);
        } else {
            self.write(&bytes, ip)?;
        }
        Ok(linked)
    }
}

impl Store {
    /// Backs this store up into a format-2 repository (the caller holds
    /// the repository's shared lock, or knows no prune runs beside it:
    /// [`Store::backup`] takes it).
    pub fn backup_v2(
        &self,
        repo: &Repo2,
        opts: &BackupOptions,
        progress: &dyn Progress,
    ) -> Result<BackupReport> {
        self.backup_v2_locked(repo, opts, progress, || Ok(None))
    }

    /// [`Store::backup_v2`] under the lock `take_lock` takes (before the
    /// repository's index is read), which is checked to be still held (not
    /// taken for stale by a prune) before the snapshot is written: a prune
    /// that took over would not have counted this backup's packs as live.
    pub(crate) fn backup_v2_locked(
        &self,
        repo: &Repo2,
        opts: &BackupOptions,
        progress: &dyn Progress,
        take_lock: impl FnOnce() -> Result<Option<super::lock::LockGuard>> + Send,
    ) -> Result<BackupReport> {
        let start = Instant::now();
        let loc = repo.location();
        let b = repo.backend();
        // Bad labels or a bad passphrase fail before anything is written.
        let escrow = self.check_labels_and_seal(opts)?;
        // What the snapshot holds (from the store) is read while the
        // repository is locked, its index read and this backup's sequence
        // claimed (for it alone: another backup may hold a shared lock too;
        // the claim is kept if anything below fails). On a thread of its
        // own, not the rayon pool's: the lock may wait (`--lock-wait`), and
        // a node's pool must not wait with it.
        let (collected, locked) = std::thread::scope(|sc| {
            let locking = sc.spawn(|| -> Result<_> {
                let lock = take_lock()?;
                let locked_ms = start.elapsed().as_secs_f64() * 1e3;
                let rix = self.backup_index(repo)?;
                let index_ms = start.elapsed().as_secs_f64() * 1e3;
                let claim = repo.claim_seq(rix.view())?;
                tracing::debug!(
                    locked_ms,
                    index_ms,
                    claimed_ms = start.elapsed().as_secs_f64() * 1e3,
                    "backup: repository locked, index read, sequence claimed"
                );
                Ok((lock, rix, claim))
            });
            let collected = self.collect_backup(opts);
            (collected, join_scoped(locking))
        });
        let (lock, rix, claim) = locked?;
        let mut c = collected?;
        tracing::debug!(
            ms = start.elapsed().as_secs_f64() * 1e3,
            from_cache = c.from_cache,
            "backup: store read, repository locked and its index read"
        );
        let mut report = BackupReport::of(loc.clone(), &mut c);
        let lock = lock.as_ref();
        let Collected {
            objects,
            manifests,
            counts,
            plaintext_bytes,
            chunks,
            ..
        } = c;
        report.index_files_read = rix.files_read();
        let ix = rix.view();
        let seq = claim.seq;
        // The snapshot is signed while steps 0-4 write: all it says is
        // known now (its escrow's name is fixed by `seq`). It is written
        // last (step 5), as ever.
        let snap_report = BackupReport {
            bytes: report.bytes,
            chunks: report.chunks,
            identity_escrow: escrow
                .as_ref()
                .map(|_| key_path(&self.instance_id().to_hex(), seq)),
            ..Default::default()
        };
        let job = StepsJob {
            repo,
            ix,
            chunks: &chunks,
            manifests: &manifests,
            escrow: escrow.as_ref(),
            copy: opts.copy,
            seq,
        };
        let (signed, files) = std::thread::scope(|sc| {
            let signing = sc.spawn(|| {
                let manifest_files =
                    crate::backup::collect::manifest_files_of(&objects, &manifests);
                self.sign_snapshot(
                    seq,
                    opts,
                    &snap_report,
                    crate::backup::create::Listed {
                        counts,
                        plaintext_bytes,
                        objects,
                        manifest_files,
                    },
                )
            });
            let files = self.backup_steps(&job, &mut report, progress);
            (join_scoped(signing), files)
        });
        let (files, written) = files?;
        let (id, snap) = signed?;
        // What the steps needed (a list of every object's manifest and of
        // every chunk): not held while the snapshot is written and the
        // index cache rebuilt.
        drop((chunks, manifests));
        tracing::debug!(
            ms = start.elapsed().as_secs_f64() * 1e3,
            "backup: packs, index and escrow written, snapshot signed"
        );
        if report.identity_escrow != snap_report.identity_escrow {
            return Err(StoreError::Invalid(format!(
                "the escrow was written as {:?}, not as the snapshot names it; no snapshot was written",
                report.identity_escrow
            )));
        }

        // 5. The snapshot, signed, last.
        let path = snapshot_path(&id);
        if let Some(l) = lock {
            l.ensure_held()?;
        }
        crate::failpoint::hit("backup.snapshot")
            .and_then(|()| b.write(&path, snap.bytes()))
            .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
        drop(snap);
        claim.release(repo);
        self.update_index_cache(repo, rix, &files, written);
        report.snapshot = id;
        report.elapsed = start.elapsed();
        tracing::debug!(
            ms = report.elapsed.as_secs_f64() * 1e3,
            "backup: snapshot written"
        );
        Ok(report)
    }

    /// Steps 0 to 4 of a backup: the leftover packs adopted, the data and
    /// manifests the index lacks written, every pack durable, the index
    /// files and the escrow written and durable. Returns the index files
    /// written and their names.
    fn backup_steps(
        &self,
        job: &StepsJob<'_>,
        report: &mut BackupReport,
        progress: &dyn Progress,
    ) -> Result<(Vec<IndexFile>, Vec<String>)> {
        let StepsJob {
            repo,
            ix,
            chunks,
            manifests,
            escrow,
            copy,
            seq,
        } = *job;
        let loc = repo.location();
        let b = repo.backend();
        // 0. Packs an interrupted backup left: checked, then indexed by
        // this one instead of written again. Only a backup that did not
        // finish leaves its sequence claim (a claim goes once the snapshot
        // is written; prune removes stale ones, and the unindexed packs
        // with them): with no claim but this backup's, there is nothing
        // to look for, and the listing of every pack directory is skipped.
        let leftovers = if repo.other_claims(seq)? {
            repo.leftover_packs(ix)?
        } else {
            Vec::new()
        };
        let reused = Reused::of(&leftovers);
        let adopted = leftovers.len() as u64;
        let mut st = Written {
            repo,
            written: 0,
            packs: leftovers,
        };

        // 1. Data: the chunks the index lacks, by store pack.
        let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let todo: HashSet<ChunkId> = ix
            .has_chunks(&ids)
            .into_iter()
            .zip(ids)
            .filter(|(have, id)| !have && !reused.chunks.contains(id))
            .map(|(_, id)| id)
            .collect();
        let job = DataJob { todo: &todo, copy };
        self.backup_data(&job, &mut st, report, progress)?;
        // Not held under the manifests' step (9 MB at 200,000 chunks).
        drop(todo);

        // 2. Manifests whose current file the index lacks: new objects, and
        // changed envelopes (a new file for the same manifest id).
        let refs = backup_manifests(self, ix, manifests, &reused, &mut st)?;
        report.manifests_new = refs.len() as u64;

        // Every pack durable (on object storage: every upload done) before
        // an index file names it (a linked store pack's bytes are durable
        // already, its new directory entry is not).
        if st.written > 0 || report.chunks_linked > 0 || adopted > 0 {
            crate::failpoint::hit("backup.sync_chunks")
                .and_then(|()| b.sync())
                .map_err(repo_io_err(format!("syncing {loc}")))?;
        }

        // 3. Index files naming those packs (a handful: one per
        // INDEX_FILE_ENTRIES entries), the manifest refs in the last.
        let files = index_files(st.packs, refs, seq);
        let written = write_index_files(repo, &files)?;
        // 4. The escrow (see `write_escrow`).
        if let Some(k) = escrow {
            report.identity_escrow = Some(self.write_escrow(repo, k, seq)?);
        }
        if report.chunks_new > 0 || !files.is_empty() || report.identity_escrow.is_some() {
            crate::failpoint::hit("backup.sync")
                .and_then(|()| b.sync())
                .map_err(repo_io_err(format!("syncing {loc}")))?;
        }
        Ok((files, written))
    }

    /// Step 1: the chunks `todo` into the repository, by store pack: a
    /// sealed store pack whose bytes are mostly wanted goes in whole
    /// (linked where it can be), the others' chunks are packed anew.
    fn backup_data(
        &self,
        job: &DataJob<'_>,
        st: &mut Written<'_>,
        report: &mut BackupReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let todo = job.todo;
        let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, Location)>> = BTreeMap::new();
        for id in todo {
            let at = self.packs().location(id)?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "chunk {} of a complete object is not in the store's index; run `bbsync verify`",
                    id.short()
                ))
            })?;
            by_pack.entry(at.pack).or_default().push((*id, at));
        }
        progress.start(
            "backup",
            todo.len() as u64,
            by_pack
                .values()
                .flatten()
                .map(|(_, l)| u64::from(l.len))
                .sum(),
        );
        let open: HashSet<PackId> = self.packs().open_packs().iter().map(|(p, _)| *p).collect();
        let mut builder: Option<PackBuilder> = None;
        for (pack, items) in by_pack {
            let n = items.len() as u64;
            let item_bytes: u64 = items.iter().map(|(_, l)| u64::from(l.len)).sum();
            // A sealed store pack whose bytes are mostly wanted goes in whole.
            let whole = if open.contains(&pack) {
                None
            } else {
                let src = self.packs().path(&pack);
                std::fs::read(&src).ok().and_then(|bytes| {
                    let entries = read_sealed_pack(PackKind::Data, &pack, &bytes).ok()?;
                    mostly_live(&entries, |i| todo.contains(&ChunkId(*i)))
                        .then_some((src, bytes, entries))
                })
            };
            if let Some((src, bytes, entries)) = whole {
                let linked = st.store_pack(&pack, &items, &src, bytes, entries, job.copy)?;
                if linked {
                    report.chunks_linked += n;
                }
            } else {
                // Read on all cores a few MiB at a time: an open store pack
                // can hold most of a store's small objects (28,000 chunks
                // of a 200,000-object store's first backup).
                for part in byte_batches(&items, COPY_BATCH_BYTES, |(_, at)| u64::from(at.len)) {
                    let datas: Vec<(ChunkId, Vec<u8>)> = part
                        .par_iter()
                        .map(|(id, _)| -> Result<(ChunkId, Vec<u8>)> {
                            let d = self.packs().read(id).map_err(|e| StoreError::Io {
                                context: format!("reading chunk {}", id.short()),
                                source: e,
                            })?;
                            check_chunk_id(id, &d).map_err(|e| damaged(id, &e))?;
                            Ok((*id, d))
                        })
                        .collect::<Result<_>>()?;
                    for (id, d) in datas {
                        builder
                            .get_or_insert_with(|| PackBuilder::new(PackKind::Data))
                            .push(id.0, &d)
                            .map_err(|e| StoreError::Invalid(format!("repacking: {e}")))?;
                        st.flush(&mut builder, false)?;
                    }
                }
            }
            report.chunks_new += n;
            report.bytes_new += item_bytes;
            progress.advance(n, item_bytes);
        }
        st.flush(&mut builder, true)?;
        progress.finish();
        Ok(())
    }

    /// Step 4: the escrow, a new key file, created only if no file has its
    /// name (an escrow is never replaced: an older snapshot may need it
    /// with its own passphrase). The name cannot be taken: `seq` is this
    /// backup's alone, and above every key file's (`next_seq`), so a key
    /// that a backup crashed between its key file and its snapshot left
    /// (an orphan: no snapshot names it) keeps its bytes and its sequence,
    /// and goes at the next prune (§17.8.1: named by no snapshot, older
    /// than the newest, its instance has a newer one). A name taken anyway
    /// means a writer outside the protocol: stop before the snapshot.
    /// Returns the key file's path.
    fn write_escrow(&self, repo: &Repo2, k: &KeyFile, seq: u64) -> Result<String> {
        let loc = repo.location();
        let path = key_path(&self.instance_id().to_hex(), seq);
        let mut bytes = serde_json::to_vec_pretty(k)
            .map_err(|e| StoreError::Invalid(format!("encoding the key file: {e}")))?;
        bytes.push(b'\n');
        let created = repo
            .backend()
            .write_new(&path, &bytes)
            .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
        if !created {
            return Err(StoreError::Repo(format!(
                "{loc}/{path} exists already, written by another writer (an escrow is never replaced); no snapshot was written"
            )));
        }
        Ok(path)
    }
}

/// The result of a scoped thread of a backup (a panic there is an error
/// here, not a second panic).
fn join_scoped<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(StoreError::Invalid("a backup thread panicked".into())))
}

/// Bytes of chunks a backup reads at once when it packs them anew.
const COPY_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// What steps 0 to 4 of a backup take.
#[derive(Clone, Copy)]
struct StepsJob<'a> {
    repo: &'a Repo2,
    ix: &'a dyn IndexView,
    chunks: &'a [(ChunkId, u32)],
    manifests: &'a [CollectedManifest],
    escrow: Option<&'a KeyFile>,
    copy: bool,
    seq: u64,
}

/// What step 1 of a backup copies: the chunks the index lacks, and
/// whether store packs are copied rather than linked (`--copy`).
struct DataJob<'a> {
    todo: &'a HashSet<ChunkId>,
    copy: bool,
}

/// Step 3: the index files written (not yet durable: the sync after the
/// escrow makes them so, before the snapshot).
/// Returns their names (in `index/`).
fn write_index_files(repo: &Repo2, files: &[IndexFile]) -> Result<Vec<String>> {
    let loc = repo.location();
    let mut names = Vec::with_capacity(files.len());
    for f in files {
        let bytes = f.encode();
        let path = index_path(&bytes);
        crate::failpoint::hit("backup.manifest")
            .and_then(|()| repo.backend().write_lazy(&path, &bytes))
            .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
        names.extend(path.strip_prefix("index/").map(str::to_string));
    }
    Ok(names)
}

/// What the packs an interrupted backup (or migration) left hold: their
/// chunks and manifest files are indexed, not written again.
pub(crate) struct Reused {
    /// Chunks in data packs.
    pub(crate) chunks: HashSet<ChunkId>,
    /// Manifest files (their SHA-256) in manifest packs.
    pub(crate) files: HashSet<[u8; 32]>,
}

impl Reused {
    /// What `leftovers` hold.
    pub(crate) fn of(leftovers: &[IndexPack]) -> Self {
        let mut r = Reused {
            chunks: HashSet::new(),
            files: HashSet::new(),
        };
        for p in leftovers {
            for e in &p.entries {
                match p.kind {
                    PackKind::Data => r.chunks.insert(ChunkId(e.id)),
                    PackKind::Manifests => r.files.insert(e.id),
                };
            }
        }
        r
    }
}

/// Manifest files read at once by [`backup_manifests`] (about 450 bytes
/// each, read on all cores).
const MANIFESTS_PER_ROUND: usize = 4096;

/// Step 2: the manifest files the index lacks, packed; returns the refs
/// of every manifest whose current file is new (a new object, or a
/// changed envelope). Only those files are read (from the collection, or
/// from the store when the backup cache served).
fn backup_manifests(
    store: &Store,
    ix: &dyn IndexView,
    manifests: &[CollectedManifest],
    reused: &Reused,
    st: &mut Written<'_>,
) -> Result<Vec<ManifestRef>> {
    let stale: Vec<&CollectedManifest> = {
        let ids: Vec<ManifestId> = manifests.iter().map(|m| m.manifest_id).collect();
        manifests
            .iter()
            .zip(ix.manifest_files(&ids))
            .filter(|(m, current)| *current != Some(m.file))
            .map(|(m, _)| m)
            .collect()
    };
    let mut mb: Option<PackBuilder> = None;
    // Sized once (a full backup of 200,000 objects writes as many): no
    // copy of either while it grows.
    let mut written = HashSet::with_capacity(stale.len());
    let mut refs = Vec::with_capacity(stale.len());
    // In rounds, each read on all cores and then packed in order: what is
    // held at once is one round's manifest files and one pack, not every
    // manifest of a full backup (90 MB at 200,000 objects).
    for round in stale.chunks(MANIFESTS_PER_ROUND) {
        let changed: Vec<(ManifestRef, Option<Vec<u8>>)> = round
            .par_iter()
            .map(|m| -> Result<Option<(ManifestRef, Option<Vec<u8>>)>> {
                let (file, bytes) = store.manifest_file(m)?;
                if ix.manifest_file(&m.manifest_id) == Some(file) {
                    return Ok(None);
                }
                let r = ManifestRef {
                    manifest: m.manifest_id.0,
                    file,
                };
                let have = ix.has_file(&file) || reused.files.contains(&file);
                Ok(Some((r, (!have).then_some(bytes))))
            })
            .filter_map(Result::transpose)
            .collect::<Result<_>>()?;
        for (r, bytes) in changed {
            if let Some(bytes) = bytes
                && written.insert(r.file)
            {
                mb.get_or_insert_with(|| PackBuilder::new(PackKind::Manifests))
                    .push(r.file, &bytes)
                    .map_err(|e| StoreError::Invalid(format!("packing manifests: {e}")))?;
                st.flush(&mut mb, false)?;
            }
            refs.push(r);
        }
    }
    st.flush(&mut mb, true)?;
    Ok(refs)
}

/// Step 3: the index files naming `packs` (one per INDEX_FILE_ENTRIES
/// entries), the manifest refs in the last; none when both are empty.
fn index_files(packs: Vec<IndexPack>, refs: Vec<ManifestRef>, seq: u64) -> Vec<IndexFile> {
    let empty = || IndexFile {
        format: INDEX_FORMAT,
        seq,
        packs: Vec::new(),
        manifests: Vec::new(),
    };
    let mut files: Vec<IndexFile> = Vec::new();
    let mut cur = empty();
    let mut entries = 0usize;
    for p in packs {
        if entries > 0 && entries + p.entries.len() > INDEX_FILE_ENTRIES {
            files.push(std::mem::replace(&mut cur, empty()));
            entries = 0;
        }
        entries += p.entries.len();
        cur.packs.push(p);
    }
    cur.manifests = refs;
    if !cur.packs.is_empty() || !cur.manifests.is_empty() {
        files.push(cur);
    }
    files
}

fn damaged(id: &ChunkId, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "chunk {} in the store is damaged ({e}); run `bbsync verify --read-data`",
        id.short()
    ))
}
