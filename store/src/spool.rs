//! A spool: records produced during a long operation, read back sorted by
//! a 16-byte key once it is done. They are kept in memory up to
//! [`SPOOL_MEM`] bytes, and beyond that appended to a temp file under
//! `<data>/tmp/` (removed when the spool is dropped; one left by a crash is
//! removed by the next open); only each record's key and place stay in
//! memory (32 bytes). An import spools the database writes of its objects,
//! so that its memory does not grow with the number of objects while
//! nothing becomes visible before every source is sealed, and commits them
//! in object-id order, so that sled's B-tree is filled page after page
//! instead of one random page per object.

use std::{
    fs::{self, File, OpenOptions},
    marker::PhantomData,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use bbsync_protocol::encoding;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Context, Result, StoreError};

/// Bytes of records kept in memory before the spool goes to a file.
pub const SPOOL_MEM: usize = 8 * 1024 * 1024;
/// Largest record (an object write holds a manifest of at most 32 MiB).
const MAX_RECORD: usize = 64 * 1024 * 1024;
/// Name prefix of spool files under `<data>/tmp/`.
pub const SPOOL_PREFIX: &str = "spool-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Records of type `T` with their sort keys.
pub(crate) struct Spool<T> {
    dir: PathBuf,
    /// Records after `file_len`.
    mem: Vec<u8>,
    file: Option<(PathBuf, File)>,
    file_len: u64,
    /// Per record: its key, where it starts, its length.
    keys: Vec<([u8; 16], u64, u32)>,
    _t: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    /// An empty spool whose file (if it needs one) goes into `dir`.
    pub fn new(dir: &Path) -> Self {
        Spool {
            dir: dir.to_path_buf(),
            mem: Vec::new(),
            file: None,
            file_len: 0,
            keys: Vec::new(),
            _t: PhantomData,
        }
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Appends a record with its sort key.
    pub fn push(&mut self, key: [u8; 16], item: &T) -> Result<()> {
        self.push_encoded(key, encoding::encode(item))
    }

    /// Appends a record already encoded (by `encoding::encode` of a `T`,
    /// on another thread).
    pub fn push_encoded(&mut self, key: [u8; 16], bytes: Vec<u8>) -> Result<()> {
        if bytes.len() > MAX_RECORD {
            return Err(StoreError::Invalid(format!(
                "spool record of {} bytes",
                bytes.len()
            )));
        }
        // (Spilled before it would outgrow its one allocation.)
        if !self.mem.is_empty() && self.mem.len() + bytes.len() > SPOOL_MEM {
            self.spill()?;
        }
        if self.mem.capacity() == 0 {
            self.mem.reserve_exact(SPOOL_MEM.max(bytes.len()));
        }
        let pos = self.file_len + self.mem.len() as u64;
        self.keys.push((key, pos, bytes.len() as u32));
        self.mem.extend_from_slice(&bytes);
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        if self.file.is_none() {
            fs::create_dir_all(&self.dir).ctx(|| format!("creating {}", self.dir.display()))?;
            let path = self.dir.join(format!(
                "{SPOOL_PREFIX}{}-{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .ctx(|| format!("creating {}", path.display()))?;
            self.file = Some((path, f));
        }
        if let Some((path, f)) = &self.file {
            f.write_all_at(&self.mem, self.file_len)
                .ctx(|| format!("writing {}", path.display()))?;
        }
        self.file_len += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// Keeps only the records whose keys `keep` accepts (the others stay
    /// in the file, unread).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8; 16]) -> bool) {
        self.keys.retain(|(k, _, _)| keep(k));
    }

    /// The records sorted by key (records with equal keys in the order
    /// pushed).
    pub fn drain_sorted(mut self) -> Drain<T> {
        let mut keys = std::mem::take(&mut self.keys);
        keys.sort_by_key(|a| a.0);
        Drain {
            keys: keys.into_iter(),
            file: self.file.take(),
            file_len: self.file_len,
            mem: std::mem::take(&mut self.mem),
            _t: PhantomData,
        }
    }
}

impl<T> Drop for Spool<T> {
    fn drop(&mut self) {
        if let Some((path, _)) = self.file.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// The records of a spool, read back in key order.
pub(crate) struct Drain<T> {
    keys: std::vec::IntoIter<([u8; 16], u64, u32)>,
    file: Option<(PathBuf, File)>,
    file_len: u64,
    mem: Vec<u8>,
    _t: PhantomData<T>,
}

impl<T: DeserializeOwned> Drain<T> {
    fn read(&self, pos: u64, len: u32) -> Result<T> {
        let bytes = if pos >= self.file_len {
            let start = (pos - self.file_len) as usize;
            self.mem
                .get(start..start + len as usize)
                .ok_or_else(|| StoreError::Corrupt("spool record out of place".into()))?
                .to_vec()
        } else {
            let (path, f) = self
                .file
                .as_ref()
                .ok_or_else(|| StoreError::Corrupt("spool file missing".into()))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, pos)
                .ctx(|| format!("reading {}", path.display()))?;
            buf
        };
        encoding::decode("spool record", &bytes, MAX_RECORD)
            .map_err(|e| StoreError::Corrupt(format!("spool record: {e}")))
    }
}

impl<T: DeserializeOwned> Iterator for Drain<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        let (_, pos, len) = self.keys.next()?;
        Some(self.read(pos, len))
    }
}

impl<T> Drop for Drain<T> {
    fn drop(&mut self) {
        if let Some((path, _)) = self.file.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Removes spool files a crashed process left in `dir`.
pub(crate) fn sweep(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(SPOOL_PREFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_come_back_sorted_from_memory_and_file() {
        let t = tempfile::tempdir().unwrap();
        let mut s: Spool<(u64, Vec<u8>)> = Spool::new(t.path());
        let big = vec![7u8; 300_000];
        for i in 0..100u64 {
            // Keys in reverse order of pushing.
            let mut k = [0u8; 16];
            k[8..].copy_from_slice(&(1000 - i).to_be_bytes());
            s.push(k, &(i, big.clone())).unwrap();
        }
        assert_eq!(s.len(), 100);
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            1,
            "spilled to a file"
        );
        let back: Vec<(u64, Vec<u8>)> = s.drain_sorted().map(Result::unwrap).collect();
        assert_eq!(back.len(), 100);
        assert!(
            back.iter()
                .enumerate()
                .all(|(j, (n, b))| *n == 99 - j as u64 && *b == big)
        );
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0, "file removed");
        // Dropped unread: the file goes too.
        let mut s: Spool<Vec<u8>> = Spool::new(t.path());
        for _ in 0..40 {
            s.push([0; 16], &big).unwrap();
        }
        drop(s);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        // Memory only.
        let mut s: Spool<u32> = Spool::new(t.path());
        s.push([2; 16], &2).unwrap();
        s.push([1; 16], &1).unwrap();
        let back: Vec<u32> = s.drain_sorted().map(Result::unwrap).collect();
        assert_eq!(back, [1, 2]);
    }
}
