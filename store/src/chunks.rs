//! Chunk files under `<data>/chunks/`, one file per chunk named by its id.
//!
//! Crash-safe write order (see `docs/format.md`): new chunks are written to
//! temp files `<shard>/<hex>.tmp.<pid>.<n>` beside their final names, without
//! an fsync each; [`ChunkFiles::publish`] then makes the whole batch durable
//! with one `syncfs`, renames every file to its final name, and runs `syncfs`
//! again so the renames are durable before the caller records anything in the
//! database. A crash leaves at worst temp files; the `chunks/dirty` marker,
//! created before the first temp file, tells [`ChunkFiles::open`] to sweep
//! them. A final name always holds a complete, durable chunk.
//!
//! (Temp files live in the shard directories rather than one `tmp/` so that
//! inode allocation is spread over the file system: tens of thousands of new
//! files in one directory made ext4's inode search the main cost of an import.)

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use bbsync_protocol::ChunkId;

use crate::error::{Context, Result};

/// Chunks published but not yet recorded in the database (see
/// [`ChunkFiles::publish`]). Dropping it without [`ChunkFiles::recorded`]
/// leaves the dirty marker, so the next open collects them.
#[derive(Debug)]
#[must_use = "pass it to ChunkFiles::recorded once the chunks are recorded"]
pub struct Published(u64);

/// A chunk written to a temp file, waiting for [`ChunkFiles::publish`].
#[derive(Debug)]
pub struct Staged {
    /// The chunk.
    pub id: ChunkId,
    tmp: PathBuf,
}

/// The chunk directory.
#[derive(Debug)]
pub struct ChunkFiles {
    root: PathBuf,
    counter: AtomicU64,
    /// Temp files that may exist. The dirty marker is on disk whenever this
    /// is above zero (and created, durably, before the first one is written).
    staged: std::sync::Mutex<u64>,
    /// Bytes staged since the last background write-out started.
    unsynced: AtomicU64,
    /// The running background write-out, if any.
    writeback: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The dirty marker was found at open.
    recovered: AtomicBool,
}

/// Staged bytes after which a background `syncfs` starts, so that the disk
/// writes while the importer is still sealing (publish then waits for little).
const WRITEBACK_EVERY: u64 = 64 * 1024 * 1024;

const DIRTY: &str = "dirty";
const TMP_TAG: &str = ".tmp.";

