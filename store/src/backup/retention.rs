//! Retention (restic's `forget` policies) and pruning: which snapshots to
//! keep, then removing the manifests and chunks no kept snapshot references.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use bbsync_protocol::{ChunkId, Manifest, ManifestId, Unverified};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    Repo, SnapshotFile, chunk_path, civil_from_days, list_chunks, manifest_path, repo_io_err,
    snapshot_path, snapshot_seq, v2::format::PackKind,
};
use crate::error::{Result, StoreError};

/// How many snapshots to keep: the newest `last`, and the newest of each of
/// the last `daily` days, `weekly` weeks (Monday to Sunday) and `monthly`
/// months that have one (UTC). A snapshot kept by any rule stays.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `--keep-last`.
    #[serde(default)]
    pub keep_last: u32,
    /// `--keep-daily`.
    #[serde(default)]
    pub keep_daily: u32,
    /// `--keep-weekly`.
    #[serde(default)]
    pub keep_weekly: u32,
    /// `--keep-monthly`.
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Policy {
    /// Whether no rule is set (prune then only removes unreferenced data).
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }

    /// Of snapshots `(id, created_ms)`, the ids to keep, each with the
    /// rules that keep it.
    pub fn apply(&self, snaps: &[(String, u64)]) -> BTreeMap<String, Vec<&'static str>> {
        let mut newest_first: Vec<&(String, u64)> = snaps.iter().collect();
        newest_first
            .sort_by(|a, b| (snapshot_seq(&b.0), b.1, &b.0).cmp(&(snapshot_seq(&a.0), a.1, &a.0)));
        let mut keep: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        let rules: [Rule; 4] = [
            ("last", self.keep_last, |_| 0),
            ("daily", self.keep_daily, day_of),
            ("weekly", self.keep_weekly, |ms| {
                let d = day_of(ms);
                d - (d + 3).rem_euclid(7)
            }),
            ("monthly", self.keep_monthly, |ms| {
                let (y, m, _) = civil_from_days(day_of(ms));
                y * 12 + i64::from(m)
            }),
        ];
        for (name, n, bucket) in rules {
            let mut kept = 0u32;
            let mut last: Option<i64> = None;
            for (id, ms) in &newest_first {
                if kept >= n {
                    break;
                }
                let b = bucket(*ms);
                if name == "last" || last != Some(b) {
                    keep.entry(id.clone()).or_default().push(name);
                    kept += 1;
                    last = Some(b);
                }
            }
        }
        keep
    }
}

/// A retention rule: its name, how many to keep, and its time bucket.
type Rule = (&'static str, u32, fn(u64) -> i64);

fn day_of(ms: u64) -> i64 {
    (ms / 1000) as i64 / 86_400
}

/// Whether `prune` and `delete` remove, or only report what they would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Remove.
    Apply,
    /// Only report (`--dry-run`).
    DryRun,
}

impl Removal {
    /// [`Removal::DryRun`] when `dry_run` (a command's `--dry-run`).
    pub fn dry_run_if(dry_run: bool) -> Removal {
        if dry_run {
            Removal::DryRun
        } else {
            Removal::Apply
        }
    }
}

/// What `backups prune` (or `delete`) did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Only reported, nothing removed.
    pub dry_run: bool,
    /// Snapshots kept, with the rules that keep them.
    pub kept: BTreeMap<String, Vec<&'static str>>,
    /// Snapshots removed.
    pub removed: Vec<String>,
    /// Manifest files removed.
    pub manifests_removed: u64,
    /// Chunk files removed.
    pub chunks_removed: u64,
    /// Bytes of chunk files removed.
    pub bytes_removed: u64,
    /// Temp files of interrupted writes removed.
    pub temp_removed: u64,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
    /// Format 2: what the pack-level prune did (packs deleted, repacked,
    /// index files rewritten, keys removed, every action).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs: Option<super::v2::prune::PruneReport>,
}

/// What `backups stats` reports.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepoStats {
    /// The repository.
    pub repo: String,
    /// Its id.
    pub repo_id: String,
    /// Its format (1 or 2).
    pub format: u16,
    /// Snapshots.
    pub snapshots: u64,
    /// Manifest files (format 2: manifests indexed).
    pub manifests: u64,
    /// Chunk files (format 2: chunks indexed).
    pub chunks: u64,
    /// Bytes of chunk files (format 2: of data packs, dead bytes included).
    pub chunk_bytes: u64,
    /// Format 2: data packs indexed.
    pub data_packs: u64,
    /// Format 2: manifest packs indexed.
    pub manifest_packs: u64,
    /// Format 2: index files.
    pub index_files: u64,
    /// Sum over snapshots of the sealed bytes each references (what full
    /// copies would take).
    pub snapshot_bytes: u64,
    /// Sum over snapshots of their plaintext bytes.
    pub plaintext_bytes: u64,
    /// Identity escrows.
    pub identity_escrows: u64,
}

