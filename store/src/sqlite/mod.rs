//! SQLite databases in a BBS tree (DESIGN §3, docs/format.md §6.4, §11.1).
//!
//! BBS software keeps its state in SQLite beside its files and writes it
//! while bbsync reads the tree. Read as plain bytes, a database that is
//! being written can give a torn copy (a WAL that is half checkpointed, a
//! transaction in flight), and every clone, standby and backup would carry
//! it. So a database is treated as a database:
//!
//! * **detection**: a file is a database when it starts with the 16-byte
//!   header `SQLite format 3\0`, wherever it is in the tree; its `-wal`,
//!   `-shm` and `-journal` companions are part of it and never objects of
//!   their own ([`split_companions`]);
//! * **snapshot**: SQLite's online backup API copies every page of the
//!   database inside one read transaction of the source, into a private
//!   temp file ([`snapshot`]): one committed state, whatever other processes
//!   write meanwhile; the copy must pass `PRAGMA integrity_check` before it
//!   is chunked;
//! * **chunking**: fixed-size chunks aligned to the database's pages
//!   ([`chunk_size`]), so that a page that did not change keeps its chunk;
//! * **write-out**: through a temp file beside the target that is fsynced
//!   and checked with `PRAGMA integrity_check` before it replaces anything
//!   ([`FileOut`], [`check_tree`]);
//! * **dumps**: SQL like the sqlite3 shell's `.dump`, JSON lines and CSV,
//!   from the stored snapshot ([`dump`]).

pub mod dump;
mod export;
mod source;

pub use source::RECHECK_DIGEST;
pub(crate) use source::SnapshotTally;

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use rusqlite::{Connection, OpenFlags, backup::StepResult, config::DbConfig};
use sha2::{Digest, Sha256};

use crate::{
    archive::{Anchor, Child, Meta, TreeDir},
    error::{Context, Result, StoreError},
};

/// The first 16 bytes of every SQLite 3 database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Suffixes of the files that belong to a database `X`: `X-wal` (write-ahead
/// log), `X-shm` (its shared-memory index), `X-journal` (rollback journal).
pub const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The companions whose metadata tells that committed content may have
/// changed. `-shm` is left out: readers write to it too.
const CONTENT_COMPANIONS: [&str; 2] = ["-wal", "-journal"];

/// Smallest chunk of a database object (docs/format.md §6.4).
pub const MIN_DB_CHUNK: u64 = 4096;

/// Most chunks one database object is cut into; larger databases get larger
/// (still page-aligned) chunks, so that the manifest stays small.
pub const MAX_DB_CHUNKS: u64 = 262_144;

/// How long a snapshot waits for a lock that another process holds on the
/// source (a writer committing in rollback-journal mode) before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A database whose files changed this recently before its snapshot was
/// taken is read again by the next import even if its files' metadata looks
/// the same then (a change in the same clock tick as the scan would keep
/// the size and times, see [`recently_changed`]).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// How many problems `PRAGMA integrity_check` reports at most.
const MAX_PROBLEMS: usize = 20;

/// Whether `bytes` begin with the SQLite header.
pub fn has_header(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER.len() && &bytes[..HEADER.len()] == HEADER
}

/// Whether the regular file at `path` begins with the SQLite header (a
/// symlink, a missing or unreadable file is not a database). For files
/// that bbsync wrote itself (write-out); a tree being imported is read
/// through its directory descriptors ([`split_companions`], `prepare_databases`).
pub fn is_database(path: &Path) -> bool {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .is_ok_and(|mut f| starts_with_header(&mut f))
}

/// Whether what `r` reads begins with the SQLite header (a read error: no).
pub fn starts_with_header(r: &mut impl Read) -> bool {
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    has_header(&head[..got])
}

/// Whether the child `c` of `dir` is a regular file that begins with the
/// SQLite header, read through the directory's descriptor (never through
/// a symlink, and only if it is still the file that was listed; a live
/// database may have grown since).
pub fn is_database_in(dir: &TreeDir, c: &Child) -> bool {
    c.meta.is_file()
        && dir
            .open_live_file(&c.name, &c.meta)
            .is_ok_and(|mut f| starts_with_header(&mut f))
}

/// The content-bearing companions (`-wal`, `-journal`) of each database of
/// a listing, by the database's file name: `(companion name, metadata)`.
pub type CompanionStats = HashMap<String, Vec<(String, Meta)>>;

