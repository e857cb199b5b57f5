//! Import of files, directories and whole BBS trees.
//!
//! Every source is processed on the rayon pool (both cores): its plaintext
//! is streamed through FastCDC, each chunk sealed and, unless a chunk file
//! with that id already exists, staged as a temp file. Nothing is visible
//! until every source is sealed: then all staged chunks are published
//! durably and the manifest changes are committed to the database (in
//! atomic batches of whole objects). A failure while reading or sealing,
//! which covers every kind of bad input, discards the staged files and
//! changes nothing; a crash during the final commit leaves each object
//! either fully old or fully new.
//!
//! Unchanged content is detected without writing anything: first by the
//! source's file metadata (size, times, inode), then by a keyed fingerprint
//! of the plaintext, and last by comparing chunk lists (sealing is
//! deterministic per object key).

use std::{
    collections::HashSet,
    io::Read,
    path::Path,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkCipher, ChunkRef, ContentKey, Manifest, ObjectId, ObjectMeta, Shape, Signed, WrapSession,
    chunk::{chunk_ranges, chunker},
    key_commitment,
    manifest::{MANIFEST_FORMAT, MAX_VERSION, next_version},
};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    Store,
    archive::{ArchiveReader, ExactFile, FileChanged, into_store_error},
    bbs::{self, BBS_KINDS, Source},
    db::{ObjectState, ObjectWrite},
    error::{Context, Result, StoreError},
    failpoint,
    packs::Staged,
    progress::Progress,
    spool::Spool,
    sqlite,
};