impl Repo {
    /// Every snapshot, loaded and checked (a damaged one is an error),
    /// oldest first: by sequence number, then signed creation time, then id
    /// (the order `latest` follows).
    pub fn snapshots(&self) -> Result<Vec<SnapshotFile>> {
        let mut snaps = self
            .snapshot_ids()?
            .iter()
            .map(|id| self.load_snapshot(id))
            .collect::<Result<Vec<_>>>()?;
        snaps.sort_by(|a, b| {
            (snapshot_seq(&a.id), a.created_ms, &a.id).cmp(&(
                snapshot_seq(&b.id),
                b.created_ms,
                &b.id,
            ))
        });
        Ok(snaps)
    }

    /// Removes one snapshot, then what nothing references any more (with
    /// [`Removal::DryRun`]: reports what it would remove).
    pub fn delete_snapshot(&self, spec: &str, removal: Removal) -> Result<PruneReport> {
        let dry_run = removal == Removal::DryRun;
        let id = self.resolve_snapshot(spec)?;
        if let Some(r) = self.v2() {
            return prune_v2(r, &[id], dry_run, self.lock_wait());
        }
        self.prune_with(&[id], dry_run)
    }

    /// Applies a policy, then removes what nothing references. An empty
    /// policy removes no snapshot, only unreferenced data. With
    /// [`Removal::DryRun`], reports what it would remove.
    pub fn prune(&self, policy: &Policy, removal: Removal) -> Result<PruneReport> {
        let dry_run = removal == Removal::DryRun;
        let snaps = self.snapshots()?;
        let remove: Vec<String> = if policy.is_empty() {
            Vec::new()
        } else {
            let keep = policy.apply(
                &snaps
                    .iter()
                    .map(|s| (s.id.clone(), s.created_ms))
                    .collect::<Vec<_>>(),
            );
            snaps
                .iter()
                .filter(|s| !keep.contains_key(&s.id))
                .map(|s| s.id.clone())
                .collect()
        };
        let mut r = match self.v2() {
            Some(r2) => prune_v2(r2, &remove, dry_run, self.lock_wait())?,
            None => self.prune_with(&remove, dry_run)?,
        };
        if !policy.is_empty() {
            r.kept = policy.apply(
                &snaps
                    .iter()
                    .map(|s| (s.id.clone(), s.created_ms))
                    .collect::<Vec<_>>(),
            );
        }
        Ok(r)
    }

