//! While `bbsync serve` owns a data dir, the other commands on it are
//! carried out by the serving node through the control socket: same output,
//! same exit codes, relative paths resolved in the caller's directory, and
//! what they import is served to peers at once.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

use crate::common::*;

#[test]
fn commands_run_through_the_serving_node() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    init(&src, "source");
    init(&dst, "clone");
    let server = serve(&src);

    // The socket is there and owner-only.
    let meta = std::fs::symlink_metadata(src.join("control.sock"))?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Writes go through the node (sled is locked by it, so a local open
    // would fail): import, trust.
    let imported = json(&src, &["import-bbs", tree.to_str().unwrap()]);
    assert!(imported["new"].as_u64().unwrap() > 0, "{imported}");
    ok(&src, &["trust", "add", &card(&dst), "--role", "full"]);
    let listed = json(&src, &["ls"]);
    assert_eq!(
        listed.as_array().unwrap().len() as u64,
        imported["new"].as_u64().unwrap()
    );
    let (code, v) = verify(&src, &["--read-data"]);
    assert_eq!(code, 0, "{v}");

    // A relative destination is the caller's, not the node's.
    bbsync(&src)
        .current_dir(tmp.path())
        .args(["export-bbs", "out-rel"])
        .assert()
        .success();
    assert_same_tree(&tree, &tmp.path().join("out-rel"));

    // Failures keep their one-line error and exit code.
    let o = run(&src, &["export", "file:nope", "x"]);
    let line = assert_one_line_error(&o, "unknown object through the socket");
    assert!(line.contains("nope"), "{line}");
    let o = run(&src, &["serve"]);
    let line = assert_one_line_error(&o, "a second serve");
    assert!(line.contains("already serving"), "{line}");

    // Peers see what was imported while the node serves, including a post
    // written after their first clone.
    let first = json(&dst, &["clone", &server.addr]);
    assert_eq!(first["complete"], true, "{first}");
    write(
        &tree.join("boards/general/99.json"),
        "{\"id\":99,\"body\":\"written while serving\"}",
    );
    let again = json(&src, &["import-bbs", tree.to_str().unwrap()]);
    assert_eq!(again["new"], 1, "{again}");
    let second = json(&dst, &["clone", &server.addr]);
    assert_eq!(second["objects"], 1, "{second}");
    assert_eq!(second["complete"], true, "{second}");
    let out = tmp.path().join("out-dst");
    ok(&dst, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(&tree, &out);

    // The output through the socket is the output of a local run.
    let through = ok(&src, &["ls"]);
    assert!(server.stop().success());
    let local = ok(&src, &["ls"]);
    assert_eq!(through, local);
    assert!(!src.join("control.sock").exists(), "socket left behind");
    Ok(())
}

#[test]
fn a_socket_left_by_a_killed_node_is_ignored() -> TestResult {
    let tmp = bbsync_tests::tempdir()?;
    let data = tmp.path().join("d");
    init(&data, "a");
    let mut server = serve(&data);
    server.child.kill()?; // SIGKILL: no clean-up
    server.child.wait()?;
    assert!(data.join("control.sock").exists());
    wait_unlocked(&data);
    // Commands run locally again, and a new node takes the socket over.
    ok(&data, &["status"]);
    let server = serve(&data);
    ok(&data, &["status"]);
    drop(server);
    Ok(())
}
