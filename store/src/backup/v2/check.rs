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
        check::{ManifestCheck, RepoCheck, RepoProblem, check_manifests_with, problem},
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
        // The whole repository with its data: every pack the index names is
        // read while the snapshots and manifests are checked (both use every
        // core; the manifests' serial parts no longer leave one idle). What
        // a read found is reported in steps 4 and 5, as if read there.
        let prefetch = read_data && only.is_none();
        let mut all_packs: Vec<(PackId, PackKind, u64)> =
            ix.packs.iter().map(|(p, (k, l))| (*p, *k, *l)).collect();
        all_packs.sort_by_key(|t| t.0);
        if prefetch {
            progress.start(
                "verify",
                all_packs.len() as u64,
                all_packs.iter().map(|t| t.2).sum(),
            );
        }
        let (prefetched, checked) = rayon::join(
            || -> HashMap<PackId, PackRead> {
                if !prefetch {
                    return HashMap::new();
                }
                all_packs
                    .par_iter()
                    .map(|(pack, kind, len)| {
                        let got = read_pack(b, pack, *kind, &entries);
                        progress.advance(1, *len);
                        (*pack, got)
                    })
                    .collect()
            },
            || -> Result<Steps23> {
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
                let checked: Vec<ManifestCheck> = check_manifests_with(&objects, |mids| {
                    crate::backup::reader::read_manifest_files(b, &ix, mids)
                });
                // chunk -> (length, who references it)
                let mut refs: HashMap<ChunkId, (u32, String)> = HashMap::new();
                for ((mid, (_, snap)), c) in wanted.iter().zip(checked) {
                    match c {
                        Ok(c) => {
                            let label = format!("{}:{}", c.manifest.kind, c.manifest.name);
                            for ch in &c.manifest.chunks {
                                refs.entry(ch.id).or_insert_with(|| {
                                    (ch.len, format!("{label} in snapshot {snap}"))
                                });
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
                Ok(Steps23 {
                    wanted,
                    referenced_packs,
                })
            },
        );
        let Steps23 {
            wanted,
            referenced_packs,
        } = checked?;
        let mut read_problems: Vec<RepoProblem> = Vec::new();
        let mut prefetched = prefetched;

        // 4. Packs: present, of the indexed length.
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
            // Its size: from the read already made, else asked.
            let size = match prefetched.get(pack) {
                Some(PackRead::Missing(_)) => None,
                Some(PackRead::Read { size, .. }) => Some(*size),
                Some(PackRead::Unreadable(_)) | None => b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?,
            };
            match size {
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
                Some(_) => match prefetched.remove(pack) {
                    Some(PackRead::Read { problems: p, .. }) => {
                        r.bytes_read += len;
                        read_problems.extend(p);
                    }
                    Some(PackRead::Unreadable(e)) => {
                        r.bytes_read += len;
                        read_problems.push(problem("bad-pack", path, format!("unreadable: {e}")));
                    }
                    Some(PackRead::Missing(_)) | None => to_read.push((*pack, *kind, *len)),
                },
            }
        }

        // 5. With read_data: each pack read once, its trailer checked, each
        // indexed entry re-hashed (the whole repository's were read above).
        if read_data {
            if !prefetch {
                progress.start(
                    "verify",
                    to_read.len() as u64,
                    to_read.iter().map(|t| t.2).sum(),
                );
            }
            let found = Mutex::new(Vec::new());
            let bytes_read: u64 = to_read
                .par_iter()
                .map(|(pack, kind, len)| {
                    let out = match read_pack(b, pack, *kind, &entries) {
                        PackRead::Read { problems, .. } => problems,
                        PackRead::Missing(e) | PackRead::Unreadable(e) => vec![problem(
                            "bad-pack",
                            kind.path(pack),
                            format!("unreadable: {e}"),
                        )],
                    };
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
            r.bytes_read += bytes_read;
            problems.extend(read_problems);
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

/// What reading one pack found (`backups verify --read-data`).
enum PackRead {
    /// Not there (the read's error).
    Missing(String),
    /// Read whole: its size, and what is wrong inside (trailer, entries).
    Read {
        size: u64,
        problems: Vec<RepoProblem>,
    },
    /// The read failed otherwise.
    Unreadable(String),
}

/// Reads one pack whole, checks its trailer and re-hashes every entry the
/// index puts in it.
fn read_pack(
    b: &dyn crate::backup::backend::Backend,
    pack: &PackId,
    kind: PackKind,
    entries: &HashMap<PackId, Vec<IndexEntry>>,
) -> PackRead {
    // One buffer per thread, reused from pack to pack.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|bytes| {
        let path = kind.path(pack);
        match b.read_into(&path, bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return PackRead::Missing(e.to_string());
            }
            Err(e) => return PackRead::Unreadable(e.to_string()),
        }
        let bytes: &[u8] = bytes;
        let mut out = Vec::new();
        if let Err(e) = read_sealed_pack(kind, pack, bytes) {
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
        PackRead::Read {
            size: bytes.len() as u64,
            problems: out,
        }
    })
}

/// What steps 2 and 3 of a verify hand on.
struct Steps23 {
    wanted: BTreeMap<ManifestId, (SnapObject, String)>,
    referenced_packs: HashMap<PackId, String>,
}
