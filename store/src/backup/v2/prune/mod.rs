//! `backups forget`, `backups delete` and `backups prune` on a format-2
//! repository (docs/format.md §17.8, "Prune"), under the exclusive lock.
//!
//! Prune reads everything first and changes nothing until it knows what it
//! will do (a dry run stops there):
//!
//! 1. the snapshots to remove: those named, and those a retention
//!    [`Policy`] does not keep (chosen as for format 1);
//! 2. the live set: the manifests the remaining snapshots name, the
//!    current file of each (the index's newest, §17.3), and the chunks
//!    those manifests name; each read and checked, a missing or damaged
//!    one refuses the prune (it would otherwise remove what a damaged
//!    record still needs);
//! 3. per pack: its live bytes (an id found in several packs counts in one
//!    of them: the pack with the highest live share, so a pack repacked by
//!    an interrupted prune wins over its source); a pack with no live
//!    entry is deleted, one whose dead share is above
//!    [`PruneOptions::max_unused_percent`] is repacked (its live entries
//!    copied, sealed and checked against their ids, never decrypted, into
//!    new packs), the rest are kept as they are; a pack no index file
//!    names (left by an interrupted backup or prune) is deleted;
//! 4. the index files that name anything deleted or repacked, or a
//!    manifest file that is no longer current, are rewritten: new index
//!    files name what stays of them, the repacked packs and the current
//!    manifest files, each under the sequence number of the index file it
//!    came from (so that "the newest index file wins" decides as before).
//!
//! Then the write order, every step behind a `prune2.*` failpoint: new
//! packs, new index files, the removed snapshots, one `sync`; then the old
//! index files (oldest sequence first), a `sync`; then the packs, then the
//! key files, then (no failpoint: a claim left is harmless) the sequence
//! claims of backups that failed before their snapshot. A crash anywhere leaves a repository in which every
//! remaining snapshot reads and verifies (at most packs no index file
//! names, which verify reports as `unindexed-pack` and the next prune
//! deletes); running prune again finishes the work.
//!
//! Key files (escrows, §17.6): one is removed when no remaining snapshot
//! names it, it is older (by the sequence in its name) than the newest
//! remaining snapshot, and a newer key file of the same instance stays. So
//! every remaining snapshot keeps its own escrow (a new passphrase never
//! makes an older snapshot unreadable), each instance keeps its newest
//! escrow as long as the repository exists, and an escrow written by a
//! backup that has not finished is never touched.

mod plan;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    format::{
        INDEX_FILE_ENTRIES, INDEX_FORMAT, IndexEntry, IndexFile, IndexPack, MOSTLY_LIVE_PERCENT,
        ManifestRef, PackBuilder, PackKind, SEQ_CLAIMS, snapshot_path,
    },
    lock::{LockGuard, LockOptions},
    repo::Repo2,
};
use crate::{
    backup::{repo_io_err, retention::Policy},
    error::{Result, StoreError},
    packs::PackId,
};

/// The dead share of a pack, in percent of its entry bytes, above which
/// prune repacks it: the complement of
/// [`MOSTLY_LIVE_PERCENT`](super::format::MOSTLY_LIVE_PERCENT), so that a
/// store pack a backup linked whole (at least 80 % live then) is not
/// copied by the next prune. restic's `--max-unused` (5 % by default) is a
/// bound over the whole repository; this is a bound per pack.
pub const DEFAULT_MAX_UNUSED_PERCENT: u8 = (100 - MOSTLY_LIVE_PERCENT) as u8;

/// What `backups prune` (and `backups delete`) should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// Retention applied first (empty: no snapshot is removed by policy).
    pub policy: Policy,
    /// Snapshots removed besides those the policy drops (exact ids;
    /// `backups delete`).
    pub forget: Vec<String>,
    /// Only report what would be done.
    pub dry_run: bool,
    /// A pack whose dead bytes are more than this share of its entry
    /// bytes is repacked (0: every pack with a dead byte; 100: none, only
    /// packs with no live entry go).
    pub max_unused_percent: u8,
    /// Who takes the exclusive lock, and how long to wait for it.
    pub lock: LockOptions,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            policy: Policy::default(),
            forget: Vec::new(),
            dry_run: false,
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            lock: LockOptions::default(),
        }
    }
}

