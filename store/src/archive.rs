//! Deterministic directory archive: how a directory becomes one object's
//! plaintext, so that export reproduces the tree byte for byte.
//!
//! ```text
//! archive = magic "BBDIR\0" || version u16 BE (1) || entry* || 0x00
//! entry   = 0x01 (dir)  || path_len u16 BE || path
//!         | 0x02 (file) || path_len u16 BE || path || size u64 BE || bytes
//! ```
//! Paths are relative, UTF-8, `/`-separated, without empty, `.` or `..`
//! components. Entries come depth first with siblings sorted by their name's
//! bytes; every directory (empty ones included) has an entry before its
//! children. Nothing else (modes, times, owners) is recorded, so the same
//! tree always gives the same bytes.

use std::{
    cmp::Ordering,
    fs::{self, File},
    io::{self, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::error::{Context, Result, StoreError};

/// Archive magic.
pub const MAGIC: &[u8; 6] = b"BBDIR\0";
/// Archive format version.
pub const VERSION: u16 = 1;
const TAG_END: u8 = 0;
const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
const MAX_PATH: usize = 4096;

/// One entry found by [`walk`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative path with `/` separators.
    pub path: String,
    /// `None` for a directory, `Some(size)` for a file.
    pub size: Option<u64>,
}

/// The result of walking a directory: entries in archive order, total file
/// bytes, and a digest of the file metadata seen (for change detection).
#[derive(Debug)]
pub struct Walk {
    /// Entries in archive order.
    pub entries: Vec<Entry>,
    /// Sum of file sizes.
    pub file_bytes: u64,
    /// SHA-256 over (path, type, size, mtime, ctime, inode) of every entry
    /// (and of the `-wal`/`-journal` companions of its databases).
    pub stat_digest: [u8; 32],
    /// Entries read from another file than their own: the snapshots of the
    /// SQLite databases among them (see [`crate::sqlite`]), by entry path.
    pub substitutes: std::collections::BTreeMap<String, PathBuf>,
}

/// Hashes the metadata that tells whether a file may have changed.
pub fn stat_hash(h: &mut Sha256, path: &str, md: &fs::Metadata) {
    h.update((path.len() as u64).to_be_bytes());
    h.update(path.as_bytes());
    h.update([u8::from(md.is_dir())]);
    h.update(md.len().to_be_bytes());
    h.update(md.mtime().to_be_bytes());
    h.update(md.mtime_nsec().to_be_bytes());
    h.update(md.ctime().to_be_bytes());
    h.update(md.ctime_nsec().to_be_bytes());
    h.update(md.ino().to_be_bytes());
}

/// Checks a relative path for the archive and for export.
pub fn check_rel_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("path empty or too long".into());
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.contains('\0') {
            return Err(format!("bad path component in {path:?}"));
        }
    }
    Ok(())
}

/// Lists a directory tree in archive order. Symlinks and special files are
/// refused, as are names that are not UTF-8.
pub fn walk(root: &Path) -> Result<Walk> {
    let mut w = Walk {
        entries: Vec::new(),
        file_bytes: 0,
        stat_digest: [0; 32],
        substitutes: Default::default(),
    };
    let mut h = Sha256::new();
    walk_into(root, "", &mut w, &mut h)?;
    w.stat_digest = h.finalize().into();
    Ok(w)
}

/// Sorted children of a directory: (name, path, metadata without following links).
pub fn sorted_children(dir: &Path) -> Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let rd = fs::read_dir(dir).map_err(|e| StoreError::Unreadable {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut kids = Vec::new();
    for d in rd {
        let d = d.ctx(|| format!("listing {}", dir.display()))?;
        let path = d.path();
        let name = d
            .file_name()
            .into_string()
            .map_err(|_| StoreError::BadTree {
                path: path.clone(),
                reason: "file name is not valid UTF-8".into(),
            })?;
        let md = fs::symlink_metadata(&path)
            .ctx(|| format!("reading metadata of {}", path.display()))?;
        kids.push((name, path, md));
    }
    kids.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(kids)
}

fn walk_into(dir: &Path, prefix: &str, w: &mut Walk, h: &mut Sha256) -> Result<()> {
    // A database's -wal/-shm/-journal files are part of it, not entries.
    let (kids, companions) = crate::sqlite::split_companions(sorted_children(dir)?);
    for (name, path, md) in kids {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        check_rel_path(&rel).map_err(|reason| StoreError::BadTree {
            path: path.clone(),
            reason,
        })?;
        stat_hash(h, &rel, &md);
        for (cname, cmd) in companions.get(&name).into_iter().flatten() {
            let crel = if prefix.is_empty() {
                cname.clone()
            } else {
                format!("{prefix}/{cname}")
            };
            stat_hash(h, &crel, cmd);
        }
        let ft = md.file_type();
        if ft.is_dir() {
            w.entries.push(Entry {
                path: rel.clone(),
                size: None,
            });
            walk_into(&path, &rel, w, h)?;
        } else if ft.is_file() {
            w.file_bytes += md.len();
            w.entries.push(Entry {
                path: rel,
                size: Some(md.len()),
            });
        } else {
            return Err(StoreError::BadTree {
                path,
                reason: "symlinks and special files are not supported".into(),
            });
        }
    }
    Ok(())
}

fn entry_header(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 2 + e.path.len() + 8);
    b.push(if e.size.is_some() { TAG_FILE } else { TAG_DIR });
    b.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
    b.extend_from_slice(e.path.as_bytes());
    if let Some(size) = e.size {
        b.extend_from_slice(&size.to_be_bytes());
    }
    b
}

