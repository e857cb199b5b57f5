//! An opened format-2 repository: its config, its snapshots and its merged
//! index, read through a [`Backend`].

use std::sync::Arc;

use bbsync_protocol::{ChunkId, ManifestId, Snapshot, Unverified, chunk::check_chunk_id};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::format::{
    CONFIG_FORMAT, ConfigFile, Index, IndexFile, IndexPack, PackKind, SEQ_CLAIMS, key_name,
    read_sealed_pack, seq_claim_name, seq_claim_path, snapshot_path,
};
use super::ixcache::IndexView;
use crate::{
    backup::{
        Backend, SnapshotFile, now_ms, repo_io_err, repofile::ManifestFile, rfc3339, snapshot_seq,
        view_of,
    },
    error::{Result, StoreError},
    packs::{PACK_TARGET, PackId},
};

/// How often [`Repo2::claim_seq`] draws before it gives up.
const SEQ_CLAIM_TRIES: u32 = 64;

/// A snapshot sequence number one backup holds alone (`seqs/<seq>`) until
/// its snapshot, which carries the number in its id, is written.
#[derive(Debug)]
#[must_use = "release the claim once the snapshot is written"]
pub struct SeqClaim {
    /// The sequence number.
    pub seq: u64,
    path: String,
}

impl SeqClaim {
    /// Removes the claim: the snapshot is written and holds the sequence
    /// now. A failure is logged, not returned (the backup is done; the
    /// claim only keeps its sequence from being drawn, which the snapshot
    /// does as well, and the next prune removes it).
    pub fn release(self, repo: &Repo2) {
        if let Err(e) = repo.backend.remove(&self.path) {
            tracing::warn!(path = %self.path, error = %e, repo = %repo.location(), "could not remove a sequence claim");
        }
    }
}

/// A format-2 repository.
#[derive(Clone)]
pub struct Repo2 {
    backend: Arc<dyn Backend>,
    /// Its `config`.
    pub config: ConfigFile,
}

impl std::fmt::Debug for Repo2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo2")
            .field("location", &self.backend.location())
            .finish()
    }
}

impl Repo2 {
    /// The storage.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The storage, shared (for a lock's refresh thread).
    pub(crate) fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// A handle on a repository whose `config` is not written yet (a
    /// migration, which locks before it switches the repository over).
    pub(crate) fn from_parts(backend: Arc<dyn Backend>, config: ConfigFile) -> Repo2 {
        Repo2 { backend, config }
    }

