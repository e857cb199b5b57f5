//! Pack files under `<data>/packs/` and the chunk index.
//!
//! Sealed chunks are appended to an open pack (`packs/<hh>/<id>.pack`,
//! about [`PACK_TARGET`] bytes, format in [`format`]); the sled index maps
//! each chunk id to its pack, offset and length, and reads are positioned
//! reads. A pack that reached its size is sealed: a trailer listing its
//! chunks is appended and it never changes again, so the index can be
//! rebuilt from the packs alone ([`Packs::rebuild_index`]).
//!
//! Write order (`docs/format.md` §13): [`Packs::stage`] appends (buffered,
//! no sync) and returns a [`Staged`] entry; [`Packs::publish`] writes the
//! buffers, `fdatasync`s every pack holding staged bytes, then commits their
//! index records, the packs' committed lengths and the collect marker in
//! one sled batch and flushes it. The caller then commits its manifests and
//! hands the returned [`Published`] to [`Packs::recorded`], which also seals
//! the packs that filled up (an import seals them on another thread while it
//! commits its manifests: [`Packs::seal_full`]). So no index
//! record names bytes that are not durable, and a crash between the index
//! commit and the manifests' commit leaves the marker, which makes the next
//! open collect what nothing references. A commit that replaces objects
//! sets the marker first too ([`Packs::expect_garbage`]), until the
//! collection after it ran ([`Packs::collected`]).
//! Bytes appended beyond a pack's committed length (an interrupted or
//! discarded append) are cut off when the pack is next opened. A new pack
//! is recorded as open before its file is created, so no pack file is ever
//! unknown to the database; a pack is recorded as sealed only after its
//! trailer is durable.

mod format;
mod gc;
mod rebuild;
pub mod spans;

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use bbsync_protocol::ChunkId;

pub use format::{
    ENTRY_HEADER_LEN, Entry, FOOTER_LEN, Footer, HEADER_LEN, Location, PACK_TARGET, PackId,
    TRAILER_ENTRY_LEN, check_header, decode_entry_header, encode_header, footer_fits, parse_footer,
    parse_trailer, valid_chunk_len, walk_entries,
};
pub use gc::{GcReport, REPACK_THRESHOLD};
pub use rebuild::RebuildReport;

use crate::{
    db::{Db, IndexChange},
    error::{Context, Result, StoreError},
    failpoint,
};

/// Buffered appends are written to the pack file once this much is pending.
const WRITE_BUF: usize = 1 << 20;
/// Background syncs of full packs running at once.
const WRITEBACKS: usize = 4;
/// Open read handles kept for positioned reads.
const MAX_HANDLES: usize = 128;

/// Chunks published (durable and indexed) but not yet recorded by the
/// caller's manifests (see [`Packs::publish`]). Dropping it without
/// [`Packs::recorded`] leaves the marker, so the next open collects them.
#[derive(Debug)]
#[must_use = "pass it to Packs::recorded once the chunks are recorded"]
pub struct Published(u64);

/// A chunk appended to an open pack, waiting for [`Packs::publish`].
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    /// The chunk.
    pub id: ChunkId,
    loc: Location,
}

impl Staged {
    /// Stored bytes of the chunk.
    pub fn len(&self) -> u64 {
        u64::from(self.loc.len)
    }

    /// Whether the chunk is empty (never: stored chunks are at least 30 bytes).
    pub fn is_empty(&self) -> bool {
        self.loc.len == 0
    }
}

/// A pack that is not sealed yet.
struct OpenPack {
    id: PackId,
    file: Arc<File>,
    /// Bytes in the file.
    written: u64,
    /// Appended bytes not written yet (they follow `written`).
    buf: Vec<u8>,
    /// Bytes forced to disk by the last `fdatasync`.
    synced: u64,
    /// Length recorded in the database: every indexed entry ends within it.
    committed: u64,
    /// Entries appended and neither published nor discarded.
    pending: u64,
    /// No more appends: sealed once nothing is pending.
    full: bool,
    /// A background `fdatasync` started when the pack filled: the length it
    /// covers and whether it has succeeded. Dropped when the file is cut.
    writeback: Option<(u64, Arc<AtomicBool>)>,
}

