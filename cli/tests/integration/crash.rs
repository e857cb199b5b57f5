//! Real `kill -9` of `import-bbs` and of `gc`, as a sanity check beside the
//! failpoint crash matrix (`crash_matrix.rs`, which crashes every step of
//! every write deterministically). The kill is triggered by progress seen
//! on disk (temp chunk files appearing, chunk files going), not by a timer,
//! and each step of the command is slowed by a millisecond (a failpoint's
//! `sleep`; nothing fails), so it lands inside the command on any machine,
//! whatever its disk. Afterwards the store
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
    let landed = kill_at(&data, &["import-bbs", tree], "chunks.stage", 400, || {
        chunk_temp_files(&data).len()
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
        !data.join("chunks/dirty").exists(),
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
    let tree = tmp.path().join("tree");
    message_tree(&tree, 300, 3);
    let data = tmp.path().join("data");
    init(&data, "collected");
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    let live = real_chunks(&data).len();
    // 1,500 chunk files that no manifest here references (another store's).
    let other_tree = tmp.path().join("other-tree");
    message_tree(&other_tree, 1500, 4);
    let other = tmp.path().join("other");
    init(&other, "other");
    ok(&other, &["import-bbs", other_tree.to_str().unwrap()]);
    for c in real_chunks(&other) {
        let dest = data.join("chunks").join(&c);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::copy(other.join("chunks").join(&c), dest)?;
    }
    let total = real_chunks(&data).len();
    assert!(total >= live + 1500, "{total} chunk files");

    // Killed once it removed a third of them.
    let landed = kill_at(&data, &["gc"], "gc.remove", 500, || {
        total.saturating_sub(real_chunks(&data).len())
    });
    assert!(landed, "gc ended before the kill");
    wait_unlocked(&data);
    // Only garbage is left: nothing referenced went, nothing is damaged.
    let (_, report) = verify(&data, &["--read-data"]);
    let classes = problem_classes(&report);
    assert!(
        !classes.is_empty() && classes.iter().all(|c| c == "orphan-chunk"),
        "verify after the kill: {report}"
    );
    let left = real_chunks(&data).len();
    assert!(
        left > live && left < total,
        "{left} of {total} chunk files left"
    );

    let r = json(&data, &["gc"]);
    assert_eq!(r["removed_chunks"], (left - live) as u64, "{r}");
    let (code, report) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "final verify: {report}");
    let out = tmp.path().join("out");
    ok(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    Ok(())
}
