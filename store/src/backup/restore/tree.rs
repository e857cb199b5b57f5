//! `bbsync restore --to-tree`: the plaintext BBS tree of a snapshot, read
//! and checked from the repository; the store gives only this instance's
//! keys and trust, and is not written.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkCipher, ContentKey, EnvelopeEntry, InstanceId, Manifest, ObjectMeta, Role, Shape,
    Unverified, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

use super::{super::check::CheckedManifest, is_full};
use crate::{
    Store,
    backup::{Repo, RepoReader, check::check_manifests, repofile::SnapObject},
    error::{Result, StoreError},
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

/// One object, checked and opened, to write into the tree.
struct TreeObject<'a> {
    manifest: &'a Manifest,
    label: String,
    cipher: ChunkCipher,
    shape: Shape,
    mode: Option<u32>,
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
        let refs: Vec<&SnapObject> = snap.objects.iter().collect();
        let checks = check_manifests(&reader, &refs);
        let results: Vec<Option<ObjectOutcome>> = snap
            .objects
            .par_iter()
            .zip(checks)
            .map(|(o, c)| {
                let r = c
                    .map_err(|(_, d)| damaged_tree(repo, &reader.manifest_path(&o.manifest_id), &d))
                    .and_then(|c| self.tree_object(&job, &c));
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
        let o = TreeObject::open(m, label, &key)?;
        let target = job.dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                context: format!("creating {}", parent.display()),
                source: e,
            })?;
        }
        let counts = match o.shape {
            Shape::File => {
                // A SQLite database goes through a temp file and must pass
                // its integrity check (src/sqlite).
                let mut w = crate::sqlite::FileOut::new(
                    &target,
                    crate::sqlite::WriteMode::InPlace,
                    m.plaintext_len,
                )
                .with_mode(o.mode);
                let n = o.feed(job, &mut |d: &[u8]| w.write(d))?;
                w.finish(&o.label)?;
                (1, n)
            }
            Shape::Dir => {
                std::fs::create_dir(&target).map_err(|e| StoreError::Io {
                    context: format!("creating {}", target.display()),
                    source: e,
                })?;
                let mut ex = crate::archive::Extractor::new(&target);
                let n = o.feed(job, &mut |d: &[u8]| ex.feed(d))?;
                let (files, _) = ex.finish()?;
                if let Some(mode) = o.mode {
                    crate::archive::set_dir_mode(&target, mode)?;
                }
                crate::sqlite::check_tree(&target, &o.label).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&target);
                })?;
                (files, n)
            }
        };
        Ok(Some((o.label, counts)))
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

impl<'a> TreeObject<'a> {
    /// The object's cipher, shape and mode (from its sealed meta).
    fn open(manifest: &'a Manifest, label: String, key: &ContentKey) -> Result<Self> {
        let cipher = ChunkCipher::new(key);
        let (shape, mode) = match &manifest.meta {
            Some(meta) => {
                let plain = cipher
                    .open_meta(meta)
                    .map_err(|e| StoreError::Invalid(format!("meta of {label}: {e}")))?;
                let meta = ObjectMeta::decode(&plain)
                    .map_err(|e| StoreError::Invalid(format!("meta of {label}: {e}")))?;
                (meta.shape, meta.mode)
            }
            None => (Shape::File, None),
        };
        Ok(TreeObject {
            manifest,
            label,
            cipher,
            shape,
            mode,
        })
    }

    /// Reads, checks and decrypts the object's chunks from the repository
    /// and passes the plaintext to `sink`; returns its length.
    fn feed(&self, job: &TreeJob<'_>, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let (m, label, reader) = (self.manifest, &self.label, job.reader);
        let mut total = 0u64;
        for ch in &m.chunks {
            let path = reader.chunk_path(&ch.id);
            let stored = reader
                .read_chunk(&ch.id, ch.len)
                .map_err(|e| damaged_tree(job.repo, &path, &format!("unreadable: {e}")))?;
            check_chunk_id(&ch.id, &stored)
                .map_err(|_| damaged_tree(job.repo, &path, &reader.bad_chunk(&ch.id)))?;
            let plain = self.cipher.open(&ch.id, &stored).map_err(|e| {
                StoreError::Invalid(format!("chunk {} of {label}: {e}", ch.id.short()))
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
    }
}
