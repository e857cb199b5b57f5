//! Named failpoints on the durable write paths, for crash and fault tests.
//!
//! Compiled in only with the cargo feature `failpoints` (the workspace's
//! tests turn it on through a dev-dependency; release builds never have
//! it). A test configures points through the `FAILPOINTS` environment
//! variable of a real `bbsync` process, in the `fail` crate's syntax,
//! `NAME=ACTION[;NAME=ACTION...]`, where the actions this project gives
//! meaning to are:
//!
//! | action                  | effect at the hit                                              |
//! |-------------------------|----------------------------------------------------------------|
//! | `return(abort)`         | the process dies at once (`abort`: no destructors, no flush), as `kill -9` would |
//! | `return(enospc)`        | the write fails with `ENOSPC` (disk full)                      |
//! | `return(eio)`           | the write fails with `EIO`                                     |
//! | `N*off->return(abort)`  | the same at the (N+1)-th hit (the `fail` crate's counting)     |
//! | `1*return(enospc)`      | `ENOSPC` at the first hit only (a retrying follower goes on)   |
//!
//! Every point is listed in [`POINTS`] with what a crash there leaves
//! behind; `cli/tests/integration/crash_matrix.rs` runs every one of them on every
//! command path that passes it (docs/dev-notes.md has the table).

use std::io;