/// One thing prune does (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneAction {
    /// `forget` (a snapshot), `delete-pack`, `repack`, `remove-index`,
    /// `remove-key`.
    pub action: &'static str,
    /// The file in the repository.
    pub path: String,
    /// Why, with sizes.
    pub detail: String,
}

/// What `backups prune` did (or would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// The repository.
    pub repo: String,
    /// Only reported, nothing changed.
    pub dry_run: bool,
    /// Snapshots kept by the policy, with the rules that keep them (empty
    /// without a policy).
    pub kept: BTreeMap<String, Vec<&'static str>>,
    /// Snapshots removed.
    pub removed: Vec<String>,
    /// Snapshots that remain.
    pub remaining: u64,
    /// Packs deleted whole: no live entry, or named by no index file.
    pub packs_deleted: u64,
    /// Packs whose live entries were copied into new packs (then deleted).
    pub packs_repacked: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// New packs written by the repacking.
    pub packs_written: u64,
    /// Entries copied by the repacking.
    pub entries_repacked: u64,
    /// Index files removed.
    pub index_removed: u64,
    /// Index files written.
    pub index_written: u64,
    /// Key files removed (see the module docs for the rule).
    pub keys_removed: Vec<String>,
    /// Bytes of the packs deleted or repacked.
    pub bytes_deleted: u64,
    /// Bytes of the new packs.
    pub bytes_written: u64,
    /// `bytes_deleted - bytes_written`.
    pub bytes_freed: u64,
    /// Live entry bytes after the prune.
    pub live_bytes: u64,
    /// Dead entry bytes left in kept packs (under the threshold).
    pub dead_bytes_kept: u64,
    /// Everything done (or, in a dry run, to be done), in order.
    pub actions: Vec<PruneAction>,
    /// Stale locks removed while taking the lock.
    pub stale_locks_removed: Vec<String>,
    /// Temp files of interrupted local writes removed.
    pub temp_removed: u64,
    /// Sequence claims (`seqs/`) of backups that failed or crashed before
    /// their snapshot, removed.
    pub claims_removed: u64,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// What `forget` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ForgetReport {
    /// The repository.
    pub repo: String,
    /// Snapshots removed (their data stays until `prune`).
    pub removed: Vec<String>,
    /// Stale locks removed while taking the lock.
    pub stale_locks_removed: Vec<String>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// Every copy of an id: (kind, id) -> (pack index, entry).
type Copies = HashMap<(PackKind, [u8; 32]), Vec<(usize, IndexEntry)>>;

/// What happens to a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Repack,
    Delete,
}

/// A pack named by the index.
#[derive(Debug)]
struct PackInfo {
    kind: PackKind,
    id: PackId,
    len: u64,
    entries: Vec<IndexEntry>,
    present: bool,
    /// Entry bytes whose id is live (any copy).
    potential: u64,
    /// Entry bytes whose id is live and chosen here.
    live: u64,
    total: u64,
    fate: Fate,
}

impl PackInfo {
    fn path(&self) -> String {
        self.kind.path(&self.id)
    }
}

/// Everything prune decided, before it changes anything.
struct Plan {
    remove: Vec<String>,
    kept: BTreeMap<String, Vec<&'static str>>,
    remaining: u64,
    packs: Vec<PackInfo>,
    /// Live entries chosen in each repacked pack: (pack index, entries).
    repack: Vec<(usize, Vec<IndexEntry>)>,
    /// Present pack files no index file names: (path, size).
    unindexed: Vec<(String, u64)>,
    /// Index files to remove, oldest sequence first: (path, seq).
    dirty: Vec<(String, u64)>,
    /// Packs kept as they are that only dirty index files name.
    carry_packs: Vec<IndexPack>,
    /// Current manifest files only dirty index files name, by the
    /// sequence they won with.
    carry_refs: BTreeMap<u64, Vec<ManifestRef>>,
    /// The highest sequence of any index file (new index files that hold
    /// no carried manifest file get it).
    top_seq: u64,
    keys: Vec<String>,
}

