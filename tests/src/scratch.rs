//! Where tests keep their scratch data (stores, trees, repositories).

use std::path::{Path, PathBuf};

/// Free space a memory file system must have to be used for scratch data.
const MIN_FREE: u64 = 2 << 30;

/// A temporary directory for one test's data dirs, trees and repositories,
/// removed when dropped.
///
/// It lives under `BBSYNC_TEST_TMPDIR` when that is set, else in `/dev/shm`
/// when that is a writable memory file system with at least 2 GiB free,
/// else in the system temp dir. Memory rather than disk because the tests
/// create and delete hundreds of thousands of small files: on a busy ext4
/// disk, removing one test's directory alone took 20 s (docs/dev-notes.md).
/// What the tests prove about crashes does not depend on it: they kill or
/// abort processes, and the page cache survives a process on any file
/// system.
pub fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("bbsync-test-");
    match scratch_root() {
        Some(root) => b.tempdir_in(root),
        None => b.tempdir(),
    }
}

/// The directory [`tempdir`] creates its directories in, when not the
/// system temp dir.
pub fn scratch_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BBSYNC_TEST_TMPDIR") {
        return Some(PathBuf::from(d));
    }
    let shm = Path::new("/dev/shm");
    let st = rustix::fs::statvfs(shm).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let writable = rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok();
    (writable && free >= MIN_FREE).then(|| shm.to_path_buf())
}