/// Every failpoint in the store and node crates: `(name, what a crash or
/// an injected error there leaves behind)`. Names are `area.step`; the
/// crash-matrix tests (`cli/tests/integration/crash_matrix.rs`) fail when a point here
/// is on none of their rows, or when the code has a point not listed here.
pub const POINTS: &[(&str, &str)] = &[
    // Files written whole (identity, config).
    (
        "file.rename",
        "write_file_atomic: the temp file is written and synced, before its rename (identity, config)",
    ),
    // Chunk files (chunks.rs): stage, syncfs, rename, syncfs, record.
    // The database (db.rs): every sled write, and its flush.
    (
        "db.commit",
        "before one atomic batch of object records (with the change log) is applied",
    ),
    (
        "db.mark_complete",
        "before one atomic batch of objects is marked complete",
    ),
    (
        "db.update_record",
        "before one object's record is replaced in place (local state, envelope)",
    ),
    (
        "db.set_cursor",
        "before a follower's upstream cursor is written",
    ),
    ("db.put_trust", "before a trust record is written"),
    ("db.remove_trust", "before a trust record is removed"),
    (
        "db.flush",
        "before sled's flush, which makes the writes before it durable",
    ),
    // gc (lib.rs).
    // import (import.rs): seal and stage, publish, commit, gc.
    (
        "import.publish",
        "every source sealed and its new chunks staged, before they are published",
    ),
    (
        "import.commit",
        "the new chunks published, before the manifests are committed",
    ),
    (
        "import.gc",
        "the import committed, before the chunks of replaced versions are collected (an error here is logged, the import stands)",
    ),
    // clone and follow (node crate): manifests, chunks, completion, cursor.
    (
        "clone.accept",
        "clone: a page of manifests received and checked, before it is recorded (incomplete)",
    ),
    (
        "fetch.publish",
        "clone, fetch-missing, follow: a group of received chunks staged, before it is published",
    ),
    (
        "clone.complete",
        "clone: every chunk fetched, before the objects are marked complete",
    ),
    (
        "clone.gc",
        "clone: complete, before the chunks of replaced versions are collected (an error here is logged)",
    ),
    (
        "follow.accept",
        "follow: a batch of manifests of a change page received, before it is recorded",
    ),
    (
        "follow.complete",
        "follow: the page's chunks fetched, before its objects are marked complete",
    ),
    (
        "follow.cursor",
        "follow: the page applied, before the upstream cursor advances",
    ),
    // backup (backup/): chunks, manifests, snapshot last.
    (
        "backup.repo_config",
        "a new repository: its directory made, before repo.json is written",
    ),
    (
        "backup.stage",
        "before one chunk is copied to a temp file in the repository (--copy, other file system)",
    ),
    (
        "backup.sync_chunks",
        "a group of copied chunks staged, before the syncfs that makes them durable",
    ),
    (
        "backup.publish",
        "before one copied chunk is renamed to its final name in the repository",
    ),
    ("backup.manifest", "before one manifest file is written"),
    (
        "repo.rename",
        "a repository file (repo.json, manifest, key, snapshot) written to its temp file, before its rename",
    ),
    (
        "backup.sync",
        "chunks and manifests written, before the syncfs that makes them durable",
    ),
    (
        "backup.snapshot",
        "everything durable, before the snapshot file (written last) is written",
    ),
    // format-2 forget and prune (backup/v2/prune.rs): new packs, new index
    // files, snapshots, sync, old index files, sync, packs, key files.
    (
        "prune2.repack",
        "prune (format 2): before one repacked pack is written (a crash leaves earlier new packs that no index file names yet: unindexed-pack, removed by the next prune)",
    ),
    (
        "prune2.index",
        "prune (format 2): the repacked packs written, before one new index file is written (the old index files still name every live entry)",
    ),
    (
        "prune2.forget",
        "forget, prune (format 2): before one snapshot file is removed (its data stays until a prune finishes)",
    ),
    (
        "prune2.sync",
        "prune (format 2): new packs, new index files and snapshot removals written, before the syncfs that makes them durable (nothing old removed yet)",
    ),
    (
        "prune2.remove_index",
        "prune (format 2): before one old index file is removed (oldest sequence first; the new index files name everything live)",
    ),
    (
        "prune2.sync_removed",
        "prune (format 2): the old index files removed, before the syncfs that makes that durable (before any pack is deleted)",
    ),
    (
        "prune2.remove_pack",
        "prune (format 2): before one pack is deleted (repacked, dead, or named by no index file; a crash leaves unindexed packs)",
    ),
    (
        "prune2.remove_key",
        "prune (format 2): before one key file no remaining snapshot names is removed",
    ),
    // (Format 2 passes backup.repo_config (config), backup.stage (one pack
    // written whole), backup.sync_chunks (the packs durable), backup.manifest
    // (one index file), backup.sync and backup.snapshot.)
    // backups migrate (backup/migrate.rs): packs, index, snapshots, the
    // switch to config, then the format-1 files removed.
    (
        "repo_migrate.pack",
        "backups migrate: before one data or manifest pack is written",
    ),
    (
        "repo_migrate.sync",
        "backups migrate: packs written, before the sync that precedes their index file",
    ),
    (
        "repo_migrate.index",
        "backups migrate: packs durable, before the index file naming them is written",
    ),
    (
        "repo_migrate.snapshot",
        "backups migrate: every pack indexed, before one snapshot's signed bytes are written to snapshots/<id>",
    ),
    (
        "repo_migrate.config",
        "backups migrate: everything of format 2 durable, before config (the switch) is written",
    ),
    (
        "repo_migrate.cleanup",
        "backups migrate: config written, before the format-1 files and repo.json are removed",
    ),
    // restore (backup/restore.rs): chunks (chunks.*), then the records.
    (
        "pack.stage",
        "before one chunk is appended to the open pack's write buffer (import, clone, follow, fetch-missing, restore, migrate)",
    ),
    (
        "pack.create",
        "a new open pack: before it is recorded in the database and its file created (every write: import, clone, restore, gc repack, migrate)",
    ),
    (
        "pack.write",
        "appending: before buffered entries are written to the open pack (bytes beyond the committed length)",
    ),
    (
        "pack.sync",
        "publish: the appended bytes are written, before the pack's fdatasync",
    ),
    (
        "index.commit",
        "publish: the packs are durable, before the index records and committed lengths are committed",
    ),
    (
        "index.committed",
        "publish: the index is committed, before the caller records its manifests (the collect marker is set)",
    ),
    (
        "pack.seal",
        "sealing a full pack: before its trailer is written",
    ),
    (
        "pack.sealed",
        "sealing: the trailer is durable, before the pack is recorded as sealed",
    ),
    (
        "gc.drop",
        "gc: before unreferenced chunks are dropped from the index",
    ),
    (
        "gc.repack",
        "gc: the repacked copies and the doomed list are durable, before the old packs are deleted",
    ),
    (
        "gc.delete",
        "gc: before each pack file is deleted (repacked or empty)",
    ),
    (
        "index.rebuild",
        "repair-index: before the records of each pack are written",
    ),
    (
        "migrate.group",
        "migrate: a group of chunk files is durable and indexed in packs",
    ),
    (
        "migrate.schema",
        "migrate: every chunk is in packs, before the schema number is set",
    ),
    (
        "migrate.cleanup",
        "migrate: the schema says packs, before the old chunks/ directory is removed",
    ),
    (
        "restore.commit",
        "every needed chunk published, before trust and the object records are committed",
    ),
    (
        "restore.rekey",
        "the records committed, before --rekey adds envelope entries",
    ),
    // schema migration (migrate.rs).
    (
        "migrate.batch",
        "schema migration: after each batch of rewritten records is flushed, before the next (and before the schema number is raised)",
    ),
    // import's walk (import.rs), used by in-process tests through on_hit.
    (
        "import.after_walk",
        "import (import, import-bbs, rekey --rotate): the sources are walked, before the first is opened and read",
    ),
    // SQLite databases written out (sqlite/).
    (
        "sqlite.rename",
        "sqlite::FileOut: a database written out is synced and checked, stale companions removed, before its rename (export, export-bbs, restore --to-tree)",
    ),
    (
        "live.write",
        "live tree (serve --follow --tree): an applied object is about to be written into the tree (temp file, fsync, rename); the change-log cursor has not moved yet",
    ),
];

