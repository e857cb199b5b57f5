//! Network clone between real `bbsync` processes on 127.0.0.1: a source
//! runs `serve`, clones run `clone`. Covers the round trip, the proof of
//! completeness, resuming as a no-op, an untrusted node, a blind peer, and
//! bad addresses.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;

/// A source with the mini BBS and a fresh clone node, trusted by the
/// source with `role`.
fn setup(tmp: &Path, role: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let tree = tmp.join("tree");
    mini_bbs(&tree);
    let src = tmp.join("src");
    let dst = tmp.join("dst");
    init(&src, "source");
    init(&dst, "clone");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    ok(&src, &["trust", "add", &card(&dst), "--role", role]);
    (tree, src, dst)
}

#[test]
fn clone_over_tcp_equals_the_source_and_resumes_as_a_no_op() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (tree, src, dst) = setup(tmp.path(), "full");
    let server = serve(&src);
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    assert!(report["chunks_fetched"].as_u64().unwrap() > 0);
    assert_eq!(report["chunks_rejected"], 0);
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    // The source is now trusted (pinned by its peer id) on the clone.
    let trusted = json(&dst, &["trust", "list"]);
    assert_eq!(trusted.as_array().unwrap().len(), 1);
    // Cloning an up-to-date copy transfers nothing.
    let again = json(&dst, &["clone", &server.addr]);
    assert_eq!(again["complete"], true);
    assert_eq!(again["chunks_fetched"], 0);
    assert_eq!(again["objects"], 0);
    // A post written on the source after the first clone arrives.
    write(
        &tree.join("boards/general/99.json"),
        "{\"id\":99,\"body\":\"later\"}",
    );
    drop(server);
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    let server = serve(&src);
    let third = json(&dst, &["clone", &server.addr]);
    assert_eq!(third["objects"], 1, "{third}");
    let out2 = tmp.path().join("out2");
    ok(&dst, &["export-bbs", out2.to_str().unwrap()]);
    assert_same_tree(&tree, &out2);
    Ok(())
}

#[test]
fn an_untrusted_node_is_denied_and_holds_nothing() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (_tree, src, _dst) = setup(tmp.path(), "full");
    let server = serve(&src);
    let stranger = tmp.path().join("stranger");
    init(&stranger, "stranger");
    let before = snapshot(&stranger);
    let o = run(&stranger, &["clone", &server.addr]);
    let line = assert_one_line_error(&o, "untrusted clone");
    assert!(line.contains("denied"), "{line}");
    assert_eq!(snapshot(&stranger), before, "the stranger's store changed");
    assert!(chunk_files(&stranger).is_empty());
    Ok(())
}

#[test]
fn a_blind_peer_gets_ciphertext_and_no_keys() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (_tree, src, dst) = setup(tmp.path(), "blind");
    let server = serve(&src);
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 1);
    let classes = problem_classes(&v);
    assert!(!classes.is_empty());
    assert!(classes.iter().all(|c| c == "undecryptable"), "{classes:?}");
    let o = run(
        &dst,
        &["export-bbs", tmp.path().join("out").to_str().unwrap()],
    );
    assert_eq!(o.code, 1);
    Ok(())
}

#[test]
fn bad_addresses_are_refused_and_change_nothing() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (_tree, src, dst) = setup(tmp.path(), "full");
    let server = serve(&src);
    let before = snapshot(&dst);
    // Malformed, and without /p2p/.
    for bad in ["not-an-address", "/ip4/127.0.0.1/tcp/1"] {
        let o = run(&dst, &["clone", bad]);
        assert_one_line_error(&o, bad);
    }
    // The right port with another instance's peer id: Noise refuses it.
    let other = tmp.path().join("other");
    init(&other, "other");
    let other_server = serve(&other);
    let other_peer = other_server.addr.rsplit('/').next().unwrap();
    let (base, _) = server.addr.rsplit_once("/p2p/").unwrap();
    let wrong = format!("{base}/p2p/{other_peer}");
    let o = run(&dst, &["clone", &wrong]);
    assert_one_line_error(&o, "wrong peer id");
    // Nobody listening.
    let o = run(
        &dst,
        &["clone", &format!("/ip4/127.0.0.1/tcp/9/p2p/{other_peer}")],
    );
    assert_one_line_error(&o, "unreachable");
    assert_eq!(snapshot(&dst), before, "a refused clone changed the store");
    Ok(())
}

/// A real `kill -9` of a clone (the failpoint crash matrix crashes every
/// step of it deterministically; this is the sanity check), triggered by
/// progress on disk: once 40% of the chunks arrived.
#[test]
fn clone_survives_kill_9_and_resumes() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    gen_bbs(&tree, "small", 5);
    let src = tmp.path().join("src");
    init(&src, "source");
    ok(&src, &["import-bbs", tree.to_str().unwrap()]);
    let dst = tmp.path().join("dst");
    init(&dst, "clone");
    ok(&src, &["trust", "add", &card(&dst)]);
    let total = chunk_files(&src).len();
    let server = serve(&src);

    let landed = kill_at(
        &dst,
        &["clone", &server.addr],
        "chunks.stage",
        total * 2 / 5,
        || chunk_files(&dst).len(),
    );
    assert!(landed, "the clone ended before the kill");
    wait_unlocked(&dst);
    // Nothing marked complete is missing or damaged, nothing is orphaned,
    // no temp file is left; objects whose chunks did not all arrive are
    // reported as incomplete, nothing else.
    let (_, report) = verify(&dst, &["--read-data"]);
    let classes = problem_classes(&report);
    assert!(
        !classes.is_empty() && classes.iter().all(|c| c == "incomplete-object"),
        "after the kill: {classes:?}"
    );
    assert!(chunk_temp_files(&dst).is_empty(), "temp files left");
    let have = chunk_files(&dst).len();
    assert!(have > 0 && have < total, "{have} of {total} chunks");

    // The next run fetches only what is missing and finishes; the clone
    // then equals the tree.
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(
        report["chunks_fetched"].as_u64().unwrap() as usize,
        total - have,
        "{report}"
    );
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    Ok(())
}

