//! Deterministic directory archive: how a directory becomes one object's
//! plaintext, so that export reproduces the tree byte for byte.
//!
//! ```text
//! archive = magic "BBDIR\0" || version u16 BE (2) || entry* || 0x00
//! entry   = 0x01 (dir)  || path_len u16 BE || path || mode u16 BE
//!         | 0x02 (file) || path_len u16 BE || path || mode u16 BE || size u64 BE || bytes
//! ```
//! Paths are relative, UTF-8, `/`-separated, without empty, `.` or `..`
//! components. Entries come depth first with siblings sorted by their name's
//! bytes; every directory (empty ones included) has an entry before its
//! children. `mode` holds the permission bits (`0o777` at most: setuid,
//! setgid and sticky are never recorded, as modes come from a peer); a
//! directory is always written with its owner's `rwx` added, so that bbsync
//! can fill, replace and remove it. Nothing else (times, owners) is
//! recorded, so the same tree always gives the same bytes.
//!
//! Version 1 (written before modes were kept) has no `mode` field; it is
//! still extracted, its files and directories created with the umask.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    ffi::OsStr,
    fs::{self, File},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::error::{Context, Result, StoreError};

/// Archive magic.
pub const MAGIC: &[u8; 6] = b"BBDIR\0";
/// Archive format version written (2: with modes).
pub const VERSION: u16 = 2;
/// The archive format without modes, still read.
pub const VERSION_1: u16 = 1;
/// The permission bits kept (see the module docs).
pub const MODE_BITS: u32 = bbsync_protocol::manifest::MODE_BITS;
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
    /// What the walk saw there (device, inode, type, size): the file that
    /// is read later must be this one.
    pub meta: Meta,
}

/// The result of walking a directory: entries in archive order, total file
/// bytes, and a digest of the file metadata seen (for change detection).
#[derive(Debug)]
pub struct Walk {
    /// Entries in archive order.
    pub entries: Vec<Entry>,
    /// Sum of file sizes.
    pub file_bytes: u64,
    /// SHA-256 over the directory's own permission bits, then (path, type,
    /// size, mtime, ctime, inode) of every entry (and of the
    /// `-wal`/`-journal` companions of its databases).
    pub stat_digest: [u8; 32],
    /// Entries read from another file than their own: the snapshots of the
    /// SQLite databases among them (see [`crate::sqlite`]), by entry path,
    /// each opened through its own anchor (below `<data>/tmp`, checked
    /// against the snapshot's metadata).
    pub substitutes: BTreeMap<String, Anchor>,
}

/// The type of a directory entry, as seen without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

impl MetaKind {
    fn of(mode: u32) -> MetaKind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => MetaKind::File,
            FileType::Directory => MetaKind::Dir,
            FileType::Symlink => MetaKind::Symlink,
            _ => MetaKind::Special,
        }
    }

    /// "a symlink", "a directory", ... (for error messages).
    pub fn article(self) -> &'static str {
        match self {
            MetaKind::File => "a regular file",
            MetaKind::Dir => "a directory",
            MetaKind::Symlink => "a symlink",
            MetaKind::Special => "a special file (FIFO, socket or device)",
        }
    }
}

/// File metadata as `lstat`/`fstat` give it (never through a symlink):
/// what the walk records and what an open is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Type.
    pub kind: MetaKind,
    /// Size in bytes.
    pub size: u64,
    /// The mode's permission, setuid, setgid and sticky bits (`0o7777`).
    pub mode: u32,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Meta {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
    fn of(st: &rustix::fs::Stat) -> Meta {
        Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            kind: MetaKind::of(st.st_mode as u32),
            size: st.st_size as u64,
            mode: (st.st_mode as u32) & 0o7777,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as i64,
        }
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind == MetaKind::Dir
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind == MetaKind::File
    }

    /// The permission bits that are kept ([`MODE_BITS`]).
    pub fn perm(&self) -> u32 {
        self.mode & MODE_BITS
    }

    /// The modification time.
    #[allow(clippy::cast_sign_loss)]
    pub fn modified(&self) -> SystemTime {
        let nanos = Duration::from_nanos(self.mtime_nsec.clamp(0, 999_999_999) as u64);
        if self.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.mtime as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.mtime.unsigned_abs()) + nanos
        }
    }
}

