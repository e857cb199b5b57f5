//! `verify` (DESIGN §5) through the CLI: a healthy store, then chunk files
//! damaged, removed and added behind the store's back.

#![allow(clippy::unwrap_used)]

use std::{fs, path::Path};

use crate::common::*;

/// A store with the mini BBS imported; returns its data dir.
fn store_with_mini_bbs(root: &Path) -> std::path::PathBuf {
    let data = root.join("d");
    init(&data, "verify");
    let tree = root.join("bbs");
    mini_bbs(&tree);
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    data
}

/// The one problem of a report, asserting there is exactly one.
fn only_problem(v: &serde_json::Value) -> serde_json::Value {
    let ps = v["problems"].as_array().unwrap();
    assert_eq!(ps.len(), 1, "expected exactly one problem: {v}");
    ps[0].clone()
}

#[test]
fn verify_healthy_store_is_ok() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    // An empty store verifies.
    let empty = t.path().join("empty");
    init(&empty, "empty");
    let out = ok(&empty, &["verify"]);
    assert!(out.trim_end().ends_with("OK"), "{out}");

    let data = store_with_mini_bbs(t.path());
    for extra in [&[][..], &["--read-data"][..]] {
        let mut args = vec!["verify"];
        args.extend_from_slice(extra);
        let out = ok(&data, &args);
        assert!(out.trim_end().ends_with(": OK"), "{out}");
        let (code, v) = verify(&data, extra);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["problems"], serde_json::json!([]));
        assert_eq!(v["objects"], 8);
        assert_eq!(v["read_data"], !extra.is_empty());
        assert!(v["chunks"].as_u64().unwrap() >= 7, "{v}");
    }
    let (_, v) = verify(&data, &["--read-data"]);
    assert!(v["bytes_read"].as_u64().unwrap() > 0, "{v}");
    Ok(())
}

#[test]
fn verify_classifies_damaged_missing_and_orphan_chunks() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = store_with_mini_bbs(t.path());
    let chunks = chunk_files(&data);
    let rel = real_chunks(&data)[0].clone();
    let path = data.join("chunks").join(&rel);
    let chunk_hex = rel.file_name().unwrap().to_str().unwrap().to_string();
    let good = fs::read(&path)?;

    // 1. One flipped byte: only --read-data sees it.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(&path, &bad)?;
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "corrupt-chunk");
    assert_eq!(p["chunk"], chunk_hex.as_str());
    assert!(p["object"].as_str().unwrap().contains(':'), "{p}");
    assert_eq!(v["counts"]["corrupt-chunk"], 1);
    // Text output: one line per problem, then the verdict; still exit 1.
    let o = run(&data, &["verify", "--read-data"]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stdout.lines().any(|l| l.starts_with("corrupt-chunk")),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("1 problem(s)"), "{}", o.stdout);
    // Export of the damaged object fails cleanly.
    let obj = p["object"].as_str().unwrap();
    let dest = t.path().join("damaged-export");
    let e = fail(&data, &["export", obj, dest.to_str().unwrap()]);
    assert_mentions(&e, &[&chunk_hex[..16]]);
    if !obj.starts_with("applet") {
        // A file object (directory objects: see the test below).
        assert!(!dest.exists(), "nothing written for a failed export");
    }
    fs::write(&path, &good)?;
    assert_eq!(verify(&data, &["--read-data"]).0, 0);

    // 2. Truncated: plain verify (sizes only) catches it.
    fs::write(&path, &good[..good.len() - 1])?;
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_problem(&v)["class"], "corrupt-chunk");
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_problem(&v)["class"], "corrupt-chunk");
    fs::write(&path, &good)?;

    // 3. Missing.
    fs::remove_file(&path)?;
    for extra in [&[][..], &["--read-data"][..]] {
        let (code, v) = verify(&data, extra);
        assert_eq!(code, 1, "{v}");
        let p = only_problem(&v);
        assert_eq!(p["class"], "missing-chunk");
        assert_eq!(p["chunk"], chunk_hex.as_str());
    }
    fs::write(&path, &good)?;
    assert_eq!(verify(&data, &[]).0, 0);

    // 4. An extra, well-named chunk file nobody references.
    let orphan_hex = format!("{}{}", &chunk_hex[..2], "f".repeat(62));
    assert_ne!(orphan_hex, chunk_hex);
    let orphan = data.join("chunks").join(&chunk_hex[..2]).join(&orphan_hex);
    fs::write(&orphan, b"not a real chunk")?;
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "orphan-chunk");
    assert_eq!(p["chunk"], orphan_hex.as_str());
    // gc removes exactly that file, and the store is healthy again.
    assert_eq!(json(&data, &["gc"])["removed_chunks"], 1);
    assert!(!orphan.exists());
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(chunk_files(&data), chunks);

    // 5. Several problems at once are all listed, sorted by class.
    fs::remove_file(&path)?;
    let second = &real_chunks(&data)[1];
    let second_path = data.join("chunks").join(second);
    let second_good = fs::read(&second_path)?;
    let mut b = second_good.clone();
    b[0] ^= 0x80;
    fs::write(&second_path, &b)?;
    fs::write(&orphan, b"x")?;
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    let mut classes = problem_classes(&v);
    classes.sort();
    assert_eq!(
        classes,
        ["corrupt-chunk", "missing-chunk", "orphan-chunk"],
        "{v}"
    );
    Ok(())
}