/// Takes the companions of the databases out of a listing of `dir`.
///
/// `X-wal`, `X-shm` and `X-journal` are companions when `X` is a regular
/// file of the same listing that starts with the SQLite header (read
/// through `dir`'s descriptor) or is empty (SQLite's empty database,
/// before its first transaction) and the companion is a regular file.
/// Other files with such names stay in the listing (and become objects or
/// are refused as usual). Returns the remaining entries in their order,
/// and for each database the metadata of its `-wal` and `-journal` files,
/// which [`digest_with_companions`] adds to the database's change
/// detection.
pub fn split_companions(dir: &TreeDir, kids: Vec<Child>) -> (Vec<Child>, CompanionStats) {
    let files: HashMap<&str, &Child> = kids
        .iter()
        .filter(|c| c.meta.is_file())
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    let mut companion = vec![false; kids.len()];
    for (i, c) in kids.iter().enumerate() {
        if !c.meta.is_file() {
            continue;
        }
        let Some(base) = COMPANIONS.iter().find_map(|s| c.name.strip_suffix(s)) else {
            continue;
        };
        let Some(b) = files.get(base) else {
            continue;
        };
        let is_db = *verdicts
            .entry(base.to_string())
            .or_insert_with(|| b.meta.size == 0 || is_database_in(dir, b));
        companion[i] = is_db;
    }
    let mut stats: CompanionStats = HashMap::new();
    let mut kept = Vec::with_capacity(kids.len());
    for (i, kid) in kids.into_iter().enumerate() {
        if !companion[i] {
            kept.push(kid);
            continue;
        }
        if let Some(base) = CONTENT_COMPANIONS
            .iter()
            .find_map(|s| kid.name.strip_suffix(s).map(str::to_string))
        {
            stats.entry(base).or_default().push((kid.name, kid.meta));
        }
    }
    (kept, stats)
}

/// A database's stat digest extended by its companions' metadata, so that
/// a commit that only touched the WAL (or a rollback journal that appeared)
/// counts as a change. Without companions the digest is returned unchanged.
pub fn digest_with_companions(digest: [u8; 32], companions: &[(String, Meta)]) -> [u8; 32] {
    if companions.is_empty() {
        return digest;
    }
    let mut h = Sha256::new();
    h.update(b"bbsync/sqlite-companions/v1\0");
    h.update(digest);
    for (name, md) in companions {
        crate::archive::stat_hash(&mut h, name, md);
    }
    h.finalize().into()
}

/// Whether the database `name` in `dir` or one of its companions was
/// modified less than [`RACY_WINDOW`] before `since` (looked up through
/// the directory's descriptor, not following symlinks).
pub fn recently_changed(dir: &TreeDir, name: &str, since: SystemTime) -> bool {
    std::iter::once(name.to_string())
        .chain(CONTENT_COMPANIONS.iter().map(|s| format!("{name}{s}")))
        .filter_map(|n| dir.child(&n).ok())
        .any(|c| {
            since
                .duration_since(c.meta.modified())
                .map_or(true, |age| age < RACY_WINDOW)
        })
}

/// `X` + `suffix` beside `X`.
pub fn companion_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The chunk size of a database object of `len` bytes whose pages are
/// `page_size` bytes: the page size, at least [`MIN_DB_CHUNK`], doubled
/// until the object has at most [`MAX_DB_CHUNKS`] chunks, at most
/// `CHUNK_MAX` (1 MiB). Every chunk boundary is a page boundary.
pub fn chunk_size(len: u64, page_size: u64) -> usize {
    let max = bbsync_protocol::chunk::CHUNK_MAX as u64;
    let mut size = page_size.clamp(MIN_DB_CHUNK, max);
    while size < max && len.div_ceil(size) > MAX_DB_CHUNKS {
        size *= 2;
    }
    size as usize
}

/// The database's page size from its header (bytes 16-17, big-endian; 1
/// means 65 536), or `None` for a value SQLite would not accept.
pub fn page_size_of(header: &[u8]) -> Option<u64> {
    if header.len() < 18 || !has_header(header) {
        return None;
    }
    let v = u16::from_be_bytes([header[16], header[17]]) as u64;
    let size = if v == 1 { 65_536 } else { v };
    (size >= 512 && size.is_power_of_two()).then_some(size)
}

/// A private temp file that is removed when dropped.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Creates `path` (mode 0600, must not exist).
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        Ok(TempFile(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        // A connection that found a WAL header may have made these.
        for s in COMPANIONS {
            let _ = fs::remove_file(companion_path(&self.0, s));
        }
    }
}

/// A consistent copy of a database, in a private temp file that goes away
/// with this value.
#[derive(Debug)]
pub struct Snapshot {
    file: TempFile,
    /// Length of the copy in bytes.
    pub len: u64,
    /// The database's page size.
    pub page_size: u64,
    /// How long the copy and its check took.
    pub elapsed: Duration,
}

impl Snapshot {
    /// The copy.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

fn sqlite_code(e: &rusqlite::Error) -> Option<rusqlite::ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// Turns a SQLite error about the database `what` into a store error:
/// "not a database" and "malformed" are damage, busy and locked say that
/// another process held the database too long.
pub(crate) fn db_error(what: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match sqlite_code(&e) {
        Some(C::NotADatabase | C::DatabaseCorrupt) => StoreError::DatabaseDamaged {
            what: what.to_string(),
            problems: e.to_string(),
        },
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Database {
            what: what.to_string(),
            reason: format!(
                "another process kept it locked for more than {} s; try again",
                LOCK_WAIT.as_secs()
            ),
        },
        _ => StoreError::Database {
            what: what.to_string(),
            reason: e.to_string(),
        },
    }
}

/// A live database of a tree, ready for SQLite to open: the directory that
/// holds it (opened through the walk's descriptors), its name there, the
/// file itself (opened the same way and found to be the one the walk saw,
/// held open while SQLite reads) and the path SQLite opens.
struct LiveDb {
    dir: TreeDir,
    name: String,
    walked: Meta,
    /// Where the walk found it, for messages.
    shown: PathBuf,
    /// The directory's real path now (from its descriptor) joined with the
    /// name: no symlink in it, whatever path the operator gave.
    sqlite_path: PathBuf,
    held: File,
}

impl LiveDb {
    fn open(anchor: &Anchor) -> Result<LiveDb> {
        let (dir, name, held) = anchor.open_in_parent()?;
        let link = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
        let real = fs::read_link(&link).ctx(|| {
            format!(
                "finding the path of {} through {link} (needed to open a SQLite database through the walked directory)",
                dir.path().display()
            )
        })?;
        Ok(LiveDb {
            sqlite_path: real.join(&name),
            shown: anchor.path(),
            walked: *anchor.meta(),
            dir,
            name,
            held,
        })
    }