/// The metadata of `path` itself (`lstat`: a symlink is not followed).
pub fn lstat(path: &Path) -> io::Result<Meta> {
    rustix::fs::lstat(path)
        .map(|st| Meta::of(&st))
        .map_err(io::Error::from)
}

/// Hashes the metadata that tells whether a file may have changed.
pub fn stat_hash(h: &mut Sha256, path: &str, md: &Meta) {
    h.update((path.len() as u64).to_be_bytes());
    h.update(path.as_bytes());
    h.update([u8::from(md.is_dir())]);
    h.update(md.size.to_be_bytes());
    h.update(md.mtime.to_be_bytes());
    h.update(md.mtime_nsec.to_be_bytes());
    h.update(md.ctime.to_be_bytes());
    h.update(md.ctime_nsec.to_be_bytes());
    h.update(md.ino.to_be_bytes());
}

fn replaced(path: PathBuf, what: impl Into<String>) -> StoreError {
    StoreError::ReplacedDuringImport {
        path,
        what: what.into(),
    }
}

/// What is at `name` in `dir` now, for the error of an open that failed or
/// found something else than the walk did.
fn what_is_there(dir: BorrowedFd<'_>, name: &str, path: &Path) -> StoreError {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => replaced(
            path.to_path_buf(),
            format!("was replaced by {}", Meta::of(&st).kind.article()),
        ),
        Err(rustix::io::Errno::NOENT) => replaced(path.to_path_buf(), "disappeared".to_string()),
        Err(e) => StoreError::Unreadable {
            path: path.to_path_buf(),
            reason: io::Error::from(e).to_string(),
        },
    }
}

/// An open directory of a tree being imported. Everything below it is
/// reached through its file descriptor, one component at a time, with
/// `O_NOFOLLOW`: a symlink swapped in anywhere below is never followed,
/// whenever it appears.
#[derive(Debug, Clone)]
pub struct TreeDir {
    fd: Arc<OwnedFd>,
    /// Shared by its clones: every file a tree import will read holds one
    /// (in its anchor), 200,000 of them in a large import.
    path: Arc<Path>,
}

/// A child of a [`TreeDir`]: its name, its path (for messages) and its
/// metadata (not following symlinks).
#[derive(Debug, Clone)]
pub struct Child {
    /// The name (UTF-8).
    pub name: String,
    /// The full path, for messages.
    pub path: PathBuf,
    /// What `lstat` said.
    pub meta: Meta,
}

