//! Live mirroring (docs/sync.md, "Live mirroring"): a BBS tree kept equal
//! to the store as changes happen, in both directions.
//!
//! - A **watched** tree (the primary, `serve --watch`) is imported as it
//!   changes ([`Store::import_live`]): only what changed since this node
//!   last wrote or imported it, never a file still being written (the
//!   caller says which paths are), deletions of what it knew.
//! - A **materialized** tree (a standby, `serve --follow --tree`) gets each
//!   applied object written ([`Store::tree_apply`]): through a temp file
//!   under `<tree>/.bbsync/tmp/`, fsynced, renamed into place; a directory
//!   object is swapped as a whole (`renameat2(RENAME_EXCHANGE)`).
//!
//! Both keep one record per object (`lt/` in the store): where it lies in
//! the tree and the metadata digest of what was there when this node wrote
//! or imported it. A file whose digest differs from its record (or that has
//! none) was not written by bbsync, or was changed since: it is never
//! replaced or deleted silently: that is a conflict, in `status` and the
//! log, until the operator moves it away (or it turns out to hold exactly
//! the object's bytes, then it is adopted as is). `<tree>/.bbsync/tree.json`
//! (the marker) says which instance last wrote the tree, in which role,
//! and up to which change-log number of its upstream it is applied.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File},
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use bbsync_protocol::{ObjectId, Shape};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{
    ObjectState, Store,
    bbs::{self, BBS_KINDS},
    error::{Context, Result, StoreError},
    export::OpenObject,
    import::ImportStats,
    layout::Layout,
    progress::Progress,
    sqlite::{FileOut, WriteMode},
};

/// The directory of a live tree that holds bbsync's marker and temp files
/// (skipped by every scan of a tree).
pub const STATE_DIR: &str = ".bbsync";
const MARKER: &str = "tree.json";
const TMP: &str = "tmp";

/// Where an object lies in the live tree and what this node left there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeRecord {
    /// Its path, relative to the tree's root.
    pub path: String,
    /// Metadata digest (hex) of the file or directory as written or imported.
    pub digest: String,
    /// The version it held.
    pub version: u64,
    /// The manifest of that version (hex).
    pub manifest: String,
}

/// The marker of a live tree (`.bbsync/tree.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    /// Format number (1).
    pub format: u32,
    /// The instance that keeps the tree (hex).
    pub instance: String,
    /// `primary` (the tree is watched and imported) or `standby` (written
    /// from the store).
    pub role: String,
    /// For a standby: the upstream whose changes are applied (hex).
    pub upstream: Option<String>,
    /// For a standby: the upstream's change-log number applied to the tree.
    pub seq: u64,
    /// When the marker was written (ms since the epoch).
    pub updated_at_ms: u64,
}

/// What one pass over a live tree did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TreeReport {
    /// Objects written (new or replaced).
    pub written: u64,
    /// Objects removed (deleted upstream).
    pub removed: u64,
    /// Objects already as they should be.
    pub unchanged: u64,
    /// Files found holding exactly the object's bytes, kept as they are.
    pub adopted: u64,
    /// (path, why) of what was left alone.
    pub conflicts: Vec<(String, String)>,
    /// The objects left alone (to try again later).
    #[serde(skip)]
    pub conflict_ids: Vec<ObjectId>,
}

/// What `status` shows of this process's live tree.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveStatus {
    /// The tree, if any.
    pub tree: Option<PathBuf>,
    /// `primary` (watching) or `standby` (materializing).
    pub role: String,
    /// Imports of the watched tree that changed something, since start.
    pub imports: u64,
    /// When the watched tree was last imported (ms since the epoch).
    pub last_import_ms: Option<u64>,
    /// Files seen still being written (not imported until complete).
    pub held: Vec<String>,
    /// Objects written into the tree since start.
    pub written: u64,
    /// Objects removed from the tree since start.
    pub removed: u64,
    /// The upstream change-log number applied to the tree.
    pub applied_seq: u64,
    /// Paths left alone, with the reason (see the module docs).
    pub conflicts: BTreeMap<String, String>,
    /// The last error of the watcher or the tree writer.
    pub last_error: Option<String>,
}

