//! `import-bbs` and `export-bbs` (DESIGN §3): round trips of a hand-made
//! mini tree and of the generated small profile, incremental re-imports,
//! changes and deletions.

#![allow(clippy::unwrap_used)]

use std::{fs, path::Path, process::Command as StdCommand};

use crate::common::*;
use serde_json::Value;

fn counts(s: &Value) -> (u64, u64, u64, u64) {
    (
        s["new"].as_u64().unwrap(),
        s["changed"].as_u64().unwrap(),
        s["unchanged"].as_u64().unwrap(),
        s["deleted"].as_u64().unwrap(),
    )
}

fn import_bbs(data: &Path, tree: &Path) -> Value {
    json(data, &["import-bbs", tree.to_str().unwrap()])
}

#[test]
fn mini_bbs_round_trip_incremental_change_and_delete() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "mini");
    let tree = t.path().join("bbs");
    let n = mini_bbs(&tree);

    // First import: everything is new.
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (n, 0, 0, 0), "{s}");
    assert!(s["chunks_written"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        ls_names(&data, &[]),
        [
            ("applet", "lord"),
            ("applet-data", "lord/alice"),
            ("config", "bbs.toml"),
            ("config", "menus/main.ans"),
            ("file", "empty.txt"),
            ("file", "日本語/読んで.txt"),
            ("message", "general/1"),
            ("message", "general/2"),
        ]
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect()
    );
    assert_eq!(
        ls_row(&data, "applet-data", "lord/alice").unwrap()["owner"],
        "alice"
    );
    let st = json(&data, &["status"]);
    assert_eq!(st["objects"], n);
    assert_eq!(st["objects_by_kind"]["message"], 2);
    assert_eq!(st["objects_by_kind"]["config"], 2);
    assert_eq!(st["objects_by_kind"]["file"], 2);
    assert_eq!(st["chunk_files"], chunk_files(&data).len() as u64);
    let chunks = chunk_files(&data);

    // Export: the same tree, byte for byte.
    let out1 = t.path().join("out1");
    let e = json(&data, &["export-bbs", out1.to_str().unwrap()]);
    assert_eq!(e["objects"], n, "{e}");
    assert_eq!(e["failed"], serde_json::json!([]));
    assert_same_tree(&tree, &out1);

    // Second import: nothing new, nothing written.
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 0, n, 0), "{s}");
    assert_eq!(s["chunks_written"], 0, "{s}");
    assert_eq!(chunk_files(&data), chunks);
    // Same content with new file times (e.g. after a copy): still unchanged.
    let copy = t.path().join("bbs-copy");
    copy_tree(&tree, &copy);
    let s = import_bbs(&data, &copy);
    assert_eq!(counts(&s), (0, 0, n, 0), "{s}");
    assert_eq!(s["chunks_written"], 0, "{s}");
    assert_eq!(chunk_files(&data), chunks);

    // Change one message.
    write(
        &tree.join("boards/general/1.json"),
        "{\"id\":1,\"from\":\"alice\",\"subject\":\"hello (edited)\",\"body\":\"first post, edited\"}\n",
    );
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 1, n - 1, 0), "{s}");
    assert_eq!(s["chunks_written"], 1, "{s}");
    assert_eq!(ls_row(&data, "message", "general/1").unwrap()["version"], 2);
    assert_eq!(ls_row(&data, "message", "general/2").unwrap()["version"], 1);
    assert_eq!(
        chunk_files(&data).len(),
        chunks.len(),
        "old chunk collected"
    );

    // Delete one message.
    fs::remove_file(tree.join("boards/general/2.json"))?;
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 0, n - 1, 1), "{s}");
    let live = ls_names(&data, &[]);
    assert!(
        !live.contains(&("message".into(), "general/2".into())),
        "{live:?}"
    );
    assert_eq!(live.len() as u64, n - 1);
    let gone = ls_row(&data, "message", "general/2").unwrap();
    assert_eq!(gone["state"], "deleted");
    assert_eq!(gone["version"], 2);
    assert!(ls_names(&data, &["--all"]).contains(&("message".into(), "general/2".into())));
    let text = ok(&data, &["ls", "--all"]);
    assert!(
        text.lines()
            .any(|l| l.contains("deleted") && l.contains("general/2")),
        "{text}"
    );
    let st = json(&data, &["status"]);
    assert_eq!(st["objects"], n - 1);
    assert_eq!(st["deleted"], 1);
    assert_eq!(
        chunk_files(&data).len(),
        chunks.len() - 1,
        "its chunk collected"
    );

    // Re-importing the same tree again is a no-op, tombstones included.
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 0, n - 1, 0), "{s}");

    // Export matches the modified tree, and the store verifies.
    let out2 = t.path().join("out2");
    ok(&data, &["export-bbs", out2.to_str().unwrap()]);
    assert_same_tree(&tree, &out2);
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");

    // The message comes back: a new version of the same object.
    write(
        &tree.join("boards/general/2.json"),
        "{\"id\":2,\"body\":\"back\"}\n",
    );
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 1, n - 1, 0), "{s}");
    let back = ls_row(&data, "message", "general/2").unwrap();
    assert_eq!(
        (back["version"].as_u64(), back["state"].as_str()),
        (Some(3), Some("ok"))
    );
    let out3 = t.path().join("out3");
    ok(&data, &["export-bbs", out3.to_str().unwrap()]);
    assert_same_tree(&tree, &out3);
    Ok(())
}