impl TreeDir {
    /// Opens a directory the operator named (the path is followed as given).
    pub fn open(path: &Path) -> Result<TreeDir> {
        Self::open_io(path).map_err(|e| StoreError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// [`TreeDir::open`] with the OS error as it is (its kind decides,
    /// never its text).
    pub(crate) fn open_io(path: &Path) -> io::Result<TreeDir> {
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(TreeDir {
            fd: Arc::new(fd),
            path: path.into(),
        })
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The child `name` as it is now (not following a symlink).
    pub fn child(&self, name: &str) -> Result<Child> {
        let path = self.path.join(name);
        let st = rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)
            .ctx(|| format!("reading metadata of {}", path.display()))?;
        Ok(Child {
            name: name.to_string(),
            path,
            meta: Meta::of(&st),
        })
    }

    /// The child `name` as it is now, or `None` if there is none (not
    /// following a symlink).
    pub fn child_if_exists(&self, name: &str) -> Result<Option<Child>> {
        let path = self.path.join(name);
        match rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Child {
                name: name.to_string(),
                path,
                meta: Meta::of(&st),
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => {
                Err(io::Error::from(e)).ctx(|| format!("reading metadata of {}", path.display()))
            }
        }
    }

    /// Its metadata now.
    pub fn meta(&self) -> Result<Meta> {
        rustix::fs::fstat(self.fd.as_fd())
            .map(|st| Meta::of(&st))
            .map_err(|e| StoreError::Unreadable {
                path: self.path.to_path_buf(),
                reason: io::Error::from(e).to_string(),
            })
    }

    /// The children, sorted by the bytes of their names; names must be UTF-8.
    pub fn children(&self) -> Result<Vec<Child>> {
        let unreadable = |e: rustix::io::Errno| StoreError::Unreadable {
            path: self.path.to_path_buf(),
            reason: io::Error::from(e).to_string(),
        };
        let dir = rustix::fs::Dir::read_from(self.fd.as_fd()).map_err(unreadable)?;
        let mut kids = Vec::new();
        for d in dir {
            let d = d.map_err(unreadable)?;
            let bytes = d.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let path = self.path.join(OsStr::from_bytes(bytes));
            let name = std::str::from_utf8(bytes).map_err(|_| StoreError::BadTree {
                path: path.clone(),
                reason: "file name is not valid UTF-8".into(),
            })?;
            // One removed between the listing and its stat (a SQLite
            // rollback journal comes and goes with every transaction) is not
            // in the directory any more, as if listed a moment later.
            match self.child_if_exists(name)? {
                Some(c) => kids.push(c),
                None => {
                    tracing::debug!(path = %path.display(), "vanished while the directory was read")
                }
            }
        }
        kids.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(kids)
    }

    /// Opens the child directory `c` (listed by [`TreeDir::children`]),
    /// refusing a symlink and anything but the directory that was listed.
    pub fn subdir(&self, c: &Child) -> Result<TreeDir> {
        let fd = open_beneath(self.fd.as_fd(), &self.path, &c.name, &c.meta, true)?;
        Ok(TreeDir {
            fd: Arc::new(fd),
            path: c.path.as_path().into(),
        })
    }

    /// Opens the file at `rel` below this directory, which must be the
    /// regular file `expect` describes (same device, inode and size).
    pub fn open_file(&self, rel: &str, expect: &Meta) -> Result<File> {
        open_beneath(self.fd.as_fd(), &self.path, rel, expect, true).map(File::from)
    }

    /// Like [`TreeDir::open_file`] for a file that may change size while it
    /// is open (a live SQLite database, which is read through a snapshot):
    /// the same device, inode and type, whatever its size now.
    pub fn open_live_file(&self, rel: &str, expect: &Meta) -> Result<File> {
        open_beneath(self.fd.as_fd(), &self.path, rel, expect, false).map(File::from)
    }

    /// An anchor for `rel` below this directory (what an import source keeps
    /// until it is read).
    pub fn anchor(&self, rel: &str, meta: Meta) -> Anchor {
        Anchor {
            base: self.clone(),
            rel: rel.to_string(),
            meta,
        }
    }
}

impl AsFd for TreeDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Where an import source is and what it was when the tree was walked: a
/// directory descriptor, a relative path below it and the walked metadata.
/// Opening it never follows a symlink and checks that the same file (or
/// directory) is still there.
#[derive(Debug, Clone)]
pub struct Anchor {
    base: TreeDir,
    rel: String,
    meta: Meta,
}

impl Anchor {
    /// The walked metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Opens the regular file the walk saw.
    pub fn open_file(&self) -> Result<File> {
        self.base.open_file(&self.rel, &self.meta)
    }

    /// The full path, for messages.
    pub fn path(&self) -> PathBuf {
        self.base.path.join(&self.rel)
    }

    /// Opens the regular file the walk saw, whatever its size now (see
    /// [`TreeDir::open_live_file`]).
    pub fn open_live_file(&self) -> Result<File> {
        self.base.open_live_file(&self.rel, &self.meta)
    }

    /// Opens the directory that holds the anchored file (each component
    /// below the base with `O_NOFOLLOW`), then the file in it, which must be
    /// the one the walk saw, whatever its size now (a live database, see
    /// [`TreeDir::open_live_file`]). Returns the directory, the file's name
    /// in it and the open file.
    pub fn open_in_parent(&self) -> Result<(TreeDir, String, File)> {
        let (dir, name) = match self.rel.rsplit_once('/') {
            None => (self.base.clone(), self.rel.as_str()),
            Some((parent, name)) => {
                let fd = open_dirs(self.base.fd.as_fd(), &self.base.path, parent)?;
                (
                    TreeDir {
                        fd: Arc::new(fd),
                        path: self.base.path.join(parent).into(),
                    },
                    name,
                )
            }
        };
        let file = dir.open_live_file(name, &self.meta)?;
        Ok((dir, name.to_string(), file))
    }

    /// Opens the directory the walk saw.
    pub fn open_dir(&self) -> Result<TreeDir> {
        let fd = open_beneath(
            self.base.fd.as_fd(),
            &self.base.path,
            &self.rel,
            &self.meta,
            true,
        )?;
        Ok(TreeDir {
            fd: Arc::new(fd),
            path: self.base.path.join(&self.rel).into(),
        })
    }
}

/// Opens the directory `rel` below `base` one component at a time, each
/// with `O_NOFOLLOW | O_DIRECTORY` (a symlink or a file swapped in is
/// reported as [`StoreError::ReplacedDuringImport`]).
fn open_dirs(base: BorrowedFd<'_>, base_path: &Path, rel: &str) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur: Option<OwnedFd> = None;
    let mut path = base_path.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        let at = cur.as_ref().map_or(base, |f| f.as_fd());
        let fd = match rustix::fs::openat(at, part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {
                return Err(what_is_there(at, part, &path));
            }
            Err(e) => {
                return Err(StoreError::Unreadable {
                    path,
                    reason: io::Error::from(e).to_string(),
                });
            }
        };
        cur = Some(fd);
    }
    cur.ok_or_else(|| StoreError::Invalid(format!("empty path below {}", base_path.display())))
}

/// Opens `rel` below `base` one component at a time, each with
/// `O_NOFOLLOW` (directories also with `O_DIRECTORY`; the last one, if a
/// file, with `O_NONBLOCK` so that a FIFO swapped in cannot block), then
/// checks that what was opened is what the walk recorded: same type,
/// device and inode ([`StoreError::ReplacedDuringImport`] otherwise), and
/// for a file, with `same_size`, the same size
/// ([`StoreError::ChangedDuringImport`]).
fn open_beneath(
    base: BorrowedFd<'_>,
    base_path: &Path,
    rel: &str,
    expect: &Meta,
    same_size: bool,
) -> Result<OwnedFd> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut parts = rel.split('/').peekable();
    let mut cur: Option<OwnedFd> = None;
    let mut path = base_path.to_path_buf();
    while let Some(part) = parts.next() {
        path.push(part);
        let last = parts.peek().is_none();
        let flags = if !last || expect.is_dir() {
            dir_flags
        } else {
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
        };
        let at = cur.as_ref().map_or(base, |f| f.as_fd());
        let fd = match rustix::fs::openat(at, part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {
                return Err(what_is_there(at, part, &path));
            }
            Err(e) => {
                return Err(StoreError::Unreadable {
                    path,
                    reason: io::Error::from(e).to_string(),
                });
            }
        };
        cur = Some(fd);
    }
    let fd = cur
        .ok_or_else(|| StoreError::Invalid(format!("empty path below {}", base_path.display())))?;
    let now = rustix::fs::fstat(fd.as_fd())
        .map(|st| Meta::of(&st))
        .map_err(|e| StoreError::Unreadable {
            path: path.clone(),
            reason: io::Error::from(e).to_string(),
        })?;
    if now.kind != expect.kind {
        return Err(replaced(
            path,
            format!("was replaced by {}", now.kind.article()),
        ));
    }
    if now.dev != expect.dev || now.ino != expect.ino {
        return Err(replaced(
            path,
            format!(
                "was replaced by another {}",
                if now.is_dir() { "directory" } else { "file" }
            ),
        ));
    }
    if same_size && now.is_file() && now.size != expect.size {
        return Err(StoreError::ChangedDuringImport(path));
    }
    Ok(fd)
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

/// Lists a directory tree in archive order, through [`TreeDir`] (no
/// symlink is followed). Symlinks and special files are refused, as are
/// names that are not UTF-8.
pub fn walk(root: &TreeDir) -> Result<Walk> {
    let mut w = Walk {
        entries: Vec::new(),
        file_bytes: 0,
        stat_digest: [0; 32],
        substitutes: BTreeMap::new(),
    };
    let mut h = Sha256::new();
    // The directory's own mode (its object's mode); its times change with
    // every child, which is hashed below anyway.
    h.update(b"mode");
    h.update(root.meta()?.perm().to_be_bytes());
    walk_into(root, "", &mut w, &mut h)?;
    w.stat_digest = h.finalize().into();
    Ok(w)
}

fn walk_into(dir: &TreeDir, prefix: &str, w: &mut Walk, h: &mut Sha256) -> Result<()> {
    // A database's -wal/-shm/-journal files are part of it, not entries.
    let (kids, companions) = crate::sqlite::split_companions(dir, dir.children()?);
    let prefixed = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    for c in kids {
        let rel = prefixed(&c.name);
        check_rel_path(&rel).map_err(|reason| StoreError::BadTree {
            path: c.path.clone(),
            reason,
        })?;
        stat_hash(h, &rel, &c.meta);
        for (cname, cmeta) in companions.get(&c.name).into_iter().flatten() {
            stat_hash(h, &prefixed(cname), cmeta);
        }
        match c.meta.kind {
            MetaKind::Dir => {
                w.entries.push(Entry {
                    path: rel.clone(),
                    size: None,
                    meta: c.meta,
                });
                walk_into(&dir.subdir(&c)?, &rel, w, h)?;
            }
            MetaKind::File => {
                w.file_bytes += c.meta.size;
                w.entries.push(Entry {
                    path: rel,
                    size: Some(c.meta.size),
                    meta: c.meta,
                });
            }
            MetaKind::Symlink | MetaKind::Special => {
                return Err(StoreError::BadTree {
                    path: c.path,
                    reason: "symlinks and special files are not supported".into(),
                });
            }
        }
    }
    Ok(())
}

fn entry_header(e: &Entry, version: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 2 + e.path.len() + 2 + 8);
    b.push(if e.size.is_some() { TAG_FILE } else { TAG_DIR });
    b.extend_from_slice(&(e.path.len() as u16).to_be_bytes());
    b.extend_from_slice(e.path.as_bytes());
    if version != VERSION_1 {
        b.extend_from_slice(&(e.meta.perm() as u16).to_be_bytes());
    }
    if let Some(size) = e.size {
        b.extend_from_slice(&size.to_be_bytes());
    }
    b
}

