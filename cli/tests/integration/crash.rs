//! Real `kill -9` of `import-bbs` and of `gc`, as a sanity check beside the
//! failpoint crash matrix (`crash_matrix.rs`, which crashes every step of
//! every write deterministically). The kill is triggered by progress seen
//! on disk (pack entries appearing, a repacked pack appearing), not by a
//! timer, and the command is held at that step (a failpoint's `sleep`;
//! nothing fails), so it lands inside the command on any machine, whatever
//! its disk. Afterwards the store
//! opens, everything it calls complete is on disk and intact (`verify
//! --read-data`), no temp file or marker is left, and the command run again
//! converges to a store whose export equals the tree.

#![allow(clippy::unwrap_used)]

use crate::common::*;

#[test]
fn import_survives_kill_9() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    // Two trees with the same names and other content: importing the
    // second over the first rewrites every object (1,200 new chunk files).
    let trees: Vec<_> = [7, 8]
        .iter()
        .map(|seed| {
            let t = tmp.path().join(format!("tree-{seed}"));
            message_tree(&t, 1200, *seed);
            t
        })
        .collect();
    let data = tmp.path().join("data");
    init(&data, "crashy");
    ok(&data, &["import-bbs", trees[0].to_str().unwrap()]);

    // Killed while it stages the new chunks (a third of them written).
    let tree = trees[1].to_str().unwrap();
    let base = pack_entries(&data);
    let landed = kill_at(&data, &["import-bbs", tree], "pack.stage", 400, || {
        pack_entries(&data).saturating_sub(base)
    });
    assert!(landed, "the import ended before the kill");
    // The lock of the killed process is gone with it.
    wait_unlocked(&data);
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "verify after the kill: {report}");
    assert!(
        chunk_temp_files(&data).is_empty(),
        "temp files left after reopening"
    );
    assert!(
        !chunk_files(&data).contains(std::path::Path::new("collect")),
        "dirty marker left after recovery"
    );
    // Nothing of the killed import is visible: the first tree is intact.
    let out = tmp.path().join("out-1");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&trees[0], &out);

    // The next import finishes the job; the store then equals the tree.
    ok(&data, &["import-bbs", tree]);
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "final verify: {report}");
    let out = tmp.path().join("out-2");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&trees[1], &out);
    // Importing once more changes nothing: the interrupted run left no
    // half-recorded object behind.
    let again = json(&data, &["import-bbs", tree]);
    assert_eq!(again["new"], 0);
    assert_eq!(again["changed"], 0);
    assert_eq!(again["deleted"], 0);
    Ok(())
}

#[test]
fn gc_survives_kill_9() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    // Incompressible files, imported in two steps so that the first pack
    // is sealed holding all of kept.bin (6 MB) and the start of
    // dropped.bin (20 MB): once dropped.bin is gone, that pack is mostly
    // dead and the collection repacks it (moving kept.bin's chunks).
    let tree = tmp.path().join("tree");
    message_tree(&tree, 20, 5);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng.to_le_bytes()
            })
            .collect()
    };
    write(&tree.join("files/kept.bin"), random(6 << 20));
    let data = tmp.path().join("data");
    init(&data, "collected");
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    write(&tree.join("files/dropped.bin"), random(20 << 20));
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    std::fs::remove_file(tree.join("files/dropped.bin"))?;

    // The import's collection, killed while the repack copies the live
    // chunks of that pack (their first bytes reaching the open pack are
    // the trigger; each copy is held a tenth of a second there, so the
    // kill lands inside the repack on any machine).
    let base = pack_entries(&data);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bbsync"))
        .arg("--no-progress")
        .arg("--data-dir")
        .arg(&data)
        .args(["import-bbs", tree.to_str().unwrap()])
        .env_remove("BBSYNC_DATA")
        .env("FAILPOINTS", "pack.stage=sleep(100)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while pack_entries(&data) <= base && std::time::Instant::now() < deadline {
        assert!(
            child.try_wait()?.is_none(),
            "the import ended before the repack"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait()?.is_none(),
        "the import ended before the kill"
    );
    child.kill()?; // SIGKILL
    assert!(child.wait()?.code().is_none());
    wait_unlocked(&data);

    // The store opens, and everything it calls complete is intact; the
    // next open collects what the killed run left.
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "verify after the kill: {report}");
    ok(&data, &["gc"]);
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "final verify: {report}");
    // About 6 MB live; 26 MB were stored before the collection.
    let stored: u64 = pack_files(&data)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(stored < 12 << 20, "{stored} bytes of packs left after gc");
    let out = tmp.path().join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    // Run again, the import changes nothing.
    let again = json(&data, &["import-bbs", tree.to_str().unwrap()]);
    assert_eq!(again["new"], 0);
    assert_eq!(again["deleted"], 0);
    Ok(())
}

/// The pack files of `data` (paths relative to `packs/`).
fn pack_files(data: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for d in std::fs::read_dir(data.join("packs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "pack") {
                out.insert(f.path());
            }
        }
    }
    out
}
