//! Reading manifests and chunks out of a repository of either format:
//! format 1 reads one file per manifest and per chunk; format 2 reads
//! through the index loaded once ([`super::Repo::reader`]), with positioned
//! reads of packs (ranged requests on object storage). Nothing read is
//! trusted: a manifest file is checked against the hash the index names
//! (format 2) and then by its signature; a chunk against its id.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bbsync_protocol::{ChunkId, ManifestId};
use sha2::{Digest, Sha256};

use super::{
    Repo,
    backend::Backend,
    check::{ReadManifest, RepoProblemClass, decode_manifest_file},
    chunk_path, manifest_path, repo_io_err,
    v2::format::{Index, PackKind},
};
use crate::{error::Result, packs::PackId};

/// A reader of one repository (see the module docs).
pub struct RepoReader<'a> {
    pub(super) repo: &'a Repo,
    pub(super) index: Option<Index>,
    /// Format 2: each pack's size, looked up once.
    pub(super) pack_sizes: Mutex<HashMap<PackId, Option<u64>>>,
}

impl std::fmt::Debug for RepoReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoReader")
            .field("repo", &self.repo.location())
            .finish()
    }
}

impl RepoReader<'_> {
    /// The repository.
    pub fn repo(&self) -> &Repo {
        self.repo
    }

    /// The merged index (format 2).
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Where a manifest's file is, for messages: format 1 its file, format
    /// 2 the manifest pack that holds it (or `manifest <hex>` when no index
    /// file names it).
    pub fn manifest_path(&self, mid: &ManifestId) -> String {
        match &self.index {
            None => manifest_path(mid),
            Some(ix) => ix.manifest(mid).map_or_else(
                || format!("manifest {}", mid.to_hex()),
                |(_, at)| PackKind::Manifests.path(&at.pack),
            ),
        }
    }

    /// Where a chunk is, for messages: format 1 its file, format 2 the data
    /// pack that holds it (or `chunk <hex>` when no index file names it).
    pub fn chunk_path(&self, id: &ChunkId) -> String {
        match &self.index {
            None => chunk_path(id),
            Some(ix) => ix.chunks.get(id).map_or_else(
                || format!("chunk {}", id.to_hex()),
                |at| PackKind::Data.path(&at.pack),
            ),
        }
    }

    /// Reads and decodes one manifest file (its signature not yet
    /// checked); a failure is (problem class, detail) as `backups verify`
    /// names it.
    pub(crate) fn read_manifest_file(
        &self,
        mid: &ManifestId,
    ) -> std::result::Result<ReadManifest, (RepoProblemClass, String)> {
        let b = self.repo.backend();
        let Some(ix) = &self.index else {
            let path = manifest_path(mid);
            let bytes = match b.read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err((RepoProblemClass::MissingManifest, "missing".into()));
                }
                Err(e) => return Err((RepoProblemClass::BadManifest, format!("unreadable: {e}"))),
            };
            return decode_manifest_file(&bytes);
        };
        read_manifest_files(b, ix, std::slice::from_ref(mid))
            .pop()
            .unwrap_or_else(|| Err((RepoProblemClass::MissingManifest, "not read".into())))
    }

    /// Where a manifest's current file lies (format 2: its pack and
    /// offset; format 1: `None`), to read many in the order they lie.
    pub(crate) fn manifest_place(&self, mid: &ManifestId) -> Option<([u8; 16], u32)> {
        let (_, at) = self.index.as_ref()?.manifest(mid)?;
        Some((at.pack.0, at.offset))
    }

    /// [`Self::read_manifest_file`] for many manifests, in their order:
    /// format 2 reads the entries that are near each other in one pack
    /// with one ranged read (one request on object storage), several
    /// packs at once.
    pub(crate) fn read_manifest_files(
        &self,
        mids: &[ManifestId],
    ) -> Vec<std::result::Result<ReadManifest, (RepoProblemClass, String)>> {
        match &self.index {
            None => mids.iter().map(|m| self.read_manifest_file(m)).collect(),
            Some(ix) => read_manifest_files(self.repo.backend(), ix, mids),
        }
    }

    /// Whether a chunk of `len` bytes is in the repository (present, of
    /// its size; format 2: indexed at that length, its pack present and
    /// long enough). `Ok(Err(detail))` says what is wrong, naming `label`
    /// (who references it).
    pub fn check_chunk(
        &self,
        id: &ChunkId,
        len: u32,
        label: &str,
    ) -> Result<std::result::Result<(), String>> {
        let b = self.repo.backend();
        let loc = self.repo.location();
        let Some(ix) = &self.index else {
            let path = chunk_path(id);
            return Ok(
                match b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                {
                    Some(n) if n == u64::from(len) => Ok(()),
                    Some(n) => Err(format!("has {n} bytes, the manifest of {label} says {len}")),
                    None => Err(format!("missing, referenced by {label}")),
                },
            );
        };
        let Some(at) = ix.chunks.get(id) else {
            return Ok(Err(format!(
                "in no index file (an index file is missing or damaged), referenced by {label}"
            )));
        };
        if at.len != len {
            return Ok(Err(format!(
                "the index says chunk {} has {} bytes, the manifest of {label} says {len}",
                id.short(),
                at.len
            )));
        }
        let path = PackKind::Data.path(&at.pack);
        let cached = self
            .pack_sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&at.pack)
            .copied();
        let size = match cached {
            Some(s) => s,
            None => {
                let s = b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                self.pack_sizes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(at.pack, s);
                s
            }
        };
        let end = u64::from(at.offset) + u64::from(at.len);
        Ok(match size {
            None => Err(format!("missing, holds chunk {} of {label}", id.short())),
            Some(n) if n < end => Err(format!(
                "has {n} bytes, chunk {} of {label} ends at {end}",
                id.short()
            )),
            Some(_) => Ok(()),
        })
    }

    /// What a chunk that does not hash to its id is called in messages.
    pub fn bad_chunk(&self, id: &ChunkId) -> String {
        match &self.index {
            None => "content does not hash to its name".into(),
            Some(_) => format!("chunk {}: content does not hash to its id", id.short()),
        }
    }

    /// Orders chunks by where they are (format 2: pack, then offset), so
    /// that [`Self::read_chunks`] of consecutive ones reads runs of packs.
    pub fn sort_by_location(&self, ids: &mut [(ChunkId, u32)]) {
        if let Some(ix) = &self.index {
            ids.sort_by_cached_key(|(id, _)| ix.chunks.get(id).map(|at| (at.pack.0, at.offset)));
        }
    }

    /// Reads many chunks' stored bytes (not yet checked against their
    /// ids), in their order. Format 2 reads the chunks that are near each
    /// other in one pack with one ranged read (one request on object
    /// storage), several packs at once; format 1 reads each file, several
    /// at once.
    pub fn read_chunks(&self, ids: &[(ChunkId, u32)]) -> Vec<std::io::Result<Vec<u8>>> {
        let b = self.repo.backend();
        let Some(ix) = &self.index else {
            let got = Mutex::new(Vec::with_capacity(ids.len()));
            run_parallel(b.read_concurrency(), ids.len(), |i| {
                let r = b.read(&chunk_path(&ids[i].0));
                got.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((i, r));
            });
            let mut got = got
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            got.sort_by_key(|(i, _)| *i);
            return got.into_iter().map(|(_, r)| r).collect();
        };
        let mut wanted = Vec::with_capacity(ids.len());
        let mut out: Vec<Option<std::io::Result<Vec<u8>>>> = Vec::new();
        out.resize_with(ids.len(), || None);
        for (slot, (id, len)) in ids.iter().enumerate() {
            match ix.chunks.get(id) {
                Some(at) => wanted.push(Wanted {
                    slot,
                    pack: at.pack,
                    offset: u64::from(at.offset),
                    len: u64::from((*len).min(at.len)),
                }),
                None => {
                    out[slot] = Some(Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("chunk {} is in no index file", id.short()),
                    )));
                }
            }
        }
        for (slot, r) in read_spans(b, PackKind::Data, wanted) {
            out[slot] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(not_read())))
            .collect()
    }

    /// Reads a chunk's stored bytes (not yet checked against its id).
    pub fn read_chunk(&self, id: &ChunkId, len: u32) -> std::io::Result<Vec<u8>> {
        let b = self.repo.backend();
        match &self.index {
            None => b.read(&chunk_path(id)),
            Some(ix) => {
                let at = ix.chunks.get(id).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("chunk {} is in no index file", id.short()),
                    )
                })?;
                b.read_range(
                    &PackKind::Data.path(&at.pack),
                    u64::from(at.offset),
                    u64::from(len.min(at.len)),
                )
            }
        }
    }
}