/// The live-tree status of this process (what `status` shows inside `serve`).
pub fn status() -> &'static Mutex<LiveStatus> {
    static S: OnceLock<Mutex<LiveStatus>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Changes the status of this process's live tree.
pub fn update_status(f: impl FnOnce(&mut LiveStatus)) {
    let mut s = status()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut s);
}

/// A BBS tree kept live: its root, its layout, and the lock that keeps the
/// watcher and the tree writer of one process from interleaving.
#[derive(Debug)]
pub struct LiveTree {
    root: PathBuf,
    layout: Option<Layout>,
    lock: Mutex<()>,
    primary: AtomicBool,
    reconciled: AtomicBool,
    indexed: AtomicBool,
}

impl LiveTree {
    /// The objects of the tree, read through its layout: all of them, or
    /// only what `focus` names.
    fn scan(&self, focus: Option<&bbs::Focus>) -> Result<Vec<bbs::Source>> {
        match &self.layout {
            None => bbs::scan_in(&self.root, focus),
            Some(l) => l.scan_in(&self.root, focus),
        }
    }

    /// `path` relative to the root of the tree, as the records keep it.
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// Opens (creating it if needed) the live tree at `root`, read through
    /// `layout` (`None`: bbsync's own tree). Temp files a killed writer
    /// left behind are removed.
    pub fn open(root: &Path, layout: Option<Layout>) -> Result<LiveTree> {
        let tmp = root.join(STATE_DIR).join(TMP);
        fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        for e in fs::read_dir(&tmp).ctx(|| format!("reading {}", tmp.display()))? {
            let p = e.ctx(|| format!("reading {}", tmp.display()))?.path();
            let r = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.ctx(|| format!("removing the leftover {}", p.display()))?;
        }
        let root = fs::canonicalize(root).ctx(|| format!("resolving {}", root.display()))?;
        Ok(LiveTree {
            root,
            layout,
            lock: Mutex::new(()),
            primary: AtomicBool::new(false),
            reconciled: AtomicBool::new(false),
            indexed: AtomicBool::new(false),
        })
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds off the other side (watcher or tree writer) of this process.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this node writes the tree's content (the BBS runs on it and
    /// the tree is watched), rather than keeping it as a standby.
    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::SeqCst)
    }

    /// Marks the tree as the primary's (see [`LiveTree::is_primary`]).
    pub fn set_primary(&self) {
        self.primary.store(true, Ordering::SeqCst);
    }

    /// Marks the tree as a standby's again (`bbsync demote` on a running
    /// node, once its watcher has stopped).
    pub fn set_standby(&self) {
        self.primary.store(false, Ordering::SeqCst);
    }

    /// Whether [`Store::tree_reconcile`] ran on it in this process.
    pub fn is_reconciled(&self) -> bool {
        self.reconciled.load(Ordering::SeqCst)
    }

    /// The layout the tree is read and written through (`None`: bbsync's own).
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The kinds this tree holds.
    pub fn kinds(&self) -> Vec<String> {
        match &self.layout {
            None => BBS_KINDS.iter().map(|k| (*k).to_string()).collect(),
            Some(l) => l.kinds().into_iter().map(String::from).collect(),
        }
    }

    /// Whether a path (relative to the root) is bbsync's own (marker, temp).
    pub fn is_internal(rel: &Path) -> bool {
        rel.components()
            .next()
            .is_some_and(|c| c.as_os_str() == STATE_DIR)
    }

    /// The tree's marker, if it has one.
    pub fn marker(&self) -> Result<Option<Marker>> {
        let p = self.root.join(STATE_DIR).join(MARKER);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                StoreError::Invalid(format!(
                    "{}: not a bbsync tree marker ({e}); move it away to start the tree anew",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the marker (temp file, fsync, rename).
    pub fn write_marker(&self, m: &Marker) -> Result<()> {
        let p = self.root.join(STATE_DIR).join(MARKER);
        let tmp = self.root.join(STATE_DIR).join(TMP).join(MARKER);
        let bytes = serde_json::to_vec_pretty(m)
            .map_err(|e| StoreError::Invalid(format!("tree marker: {e}")))?;
        (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)?;
            File::open(self.root.join(STATE_DIR))?.sync_all()
        })()
        .ctx(|| format!("writing {}", p.display()))
    }

    fn tmp_path(&self) -> PathBuf {
        use rand::Rng as _;
        let n: u64 = rand::thread_rng().r#gen();
        self.root
            .join(STATE_DIR)
            .join(TMP)
            .join(format!("{n:016x}"))
    }

    /// Where an object of this shape goes in the tree.
    fn place(&self, st: &ObjectState, shape: Shape) -> Option<String> {
        let p = match &self.layout {
            None => bbs::tree_path(&st.kind, &st.name)?,
            Some(l) => l.place(&st.kind, &st.name, st.owner.as_deref(), shape)?,
        };
        p.to_str().map(String::from)
    }

    /// The metadata digest of what is at `rel` (as an import computes it),
    /// or `None` if nothing is there. A symlink (never written by bbsync)
    /// gets a digest no record holds.
    fn digest_at(&self, rel: &str, st: &ObjectState) -> Result<Option<String>> {
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", p.display())),
            Ok(m) if m.file_type().is_symlink() => return Ok(Some("symlink".into())),
            Ok(_) => {}
        }
        let meta = crate::archive::lstat(&p).ctx(|| format!("reading {}", p.display()))?;
        let has_companions = ["-wal", "-journal"]
            .iter()
            .any(|s| crate::sqlite::companion_path(&p, s).exists());
        if meta.is_file() && !has_companions {
            // As a scan digests a file without companions, without listing
            // its directory (a board of many posts).
            let mut h = sha2::Sha256::new();
            crate::archive::stat_hash(&mut h, "", &meta);
            return Ok(Some(hex::encode(h.finalize())));
        }
        if meta.is_dir() {
            let walk = crate::archive::walk(&crate::archive::TreeDir::open(&p)?)?;
            return Ok(Some(hex::encode(walk.stat_digest)));
        }
        let src = bbs::source_for_path(&p, &st.kind, &st.name, st.owner.clone())?;
        Ok(Some(hex::encode(src.stat_digest)))
    }

    /// Writes an opened object to `rel`: temp, fsync, rename (a directory
    /// swapped with the old one, which is then removed). Returns the
    /// digest of what is now there.
    fn write_object(
        &self,
        store: &Store,
        o: &OpenObject,
        rel: &str,
        st: &ObjectState,
    ) -> Result<String> {
        let dest = self.root.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        let tmp = self.tmp_path();
        let label = format!("{}:{}", st.kind, st.name);
        crate::failpoint::hit("live.write").ctx(|| format!("writing {}", dest.display()))?;
        match o.content.shape {
            Shape::File => {
                let mut out = FileOut::new(&tmp, WriteMode::InPlace, o.manifest.plaintext_len)
                    .with_mode(o.content.mode);
                let written = store
                    .read_open(o, |d| out.write(d))
                    .and_then(|_| out.finish(&label));
                let db = match written {
                    Ok(db) => db,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .ctx(|| format!("syncing {}", tmp.display()))?;
                if db {
                    // A stale WAL next to a new database would be applied to it.
                    for suffix in ["-wal", "-shm", "-journal"] {
                        let c = crate::sqlite::companion_path(&dest, suffix);
                        match fs::remove_file(&c) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                                return Err(e).ctx(|| format!("removing {}", c.display()));
                            }
                            _ => {}
                        }
                    }
                }
                fs::rename(&tmp, &dest).ctx(|| format!("renaming into {}", dest.display()))?;
            }
            Shape::Dir => {
                fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
                if let Err(e) = store.extract_dir(o, &tmp) {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
                let d = File::open(&tmp).ctx(|| format!("opening {}", tmp.display()))?;
                rustix::fs::syncfs(&d)
                    .map_err(io::Error::from)
                    .ctx(|| format!("syncing {}", tmp.display()))?;
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {
                        // One step: readers see the old directory or the new one.
                        rustix::fs::renameat_with(
                            rustix::fs::CWD,
                            &tmp,
                            rustix::fs::CWD,
                            &dest,
                            rustix::fs::RenameFlags::EXCHANGE,
                        )
                        .map_err(io::Error::from)
                        .ctx(|| format!("swapping in {}", dest.display()))?;
                        fs::remove_dir_all(&tmp)
                            .ctx(|| format!("removing the old {}", dest.display()))?;
                    }
                    _ => fs::rename(&tmp, &dest)
                        .ctx(|| format!("renaming into {}", dest.display()))?,
                }
            }
        }
        sync_parent(&dest)?;
        self.digest_at(rel, st)?.ok_or_else(|| {
            StoreError::Invalid(format!("{} vanished as it was written", dest.display()))
        })
    }

    /// Removes what is at `rel` (a directory moved aside first, so that it
    /// goes at once).
    fn remove(&self, rel: &str) -> Result<()> {
        let p = self.root.join(rel);
        let m = fs::symlink_metadata(&p).ctx(|| format!("reading {}", p.display()))?;
        if m.is_dir() {
            let tmp = self.tmp_path();
            fs::rename(&p, &tmp).ctx(|| format!("removing {}", p.display()))?;
            fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", p.display()))?;
        } else {
            fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        }
        sync_parent(&p)
    }

    /// Whether `rel` holds exactly the object's content (and, for an
    /// object with modes, its modes).
    fn same_content(&self, store: &Store, o: &OpenObject, rel: &str) -> Result<bool> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.root.join(rel);
        let m = fs::symlink_metadata(&p).ctx(|| format!("reading {}", p.display()))?;
        let perm = m.permissions().mode() & crate::archive::MODE_BITS;
        match o.content.shape {
            Shape::File => {
                if !m.is_file()
                    || m.len() != o.manifest.plaintext_len
                    || o.content.mode.is_some_and(|mode| mode != perm)
                {
                    return Ok(false);
                }
                let mut f = File::open(&p).ctx(|| format!("reading {}", p.display()))?;
                let mut same = true;
                let mut buf = Vec::new();
                store.read_open(o, |d| {
                    if same {
                        buf.resize(d.len(), 0);
                        f.read_exact(&mut buf)
                            .ctx(|| format!("reading {}", p.display()))?;
                        same = buf == d;
                    }
                    Ok(())
                })?;
                Ok(same)
            }
            Shape::Dir => {
                if !m.is_dir() {
                    return Ok(false);
                }
                let tmp = self.tmp_path();
                fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
                let modes = o.content.mode.is_some();
                let r = store.extract_dir(o, &tmp).and_then(|_| {
                    Ok(same_mode(&tmp, &p, modes)?
                        && same_tree(&tmp, &p, modes)
                            .ctx(|| format!("comparing {}", p.display()))?)
                });
                let _ = fs::remove_dir_all(&tmp);
                r
            }
        }
    }
}

