//! Crash safety of backups: a real `kill -9` of `backup` and of `restore`
//! (the failpoint crash matrix crashes every step of both
//! deterministically; these are the sanity checks), then a rerun. Kills are
//! triggered by progress seen on disk (chunk files in the repository,
//! entries in the store's packs), not by time, and each chunk copy is slowed by a
//! millisecond (a failpoint's `sleep`), so they land inside the command on
//! any machine. Afterwards the repository verifies (`--read-data`), the
//! restored store verifies (`--read-data`) and exports the same tree.

#![allow(clippy::unwrap_used)]

use std::{fs, path::Path, time::Instant};

use crate::common::*;

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

#[test]
fn backup_and_restore_survive_kill_9() -> TestResult {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.2}s {what}", t0.elapsed().as_secs_f64());
    let t = bbsync_tests::tempdir()?;
    // 1,200 messages of 2-18 KB (one chunk each): enough chunk files for
    // kills to land inside a run, quick to import.
    let tree = t.path().join("bbs");
    message_tree(&tree, 1200, 0x9E37_79B9_7F4A_7C15);
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

    // backup --copy (copies take long enough to be killed inside), killed
    // once a third of the chunks are in the repository.
    let landed = kill_at(
        &a,
        &["backup", "--repo-format", "1", "--repo", r, "--copy"],
        "backup.stage",
        total / 3,
        || chunk_entries(&repo),
    );
    assert!(landed, "the backup ended before the kill");
    // No snapshot may exist yet that points at missing data.
    assert_eq!(
        fs::read_dir(repo.join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "a killed backup left a snapshot"
    );
    phase("backup killed");
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
    // the operator names a as the snapshots' host), killed once a third of
    // the chunks are in the store.
    let host = card(&a);
    let landed = kill_at(
        &b,
        &["restore", "--repo", r, "--trust-host", &host],
        "pack.stage",
        total / 3,
        || pack_entries(&b),
    );
    assert!(landed, "the restore ended before the kill");
    phase("restore killed");
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
