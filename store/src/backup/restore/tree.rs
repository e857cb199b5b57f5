//! `bbsync restore --to-tree`: the plaintext BBS tree of a snapshot, read
//! and checked from the repository; the store gives only this instance's
//! keys and trust, and is not written.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkRef, ContentKey, EnvelopeEntry, InstanceId, Manifest, ObjectId, Role, Unverified,
    chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

use super::{
    super::check::{CheckedManifest, check_manifests_grouped},
    is_full,
};
use crate::{
    Store,
    backup::{Repo, RepoReader},
    error::{Result, StoreError},
    export::{ChunkSource, ContentReader},
    progress::Progress,
    sync::Selection,
};

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

/// What every object of one `--to-tree` shares.
struct TreeJob<'a> {
    repo: &'a Repo,
    reader: &'a RepoReader<'a>,
    selection: &'a Selection,
    dir: &'a Path,
    /// Whose signatures count: this instance, the store's `full`
    /// instances, the snapshot's host and the `full` instances of its
    /// own trust table.
    full: &'a (dyn Fn(&InstanceId) -> bool + Sync),
}

/// A snapshot's chunks, read from the repository and checked against
/// their ids.
struct RepoChunks<'a> {
    repo: &'a Repo,
    reader: &'a RepoReader<'a>,
}

impl ChunkSource for RepoChunks<'_> {
    fn sealed(&self, _object: &ObjectId, ch: &ChunkRef) -> Result<Vec<u8>> {
        let path = self.reader.chunk_path(&ch.id);
        let stored = self
            .reader
            .read_chunk(&ch.id, ch.len)
            .map_err(|e| damaged_tree(self.repo, &path, &format!("unreadable: {e}")))?;
        check_chunk_id(&ch.id, &stored)
            .map_err(|_| damaged_tree(self.repo, &path, &self.reader.bad_chunk(&ch.id)))?;
        Ok(stored)
    }
}

impl Store {
    /// Writes the plaintext BBS tree of a snapshot into a new or empty
    /// `dir`, reading and checking everything from the repository; the
    /// store gives only this instance's keys and trust, and is not written.
    pub fn restore_to_tree(
        &self,
        repo: &Repo,
        snapshot: Option<&str>,
        selection: &Selection,
        dir: &Path,
        trust_host: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<TreeReport> {
        let start = Instant::now();
        let _lock = repo.lock(
            &self.instance_id().to_hex(),
            crate::backup::LockFor::RESTORE,
        )?;
        let snap_id = repo.resolve_snapshot(snapshot.unwrap_or("latest"))?;
        let snap = repo.load_snapshot(&snap_id)?;
        let reader = repo.reader()?;
        // The same host rules as a restore (nothing is trusted here: a
        // `--trust-host` only vouches for this one command).
        let host = self.accept_snapshot(&snap, trust_host)?;
        crate::export::prepare_empty_dir(dir)?;
        let me = self.instance_id();
        let mut host_full: HashSet<InstanceId> = HashSet::new();
        host_full.insert(host.card.instance);
        for (c, role) in host.own_table.iter().flatten() {
            if *role == Role::Full {
                host_full.insert(c.instance);
            }
        }
        let full = |a: &InstanceId| *a == me || is_full(self, a) || host_full.contains(a);
        let job = TreeJob {
            repo,
            reader: &reader,
            selection,
            dir,
            full: &full,
        };
        progress.start("restore --to-tree", snap.objects.len() as u64, 0);
        let mut report = TreeReport {
            snapshot: snap_id,
            ..Default::default()
        };
        // In groups (one group's decoded manifests held at a time, not the
        // snapshot's: 420 MB at 200,000 objects).
        check_manifests_grouped(&reader, &snap.objects, |group, checks| {
            let results: Vec<Option<ObjectOutcome>> = group
                .par_iter()
                .zip(checks)
                .map(|(&i, c)| {
                    let o = &snap.objects[i as usize];
                    let r = c
                        .map_err(|(_, d)| {
                            damaged_tree(repo, &reader.manifest_path(&o.manifest_id), &d)
                        })
                        .and_then(|c| self.tree_object(&job, &c));
                    progress.advance(1, 0);
                    match r {
                        Ok(None) => None,
                        Ok(Some((label, c))) => Some((label, Ok(c))),
                        Err(e) => Some((o.object_id.short(), Err(e))),
                    }
                })
                .collect();
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
            Ok(())
        })?;
        progress.finish();
        report.failed.sort();
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// One object of a snapshot into the tree: `None` when it is not
    /// written (deleted, not a BBS kind, outside the selection), else its
    /// label and (files, bytes).
    fn tree_object(
        &self,
        job: &TreeJob<'_>,
        c: &CheckedManifest,
    ) -> Result<Option<(String, (u64, u64))>> {
        let m = &c.manifest;
        if m.deleted
            || !crate::bbs::BBS_KINDS.contains(&m.kind.as_str())
            || !job.selection.matches(&m.kind, &m.name)
        {
            return Ok(None);
        }
        let label = format!("{}:{}", m.kind, m.name);
        if !(job.full)(&m.author) {
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
            .key_of(m, &c.envelope, job.full)
            .ok_or_else(|| StoreError::Undecryptable(label.clone()))?;
        let content = ContentReader::new(m, &key, &label)?;
        let chunks = RepoChunks {
            repo: job.repo,
            reader: job.reader,
        };
        let counts = content.write_in_tree(m, &label, &chunks, &job.dir.join(path))?;
        Ok(Some((label, counts)))
    }

    /// The content key from the first entry for this instance that
    /// verifies (wrapped by the author or an instance `full` accepts), fits
    /// this object version, unwraps, and matches the manifest's key
    /// commitment.
    fn key_of(
        &self,
        m: &Manifest,
        envelope: &[Vec<u8>],
        full: &dyn Fn(&InstanceId) -> bool,
    ) -> Option<ContentKey> {
        let me = self.instance_id();
        envelope.iter().find_map(|raw| {
            let u = Unverified::<EnvelopeEntry>::decode(raw).ok()?;
            if u.claimed().recipient != me {
                return None;
            }
            let author = m.author;
            let e = u.verify(|w| *w == author || full(w)).ok()?;
            self.entry_key(m, e).ok()
        })
    }
}
