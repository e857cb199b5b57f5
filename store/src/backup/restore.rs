//! `bbsync restore`: a snapshot back into the store. Everything read is
//! checked before anything is written: snapshot checksum, manifest ids and
//! signatures, this instance's envelope entries, chunk presence and sizes;
//! chunk contents are hashed as they are copied, and a mismatch undoes the
//! chunks copied so far. Records are committed last, in one go.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, EnvelopeEntry, Identity, InstanceCard, InstanceId, ObjectId, Role, Signed, Unverified,
    card_from_str, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

use super::{
    Repo, SnapshotFile, check::check_manifests, chunk_path, create::BackupOptions, escrow,
    manifest_path, repofile::KeyFile,
};
use crate::{
    Store,
    db::{ObjectState, ObjectWrite, TrustRecord},
    error::{Result, StoreError},
    progress::{NoProgress, Progress},
    rekey::RekeyReport,
    sync::Selection,
};

/// What to restore and how.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot id, unique prefix or `latest` (`None`: the latest).
    pub snapshot: Option<String>,
    /// Which objects (default: all).
    pub selection: Selection,
    /// Replace objects the store holds at the same or a newer version.
    pub overwrite: bool,
    /// Add envelope entries for the current trusted `full` instances.
    pub rekey: bool,
    /// Restore manifests only (chunks come later from peers).
    pub skip_chunks: bool,
    /// Back the current store up into the repository first (unless empty).
    pub safety_snapshot: bool,
}

/// What a restore did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreReport {
    /// The repository.
    pub repo: String,
    /// The snapshot restored.
    pub snapshot: String,
    /// The safety snapshot taken first, if any.
    pub safety_snapshot: Option<String>,
    /// Objects in the snapshot.
    pub snapshot_objects: u64,
    /// Objects restored (new or replaced).
    pub restored: u64,
    /// Of those, replacing a version held here.
    pub replaced: u64,
    /// Held here at the same or a newer version: left as they are.
    pub skipped_existing: u64,
    /// Left out by `--only`.
    pub skipped_selection: u64,
    /// Objects without an envelope entry this instance can open (not restored).
    pub undecryptable: Vec<String>,
    /// Chunks copied from the repository.
    pub chunks_copied: u64,
    /// Chunks the store already had.
    pub chunks_present: u64,
    /// Sealed bytes copied.
    pub bytes_copied: u64,
    /// Restored objects still lacking chunks (`--skip-chunks`).
    pub incomplete: u64,
    /// Instances added to the trust table from the snapshot (short ids).
    pub trusted: Vec<String>,
    /// What `--rekey` changed.
    pub rekey: Option<RekeyReport>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// What `restore --to-tree` wrote.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TreeReport {
    /// The snapshot.
    pub snapshot: String,
    /// Objects written.
    pub objects: u64,
    /// Files written.
    pub files: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Objects not written, with the reason.
    pub failed: Vec<(String, String)>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// One object of `--to-tree`: its label, and (files, bytes) or the error.
type ObjectOutcome = (String, Result<(u64, u64)>);

fn damaged_tree(repo: &Repo, path: &str, detail: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {} is damaged: {path}: {detail}",
        repo.location()
    ))
}

/// Chunk bytes staged per publish (two syncfs each).
const GROUP_BYTES: u64 = 128 * 1024 * 1024;

fn damaged(repo: &Repo, path: &str, detail: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {} is damaged: {path}: {detail}; nothing was restored",
        repo.location()
    ))
}

