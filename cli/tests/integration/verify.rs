//! `verify` (DESIGN §5) through the CLI: a healthy store, then chunks and
//! packs damaged, removed and added behind the store's back.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
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

/// The chunk of `chunks` (`<xx>/<hex>` paths) that ends last in its pack.
fn last_in_pack(data: &Path, chunks: &[std::path::PathBuf]) -> std::path::PathBuf {
    chunks
        .iter()
        .max_by_key(|c| chunk_location(data, c).1)
        .unwrap()
        .clone()
}

#[test]
fn verify_classifies_damaged_missing_and_orphan_chunks() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = store_with_mini_bbs(t.path());
    let chunks = chunk_files(&data);
    let all = real_chunks(&data);
    // The chunk stored last: cutting its pack short harms only it.
    let rel = last_in_pack(&data, &all);
    let chunk_hex = rel.file_name().unwrap().to_str().unwrap().to_string();
    let (pack, offset, len) = chunk_location(&data, &rel);
    let good = read_chunk(&data, &rel);
    let good_pack = fs::read(&pack)?;

    // 1. One flipped byte: only --read-data sees it.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    write_chunk(&data, &rel, &bad);
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "corrupt-chunk");
    assert_eq!(p["chunk"], chunk_hex.as_str());
    assert!(p["object"].as_str().unwrap().contains(':'), "{p}");
    assert_eq!(v["counts"]["corrupt-chunk"], 1);
    assert_eq!(
        verify(&data, &[]).0,
        0,
        "same length: plain verify cannot see it"
    );
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
    write_chunk(&data, &rel, &good);
    assert_eq!(verify(&data, &["--read-data"]).0, 0);

    // 2. Truncated: the pack cut one byte into the chunk's end. Plain
    //    verify (lengths only) catches it: that chunk is corrupt, and the
    //    pack is cut short.
    fs::write(&pack, &good_pack[..(offset + len - 1) as usize])?;
    for extra in [&[][..], &["--read-data"][..]] {
        let (code, v) = verify(&data, extra);
        assert_eq!(code, 1, "{v}");
        let mut classes = problem_classes(&v);
        classes.sort();
        assert_eq!(classes, ["corrupt-chunk", "truncated-pack"], "{v}");
        let p = v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["class"] == "corrupt-chunk")
            .unwrap()
            .clone();
        assert_eq!(p["chunk"], chunk_hex.as_str());
    }
    fs::write(&pack, &good_pack)?;

    // 3. Missing: the chunk is gone from the index.
    lose_chunks(&data, std::slice::from_ref(&rel));
    for extra in [&[][..], &["--read-data"][..]] {
        let (code, v) = verify(&data, extra);
        assert_eq!(code, 1, "{v}");
        let p = only_problem(&v);
        assert_eq!(p["class"], "missing-chunk");
        assert_eq!(p["chunk"], chunk_hex.as_str());
    }
    // The bytes are still in the pack: a repair of the index finds them.
    let r = json(&data, &["repair-index"]);
    assert_eq!(r["rebuild"]["skipped"], serde_json::json!([]), "{r}");
    assert_eq!(verify(&data, &["--read-data"]).0, 0);
    assert_eq!(chunk_files(&data), chunks);

    // 4. An extra, well-formed chunk nobody references.
    let orphan_hex = add_orphan(&data, &[0x5a; 200]);
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "orphan-chunk");
    assert_eq!(p["chunk"], orphan_hex.as_str());
    // gc removes exactly that chunk, and the store is healthy again.
    assert_eq!(json(&data, &["gc"])["removed_chunks"], 1);
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(chunk_files(&data), chunks);

    // 5. Several problems at once are all listed, sorted by class.
    let second = all.iter().find(|c| **c != rel).unwrap().clone();
    lose_chunks(&data, std::slice::from_ref(&rel));
    let mut b = read_chunk(&data, &second);
    b[0] ^= 0x80;
    write_chunk(&data, &second, &b);
    add_orphan(&data, &[0x5b; 300]);
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
    let mut b = read_chunk(&data, &last);
    let n = b.len();
    b[n - 1] ^= 0x01;
    write_chunk(&data, &last, &b);

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
    // A file that is not named like a pack.
    let stray = data.join("packs/ab/not-a-chunk");
    write(&stray, "stray");
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    let p = only_problem(&v);
    assert_eq!(p["class"], "orphan-chunk");
    assert!(p["detail"].as_str().unwrap().contains("not-a-chunk"), "{p}");
    // gc never deletes what it does not recognise as a pack.
    assert_eq!(json(&data, &["gc"])["removed_chunks"], 0);
    assert!(stray.exists());
    fs::remove_file(&stray)?;

    // A pack named for the wrong 2-digit dir is also flagged.
    let first = &real_chunks(&data)[0];
    let (pack, _, _) = chunk_location(&data, first);
    let name = pack.file_name().unwrap().to_str().unwrap().to_string();
    let wrong_dir = if name.starts_with("00") { "01" } else { "00" };
    let misplaced = data.join("packs").join(wrong_dir).join(&name);
    write(&misplaced, fs::read(&pack)?);
    let (code, v) = verify(&data, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(only_problem(&v)["class"], "orphan-chunk");
    fs::remove_file(&misplaced)?;

    // What a crashed write leaves (bytes appended to the open pack beyond
    // its committed length, and the marker of chunks published but maybe
    // not recorded) is cleared at the next open, and verify does not
    // count it as a problem.
    let mut f = fs::OpenOptions::new().append(true).open(&pack)?;
    std::io::Write::write_all(&mut f, b"partial entry of an interrupted append")?;
    drop(f);
    {
        let s = bbsync_store::Store::open(&data)?;
        s.raw_db().apply_index(
            bbsync_store::test_hooks::IndexChange {
                collect: Some(true),
                ..Default::default()
            },
            true,
        )?;
    }
    let mut f = fs::OpenOptions::new().append(true).open(&pack)?;
    std::io::Write::write_all(&mut f, b"partial")?;
    drop(f);
    assert_eq!(chunk_temp_files(&data).len(), 2, "{:?}", chunk_files(&data));
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(chunk_temp_files(&data), Vec::<std::path::PathBuf>::new());
    assert_eq!(chunk_files(&data), chunks);
    Ok(())
}