fn sync_parent(p: &Path) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

/// Whether two paths have the same permission bits (always, unless `modes`).
fn same_mode(a: &Path, b: &Path, modes: bool) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    if !modes {
        return Ok(true);
    }
    let perm = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & crate::archive::MODE_BITS)
            .ctx(|| format!("reading {}", p.display()))
    };
    Ok(perm(a)? == perm(b)?)
}

/// Whether two directories hold the same names, kinds and file bytes (and,
/// with `modes`, the same permission bits).
fn same_tree(a: &Path, b: &Path, modes: bool) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    let list = |d: &Path| -> io::Result<Vec<(std::ffi::OsString, fs::Metadata)>> {
        let mut v = fs::read_dir(d)?
            .map(|e| e.and_then(|e| Ok((e.file_name(), fs::symlink_metadata(e.path())?))))
            .collect::<io::Result<Vec<_>>>()?;
        v.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(v)
    };
    let (la, lb) = (list(a)?, list(b)?);
    if la.len() != lb.len() {
        return Ok(false);
    }
    for ((na, ma), (nb, mb)) in la.iter().zip(&lb) {
        if na != nb
            || ma.file_type() != mb.file_type()
            || (modes && ma.permissions().mode() & 0o777 != mb.permissions().mode() & 0o777)
        {
            return Ok(false);
        }
        let (pa, pb) = (a.join(na), b.join(nb));
        if ma.is_dir() {
            if !same_tree(&pa, &pb, modes)? {
                return Ok(false);
            }
        } else if !ma.is_file() || ma.len() != mb.len() || fs::read(&pa)? != fs::read(&pb)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a whole import of a watched tree ([`Store::import_live`]) does
/// with a live object of the tree's kinds that is not in the tree and that
/// this node has no record of writing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecorded {
    /// Keep it: it came from a peer and is not written out yet (every
    /// import but a tree's first).
    Keep,
    /// Tombstone it: the tree is the whole truth, as for `import-bbs` (the
    /// first watch of a tree).
    Tombstone,
}