impl ChunkFiles {
    /// Opens `root` (creating it), removing temp files a crash left behind.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).ctx(|| format!("creating {}", root.display()))?;
        let files = ChunkFiles {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
            staged: std::sync::Mutex::new(0),
            unsynced: AtomicU64::new(0),
            writeback: std::sync::Mutex::new(None),
            recovered: AtomicBool::new(false),
        };
        if root.join(DIRTY).exists() {
            files.sweep()?;
            files.recovered.store(true, Ordering::SeqCst);
        }
        Ok(files)
    }

    /// Whether the last process stopped with chunks staged or published but
    /// not yet recorded (the dirty marker was there): the store then removes
    /// chunk files that no manifest references.
    pub fn recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }

    /// Removes every temp file, then the dirty marker.
    fn sweep(&self) -> Result<()> {
        for d in fs::read_dir(&self.root).ctx(|| format!("listing {}", self.root.display()))? {
            let d = d.ctx(|| format!("listing {}", self.root.display()))?;
            if !d.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(d.path()).ctx(|| format!("listing {}", d.path().display()))? {
                let f = f.ctx(|| format!("listing {}", d.path().display()))?;
                if f.file_name().to_string_lossy().contains(TMP_TAG) {
                    fs::remove_file(f.path())
                        .ctx(|| format!("removing stale temp file {}", f.path().display()))?;
                }
            }
        }
        fs::remove_file(self.root.join(DIRTY))
            .ctx(|| "removing the chunks/dirty marker".to_string())
    }

    fn staged_count(&self) -> std::sync::MutexGuard<'_, u64> {
        self.staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more temp file, first making the dirty marker durable if
    /// none is pending (other stagers wait on the lock meanwhile).
    fn begin_stage(&self) -> Result<()> {
        let mut n = self.staged_count();
        if *n == 0 {
            let p = self.root.join(DIRTY);
            File::create(&p)
                .and_then(|f| f.sync_all())
                .ctx(|| format!("creating {}", p.display()))?;
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .ctx(|| format!("syncing {}", self.root.display()))?;
        }
        *n += 1;
        Ok(())
    }

    /// `k` temp files are gone (published or removed); the marker goes with the last.
    fn settle(&self, k: u64) {
        let mut n = self.staged_count();
        *n = n.saturating_sub(k);
        if *n == 0 {
            // Nothing staged any more: a later crash leaves nothing to sweep.
            let _ = fs::remove_file(self.root.join(DIRTY));
        }
    }

    /// The chunk directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a chunk lives.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether a chunk file exists (its content is not checked).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// The size of a chunk file, if it exists.
    pub fn size(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Reads a chunk file (unchecked).
    pub fn read(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    /// Writes `bytes` to a temp file for `id`.
    pub fn stage(&self, id: ChunkId, bytes: &[u8]) -> Result<Staged> {
        self.begin_stage()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dest = self.path(&id);
        let tmp = dest.with_file_name(format!(
            "{}{TMP_TAG}{}.{n}",
            id.to_hex(),
            std::process::id()
        ));
        let write = |tmp: &Path| -> io::Result<()> {
            crate::failpoint::hit("chunks.stage")?;
            let mut f = match File::create(tmp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(tmp.parent().unwrap_or(&self.root))?;
                    File::create(tmp)?
                }
                r => r?,
            };
            f.write_all(bytes)
        };
        if let Err(e) = write(&tmp) {
            let _ = fs::remove_file(&tmp);
            self.settle(1);
            return Err(e).ctx(|| format!("writing {}", tmp.display()));
        }
        let before = self
            .unsynced
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if before + bytes.len() as u64 >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(Staged { id, tmp })
    }

    /// Drops staged chunks (an aborted import).
    pub fn discard(&self, staged: Vec<Staged>) {
        let n = staged.len() as u64;
        for s in staged {
            let _ = fs::remove_file(&s.tmp);
        }
        if n > 0 {
            self.settle(n);
        }
    }

    /// Starts a background `syncfs` unless one is running. Only a speed-up:
    /// durability still comes from the `syncfs` calls in [`ChunkFiles::publish`].
    fn start_writeback(&self) {
        let mut slot = self
            .writeback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.unsynced.store(0, Ordering::Relaxed);
        let root = self.root.clone();
        *slot = std::thread::Builder::new()
            .name("bbsync-writeback".into())
            .spawn(move || {
                if let Ok(dir) = File::open(&root) {
                    let _ = rustix::fs::syncfs(&dir);
                }
            })
            .ok();
    }

    fn join_writeback(&self) {
        let handle = self
            .writeback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn syncfs(&self) -> Result<()> {
        let dir = File::open(&self.root).ctx(|| format!("opening {}", self.root.display()))?;
        rustix::fs::syncfs(&dir)
            .map_err(io::Error::from)
            .ctx(|| format!("syncing the file system of {}", self.root.display()))
    }

    /// Makes staged chunks durable under their final names (see module docs).
    /// The dirty marker stays until the caller has recorded them and hands
    /// the returned [`Published`] to [`ChunkFiles::recorded`]: a crash in
    /// between leaves files that the next open collects.
    pub fn publish(&self, staged: Vec<Staged>) -> Result<Published> {
        let n = staged.len() as u64;
        if staged.is_empty() {
            return Ok(Published(0));
        }
        self.join_writeback();
        let r = (|| {
            crate::failpoint::hit("chunks.sync_staged")
                .ctx(|| format!("syncing {}", self.root.display()))?;
            self.syncfs()?;
            for s in &staged {
                let dest = self.path(&s.id);
                crate::failpoint::hit("chunks.rename")
                    .and_then(|()| fs::rename(&s.tmp, &dest))
                    .ctx(|| format!("renaming chunk into {}", dest.display()))?;
            }
            crate::failpoint::hit("chunks.sync_renamed")
                .ctx(|| format!("syncing {}", self.root.display()))?;
            self.syncfs()
        })();
        match r {
            Ok(()) => Ok(Published(n)),
            Err(e) => {
                for s in &staged {
                    let _ = fs::remove_file(&s.tmp);
                }
                // Renamed ones stay until the next open collects them.
                Err(e)
            }
        }
    }

    /// Published chunks are recorded in the database: they need no recovery.
    pub fn recorded(&self, p: Published) {
        // Abort only: the marker's removal has no failure to report.
        let _ = crate::failpoint::hit("chunks.recorded");
        if p.0 > 0 {
            self.settle(p.0);
        }
    }

    /// Writes one chunk durably right away, with nothing to record (tests,
    /// repair).
    pub fn put(&self, id: ChunkId, bytes: &[u8]) -> Result<()> {
        let s = self.stage(id, bytes)?;
        let p = self.publish(vec![s])?;
        self.recorded(p);
        Ok(())
    }

    /// Removes a chunk file; missing files are fine.
    pub fn remove(&self, id: &ChunkId) -> Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("removing chunk {}", id.short()))
            }
            _ => Ok(()),
        }
    }

    /// Every chunk file present, with its size. Files that are not named
    /// like chunks are returned as `Err(path)`.
    pub fn list(&self) -> Result<Vec<std::result::Result<(ChunkId, u64), PathBuf>>> {
        Ok(self
            .list_names()?
            .into_iter()
            .map(|r| r.map(|id| (id, self.size(&id).unwrap_or(0))))
            .collect())
    }

    /// Every chunk file present, by name only (no `stat` per file). Files
    /// that are not named like chunks are returned as `Err(path)`; temp
    /// files are skipped.
    pub fn list_names(&self) -> Result<Vec<std::result::Result<ChunkId, PathBuf>>> {
        let mut out = Vec::new();
        for d in fs::read_dir(&self.root).ctx(|| format!("listing {}", self.root.display()))? {
            let d = d.ctx(|| format!("listing {}", self.root.display()))?;
            let name = d.file_name();
            let name = name.to_string_lossy();
            if name == DIRTY {
                continue;
            }
            let is_dir = d.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if name.len() != 2 || !is_dir {
                out.push(Err(d.path()));
                continue;
            }
            for f in fs::read_dir(d.path()).ctx(|| format!("listing {}", d.path().display()))? {
                let f = f.ctx(|| format!("listing {}", d.path().display()))?;
                let fname = f.file_name();
                if fname.to_string_lossy().contains(TMP_TAG) {
                    continue; // in flight, or swept at the next open
                }
                match fname.to_str().and_then(|s| s.parse::<ChunkId>().ok()) {
                    Some(id) if id.to_hex()[..2] == *name => out.push(Ok(id)),
                    _ => out.push(Err(f.path())),
                }
            }
        }
        Ok(out)
    }
}
