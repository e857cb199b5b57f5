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
    (
        "chunks.stage",
        "before a chunk's temp file is written (the dirty marker is durable)",
    ),
    (
        "chunks.sync_staged",
        "publish: before the syncfs that makes the staged temp files durable",
    ),
    (
        "chunks.rename",
        "publish: before one staged chunk is renamed to its final name",
    ),
    (
        "chunks.sync_renamed",
        "publish: every staged chunk renamed, before the syncfs that makes the renames durable",
    ),
    (
        "chunks.recorded",
        "the caller recorded the published chunks, before the dirty marker goes (abort only: nothing can fail here)",
    ),
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
    ("gc.remove", "before one unreferenced chunk file is removed"),
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
        "backup.link",
        "before one chunk is hard-linked into the repository",
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
    // restore (backup/restore.rs): chunks (chunks.*), then the records.
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