/// Reads `FAILPOINTS` from the environment (no-op without the feature).
/// Call once at the start of a process that may be crash-tested.
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    {
        // Configures the points named in FAILPOINTS (a malformed spec
        // panics: a test bug). The scenario lives as long as the process.
        if std::env::var_os("FAILPOINTS").is_some() {
            std::mem::forget(fail::FailScenario::setup());
        }
    }
}

/// Runs `f` (in the thread that passes it) each time the failpoint `name`
/// is passed, until [`clear`]: for in-process tests that change the world
/// at exactly that point (e.g. swap a file for a symlink between an
/// import's walk and its reads). Only with the `failpoints` feature.
#[cfg(feature = "failpoints")]
pub fn on_hit(name: &str, f: impl Fn() + Send + Sync + 'static) -> Result<(), String> {
    fail::cfg_callback(name, f)
}

/// Removes what a test configured at the failpoint `name`.
#[cfg(feature = "failpoints")]
pub fn clear(name: &str) {
    fail::remove(name);
}

/// Passes the failpoint `name`: `Ok(())` unless a test configured it (see
/// the module docs). Callers add their usual I/O context to the error.
#[inline]
pub fn hit(name: &'static str) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!(name, |arg: Option<String>| inject(name, arg.as_deref()));
    }
    let _ = name;
    Ok(())
}

/// [`hit`] as a store error: an injected I/O error becomes
/// [`crate::StoreError::Io`] with `context` (what was about to be written,
/// as the real failure there would say).
pub fn check(name: &'static str, context: impl FnOnce() -> String) -> crate::Result<()> {
    hit(name).map_err(|source| crate::StoreError::Io {
        context: context(),
        source,
    })
}

#[cfg(feature = "failpoints")]
fn inject(name: &str, action: Option<&str>) -> io::Result<()> {
    match action {
        Some("abort") => {
            eprintln!("failpoint {name}: abort");
            std::process::abort()
        }
        Some("enospc") => Err(io::Error::from_raw_os_error(28)),
        Some("eio") => Err(io::Error::from_raw_os_error(5)),
        other => {
            eprintln!("error: failpoint {name}: unknown action {other:?}");
            std::process::abort()
        }
    }
}
