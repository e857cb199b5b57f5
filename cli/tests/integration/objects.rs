//! `import`, `export`, `ls`, `status` and `gc` of single objects, run
//! against the real binary.

#![allow(clippy::unwrap_used)]

use std::fs;

use crate::common::*;

#[test]
fn import_and_export_a_single_file_by_name_and_by_id_prefix() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "files");
    let src = t.path().join("src");
    // Larger than one chunk (FastCDC max 1 MiB), not compressible.
    let big: Vec<u8> = (0..2_500_000u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    write(&src.join("big.bin"), &big);
    write(&src.join("ünï code 名前.txt"), "héllo wörld\n");
    write(&src.join("empty.txt"), "");

    let s = json(
        &data,
        &[
            "import",
            src.join("big.bin").to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "uploads/big.bin",
        ],
    );
    assert_eq!(s["new"], 1, "{s}");
    assert_eq!(s["changed"], 0);
    assert!(s["chunks_written"].as_u64().unwrap() >= 2, "{s}");
    let text = ok(
        &data,
        &[
            "import",
            src.join("ünï code 名前.txt").to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "uploads/ünï code 名前.txt",
            "--owner",
            "zoë",
        ],
    );
    assert!(text.starts_with("import: 1 new"), "{text}");
    ok(
        &data,
        &[
            "import",
            src.join("empty.txt").to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "empty.txt",
        ],
    );

    let rows = json(&data, &["ls"]);
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    let big_row = ls_row(&data, "file", "uploads/big.bin").unwrap();
    assert_eq!(big_row["size"], big.len() as u64);
    assert_eq!(big_row["version"], 1);
    assert_eq!(big_row["state"], "ok");
    assert!(big_row["chunks"].as_u64().unwrap() >= 2);
    let uni = ls_row(&data, "file", "uploads/ünï code 名前.txt").unwrap();
    assert_eq!(uni["owner"], "zoë");
    let empty = ls_row(&data, "file", "empty.txt").unwrap();
    assert_eq!(empty["size"], 0);
    assert_eq!(empty["owner"], serde_json::Value::Null);

    let out = t.path().join("out");
    fs::create_dir(&out)?;
    // By kind:name.
    let e = json(
        &data,
        &[
            "export",
            "file:uploads/big.bin",
            out.join("a.bin").to_str().unwrap(),
        ],
    );
    assert_eq!(e["files"], 1);
    assert_eq!(e["bytes"], big.len() as u64);
    assert_eq!(fs::read(out.join("a.bin"))?, big);
    ok(
        &data,
        &[
            "export",
            "file:uploads/ünï code 名前.txt",
            out.join("b.txt").to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(out.join("b.txt"))?, "héllo wörld\n".as_bytes());
    ok(
        &data,
        &[
            "export",
            "file:empty.txt",
            out.join("e.txt").to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(out.join("e.txt"))?.len(), 0);
    // By id prefix (8 hex digits, upper case works too).
    let id = big_row["id"].as_str().unwrap();
    ok(
        &data,
        &["export", &id[..8], out.join("c.bin").to_str().unwrap()],
    );
    assert_eq!(fs::read(out.join("c.bin"))?, big);
    ok(
        &data,
        &[
            "export",
            &id.to_ascii_uppercase(),
            out.join("d.bin").to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(out.join("d.bin"))?, big);
    // A file object exported into an existing directory lands under its last name component.
    let into = out.join("into");
    fs::create_dir(&into)?;
    ok(
        &data,
        &[
            "export",
            "file:uploads/ünï code 名前.txt",
            into.to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read(into.join("ünï code 名前.txt"))?,
        "héllo wörld\n".as_bytes()
    );
    // No temp files left beside the exports.
    let names: Vec<_> = fs::read_dir(&out)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert_eq!(chunk_temp_files(&data), Vec::<std::path::PathBuf>::new());
    Ok(())
}

#[test]
fn import_and_export_a_directory_with_empty_dirs_empty_files_and_unicode() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "dirs");
    let bbs = t.path().join("bbs");
    mini_bbs(&bbs);
    let lord = bbs.join("applets/lord");
    // More edge cases inside the directory object.
    fs::create_dir_all(lord.join("deep/a/b/c/empty-leaf"))?;
    write(&lord.join("deep/a/b/c/データ.dat"), [0u8, 255, 1, 254]);
    write(&lord.join("Ελληνικά и кириллица 🐉.txt"), "dragon\n");

    let s = json(
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
    assert_eq!(s["new"], 1, "{s}");
    let alice = bbs.join("data/lord/alice");
    ok(
        &data,
        &[
            "import",
            alice.to_str().unwrap(),
            "--kind",
            "applet-data",
            "--name",
            "lord/alice",
            "--owner",
            "alice",
        ],
    );
    let row = ls_row(&data, "applet-data", "lord/alice").unwrap();
    assert_eq!(row["owner"], "alice");

    let out = t.path().join("out");
    // By kind:name into a directory that does not exist yet.
    let e = json(
        &data,
        &[
            "export",
            "applet:lord",
            out.join("by-name").to_str().unwrap(),
        ],
    );
    assert_eq!(e["objects"], 1);
    assert_same_tree(&lord, &out.join("by-name"));
    // By id prefix into an existing empty directory.
    let id = ls_row(&data, "applet", "lord").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::create_dir_all(out.join("by-id"))?;
    ok(
        &data,
        &["export", &id[..6], out.join("by-id").to_str().unwrap()],
    );
    assert_same_tree(&lord, &out.join("by-id"));
    ok(
        &data,
        &[
            "export",
            "applet-data:lord/alice",
            out.join("alice").to_str().unwrap(),
        ],
    );
    assert_same_tree(&alice, &out.join("alice"));
    assert!(out.join("alice/tmp").is_dir(), "the empty dir comes back");
    Ok(())
}

#[test]
fn reimport_unchanged_then_changed_object_and_ls_filters() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "versions");
    let f = t.path().join("motd.txt");
    write(&f, "welcome v1\n");
    let path = f.to_str().unwrap();
    json(
        &data,
        &["import", path, "--kind", "config", "--name", "motd.txt"],
    );
    let chunks_v1 = chunk_files(&data);
    let s = json(
        &data,
        &["import", path, "--kind", "config", "--name", "motd.txt"],
    );
    assert_eq!(
        (
            s["new"].as_u64(),
            s["changed"].as_u64(),
            s["unchanged"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(s["chunks_written"], 0);
    assert_eq!(chunk_files(&data), chunks_v1);
    assert_eq!(ls_row(&data, "config", "motd.txt").unwrap()["version"], 1);

    write(&f, "welcome v2, now longer\n");
    let s = json(
        &data,
        &["import", path, "--kind", "config", "--name", "motd.txt"],
    );
    assert_eq!(s["changed"], 1, "{s}");
    assert_eq!(s["new"], 0);
    let row = ls_row(&data, "config", "motd.txt").unwrap();
    assert_eq!(row["version"], 2);
    // The old version's chunk is no longer referenced and was collected.
    assert_eq!(chunk_files(&data).len(), chunks_v1.len());
    assert_ne!(chunk_files(&data), chunks_v1);
    let out = t.path().join("motd.out");
    ok(&data, &["export", "config:motd.txt", out.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(&out)?, "welcome v2, now longer\n");

    // A second object of another kind, and a custom kind.
    json(
        &data,
        &["import", path, "--kind", "file", "--name", "motd.txt"],
    );
    json(
        &data,
        &["import", path, "--kind", "door-game", "--name", "motd"],
    );
    assert_eq!(ls_names(&data, &[]).len(), 3);
    let only_config = ls_names(&data, &["--kind", "config"]);
    assert_eq!(
        only_config.into_iter().collect::<Vec<_>>(),
        vec![("config".to_string(), "motd.txt".to_string())]
    );
    assert_eq!(ls_names(&data, &["--kind", "door-game"]).len(), 1);
    assert!(ls_names(&data, &["--kind", "message"]).is_empty());
    let text = ok(&data, &["ls"]);
    assert!(text.lines().next().unwrap().contains("KIND"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    let st = json(&data, &["status"]);
    assert_eq!(st["objects"], 3);
    assert_eq!(st["objects_by_kind"]["config"], 1);
    assert_eq!(st["objects_by_kind"]["door-game"], 1);
    Ok(())
}

#[test]
fn gc_removes_only_unreferenced_chunks() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "gc");
    let f = t.path().join("x.txt");
    write(&f, "some content\n");
    json(
        &data,
        &[
            "import",
            f.to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "x.txt",
        ],
    );
    let before = chunk_files(&data);
    assert_eq!(before.len(), 1);

    let g = json(&data, &["gc"]);
    assert_eq!(g["removed_chunks"], 0, "{g}");
    assert_eq!(chunk_files(&data), before);

    // A well-named chunk file that no manifest references.
    let orphan = format!("ab{}", "0".repeat(62));
    write(&data.join("chunks/ab").join(&orphan), b"orphan bytes");
    let g = json(&data, &["gc"]);
    assert_eq!(g["removed_chunks"], 1, "{g}");
    assert_eq!(g["removed_bytes"], 12);
    assert_eq!(chunk_files(&data), before);
    let text = ok(&data, &["gc"]);
    assert!(text.contains("removed 0"), "{text}");
    let (code, _) = verify(&data, &["--read-data"]);
    assert_eq!(code, 0);
    Ok(())
}