/// Which live objects an import tombstones (besides writing its sources).
#[derive(Clone, Copy)]
pub(crate) enum Gone<'a> {
    /// Those of these kinds that are not among the sources, except `keep`
    /// (a tree import: the tree is the whole truth for its kinds).
    Missing {
        /// The kinds.
        kinds: &'a [&'a str],
        /// (kind, name) never tombstoned.
        keep: &'a HashSet<(String, String)>,
    },
    /// Exactly these objects, unless among the sources (a watch batch:
    /// what was at the paths it names and is gone).
    These(&'a [ObjectId]),
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportStats {
    /// Objects created.
    pub new: u64,
    /// Objects that got a new version.
    pub changed: u64,
    /// Objects found unchanged.
    pub unchanged: u64,
    /// Objects tombstoned (gone from the tree).
    pub deleted: u64,
    /// Chunks written (appended to packs).
    pub chunks_written: u64,
    /// Chunks that already existed.
    pub chunks_reused: u64,
    /// Plaintext bytes of all sources (content of files).
    pub bytes_scanned: u64,
    /// Plaintext bytes actually read.
    pub bytes_read: u64,
    /// Bytes of new chunks.
    pub bytes_written: u64,
    /// Chunks dropped afterwards because no manifest needs them any more.
    pub chunks_collected: u64,
    /// Objects that changed in the tree but could not get a new version:
    /// they are at the highest version there is (`kind:name`, and who
    /// wrote that version). Everything else was imported.
    pub stuck: Vec<(String, String)>,
    /// Change-log number after the import.
    pub seq: u64,
    /// SQLite databases read through a snapshot (src/sqlite).
    pub databases: u64,
    /// Time their snapshots and integrity checks took (summed over threads).
    #[serde(serialize_with = "crate::serialize_secs")]
    pub snapshot_time: Duration,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// Keyed plaintext fingerprint: keyed BLAKE3 under a local-only key over a
/// domain string, the shape byte, the mode and the plaintext. Never leaves
/// this machine; only tells a re-import that content (and mode) is
/// unchanged. (v1, before modes were kept, had no mode: an object
/// fingerprinted then is read and compared once more.)
struct Fingerprinter(blake3::Hasher);

impl Fingerprinter {
    fn new(key: &[u8; 32], shape: u8, mode: u32) -> Self {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(b"bbsync/fingerprint/v2\0");
        h.update(&[shape]);
        h.update(&mode.to_be_bytes());
        Fingerprinter(h)
    }
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

enum Outcome {
    /// Nothing to write; maybe refresh local-only fields.
    Unchanged(ObjectId, Option<Box<ObjectState>>),
    /// Changed, but at [`MAX_VERSION`]: no next version (label, detail).
    Stuck(String, String),
    /// A new version.
    Write(Box<ObjectWrite>, Vec<Staged>, u64, u64, u64),
}

fn shape_byte(s: Shape) -> u8 {
    match s {
        Shape::File => 0,
        Shape::Dir => 1,
    }
}

/// Opens a source through its anchor: below the tree's directory
/// descriptor, never through a symlink, and only if it is still the file or
/// directory that the walk saw (`archive::Anchor`).
fn open_source(src: &Source) -> Result<Box<dyn Read + Send>> {
    open_source_version(src, crate::archive::VERSION)
}

/// Like [`open_source`], a directory as an archive of `version`.
fn open_source_version(src: &Source, version: u16) -> Result<Box<dyn Read + Send>> {
    match &src.walk {
        Some(w) => Ok(Box::new(ArchiveReader::with_version(
            src.anchor.open_dir()?,
            crate::archive::Walk {
                entries: w.entries.clone(),
                file_bytes: w.file_bytes,
                stat_digest: w.stat_digest,
                substitutes: w.substitutes.clone(),
            },
            version,
        ))),
        None => Ok(Box::new(ExactFile::new(
            src.anchor.open_file()?,
            &src.path(),
            src.len,
        ))),
    }
}

fn read_err(src: &Source, e: std::io::Error) -> StoreError {
    let e = match into_store_error(e) {
        Ok(carried) => return carried,
        Err(e) => e,
    };
    if FileChanged::is_in(&e) {
        StoreError::ChangedDuringImport(src.path())
    } else {
        StoreError::Unreadable {
            path: src.path(),
            reason: e.to_string(),
        }
    }
}

/// Checks a source before anything is read or written: kind, name and owner
/// rules, and for the BBS kinds that the object fits the tree layout (so
/// that `export-bbs` can always write it back).
fn check_source(src: &Source) -> Result<()> {
    use bbsync_protocol::manifest::{check_kind, check_name};
    check_kind(&src.kind)
        .and_then(|_| check_name("object name", &src.name))
        .and_then(|_| match &src.owner {
            Some(o) => check_name("object owner", o),
            None => Ok(()),
        })
        .ctx(|| format!("importing {}", src.path().display()))?;
    if BBS_KINDS.contains(&src.kind.as_str()) {
        let want = match src.kind.as_str() {
            "applet" | "applet-data" => Shape::Dir,
            _ => Shape::File,
        };
        if bbs::tree_path(&src.kind, &src.name).is_none() {
            return Err(StoreError::Invalid(format!(
                "{}:{} does not fit the BBS tree layout (see `bbsync import --help`)",
                src.kind, src.name
            )));
        }
        if src.shape != want {
            let what = if want == Shape::Dir {
                "a directory"
            } else {
                "a file"
            };
            return Err(StoreError::Invalid(format!(
                "a {} object must be {what}: {}",
                src.kind,
                src.path().display()
            )));
        }
    }
    Ok(())
}

/// Sources up to this size are read whole and chunked in memory.
const SMALL_SOURCE: u64 = 8 * 1024 * 1024;
/// Sources handed to the rayon pool at once (a round ends when its last
/// source is done; the list of sources shrinks between rounds).
const PAR_SOURCES: usize = 8192;

/// The 16-byte digest of `kind:name` an import keeps for each source.
fn name_digest(kind: &str, name: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(name.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn read_all(src: &Source) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(src.len as usize + 1);
    open_source(src)?
        .read_to_end(&mut buf)
        .map_err(|e| read_err(src, e))?;
    Ok(buf)
}

/// The fingerprint a version before modes were kept recorded for the
/// source's content as it is now (v1: no mode; a directory as an archive
/// without modes): equal to the recorded one, the content is unchanged.
fn legacy_fingerprint(
    src: &Source,
    fp_key: &[u8; 32],
    buffered: Option<&[u8]>,
) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new_keyed(fp_key);
    h.update(b"bbsync/fingerprint/v1\0");
    h.update(&[shape_byte(src.shape)]);
    match (&src.walk, buffered) {
        (None, Some(buf)) => {
            h.update(buf);
        }
        _ => {
            let mut r = open_source_version(src, crate::archive::VERSION_1)?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r.read(&mut buf).map_err(|e| read_err(src, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(*h.finalize().as_bytes())
}

fn fingerprint(src: &Source, fp_key: &[u8; 32]) -> Result<[u8; 32]> {
    let mut r = open_source(src)?;
    let mut fp = Fingerprinter::new(fp_key, shape_byte(src.shape), src.mode);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).map_err(|e| read_err(src, e))?;
        if n == 0 {
            break;
        }
        fp.update(&buf[..n]);
    }
    Ok(fp.finish())
}

/// Where an import collects what its sources produced (behind a mutex:
/// sources finish on every core).
/// What an import will write once every source is sealed.
struct Pending {
    /// Object records, new and changed versions and tombstones.
    writes: Spool<ObjectWrite>,
    /// States of unchanged objects to refresh (their file times).
    refresh: Spool<(ObjectId, ObjectState)>,
    /// Chunks staged in packs, to publish (or to discard on any failure).
    staged: Vec<Staged>,
}

/// Duplicate names in one import, and bad sources, refused before anything
/// is read; the names, as 16-byte digests (for the tombstones), not as
/// strings.
fn source_names(sources: &[Source]) -> Result<HashSet<[u8; 16]>> {
    let mut names: HashSet<[u8; 16]> = HashSet::with_capacity(sources.len());
    for src in sources {
        if !names.insert(name_digest(&src.kind, &src.name)) {
            return Err(StoreError::Invalid(format!(
                "two sources map to {}:{}",
                src.kind, src.name
            )));
        }
        check_source(src)?;
    }
    Ok(names)
}

struct Taken<'a> {
    stats: &'a mut ImportStats,
    writes: &'a mut Spool<ObjectWrite>,
    refresh: &'a mut Spool<(ObjectId, ObjectState)>,
    staged: &'a mut Vec<Staged>,
}

impl Taken<'_> {
    /// Counts and spools one source's outcome. The chunks a write staged
    /// are kept (to publish, or to discard on any failure) before anything
    /// else can fail.
    fn take(&mut self, r: Result<Outcome>) -> Result<()> {
        match r? {
            Outcome::Stuck(label, why) => {
                tracing::warn!("{label}: {why}");
                self.stats.stuck.push((label, why));
            }
            Outcome::Unchanged(id, st) => {
                self.stats.unchanged += 1;
                if let Some(st) = st {
                    self.refresh.push(*id.as_bytes(), &(id, *st))?;
                }
            }
            Outcome::Write(w, staged, written, reused, bytes) => {
                self.staged.extend(staged);
                let stats = &mut *self.stats;
                if w.previous.is_some() {
                    stats.changed += 1;
                } else {
                    stats.new += 1;
                }
                stats.chunks_written += written;
                stats.chunks_reused += reused;
                stats.bytes_written += bytes;
                stats.bytes_read += w.state.plaintext_len;
                self.writes.push(*w.object_id.as_bytes(), &w)?;
            }
        }
        Ok(())
    }
}

/// What sealing one source has produced so far.
struct Sealed {
    fp: Fingerprinter,
    refs: Vec<ChunkRef>,
    staged: Vec<Staged>,
    seen: HashSet<bbsync_protocol::ChunkId>,
    written: u64,
    reused: u64,
    bytes_written: u64,
    plain: u64,
    /// A new object (fresh key): none of its chunks can exist yet.
    fresh: bool,
}

impl Sealed {
    /// Adds a chunk's plaintext to the fingerprint (in source order).
    fn fingerprint(&mut self, chunk: &[u8]) {
        self.fp.update(chunk);
        self.plain += chunk.len() as u64;
    }

    /// Takes the next sealed chunk (in source order): referenced, and
    /// staged unless the store or this source has it already.
    fn take(&mut self, store: &Store, sealed: bbsync_protocol::SealedChunk) -> Result<()> {
        self.refs.push(ChunkRef {
            id: sealed.id,
            len: sealed.bytes.len() as u32,
        });
        if self.seen.insert(sealed.id) && (self.fresh || !store.packs().contains(&sealed.id)) {
            self.bytes_written += sealed.bytes.len() as u64;
            self.written += 1;
            self.staged
                .push(store.packs().stage(sealed.id, &sealed.bytes)?);
        } else {
            self.reused += 1;
        }
        Ok(())
    }
}

/// Plaintext bytes of a large source sealed together on the rayon pool.
const SEAL_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// The next chunks of a stream, up to [`SEAL_GROUP_BYTES`] (empty at its end).
fn read_group(
    chunks: &mut impl Iterator<Item = std::io::Result<Vec<u8>>>,
    src: &Source,
) -> Result<Vec<Vec<u8>>> {
    let mut group = Vec::new();
    let mut bytes = 0;
    while bytes < SEAL_GROUP_BYTES {
        match chunks.next() {
            Some(c) => {
                let c = c.map_err(|e| read_err(src, e))?;
                bytes += c.len();
                group.push(c);
            }
            None => break,
        }
    }
    Ok(group)
}

impl Store {
    #[allow(clippy::too_many_arguments)]
    fn process(
        &self,
        src: &Source,
        existing: Option<(ObjectId, ObjectState)>,
        rotate: bool,
        fp_key: &[u8; 32],
        session: &WrapSession<'_>,
        recipients: &[(bbsync_protocol::InstanceId, [u8; 32])],
        progress: &dyn Progress,
        snapshots: &sqlite::SnapshotTally,
    ) -> Result<Outcome> {
        // A rotation writes a new version under a fresh key even when the
        // content is unchanged, so it skips the unchanged checks.
        let live = existing
            .as_ref()
            .filter(|(_, st)| !st.deleted && st.complete && !rotate);
        // 1. Same file metadata as last time: unchanged without reading.
        if let Some((id, st)) = live
            && st.stat_digest == Some(src.stat_digest)
            && st.owner == src.owner
        {
            progress.advance(1, src.content_bytes);
            return Ok(Outcome::Unchanged(*id, None));
        }
        // From here on the source is read: its SQLite databases through
        // consistent snapshots, never the live files (src/sqlite).
        let prepared = self.prepare_databases(src)?;
        if let Some(p) = &prepared {
            snapshots.add(p);
        }
        let src = prepared.as_ref().map_or(src, |p| &p.source);
        // 2. Same fingerprint: unchanged, remember the new metadata. Small
        //    sources are read once into memory and the buffer is kept for sealing.
        let mut buffered = None;
        if let Some((id, st)) = live
            && st.fingerprint.is_some()
            && st.owner == src.owner
        {
            let fp = if src.len <= SMALL_SOURCE {
                let buf = read_all(src)?;
                let mut f = Fingerprinter::new(fp_key, shape_byte(src.shape), src.mode);
                f.update(&buf);
                buffered = Some(buf);
                f.finish()
            } else {
                fingerprint(src, fp_key)?
            };
            // Equal, or equal to what a version before modes were kept
            // recorded for this content (then its fingerprint is brought to
            // this version's, with the mode as it is now: the mode is
            // recorded with the next version, so that the first import
            // after the upgrade writes nothing for an unchanged tree).
            if st.fingerprint == Some(fp)
                || st.fingerprint == Some(legacy_fingerprint(src, fp_key, buffered.as_deref())?)
            {
                let mut st = st.clone();
                st.fingerprint = Some(fp);
                st.stat_digest = Some(src.stat_digest);
                progress.advance(1, src.content_bytes);
                return Ok(Outcome::Unchanged(*id, Some(Box::new(st))));
            }
        }
        // 3. Seal (an object at the highest version cannot get another).
        if let Some((id, st)) = &existing
            && next_version(st.version).is_none()
        {
            progress.advance(1, src.content_bytes);
            return Ok(Outcome::Stuck(
                format!("{}:{}", src.kind, src.name),
                self.stuck_detail(id, st.version),
            ));
        }
        let next = |v: u64| next_version(v).unwrap_or(MAX_VERSION);
        let (object_id, key, version, old) = match &existing {
            // A deleted object that comes back gets a fresh key: the
            // tombstone carries none, and nothing of the old chunks is kept.
            // A rotation (`rekey --rotate`) too: the chunks are sealed anew.
            Some((id, st)) if st.deleted || rotate => {
                (*id, ContentKey::generate(), next(st.version), None)
            }
            Some((id, st)) => {
                let (m, key) = self.manifest_and_key(id)?;
                // What the version has as its meta: the same chunks under
                // another mode (or under none, from before modes were
                // kept) are a change too.
                let meta = match &m.meta {
                    Some(sealed) => ChunkCipher::new(&key)
                        .open_meta(sealed)
                        .and_then(|plain| ObjectMeta::decode(&plain))
                        .ok(),
                    None => None,
                };
                (*id, key, next(st.version), Some((m.chunks.clone(), meta)))
            }
            None => (ObjectId::random(), ContentKey::generate(), 1, None),
        };
        let cipher = ChunkCipher::new(&key);
        let compression = self.config().compression();
        let new_meta = ObjectMeta::new(src.shape, src.mode);
        let old_chunks = old.as_ref().map(|(chunks, _)| chunks);
        let mut acc = Sealed {
            fp: Fingerprinter::new(fp_key, shape_byte(src.shape), src.mode),
            refs: Vec::new(),
            staged: Vec::new(),
            seen: HashSet::new(),
            written: 0,
            reused: 0,
            bytes_written: 0,
            plain: 0,
            fresh: old_chunks.is_none(),
        };
        let seal = |chunk: &[u8]| {
            cipher
                .seal(chunk, compression)
                .ctx(|| format!("sealing {}", src.path().display()))
        };
        let result = if let Some(size) = prepared.as_ref().and_then(|p| p.chunk_size) {
            // A database: fixed, page-aligned chunks (docs/format.md §6.4).
            match buffered.take() {
                Some(buf) => sqlite::fixed_ranges(buf.len(), size)
                    .into_iter()
                    .try_for_each(|r| {
                        let c = &buf[r];
                        acc.fingerprint(c);
                        acc.take(self, seal(c)?)
                    }),
                None => open_source(src).and_then(|r| {
                    sqlite::read_fixed(r, size, |c| {
                        let c = c.map_err(|e| read_err(src, e))?;
                        acc.fingerprint(c);
                        acc.take(self, seal(c)?)
                    })
                }),
            }
        } else if src.len <= SMALL_SOURCE {
            // Small sources (nearly all of a BBS): one read, chunked in memory.
            let buf = match buffered {
                Some(b) => Ok(b),
                None => read_all(src),
            };
            buf.and_then(|buf| {
                chunk_ranges(&buf).into_iter().try_for_each(|r| {
                    let c = &buf[r];
                    acc.fingerprint(c);
                    acc.take(self, seal(c)?)
                })
            })
        } else {
            // A large source: groups of chunks sealed on every core while
            // the next group is read and the current one fingerprinted.
            open_source(src).and_then(|r| {
                let mut chunks = chunker(r);
                let mut next = read_group(&mut chunks, src)?;
                while !next.is_empty() {
                    let group = std::mem::take(&mut next);
                    let (sealed, read) = rayon::join(
                        || group.par_iter().map(|c| seal(c)).collect::<Vec<_>>(),
                        || {
                            group.iter().for_each(|c| acc.fingerprint(c));
                            read_group(&mut chunks, src)
                        },
                    );
                    for s in sealed {
                        acc.take(self, s?)?;
                    }
                    next = read?;
                }
                Ok(())
            })
        };
        let Sealed {
            fp,
            refs,
            staged,
            written,
            reused,
            bytes_written,
            plain,
            ..
        } = acc;
        if let Err(e) = result {
            self.packs().discard(staged);
            return Err(e);
        }
        let fingerprint = fp.finish();
        progress.advance(1, src.content_bytes);
        if let (Some((id, st)), Some((old, old_meta))) = (&existing, &old)
            && *old == refs
            && old_meta.as_ref() == Some(&new_meta)
            && st.owner == src.owner
            && st.complete
        {
            self.packs().discard(staged);
            let mut st = st.clone();
            st.fingerprint = Some(fingerprint);
            st.stat_digest = Some(src.stat_digest);
            return Ok(Outcome::Unchanged(*id, Some(Box::new(st))));
        }
        // Anything failing from here on must not leave staged chunks behind.
        let built = (|| -> Result<ObjectWrite> {
            let meta = cipher
                .seal_meta(&new_meta.encode())
                .ctx(|| "sealing object meta".to_string())?;
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                object_id,
                version,
                kind: src.kind.clone(),
                name: src.name.clone(),
                owner: src.owner.clone(),
                created_at_ms: bbsync_protocol::now_ms(),
                author: self.instance_id(),
                deleted: false,
                plaintext_len: plain,
                chunks: refs,
                meta: Some(meta),
                key_commit: Some(key_commitment(&key, &object_id)),
            };
            let signed = Signed::sign(self.identity(), manifest)
                .ctx(|| format!("signing the manifest of {}", src.path().display()))?;
            // An excluded owner's object is wrapped for this instance only.
            let recipients = self.recipients_for(recipients, src.owner.as_deref());
            let envelope = self.wrap_for(session, recipients, object_id, version, &key)?;
            let state = ObjectState {
                fingerprint: Some(fingerprint),
                stat_digest: Some(src.stat_digest),
                ..self.received_state(&signed, true, &envelope)
            };
            let write = ObjectWrite {
                object_id,
                state,
                manifest: signed.bytes().to_vec(),
                envelope: envelope
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                previous: existing.clone().map(|(_, st)| st),
            };
            Ok(write)
        })();
        let write = match built {
            Ok(w) => w,
            Err(e) => {
                self.packs().discard(staged);
                return Err(e);
            }
        };
        Ok(Outcome::Write(
            Box::new(write),
            staged,
            written,
            reused,
            bytes_written,
        ))
    }

    /// Who wrote the version an object is stuck at, for the report.
    fn stuck_detail(&self, id: &ObjectId, version: u64) -> String {
        let by = self
            .dangerously_manifest_unverified(id)
            .map(|m| m.author.short())
            .unwrap_or_else(|_| "?".into());
        format!(
            "at version {version}, the highest there is (written by instance {by}): it cannot change any more"
        )
    }

    /// A tombstone for an object, or `None` when it is at the highest
    /// version (it cannot be deleted either).
    fn tombstone(&self, id: ObjectId, st: &ObjectState) -> Result<Option<ObjectWrite>> {
        let Some(version) = next_version(st.version) else {
            return Ok(None);
        };
        let signed = Signed::sign(
            self.identity(),
            Manifest {
                format: MANIFEST_FORMAT,
                object_id: id,
                version,
                kind: st.kind.clone(),
                name: st.name.clone(),
                owner: st.owner.clone(),
                created_at_ms: bbsync_protocol::now_ms(),
                author: self.instance_id(),
                deleted: true,
                plaintext_len: 0,
                chunks: Vec::new(),
                meta: None,
                key_commit: None,
            },
        )
        .ctx(|| format!("signing the tombstone of {}", id.short()))?;
        Ok(Some(ObjectWrite {
            object_id: id,
            state: self.received_state(&signed, true, &[] as &[Vec<u8>]),
            manifest: signed.bytes().to_vec(),
            envelope: Vec::new(),
            previous: Some(st.clone()),
        }))
    }

    pub(crate) fn run_import(
        &self,
        sources: Vec<Source>,
        tombstone_missing: bool,
        rotate: &HashSet<ObjectId>,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        let kinds: &[&str] = if tombstone_missing { &BBS_KINDS } else { &[] };
        self.run_import_kinds(sources, kinds, rotate, progress)
    }

    /// Imports `sources`; live objects of `tombstone_kinds` that are not
    /// among them get a tombstone (a tree import: the kinds its layout makes).
    pub(crate) fn run_import_kinds(
        &self,
        sources: Vec<Source>,
        tombstone_kinds: &[&str],
        rotate: &HashSet<ObjectId>,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        self.run_import_keeping(sources, tombstone_kinds, &HashSet::new(), rotate, progress)
    }

    /// Like [`Store::run_import_kinds`], but the objects named in `keep`
    /// (kind, name) are never tombstoned, though they are not among the
    /// sources (a live tree's files still being written, or objects that
    /// came from elsewhere and are not in the tree yet).
    pub(crate) fn run_import_keeping(
        &self,
        sources: Vec<Source>,
        tombstone_kinds: &[&str],
        keep: &HashSet<(String, String)>,
        rotate: &HashSet<ObjectId>,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        self.run_import_gone(
            sources,
            Gone::Missing {
                kinds: tombstone_kinds,
                keep,
            },
            rotate,
            progress,
        )
    }

    /// Imports `sources` and tombstones the live objects `gone` names
    /// (those among the sources excepted).
    pub(crate) fn run_import_gone(
        &self,
        sources: Vec<Source>,
        gone: Gone<'_>,
        rotate: &HashSet<ObjectId>,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        let start = Instant::now();
        let _g = self.lock();
        let mut stats = ImportStats {
            bytes_scanned: sources.iter().map(|s| s.content_bytes).sum(),
            ..Default::default()
        };
        let names = source_names(&sources)?;
        progress.start("import", sources.len() as u64, stats.bytes_scanned);
        // What the import will write, spooled (memory stays flat).
        let tmp = self.dir().join(crate::TMP_DIR);
        let mut pending = Pending {
            writes: Spool::new(&tmp),
            refresh: Spool::new(&tmp),
            staged: Vec::new(),
        };
        let sealed = self
            .seal_sources(sources, rotate, progress, &mut stats, &mut pending)
            .and_then(|()| self.tombstone_gone(&gone, &names, &mut stats, &mut pending.writes));
        progress.finish();
        if let Err(e) = sealed {
            self.packs().discard(pending.staged);
            return Err(e);
        }
        drop(names);
        tracing::info!(elapsed = ?start.elapsed(), "import: sources sealed");
        self.commit_import(pending, &mut stats)?;
        drop(_g);
        if stats.changed + stats.deleted > 0 {
            // The import is durable already; a failed clean-up is reported,
            // not turned into a failed import (`bbsync gc` retries it).
            let gc = failpoint::check("import.gc", || "collecting unreferenced chunks".into())
                .and_then(|()| self.gc());
            match gc {
                Ok(r) => stats.chunks_collected = r.chunks_removed,
                Err(e) => {
                    tracing::warn!("import done, but removing unreferenced chunks failed: {e}")
                }
            }
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Every source read, sealed and staged on the rayon pool, largest
    /// first, each result spooled into `pending` as soon as it is ready.
    fn seal_sources(
        &self,
        sources: Vec<Source>,
        rotate: &HashSet<ObjectId>,
        progress: &dyn Progress,
        stats: &mut ImportStats,
        pending: &mut Pending,
    ) -> Result<()> {
        // Largest first (taken from the end), so that big files do not end
        // up alone at the tail.
        let mut rest = sources;
        rest.sort_by_key(|s| s.len);
        // Between the walk and the first open (a test swaps a file for a
        // symlink here: it must be refused, not followed).
        crate::failpoint::hit("import.after_walk")
            .ctx(|| "before reading the import sources".to_string())?;
        let fp_key = self.identity().local_key("fingerprint");
        let session = WrapSession::new(self.identity());
        let recipients = self.recipients()?;
        let snapshots = sqlite::SnapshotTally::default();
        let taken = std::sync::Mutex::new(Taken {
            stats: &mut *stats,
            writes: &mut pending.writes,
            refresh: &mut pending.refresh,
            staged: &mut pending.staged,
        });
        let take = |r: Result<Outcome>| -> Result<()> {
            let mut t = taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.take(r)
        };
        // Taken from the end in rounds of PAR_SOURCES (each source dropped
        // once processed, the list shrunk between rounds: memory stays flat
        // at scale).
        let mut sealed = Ok(());
        while !rest.is_empty() && sealed.is_ok() {
            let from = rest.len().saturating_sub(PAR_SOURCES);
            // One source per rayon job: with rayon's default splitting a
            // thread could be left with a run of large sources while the
            // other had nothing to steal.
            sealed = rest
                .par_drain(from..)
                .rev()
                .with_max_len(1)
                .try_for_each(|src| {
                    let processed = (|| {
                        let existing = match self.db().lookup(&src.kind, &src.name)? {
                            Some(id) => Some((id, self.state(&id)?)),
                            None => None,
                        };
                        let rotate = existing.as_ref().is_some_and(|(id, _)| rotate.contains(id));
                        self.process(
                            &src,
                            existing,
                            rotate,
                            &fp_key,
                            &session,
                            &recipients,
                            progress,
                            &snapshots,
                        )
                    })();
                    take(processed)
                });
            if rest.len() < rest.capacity() / 2 {
                rest.shrink_to_fit();
            }
        }
        (stats.databases, stats.snapshot_time) = snapshots.totals();
        sealed
    }

    /// The live objects `gone` names, unless among the sources (`names`),
    /// tombstoned into `writes` (or counted as stuck).
    fn tombstone_gone(
        &self,
        gone: &Gone<'_>,
        names: &HashSet<[u8; 16]>,
        stats: &mut ImportStats,
        writes: &mut Spool<ObjectWrite>,
    ) -> Result<()> {
        let candidates: Box<dyn Iterator<Item = Result<(ObjectId, ObjectState)>> + '_> = match gone
        {
            Gone::Missing { kinds: [], .. } => Box::new(std::iter::empty()),
            Gone::Missing { .. } => Box::new(self.db().objects()),
            Gone::These(ids) => Box::new(ids.iter().map(|id| Ok((*id, self.state(id)?)))),
        };
        for r in candidates {
            let (id, st) = r?;
            let wanted = match gone {
                Gone::Missing { kinds, keep } => {
                    kinds.contains(&st.kind.as_str())
                        && !keep.contains(&(st.kind.clone(), st.name.clone()))
                }
                Gone::These(_) => true,
            };
            if st.deleted || !wanted || names.contains(&name_digest(&st.kind, &st.name)) {
                continue;
            }
            match self.tombstone(id, &st)? {
                Some(t) => {
                    writes.push(*id.as_bytes(), &t)?;
                    stats.deleted += 1;
                }
                None => stats.stuck.push((
                    format!("{}:{}", st.kind, st.name),
                    self.stuck_detail(&id, st.version),
                )),
            }
        }
        Ok(())
    }

    /// What an import sealed made durable: its chunks published
    /// (fdatasync, index), then its records committed in object-id order
    /// while the packs it filled are sealed.
    fn commit_import(&self, pending: Pending, stats: &mut ImportStats) -> Result<()> {
        let Pending {
            writes,
            refresh,
            staged,
        } = pending;
        let t = Instant::now();
        if let Err(e) = failpoint::check("import.publish", || "publishing new chunks".into()) {
            self.packs().discard(staged);
            return Err(e);
        }
        let published = self.packs().publish(staged)?;
        tracing::info!(elapsed = ?t.elapsed(), "import: chunks published (fdatasync, index)");
        let t = Instant::now();
        failpoint::check("import.commit", || "committing the import".into())?;
        if stats.changed + stats.deleted > 0 {
            // Old versions' chunks become unreferenced with this commit.
            self.packs().expect_garbage()?;
        }
        // In object-id order: sled's B-tree fills page after page. The packs
        // this import filled are sealed meanwhile on another core.
        std::thread::scope(|s| {
            s.spawn(|| self.packs().seal_full());
            if writes.len() > 0 {
                self.db().commit_from(writes.drain_sorted())?;
            }
            for r in refresh.drain_sorted() {
                let (id, st) = r?;
                self.db().put_state(&id, &st)?;
            }
            self.db().flush()
        })?;
        self.packs().recorded(published);
        stats.seq = self.db().last_seq()?;
        tracing::info!(elapsed = ?t.elapsed(), "import: metadata committed");
        Ok(())
    }

    /// Imports one file or directory as the object `kind:name`.
    pub fn import_path(
        &self,
        path: &Path,
        kind: &str,
        name: &str,
        owner: Option<String>,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        let src = bbs::source_for_path(path, kind, name, owner)?;
        self.run_import(vec![src], false, &HashSet::new(), progress)
    }

    /// Imports a whole BBS tree; objects of the BBS kinds that are no longer
    /// in the tree get a tombstone.
    pub fn import_bbs(&self, root: &Path, progress: &dyn Progress) -> Result<ImportStats> {
        let t = Instant::now();
        let sources = bbs::scan(root)?;
        tracing::info!(elapsed = ?t.elapsed(), sources = sources.len(), "import: tree scanned");
        self.run_import(sources, true, &HashSet::new(), progress)
    }
}
