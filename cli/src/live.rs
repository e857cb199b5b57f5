//! `serve --watch`: the primary's watcher of its BBS tree (docs/sync.md,
//! "Live mirroring").
//!
//! inotify events (through `notify` and its debouncer, which coalesces a
//! burst into one batch) mark the tree dirty; each batch becomes one
//! [`Store::import_live`], which imports only what changed since this node
//! last wrote or imported it. A file is not imported while it is being
//! written: from its creation or first modification until its writer
//! closes it (`IN_CLOSE_WRITE`) or renames it into place, or, for a writer
//! that keeps it open, until its size and mtime are the same across two
//! looks [`SETTLE`] apart. SQLite databases are never held: they are read
//! through consistent snapshots. At start-up, and whenever the kernel's
//! queue overflowed, the whole tree is scanned again (the metadata digests
//! make that cheap), so nothing written while the node was down is missed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use bbsync_store::{
    Store,
    live::{LiveTree, Marker, update_status},
    progress::NoProgress,
};
use notify::{
    EventKind, RecursiveMode,
    event::{AccessKind, AccessMode, ModifyKind},
};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

/// How long the debouncer waits for a burst to end before the batch goes.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// A file that stays open for writing is taken once its size and mtime are
/// the same across two looks this far apart.
pub const SETTLE: Duration = Duration::from_secs(2);

/// How soon a failed import is tried again without a new change.
const RETRY: Duration = Duration::from_secs(5);

/// The running watcher; dropping it stops it.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file seen being written: when it was last touched and how it looked.
struct Writing {
    since: Instant,
    look: Option<(u64, SystemTime)>,
}

fn look(p: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// A SQLite database or one of its companions: read through snapshots,
/// never held.
fn is_database(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    ["-wal", "-shm", "-journal"]
        .iter()
        .any(|s| name.ends_with(s))
        || bbsync_store::sqlite::is_database(p)
}

/// Starts watching `tree` (the primary's): scans it once now (the first
/// watch of a tree without a marker imports it as `import-bbs` would,
/// deletions included), writes out what the store holds that the tree
/// lacks (objects from a peer), marks the tree as the primary's, then
/// imports each change as it happens.
pub fn start(store: Arc<Store>, tree: Arc<LiveTree>) -> anyhow::Result<Watcher> {
    let root = tree.root().to_path_buf();
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, Some(Duration::from_millis(10)), tx)
        .context("starting the file watcher")?;
    debouncer
        .watch(&root, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", root.display()))?;
    tree.set_primary();
    let full = tree.marker()?.is_none();
    import(&store, &tree, &BTreeMap::new(), full);
    match store.tree_reconcile(&tree) {
        Ok(r) if r.written + r.removed > 0 => tracing::info!(
            written = r.written,
            removed = r.removed,
            "watch: wrote into the tree what the store held and it lacked"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("watch: writing out the store's objects failed: {e}"),
    }
    tree.write_marker(&Marker {
        format: 1,
        instance: store.instance_id().to_hex(),
        role: "primary".into(),
        upstream: None,
        seq: store.db().last_seq()?,
        updated_at_ms: bbsync_protocol::now_ms(),
    })?;
    update_status(|s| {
        s.tree = Some(root.clone());
        s.role = "primary".into();
    });
    tracing::info!(tree = %root.display(), "watching the BBS tree");
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            // The debouncer lives as long as the loop.
            let _debouncer = debouncer;
            run(&store, &tree, &rx, &stopping);
        })
        .context("starting the watcher thread")?;
    Ok(Watcher {
        stop,
        thread: Some(thread),
    })
}

/// Stops watching `tree` (`bbsync demote` on a running node): the watcher
/// (if any) is stopped and waited for, then the tree is a standby's again:
/// its marker says so and so does `status`.
pub fn stop(store: &Store, tree: &LiveTree, watcher: Option<Watcher>) -> anyhow::Result<()> {
    drop(watcher);
    tree.set_standby();
    // A primary's marker names no upstream: the follower writes both at
    // its next page.
    let old = tree.marker()?.filter(|m| m.role == "standby");
    tree.write_marker(&Marker {
        format: 1,
        instance: store.instance_id().to_hex(),
        role: "standby".into(),
        upstream: old.as_ref().and_then(|m| m.upstream.clone()),
        seq: old.as_ref().map_or(0, |m| m.seq),
        updated_at_ms: bbsync_protocol::now_ms(),
    })?;
    update_status(|s| {
        s.role = "standby".into();
        s.held.clear();
    });
    Ok(())
}