impl OpenPack {
    fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            failpoint::hit("pack.write")?;
            self.file.write_all_at(&self.buf, self.written)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

#[derive(Default)]
struct Writer {
    packs: Vec<OpenPack>,
    /// Entries published and not yet recorded (the marker is set while > 0).
    unrecorded: u64,
    /// A commit made chunks unreferenced and no collection ran since (the
    /// marker is set while true).
    garbage: bool,
    /// Background `fdatasync`s of full packs (they start the write-out
    /// early; [`Packs::publish`] counts on one only once it has succeeded).
    writebacks: Vec<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn record(&self) -> Vec<(PackId, u64)> {
        self.packs.iter().map(|p| (p.id, p.committed)).collect()
    }

    fn find(&mut self, id: &PackId) -> Option<&mut OpenPack> {
        self.packs.iter_mut().find(|p| p.id == *id)
    }
}

/// The pack directory and the chunk index.
pub struct Packs {
    root: PathBuf,
    db: Arc<Db>,
    writer: Mutex<Writer>,
    handles: Mutex<HashMap<PackId, Arc<File>>>,
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packs").field("root", &self.root).finish()
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

impl Packs {
    /// Opens the pack directory `root` (creating it): deletes the packs a
    /// finished repack left to delete, and cuts every open pack back to
    /// its committed length (an interrupted append leaves bytes beyond it;
    /// a pack with nothing committed is removed).
    pub fn open(root: &Path, db: Arc<Db>) -> Result<Self> {
        fs::create_dir_all(root).ctx(|| format!("creating {}", root.display()))?;
        let packs = Packs {
            root: root.to_path_buf(),
            db,
            writer: Mutex::new(Writer::default()),
            handles: Mutex::new(HashMap::new()),
        };
        packs.delete_doomed()?;
        packs.load_open()?;
        Ok(packs)
    }

    /// The pack directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a pack lives.
    pub fn path(&self, pack: &PackId) -> PathBuf {
        self.root.join(pack.rel_path())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the packs a repack doomed (their chunks are indexed elsewhere).
    fn delete_doomed(&self) -> Result<()> {
        let doomed = self.db.doomed_packs()?;
        if doomed.is_empty() {
            return Ok(());
        }
        self.delete_packs(&doomed)?;
        self.db.apply_index(
            IndexChange {
                doomed: Some(Vec::new()),
                ..Default::default()
            },
            true,
        )
    }

    /// Removes pack files (missing ones are fine), then syncs their directories.
    fn delete_packs(&self, packs: &[PackId]) -> Result<()> {
        let mut dirs = HashSet::new();
        for p in packs {
            failpoint::hit("gc.delete")
                .ctx(|| format!("removing pack {}", self.path(p).display()))?;
            self.forget_handle(p);
            let path = self.path(p);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("removing pack {}", path.display())),
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            if d.is_dir() {
                sync_dir(&d)?;
            }
        }
        Ok(())
    }