/// Exact archive length of a walk.
pub fn archive_len(w: &Walk) -> u64 {
    let mut n = (MAGIC.len() + 2 + 1) as u64;
    for e in &w.entries {
        n += 1 + 2 + e.path.len() as u64 + e.size.map_or(0, |s| 8 + s);
    }
    n
}

/// Streams the archive of a walked directory. A file whose size differs from
/// the walk is reported as [`StoreError::ChangedDuringImport`] (via an
/// `io::Error` carrying it in `other`).
pub struct ArchiveReader {
    root: PathBuf,
    entries: std::vec::IntoIter<Entry>,
    buf: Vec<u8>,
    pos: usize,
    file: Option<(File, u64, PathBuf)>,
    done: bool,
    substitutes: std::collections::BTreeMap<String, PathBuf>,
}

impl ArchiveReader {
    /// Starts streaming `walk` of `root`.
    pub fn new(root: &Path, walk: Walk) -> Self {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&VERSION.to_be_bytes());
        ArchiveReader {
            root: root.to_path_buf(),
            entries: walk.entries.into_iter(),
            buf,
            pos: 0,
            file: None,
            done: false,
            substitutes: walk.substitutes,
        }
    }
}

/// Marker error message for a file that changed size while being read.
pub const CHANGED_MARKER: &str = "bbsync: file changed during import";

fn changed(path: &Path) -> io::Error {
    io::Error::other(format!("{CHANGED_MARKER}: {}", path.display()))
}

impl Read for ArchiveReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if let Some((f, remaining, path)) = &mut self.file {
                if *remaining > 0 {
                    let want = out.len().min(*remaining as usize);
                    let n = f.read(&mut out[..want])?;
                    if n == 0 {
                        return Err(changed(path));
                    }
                    *remaining -= n as u64;
                    return Ok(n);
                }
                let mut probe = [0u8; 1];
                if f.read(&mut probe)? != 0 {
                    return Err(changed(path));
                }
                self.file = None;
            }
            if self.done {
                return Ok(0);
            }
            self.buf.clear();
            self.pos = 0;
            match self.entries.next() {
                Some(e) => {
                    self.buf = entry_header(&e);
                    if e.size.is_some() {
                        let p = match self.substitutes.get(&e.path) {
                            Some(snapshot) => snapshot.clone(),
                            None => self.root.join(&e.path),
                        };
                        let f = File::open(&p)?;
                        self.file = Some((f, e.size.unwrap_or(0), p));
                    }
                }
                None => {
                    self.buf.push(TAG_END);
                    self.done = true;
                }
            }
        }
    }
}

/// Reads a single file, failing if its length differs from `expected`.
pub struct ExactFile {
    file: File,
    remaining: u64,
    path: PathBuf,
}

impl ExactFile {
    /// Opens `path` expecting `len` bytes.
    pub fn open(path: &Path, len: u64) -> io::Result<Self> {
        Ok(ExactFile {
            file: File::open(path)?,
            remaining: len,
            path: path.to_path_buf(),
        })
    }
}