    /// The error for a database that is not (or no longer) the file the
    /// walk saw, saying what is there now.
    fn replaced(&self) -> StoreError {
        let what = match self.dir.child(&self.name) {
            Err(_) => "disappeared".to_string(),
            Ok(c) if c.meta.kind != self.walked.kind => {
                format!("was replaced by {}", c.meta.kind.article())
            }
            Ok(c) if c.meta.dev != self.walked.dev || c.meta.ino != self.walked.ino => {
                "was replaced by another file".to_string()
            }
            // Back in place by now: the swap was made while SQLite opened it.
            Ok(_) => "was replaced by another file while SQLite opened it".to_string(),
        };
        StoreError::ReplacedDuringImport {
            path: self.shown.clone(),
            what,
        }
    }

    /// Whether the file at the name is still the walked one.
    fn unchanged(&self) -> bool {
        self.dir.child(&self.name).is_ok_and(|c| {
            c.meta.kind == self.walked.kind
                && c.meta.dev == self.walked.dev
                && c.meta.ino == self.walked.ino
        })
    }
}

/// The identity (device, inode) of each open file descriptor of this
/// process, by descriptor number.
fn descriptors() -> Result<HashMap<String, (u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new("/proc/self/fd");
    let rd = fs::read_dir(dir).ctx(|| {
        format!(
            "listing {} (needed to check which file SQLite opened)",
            dir.display()
        )
    })?;
    // The listing's own descriptor refers to the listed directory.
    let own = fs::metadata(dir).map(|md| (md.dev(), md.ino())).ok();
    let mut out = HashMap::new();
    for e in rd.flatten() {
        // A descriptor closed meanwhile is skipped.
        if let Ok(md) = fs::metadata(e.path()) {
            let id = (md.dev(), md.ino());
            if Some(id) != own {
                out.insert(e.file_name().to_string_lossy().into_owned(), id);
            }
        }
    }
    Ok(out)
}

/// Opens the live database read-only or read-write for a snapshot, and
/// checks that the file SQLite opened is the one the walk saw.
///
/// SQLite's unix VFS opens by path (it resolves the path itself, refusing
/// any symlink in it with `SQLITE_OPEN_NOFOLLOW`, and opens the last
/// component with `O_NOFOLLOW`); it cannot open through a descriptor. The
/// path is the walked directory's real path, so a directory swapped before
/// this point does not lead it elsewhere; one swapped while SQLite resolves
/// it could. So the descriptor that SQLite's open added to this process
/// must refer to the walked file (device and inode), or nothing is read
/// from it. (`SQLite` reads the 100-byte header at open; nothing else is
/// read before the check, and nothing of it reaches the store.)
fn open_source(live: &LiveDb, read_only: bool) -> Result<rusqlite::Result<Connection>> {
    let mode = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let before = descriptors()?;
    let src = match Connection::open_with_flags(
        &live.sqlite_path,
        mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    ) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let after = descriptors()?;
    let walked = (live.walked.dev, live.walked.ino);
    let held = live.held.as_raw_fd().to_string();
    let new: Vec<(u64, u64)> = after
        .iter()
        .filter(|(fd, id)| before.get(*fd) != Some(*id))
        .map(|(_, id)| *id)
        .collect();
    // Another thread may open or close files meanwhile: what counts is that
    // a descriptor new since `before` refers to the walked file (only this
    // snapshot opens that file now: the import reads each source once).
    // Or, with no new descriptor at all, that SQLite took one it had kept
    // open for the walked file (a connection of this process closed while
    // another one held a lock on it): SQLite reuses a kept descriptor only
    // for a file it opened before, and a file elsewhere needs a new one.
    let opened_walked = new.contains(&walked)
        || (new.is_empty() && before.iter().any(|(fd, id)| *id == walked && *fd != held));
    if !opened_walked {
        drop(src);
        return Err(live.replaced());
    }
    Ok(Ok(src))
}

/// One attempt at copying the live database into the empty file `dest`
/// with the backup API, all pages in one step (one read transaction),
/// retrying while another process holds a lock, until `deadline`.
fn copy_into(
    live: &LiveDb,
    dest: &Path,
    read_only: bool,
    deadline: Instant,
) -> Result<rusqlite::Result<()>> {
    let src = match open_source(live, read_only)? {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    Ok((|| {
        src.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        distrust_schema(&src)?;
        src.busy_timeout(LOCK_WAIT)?;
        let mut out = Connection::open_with_flags(
            dest,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A private temp file: no journal, no fsync (a crash leaves a file the
        // next open of the store removes).
        out.query_row("PRAGMA journal_mode=OFF", [], |_| Ok(()))?;
        out.execute_batch("PRAGMA synchronous=OFF")?;
        let backup = rusqlite::backup::Backup::new(&src, &mut out)?;
        loop {
            match backup.step(-1)? {
                StepResult::Done => return Ok(()),
                StepResult::Busy | StepResult::Locked => {
                    if Instant::now() > deadline {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            None,
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // `More` (not with -1) and future variants: step again.
                _ => {}
            }
        }
    })())
}

/// Copies the live database that `source` anchors (a file of a tree being
/// imported) into `dest` (which must not exist; made with mode 0600)
/// through SQLite's online backup API, then checks the copy with `PRAGMA
/// integrity_check`.
///
/// The database is reached as every file of an import is: its directory
/// and the file are opened below the tree's descriptor with `O_NOFOLLOW`
/// and must be what the walk saw (a swap is
/// [`StoreError::ReplacedDuringImport`]); the file SQLite then opens must
/// be that same file (see `open_source`). The source is never created. It
/// is opened read-only first; when SQLite needs to write to read it (roll
/// back a hot journal, rebuild a WAL index, as the BBS's own next
/// connection would), it is opened read-write, with checkpoint-on-close
/// disabled so that bbsync does not move the BBS's WAL into its database
/// file. A WAL-mode database gets its `-wal` and `-shm` files as with any
/// reader (SQLite creates them if they are missing and gives them the
/// database file's owner when bbsync runs as root). All pages are copied
/// in one step, that is inside one read transaction: in WAL mode the BBS
/// keeps writing meanwhile; in rollback-journal mode its writers wait
/// (their busy timeout) until the copy is done, like with the sqlite3
/// shell's `.backup`. Locks held by others are waited for up to
/// [`LOCK_WAIT`]. Also returns the directory holding the database and its
/// name there (for [`recently_changed`]).
pub fn snapshot(source: &Anchor, dest: PathBuf) -> Result<(Snapshot, TreeDir, String)> {
    use rusqlite::ErrorCode as C;
    let start = Instant::now();
    let live = LiveDb::open(source)?;
    let what = format!("database {}", live.shown.display());
    let file = TempFile::create(dest)?;
    // A failure to open or read may come from a swap: say so rather than
    // pass on SQLite's words for it.
    let err = |e| {
        if live.unchanged() {
            db_error(&what, e)
        } else {
            live.replaced()
        }
    };
    let deadline = start + LOCK_WAIT;
    // Read-only first: an idle database is then read without creating its
    // -wal/-shm files. SQLite needs write access to roll back a hot journal
    // or to rebuild a WAL index; it says so, and the copy is made again
    // through a read-write connection.
    match copy_into(&live, file.path(), true, deadline)? {
        Err(e) if matches!(sqlite_code(&e), Some(C::ReadOnly | C::CannotOpen)) => {
            tracing::debug!(path = %live.shown.display(), "read-only snapshot impossible ({e}); reading read-write");
            File::create(file.path()).ctx(|| format!("truncating {}", file.path().display()))?;
            copy_into(&live, file.path(), false, deadline)?.map_err(err)?;
        }
        r => r.map_err(err)?,
    }
    let problems = check_file(file.path()).map_err(err)?;
    if !problems.is_empty() {
        return Err(StoreError::DatabaseDamaged {
            what,
            problems: summarize(&problems),
        });
    }
    let mut head = [0u8; 18];
    File::open(file.path())
        .and_then(|mut f| f.read_exact(&mut head))
        .ctx(|| format!("reading {}", file.path().display()))?;
    let page_size = page_size_of(&head).ok_or_else(|| StoreError::DatabaseDamaged {
        what: what.clone(),
        problems: "bad page size in the header".into(),
    })?;
    let len = fs::metadata(file.path())
        .ctx(|| format!("reading {}", file.path().display()))?
        .len();
    let LiveDb { dir, name, .. } = live;
    Ok((
        Snapshot {
            file,
            len,
            page_size,
            elapsed: start.elapsed(),
        },
        dir,
        name,
    ))
}

/// The problems `PRAGMA integrity_check` finds, empty when it says `ok`.
fn integrity(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(&format!("PRAGMA integrity_check({MAX_PROBLEMS})"))?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(Vec::new())
    } else {
        Ok(rows)
    }
}

/// One line out of a list of integrity problems.
pub(crate) fn summarize(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(3)
        .map(|p| p.trim().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 3 {
        s.push_str(&format!(" (and {} more)", problems.len() - 3));
    }
    s
}

/// A `file:` URI for `path` with `immutable=1`: the file is read as it is,
/// without locks, and nothing (`-wal`, `-shm`) is created beside it.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut s = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str("?immutable=1");
    s
}

/// Opens a database file that no other process uses (a snapshot, a file
/// being written out, a decrypted copy) read-only and immutable.
pub fn open_private(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    distrust_schema(&c)?;
    Ok(c)
}

/// The database's content comes from a BBS directory or a peer: functions
/// with side effects must not run from its schema (views, triggers,
/// defaults, CHECK constraints), whatever SQLite was built to allow.
fn distrust_schema(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("PRAGMA trusted_schema=OFF")
}

/// Runs `PRAGMA integrity_check` on a database file that no other process
/// uses (see [`open_private`]). Returns the problems (empty: the check
/// passed); a file SQLite does not recognize, or finds malformed while
/// reading, gives that as its problem.
pub fn check_file(path: &Path) -> rusqlite::Result<Vec<String>> {
    use rusqlite::ErrorCode as C;
    let r = open_private(path).and_then(|c| integrity(&c));
    match r {
        Err(e) if matches!(sqlite_code(&e), Some(C::NotADatabase | C::DatabaseCorrupt)) => {
            Ok(vec![e.to_string()])
        }
        r => r,
    }
}

/// How a [`FileOut`] writes a file that is not a SQLite database (a
/// database always goes through a temp file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Through `.<name>.bbsync-tmp` and a rename: the target is never seen
    /// half written.
    Atomic,
    /// Straight into the target (a fresh tree nobody reads yet).
    InPlace,
}

/// Writes one file object's plaintext to a target path, as it arrives.
///
/// The first bytes decide: a SQLite database (and any file written
/// [`WriteMode::Atomic`])
/// is written to `.<name>.bbsync-tmp` beside the target; at
/// [`FileOut::finish`] a database is fsynced, must pass `PRAGMA
/// integrity_check`, stale `-wal`/`-journal`/`-shm` files of the target are
/// removed (SQLite would otherwise apply them to the new file), and only
/// then is it renamed over the target and the directory fsynced. Other
/// files written [`WriteMode::InPlace`] are written in place (a new tree). Dropping it
/// unfinished removes what it wrote.
#[derive(Debug)]
pub struct FileOut {
    target: PathBuf,
    atomic: bool,
    mode: Option<u32>,
    cap: usize,
    open: Option<(BufWriter<File>, PathBuf, bool)>,
    done: bool,
}

impl FileOut {
    /// Prepares to write `target` (`len`: the expected size, for buffering).
    pub fn new(target: &Path, how: WriteMode, len: u64) -> Self {
        FileOut {
            target: target.to_path_buf(),
            atomic: how == WriteMode::Atomic,
            mode: None,
            cap: (len as usize).clamp(8 * 1024, 1 << 20),
            open: None,
            done: false,
        }
    }

    /// Gives the file these permission bits (`archive::MODE_BITS`), set
    /// on it as it is created, before any byte is written or it is renamed
    /// into place; `None`: the umask decides, as for an object written
    /// before modes were kept.
    #[must_use]
    pub fn with_mode(mut self, mode: Option<u32>) -> Self {
        self.mode = mode;
        self
    }

    /// The temp name used for `target`.
    pub fn temp_path(target: &Path) -> PathBuf {
        target.with_file_name(format!(
            ".{}.bbsync-tmp",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ))
    }

    fn start(&mut self, first: &[u8]) -> Result<()> {
        let db = has_header(first);
        let path = if db || self.atomic {
            // A temp file a killed writer left behind is ours to replace.
            let tmp = Self::temp_path(&self.target);
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).ctx(|| format!("removing {}", tmp.display()));
                }
                _ => {}
            }
            tmp
        } else {
            self.target.clone()
        };
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        if let Some(mode) = self.mode
            && let Err(e) = crate::archive::set_file_mode(&f, mode)
        {
            let _ = fs::remove_file(&path);
            return Err(e).ctx(|| format!("setting the mode of {}", path.display()));
        }
        self.open = Some((BufWriter::with_capacity(self.cap, f), path, db));
        Ok(())
    }

    /// Writes the next bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.open.is_none() {
            self.start(data)?;
        }
        if let Some((w, path, _)) = &mut self.open {
            w.write_all(data)
                .ctx(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Completes the file (see the type's docs); `label` names the object
    /// in errors. Returns whether it was a database.
    pub fn finish(mut self, label: &str) -> Result<bool> {
        if self.open.is_none() {
            self.start(&[])?;
        }
        let Some((w, path, db)) = self.open.take() else {
            return Ok(false);
        };
        // From here on, failures remove `path` (see Drop: re-armed below).
        self.open = None;
        let r = (|| -> Result<()> {
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .ctx(|| format!("writing {}", path.display()))?;
            if db {
                f.sync_all().ctx(|| format!("syncing {}", path.display()))?;
                drop(f);
                let what = format!("{label} (written out to {})", self.target.display());
                let problems = check_file(&path).map_err(|e| db_error(&what, e))?;
                if !problems.is_empty() {
                    return Err(StoreError::DatabaseDamaged {
                        what,
                        problems: format!("{}; nothing was replaced", summarize(&problems)),
                    });
                }
                remove_companions(&self.target)?;
                crate::failpoint::hit("sqlite.rename")
                    .ctx(|| format!("renaming into {}", self.target.display()))?;
                fs::rename(&path, &self.target)
                    .ctx(|| format!("renaming into {}", self.target.display()))?;
                sync_parent(&self.target)?;
            } else if path != self.target {
                fs::rename(&path, &self.target)
                    .ctx(|| format!("renaming into {}", self.target.display()))?;
            }
            Ok(())
        })();
        self.done = r.is_ok();
        if r.is_err() {
            let _ = fs::remove_file(&path);
        }
        r.map(|()| db)
    }
}

impl Drop for FileOut {
    fn drop(&mut self) {
        if !self.done
            && let Some((_, path, _)) = self.open.take()
        {
            let _ = fs::remove_file(path);
        }
    }
}

/// Removes stale `-wal`, `-journal` and `-shm` files of `target` before a
/// new database is renamed over it: SQLite would apply a stale log or
/// journal to the new file. The directory is fsynced when one was removed,
/// so that no crash brings them back after the rename.
fn remove_companions(target: &Path) -> Result<()> {
    let mut removed = false;
    for s in ["-journal", "-wal", "-shm"] {
        let p = companion_path(target, s);
        match fs::remove_file(&p) {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed a stale companion before replacing the database");
                removed = true;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("removing {}", p.display())),
        }
    }
    if removed {
        sync_parent(target)?;
    }
    Ok(())
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

/// Checks every database in a directory tree that was just written out (a
/// directory object): each file that starts with the SQLite header is
/// fsynced and must pass `PRAGMA integrity_check`. `label` names the
/// object in errors. Returns how many databases were checked.
pub fn check_tree(root: &Path, label: &str) -> Result<u64> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            let ft = e
                .file_type()
                .ctx(|| format!("reading {}", e.path().display()))?;
            let path = e.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() && is_database(&path) {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .ctx(|| format!("syncing {}", path.display()))?;
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                let what = format!("{label}: database {rel}");
                let problems = check_file(&path).map_err(|e| db_error(&what, e))?;
                if !problems.is_empty() {
                    return Err(StoreError::DatabaseDamaged {
                        what,
                        problems: summarize(&problems),
                    });
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Lengths of the fixed-size chunks of `len` bytes.
pub fn fixed_ranges(len: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (0..len)
        .step_by(size.max(1))
        .map(|s| s..(s + size).min(len))
        .collect()
}

/// Reads `r` in chunks of exactly `size` bytes (the last may be shorter),
/// passing each to `f`.
pub fn read_fixed(
    mut r: impl Read,
    size: usize,
    mut f: impl FnMut(io::Result<&[u8]>) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        let mut got = 0;
        while got < size {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return f(Err(e)),
            }
        }
        if got == 0 {
            return Ok(());
        }
        f(Ok(&buf[..got]))?;
        if got < size {
            return Ok(());
        }
    }
}

/// Removes snapshot and dump temp files a killed process left in
/// `<data>/tmp/` (called at open, when this process holds the store).
pub fn sweep_temp(tmp: &Path) {
    let Ok(rd) = fs::read_dir(tmp) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Name prefix of the temp files of this module in `<data>/tmp/`.
pub const TEMP_PREFIX: &str = "sqlite-";

/// A new temp path `<data>/tmp/sqlite-<pid>-<n>-<what>` (the directory is
/// created, mode 0700).
pub fn temp_path(data_dir: &Path, what: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = data_dir.join("tmp");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ctx(|| format!("creating {}", dir.display()))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{TEMP_PREFIX}{}-{n}-{what}", std::process::id())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn make_db(path: &Path, wal: bool, rows: i64) -> Connection {
        let c = Connection::open(path).unwrap();
        if wal {
            c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
        }
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, txn INTEGER, body TEXT);",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO t(txn, body) VALUES (0, ?1)",
                [format!("row {i} {}", "x".repeat(200))],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c
    }

    /// A snapshot of the database at `path` (anchored in its directory).
    fn snap_at(path: &Path, dest: PathBuf) -> Result<Snapshot> {
        let dir = TreeDir::open(path.parent().unwrap()).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let c = dir.child(name).unwrap();
        snapshot(&dir.anchor(name, c.meta), dest).map(|(s, _, _)| s)
    }

    fn count(path: &Path) -> i64 {
        open_private(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_wal_snapshot_holds_what_is_only_in_the_log_and_checks_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("bbs.sqlite3");
        let c = make_db(&db, true, 500);
        // Committed, but only in the WAL: a byte copy of the main file would miss it.
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; INSERT INTO t(txn, body) VALUES (1, 'in the wal');",
        )
        .unwrap();
        assert!(companion_path(&db, "-wal").metadata().unwrap().len() > 0);
        let snap = snap_at(&db, tmp.path().join("snap")).unwrap();
        assert_eq!(count(snap.path()), 501);
        assert_eq!(check_file(snap.path()).unwrap(), Vec::<String>::new());
        assert_eq!(snap.page_size, 4096);
        assert_eq!(snap.len % snap.page_size, 0);
        // The check of the copy created nothing beside it, and the copy goes with the value.
        let p = snap.path().to_path_buf();
        assert!(!companion_path(&p, "-wal").exists());
        drop(snap);
        assert!(!p.exists());
        // The source's WAL was not checkpointed into its file by the snapshot.
        assert!(companion_path(&db, "-wal").metadata().unwrap().len() > 0);
    }

    #[test]
    fn an_idle_database_is_read_without_being_written() {
        let tmp = tempfile::tempdir().unwrap();
        for wal in [true, false] {
            let db = tmp.path().join(format!("idle-{wal}.db"));
            drop(make_db(&db, wal, 100));
            assert!(!companion_path(&db, "-wal").exists());
            let before = fs::read(&db).unwrap();
            let snap = snap_at(&db, tmp.path().join(format!("s-{wal}"))).unwrap();
            assert_eq!(count(snap.path()), 100);
            assert_eq!(fs::read(&db).unwrap(), before);
            // A rollback-journal database gets no file beside it; a WAL one
            // gets the empty log and the index any reader opens.
            assert!(!companion_path(&db, "-journal").exists());
            if wal {
                assert_eq!(companion_path(&db, "-wal").metadata().unwrap().len(), 0);
            } else {
                assert!(!companion_path(&db, "-wal").exists());
                assert!(!companion_path(&db, "-shm").exists());
            }
        }
    }

    #[test]
    fn snapshots_under_a_concurrent_writer_hold_whole_transactions() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("live.db");
        drop(make_db(&db, true, 0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let writer = {
            let db = db.clone();
            let stop = stop.clone();
            let commits = commits.clone();
            std::thread::spawn(move || {
                let c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut txn = 1i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tx = c.unchecked_transaction().unwrap();
                    for _ in 0..10 {
                        tx.execute("INSERT INTO t(txn, body) VALUES (?1, 'x')", [txn])
                            .unwrap();
                    }
                    tx.commit().unwrap();
                    commits.store(txn, std::sync::atomic::Ordering::Relaxed);
                    txn += 1;
                }
                txn
            })
        };
        let mut last = 0;
        for i in 0..5 {
            // The writer is running and has committed more since the last snapshot.
            let want = commits.load(std::sync::atomic::Ordering::Relaxed) + 3;
            let deadline = Instant::now() + Duration::from_secs(60);
            while commits.load(std::sync::atomic::Ordering::Relaxed) < want {
                assert!(Instant::now() < deadline, "the writer makes no progress");
                std::thread::sleep(Duration::from_millis(5));
            }
            let snap = snap_at(&db, tmp.path().join(format!("s{i}"))).unwrap();
            let conn = open_private(snap.path()).unwrap();
            let partial: i64 = conn
                .query_row(
                    "SELECT count(*) FROM (SELECT txn FROM t GROUP BY txn HAVING count(*) != 10)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(partial, 0, "a snapshot holds part of a transaction");
            let n = count(snap.path());
            assert!(n >= last, "row count went back from {last} to {n}");
            last = n;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 1);
    }

    #[test]
    fn a_file_sqlite_opens_in_place_of_the_walked_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let walked = tmp.path().join("walked.db");
        drop(make_db(&walked, true, 10));
        fs::create_dir(tmp.path().join("elsewhere")).unwrap();
        let other = tmp.path().join("elsewhere/walked.db");
        drop(make_db(&other, true, 20));
        let dir = TreeDir::open(tmp.path()).unwrap();
        let c = dir.child("walked.db").unwrap();
        let mut live = LiveDb::open(&dir.anchor("walked.db", c.meta)).unwrap();
        let real = live.sqlite_path.clone();
        assert_eq!(real, fs::canonicalize(&walked).unwrap());
        // As if a directory on the path had been swapped for a symlink to
        // `elsewhere` while SQLite resolved it, and swapped back after.
        live.sqlite_path = other.clone();
        let dest = TempFile::create(tmp.path().join("snap")).unwrap();
        let deadline = Instant::now() + LOCK_WAIT;
        let e = copy_into(&live, dest.path(), true, deadline).unwrap_err();
        match &e {
            StoreError::ReplacedDuringImport { path, what } => {
                assert_eq!(path, &walked);
                assert_eq!(what, "was replaced by another file while SQLite opened it");
            }
            other => panic!("expected ReplacedDuringImport, got {other}"),
        }
        assert_eq!(
            fs::metadata(dest.path()).unwrap().len(),
            0,
            "nothing was copied"
        );
        // The walked file itself, through its real path, is copied.
        live.sqlite_path = real;
        copy_into(&live, dest.path(), true, deadline)
            .unwrap()
            .unwrap();
        assert_eq!(count(dest.path()), 10);
    }

    #[test]
    fn a_damaged_database_fails_the_snapshot_with_the_path_named() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("bad.db");
        drop(make_db(&db, false, 2000));
        // Overwrite a page in the middle of the b-tree with garbage.
        let mut bytes = fs::read(&db).unwrap();
        let mid = (bytes.len() / 4096 / 2) * 4096;
        for b in &mut bytes[mid..mid + 4096] {
            *b = 0x5a;
        }
        fs::write(&db, &bytes).unwrap();
        let e = snap_at(&db, tmp.path().join("snap")).unwrap_err();
        assert!(matches!(e, StoreError::DatabaseDamaged { .. }), "{e}");
        assert!(e.to_string().contains("bad.db"), "{e}");
        assert!(!tmp.path().join("snap").exists());
        // Not a database at all.
        let mut junk = HEADER.to_vec();
        junk.extend(std::iter::repeat_n(0xffu8, 5000));
        fs::write(&db, &junk).unwrap();
        let e = snap_at(&db, tmp.path().join("snap")).unwrap_err();
        assert!(matches!(e, StoreError::DatabaseDamaged { .. }), "{e}");
    }

    #[test]
    fn file_out_checks_a_database_before_it_replaces_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("src.db");
        drop(make_db(&db, true, 300));
        let good = fs::read(snap_at(&db, tmp.path().join("s")).unwrap().path()).unwrap();
        let target = tmp.path().join("out.db");
        // A stale WAL of another database must not survive next to the new file.
        fs::write(companion_path(&target, "-wal"), b"stale").unwrap();
        let mut out = FileOut::new(&target, WriteMode::InPlace, good.len() as u64);
        for part in good.chunks(4096) {
            out.write(part).unwrap();
        }
        assert!(
            !target.exists(),
            "a database is written beside its target first"
        );
        assert!(out.finish("file:out.db").unwrap());
        assert_eq!(fs::read(&target).unwrap(), good);
        assert!(!companion_path(&target, "-wal").exists());
        assert_eq!(count(&target), 300);

        // A damaged one: error naming the object, nothing written.
        let mut bad = good.clone();
        let mid = (bad.len() / 4096 / 2) * 4096;
        bad[mid..mid + 4096].fill(0x5a);
        let target2 = tmp.path().join("out2.db");
        let mut out = FileOut::new(&target2, WriteMode::Atomic, bad.len() as u64);
        out.write(&bad).unwrap();
        let e = out.finish("file:out2.db").unwrap_err().to_string();
        assert!(
            e.contains("file:out2.db") && e.contains("integrity check"),
            "{e}"
        );
        assert!(!target2.exists());
        assert!(!FileOut::temp_path(&target2).exists());

        // Not a database: written in place unless atomic; an empty object is an empty file.
        let plain = tmp.path().join("plain.txt");
        let mut out = FileOut::new(&plain, WriteMode::InPlace, 5);
        out.write(b"hello").unwrap();
        assert!(plain.exists());
        assert!(!out.finish("file:plain.txt").unwrap());
        let empty = tmp.path().join("empty");
        FileOut::new(&empty, WriteMode::Atomic, 0)
            .finish("file:empty")
            .unwrap();
        assert_eq!(fs::read(&empty).unwrap(), b"");
        // Dropped unfinished: nothing stays.
        let gone = tmp.path().join("gone.db");
        let mut out = FileOut::new(&gone, WriteMode::InPlace, 0);
        out.write(&good[..4096]).unwrap();
        drop(out);
        assert!(!gone.exists() && !FileOut::temp_path(&gone).exists());
    }