#[test]
fn import_bbs_text_summary_and_export_bbs_into_empty_existing_dir() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "text");
    let tree = t.path().join("bbs");
    let n = mini_bbs(&tree);
    let out = ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    assert!(
        out.starts_with(&format!(
            "import-bbs: {n} new, 0 changed, 0 unchanged, 0 deleted"
        )),
        "{out}"
    );
    let dest = t.path().join("empty-dest");
    fs::create_dir(&dest)?;
    let out = ok(&data, &["export-bbs", dest.to_str().unwrap()]);
    assert!(
        out.starts_with(&format!("export-bbs: {n} objects")),
        "{out}"
    );
    assert_same_tree(&tree, &dest);
    Ok(())
}

#[test]
fn generated_small_profile_round_trip() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let tree = t.path().join("gen");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-bbs.py");
    let st = StdCommand::new("python3")
        .arg(&script)
        .args(["--profile", "small", "--seed", "1"])
        .arg(&tree)
        .output()?;
    assert!(
        st.status.success(),
        "gen-bbs.py failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let data = t.path().join("d");
    init(&data, "gen");
    let s = import_bbs(&data, &tree);
    let objects = s["new"].as_u64().unwrap();
    assert!(objects > 100, "{s}");
    assert_eq!(counts(&s), (objects, 0, 0, 0), "{s}");
    let (code, v) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]));
    let out = t.path().join("out");
    let e = json(&data, &["export-bbs", out.to_str().unwrap()]);
    assert_eq!(e["objects"], objects);
    assert_same_tree(&tree, &out);
    let s = import_bbs(&data, &tree);
    assert_eq!(counts(&s), (0, 0, objects, 0), "{s}");
    assert_eq!(s["chunks_written"], 0);
    Ok(())
}

/// Copies a tree (new inodes and times, same bytes and empty dirs).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn import_bbs_warns_about_empty_dirs_outside_dir_objects() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "warn");
    let tree = t.path().join("bbs");
    let n = mini_bbs(&tree);
    fs::create_dir_all(tree.join("files/empty-upload-dir"))?;
    let o = run(&data, &["--json", "import-bbs", tree.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s: Value = serde_json::from_str(&o.stdout)?;
    assert_eq!(counts(&s), (n, 0, 0, 0), "{s}");
    assert!(o.stderr.contains("empty directory"), "{}", o.stderr);
    assert!(o.stderr.contains("empty-upload-dir"), "{}", o.stderr);
    Ok(())
}

#[test]
fn log_lines_are_plain_text_when_stderr_is_not_a_terminal() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "plain");
    let tree = t.path().join("bbs");
    mini_bbs(&tree);
    fs::create_dir_all(tree.join("files/empty-upload-dir"))?;
    let o = run(&data, &["import-bbs", tree.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("empty-upload-dir"), "{}", o.stderr);
    assert!(!o.stderr.contains('\x1b'), "escape codes in {:?}", o.stderr);
    Ok(())
}