impl Repo2 {
    /// Removes snapshots (their files) under the exclusive lock; their data
    /// stays until [`Repo2::prune`]. Every id must be a snapshot of the
    /// repository (exact ids; resolve `latest` and prefixes first).
    pub fn forget(&self, ids: &[String]) -> Result<ForgetReport> {
        self.forget_with(ids, &LockOptions::default())
    }

    /// [`Repo2::forget`] with the lock's holder and wait.
    pub fn forget_with(&self, ids: &[String], lock: &LockOptions) -> Result<ForgetReport> {
        let start = Instant::now();
        let loc = self.location();
        let guard = self.lock_with(lock, crate::backup::LockFor::FORGET)?;
        let present: HashSet<String> = self.snapshot_ids()?.into_iter().collect();
        let mut remove: Vec<String> = Vec::new();
        for id in ids {
            if !present.contains(id) {
                return Err(StoreError::Invalid(format!(
                    "no snapshot {id} in {loc}; nothing was forgotten"
                )));
            }
            if !remove.contains(id) {
                remove.push(id.clone());
            }
        }
        guard.ensure_held()?;
        self.remove_snapshots(&remove)?;
        if !remove.is_empty() {
            self.backend()
                .sync()
                .map_err(repo_io_err(format!("syncing {loc}")))?;
        }
        Ok(ForgetReport {
            repo: loc,
            removed: remove,
            stale_locks_removed: guard.removed_stale.clone(),
            elapsed: start.elapsed(),
        })
    }