/// Exact archive length of a walk.
pub fn archive_len(w: &Walk) -> u64 {
    let mut n = (MAGIC.len() + 2 + 1) as u64;
    for e in &w.entries {
        n += 1 + 2 + e.path.len() as u64 + 2 + e.size.map_or(0, |s| 8 + s);
    }
    n
}

/// Streams the archive of a walked directory. A file whose size differs from
/// the walk is reported as [`StoreError::ChangedDuringImport`] (via an
/// `io::Error` carrying it in `other`); a file replaced after the walk
/// (symlink, another inode) as [`StoreError::ReplacedDuringImport`], carried
/// the same way ([`into_store_error`] gets it back).
pub struct ArchiveReader {
    version: u16,
    root: TreeDir,
    entries: std::vec::IntoIter<Entry>,
    buf: Vec<u8>,
    pos: usize,
    file: Option<(File, u64, PathBuf)>,
    done: bool,
    substitutes: BTreeMap<String, Anchor>,
}

impl ArchiveReader {
    /// Starts streaming `walk` of the directory `root` (opened through its
    /// [`Anchor`], so it is the directory that was walked).
    pub fn new(root: TreeDir, walk: Walk) -> Self {
        Self::with_version(root, walk, VERSION)
    }

    /// Like [`ArchiveReader::new`], in archive `version` (1: without modes,
    /// what an import compares with a fingerprint taken before modes were
    /// kept).
    pub fn with_version(root: TreeDir, walk: Walk, version: u16) -> Self {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&version.to_be_bytes());
        ArchiveReader {
            version,
            root,
            entries: walk.entries.into_iter(),
            buf,
            pos: 0,
            file: None,
            done: false,
            substitutes: walk.substitutes,
        }
    }
}