/// An object of the tree an import is given: what to record for it once
/// the import is committed.
struct Wanted {
    kind: String,
    name: String,
    /// Its path in the tree, relative to the root.
    path: String,
    /// The stat digest it was imported at.
    digest: String,
}

/// What one import of a watched tree did.
#[derive(Debug, Default)]
pub struct LiveImport {
    /// The import's figures (only the objects that changed are imported).
    pub stats: ImportStats,
    /// Objects left as they were because a file of theirs is still being written.
    pub held: Vec<String>,
}

impl Store {
    /// Writes the objects `ids` into the materialized `tree` (see the module
    /// docs): new and changed ones written, deleted ones removed, what this
    /// node did not write left alone as a conflict. Errs on an I/O failure
    /// (the caller retries); conflicts are in the report and the status.
    pub fn tree_apply(&self, tree: &LiveTree, ids: &[ObjectId]) -> Result<TreeReport> {
        let _g = tree.lock();
        let kinds = tree.kinds();
        let mut rep = TreeReport::default();
        let mut cleared = Vec::new();
        for id in ids {
            let st = match self.state(id) {
                Ok(st) => st,
                Err(StoreError::UnknownObject(_)) => continue,
                Err(e) => return Err(e),
            };
            if !kinds.contains(&st.kind) {
                continue;
            }
            match self.tree_apply_one(tree, id, &st, &mut rep)? {
                Some(path) => cleared.push(path),
                None if rep.conflicts.len() > rep.conflict_ids.len() => rep.conflict_ids.push(*id),
                None => {}
            }
        }
        self.db().flush()?;
        for (path, why) in &rep.conflicts {
            tracing::warn!(path = %path, "live tree: conflict: {why}");
        }
        update_status(|s| {
            s.written += rep.written;
            s.removed += rep.removed;
            for p in &cleared {
                s.conflicts.remove(p);
            }
            for (p, why) in &rep.conflicts {
                s.conflicts.insert(p.clone(), why.clone());
            }
        });
        Ok(rep)
    }

