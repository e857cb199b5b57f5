//! `bbsync backups verify` on a format-2 repository: index files,
//! snapshots, the manifests they name (through the index), every pack's
//! presence and size, and with `read_data` every pack read once and every
//! entry re-hashed (on all cores). Problems are classified as in format 1
//! (docs/backup.md "Verify"), with the pack classes of docs/format.md §17.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use bbsync_protocol::{ChunkId, ManifestId};
use rayon::prelude::*;

use super::{
    format::{
        Index, IndexEntry, IndexFile, PackKind, entry_header_disagrees, header_agrees,
        read_sealed_pack, read_trailer, snapshot_path,
    },
    repo::Repo2,
};
use crate::{
    StoreError,
    backup::{
        check::{
            MANIFESTS_PER_GROUP, ManifestCheck, RepoCheck, RepoProblem, RepoProblemClass,
            add_chunk_refs, check_key_files, check_manifests_placed, problem,
        },
        repo_io_err,
        repofile::SnapObject,
    },
    error::Result,
    packs::{
        PackId,
        spans::{Span, read_spans},
    },
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
        let mut vouched: HashSet<ManifestId> = HashSet::new();
        let ids = match only {
            Some(id) => vec![id.to_string()],
            None => self.snapshot_ids()?,
        };
        for id in ids {
            r.snapshots += 1;
            match self.load_snapshot(&id) {
                Ok(s) => {
                    if vouches_for_its_files(&s, ix) {
                        vouched.extend(s.objects.iter().map(|o| o.manifest_id));
                    }
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
        r.manifests_vouched = wanted.keys().filter(|m| vouched.contains(m)).count() as u64;
        // chunk -> (length, who references it)
        let mut refs: HashMap<ChunkId, (u32, String)> = HashMap::new();
        // In groups, in the order of the manifest files in their packs (so
        // that each part of a pack is read once): what is held at once is
        // one group's decoded manifests, not every manifest of the
        // repository (over 150 MB at 200,000 objects).
        let at = |mid: &ManifestId| ix.manifest(mid).map(|(_, at)| (at.pack.0, at.offset));
        let mut order: Vec<(&ManifestId, &(SnapObject, String))> = wanted.iter().collect();
        order.sort_by_cached_key(|(mid, _)| at(mid));
        let mut bad: Vec<(&ManifestId, RepoProblem)> = Vec::new();
        for group in order.chunks(MANIFESTS_PER_GROUP) {
            let objects: Vec<&SnapObject> = group.iter().map(|(_, (o, _))| o).collect();
            let checked: Vec<ManifestCheck> = check_manifests_placed(
                &objects,
                |mid| vouched.contains(mid),
                |mids| crate::backup::reader::read_manifest_files(b, ix, mids),
            );
            for ((mid, (_, snap)), c) in group.iter().zip(checked) {
                match c {
                    Ok(c) => add_chunk_refs(&mut refs, &c, snap),
                    Err((class, detail)) => {
                        let path = ix.manifest(mid).map_or_else(
                            || format!("manifest {}", mid.to_hex()),
                            |(_, at)| PackKind::Manifests.path(&at.pack),
                        );
                        bad.push((
                            mid,
                            problem(
                                class,
                                path,
                                format!("manifest {}: {detail} (snapshot {snap})", mid.short()),
                            ),
                        ));
                    }
                }
            }
        }
        // Reported in the order of manifest ids, as one pass over them did.
        bad.sort_by_key(|(mid, _)| **mid);
        problems.extend(bad.into_iter().map(|(_, p)| p));
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

/// Whether a snapshot (its signature verified) signed for exactly the
/// manifest files the index names for its objects: format 3's digest of
/// its objects' manifest files ([`bbsync_protocol::manifest_files_digest`])
/// equals the one made from the index's current file of each. Then every
/// one of those files, read and checked against its hash, is a file its
/// host signed for, and a verify need not check the manifest signature
/// inside again. A digest that differs (a later backup wrote a new file
/// for a manifest after a rekey, an index file was replaced, a file is
/// missing) vouches for nothing: those manifests are verified as before.
fn vouches_for_its_files(s: &crate::backup::SnapshotFile, ix: &Index) -> bool {
    s.manifest_files.is_some_and(|signed| {
        let current = bbsync_protocol::manifest_files_digest(
            s.objects
                .iter()
                .map(|o| ix.manifest(&o.manifest_id).map(|(file, _)| file)),
        );
        current == signed
    })
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

/// Reads one pack, checks its trailer and re-hashes every entry the index
/// puts in it. A pack of a local directory is read back a window at a
/// time ([`read_local_pack`]); from object storage, with one request.
fn read_pack(
    b: &dyn crate::backup::backend::Backend,
    pack: &PackId,
    kind: PackKind,
    entries: &HashMap<PackId, Vec<IndexEntry>>,
) -> PackRead {
    let path = kind.path(pack);
    match b.local_file(&path) {
        Ok(Some(file)) => {
            let listed = entries.get(pack).map(Vec::as_slice).unwrap_or_default();
            return read_local_pack(&file, pack, kind, &path, listed);
        }
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return PackRead::Missing(e.to_string());
        }
        Err(e) => return PackRead::Unreadable(e.to_string()),
    }
    // One buffer per thread, reused from pack to pack.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|bytes| {
        match b.read_into(&path, bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return PackRead::Missing(e.to_string());
            }
            Err(e) => return PackRead::Unreadable(e.to_string()),
        }
        let listed = entries.get(pack).map(Vec::as_slice).unwrap_or_default();
        PackRead::Read {
            size: bytes.len() as u64,
            problems: check_whole_pack(bytes, pack, kind, &path, listed),
        }
    })
}

/// What is wrong in a pack read whole: its trailer, then each entry the
/// index puts in it that does not hash to its id.
fn check_whole_pack(
    bytes: &[u8],
    pack: &PackId,
    kind: PackKind,
    path: &str,
    listed: &[IndexEntry],
) -> Vec<RepoProblem> {
    let mut out = Vec::new();
    if let Err(e) = read_sealed_pack(kind, pack, bytes) {
        out.push(problem(RepoProblemClass::BadPack, path.to_string(), e));
    }
    for e in listed {
        let data = bytes
            .get(e.offset as usize..e.end() as usize)
            .unwrap_or_default();
        if !kind.entry_matches(&e.id, data) {
            out.push(entry_problem(kind, path, e));
        }
    }
    out
}

/// [`read_pack`] from a local file: the footer and trailer first
/// ([`read_trailer`]), then, in offset order and a window at a time
/// ([`read_spans`]), every trailer entry's header and every indexed entry,
/// each checked right after its read (while it is in the CPU's cache).
/// The same problems, in the same order, as from the whole pack.
fn read_local_pack(
    file: &std::fs::File,
    pack: &PackId,
    kind: PackKind,
    path: &str,
    listed: &[IndexEntry],
) -> PackRead {
    use std::os::unix::fs::FileExt as _;
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return PackRead::Unreadable(e.to_string()),
    };
    let read_at = |at: u64, n: u64| -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        file.read_exact_at(&mut v, at)?;
        Ok(v)
    };
    let head = match read_at(0, len.min(crate::packs::HEADER_LEN)) {
        Ok(h) => h,
        Err(e) => return PackRead::Unreadable(e.to_string()),
    };
    let mut io_error = None;
    let sealed = read_trailer(kind, pack, &head, len, &mut |at, n| {
        read_at(at, n).map_err(|e| {
            let text = e.to_string();
            io_error = Some(text.clone());
            text
        })
    });
    if let Some(e) = io_error {
        return PackRead::Unreadable(e);
    }
    let header_len = crate::packs::ENTRY_HEADER_LEN;
    let mut spans: Vec<(u64, u64, Span)> = Vec::new();
    if let Ok(trailer) = &sealed {
        for (i, e) in trailer.iter().enumerate() {
            let at = u64::from(e.offset) - header_len;
            spans.push((at, at + header_len, Span::Trailer(i)));
        }
    }
    let mut bad = vec![false; listed.len()];
    for (i, e) in listed.iter().enumerate() {
        if e.end() > len {
            bad[i] = !kind.entry_matches(&e.id, &[]);
        } else {
            spans.push((u64::from(e.offset), e.end(), Span::Entry(i)));
        }
    }
    let mut disagrees: Option<usize> = None;
    let read = |buf: &mut [u8], at: u64| std::os::unix::fs::FileExt::read_exact_at(file, buf, at);
    let read_all = read_spans(&mut spans, &read, &mut |what, bytes| match what {
        Span::Trailer(i) => {
            if let Ok(trailer) = &sealed
                && !header_agrees(&trailer[i], bytes)
            {
                disagrees = Some(disagrees.map_or(i, |d| d.min(i)));
            }
        }
        Span::Entry(i) => bad[i] = !kind.entry_matches(&listed[i].id, bytes),
    });
    if let Err(e) = read_all {
        return PackRead::Unreadable(e.to_string());
    }
    let mut out = Vec::new();
    let sealed = match (sealed, disagrees) {
        (Ok(trailer), Some(i)) => Err(entry_header_disagrees(&trailer[i])),
        (s, _) => s.map(|_| ()),
    };
    if let Err(e) = sealed {
        out.push(problem(RepoProblemClass::BadPack, path.to_string(), e));
    }
    for (e, _) in listed.iter().zip(&bad).filter(|(_, b)| **b) {
        out.push(entry_problem(kind, path, e));
    }
    PackRead::Read {
        size: len,
        problems: out,
    }
}