    /// Applies the policy and the named removals, then deletes and repacks
    /// what no remaining snapshot needs (see the module docs), under the
    /// exclusive lock.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let start = Instant::now();
        if opts.max_unused_percent > 100 {
            return Err(StoreError::Invalid(format!(
                "--max-unused {} is not a percentage (0..=100); nothing was pruned",
                opts.max_unused_percent
            )));
        }
        let guard = self.lock_with(&opts.lock, crate::backup::LockFor::PRUNE)?;
        let plan = self.plan_prune(opts)?;
        let mut r = PruneReport {
            repo: self.location(),
            dry_run: opts.dry_run,
            kept: plan.kept.clone(),
            removed: plan.remove.clone(),
            remaining: plan.remaining,
            stale_locks_removed: guard.removed_stale.clone(),
            ..Default::default()
        };
        describe(&plan, &mut r);
        if !opts.dry_run {
            self.apply_prune(&guard, &plan, &mut r)?;
        }
        r.bytes_freed = r.bytes_deleted.saturating_sub(r.bytes_written);
        r.elapsed = start.elapsed();
        Ok(r)
    }

    fn remove_snapshots(&self, ids: &[String]) -> Result<()> {
        let loc = self.location();
        for id in ids {
            let path = snapshot_path(id);
            crate::failpoint::hit("prune2.forget")
                .and_then(|()| self.backend().remove(&path))
                .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
        }
        Ok(())
    }

    /// Carries a plan out, in the order of the module docs.
    fn apply_prune(&self, guard: &LockGuard, plan: &Plan, r: &mut PruneReport) -> Result<()> {
        let b = self.backend();
        let loc = self.location();
        guard.ensure_held()?;

        // 1. Repack: read each source pack once, check the live entries,
        // copy them into new packs (written whole; durable at the sync).
        let new_packs = self.repack(plan, r)?;

        // 2. New index files: the carried manifest files under the
        // sequence they won with; the packs in the file of the highest.
        let out = new_index_files(plan, new_packs);
        for f in &out {
            let bytes = f.encode();
            let path = super::format::index_path(&bytes);
            crate::failpoint::hit("prune2.index")
                .and_then(|()| b.write_lazy(&path, &bytes))
                .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
            r.index_written += 1;
        }

        // 3. The snapshots that go.
        guard.ensure_held()?;
        self.remove_snapshots(&plan.remove)?;

        // Everything written so far durable (and the snapshots gone for
        // good) before any old file goes.
        crate::failpoint::hit("prune2.sync")
            .and_then(|()| b.sync())
            .map_err(repo_io_err(format!("syncing {loc}")))?;

        // 4. Old index files, oldest sequence first (so that while some
        // remain, the newest naming a manifest is still the one that
        // decides), then durably gone before the packs they name.
        guard.ensure_held()?;
        for (path, _) in &plan.dirty {
            crate::failpoint::hit("prune2.remove_index")
                .and_then(|()| b.remove(path))
                .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
        }
        if !plan.dirty.is_empty() {
            crate::failpoint::hit("prune2.sync_removed")
                .and_then(|()| b.sync())
                .map_err(repo_io_err(format!("syncing {loc}")))?;
        }

        // 5. Packs: repacked sources, dead ones, unindexed ones.
        for (path, _, _) in doomed(plan) {
            crate::failpoint::hit("prune2.remove_pack")
                .and_then(|()| b.remove(&path))
                .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
        }

        // 6. Key files no remaining snapshot needs.
        for path in &plan.keys {
            crate::failpoint::hit("prune2.remove_key")
                .and_then(|()| b.remove(path))
                .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
        }
        // 7. Sequence claims: no backup runs under the exclusive lock, so
        // each is one that failed or crashed before its snapshot (what it
        // left besides, a key file or index files, still keeps its
        // sequence from being drawn again: `Repo2::next_seq`).
        for name in b
            .list(SEQ_CLAIMS)
            .map_err(repo_io_err(format!("listing {loc}/{SEQ_CLAIMS}")))?
        {
            let path = format!("{SEQ_CLAIMS}/{name}");
            b.remove(&path)
                .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
            r.claims_removed += 1;
        }
        r.temp_removed = b
            .remove_temp_files()
            .map_err(repo_io_err(format!("removing temp files in {loc}")))?;
        b.sync().map_err(repo_io_err(format!("syncing {loc}")))?;
        Ok(())
    }

    /// Apply, step 1: the live entries of each pack to repack (each
    /// source read once, each entry checked) into new packs, written whole.
    fn repack(&self, plan: &Plan, r: &mut PruneReport) -> Result<Vec<IndexPack>> {
        let b = self.backend();
        let loc = self.location();
        let mut new_packs: Vec<IndexPack> = Vec::new();
        for kind in [PackKind::Data, PackKind::Manifests] {
            let mut builder: Option<PackBuilder> = None;
            for (i, entries) in &plan.repack {
                let p = &plan.packs[*i];
                if p.kind != kind {
                    continue;
                }
                let path = p.path();
                let bytes = b
                    .read(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                for e in entries {
                    let data = bytes
                        .get(e.offset as usize..e.end() as usize)
                        .unwrap_or_default();
                    if !kind.entry_matches(&e.id, data) {
                        return Err(StoreError::Repo(format!(
                            "{loc}/{path}: entry {} at offset {} does not hash to its id (damaged); run `bbsync backups verify --read-data` (nothing was removed)",
                            hex::encode(&e.id[..8]),
                            e.offset
                        )));
                    }
                    let full = builder.as_ref().is_some_and(|x| {
                        !x.is_empty() && x.len() + u64::from(e.len) > self.config.pack_target
                    });
                    if full && let Some(x) = builder.take() {
                        self.write_pack(x, &mut new_packs, r)?;
                    }
                    builder
                        .get_or_insert_with(|| PackBuilder::new(kind))
                        .push(e.id, data)
                        .map_err(|e| StoreError::Invalid(format!("repacking {path}: {e}")))?;
                }
            }
            if let Some(x) = builder.take().filter(|x| !x.is_empty()) {
                self.write_pack(x, &mut new_packs, r)?;
            }
        }
        Ok(new_packs)
    }

    fn write_pack(
        &self,
        builder: PackBuilder,
        out: &mut Vec<IndexPack>,
        r: &mut PruneReport,
    ) -> Result<()> {
        let (bytes, ip) = builder.finish();
        let path = ip.kind.path(&PackId(ip.pack));
        crate::failpoint::hit("prune2.repack")
            .and_then(|()| self.backend().write_lazy(&path, &bytes))
            .map_err(repo_io_err(format!("writing {}/{path}", self.location())))?;
        r.packs_written += 1;
        r.bytes_written += bytes.len() as u64;
        out.push(ip);
        Ok(())
    }
}