    /// One object of [`Store::tree_apply`]; returns its path when it is in
    /// order (no conflict).
    fn tree_apply_one(
        &self,
        tree: &LiveTree,
        id: &ObjectId,
        st: &ObjectState,
        rep: &mut TreeReport,
    ) -> Result<Option<String>> {
        let rec = self.db().tree_record(id)?;
        let label = format!("{}:{}", st.kind, st.name);
        if st.deleted {
            let Some(rec) = rec else { return Ok(None) };
            match tree.digest_at(&rec.path, st)? {
                None => self.db().remove_tree_record(id)?,
                Some(d) if d == rec.digest => {
                    tree.remove(&rec.path)?;
                    self.db().remove_tree_record(id)?;
                    rep.removed += 1;
                    tracing::info!(target: "bbsync::live", path = %rec.path, object = %label, "removed");
                }
                Some(_) => {
                    rep.conflicts.push((
                        rec.path.clone(),
                        format!("{label} was deleted, but {} was changed in the tree since bbsync wrote it: left as it is", rec.path),
                    ));
                    return Ok(None);
                }
            }
            return Ok(Some(rec.path));
        }
        if !st.complete {
            return Ok(None);
        }
        let o = self.open_object(id)?;
        let Some(rel) = tree.place(st, o.content.shape) else {
            rep.conflicts.push((
                label.clone(),
                format!("{label} has no place in the tree's layout: not written"),
            ));
            return Ok(None);
        };
        let manifest = st.manifest_id.to_hex();
        let known = rec.as_ref().filter(|r| r.path == rel);
        let on_disk = tree.digest_at(&rel, st)?;
        let replace = match (&on_disk, known) {
            (Some(d), Some(r)) if *d == r.digest && r.manifest == manifest => {
                rep.unchanged += 1;
                return Ok(Some(rel));
            }
            (None, _) => true,
            (Some(d), Some(r)) => *d == r.digest,
            (Some(_), None) => false,
        };
        let digest = if replace {
            let d = tree.write_object(self, &o, &rel, st)?;
            rep.written += 1;
            tracing::info!(
                target: "bbsync::live",
                path = %rel,
                object = %label,
                version = st.version,
                "written"
            );
            d
        } else if tree.same_content(self, &o, &rel)? {
            rep.adopted += 1;
            on_disk.unwrap_or_default()
        } else {
            rep.conflicts.push((
                rel.clone(),
                format!(
                    "{rel} was not written by bbsync (or was changed since): version {} of {label} is not written over it; move it away to let it through",
                    st.version
                ),
            ));
            return Ok(None);
        };
        self.db().set_tree_record(
            id,
            &TreeRecord {
                path: rel.clone(),
                digest,
                version: st.version,
                manifest,
            },
        )?;
        Ok(Some(rel))
    }

