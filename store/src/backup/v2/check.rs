//! `bbsync backups verify` on a format-2 repository: index files,
//! snapshots, the manifests they name (through the index), every pack's
//! presence and size, and with `read_data` every pack read once and every
//! entry re-hashed (on all cores). Problems are classified as in format 1
//! (docs/backup.md "Verify"), with the pack classes of docs/format.md §17.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Instant,
};

use bbsync_protocol::{ChunkId, ManifestId, chunk::check_chunk_id};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{
    format::{Index, IndexEntry, IndexFile, PackKind, read_sealed_pack, snapshot_path},
    repo::Repo2,
};
use crate::{
    StoreError,
    backup::{
        check::{
            ManifestCheck, RepoCheck, RepoProblem, check_manifests_with, decode_manifest_file,
            problem,
        },
        repo_io_err,
        repofile::{KeyFile, SnapObject},
    },
    error::Result,
    packs::PackId,
    progress::Progress,
};

impl Repo2 {
    /// Checks the whole repository (see the module docs).
    pub fn verify(&self, read_data: bool, progress: &dyn Progress) -> Result<RepoCheck> {
        self.verify_snapshots(None, read_data, progress)
    }

    /// Checks one snapshot (`Some(id)`, an exact id: the index, that
    /// snapshot, its manifests, chunks and the packs that hold them) or the
    /// whole repository (`None`: every pack, packs no index names, key
    /// files).
    pub fn verify_snapshots(
        &self,
        only: Option<&str>,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<RepoCheck> {
        let start = Instant::now();
        let b = self.backend();
        let loc = self.location();
        let mut r = RepoCheck {
            repo: loc.clone(),
            read_data,
            ..Default::default()
        };
        let mut problems: Vec<RepoProblem> = Vec::new();

        // 1. Index files, one by one (a damaged one is a problem, not an error).
        let mut ix = Index::default();
        for n in b
            .list("index")
            .map_err(repo_io_err(format!("listing {loc}/index")))?
        {
            let path = format!("index/{n}");
            match b.read(&path) {
                Ok(bytes) => match IndexFile::decode(&path, &bytes) {
                    Ok(f) => ix.add(&f),
                    Err(e) => problems.push(problem("bad-index", path, e)),
                },
                Err(e) => problems.push(problem("bad-index", path, format!("unreadable: {e}"))),
            }
        }

        // 2. Snapshots, and the manifests they name (each once).
        let mut wanted: BTreeMap<ManifestId, (SnapObject, String)> = BTreeMap::new();
        let ids = match only {
            Some(id) => vec![id.to_string()],
            None => self.snapshot_ids()?,
        };
        for id in ids {
            r.snapshots += 1;
            match self.load_snapshot(&id) {
                Ok(s) => {
                    for o in s.objects {
                        wanted
                            .entry(o.manifest_id)
                            .or_insert_with(|| (o, id.clone()));
                    }
                }
                Err(StoreError::BadSnapshot { fault, message }) => {
                    let class = match fault {
                        crate::SnapshotFault::BadSignature => "bad-snapshot-signature",
                        crate::SnapshotFault::ChecksumMismatch => "snapshot-checksum",
                    };
                    problems.push(problem(class, snapshot_path(&id), message));
                }
                Err(StoreError::Repo(msg)) => {
                    problems.push(problem("bad-snapshot", snapshot_path(&id), msg));
                }
                Err(e) => return Err(e),
            }
        }
        r.manifests = wanted.len() as u64;
        let objects: Vec<&SnapObject> = wanted.values().map(|(o, _)| o).collect();
        let checked: Vec<ManifestCheck> = check_manifests_with(&objects, |mid| {
            let Some((file, at)) = ix.manifest(mid) else {
                return Err((
                    "missing-manifest",
                    "in no index file (an index file is missing or damaged)".into(),
                ));
            };
            let path = PackKind::Manifests.path(&at.pack);
            let bytes = b
                .read_range(&path, u64::from(at.offset), u64::from(at.len))
                .map_err(|e| ("missing-manifest", format!("{path}: unreadable: {e}")))?;
            if Sha256::digest(&bytes).as_slice() != file {
                return Err((
                    "corrupt-manifest",
                    format!("{path}: its file does not hash to its name"),
                ));
            }
            decode_manifest_file(&bytes)
        });
        // chunk -> (length, who references it)
        let mut refs: HashMap<ChunkId, (u32, String)> = HashMap::new();
        for ((mid, (_, snap)), c) in wanted.iter().zip(checked) {
            match c {
                Ok(c) => {
                    let label = format!("{}:{}", c.manifest.kind, c.manifest.name);
                    for ch in &c.manifest.chunks {
                        refs.entry(ch.id)
                            .or_insert_with(|| (ch.len, format!("{label} in snapshot {snap}")));
                    }
                }
                Err((class, detail)) => {
                    let path = ix.manifest(mid).map_or_else(
                        || format!("manifest {}", mid.to_hex()),
                        |(_, at)| PackKind::Manifests.path(&at.pack),
                    );
                    problems.push(problem(
                        class,
                        path,
                        format!("manifest {}: {detail} (snapshot {snap})", mid.short()),
                    ));
                }
            }
        }

        // 3. Chunks: indexed, at the length the manifest says.
        r.chunks = refs.len() as u64;
        let mut referenced_packs: HashMap<PackId, String> = HashMap::new();
        for (id, (len, label)) in &refs {
            match ix.chunks.get(id) {
                None => problems.push(problem(
                    "missing-chunk",
                    format!("chunk {}", id.to_hex()),
                    format!("in no index file, referenced by {label}"),
                )),
                Some(at) if at.len != *len => problems.push(problem(
                    "bad-index",
                    PackKind::Data.path(&at.pack),
                    format!(
                        "the index says chunk {} has {} bytes, the manifest {len} ({label})",
                        id.short(),
                        at.len
                    ),
                )),
                Some(at) => {
                    referenced_packs
                        .entry(at.pack)
                        .or_insert_with(|| label.clone());
                }
            }
        }

        // 4. Packs: present, of the indexed length.
        let mut entries: HashMap<PackId, Vec<IndexEntry>> = HashMap::new();
        for (id, at) in &ix.chunks {
            entries.entry(at.pack).or_default().push(IndexEntry {
                id: id.0,
                offset: at.offset,
                len: at.len,
            });
        }
        for (file, at) in &ix.files {
            entries.entry(at.pack).or_default().push(IndexEntry {
                id: *file,
                offset: at.offset,
                len: at.len,
            });
        }
        let mut to_read: Vec<(PackId, PackKind, u64)> = Vec::new();
        let mut packs: Vec<(&PackId, &(PackKind, u64))> = ix.packs.iter().collect();
        packs.sort_by_key(|(p, _)| **p);
        // One snapshot: only the packs its chunks and manifests are in.
        let mut needed: std::collections::HashSet<PackId> =
            referenced_packs.keys().copied().collect();
        for mid in wanted.keys() {
            if let Some((_, at)) = ix.manifest(mid) {
                needed.insert(at.pack);
            }
        }
        for (pack, (kind, len)) in packs {
            if only.is_some() && !needed.contains(pack) {
                continue;
            }
            let path = kind.path(pack);
            let used = referenced_packs
                .get(pack)
                .map(|l| format!(", holds chunks of {l}"))
                .unwrap_or_default();
            match b
                .size(&path)
                .map_err(repo_io_err(format!("reading {loc}/{path}")))?
            {
                None => problems.push(problem("missing-pack", path, format!("missing{used}"))),
                Some(s) if s < *len => problems.push(problem(
                    "truncated-pack",
                    path,
                    format!("has {s} bytes, the index says {len}{used}"),
                )),
                Some(s) if s > *len => problems.push(problem(
                    "wrong-size-pack",
                    path,
                    format!("has {s} bytes, the index says {len}{used}"),
                )),
                Some(_) => to_read.push((*pack, *kind, *len)),
            }
        }

        // 5. With read_data: each pack read once, its trailer checked, each
        // indexed entry re-hashed.
        if read_data {
            progress.start(
                "verify",
                to_read.len() as u64,
                to_read.iter().map(|t| t.2).sum(),
            );
            let found = Mutex::new(Vec::new());
            let bytes_read: u64 = to_read
                .par_iter()
                .map(|(pack, kind, len)| {
                    let path = kind.path(pack);
                    let mut out = Vec::new();
                    match b.read(&path) {
                        Err(e) => out.push(problem(
                            "bad-pack",
                            path.clone(),
                            format!("unreadable: {e}"),
                        )),
                        Ok(bytes) => {
                            if let Err(e) = read_sealed_pack(*kind, pack, &bytes) {
                                out.push(problem("bad-pack", path.clone(), e));
                            }
                            for e in entries.get(pack).map(Vec::as_slice).unwrap_or_default() {
                                let data = bytes
                                    .get(e.offset as usize..e.end() as usize)
                                    .unwrap_or_default();
                                let ok = match kind {
                                    PackKind::Data => check_chunk_id(&ChunkId(e.id), data).is_ok(),
                                    PackKind::Manifests => Sha256::digest(data).as_slice() == e.id,
                                };
                                if !ok {
                                    let what = match kind {
                                        PackKind::Data => "corrupt-chunk",
                                        PackKind::Manifests => "corrupt-manifest",
                                    };
                                    out.push(problem(
                                        what,
                                        path.clone(),
                                        format!(
                                            "entry {} at offset {} does not hash to its id",
                                            hex::encode(&e.id[..8]),
                                            e.offset
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    if !out.is_empty() {
                        found
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .extend(out);
                    }
                    progress.advance(1, *len);
                    *len
                })
                .sum();
            progress.finish();
            r.bytes_read = bytes_read;
            problems.extend(
                found
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }

        // 6. Packs no index file names (an interrupted backup; prune
        // removes them), and key files.
        if only.is_some() {
            r.finish(problems, start);
            return Ok(r);
        }
        for kind in [PackKind::Data, PackKind::Manifests] {
            let top = match kind {
                PackKind::Data => "data",
                PackKind::Manifests => "manifests",
            };
            for d in b
                .list(top)
                .map_err(repo_io_err(format!("listing {loc}/{top}")))?
            {
                let dir = format!("{top}/{d}");
                for name in b
                    .list(&dir)
                    .map_err(repo_io_err(format!("listing {loc}/{dir}")))?
                {
                    let known = PackId::from_file_name(&name)
                        .is_some_and(|p| ix.packs.get(&p).is_some_and(|(k, _)| *k == kind));
                    if !known {
                        problems.push(problem(
                            "unindexed-pack",
                            format!("{dir}/{name}"),
                            "named by no index file (left by an interrupted backup; `bbsync backups prune` removes it)".into(),
                        ));
                    }
                }
            }
        }
        for name in b
            .list("keys")
            .map_err(repo_io_err(format!("listing {loc}/keys")))?
        {
            let path = format!("keys/{name}");
            let ok = b
                .read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<KeyFile>(&bytes).ok())
                .is_some_and(|k| name.starts_with(&format!("{}-", k.instance)));
            if !ok {
                problems.push(problem(
                    "bad-key-file",
                    path,
                    "not a valid identity escrow".into(),
                ));
            }
        }
        r.finish(problems, start);
        Ok(r)
    }
}
