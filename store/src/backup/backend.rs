//! Storage access of a backup repository, behind a small trait so that an
//! object-store backend can be added later. Paths are `/`-separated and
//! relative to the repository root (`chunks/ab/<hex>`, `snapshots/<id>.json`).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Mode of every file a backup writes into a local repository.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory a backup creates in a local repository.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with [`DIR_MODE`] (not the
/// umask's mode), and gives `dir` itself that mode if it existed empty.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// What a repository needs from its storage.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages.
    fn location(&self) -> String;
    /// Whether nothing can be written (an export file read in place):
    /// readers take no lock there.
    fn is_read_only(&self) -> bool {
        false
    }
    /// The whole content of a file (`NotFound` when absent).
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    /// How many reads are worth running at once: a local directory is
    /// bound by its cores, object storage by each request's round trip.
    fn read_concurrency(&self) -> usize {
        rayon::current_num_threads().max(1)
    }
    /// The file behind `path` when this backend is a local directory, for
    /// positioned reads (`backups verify --read-data` reads a pack back a
    /// window at a time); `None` for object storage, where a pack is read
    /// with one request.
    fn local_file(&self, _path: &str) -> io::Result<Option<File>> {
        Ok(None)
    }
    /// [`Backend::read`] into `buf` (replacing what it held), so that a
    /// caller reading many large files reuses one allocation.
    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        *buf = self.read(path)?;
        Ok(())
    }
    /// `len` bytes of a file from `offset` (`UnexpectedEof` when the file
    /// is shorter). The default reads the whole file; backends override it
    /// with a positioned read or a ranged request.
    fn read_range(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let all = self.read(path)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
        all.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} is shorter than {end} bytes"),
            )
        })
    }
    /// Writes a file so that it appears complete or not at all, durably.
    fn write(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Creates a file only if no file has its name (complete or not at
    /// all, durably): `Ok(false)` when one exists. Backends without a
    /// conditional create check first and then write (a race between two
    /// writers remains; the lock protocol checks again after writing).
    fn write_new(&self, path: &str, bytes: &[u8]) -> io::Result<bool> {
        if self.size(path)?.is_some() {
            return Ok(false);
        }
        self.write(path, bytes).map(|()| true)
    }
    /// Writes a file so that it appears complete or not at all, not yet
    /// durable: [`Backend::sync`] makes every such write durable.
    fn write_lazy(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` for `path` where no reader sees it yet;
    /// [`Backend::publish`] (after a [`Backend::sync`]) makes it appear.
    fn stage(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes a staged file appear at `path`.
    fn publish(&self, path: &str) -> io::Result<()>;
    /// The size of a file, `None` when absent.
    fn size(&self, path: &str) -> io::Result<Option<u64>>;
    /// The names (not paths) of the files in a directory; an absent
    /// directory is empty. Temp files are left out.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Removes a file; an absent one is not an error.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Makes every earlier write durable.
    fn sync(&self) -> io::Result<()>;
    /// Puts the local file `src` at `path` as a hard link. `Ok(false)` when
    /// this backend cannot link it (another file system, or not local):
    /// copy instead.
    fn link_from(&self, src: &Path, path: &str) -> io::Result<bool>;
    /// The local path of a file, when the backend is a local directory.
    fn local_path(&self, path: &str) -> Option<PathBuf>;
    /// Removes the temp files an interrupted write left (only while no
    /// other writer uses the repository). Returns how many.
    fn remove_temp_files(&self) -> io::Result<u64>;
    /// The requests this backend sent so far, when it is an object store
    /// (for progress, logs and request budgets); `None` for local files.
    fn request_counts(&self) -> Option<super::s3::RequestCounts> {
        None
    }
}

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A repository at `root` (nothing is created yet).
    pub fn new(root: &Path) -> Self {
        LocalDir {
            root: root.to_path_buf(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn tmp_of(p: &Path) -> PathBuf {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.with_file_name(format!(".{name}.tmp"))
    }

    fn write_tmp(&self, path: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
        let p = self.full(path);
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(&dir)?;
        let tmp = Self::tmp_of(&p);
        let mut f = create_private_file(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        crate::failpoint::hit("repo.rename")?;
        fs::rename(&tmp, &p)?;
        if durable {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl LocalDir {
    /// Creates the directories of `dir` below the root with [`DIR_MODE`].
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
    }
}

fn is_tmp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

impl Backend for LocalDir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(self.full(path))
    }

    fn local_file(&self, path: &str) -> io::Result<Option<File>> {
        File::open(self.full(path)).map(Some)
    }

    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        use std::io::Read;
        let mut f = File::open(self.full(path))?;
        let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
        // Read into spare capacity: nothing is zeroed first (a file that
        // grew since is read whole too).
        buf.clear();
        buf.try_reserve_exact(len).map_err(io::Error::other)?;
        f.read_to_end(buf)?;
        Ok(())
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(self.full(path))?;
        f.seek(SeekFrom::Start(offset))?;
        // Read into spare capacity (not zeroed first).
        let mut buf = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
        f.take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} is shorter than {} bytes", offset + len),
            ));
        }
        Ok(buf)
    }

    fn write(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_tmp(path, bytes, true)
    }

    fn write_lazy(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_tmp(path, bytes, false)
    }

    fn write_new(&self, path: &str, bytes: &[u8]) -> io::Result<bool> {
        // Written and synced under a temp name, then hard-linked to its
        // name: link(2) fails when the name exists, atomically.
        let p = self.full(path);
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(&dir)?;
        let mut rnd = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut rnd);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(rnd)));
        let mut f = create_private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        let linked = fs::hard_link(&tmp, &p);
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {
                File::open(&dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn stage(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let p = self.full(path);
        let tmp = Self::tmp_of(&p);
        let mut f = match create_private_file(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_dirs(p.parent().unwrap_or(&self.root))?;
                create_private_file(&tmp)?
            }
            r => r?,
        };
        f.write_all(bytes)
    }

    fn publish(&self, path: &str) -> io::Result<()> {
        let p = self.full(path);
        fs::rename(Self::tmp_of(&p), p)
    }

    fn size(&self, path: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.full(path)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let rd = match fs::read_dir(self.full(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !is_tmp(&name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        match fs::remove_file(self.full(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let d = File::open(&self.root)?;
        rustix::fs::syncfs(&d).map_err(io::Error::from)
    }

    fn link_from(&self, src: &Path, path: &str) -> io::Result<bool> {
        let p = self.full(path);
        if let Some(dir) = p.parent() {
            self.make_dirs(dir)?;
        }
        match fs::hard_link(src, &p) {
            Ok(()) => {
                // A link shares the store file's inode, and so its mode:
                // owner-only like everything else in the repository (the
                // store's own copy lives in an owner-only data dir anyway).
                let m = fs::metadata(&p)?;
                if m.mode() & 0o077 != 0 {
                    fs::set_permissions(&p, fs::Permissions::from_mode(FILE_MODE))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn local_path(&self, path: &str) -> Option<PathBuf> {
        Some(self.full(path))
    }

    fn remove_temp_files(&self) -> io::Result<u64> {
        let mut dirs = vec![
            self.root.clone(),
            self.full("manifests"),
            self.full("snapshots"),
            self.full("keys"),
        ];
        dirs.push(self.full("index"));
        dirs.push(self.full("locks"));
        for parent in ["chunks", "data", "manifests"] {
            if let Ok(rd) = fs::read_dir(self.full(parent)) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    }
                }
            }
        }
        let mut n = 0;
        for d in dirs {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                if is_tmp(&e.file_name().to_string_lossy()) {
                    fs::remove_file(e.path())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