    /// Brings the whole materialized tree in line with the store: every
    /// object of the tree's kinds, and every object it holds a record of.
    pub fn tree_reconcile(&self, tree: &LiveTree) -> Result<TreeReport> {
        let kinds = tree.kinds();
        let mut ids: Vec<ObjectId> = Vec::new();
        for r in self.db().objects() {
            let (id, st) = r?;
            if kinds.contains(&st.kind) {
                ids.push(id);
            }
        }
        let seen: HashSet<ObjectId> = ids.iter().copied().collect();
        for (id, _) in self.db().tree_records()? {
            if !seen.contains(&id) {
                self.db().remove_tree_record(&id)?;
            }
        }
        let rep = self.tree_apply(tree, &ids)?;
        tree.reconciled.store(true, Ordering::SeqCst);
        Ok(rep)
    }

    /// Imports what changed in the watched `tree` since this node last
    /// wrote or imported it (see the module docs). `held` says whether a
    /// path (relative to the root) is still being written: an object with
    /// such a file keeps its version until it is complete. Objects this
    /// node has no record of (they came from a peer and are not written out
    /// yet) are kept or tombstoned as `unrecorded` says.
    pub fn import_live(
        &self,
        tree: &LiveTree,
        held: &dyn Fn(&str) -> bool,
        unrecorded: Unrecorded,
        progress: &dyn Progress,
    ) -> Result<LiveImport> {
        let _g = tree.lock();
        let sources = tree.scan(None)?;
        let kinds = tree.kinds();
        let records: HashMap<ObjectId, TreeRecord> =
            self.db().tree_records()?.into_iter().collect();
        let mut keep: HashSet<(String, String)> = HashSet::new();
        let mut todo = Vec::new();
        let mut wanted = Vec::new();
        let mut out = LiveImport::default();
        let mut seen = HashSet::new();
        for src in sources {
            let rel = tree.rel(&src.path());
            let id = self.db().lookup(&src.kind, &src.name)?;
            if let Some(id) = id {
                seen.insert(id);
            }
            if held(&rel) {
                out.held.push(rel);
                keep.insert((src.kind.clone(), src.name.clone()));
                continue;
            }
            let digest = hex::encode(src.stat_digest);
            let unchanged = id
                .and_then(|id| records.get(&id))
                .is_some_and(|r| r.path == rel && r.digest == digest);
            if unchanged {
                keep.insert((src.kind.clone(), src.name.clone()));
                continue;
            }
            wanted.push(Wanted {
                kind: src.kind.clone(),
                name: src.name.clone(),
                path: rel,
                digest,
            });
            todo.push(src);
        }
        if unrecorded == Unrecorded::Keep {
            for r in self.db().objects() {
                let (id, st) = r?;
                if !st.deleted && kinds.contains(&st.kind) && !records.contains_key(&id) {
                    keep.insert((st.kind, st.name));
                }
            }
        }
        let kind_refs: Vec<&str> = kinds.iter().map(String::as_str).collect();
        out.stats = self.run_import_keeping(todo, &kind_refs, &keep, &HashSet::new(), progress)?;
        self.record_imported(wanted)?;
        for (id, _) in records {
            if !seen.contains(&id) && self.state(&id).is_ok_and(|st| st.deleted) {
                self.db().remove_tree_record(&id)?;
            }
        }
        // The path index of the records, checked once per process (records
        // of an older build are indexed here).
        if !tree.indexed.load(Ordering::SeqCst) {
            let records = self.db().tree_records()?;
            self.db().sync_tree_paths(&records)?;
            tree.indexed.store(true, Ordering::SeqCst);
        }
        self.db().flush()?;
        Ok(out)
    }