    /// Opens a repository: `config` must be there and of format 2.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repo2> {
        let loc = backend.location();
        let bytes = match backend.read("config") {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Repo(format!(
                    "{loc} is not a bbsync backup repository of format 2 (no config)"
                )));
            }
            Err(e) => return Err(repo_io_err(format!("reading {loc}/config"))(e)),
        };
        let config = ConfigFile::decode(&loc, &bytes).map_err(StoreError::Repo)?;
        Ok(Repo2 { backend, config })
    }

    /// Creates a repository where nothing is yet (no `config`, no
    /// `repo.json`): writes `config`, durably.
    pub fn create(backend: Arc<dyn Backend>) -> Result<Repo2> {
        let loc = backend.location();
        for name in ["config", "repo.json"] {
            if backend
                .size(name)
                .map_err(repo_io_err(format!("reading {loc}/{name}")))?
                .is_some()
            {
                return Err(StoreError::Repo(format!(
                    "{loc} already holds a backup repository ({name}); nothing was created"
                )));
            }
        }
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let config = ConfigFile {
            format: CONFIG_FORMAT,
            repo_id: hex::encode(id),
            created: rfc3339(now_ms()),
            pack_target: PACK_TARGET,
        };
        crate::failpoint::hit("backup.repo_config")
            .and_then(|()| backend.write("config", &config.encode()))
            .map_err(repo_io_err(format!("writing {loc}/config")))?;
        Ok(Repo2 { backend, config })
    }

    /// Snapshot ids, oldest first (sequence, then name).
    pub fn snapshot_ids(&self) -> Result<Vec<String>> {
        let mut ids = self.backend.list("snapshots").map_err(repo_io_err(format!(
            "listing {}/snapshots",
            self.location()
        )))?;
        ids.sort_by(|a, b| (snapshot_seq(a), a).cmp(&(snapshot_seq(b), b)));
        Ok(ids)
    }

    /// The lowest sequence number no file of the repository uses: one
    /// more than the highest of any snapshot, sequence claim, key file (of
    /// any instance) and index file of `ix` (docs/format.md §17.5). A
    /// backup that crashed before its snapshot leaves its claim, maybe its
    /// key file and index files: their sequence is never drawn again, so
    /// an escrow is never replaced and two index files of different
    /// backups never tie on `seq`.
    pub fn next_seq(&self, ix: &dyn IndexView) -> Result<u64> {
        let loc = self.location();
        let list = |dir: &str| {
            self.backend
                .list(dir)
                .map_err(repo_io_err(format!("listing {loc}/{dir}")))
        };
        let top = self
            .snapshot_ids()?
            .iter()
            .map(|i| snapshot_seq(i))
            .chain(list(SEQ_CLAIMS)?.iter().filter_map(|n| seq_claim_name(n)))
            .chain(
                list("keys")?
                    .iter()
                    .filter_map(|n| key_name(n).map(|k| k.1)),
            )
            .chain([ix.top_seq()])
            .max()
            .unwrap_or(0);
        Ok(top.saturating_add(1))
    }

    /// Whether `seqs/` holds a claim other than `seq`'s (a backup running
    /// beside this one, or one that did not finish).
    pub fn other_claims(&self, seq: u64) -> Result<bool> {
        let loc = self.location();
        Ok(self
            .backend
            .list(SEQ_CLAIMS)
            .map_err(repo_io_err(format!("listing {loc}/{SEQ_CLAIMS}")))?
            .iter()
            .filter_map(|n| seq_claim_name(n))
            .any(|s| s != seq))
    }

    /// Draws the next snapshot sequence number and claims it for this
    /// backup alone: `seqs/<seq>` created with [`Backend::write_new`] (a
    /// `link(2)` on a local directory, `If-None-Match: *` on S3; no
    /// rename). Backups hold shared locks, so two can draw at once: the
    /// one whose create fails draws again. The claim holds a random nonce
    /// that is read back (where a server lacks conditional creates, the
    /// later of two writes wins and the other draws again), and a snapshot
    /// of that sequence written meanwhile (by a backup that claimed it,
    /// finished and released its claim between this one's listing and its
    /// create) makes it draw again too. Release the claim with
    /// [`SeqClaim::release`] once the snapshot is written; a backup that
    /// fails or crashes leaves it, and prune removes it.
    pub fn claim_seq(&self, ix: &dyn IndexView) -> Result<SeqClaim> {
        let loc = self.location();
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let body = format!(
            "{{\"nonce\":\"{}\",\"created_ms\":{}}}\n",
            hex::encode(nonce),
            now_ms()
        )
        .into_bytes();
        let mut seq = self.next_seq(ix)?;
        for _ in 0..SEQ_CLAIM_TRIES {
            let path = seq_claim_path(seq);
            let created = self
                .backend
                .write_new(&path, &body)
                .map_err(repo_io_err(format!("writing {loc}/{path}")))?;
            let won = created
                && self
                    .backend
                    .read(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                    == body;
            if won {
                if !self.snapshot_ids()?.iter().any(|i| snapshot_seq(i) == seq) {
                    return Ok(SeqClaim { seq, path });
                }
                self.backend
                    .remove(&path)
                    .map_err(repo_io_err(format!("removing {loc}/{path}")))?;
            }
            seq = self.next_seq(ix)?.max(seq.saturating_add(1));
        }
        Err(StoreError::Repo(format!(
            "could not claim a snapshot sequence number in {loc} after {SEQ_CLAIM_TRIES} tries (as many backups at once?); nothing was written"
        )))
    }

    /// Reads a snapshot: decodes, verifies the host's signature, checks
    /// the id against the name.
    pub fn load_snapshot(&self, id: &str) -> Result<SnapshotFile> {
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
        let un = Unverified::<Snapshot>::decode(&bytes).map_err(|e| {
            StoreError::Repo(format!(
                "snapshot {id}: {path} is not a valid snapshot file ({e})"
            ))
        })?;
        let signed = un.verify(|_| true).map_err(|e| match e.kind() {
            bbsync_protocol::ErrorKind::BadSignature => StoreError::BadSnapshot {
                fault: crate::SnapshotFault::BadSignature,
                message: format!(
                    "snapshot {id}: bad signature: {path} was changed after its host signed it"
                ),
            },
            _ => StoreError::Repo(format!(
                "snapshot {id}: {path} is not a valid snapshot file ({e})"
            )),
        })?;
        let s = view_of(signed)?;
        if s.id != id {
            return Err(StoreError::Repo(format!(
                "snapshot {id}: {path} says it is snapshot {}",
                s.id
            )));
        }
        Ok(s)
    }

    /// Reads every index file (in parallel) and merges them. A damaged
    /// one is an error naming it.
    pub fn load_index(&self) -> Result<Index> {
        self.load_index_files(&self.index_names()?)
    }

    /// The names of the index files.
    pub fn index_names(&self) -> Result<Vec<String>> {
        let loc = self.location();
        self.backend
            .list("index")
            .map_err(repo_io_err(format!("listing {loc}/index")))
    }

    /// The index files `names` (in `index/`), read, checked and merged.
    pub fn load_index_files(&self, names: &[String]) -> Result<Index> {
        let loc = self.location();
        let files: Vec<IndexFile> = names
            .par_iter()
            .map(|n| -> Result<IndexFile> {
                let path = format!("index/{n}");
                let bytes = self
                    .backend
                    .read(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                IndexFile::decode(&path, &bytes).map_err(|e| {
                    StoreError::Repo(format!("backup repository {loc} is damaged: {e}"))
                })
            })
            .collect::<Result<_>>()?;
        let mut ix = Index::default();
        ix.reserve_for(&files);
        for f in &files {
            ix.add(f);
        }
        Ok(ix)
    }

    /// Packs an interrupted backup or migration left: written whole under
    /// their final name, named by no index file of `ix`. Each is read,
    /// its trailer checked (`read_sealed_pack`) and every entry hashed
    /// against its id; those that check out are returned for the caller to
    /// index (after its sync), so that a rerun does not write them again.
    /// One that does not check out is left for `backups verify` and prune.
    pub(crate) fn leftover_packs(&self, ix: &dyn IndexView) -> Result<Vec<IndexPack>> {
        let b = &*self.backend;
        let loc = self.location();
        let mut out = Vec::new();
        for kind in [PackKind::Data, PackKind::Manifests] {
            // (A format-1 repository being migrated has manifest files,
            // not directories, in manifests/.)
            let two_hex = |d: &str| d.len() == 2 && d.bytes().all(|c| c.is_ascii_hexdigit());
            for (_, name) in self.pack_dir_files(kind, two_hex)? {
                let Some(pack) = PackId::from_file_name(&name) else {
                    continue;
                };
                if ix.has_pack(&pack) {
                    continue;
                }
                let path = kind.path(&pack);
                let bytes = match b.read(&path) {
                    Ok(v) => v,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(repo_io_err(format!("reading {loc}/{path}"))(e)),
                };
                let entries = match read_sealed_pack(kind, &pack, &bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(
                            "{loc}/{path}: left by an interrupted write, not reused: {e}"
                        );
                        continue;
                    }
                };
                let whole = entries.par_iter().all(|e| {
                    let data = bytes
                        .get(e.offset as usize..e.end() as usize)
                        .unwrap_or_default();
                    match kind {
                        PackKind::Data => check_chunk_id(&ChunkId(e.id), data).is_ok(),
                        PackKind::Manifests => Sha256::digest(data).as_slice() == e.id,
                    }
                });
                if !whole {
                    tracing::warn!(
                        "{loc}/{path}: left by an interrupted write, not reused: an entry does not hash to its id"
                    );
                    continue;
                }
                out.push(IndexPack {
                    kind,
                    pack: pack.0,
                    pack_len: bytes.len() as u64,
                    entries,
                });
            }
        }
        Ok(out)
    }

    /// The files in the pack directories of `kind` (`data/ab/`,
    /// `manifests/ab/`) whose directory name `keep_dir` takes: each as
    /// (directory path, file name). Used by the leftover scan of a backup,
    /// prune's pack census and verify's unindexed-pack check.
    pub(crate) fn pack_dir_files(
        &self,
        kind: PackKind,
        keep_dir: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>> {
        let b = &*self.backend;
        let loc = self.location();
        let top = kind.dir();
        let mut out = Vec::new();
        for d in b
            .list(top)
            .map_err(repo_io_err(format!("listing {loc}/{top}")))?
        {
            if !keep_dir(&d) {
                continue;
            }
            let dir = format!("{top}/{d}");
            for name in b
                .list(&dir)
                .map_err(repo_io_err(format!("listing {loc}/{dir}")))?
            {
                out.push((dir.clone(), name));
            }
        }
        Ok(out)
    }

    /// Reads a manifest's current file through the index, checked against
    /// its hash, and decodes it (the manifest is not yet verified).
    pub fn read_manifest(&self, ix: &Index, id: &ManifestId) -> Result<ManifestFile> {
        let (file, at) = ix.manifest(id).ok_or_else(|| {
            StoreError::Repo(format!("manifest {} is not in the index", id.short()))
        })?;
        let path = PackKind::Manifests.path(&at.pack);
        let bytes = self
            .backend
            .read_range(&path, u64::from(at.offset), u64::from(at.len))
            .map_err(repo_io_err(format!("reading {}/{path}", self.location())))?;
        if Sha256::digest(&bytes).as_slice() != file {
            return Err(StoreError::Repo(format!(
                "{path}: the file of manifest {} does not hash to its name",
                id.short()
            )));
        }
        ManifestFile::decode(&bytes)
            .map_err(|e| StoreError::Repo(format!("{path}: manifest {}: {e}", id.short())))
    }

    /// Reads a chunk through the index, checked against its id.
    pub fn read_chunk(&self, ix: &Index, id: &ChunkId) -> Result<Vec<u8>> {
        let at = ix
            .chunks
            .get(id)
            .ok_or_else(|| StoreError::Repo(format!("chunk {} is not in the index", id.short())))?;
        let path = PackKind::Data.path(&at.pack);
        let bytes = self
            .backend
            .read_range(&path, u64::from(at.offset), u64::from(at.len))
            .map_err(repo_io_err(format!("reading {}/{path}", self.location())))?;
        check_chunk_id(id, &bytes)
            .map_err(|e| StoreError::Repo(format!("{path}: chunk {}: {e}", id.short())))?;
        Ok(bytes)
    }
}