#[test]
fn partial_clones_take_only_the_selection() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (_tree, src, dst) = setup(tmp.path(), "full");
    let all = ls_names(&src, &[]);
    let server = serve(&src);

    let report = json(&dst, &["clone", &server.addr, "--only", "message:general"]);
    assert_eq!(report["partial"], true, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    let held = ls_names(&dst, &[]);
    assert!(!held.is_empty());
    assert!(
        held.iter()
            .all(|(k, n)| k == "message" && n.starts_with("general/")),
        "{held:?}"
    );
    assert_eq!(
        report["skipped"].as_u64().unwrap() as usize,
        all.len() - held.len()
    );

    // Now everything but config and applets; what is already here stays.
    let report = json(
        &dst,
        &["clone", &server.addr, "--skip-config", "--skip-applets"],
    );
    assert_eq!(report["complete"], true, "{report}");
    let held = ls_names(&dst, &[]);
    let expected: std::collections::BTreeSet<_> = all
        .iter()
        .filter(|(k, _)| k != "config" && k != "applet")
        .cloned()
        .collect();
    assert_eq!(held, expected);
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");

    // A bad selection is a usage error that changes nothing.
    let before = snapshot(&dst);
    let o = run(&dst, &["clone", &server.addr, "--only", "Message"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(snapshot(&dst), before);

    // A full clone after the partial ones completes the copy, with the proof.
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["partial"], false);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(ls_names(&dst, &[]), all);
    Ok(())
}

#[test]
fn a_clone_into_a_store_with_its_own_objects_is_proven_complete() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (_tree, src, dst) = setup(tmp.path(), "full");
    write(&tmp.path().join("own.txt"), "the mirror's own notes\n");
    ok(
        &dst,
        &[
            "import",
            tmp.path().join("own.txt").to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "own.txt",
        ],
    );
    let server = serve(&src);
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["lacking"], 0);
    // Its own object is still there besides the clone.
    assert!(ls_names(&dst, &[]).contains(&("file".to_string(), "own.txt".to_string())));
    let out = tmp.path().join("out");
    ok(&dst, &["export", "file:own.txt", out.to_str().unwrap()]);
    Ok(())
}

#[test]
fn fetch_missing_brings_back_lost_chunks() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let (tree, src, dst) = setup(tmp.path(), "full");
    let server = serve(&src);
    let report = json(&dst, &["clone", &server.addr]);
    assert_eq!(report["complete"], true, "{report}");
    // Lose three chunk files.
    let lost: Vec<_> = real_chunks(&dst).into_iter().take(3).collect();
    assert_eq!(lost.len(), 3);
    for p in &lost {
        std::fs::remove_file(dst.join("chunks").join(p))?;
    }
    let (code, _) = verify(&dst, &[]);
    assert_eq!(code, 1);

    // No source given and none configured: one line, nothing changes.
    let o = run(&dst, &["fetch-missing"]);
    let line = assert_one_line_error(&o, "fetch-missing without a source");
    assert!(line.contains("--from"), "{line}");

    let r = json(&dst, &["fetch-missing", "--from", &server.addr]);
    assert_eq!(r["chunks_fetched"], 3, "{r}");
    assert_eq!(r["still_missing"], 0, "{r}");
    let (code, v) = verify(&dst, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);

    // With the source in config.toml, no --from is needed; nothing is missing now.
    let cfg = dst.join("config.toml");
    let text = std::fs::read_to_string(&cfg)?
        .replace("peers = []", &format!("peers = [\"{}\"]", server.addr));
    std::fs::write(&cfg, text)?;
    let r = json(&dst, &["fetch-missing"]);
    assert_eq!(r["chunks_fetched"], 0, "{r}");
    assert_eq!(r["sources"], 1, "{r}");
    Ok(())
}

/// Issue 10, item 4: extra chunk sources (`--peer`) are not added to the
/// trust table (their chunks are checked by id); only the source the
/// operator named is.
#[test]
fn extra_chunk_sources_are_not_trusted() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (tree, src, dst) = setup(tmp.path(), "full");
    // A mirror of the source that serves the clone too.
    let mirror = tmp.path().join("mirror");
    init(&mirror, "mirror");
    ok(&src, &["trust", "add", &card(&mirror), "--role", "full"]);
    ok(&mirror, &["trust", "add", &card(&dst), "--role", "full"]);
    let source = serve(&src);
    let report = json(&mirror, &["clone", &source.addr]);
    assert_eq!(report["complete"], true, "{report}");
    let mirror_server = serve(&mirror);

    let report = json(
        &dst,
        &["clone", &source.addr, "--peer", &mirror_server.addr],
    );
    assert_eq!(report["complete"], true, "{report}");
    let out = tmp.path().join("out");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);
    let trusted = json(&dst, &["trust", "list"]);
    let src_id = json(&src, &["status"])["instance_id"].clone();
    assert_eq!(
        trusted.as_array().unwrap().len(),
        1,
        "an extra source was trusted: {trusted}"
    );
    assert_eq!(trusted[0]["instance_id"], src_id);
    Ok(())
}
