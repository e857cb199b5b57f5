//! Crash safety of backups: `kill -9` of `backup` and of `restore` at
//! random moments, then a rerun. Kills are triggered by progress seen on
//! disk (chunk files in the repository, entries in the store's packs), not by time, so a
//! resumed run that is shorter than the first still gets killed inside.
//! Afterwards the repository verifies (`--read-data`), the restored store
//! verifies (`--read-data`) and exports the same tree.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// xorshift, so a failing trial can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Entries (chunk files and temp files) under `dir/chunks/*/`.
fn chunk_entries(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir.join("chunks")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| fs::read_dir(e.path()).map(|r| r.count()).unwrap_or(0))
        .sum()
}

/// Files under `dir` (recursively) whose name satisfies `f`.
fn walkdir_count(dir: &Path, f: impl Fn(&str) -> bool + Copy) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir_count(&e.path(), f)
            } else {
                usize::from(f(&e.file_name().to_string_lossy()))
            }
        })
        .sum()
}

/// Runs `bbsync --data-dir DATA ARGS` and kills it with SIGKILL once
/// `progress()` reaches `target`. Returns whether the kill landed (the
/// process was still running).
fn kill_at(data: &Path, args: &[&str], target: usize, progress: impl Fn() -> usize) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("BBSYNC_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if progress() >= target || Instant::now() > deadline {
            let _ = child.kill(); // SIGKILL
            let st = child.wait().unwrap();
            return st.code().is_none();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn backup_and_restore_survive_kill_9() -> TestResult {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.2}s {what}", t0.elapsed().as_secs_f64());
    let t = tempfile::tempdir()?;
    // 1,200 messages of 2-18 KB (one chunk each): enough chunk files for
    // kills to land inside a run, quick to import.
    let tree = t.path().join("bbs");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..1200u64 {
        let len = 1000 + (rng.next() % 8000) as usize;
        let body: String = (0..len)
            .map(|_| format!("{:02x}", rng.next() as u8))
            .collect();
        write(
            &tree.join(format!("boards/b{}/{i}.json", i % 8)),
            format!("{{\"id\":{i},\"body\":\"{body}\"}}\n"),
        );
    }
    let a = t.path().join("a");
    let b = t.path().join("b");
    init(&a, "source");
    init(&b, "target");
    ok(&a, &["trust", "add", "--role", "full", &card(&b)]);
    ok(&a, &["import-bbs", tree.to_str().unwrap()]);
    phase("generated and imported");
    let total = chunk_files(&a).len();
    assert!(total >= 1200, "{total}");
    let repo = t.path().join("repo");
    let r = repo.to_str().unwrap();
    rng = Rng(0x2545_F491_4F6C_DD1D);

    // backup --copy (copies take long enough to be killed inside).
    let mut landed = 0;
    for _ in 0..6 {
        let have = chunk_entries(&repo);
        if have >= total {
            break;
        }
        let target = have + 1 + (rng.next() as usize % (total - have)).min(total / 6);
        if kill_at(&a, &["backup", "--repo", r, "--copy"], target, || {
            chunk_entries(&repo)
        }) {
            landed += 1;
            // No snapshot may exist yet that points at missing data.
            assert_eq!(
                fs::read_dir(repo.join("snapshots"))
                    .map(|d| d.count())
                    .unwrap_or(0),
                0,
                "a killed backup left a snapshot"
            );
        }
    }
    phase(&format!("{landed} kills landed inside a backup"));
    assert!(landed >= 3, "only {landed} kills landed inside a backup");
    let done = json(&a, &["backup", "--repo", r, "--copy"]);
    assert!(
        done["chunks_new"].as_u64().unwrap() < total as u64,
        "{done}"
    );
    let out = ok(&a, &["backups", "verify", "--repo", r, "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    // prune clears what the killed runs left: temp files, nothing else.
    let p = json(&a, &["backups", "prune", "--repo", r]);
    assert_eq!(
        (
            p["chunks_removed"].as_u64(),
            p["manifests_removed"].as_u64()
        ),
        (Some(0), Some(0)),
        "{p}"
    );
    let temps = walkdir_count(&repo, |n| n.starts_with('.') && n.ends_with(".tmp"));
    assert_eq!(temps, 0, "temp files left after prune");

    // restore into b (its own identity, with entries in every envelope;
    // the operator names a as the snapshots' host).
    let host = card(&a);
    let mut landed = 0;
    for _ in 0..6 {
        let have = pack_entries(&b);
        if have >= total {
            break;
        }
        let target = have + 1 + (rng.next() as usize % (total - have)).min(total / 6);
        if kill_at(
            &b,
            &["restore", "--repo", r, "--trust-host", &host],
            target,
            || pack_entries(&b),
        ) {
            landed += 1;
        }
    }
    phase(&format!("{landed} kills landed inside a restore"));
    assert!(landed >= 3, "only {landed} kills landed inside a restore");
    let done = json(&b, &["restore", "--repo", r, "--trust-host", &host]);
    assert_eq!(done["undecryptable"], serde_json::json!([]), "{done}");
    phase("restore completed");
    let (code, v) = verify(&b, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let exp = t.path().join("exp");
    ok(&b, &["export-bbs", exp.to_str().unwrap()]);
    assert_same_tree(&tree, &exp);
    let out = ok(&a, &["backups", "verify", "--repo", r, "--read-data"]);
    assert!(out.contains(": OK"), "{out}");
    phase("verified");
    Ok(())
}
