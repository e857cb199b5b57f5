//! Helpers shared by the store's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// A temporary directory for a test, in memory when possible: the same
/// rule as `bbsync_tests::tempdir` (tests/src/scratch.rs), which the store
/// cannot depend on (that crate depends on the store).
pub fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("bbsync-test-");
    if let Some(d) = std::env::var_os("BBSYNC_TEST_TMPDIR") {
        return b.tempdir_in(d);
    }
    let shm = Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm)
        .is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) >= 2 << 30)
        && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok();
    if roomy {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    }
}

/// Writes `data` to `root/rel`, creating parent directories.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Pseudo-random bytes (xorshift), so chunks are incompressible and distinct.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every path under `root` -> file bytes (None for directories).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Files under `dir` (recursively) of a repository, as paths relative to
/// it, sorted (temp files included).
pub fn files(repo: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(repo).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Reads every object of a format-2 snapshot back through the index: each
/// manifest's file hashes to its name and decodes, each chunk hashes to
/// its id. Returns how many chunks were read.
pub fn read_back(
    repo: &bbsync_store::backup::v2::Repo2,
    snapshot: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    use bbsync_protocol::{Manifest, Unverified};
    let s = repo.load_snapshot(snapshot)?;
    let ix = repo.load_index()?;
    let mut chunks = 0;
    for o in &s.objects {
        let f = repo.read_manifest(&ix, &o.manifest_id)?;
        let m = Unverified::<Manifest>::decode(&f.manifest)?.dangerously_assume_verified();
        for c in &m.chunks {
            assert_eq!(repo.read_chunk(&ix, &c.id)?.len(), c.len as usize);
            chunks += 1;
        }
    }
    Ok(chunks)
}