/// Reads and checks manifest files of a format-2 repository through its
/// index (see [`RepoReader::read_manifest_files`]); each file is checked
/// against the hash the index names, then decoded (its signature not yet
/// checked).
pub(crate) fn read_manifest_files(
    b: &dyn Backend,
    ix: &Index,
    mids: &[ManifestId],
) -> Vec<std::result::Result<ReadManifest, (RepoProblemClass, String)>> {
    let mut out: Vec<Option<std::result::Result<ReadManifest, (RepoProblemClass, String)>>> =
        Vec::new();
    out.resize_with(mids.len(), || None);
    let mut wanted = Vec::with_capacity(mids.len());
    let mut files = Vec::with_capacity(mids.len());
    for (slot, mid) in mids.iter().enumerate() {
        match ix.manifest(mid) {
            Some((file, at)) => {
                files.push(file);
                wanted.push(Wanted {
                    slot,
                    pack: at.pack,
                    offset: u64::from(at.offset),
                    len: u64::from(at.len),
                });
            }
            None => {
                files.push([0; 32]);
                out[slot] = Some(Err((
                    RepoProblemClass::MissingManifest,
                    "in no index file (an index file is missing or damaged)".into(),
                )));
            }
        }
    }
    let paths: HashMap<usize, PackId> = wanted.iter().map(|w| (w.slot, w.pack)).collect();
    for (slot, r) in read_spans(b, PackKind::Manifests, wanted) {
        let path = PackKind::Manifests.path(&paths[&slot]);
        out[slot] = Some(match r {
            Err(e) => Err((
                RepoProblemClass::MissingManifest,
                format!("{path}: unreadable: {e}"),
            )),
            Ok(bytes) if Sha256::digest(&bytes).as_slice() != files[slot] => Err((
                RepoProblemClass::CorruptManifest,
                format!("{path}: its file does not hash to its name"),
            )),
            Ok(bytes) => decode_manifest_file(&bytes),
        });
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err((RepoProblemClass::MissingManifest, "not read".into()))))
        .collect()
}