    fn prune_with(&self, remove: &[String], dry_run: bool) -> Result<PruneReport> {
        let start = Instant::now();
        let b = self.backend();
        let loc = self.location();
        let mut r = PruneReport {
            dry_run,
            ..Default::default()
        };
        // What the remaining snapshots reference; every one must be readable,
        // or pruning could remove data a damaged snapshot still needs.
        let mut keep_manifests: HashSet<ManifestId> = HashSet::new();
        for id in self.snapshot_ids()? {
            if remove.contains(&id) {
                continue;
            }
            let s = self.load_snapshot(&id).map_err(|e| {
                StoreError::Repo(format!("{e}; repair or delete it before pruning"))
            })?;
            keep_manifests.extend(s.objects.iter().map(|o| o.manifest_id));
        }
        let refs: Vec<Result<Vec<ChunkId>>> = keep_manifests
            .par_iter()
            .map(|mid| {
                let f = self.read_manifest(mid).map_err(|e| {
                    StoreError::Repo(format!(
                        "{e}; run `bbsync backups verify` (nothing was pruned)"
                    ))
                })?;
                let m = Unverified::<Manifest>::decode(&f.manifest)
                    .map_err(|e| {
                        StoreError::Repo(format!(
                            "{} is damaged: {e}; run `bbsync backups verify` (nothing was pruned)",
                            manifest_path(mid)
                        ))
                    })?
                    .dangerously_assume_verified();
                Ok(m.chunks.iter().map(|c| c.id).collect())
            })
            .collect();
        let mut keep_chunks: HashSet<ChunkId> = HashSet::new();
        for x in refs {
            keep_chunks.extend(x?);
        }
        // Snapshots first: a crash after this leaves only unreferenced data.
        for id in remove {
            if !dry_run {
                b.remove(&snapshot_path(id))
                    .map_err(repo_io_err(format!("removing {loc}/{}", snapshot_path(id))))?;
            }
            r.removed.push(id.clone());
        }
        if !dry_run && !remove.is_empty() {
            b.sync().map_err(repo_io_err(format!("syncing {loc}")))?;
        }
        for name in b
            .list("manifests")
            .map_err(repo_io_err(format!("listing {loc}/manifests")))?
        {
            let referenced = hex::decode(&name)
                .ok()
                .and_then(|v| ManifestId::from_slice(&v).ok())
                .is_some_and(|m| keep_manifests.contains(&m));
            if !referenced {
                if !dry_run {
                    b.remove(&format!("manifests/{name}"))
                        .map_err(repo_io_err(format!("removing {loc}/manifests/{name}")))?;
                }
                r.manifests_removed += 1;
            }
        }
        if !dry_run {
            r.temp_removed = b
                .remove_temp_files()
                .map_err(repo_io_err(format!("removing temp files in {loc}")))?;
        }
        let (have, _) = list_chunks(b)?;
        for id in have {
            if !keep_chunks.contains(&id) {
                let path = chunk_path(&id);
                r.bytes_removed += b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                    .unwrap_or(0);
                if !dry_run {
                    b.remove(&path)
                        .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
                }
                r.chunks_removed += 1;
            }
        }
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// Sizes and counts (format 2: from the index, under a shared lock).
    pub fn stats(&self) -> Result<RepoStats> {
        let b = self.backend();
        let loc = self.location();
        let _lock = self.lock("", crate::backup::LockFor::STATS)?;
        let mut s = RepoStats {
            repo: loc.clone(),
            repo_id: self.repo_id().to_string(),
            format: self.format(),
            ..Default::default()
        };
        for snap in self.snapshots()? {
            s.snapshots += 1;
            s.snapshot_bytes += snap.bytes;
            s.plaintext_bytes += snap.plaintext_bytes;
        }
        s.identity_escrows = b
            .list("keys")
            .map_err(repo_io_err(format!("listing {loc}/keys")))?
            .len() as u64;
        if let Some(r) = self.v2() {
            let ix = r.load_index()?;
            s.manifests = ix.manifests.len() as u64;
            s.chunks = ix.chunks.len() as u64;
            for (kind, len) in ix.packs.values() {
                match kind {
                    PackKind::Data => {
                        s.data_packs += 1;
                        s.chunk_bytes += len;
                    }
                    PackKind::Manifests => s.manifest_packs += 1,
                }
            }
            s.index_files = b
                .list("index")
                .map_err(repo_io_err(format!("listing {loc}/index")))?
                .len() as u64;
            return Ok(s);
        }
        s.manifests = b
            .list("manifests")
            .map_err(repo_io_err(format!("listing {loc}/manifests")))?
            .len() as u64;
        let (have, _) = list_chunks(b)?;
        s.chunks = have.len() as u64;
        for id in have {
            let path = chunk_path(&id);
            s.chunk_bytes += b
                .size(&path)
                .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                .unwrap_or(0);
        }
        Ok(s)
    }
}

/// `backups delete` and `backups prune` on a format-2 repository: the
/// snapshots in `remove` go, then what nothing references. This is the one
/// place that calls the format-2 prune library (`v2/prune.rs`, one
/// `Repo2::prune` under the exclusive lock it takes itself, waiting up to
/// `lock_wait`); the snapshots to remove are chosen above (policy,
/// `retention.rs`).
fn prune_v2(
    repo: &super::v2::Repo2,
    remove: &[String],
    dry_run: bool,
    lock_wait: std::time::Duration,
) -> Result<PruneReport> {
    let opts = super::v2::prune::PruneOptions {
        forget: remove.to_vec(),
        dry_run,
        lock: super::v2::lock::LockOptions {
            host: String::new(),
            wait: lock_wait,
        },
        ..Default::default()
    };
    let r = repo.prune(&opts)?;
    Ok(PruneReport {
        dry_run,
        kept: BTreeMap::new(),
        removed: r.removed.clone(),
        manifests_removed: 0,
        chunks_removed: 0,
        bytes_removed: r.bytes_freed,
        temp_removed: r.temp_removed,
        elapsed: r.elapsed,
        packs: Some(r),
    })
}
