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

use bbsync_protocol::{ChunkId, ManifestId};
use rayon::prelude::*;

use super::{
    format::{Index, IndexEntry, IndexFile, PackKind, read_sealed_pack, snapshot_path},
    repo::Repo2,
};
use crate::{
    StoreError,
    backup::{
        check::{
            ManifestCheck, RepoCheck, RepoProblem, RepoProblemClass, add_chunk_refs,
            check_key_files, check_manifests_with, problem,
        },
        repo_io_err,
        repofile::SnapObject,
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
        let mut r = RepoCheck {
            repo: self.location(),
            read_data,
            ..Default::default()
        };
        let mut problems: Vec<RepoProblem> = Vec::new();

        // 1. Index files, one by one (a damaged one is a problem, not an error).
        let ix = self.read_index_files(&mut problems)?;
        let entries = pack_entries(&ix);
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
                read_packs_ahead(b, &all_packs, &entries, progress)
            },
            || -> Result<Steps23> {
                // 2. Snapshots, and the manifests they name (each once).
                let (wanted, refs) = self.check_snapshots(only, &ix, &mut r, &mut problems)?;
                // 3. Chunks: indexed, at the length the manifest says.
                r.chunks = refs.len() as u64;
                let referenced_packs = check_chunk_index(&ix, &refs, &mut problems);
                Ok(Steps23 {
                    wanted,
                    referenced_packs,
                })
            },
        );
        let steps = checked?;
        let mut prefetched = prefetched;

        // 4. Packs: present, of the indexed length.
        let (to_read, read_problems) =
            self.check_pack_sizes(only, &ix, &steps, &mut prefetched, &mut r, &mut problems)?;

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
            let (bytes_read, found) = read_packs(b, &to_read, &entries, progress);
            progress.finish();
            r.bytes_read += bytes_read;
            problems.extend(read_problems);
            problems.extend(found);
        }

        // 6. Packs no index file names (an interrupted backup; prune
        // removes them), and key files.
        if only.is_none() {
            self.find_unindexed_packs(&ix, &mut problems)?;
            // Every key file is an identity escrow of the instance its
            // name starts with.
            check_key_files(
                b,
                &self.location(),
                |name, k| name.starts_with(&format!("{}-", k.instance)),
                &mut problems,
            )?;
        }
        r.finish(problems, start);
        Ok(r)
    }

    /// Step 1: every index file, read into one index; a damaged one is a
    /// problem, not an error.
    fn read_index_files(&self, problems: &mut Vec<RepoProblem>) -> Result<Index> {
        let b = self.backend();
        let loc = self.location();
        let mut ix = Index::default();
        for n in b
            .list("index")
            .map_err(repo_io_err(format!("listing {loc}/index")))?
        {
            let path = format!("index/{n}");
            match b.read(&path) {
                Ok(bytes) => match IndexFile::decode(&path, &bytes) {
                    Ok(f) => ix.add(&f),
                    Err(e) => problems.push(problem(RepoProblemClass::BadIndex, path, e)),
                },
                Err(e) => problems.push(problem(
                    RepoProblemClass::BadIndex,
                    path,
                    format!("unreadable: {e}"),
                )),
            }
        }
        Ok(ix)
    }

    /// Step 2: the snapshots checked (one, or all), and the manifests they
    /// name, each once, checked through the index; returns the manifests
    /// wanted (with the first snapshot naming each) and every chunk they
    /// reference (with its length and who references it).
    #[allow(clippy::type_complexity)]
    fn check_snapshots(
        &self,
        only: Option<&str>,
        ix: &Index,
        r: &mut RepoCheck,
        problems: &mut Vec<RepoProblem>,
    ) -> Result<(
        BTreeMap<ManifestId, (SnapObject, String)>,
        HashMap<ChunkId, (u32, String)>,
    )> {
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
                    problems.push(problem(fault.into(), snapshot_path(&id), message));
                }
                Err(StoreError::Repo(msg)) => {
                    problems.push(problem(
                        RepoProblemClass::BadSnapshot,
                        snapshot_path(&id),
                        msg,
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        r.manifests = wanted.len() as u64;
        let b = self.backend();
        let objects: Vec<&SnapObject> = wanted.values().map(|(o, _)| o).collect();
        let checked: Vec<ManifestCheck> = check_manifests_with(&objects, |mids| {
            crate::backup::reader::read_manifest_files(b, ix, mids)
        });
        // chunk -> (length, who references it)
        let mut refs: HashMap<ChunkId, (u32, String)> = HashMap::new();
        for ((mid, (_, snap)), c) in wanted.iter().zip(checked) {
            match c {
                Ok(c) => add_chunk_refs(&mut refs, &c, snap),
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
        Ok((wanted, refs))
    }

    /// Step 4: every pack the check covers is present, of the indexed
    /// length; returns the packs still to read (step 5) and what the reads
    /// made ahead of time found.
    #[allow(clippy::type_complexity)]
    fn check_pack_sizes(
        &self,
        only: Option<&str>,
        ix: &Index,
        steps: &Steps23,
        prefetched: &mut HashMap<PackId, PackRead>,
        r: &mut RepoCheck,
        problems: &mut Vec<RepoProblem>,
    ) -> Result<(Vec<(PackId, PackKind, u64)>, Vec<RepoProblem>)> {
        let b = self.backend();
        let loc = self.location();
        let mut read_problems: Vec<RepoProblem> = Vec::new();
        let mut to_read: Vec<(PackId, PackKind, u64)> = Vec::new();
        let mut packs: Vec<(&PackId, &(PackKind, u64))> = ix.packs.iter().collect();
        packs.sort_by_key(|(p, _)| **p);
        // One snapshot: only the packs its chunks and manifests are in.
        let mut needed: std::collections::HashSet<PackId> =
            steps.referenced_packs.keys().copied().collect();
        for mid in steps.wanted.keys() {
            if let Some((_, at)) = ix.manifest(mid) {
                needed.insert(at.pack);
            }
        }
        for (pack, (kind, len)) in packs {
            if only.is_some() && !needed.contains(pack) {
                continue;
            }
            let path = kind.path(pack);
            let used = steps
                .referenced_packs
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
                None => problems.push(problem(
                    RepoProblemClass::MissingPack,
                    path,
                    format!("missing{used}"),
                )),
                Some(s) if s < *len => problems.push(problem(
                    RepoProblemClass::TruncatedPack,
                    path,
                    format!("has {s} bytes, the index says {len}{used}"),
                )),
                Some(s) if s > *len => problems.push(problem(
                    RepoProblemClass::WrongSizePack,
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
                        read_problems.push(problem(
                            RepoProblemClass::BadPack,
                            path,
                            format!("unreadable: {e}"),
                        ));
                    }
                    Some(PackRead::Missing(_)) | None => to_read.push((*pack, *kind, *len)),
                },
            }
        }
        Ok((to_read, read_problems))
    }

    /// Step 6: pack files no index names (left by an interrupted backup;
    /// prune removes them).
    fn find_unindexed_packs(&self, ix: &Index, problems: &mut Vec<RepoProblem>) -> Result<()> {
        for kind in [PackKind::Data, PackKind::Manifests] {
            for (dir, name) in self.pack_dir_files(kind, |_| true)? {
                let known = PackId::from_file_name(&name)
                    .is_some_and(|p| ix.packs.get(&p).is_some_and(|(k, _)| *k == kind));
                if !known {
                    problems.push(problem(
                            RepoProblemClass::UnindexedPack,
                            format!("{dir}/{name}"),
                            "named by no index file (left by an interrupted backup; `bbsync backups prune` removes it)".into(),
                        ));
                }
            }
        }
        Ok(())
    }
}

/// The entries the index puts in each pack (chunks and manifest files).
fn pack_entries(ix: &Index) -> HashMap<PackId, Vec<IndexEntry>> {
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
    entries
}

/// Step 3: every chunk referenced is indexed, at the length its manifest
/// says; returns the packs that hold them (with who references each).
fn check_chunk_index(
    ix: &Index,
    refs: &HashMap<ChunkId, (u32, String)>,
    problems: &mut Vec<RepoProblem>,
) -> HashMap<PackId, String> {
    let mut referenced_packs: HashMap<PackId, String> = HashMap::new();
    for (id, (len, label)) in refs {
        match ix.chunks.get(id) {
            None => problems.push(problem(
                RepoProblemClass::MissingChunk,
                format!("chunk {}", id.to_hex()),
                format!("in no index file, referenced by {label}"),
            )),
            Some(at) if at.len != *len => problems.push(problem(
                RepoProblemClass::BadIndex,
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
    referenced_packs
}

/// Every pack of the repository read (on all cores) while the snapshots
/// and manifests are checked: what each read found, by pack.
fn read_packs_ahead(
    b: &dyn crate::backup::backend::Backend,
    packs: &[(PackId, PackKind, u64)],
    entries: &HashMap<PackId, Vec<IndexEntry>>,
    progress: &dyn Progress,
) -> HashMap<PackId, PackRead> {
    packs
        .par_iter()
        .map(|(pack, kind, len)| {
            let got = read_pack(b, pack, *kind, entries);
            progress.advance(1, *len);
            (*pack, got)
        })
        .collect()
}

/// Step 5: the packs read on all cores; returns the bytes read and what
/// the reads found.
fn read_packs(
    b: &dyn crate::backup::backend::Backend,
    to_read: &[(PackId, PackKind, u64)],
    entries: &HashMap<PackId, Vec<IndexEntry>>,
    progress: &dyn Progress,
) -> (u64, Vec<RepoProblem>) {
    let found = Mutex::new(Vec::new());
    let bytes_read: u64 = to_read
        .par_iter()
        .map(|(pack, kind, len)| {
            let out = match read_pack(b, pack, *kind, entries) {
                PackRead::Read { problems, .. } => problems,
                PackRead::Missing(e) | PackRead::Unreadable(e) => vec![problem(
                    RepoProblemClass::BadPack,
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
    let found = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (bytes_read, found)
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
            out.push(problem(RepoProblemClass::BadPack, path.clone(), e));
        }
        for e in entries.get(pack).map(Vec::as_slice).unwrap_or_default() {
            let data = bytes
                .get(e.offset as usize..e.end() as usize)
                .unwrap_or_default();
            if !kind.entry_matches(&e.id, data) {
                let what = match kind {
                    PackKind::Data => RepoProblemClass::CorruptChunk,
                    PackKind::Manifests => RepoProblemClass::CorruptManifest,
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