/// The store error an [`ArchiveReader`] or [`ExactFile`] read error carries,
/// if it carries one.
pub fn into_store_error(e: io::Error) -> std::result::Result<StoreError, io::Error> {
    if e.get_ref().is_some_and(|r| r.is::<StoreError>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(s) = inner.downcast::<StoreError>()
        {
            return Ok(*s);
        }
        return Err(io::Error::other("unreachable: checked above"));
    }
    Err(e)
}

/// The error an [`ArchiveReader`] or [`ExactFile`] read carries (inside an
/// [`io::Error`]) when a file changed size while being read; callers test for
/// it with [`FileChanged::is_in`], never by its text.
#[derive(Debug, thiserror::Error)]
#[error("bbsync: file changed during import: {}", path.display())]
pub struct FileChanged {
    /// The file that changed.
    pub path: PathBuf,
}

impl FileChanged {
    /// Whether a read error is a [`FileChanged`].
    pub fn is_in(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|r| r.is::<FileChanged>())
    }
}

fn changed(path: &Path) -> io::Error {
    io::Error::other(FileChanged {
        path: path.to_path_buf(),
    })
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
                    self.buf = entry_header(&e, self.version);
                    if let Some(size) = e.size {
                        // A database is read from its snapshot (checked
                        // against the snapshot's metadata), anything else
                        // from the tree (checked against the walk).
                        let f = match self.substitutes.get(&e.path) {
                            Some(snapshot) => snapshot.open_file(),
                            None => self.root.open_file(&e.path, &e.meta),
                        }
                        .map_err(io::Error::other)?;
                        self.file = Some((f, size, self.root.path().join(&e.path)));
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
    /// Reads `file` (opened at `path`) expecting `len` bytes.
    pub fn new(file: File, path: &Path, len: u64) -> Self {
        ExactFile {
            file,
            remaining: len,
            path: path.to_path_buf(),
        }
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
    Mode(u8, String),
    Size(String, Option<u32>),
    Data(u64),
    End,
}

/// Sets the permission bits ([`MODE_BITS`]) of an open file (a file being
/// written keeps its write access through the descriptor).
pub fn set_file_mode(f: &File, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(f, Mode::from_raw_mode(mode & MODE_BITS)).map_err(io::Error::from)
}

/// Sets the permission bits of a directory bbsync writes: `mode`
/// ([`MODE_BITS`]) with the owner's `rwx` added (see the module docs).
pub fn set_dir_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode((mode & MODE_BITS) | 0o700))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

/// Writes an archive's entries under `dest` as bytes are fed in, checking
/// every path and the entry order.
pub struct Extractor {
    dest: PathBuf,
    state: State,
    version: u16,
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
            version: VERSION,
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

    fn begin_entry(&mut self, tag: u8, path: String, mode: Option<u32>) -> Result<()> {
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
            if let Some(mode) = mode {
                set_dir_mode(&full, mode)?;
            }
            self.dirs += 1;
            self.state = State::Tag;
        } else {
            self.state = State::Size(path, mode);
        }
        Ok(())
    }

    /// Feeds the next plaintext bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match std::mem::replace(&mut self.state, State::End) {
                State::Magic => {
                    if self.need(&mut data, MAGIC.len() + 2) {
                        let version = u16::from_be_bytes([self.acc[6], self.acc[7]]);
                        if &self.acc[..6] != MAGIC || !(VERSION_1..=VERSION).contains(&version) {
                            return Err(bad("bad magic or version"));
                        }
                        self.version = version;
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
                        if self.version == VERSION_1 {
                            self.begin_entry(tag, path, None)?;
                        } else {
                            self.state = State::Mode(tag, path);
                        }
                    } else {
                        self.state = State::Path(tag, n);
                    }
                }
                State::Mode(tag, path) => {
                    if self.need(&mut data, 2) {
                        let mode = u32::from(u16::from_be_bytes([self.acc[0], self.acc[1]]));
                        self.acc.clear();
                        if mode & !MODE_BITS != 0 {
                            return Err(bad(format!(
                                "entry {path:?} has mode {mode:#o}, with bits outside {MODE_BITS:#o}"
                            )));
                        }
                        self.begin_entry(tag, path, Some(mode))?;
                    } else {
                        self.state = State::Mode(tag, path);
                    }
                }
                State::Size(path, mode) => {
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
                        // Set on the open file, before a byte is written.
                        if let Some(mode) = mode {
                            set_file_mode(&f, mode)
                                .ctx(|| format!("setting the mode of {}", full.display()))?;
                        }
                        self.files += 1;
                        self.file = Some((io::BufWriter::with_capacity(256 * 1024, f), full));
                        self.state = State::Data(size);
                    } else {
                        self.state = State::Size(path, mode);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A file that comes and goes while the directory is listed (as a
    /// SQLite rollback journal does with every transaction) is listed or
    /// not, never an error.
    #[test]
    fn a_file_removed_while_its_directory_is_read_is_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::write(root.join("keep"), b"k").unwrap();
        let dir = TreeDir::open(&root).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in 0..16 {
                        let p = root.join(format!("j{i}"));
                        let _ = fs::write(&p, b"j");
                        let _ = fs::remove_file(&p);
                    }
                }
            });
            for _ in 0..3000 {
                let kids = dir.children();
                let kids = kids.map_err(|e| e.to_string());
                if kids.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let kids = kids.unwrap();
                assert!(kids.iter().any(|c| c.name == "keep"));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn archive_of(root: &Path) -> Vec<u8> {
        let dir = TreeDir::open(root).unwrap();
        let w = walk(&dir).unwrap();
        let len = archive_len(&w);
        let mut out = Vec::new();
        ArchiveReader::new(dir, w).read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len);
        out
    }

    fn extract(bytes: &[u8], dest: &Path) -> Result<(u64, u64)> {
        fs::create_dir(dest).unwrap();
        let mut ex = Extractor::new(dest);
        // In small pieces: every state must resume.
        for piece in bytes.chunks(3) {
            ex.feed(piece)?;
        }
        ex.finish()
    }

    #[test]
    fn the_example_of_format_md() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("a/b"), "hi\n").unwrap();
        fs::write(root.join("a.txt"), "").unwrap();
        chmod(&root.join("a"), 0o755);
        chmod(&root.join("a/b"), 0o644);
        chmod(&root.join("a.txt"), 0o600);
        chmod(&root.join("empty"), 0o700);
        let want = "424244495200 0002 \
                    01 0001 61 01ed \
                    02 0003 612f62 01a4 0000000000000003 68690a \
                    02 0005 612e747874 0180 0000000000000000 \
                    01 0005 656d707479 01c0 \
                    00"
        .split_whitespace()
        .collect::<String>();
        assert_eq!(hex::encode(archive_of(&root)), want);
        assert_eq!(want.len() / 2, 62);
    }

    #[test]
    fn modes_come_back_without_setuid_and_version_1_still_extracts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        fs::create_dir_all(root.join("locked/inner")).unwrap();
        fs::write(root.join("locked/inner/f"), "f").unwrap();
        fs::write(root.join("run"), "#!/bin/sh\n").unwrap();
        fs::write(root.join("suid"), "x").unwrap();
        fs::write(root.join("ro"), "r").unwrap();
        chmod(&root.join("locked/inner/f"), 0o640);
        chmod(&root.join("locked/inner"), 0o750);
        // A directory without its owner's write bit still gets filled.
        chmod(&root.join("locked"), 0o555);
        chmod(&root.join("run"), 0o755);
        chmod(&root.join("suid"), 0o6755);
        chmod(&root.join("ro"), 0o400);
        let bytes = archive_of(&root);
        let out = t.path().join("out");
        assert_eq!(extract(&bytes, &out).unwrap(), (4, 2));
        assert_eq!(mode_of(&out.join("locked/inner/f")), 0o640);
        assert_eq!(mode_of(&out.join("locked/inner")), 0o750);
        assert_eq!(mode_of(&out.join("locked")), 0o755, "owner rwx added");
        assert_eq!(mode_of(&out.join("run")), 0o755);
        assert_eq!(mode_of(&out.join("suid")), 0o755, "setuid/setgid dropped");
        assert_eq!(mode_of(&out.join("ro")), 0o400);
        assert_eq!(fs::read(out.join("ro")).unwrap(), b"r");
        chmod(&root.join("locked"), 0o755);

        // Version 1: the same entries without modes.
        let v1 = [
            &b"BBDIR\0\x00\x01"[..],
            b"\x01\x00\x01d",
            b"\x02\x00\x03d/f\x00\x00\x00\x00\x00\x00\x00\x02hi",
            b"\x00",
        ]
        .concat();
        let old = t.path().join("old");
        assert_eq!(extract(&v1, &old).unwrap(), (1, 1));
        assert_eq!(fs::read(old.join("d/f")).unwrap(), b"hi");

        // A mode with setuid in a version-2 archive is refused.
        let evil = [
            &b"BBDIR\0\x00\x02"[..],
            b"\x02\x00\x01f\x09\xed\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x00",
        ]
        .concat();
        let e = extract(&evil, &t.path().join("evil")).unwrap_err();
        assert!(
            e.to_string()
                .contains("entry \"f\" has mode 0o4755, with bits outside 0o777"),
            "{e}"
        );
        // Version 3 is not known.
        let e = extract(b"BBDIR\0\x00\x03\x00", &t.path().join("v3")).unwrap_err();
        assert!(e.to_string().contains("bad magic or version"), "{e}");
    }

    #[test]
    fn a_file_that_changes_size_while_read_is_a_typed_file_changed_error() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, b"abc").unwrap();
        // Shorter than expected, then longer than expected.
        for expected in [5, 2] {
            let mut r = ExactFile::new(File::open(&p).unwrap(), &p, expected);
            let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
            assert!(FileChanged::is_in(&e), "{e}");
            assert_eq!(
                e.to_string(),
                format!("bbsync: file changed during import: {}", p.display())
            );
        }
        // Another error with the same words is not one.
        let e = io::Error::other(format!(
            "bbsync: file changed during import: {}",
            p.display()
        ));
        assert!(!FileChanged::is_in(&e));
        let mut r = ExactFile::new(File::open(&p).unwrap(), &p, 3);
        assert_eq!(io::copy(&mut r, &mut io::sink()).unwrap(), 3);
    }
}
