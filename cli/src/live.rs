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
//! through consistent snapshots. A batch looks only at the paths its
//! events name ([`Store::import_live_paths`]: the directories on the way
//! to them are not listed, their entries are looked up directly), so it
//! costs what changed, not the tree. At start-up, and whenever the
//! kernel's queue overflowed or a path is not UTF-8, the whole tree is
//! scanned again (the metadata digests make that cheap next to reading),
//! so nothing written while the node was down is missed.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    bbs::Focus,
    live::{LiveTree, Marker, Unrecorded, update_status},
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
    // The first watch of a tree: the tree is the whole truth.
    let unrecorded = if tree.marker()?.is_none() {
        Unrecorded::Tombstone
    } else {
        Unrecorded::Keep
    };
    // A failed start-up import is tried again whole (not only the paths
    // of the next events).
    let started = import(&store, &tree, &BTreeMap::new(), None, unrecorded);
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
        seq: store.last_seq()?,
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
            run(&store, &tree, &rx, &stopping, !started);
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
    rescan_first: bool,
) {
    let root = tree.root().to_path_buf();
    let mut writing: BTreeMap<PathBuf, Writing> = BTreeMap::new();
    // The paths the next batch looks at, or the whole tree (`rescan`).
    let mut focus: BTreeSet<String> = BTreeSet::new();
    let mut rescan = rescan_first;
    let mut dirty = false;
    let mut failing = rescan_first;
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
                        rescan = true;
                        continue;
                    }
                    if note(&root, &ev.event, &mut writing) {
                        dirty = true;
                        rescan |= !add_focus(&root, &ev.event.paths, &mut focus);
                    }
                }
            }
            Ok(Err(errors)) => {
                for e in errors {
                    tracing::warn!("watch: {e}; scanning the whole tree");
                }
                dirty = true;
                rescan = true;
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
            rescan |= !add_focus(&root, &[root.join(&p)], &mut focus);
            dirty = true;
        }
        // A failed import is tried again on the next change, or after a while.
        if dirty || (failing && last_try.elapsed() >= RETRY) {
            dirty = false;
            last_try = Instant::now();
            let batch = Focus::new(focus.iter().cloned());
            let scope = if rescan { None } else { Some(&batch) };
            failing = !import(store, tree, &writing, scope, Unrecorded::Keep);
            // A failed batch is tried again whole (its paths kept).
            if !failing {
                focus.clear();
                rescan = false;
            }
        }
    }
}

/// Adds the paths of an event (below `root`, bbsync's own left out) to the
/// next batch's focus; false when one is not UTF-8 (the batch then scans
/// the whole tree, which reports it).
fn add_focus(root: &Path, paths: &[PathBuf], focus: &mut BTreeSet<String>) -> bool {
    for p in paths {
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        if LiveTree::is_internal(rel) {
            continue;
        }
        match rel.to_str() {
            Some(r) => {
                focus.insert(r.to_string());
            }
            None => return false,
        }
    }
    true
}

/// Notes one event; whether the tree may have changed.
fn note(root: &Path, ev: &notify::Event, writing: &mut BTreeMap<PathBuf, Writing>) -> bool {
    let rels: Vec<PathBuf> = ev
        .paths
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .filter(|r| !LiveTree::is_internal(r))
        // A database's `-shm` is the readers' shared index, written by every
        // reader (this watcher's own snapshot too), and its `-wal` and
        // `-journal` are opened for writing (closed, their metadata set: SQLite
        // running as root chowns them) by every reader: none of that is
        // content (a write to them is an `IN_MODIFY`), and taking it as a
        // change would make each batch's snapshot trigger the next.
        .filter(|r| {
            let name = r.to_string_lossy();
            let companion = name.ends_with("-wal") || name.ends_with("-journal");
            !(name.ends_with("-shm")
                || (companion
                    && matches!(
                        ev.kind,
                        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_)
                    )))
        })
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

/// One import of the watched tree (only what `focus` names, or the whole
/// tree); false when it failed (tried again).
fn import(
    store: &Store,
    tree: &LiveTree,
    writing: &BTreeMap<PathBuf, Writing>,
    focus: Option<&Focus>,
    unrecorded: Unrecorded,
) -> bool {
    let held = |rel: &str| {
        let rel = Path::new(rel);
        writing.keys().any(|w| w.starts_with(rel))
    };
    let t = Instant::now();
    let result = match focus {
        Some(f) => store.import_live_paths(tree, f, &held, &NoProgress),
        None => store.import_live(tree, &held, unrecorded, &NoProgress),
    };
    // What scripts/bench-watch.sh reads.
    tracing::debug!(
        paths = focus.map_or(0, |f| f.paths().count()),
        first = focus.and_then(|f| f.paths().next()).unwrap_or(""),
        whole_tree = focus.is_none(),
        written = result
            .as_ref()
            .map_or(0, |r| r.stats.new + r.stats.changed + r.stats.deleted),
        elapsed_us = t.elapsed().as_micros() as u64,
        "watch: batch"
    );
    match result {
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
