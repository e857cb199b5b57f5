//! Crash safety of import: `kill -9` an `import-bbs` at random moments, then
//! check that the store opens, that everything it calls complete is on disk
//! and intact (`verify --read-data`), that no temp file is left, and that a
//! final import converges to a store whose export equals the tree.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use common::*;

/// A small deterministic generator (xorshift), so a failing trial can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    fn frac(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() % 10_000) as f64 / 10_000.0
    }
}

#[test]
fn import_survives_kill_9_at_random_moments() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Two sample BBSes with the same layout and different content: switching
    // between them rewrites most objects (new versions, tombstones, new
    // objects), so every import is long enough for a kill to land inside.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-bbs.py");
    let trees: Vec<_> = [7, 8]
        .iter()
        .map(|seed| {
            let t = tmp.path().join(format!("tree-{seed}"));
            let st = Command::new("python3")
                .arg(&script)
                .args(["--profile", "small", "--seed", &seed.to_string()])
                .arg(&t)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "gen-bbs.py failed");
            t
        })
        .collect();
    let tree = &trees[0];
    let tree_s = tree.to_str().unwrap();

    // How long a whole import takes here, so that kills land inside one.
    let scratch = tmp.path().join("scratch");
    init(&scratch, "scratch");
    let t0 = Instant::now();
    ok(&scratch, &["import-bbs", tree_s]);
    let full = t0.elapsed();

    let data = tmp.path().join("data");
    init(&data, "crashy");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut killed = 0;
    for trial in 0..10u64 {
        let this = trees[trial as usize % 2].to_str().unwrap();
        let delay = full.mul_f64(rng.frac(0.02, 0.6));
        let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
            .arg("--no-progress")
            .arg("--data-dir")
            .arg(&data)
            .args(["import-bbs", this])
            .env_remove("BBSYNC_DATA")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(delay);
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL
            killed += 1;
        }
        child.wait()?;
        // The lock of the killed process is gone with it.
        wait_unlocked(&data);
        let (code, report) = verify(&data, &["--read-data"]);
        assert_eq!(
            code, 0,
            "trial {trial} (killed after {delay:?}): verify after the kill: {report}"
        );
        assert!(
            chunk_temp_files(&data).is_empty(),
            "trial {trial}: temp files left after reopening"
        );
        assert!(
            !chunk_files(&data).contains(std::path::Path::new("collect")),
            "trial {trial}: collect marker left after recovery"
        );
    }
    eprintln!("{killed} of 10 kills landed during an import (a whole import takes {full:?})");
    assert!(
        killed >= 5,
        "only {killed} of 10 kills landed during an import (import took {full:?})"
    );

    // The next import finishes the job; the store then equals the tree.
    ok(&data, &["import-bbs", tree_s]);
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "final verify: {report}");
    let out = tmp.path().join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(tree, &out);
    // Importing once more changes nothing: the interrupted runs left no
    // half-recorded object behind.
    let again = json(&data, &["import-bbs", tree_s]);
    assert_eq!(again["new"], 0);
    assert_eq!(again["changed"], 0);
    assert_eq!(again["deleted"], 0);
    Ok(())
}