    /// Imports what changed at the paths `focus` names (relative to the
    /// root; the directories they imply are looked at, nothing else) in the
    /// watched `tree`: one batch of the watcher, whose cost is what it
    /// names, not the tree. An object found there is imported as
    /// [`Store::import_live`] would; an object whose record lies at or
    /// below a focused path and that is no longer there is tombstoned
    /// (unless `held`). Without the path index (records written by an
    /// older version, not yet checked in this process) this is a whole
    /// [`Store::import_live`].
    pub fn import_live_paths(
        &self,
        tree: &LiveTree,
        focus: &bbs::Focus,
        held: &dyn Fn(&str) -> bool,
        progress: &dyn Progress,
    ) -> Result<LiveImport> {
        if !tree.indexed.load(Ordering::SeqCst) {
            return self.import_live(tree, held, Unrecorded::Keep, progress);
        }
        let _g = tree.lock();
        let sources = tree.scan(Some(focus))?;
        let kinds = tree.kinds();
        let mut out = LiveImport::default();
        let mut todo = Vec::new();
        let mut wanted = Vec::new();
        let mut found = HashSet::new();
        for src in sources {
            let rel = tree.rel(&src.path());
            let id = self.db().lookup(&src.kind, &src.name)?;
            if let Some(id) = id {
                found.insert(id);
            }
            if held(&rel) {
                out.held.push(rel);
                continue;
            }
            let digest = hex::encode(src.stat_digest);
            let unchanged = match id {
                Some(id) => self
                    .db()
                    .tree_record(&id)?
                    .is_some_and(|r| r.path == rel && r.digest == digest),
                None => false,
            };
            if unchanged {
                continue;
            }
            wanted.push(Wanted {
                kind: src.kind.clone(),
                name: src.name.clone(),
                path: rel,
                digest,
            });
            todo.push(src);
        }
        // What was at the focused paths (by the path index) and is gone.
        let mut gone = Vec::new();
        let mut under = HashSet::new();
        for p in focus.paths() {
            under.extend(self.db().tree_records_under(p)?);
        }
        for id in under {
            if found.contains(&id) {
                continue;
            }
            let Some(rec) = self.db().tree_record(&id)? else {
                continue;
            };
            let st = match self.state(&id) {
                Ok(st) => st,
                Err(StoreError::UnknownObject(_)) => continue,
                Err(e) => return Err(e),
            };
            if !kinds.contains(&st.kind) || held(&rec.path) {
                continue;
            }
            if st.deleted || self.tree_path_exists(tree, &rec.path)? {
                // Deleted already, or still there (then not this
                // object's any more: another took its place).
                if st.deleted {
                    self.db().remove_tree_record(&id)?;
                }
                continue;
            }
            gone.push(id);
        }
        out.stats = self.run_import_gone(
            todo,
            crate::import::Gone::These(&gone),
            &HashSet::new(),
            progress,
        )?;
        self.record_imported(wanted)?;
        for id in &gone {
            if self.state(id).is_ok_and(|st| st.deleted) {
                self.db().remove_tree_record(id)?;
            }
        }
        self.db().flush()?;
        Ok(out)
    }