/// An entry that does not hash to its id.
fn entry_problem(kind: PackKind, path: &str, e: &IndexEntry) -> RepoProblem {
    let what = match kind {
        PackKind::Data => RepoProblemClass::CorruptChunk,
        PackKind::Manifests => RepoProblemClass::CorruptManifest,
    };
    problem(
        what,
        path.to_string(),
        format!(
            "entry {} at offset {} does not hash to its id",
            hex::encode(&e.id[..8]),
            e.offset
        ),
    )
}

/// What steps 2 and 3 of a verify hand on.
struct Steps23 {
    wanted: BTreeMap<ManifestId, (SnapObject, String)>,
    referenced_packs: HashMap<PackId, String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backup::v2::format::PackBuilder;

    /// A pack read back a window at a time finds what the whole pack
    /// shows, in the same order, for every kind of damage.
    #[test]
    fn a_local_pack_read_in_windows_finds_what_the_whole_pack_shows() {
        let mut b = PackBuilder::new(PackKind::Data);
        let id = b.id();
        for n in 0..40u8 {
            // Small entries and a few larger than a window.
            let len = if n % 13 == 0 {
                300_000
            } else {
                500 + usize::from(n) * 97
            };
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ n).collect();
            b.push(bbsync_protocol::ChunkId::of(&data).0, &data)
                .unwrap();
        }
        let (bytes, idx) = b.finish();
        let listed = idx.entries;
        let n = bytes.len();
        let entry_header = (listed[5].offset - 36) as usize;
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("intact", bytes.clone()),
            ("cut", bytes[..n - 1].to_vec()),
            ("cut short", bytes[..n / 2].to_vec()),
            ("trailer", flip(&bytes, n - 60)),
            ("entry header", flip(&bytes, entry_header)),
            ("entry bytes", flip(&bytes, listed[7].offset as usize + 3)),
            (
                "large entry",
                flip(&bytes, listed[13].offset as usize + 250_000),
            ),
            ("pack header", flip(&bytes, 3)),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (what, pack_bytes) in damaged {
            let file = dir.path().join(what);
            std::fs::write(&file, &pack_bytes).unwrap();
            let f = std::fs::File::open(&file).unwrap();
            let windows = match read_local_pack(&f, &id, PackKind::Data, "p", &listed) {
                PackRead::Read { size, problems } => {
                    assert_eq!(size, pack_bytes.len() as u64, "{what}");
                    problems
                }
                _ => panic!("{what}: not read"),
            };
            let whole = check_whole_pack(&pack_bytes, &id, PackKind::Data, "p", &listed);
            let text = |p: &[RepoProblem]| format!("{p:?}");
            assert_eq!(text(&windows), text(&whole), "{what}");
            assert_eq!(whole.is_empty(), what == "intact", "{what}: {whole:?}");
        }
    }

    fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at] ^= 1;
        b
    }
}
