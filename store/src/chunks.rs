//! Chunk files under `<data>/chunks/`, one file per chunk named by its id.
//!
//! Crash-safe write order (see `docs/format.md`): new chunks are written to
//! `chunks/tmp/` without an fsync each; [`ChunkFiles::publish`] then makes the
//! whole batch durable with one `syncfs`, renames every file to its final
//! name, and runs `syncfs` again so the renames are durable before the caller
//! records anything in the database. A crash leaves at worst temp files,
//! which [`ChunkFiles::open`] removes; a final name always holds a complete,
//! durable chunk.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use bbsync_protocol::ChunkId;

use crate::error::{Context, Result};

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
    tmp: PathBuf,
    counter: AtomicU64,
}

impl ChunkFiles {
    /// Opens `root` (creating it), removing temp files a crash left behind.
    pub fn open(root: &Path) -> Result<Self> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .ctx(|| format!("removing stale temp files in {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        Ok(ChunkFiles {
            root: root.to_path_buf(),
            tmp,
            counter: AtomicU64::new(0),
        })
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
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{n}", id.to_hex(), std::process::id()));
        let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .ctx(|| format!("writing {}", tmp.display()))?;
        Ok(Staged { id, tmp })
    }

    /// Drops staged chunks (an aborted import).
    pub fn discard(&self, staged: Vec<Staged>) {
        for s in staged {
            let _ = fs::remove_file(&s.tmp);
        }
    }

    fn syncfs(&self) -> Result<()> {
        let dir = File::open(&self.root).ctx(|| format!("opening {}", self.root.display()))?;
        rustix::fs::syncfs(&dir)
            .map_err(io::Error::from)
            .ctx(|| format!("syncing the file system of {}", self.root.display()))
    }

    /// Makes staged chunks durable under their final names (see module docs).
    pub fn publish(&self, staged: Vec<Staged>) -> Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        self.syncfs()?;
        for s in &staged {
            let dest = self.path(&s.id);
            let parent = dest.parent().unwrap_or(&self.root);
            if !parent.is_dir() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            fs::rename(&s.tmp, &dest).ctx(|| format!("renaming chunk into {}", dest.display()))?;
        }
        self.syncfs()
    }

    /// Writes one chunk durably right away (small, rare writes).
    pub fn put(&self, id: ChunkId, bytes: &[u8]) -> Result<()> {
        let s = self.stage(id, bytes)?;
        self.publish(vec![s])
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
        let mut out = Vec::new();
        for d in fs::read_dir(&self.root).ctx(|| format!("listing {}", self.root.display()))? {
            let d = d.ctx(|| format!("listing {}", self.root.display()))?;
            let name = d.file_name();
            let name = name.to_string_lossy();
            if name == "tmp" {
                continue;
            }
            if name.len() != 2 || !d.path().is_dir() {
                out.push(Err(d.path()));
                continue;
            }
            for f in fs::read_dir(d.path()).ctx(|| format!("listing {}", d.path().display()))? {
                let f = f.ctx(|| format!("listing {}", d.path().display()))?;
                let fname = f.file_name();
                match fname.to_str().and_then(|s| s.parse::<ChunkId>().ok()) {
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