/// Apply, step 2: the new index files: the carried manifest files under
/// the sequence they won with; the carried and new packs in the file of
/// the highest (more files of that sequence past INDEX_FILE_ENTRIES).
fn new_index_files(plan: &Plan, new_packs: Vec<IndexPack>) -> Vec<IndexFile> {
    let mut out: Vec<IndexFile> = Vec::new();
    let pack_seq = plan
        .carry_refs
        .keys()
        .next_back()
        .copied()
        .unwrap_or(plan.top_seq);
    for (seq, refs) in &plan.carry_refs {
        out.push(IndexFile {
            format: INDEX_FORMAT,
            seq: *seq,
            packs: Vec::new(),
            manifests: refs.clone(),
        });
    }
    let mut entries = 0usize;
    // The last file (the highest seq, `pack_seq`) also takes the packs.
    let mut cur: Option<IndexFile> = out.pop();
    for p in plan.carry_packs.iter().cloned().chain(new_packs) {
        let n = p.entries.len();
        if entries > 0 && entries + n > INDEX_FILE_ENTRIES {
            out.extend(cur.take());
            entries = 0;
        }
        cur.get_or_insert_with(|| IndexFile {
            format: INDEX_FORMAT,
            seq: pack_seq,
            packs: Vec::new(),
            manifests: Vec::new(),
        })
        .packs
        .push(p);
        entries += n;
    }
    out.extend(cur);
    out
}

/// The pack files a plan deletes: (path, size, why).
fn doomed(plan: &Plan) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for p in &plan.packs {
        match (p.fate, p.present) {
            (Fate::Repack, _) => out.push((
                p.path(),
                p.len,
                format!("repacked ({} of {} entry bytes live)", p.live, p.total),
            )),
            (Fate::Delete, true) => out.push((p.path(), p.len, "no live entry".into())),
            (Fate::Delete, false) => out.push((
                p.path(),
                0,
                "missing, and nothing live was in it (dropped from the index)".into(),
            )),
            (Fate::Keep, _) => {}
        }
    }
    for (path, size) in &plan.unindexed {
        out.push((path.clone(), *size, "named by no index file".into()));
    }
    out
}

/// Counts of a plan, and (for a dry run) what it would do.
fn describe(plan: &Plan, r: &mut PruneReport) {
    for id in &plan.remove {
        r.actions.push(PruneAction {
            action: "forget",
            path: snapshot_path(id),
            detail: String::new(),
        });
    }
    for (i, entries) in &plan.repack {
        let p = &plan.packs[*i];
        r.entries_repacked += entries.len() as u64;
        r.actions.push(PruneAction {
            action: "repack",
            path: p.path(),
            detail: format!("{} of {} entry bytes live", p.live, p.total),
        });
    }
    for (path, seq) in &plan.dirty {
        r.actions.push(PruneAction {
            action: "remove-index",
            path: path.clone(),
            detail: format!("sequence {seq}"),
        });
    }
    for (path, size, why) in doomed(plan) {
        r.bytes_deleted += size;
        r.actions.push(PruneAction {
            action: "delete-pack",
            path,
            detail: why,
        });
    }
    for path in &plan.keys {
        r.actions.push(PruneAction {
            action: "remove-key",
            path: path.clone(),
            detail: "named by no remaining snapshot, and not its instance's newest".into(),
        });
    }
    r.keys_removed = plan.keys.clone();
    r.index_removed = plan.dirty.len() as u64;
    for p in &plan.packs {
        match p.fate {
            Fate::Keep => {
                r.packs_kept += 1;
                r.live_bytes += p.live;
                r.dead_bytes_kept += p.total - p.live.min(p.total);
            }
            Fate::Repack => {
                r.packs_repacked += 1;
                r.live_bytes += p.live;
            }
            Fate::Delete => r.packs_deleted += 1,
        }
    }
    r.packs_deleted += plan.unindexed.len() as u64;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{super::format::key_name, *};

    #[test]
    fn key_names() {
        assert_eq!(key_name("abcd-000012"), Some(("abcd", 12)));
        assert_eq!(key_name("abcd-12x"), None);
        assert_eq!(key_name("abcd"), None);
        assert_eq!(key_name("-000001"), None);
    }

    #[test]
    fn the_default_threshold_is_the_complement_of_mostly_live() {
        assert_eq!(DEFAULT_MAX_UNUSED_PERCENT, 20);
    }
}