    /// Loads the open packs recorded in the database, cutting each back to
    /// its committed length.
    fn load_open(&self) -> Result<()> {
        let recorded = self.db.open_packs()?;
        let mut w = self.writer();
        w.packs.clear();
        let mut changed = false;
        for (id, committed) in recorded {
            let path = self.path(&id);
            if committed <= HEADER_LEN {
                // Created, nothing ever published into it.
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).ctx(|| format!("removing {}", path.display())),
                }
                changed = true;
                continue;
            }
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(pack = %path.display(), "an open pack is missing; its chunks are lost (`bbsync verify` lists them)");
                    changed = true;
                    continue;
                }
                Err(e) => return Err(e).ctx(|| format!("opening {}", path.display())),
            };
            let len = file
                .metadata()
                .ctx(|| format!("reading {}", path.display()))?
                .len();
            if len > committed {
                // An append that was never published: cut it off.
                file.set_len(committed)
                    .and_then(|()| file.sync_data())
                    .ctx(|| format!("truncating {}", path.display()))?;
                tracing::info!(pack = %path.display(), bytes = len - committed, "cut off an interrupted append");
            }
            let damaged = len < committed;
            if damaged {
                tracing::warn!(pack = %path.display(), len, committed, "an open pack is shorter than recorded; it takes no more chunks (`bbsync verify` reports it)");
            }
            let written = len.min(committed);
            w.packs.push(OpenPack {
                id,
                file: Arc::new(file),
                written,
                buf: Vec::new(),
                synced: written,
                committed,
                pending: 0,
                full: damaged || committed >= PACK_TARGET,
                writeback: None,
            });
        }
        if changed {
            self.db.apply_index(
                IndexChange {
                    open_packs: Some(w.record()),
                    ..Default::default()
                },
                true,
            )?;
        }
        Ok(())
    }

    /// The open packs and their committed lengths (as recorded).
    pub fn open_packs(&self) -> Vec<(PackId, u64)> {
        self.writer().record()
    }

    /// Creates a new open pack: recorded in the database (flushed) before
    /// its file exists, so that no pack file is unknown after a crash.
    fn new_pack(&self, w: &mut Writer) -> Result<()> {
        let id = PackId::random();
        let path = self.path(&id);
        let mut record = w.record();
        record.push((id, HEADER_LEN));
        failpoint::hit("pack.create").ctx(|| format!("creating {}", path.display()))?;
        self.db.apply_index(
            IndexChange {
                open_packs: Some(record),
                ..Default::default()
            },
            true,
        )?;
        let dir = path.parent().unwrap_or(&self.root);
        let new_dir = !dir.is_dir();
        if new_dir {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
            sync_dir(&self.root)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        // The name is durable before any index record can point into it.
        sync_dir(dir)?;
        w.packs.push(OpenPack {
            id,
            file: Arc::new(file),
            written: 0,
            buf: format::encode_header(&id).to_vec(),
            synced: 0,
            committed: HEADER_LEN,
            pending: 0,
            full: false,
            writeback: None,
        });
        Ok(())
    }

    /// Appends a chunk to the open pack (buffered, not yet durable, not yet
    /// indexed). `bytes` must be the chunk's stored bytes; the caller has
    /// checked that they hash to `id`.
    pub fn stage(&self, id: ChunkId, bytes: &[u8]) -> Result<Staged> {
        let len = bytes.len() as u64;
        if !valid_chunk_len(len) {
            return Err(StoreError::Invalid(format!(
                "chunk {} has an impossible length {len}",
                id.short()
            )));
        }
        failpoint::hit("pack.stage").ctx(|| format!("staging chunk {}", id.short()))?;
        let need = ENTRY_HEADER_LEN + len;
        let mut w = self.writer();
        let cur = w.packs.iter().rposition(|p| !p.full);
        let idx = match cur {
            Some(i) if w.packs[i].len() + need <= PACK_TARGET || w.packs[i].len() <= HEADER_LEN => {
                i
            }
            _ => {
                if let Some(i) = cur {
                    let p = &mut w.packs[i];
                    p.full = true;
                    let r = p.write_buf();
                    let path = self.path(&p.id);
                    r.ctx(|| format!("writing {}", path.display()))?;
                    self.start_writeback(&mut w, i);
                }
                self.new_pack(&mut w)?;
                w.packs.len() - 1
            }
        };
        let p = &mut w.packs[idx];
        let start = p.buf.len();
        let offset = p.len() + ENTRY_HEADER_LEN;
        p.buf
            .extend_from_slice(&format::encode_entry_header(&id, len as u32));
        p.buf.extend_from_slice(bytes);
        if p.buf.len() >= WRITE_BUF
            && let Err(e) = p.write_buf()
        {
            // As if never appended: the caller discards what it staged before.
            p.buf.truncate(start);
            let path = self.path(&p.id);
            return Err(e).ctx(|| format!("writing {}", path.display()));
        }
        p.pending += 1;
        Ok(Staged {
            id,
            loc: Location {
                pack: p.id,
                offset: offset as u32,
                len: len as u32,
            },
        })
    }

    /// Starts a background `fdatasync` of a full pack (at most
    /// [`WRITEBACKS`] at once; beyond that, publishing syncs it).
    fn start_writeback(&self, w: &mut Writer, idx: usize) {
        w.writebacks.retain(|h| !h.is_finished());
        if w.writebacks.len() >= WRITEBACKS {
            return;
        }
        let p = &mut w.packs[idx];
        let file = p.file.clone();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let spawned = std::thread::Builder::new()
            .name("bbsync-writeback".into())
            .spawn(move || {
                if file.sync_data().is_ok() {
                    flag.store(true, Ordering::Release);
                }
            });
        if let Ok(h) = spawned {
            p.writeback = Some((p.written, done));
            w.writebacks.push(h);
        }
    }

    /// Drops staged chunks (an aborted write). A pack whose appends are all
    /// settled is cut back to its committed length, and a pack that holds
    /// nothing committed is removed, so a failed write leaves the packs as
    /// they were.
    pub fn discard(&self, staged: Vec<Staged>) {
        if staged.is_empty() {
            return;
        }
        let mut w = self.writer();
        for s in &staged {
            if let Some(p) = w.find(&s.loc.pack) {
                p.pending = p.pending.saturating_sub(1);
            }
        }
        if let Err(e) = self.settle(&mut w) {
            tracing::warn!("after a discarded write: {e}");
        }
    }

    /// [`Packs::settle_lengths`], then seals full packs.
    fn settle(&self, w: &mut Writer) -> Result<()> {
        self.settle_lengths(w)?;
        self.seal_ready(w);
        Ok(())
    }

    /// Cuts settled packs back to their committed length and removes empty
    /// ones.
    fn settle_lengths(&self, w: &mut Writer) -> Result<()> {
        let mut removed = Vec::new();
        for p in w.packs.iter_mut().filter(|p| p.pending == 0) {
            if p.len() > p.committed {
                p.buf.clear();
                if p.written > p.committed {
                    p.file
                        .set_len(p.committed)
                        .ctx(|| format!("truncating {}", self.path(&p.id).display()))?;
                    p.written = p.committed;
                    p.synced = p.synced.min(p.committed);
                    p.writeback = None;
                }
                p.full = p.committed >= PACK_TARGET;
            }
            if p.committed <= HEADER_LEN {
                removed.push(p.id);
            }
        }
        if !removed.is_empty() {
            w.packs.retain(|p| !removed.contains(&p.id));
            self.db.apply_index(
                IndexChange {
                    open_packs: Some(w.record()),
                    ..Default::default()
                },
                true,
            )?;
            for id in &removed {
                let path = self.path(id);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).ctx(|| format!("removing {}", path.display())),
                }
            }
        }
        Ok(())
    }

    /// Seals the full packs that have nothing pending (a failure is logged
    /// and the pack left open: a later write tries again).
    fn seal_ready(&self, w: &mut Writer) {
        let ready: Vec<PackId> = w
            .packs
            .iter()
            .filter(|p| p.full && p.pending == 0 && p.len() == p.committed)
            .map(|p| p.id)
            .collect();
        for id in ready {
            if let Err(e) = self.seal(w, &id) {
                tracing::warn!(pack = %id, "sealing failed: {e}");
            }
        }
    }

    /// Asks the kernel to start reading every pack file now (a caller that
    /// reads them all next, `verify --read-data`, then waits less on the
    /// disk). Best effort: nothing is reported.
    pub fn prefetch_all(&self) {
        for (id, _) in self.pack_files().into_iter().flatten().flatten() {
            if let Ok(f) = File::open(self.path(&id)) {
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
            }
        }
    }

    /// Seals the packs that publishing has filled (which [`Packs::recorded`]
    /// also does): a caller may run this beside its own commit, since
    /// sealing needs only the chunk index, not the manifests.
    pub fn seal_full(&self) {
        let t = std::time::Instant::now();
        let mut w = self.writer();
        self.seal_ready(&mut w);
        tracing::debug!(elapsed = ?t.elapsed(), "packs: full packs sealed");
    }

    /// Makes staged chunks durable and indexed (see the module docs). The
    /// marker stays until the caller has recorded them and hands the
    /// returned [`Published`] to [`Packs::recorded`]. On failure the staged
    /// chunks are discarded.
    pub fn publish(&self, staged: Vec<Staged>) -> Result<Published> {
        self.publish_with(staged, None)
    }

    /// [`Packs::publish`], also recording `doomed` packs to delete in the
    /// same atomic batch (a repack).
    fn publish_with(&self, staged: Vec<Staged>, doomed: Option<Vec<PackId>>) -> Result<Published> {
        if staged.is_empty() && doomed.is_none() {
            return Ok(Published(0));
        }
        let mut w = self.writer();
        let t = std::time::Instant::now();
        let r = self.publish_locked(&mut w, &staged, doomed);
        tracing::debug!(elapsed = ?t.elapsed(), "packs: synced and indexed");
        match r {
            Ok(n) => {
                // Full packs are sealed by `recorded` (or `seal_full`).
                if let Err(e) = self.settle_lengths(&mut w) {
                    tracing::warn!("after publishing chunks: {e}");
                }
                Ok(Published(n))
            }
            Err(e) => {
                for s in &staged {
                    if let Some(p) = w.find(&s.loc.pack) {
                        p.pending = p.pending.saturating_sub(1);
                    }
                }
                if let Err(e2) = self.settle(&mut w) {
                    tracing::warn!("after a failed publish: {e2}");
                }
                Err(e)
            }
        }
    }

    fn publish_locked(
        &self,
        w: &mut Writer,
        staged: &[Staged],
        doomed: Option<Vec<PackId>>,
    ) -> Result<u64> {
        let touched: HashSet<PackId> = staged.iter().map(|s| s.loc.pack).collect();
        // 1. The bytes, durable.
        for p in w.packs.iter_mut().filter(|p| touched.contains(&p.id)) {
            let path = self.root.join(p.id.rel_path());
            p.write_buf()
                .ctx(|| format!("writing {}", path.display()))?;
            if p.synced < p.written {
                failpoint::hit("pack.sync").ctx(|| format!("syncing {}", path.display()))?;
                // Unless a background sync of all of it has succeeded.
                let done = p
                    .writeback
                    .as_ref()
                    .is_some_and(|(len, ok)| *len >= p.written && ok.load(Ordering::Acquire));
                if !done {
                    p.file
                        .sync_data()
                        .ctx(|| format!("syncing {}", path.display()))?;
                }
                p.synced = p.written;
            }
        }
        // 2. Their index records, the packs' new committed lengths and the
        //    marker, in one batch, flushed.
        let mut committed: HashMap<PackId, u64> = HashMap::new();
        for s in staged {
            let e = committed.entry(s.loc.pack).or_insert(0);
            *e = (*e).max(s.loc.end());
        }
        let record: Vec<(PackId, u64)> = w
            .packs
            .iter()
            .map(|p| {
                (
                    p.id,
                    committed
                        .get(&p.id)
                        .map_or(p.committed, |c| p.committed.max(*c)),
                )
            })
            .collect();
        let n = staged.len() as u64;
        failpoint::hit("index.commit").ctx(|| "committing the chunk index".to_string())?;
        let applied = self.db.apply_index(
            IndexChange {
                put: staged.iter().map(|s| (s.id, s.loc)).collect(),
                open_packs: Some(record.clone()),
                collect: (n > 0).then_some(true),
                doomed,
                ..Default::default()
            },
            true,
        );
        if let Err(e) = applied {
            // Part of the change may be applied (a failed flush: sled makes
            // it durable later anyway), so the new committed lengths may
            // stand: the bytes, durable already, are not cut back. If the
            // records did not land, the next open cuts the unindexed tail;
            // if they did, the marker makes it collect them.
            w.unrecorded += n;
            for (p, (_, c)) in w.packs.iter_mut().zip(record) {
                p.committed = c;
            }
            return Err(e);
        }
        w.unrecorded += n;
        for (p, (_, c)) in w.packs.iter_mut().zip(record) {
            p.committed = c;
        }
        for s in staged {
            if let Some(p) = w.find(&s.loc.pack) {
                p.pending = p.pending.saturating_sub(1);
            }
        }
        failpoint::hit("index.committed").ctx(|| "after the chunk index".to_string())?;
        Ok(n)
    }

    /// Seals a full open pack with nothing pending: its trailer lists the
    /// entries the index points to; durable before it is recorded sealed.
    fn seal(&self, w: &mut Writer, id: &PackId) -> Result<()> {
        let Some(pos) = w.packs.iter().position(|p| p.id == *id) else {
            return Ok(());
        };
        let path = self.path(id);
        let (file, end) = {
            let p = &w.packs[pos];
            (p.file.clone(), p.committed)
        };
        // The entry headers only (positioned reads, no pack-sized buffer).
        let mut head = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut head, 0)
            .ctx(|| format!("reading {}", path.display()))?;
        check_header(&head, id)
            .map_err(|e| StoreError::Corrupt(format!("pack {}: {e}", path.display())))?;
        let mut walked = Vec::new();
        let mut at = HEADER_LEN;
        let mut eh = [0u8; ENTRY_HEADER_LEN as usize];
        while at < end {
            file.read_exact_at(&mut eh, at)
                .ctx(|| format!("reading {}", path.display()))?;
            let (cid, len) = decode_entry_header(&eh)
                .filter(|(_, len)| {
                    valid_chunk_len(u64::from(*len))
                        && at + ENTRY_HEADER_LEN + u64::from(*len) <= end
                })
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "pack {} cannot be sealed: bad entry header at {at}",
                        path.display()
                    ))
                })?;
            walked.push(Entry {
                id: cid,
                offset: (at + ENTRY_HEADER_LEN) as u32,
                len,
            });
            at += ENTRY_HEADER_LEN + u64::from(len);
        }
        let mut entries = Vec::with_capacity(walked.len());
        for e in walked {
            let here = Location {
                pack: *id,
                offset: e.offset,
                len: e.len,
            };
            if self.db.index_get(&e.id)? == Some(here) {
                entries.push(e);
            }
        }
        if entries.is_empty() {
            // Nothing in it is indexed any more: it goes instead.
            w.packs.remove(pos);
            self.db.apply_index(
                IndexChange {
                    open_packs: Some(w.record()),
                    ..Default::default()
                },
                true,
            )?;
            self.delete_packs(&[*id])?;
            return Ok(());
        }
        let trailer = format::encode_trailer(id, &entries, end as u32);
        failpoint::hit("pack.seal").ctx(|| format!("sealing {}", path.display()))?;
        file.write_all_at(&trailer, end)
            .and_then(|()| file.sync_data())
            .ctx(|| format!("sealing {}", path.display()))?;
        failpoint::hit("pack.sealed").ctx(|| format!("sealing {}", path.display()))?;
        w.packs.remove(pos);
        self.db.apply_index(
            IndexChange {
                open_packs: Some(w.record()),
                ..Default::default()
            },
            true,
        )?;
        tracing::debug!(pack = %id, chunks = entries.len(), "sealed");
        Ok(())
    }

    /// Published chunks are recorded: the marker goes with the last,
    /// unless a collection is pending.
    pub fn recorded(&self, p: Published) {
        if p.0 == 0 {
            return;
        }
        let mut w = self.writer();
        w.unrecorded = w.unrecorded.saturating_sub(p.0);
        if let Err(e) = self.clear_marker(&w) {
            tracing::warn!("clearing the collect marker: {e}");
        }
        self.seal_ready(&mut w);
    }

    fn clear_marker(&self, w: &Writer) -> Result<()> {
        if w.unrecorded == 0 && !w.garbage {
            self.db.apply_index(
                IndexChange {
                    collect: Some(false),
                    ..Default::default()
                },
                true,
            )?;
        }
        Ok(())
    }

    /// Sets the collect marker (durably) before a commit that makes chunks
    /// unreferenced (objects replaced or deleted): if the process stops
    /// before the collection after it ([`Packs::collected`]), the next open
    /// collects.
    pub fn expect_garbage(&self) -> Result<()> {
        let mut w = self.writer();
        if !w.garbage && w.unrecorded == 0 {
            self.db.apply_index(
                IndexChange {
                    collect: Some(true),
                    ..Default::default()
                },
                true,
            )?;
        }
        w.garbage = true;
        Ok(())
    }

    /// A collection ran over everything committed: the marker goes unless
    /// published chunks still wait to be recorded.
    pub fn collected(&self) -> Result<()> {
        let mut w = self.writer();
        w.garbage = false;
        self.clear_marker(&w)
    }

    /// Writes one chunk durably right away, with nothing to record (tests,
    /// repair).
    pub fn put(&self, id: ChunkId, bytes: &[u8]) -> Result<()> {
        let s = self.stage(id, bytes)?;
        let p = self.publish(vec![s])?;
        self.recorded(p);
        Ok(())
    }

    // ---- reading -------------------------------------------------------

    /// Where a chunk is, if the index has it.
    pub fn location(&self, id: &ChunkId) -> Result<Option<Location>> {
        self.db.index_get(id)
    }

    /// Whether the index has a chunk (its bytes are not checked).
    pub fn contains(&self, id: &ChunkId) -> bool {
        matches!(self.location(id), Ok(Some(_)))
    }

    /// The stored length of an indexed chunk.
    pub fn size(&self, id: &ChunkId) -> Option<u64> {
        self.location(id).ok().flatten().map(|l| u64::from(l.len))
    }

    fn handle(&self, pack: &PackId) -> io::Result<Arc<File>> {
        let mut h = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = h.get(pack) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(pack))?);
        if h.len() >= MAX_HANDLES {
            h.clear();
        }
        h.insert(*pack, f.clone());
        Ok(f)
    }

    fn forget_handle(&self, pack: &PackId) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pack);
    }

    /// Reads a chunk's stored bytes at a location (unchecked), into a
    /// buffer of exactly its size.
    pub fn read_at(&self, loc: &Location) -> io::Result<Vec<u8>> {
        let f = self.handle(&loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        match f.read_exact_at(&mut buf, u64::from(loc.offset)) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pack {} is cut short", self.path(&loc.pack).display()),
            )),
            r => r.map(|()| buf),
        }
    }

    /// Reads a chunk (unchecked): `NotFound` when the index lacks it.
    pub fn read(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        for attempt in 0..2 {
            let loc = self
                .location(id)
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("chunk {} is not in the index", id.short()),
                    )
                })?;
            match self.read_at(&loc) {
                // A repack may have moved it since the lookup: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                    self.forget_handle(&loc.pack);
                }
                r => return r,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("chunk {}: its pack is gone", id.short()),
        ))
    }

    /// Drops chunks from the index (their bytes stay in their packs until
    /// a repack); flushed.
    pub fn remove_many(&self, ids: &[ChunkId]) -> Result<()> {
        self.db.apply_index(
            IndexChange {
                remove: ids.to_vec(),
                ..Default::default()
            },
            true,
        )
    }

    /// Every indexed chunk with its stored length.
    pub fn list(&self) -> Result<Vec<(ChunkId, u64)>> {
        self.db
            .index_iter()
            .map(|r| r.map(|(id, l)| (id, u64::from(l.len))))
            .collect()
    }

    /// Every pack file with its length, and as `Err(path)` every other
    /// file or directory in the pack directory (strays).
    pub fn pack_files(&self) -> Result<Vec<std::result::Result<(PackId, u64), PathBuf>>> {
        Self::list_files(&self.root)
    }

    /// [`Packs::pack_files`] of the pack directory `root`.
    pub fn list_files(root: &Path) -> Result<Vec<std::result::Result<(PackId, u64), PathBuf>>> {
        let mut out = Vec::new();
        for d in fs::read_dir(root).ctx(|| format!("listing {}", root.display()))? {
            let d = d.ctx(|| format!("listing {}", root.display()))?;
            let name = d.file_name();
            let name = name.to_string_lossy();
            let is_dir = d.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if name.len() != 2 || !is_dir || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(Err(d.path()));
                continue;
            }
            for f in fs::read_dir(d.path()).ctx(|| format!("listing {}", d.path().display()))? {
                let f = f.ctx(|| format!("listing {}", d.path().display()))?;
                let fname = f.file_name();
                match fname.to_str().and_then(PackId::from_file_name) {
                    Some(id) if id.to_hex()[..2] == *name => {
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        out.push(Ok((id, len)));
                    }
                    _ => out.push(Err(f.path())),
                }
            }
        }
        Ok(out)
    }
}