    #[test]
    fn companions_belong_to_databases_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut db = HEADER.to_vec();
        db.resize(4096, 0);
        fs::write(d.join("a.db"), &db).unwrap();
        for s in COMPANIONS {
            fs::write(d.join(format!("a.db{s}")), s).unwrap();
        }
        fs::write(d.join("empty.db"), b"").unwrap();
        fs::write(d.join("empty.db-journal"), b"j").unwrap();
        fs::write(d.join("notes.txt"), b"text").unwrap();
        fs::write(d.join("notes.txt-wal"), b"not a companion").unwrap();
        fs::write(d.join("orphan.db-wal"), b"no database").unwrap();
        let dir = TreeDir::open(d).unwrap();
        let (kept, stats) = split_companions(&dir, dir.children().unwrap());
        let names: Vec<&str> = kept.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.db",
                "empty.db",
                "notes.txt",
                "notes.txt-wal",
                "orphan.db-wal"
            ]
        );
        let mut a: Vec<&str> = stats["a.db"].iter().map(|c| c.0.as_str()).collect();
        a.sort_unstable();
        assert_eq!(a, ["a.db-journal", "a.db-wal"]);
        assert_eq!(stats["empty.db"].len(), 1);
    }

    #[test]
    fn database_chunks_are_page_aligned_and_bounded() {
        assert_eq!(chunk_size(100 << 20, 4096), 4096);
        assert_eq!(chunk_size(100 << 20, 1024), 4096);
        assert_eq!(chunk_size(100 << 20, 65536), 65536);
        // 4 GiB of 4 KiB pages would be 1M chunks: doubled to stay at 256Ki chunks.
        assert_eq!(chunk_size(4 << 30, 4096), 16384);
        assert_eq!(chunk_size(u64::MAX / 2, 4096), 1 << 20);
        let mut h = HEADER.to_vec();
        h.extend_from_slice(&[0x10, 0x00]);
        assert_eq!(page_size_of(&h), Some(4096));
        h[16..18].copy_from_slice(&[0, 1]);
        assert_eq!(page_size_of(&h), Some(65536));
        h[16..18].copy_from_slice(&[0x03, 0x00]);
        assert_eq!(page_size_of(&h), None);
        assert_eq!(fixed_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        let mut seen = Vec::new();
        read_fixed(&b"abcdefghij"[..], 4, |c| {
            seen.push(c.unwrap().to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]
        );
    }
}