/// An entry to read: where it is, and its place in the caller's order.
struct Wanted {
    slot: usize,
    pack: PackId,
    offset: u64,
    len: u64,
}

/// A gap between two wanted entries of one pack up to this is read along
/// (cheaper than a second request); a span stops growing at [`SPAN_MAX`].
const SPAN_GAP: u64 = 256 * 1024;
/// The most one ranged read asks for (several spans of one pack run at
/// once, so a large pack still uses every reader).
const SPAN_MAX: u64 = 4 * 1024 * 1024;

/// Reads the wanted entries of packs of one kind: sorted by pack and
/// offset, neighbours merged into spans, the spans read
/// `read_concurrency()` at a time, each cut back into its entries.
/// Returns (slot, bytes) for every wanted entry; a failed span fails each
/// of its entries with the same error.
fn read_spans(
    b: &dyn Backend,
    kind: PackKind,
    mut wanted: Vec<Wanted>,
) -> Vec<(usize, std::io::Result<Vec<u8>>)> {
    wanted.sort_by_key(|w| (w.pack.0, w.offset));
    // (pack, start, end, first..last index into `wanted`)
    let mut spans: Vec<(PackId, u64, u64, std::ops::Range<usize>)> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let end = w.offset.saturating_add(w.len);
        if let Some(last) = spans.last_mut()
            && last.0 == w.pack
            && w.offset >= last.1
            && w.offset <= last.2.saturating_add(SPAN_GAP)
            && end.max(last.2) - last.1 <= SPAN_MAX
        {
            last.2 = last.2.max(end);
            last.3.end = i + 1;
            continue;
        }
        spans.push((w.pack, w.offset, end, i..i + 1));
    }
    let results: Mutex<Vec<(usize, std::io::Result<Vec<u8>>)>> =
        Mutex::new(Vec::with_capacity(wanted.len()));
    run_parallel(b.read_concurrency(), spans.len(), |s| {
        let (pack, start, end, range) = &spans[s];
        let path = kind.path(pack);
        let mut got = Vec::with_capacity(range.len());
        match b.read_range(&path, *start, end - start) {
            Ok(bytes) => {
                for w in &wanted[range.clone()] {
                    let from = usize::try_from(w.offset - start).unwrap_or(usize::MAX);
                    let to = from.saturating_add(usize::try_from(w.len).unwrap_or(usize::MAX));
                    got.push((
                        w.slot,
                        bytes.get(from..to).map(<[u8]>::to_vec).ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("{path} is shorter than {} bytes", w.offset + w.len),
                            )
                        }),
                    ));
                }
            }
            Err(e) => {
                for w in &wanted[range.clone()] {
                    got.push((w.slot, Err(std::io::Error::new(e.kind(), e.to_string()))));
                }
            }
        }
        results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(got);
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f(0..n)` on up to `threads` scoped threads (no thread when one
/// will do), each taking the next index.
fn run_parallel(threads: usize, n: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        }
    };
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        work();
        return;
    }
    std::thread::scope(|sc| {
        for _ in 1..threads {
            sc.spawn(work);
        }
        work();
    });
}

fn not_read() -> std::io::Error {
    std::io::Error::other("not read")
}