/// The identity escrow of a snapshot's host, if the repository holds one.
pub fn escrow_of(repo: &Repo, snap: &SnapshotFile) -> Result<Option<(String, KeyFile)>> {
    let host = card_from_str(&snap.host)
        .map_err(|e| StoreError::Repo(format!("snapshot {}: bad host card: {e}", snap.id)))?;
    let path = format!("keys/identity.{}", host.instance.to_hex());
    match repo.backend().read(&path) {
        Ok(bytes) => {
            let k: KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Repo(format!("{path} is damaged: {e}")))?;
            Ok(Some((path, k)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::repo_io_err(format!("reading {path}"))(e)),
    }
}

/// Opens an escrowed identity with a passphrase.
pub fn open_escrow(path: &str, k: &KeyFile, pass: &str) -> Result<Identity> {
    escrow::open(k, path, pass)
}

/// One object to restore, fully checked.
struct Planned {
    manifest: Signed<bbsync_protocol::Manifest>,
    envelope: Vec<Vec<u8>>,
    previous: Option<ObjectState>,
}

impl Store {
    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.db().object_count() == 0
    }

    /// Restores a snapshot (see the module docs).
    pub fn restore(
        &self,
        repo: &Repo,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let start = Instant::now();
        let snap_id = repo.resolve_snapshot(opts.snapshot.as_deref().unwrap_or("latest"))?;
        let snap = repo.load_snapshot(&snap_id)?;
        let mut report = RestoreReport {
            repo: repo.location(),
            snapshot: snap_id.clone(),
            snapshot_objects: snap.objects.len() as u64,
            ..Default::default()
        };
        let me = self.instance_id();

        // 1. Who the snapshot's content comes from: its host (pinned by the
        // operator's choice of repository, as `clone` pins its source) and
        // the host's trust table. Added to ours only if the restore goes on.
        let mut new_trust: Vec<(Signed<InstanceCard>, Role)> = Vec::new();
        let host = card_from_str(&snap.host).map_err(|e| {
            damaged(
                repo,
                &super::snapshot_path(&snap_id),
                &format!("bad host card: {e}"),
            )
        })?;
        let mut candidates = vec![(host, Role::Full)];
        for t in &snap.trust {
            let card = card_from_str(&t.card).map_err(|e| {
                damaged(
                    repo,
                    &super::snapshot_path(&snap_id),
                    &format!("bad trust card: {e}"),
                )
            })?;
            let role = t.role.parse::<Role>().map_err(|e| {
                damaged(
                    repo,
                    &super::snapshot_path(&snap_id),
                    &format!("bad trust role: {e}"),
                )
            })?;
            candidates.push((card, role));
        }
        let mut pending_full: HashSet<InstanceId> = HashSet::new();
        for (card, role) in candidates {
            if card.instance == me || self.db().trust(&card.instance)?.is_some() {
                continue;
            }
            if new_trust.iter().any(|(c, _)| c.instance == card.instance) {
                continue;
            }
            if role == Role::Full {
                pending_full.insert(card.instance);
            }
            new_trust.push((card, role));
        }
        let full = |a: &InstanceId| *a == me || self.is_full(a) || pending_full.contains(a);

        // 2. Every manifest: read and checked before anything is written.
        let refs: Vec<&super::repofile::SnapObject> = snap.objects.iter().collect();
        let checked: Vec<_> = snap
            .objects
            .iter()
            .zip(check_manifests(repo, &refs))
            .collect();
        let mut plan: Vec<Planned> = Vec::new();
        for (o, c) in checked {
            let c =
                c.map_err(|(_, detail)| damaged(repo, &manifest_path(&o.manifest_id), &detail))?;
            let m = c.manifest;
            if !opts.selection.matches(&m.kind, &m.name) {
                report.skipped_selection += 1;
                continue;
            }
            let label = format!("{}:{}", m.kind, m.name);
            if !full(&m.author) {
                return Err(damaged(
                    repo,
                    &manifest_path(&o.manifest_id),
                    &format!(
                        "{label} is signed by {}, which neither this instance nor the snapshot trusts",
                        m.author.short()
                    ),
                ));
            }
            let previous = self.db().object(&m.object_id)?;
            if let Some(p) = &previous
                && !opts.overwrite
                && p.version >= m.version
            {
                report.skipped_existing += 1;
                continue;
            }
            if !m.deleted && !self.opens_entry(&m, &c.envelope, &full) {
                report.undecryptable.push(label);
                continue;
            }
            plan.push(Planned {
                manifest: m,
                envelope: c.envelope,
                previous,
            });
        }
        report.undecryptable.sort();

        // 3. Chunks the store lacks: present in the repository at their size.
        let mut needed: Vec<(ChunkId, u32, String)> = Vec::new();
        if !opts.skip_chunks {
            let mut seen = HashSet::new();
            for p in &plan {
                if p.manifest.deleted {
                    continue;
                }
                for c in &p.manifest.chunks {
                    if !seen.insert(c.id) {
                        continue;
                    }
                    if self.chunks().size(&c.id) == Some(u64::from(c.len)) {
                        report.chunks_present += 1;
                        continue;
                    }
                    let path = chunk_path(&c.id);
                    let label = format!("{}:{}", p.manifest.kind, p.manifest.name);
                    match repo.backend().size(&path) {
                        Ok(Some(n)) if n == u64::from(c.len) => needed.push((c.id, c.len, path)),
                        Ok(Some(n)) => {
                            return Err(damaged(
                                repo,
                                &path,
                                &format!("has {n} bytes, the manifest of {label} says {}", c.len),
                            ));
                        }
                        Ok(None) => {
                            return Err(damaged(
                                repo,
                                &path,
                                &format!("missing, referenced by {label}"),
                            ));
                        }
                        Err(e) => return Err(super::repo_io_err(format!("reading {path}"))(e)),
                    }
                }
            }
        }

        // 4. The safety snapshot of what the store holds now.
        if opts.safety_snapshot && !plan.is_empty() && !self.is_empty() {
            let r = self.backup(
                repo,
                &BackupOptions {
                    description: format!("safety snapshot before restoring {snap_id}"),
                    tags: vec!["safety".into()],
                    ..Default::default()
                },
                &NoProgress,
            )?;
            report.safety_snapshot = Some(r.snapshot);
        }

        // 5. Chunks, hashed as they are read, in groups made durable by
        // publish; any damage undoes what this restore published.
        progress.start(
            "restore",
            needed.len() as u64,
            needed.iter().map(|n| u64::from(n.1)).sum(),
        );
        let mut published: Vec<ChunkId> = Vec::new();
        let undo = |published: &[ChunkId]| {
            for id in published {
                let _ = self.chunks().remove(id);
            }
        };
        let mut i = 0;
        while i < needed.len() {
            let mut acc = 0u64;
            let mut j = i;
            while j < needed.len() && acc < GROUP_BYTES {
                acc += u64::from(needed[j].1);
                j += 1;
            }
            let group = &needed[i..j];
            let staged = Mutex::new(Vec::new());
            let r: Result<()> = group.par_iter().try_for_each(|(id, len, path)| {
                let bytes = repo
                    .backend()
                    .read(path)
                    .map_err(super::repo_io_err(format!(
                        "reading {}/{path}",
                        repo.location()
                    )))?;
                if check_chunk_id(id, &bytes).is_err() {
                    return Err(damaged(repo, path, "content does not hash to its name"));
                }
                let s = self.chunks().stage(*id, &bytes)?;
                staged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(s);
                progress.advance(1, u64::from(*len));
                Ok(())
            });
            let staged = staged
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = r {
                self.chunks().discard(staged);
                undo(&published);
                progress.finish();
                return Err(e);
            }
            let ids: Vec<ChunkId> = staged.iter().map(|s| s.id).collect();
            if let Err(e) = self.publish_chunks(staged) {
                undo(&published);
                progress.finish();
                return Err(e);
            }
            published.extend(ids);
            report.chunks_copied += group.len() as u64;
            report.bytes_copied += acc;
            i = j;
        }
        progress.finish();

        // 6. Trust, then the records, in one commit.
        crate::failpoint::check("restore.commit", || {
            "committing the restored records".into()
        })?;
        {
            let _g = self.lock();
            if plan.is_empty() {
                new_trust.clear();
            }
            for (card, role) in &new_trust {
                self.db().put_trust(
                    &card.instance,
                    &TrustRecord {
                        role: *role,
                        card: card.bytes().to_vec(),
                        added_at_ms: bbsync_protocol::now_ms(),
                    },
                )?;
                report.trusted.push(card.instance.short());
            }
            let mut writes = Vec::with_capacity(plan.len());
            let mut restored: Vec<ObjectId> = Vec::new();
            for p in plan {
                let m = &p.manifest;
                let complete = m
                    .chunks
                    .iter()
                    .all(|c| self.chunks().size(&c.id) == Some(u64::from(c.len)));
                report.incomplete += u64::from(!complete && !m.deleted);
                report.replaced += u64::from(p.previous.is_some());
                let state = self.received_state(m, complete || m.deleted, &p.envelope);
                restored.push(m.object_id);
                writes.push(ObjectWrite {
                    object_id: m.object_id,
                    state,
                    manifest: m.bytes().to_vec(),
                    envelope: p.envelope,
                    previous: p.previous,
                });
            }
            report.restored = writes.len() as u64;
            if !writes.is_empty() {
                self.db().commit(writes)?;
            } else {
                self.db().flush()?;
            }
            drop(_g);
            if report.replaced > 0 {
                // Chunks of the replaced versions; a failure is only logged
                // (the store's next open collects them).
                if let Err(e) = self.gc() {
                    tracing::warn!("restore done, but removing unreferenced chunks failed: {e}");
                }
            }
            if opts.rekey && !restored.is_empty() {
                crate::failpoint::check("restore.rekey", || "rekeying restored objects".into())?;
                report.rekey = Some(self.rekey(&restored, false, false, &NoProgress)?);
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Whether one of the envelope entries addressed to this instance
    /// verifies (wrapped by the author or a `full` instance), is for this
    /// object version, and unwraps.
    fn opens_entry(
        &self,
        m: &Signed<bbsync_protocol::Manifest>,
        envelope: &[Vec<u8>],
        full: &dyn Fn(&InstanceId) -> bool,
    ) -> bool {
        self.key_in(m, envelope, full).is_some()
    }

    /// The content key from the first entry for this instance that
    /// verifies, fits this object version and unwraps.
    fn key_in(
        &self,
        m: &Signed<bbsync_protocol::Manifest>,
        envelope: &[Vec<u8>],
        full: &dyn Fn(&InstanceId) -> bool,
    ) -> Option<bbsync_protocol::ContentKey> {
        let me = self.instance_id();
        envelope.iter().find_map(|raw| {
            let u = Unverified::<EnvelopeEntry>::decode(raw).ok()?;
            if u.claimed().recipient != me {
                return None;
            }
            let author = m.author;
            let e = u.verify(|w| *w == author || full(w)).ok()?;
            if !crate::entry_fits(&e, m) {
                return None;
            }
            self.unwrap_entry(&e).ok()
        })
    }

    /// Writes the plaintext BBS tree of a snapshot into a new or empty
    /// `dir`, reading and checking everything from the repository; the
    /// store gives only this instance's keys and trust, and is not written.
    pub fn restore_to_tree(
        &self,
        repo: &Repo,
        snapshot: Option<&str>,
        selection: &Selection,
        dir: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<TreeReport> {
        let start = Instant::now();
        let snap_id = repo.resolve_snapshot(snapshot.unwrap_or("latest"))?;
        let snap = repo.load_snapshot(&snap_id)?;
        crate::export::prepare_empty_dir(dir)?;
        let me = self.instance_id();
        let mut host_full: HashSet<InstanceId> = HashSet::new();
        if let Ok(c) = card_from_str(&snap.host) {
            host_full.insert(c.instance);
        }
        for t in &snap.trust {
            if t.role == "full"
                && let Ok(c) = card_from_str(&t.card)
            {
                host_full.insert(c.instance);
            }
        }
        let full = |a: &InstanceId| *a == me || self.is_full(a) || host_full.contains(a);
        progress.start("restore --to-tree", snap.objects.len() as u64, 0);
        let refs: Vec<&super::repofile::SnapObject> = snap.objects.iter().collect();
        let checks = check_manifests(repo, &refs);
        let results: Vec<Option<ObjectOutcome>> = snap
            .objects
            .par_iter()
            .zip(checks)
            .map(|(o, c)| {
                let r = (|| -> Result<Option<(String, (u64, u64))>> {
                    let c =
                        c.map_err(|(_, d)| damaged_tree(repo, &manifest_path(&o.manifest_id), &d))?;
                    let m = c.manifest;
                    let label = format!("{}:{}", m.kind, m.name);
                    if m.deleted
                        || !crate::bbs::BBS_KINDS.contains(&m.kind.as_str())
                        || !selection.matches(&m.kind, &m.name)
                    {
                        return Ok(None);
                    }
                    if !full(&m.author) {
                        return Err(StoreError::Invalid(format!(
                            "{label}: signed by {}, which is not trusted",
                            m.author.short()
                        )));
                    }
                    let Some(path) = crate::bbs::tree_path(&m.kind, &m.name) else {
                        return Err(StoreError::Invalid(format!(
                            "{label}: name does not fit the BBS tree layout"
                        )));
                    };
                    let key = self
                        .key_in(&m, &c.envelope, &full)
                        .ok_or_else(|| StoreError::Undecryptable(label.clone()))?;
                    let cipher = bbsync_protocol::ChunkCipher::new(&key);
                    let shape = match &m.meta {
                        Some(meta) => {
                            let plain = cipher.open_meta(meta).map_err(|e| {
                                StoreError::Invalid(format!("meta of {label}: {e}"))
                            })?;
                            bbsync_protocol::ObjectMeta::decode(&plain)
                                .map_err(|e| StoreError::Invalid(format!("meta of {label}: {e}")))?
                                .shape
                        }
                        None => bbsync_protocol::Shape::File,
                    };
                    let target = dir.join(path);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                            context: format!("creating {}", parent.display()),
                            source: e,
                        })?;
                    }
                    let feed = |sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<u64> {
                        let mut total = 0u64;
                        for ch in &m.chunks {
                            let path = chunk_path(&ch.id);
                            let stored = repo.backend().read(&path).map_err(|e| {
                                damaged_tree(repo, &path, &format!("unreadable: {e}"))
                            })?;
                            check_chunk_id(&ch.id, &stored).map_err(|_| {
                                damaged_tree(repo, &path, "content does not hash to its name")
                            })?;
                            let plain = cipher.open(&ch.id, &stored).map_err(|e| {
                                StoreError::Invalid(format!(
                                    "chunk {} of {label}: {e}",
                                    ch.id.short()
                                ))
                            })?;
                            total += plain.len() as u64;
                            sink(&plain)?;
                        }
                        if total != m.plaintext_len {
                            return Err(StoreError::Invalid(format!(
                                "{label} decrypted to {total} bytes, its manifest says {}",
                                m.plaintext_len
                            )));
                        }
                        Ok(total)
                    };
                    let counts = match shape {
                        bbsync_protocol::Shape::File => {
                            let f =
                                std::fs::File::create_new(&target).map_err(|e| StoreError::Io {
                                    context: format!("creating {}", target.display()),
                                    source: e,
                                })?;
                            let mut w = std::io::BufWriter::new(f);
                            let n = feed(&mut |d: &[u8]| {
                                std::io::Write::write_all(&mut w, d).map_err(|e| StoreError::Io {
                                    context: format!("writing {}", target.display()),
                                    source: e,
                                })
                            })?;
                            std::io::Write::flush(&mut w).map_err(|e| StoreError::Io {
                                context: format!("writing {}", target.display()),
                                source: e,
                            })?;
                            (1, n)
                        }
                        bbsync_protocol::Shape::Dir => {
                            std::fs::create_dir(&target).map_err(|e| StoreError::Io {
                                context: format!("creating {}", target.display()),
                                source: e,
                            })?;
                            let mut ex = crate::archive::Extractor::new(&target);
                            let n = feed(&mut |d: &[u8]| ex.feed(d))?;
                            let (files, _) = ex.finish()?;
                            (files, n)
                        }
                    };
                    Ok(Some((label, counts)))
                })();
                progress.advance(1, 0);
                match r {
                    Ok(None) => None,
                    Ok(Some((label, c))) => Some((label, Ok(c))),
                    Err(e) => Some((o.object_id.short(), Err(e))),
                }
            })
            .collect();
        progress.finish();
        let mut report = TreeReport {
            snapshot: snap_id,
            ..Default::default()
        };
        for (label, r) in results.into_iter().flatten() {
            match r {
                Ok((files, bytes)) => {
                    report.objects += 1;
                    report.files += files;
                    report.bytes += bytes;
                }
                Err(e) => report.failed.push((label, e.to_string())),
            }
        }
        report.failed.sort();
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// Which trusted instances a snapshot names (for `backups show`).
pub fn snapshot_trust(snap: &SnapshotFile) -> BTreeSet<String> {
    snap.trust
        .iter()
        .filter_map(|t| card_from_str(&t.card).ok())
        .map(|c| c.instance.short())
        .collect()
}
