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
//!
//! Every point is listed in [`POINTS`] with the command paths that pass
//! it, so that the crash-matrix tests can enumerate them.

use std::io;

/// Every failpoint in the store and node crates: `(name, what it guards)`.
/// Names are `area.step`; the crash-matrix tests iterate over this list.
pub const POINTS: &[(&str, &str)] = &[
    (
        "file.rename",
        "write_file_atomic: the temp file is written and synced, before its rename (identity, config)",
    ),
    (
        "restore.commit",
        "restore: the chunks are published (durable under their names), before the records are committed",
    ),
    (
        "migrate.batch",
        "schema migration: after each batch of rewritten records is flushed, before the next (and before the schema number is raised)",
    ),
    (
        "import.after_walk",
        "import (import, import-bbs, rekey --rotate): the sources are walked, before the first is opened and read",
    ),
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