impl Read for ExactFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return if self.file.read(&mut probe)? != 0 {
                Err(changed(&self.path))
            } else {
                Ok(0)
            };
        }
        let want = out.len().min(self.remaining as usize);
        let n = self.file.read(&mut out[..want])?;
        if n == 0 {
            return Err(changed(&self.path));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn path_order(a: &str, b: &str) -> Ordering {
    a.split('/')
        .map(str::as_bytes)
        .cmp(b.split('/').map(str::as_bytes))
}

enum State {
    Magic,
    Tag,
    PathLen(u8),
    Path(u8, usize),
    Size(String),
    Data(u64),
    End,
}

/// Writes an archive's entries under `dest` as bytes are fed in, checking
/// every path and the entry order.
pub struct Extractor {
    dest: PathBuf,
    state: State,
    acc: Vec<u8>,
    last: Option<String>,
    file: Option<(io::BufWriter<File>, PathBuf)>,
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt(format!("directory archive: {}", reason.into()))
}

impl Extractor {
    /// Extracts into `dest`, which must exist and be empty.
    pub fn new(dest: &Path) -> Self {
        Extractor {
            dest: dest.to_path_buf(),
            state: State::Magic,
            acc: Vec::new(),
            last: None,
            file: None,
            files: 0,
            dirs: 0,
        }
    }

    fn need(&mut self, data: &mut &[u8], n: usize) -> bool {
        let take = (n - self.acc.len()).min(data.len());
        self.acc.extend_from_slice(&data[..take]);
        *data = &data[take..];
        self.acc.len() == n
    }

    fn begin_entry(&mut self, tag: u8, path: String) -> Result<()> {
        check_rel_path(&path).map_err(bad)?;
        if let Some(last) = &self.last
            && path_order(last, &path) != Ordering::Less
        {
            return Err(bad(format!("entry {path:?} out of order")));
        }
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.dest.join(parent).is_dir()
        {
            return Err(bad(format!("entry {path:?} before its directory")));
        }
        self.last = Some(path.clone());
        let full = self.dest.join(&path);
        if tag == TAG_DIR {
            fs::create_dir(&full).ctx(|| format!("creating {}", full.display()))?;
            self.dirs += 1;
            self.state = State::Tag;
        } else {
            self.state = State::Size(path);
        }
        Ok(())
    }

    /// Feeds the next plaintext bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match std::mem::replace(&mut self.state, State::End) {
                State::Magic => {
                    if self.need(&mut data, MAGIC.len() + 2) {
                        if &self.acc[..6] != MAGIC || self.acc[6..8] != VERSION.to_be_bytes() {
                            return Err(bad("bad magic or version"));
                        }
                        self.acc.clear();
                        self.state = State::Tag;
                    } else {
                        self.state = State::Magic;
                    }
                }
                State::Tag => {
                    let tag = data[0];
                    data = &data[1..];
                    self.state = match tag {
                        TAG_END => State::End,
                        TAG_DIR | TAG_FILE => State::PathLen(tag),
                        t => return Err(bad(format!("unknown entry tag {t}"))),
                    };
                }
                State::PathLen(tag) => {
                    if self.need(&mut data, 2) {
                        let n = u16::from_be_bytes([self.acc[0], self.acc[1]]) as usize;
                        self.acc.clear();
                        if n == 0 || n > MAX_PATH {
                            return Err(bad("path length out of range"));
                        }
                        self.state = State::Path(tag, n);
                    } else {
                        self.state = State::PathLen(tag);
                    }
                }
                State::Path(tag, n) => {
                    if self.need(&mut data, n) {
                        let path = String::from_utf8(std::mem::take(&mut self.acc))
                            .map_err(|_| bad("path is not UTF-8"))?;
                        self.begin_entry(tag, path)?;
                    } else {
                        self.state = State::Path(tag, n);
                    }
                }
                State::Size(path) => {
                    if self.need(&mut data, 8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.acc);
                        self.acc.clear();
                        let size = u64::from_be_bytes(b);
                        let full = self.dest.join(&path);
                        let f = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&full)
                            .ctx(|| format!("creating {}", full.display()))?;
                        self.files += 1;
                        self.file = Some((io::BufWriter::with_capacity(256 * 1024, f), full));
                        self.state = State::Data(size);
                    } else {
                        self.state = State::Size(path);
                    }
                }
                State::Data(remaining) => {
                    let take = (remaining.min(data.len() as u64)) as usize;
                    if let Some((f, p)) = &mut self.file {
                        f.write_all(&data[..take])
                            .ctx(|| format!("writing {}", p.display()))?;
                    }
                    data = &data[take..];
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        self.close_file()?;
                        State::Tag
                    } else {
                        State::Data(left)
                    };
                }
                State::End => return Err(bad("bytes after the end marker")),
            }
        }
        // A zero-length file completes as soon as its size is read.
        if let State::Data(0) = self.state {
            self.close_file()?;
            self.state = State::Tag;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some((mut f, p)) = self.file.take() {
            f.flush().ctx(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }

    /// Checks that the archive ended properly.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        if let State::Data(0) = self.state {
            self.close_file()?;
            self.state = State::Tag;
        }
        match self.state {
            State::End => Ok((self.files, self.dirs)),
            _ => Err(bad("truncated")),
        }
    }
}