#[test]
fn failed_export_of_a_damaged_directory_object_leaves_nothing_behind() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "partial");
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    let lord = tree.join("applets/lord");
    ok(
        &data,
        &[
            "import",
            lord.to_str().unwrap(),
            "--kind",
            "applet",
            "--name",
            "lord",
        ],
    );
    // Every chunk belongs to the one object: damage the last one.
    let last = real_chunks(&data).pop().unwrap();
    let path = data.join("chunks").join(&last);
    let mut b = fs::read(&path)?;
    let n = b.len();
    b[n - 1] ^= 0x01;
    fs::write(&path, &b)?;

    let dest = t.path().join("new-dest");
    fail(&data, &["export", "applet:lord", dest.to_str().unwrap()]);
    assert!(
        !dest.exists() || read_tree(&dest).is_empty(),
        "a failed export left {:?}",
        read_tree(&dest).keys().collect::<Vec<_>>()
    );
    let out = t.path().join("bbs-out");
    // export-bbs names each object it could not write, then fails.
    let o = run(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("not exported: applet:lord")),
        "{}",
        o.stderr
    );
    let last_line = lines.last().unwrap();
    assert!(
        last_line.starts_with("error: ") && last_line.contains("1 object(s)"),
        "{}",
        o.stderr
    );
    Ok(())
}

#[test]
fn stray_files_in_the_chunk_dir_and_stale_temp_files() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = store_with_mini_bbs(t.path());
    let chunks = chunk_files(&data);
    // A file that is not named like a chunk.
    let stray = data.join("chunks/ab/not-a-chunk");
    write(&stray, "stray");
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "orphan-chunk");
    assert!(p["detail"].as_str().unwrap().contains("not-a-chunk"), "{p}");
    // gc never deletes what it does not recognise as a chunk.
    assert_eq!(json(&data, &["gc"])["removed_chunks"], 0);
    assert!(stray.exists());
    fs::remove_file(&stray)?;

    // A chunk named for the wrong 2-digit dir is also flagged.
    let first = &real_chunks(&data)[0];
    let hex = first.file_name().unwrap().to_str().unwrap();
    let wrong_dir = if hex.starts_with("00") { "01" } else { "00" };
    let misplaced = data.join("chunks").join(wrong_dir).join(hex);
    write(&misplaced, fs::read(data.join("chunks").join(first))?);
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_problem(&v)["class"], "orphan-chunk");
    fs::remove_file(&misplaced)?;

    // What a crashed import leaves (temp files beside their final names,
    // behind the `dirty` marker) is swept at the next open, and verify
    // does not count it as a problem.
    let leftover = data
        .join("chunks")
        .join(&hex[..2])
        .join(format!("{}.tmp.999999.0", "e".repeat(64)));
    write(&leftover, "partial");
    write(&data.join("chunks/dirty"), "");
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(chunk_temp_files(&data), Vec::<std::path::PathBuf>::new());
    assert_eq!(chunk_files(&data), chunks);
    Ok(())
}