    /// Records where each object of `wanted` lies in the tree, at the
    /// version the import left; an object the import did not leave live
    /// (not imported, or deleted) gets no record.
    fn record_imported(&self, wanted: Vec<Wanted>) -> Result<()> {
        for w in wanted {
            let Some(id) = self.db().lookup(&w.kind, &w.name)? else {
                continue;
            };
            let st = self.state(&id)?;
            if st.deleted {
                continue;
            }
            self.db().set_tree_record(
                &id,
                &TreeRecord {
                    path: w.path,
                    digest: w.digest,
                    version: st.version,
                    manifest: st.manifest_id.to_hex(),
                },
            )?;
        }
        Ok(())
    }

    /// Whether something is at `rel` in the tree (not following a symlink).
    fn tree_path_exists(&self, tree: &LiveTree, rel: &str) -> Result<bool> {
        let p = tree.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx(|| format!("reading {}", p.display())),
        }
    }
}

/// A promotion (`bbsync promote`), kept in `<data>/live.json` so that a
/// restarted `serve` keeps the role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Promotion {
    /// `primary`.
    pub role: String,
    /// The tree this node watches since.
    pub tree: PathBuf,
    /// When (ms since the epoch).
    pub since_ms: u64,
}

const ROLE_FILE: &str = "live.json";

/// The promotion recorded in `data_dir`, if any.
pub fn load_promotion(data_dir: &Path) -> Result<Option<Promotion>> {
    let p = data_dir.join(ROLE_FILE);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StoreError::Config {
                path: p.clone(),
                reason: format!("not a bbsync role file: {e}"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| format!("reading {}", p.display())),
    }
}

/// Records (durably) that this node is the primary, watching `tree`.
pub fn save_promotion(data_dir: &Path, p: &Promotion) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(p).map_err(|e| StoreError::Invalid(format!("role file: {e}")))?;
    crate::write_file_atomic(&data_dir.join(ROLE_FILE), &bytes, 0o600)
}

/// Forgets a promotion (`bbsync demote`); whether there was one.
pub fn remove_promotion(data_dir: &Path) -> Result<bool> {
    let p = data_dir.join(ROLE_FILE);
    match fs::remove_file(&p) {
        Ok(()) => {
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .ctx(|| format!("syncing {}", data_dir.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx(|| format!("removing {}", p.display())),
    }
}