fn run(
    store: &Store,
    tree: &LiveTree,
    rx: &mpsc::Receiver<DebounceEventResult>,
    stop: &AtomicBool,
) {
    let root = tree.root().to_path_buf();
    let mut writing: BTreeMap<PathBuf, Writing> = BTreeMap::new();
    let mut dirty = false;
    let mut failing = false;
    let mut last_try = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let wait = if writing.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(100)
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(events)) => {
                for ev in events {
                    if ev.need_rescan() {
                        tracing::warn!(
                            "watch: the kernel's event queue overflowed; scanning the whole tree"
                        );
                        dirty = true;
                        continue;
                    }
                    dirty |= note(&root, &ev.event, &mut writing);
                }
            }
            Ok(Err(errors)) => {
                for e in errors {
                    tracing::warn!("watch: {e}; scanning the whole tree");
                }
                dirty = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // A writer that keeps its file open: taken once it stopped changing.
        let now = Instant::now();
        let mut settled = Vec::new();
        for (p, w) in writing.iter_mut() {
            if now.duration_since(w.since) < SETTLE {
                continue;
            }
            let l = look(&root.join(p));
            if l == w.look {
                settled.push(p.clone());
            } else {
                w.look = l;
                w.since = now;
            }
        }
        for p in settled {
            tracing::info!(path = %p.display(), "watch: unchanged for {}s while open: taking it", SETTLE.as_secs());
            writing.remove(&p);
            dirty = true;
        }
        // A failed import is tried again on the next change, or after a while.
        if dirty || (failing && last_try.elapsed() >= RETRY) {
            dirty = false;
            last_try = Instant::now();
            failing = !import(store, tree, &writing, false);
        }
    }
}

/// Notes one event; whether the tree may have changed.
fn note(root: &Path, ev: &notify::Event, writing: &mut BTreeMap<PathBuf, Writing>) -> bool {
    let rels: Vec<PathBuf> = ev
        .paths
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .filter(|r| !LiveTree::is_internal(r))
        .collect();
    if rels.is_empty() {
        return false;
    }
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            for r in &rels {
                writing.remove(r);
            }
            true
        }
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            for (r, p) in rels.iter().zip(&ev.paths) {
                if p.is_file() && !is_database(p) {
                    writing.entry(r.clone()).or_insert(Writing {
                        since: Instant::now(),
                        look: look(p),
                    });
                }
            }
            true
        }
        EventKind::Modify(ModifyKind::Name(_)) => {
            // Renamed into place: complete. Renamed away: gone from here.
            for r in &rels {
                writing.retain(|w, _| !w.starts_with(r));
            }
            true
        }
        EventKind::Remove(_) => {
            for r in &rels {
                writing.retain(|w, _| !w.starts_with(r));
            }
            true
        }
        _ => true,
    }
}

/// One import of the watched tree; false when it failed (tried again).
fn import(
    store: &Store,
    tree: &LiveTree,
    writing: &BTreeMap<PathBuf, Writing>,
    full: bool,
) -> bool {
    let held = |rel: &str| {
        let rel = Path::new(rel);
        writing.keys().any(|w| w.starts_with(rel))
    };
    let t = Instant::now();
    match store.import_live(tree, &held, full, &NoProgress) {
        Ok(r) => {
            let s = &r.stats;
            let changed = s.new + s.changed + s.deleted;
            if changed > 0 {
                tracing::info!(
                    new = s.new,
                    changed = s.changed,
                    deleted = s.deleted,
                    seq = s.seq,
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    "watch: imported"
                );
            }
            for (o, why) in &s.stuck {
                tracing::warn!("watch: not imported: {o}: {why}");
            }
            update_status(|st| {
                if changed > 0 {
                    st.imports += 1;
                    st.last_import_ms = Some(bbsync_protocol::now_ms());
                }
                st.held = r.held.clone();
                st.last_error = None;
            });
            true
        }
        Err(e) => {
            // A file being written can make a scan fail (a temp name the
            // layout does not know): that passes once it is complete.
            if writing.is_empty() {
                tracing::warn!(
                    "watch: importing the tree failed (tried again on the next change): {e}"
                );
            } else {
                tracing::debug!(
                    "watch: importing the tree failed while files are being written: {e}"
                );
            }
            update_status(|st| st.last_error = Some(format!("import: {e}")));
            false
        }
    }
}
