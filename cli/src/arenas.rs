//! glibc's malloc arenas, limited for the commands whose memory grows with
//! the store.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight
//! per core, and an arena keeps what its threads freed. A node's threads
//! (the async runtime's workers and blocking pool, rayon's, sled's) pass
//! chunk buffers and records around, so a 200,000-object clone peaked at
//! 359-463 MB of RSS for 165 MB of live heap (`heaptrack`), and at
//! 218-231 MB with two arenas, in the same time.
//!
//! The number of arenas is read once, from `MALLOC_ARENA_MAX`, before
//! `main` runs; setting it in-process needs `mallopt`, which is `unsafe`
//! (this workspace forbids it). So these commands execute themselves
//! once more (`/proc/self/exe`, same arguments, same process id) with
//! `MALLOC_ARENA_MAX=2` added, before any thread starts. A variable that
//! is set already, to any value, is left as it is (that is also how the
//! second execution knows it is one): an operator who wants glibc's
//! default sets `MALLOC_ARENA_MAX=0` (see mallopt(3)). When the execution
//! fails, the command runs as it is.

use std::ffi::OsString;

/// The variable glibc reads.
const VAR: &str = "MALLOC_ARENA_MAX";
/// Two arenas: the figures above, and what the systemd units in contrib/
/// set.
const ARENAS: &str = "2";

/// Executes this process again with [`VAR`] set, unless it is set already
/// or this is not glibc on Linux. Returns only when it did not (with why,
/// when an execution was tried and failed).
pub fn limit(args: Vec<OsString>) -> Option<std::io::Error> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(VAR).is_some() {
        return None;
    }
    reexec(args)
}

#[cfg(unix)]
fn reexec(args: Vec<OsString>) -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let mut args = args.into_iter();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` returns only on failure.
    Some(cmd.args(args).env(VAR, ARENAS).exec())
}

#[cfg(not(unix))]
fn reexec(_: Vec<OsString>) -> Option<std::io::Error> {
    None
}
