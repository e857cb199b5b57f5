//! Bad input (DESIGN §8): every refusal exits 1 with exactly one
//! `error: ...` line on stderr, and changes nothing.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::common::*;
use bbsync_store::Store;
use data_encoding::BASE32_NOPAD;

/// A store with the mini BBS imported and one trusted peer, so that
/// "nothing changed" compares something non-trivial.
fn populated_store(root: &Path) -> PathBuf {
    let data = root.join("d");
    init(&data, "bad-input");
    let tree = root.join("bbs");
    mini_bbs(&tree);
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    let peer = root.join("peer");
    init(&peer, "peer");
    ok(&data, &["trust", "add", "--role", "blind", &card(&peer)]);
    data
}

#[test]
fn import_of_missing_or_unreadable_paths() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);

    let missing = t.path().join("no/such/file.txt");
    for kind in ["file", "applet"] {
        let e = fail(
            &data,
            &[
                "import",
                missing.to_str().unwrap(),
                "--kind",
                kind,
                "--name",
                "x",
            ],
        );
        assert_mentions(&e, &[missing.to_str().unwrap()]);
    }
    let e = fail(&data, &["import-bbs", missing.to_str().unwrap()]);
    assert_mentions(&e, &[missing.to_str().unwrap()]);
    assert_eq!(snapshot(&data), before);

    // Unreadable file and directory (mode 000).
    let secret = t.path().join("secret.txt");
    write(&secret, "top secret\n");
    let locked_dir = t.path().join("locked");
    write(&locked_dir.join("inner.txt"), "inner\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000))?;
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o000))?;
    if can_bypass_permissions(&secret) || can_bypass_permissions(&locked_dir) {
        eprintln!(
            "note: running with permission override (root?): skipping the unreadable-path cases"
        );
    } else {
        let e = fail(
            &data,
            &[
                "import",
                secret.to_str().unwrap(),
                "--kind",
                "file",
                "--name",
                "s",
            ],
        );
        assert_mentions(&e, &[secret.to_str().unwrap(), "permission denied"]);
        let e = fail(
            &data,
            &[
                "import",
                locked_dir.to_str().unwrap(),
                "--kind",
                "applet",
                "--name",
                "locked",
            ],
        );
        assert_mentions(&e, &["locked", "permission denied"]);
        assert_eq!(snapshot(&data), before);
    }
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644))?;
    assert_eq!(chunk_temp_files(&data), Vec::<std::path::PathBuf>::new());
    Ok(())
}

#[test]
fn import_with_a_bad_kind_or_name() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let f = t.path().join("f.txt");
    write(&f, "x\n");
    let f = f.to_str().unwrap();
    for (kind, name) in [
        ("Not A Kind", "x"),
        ("", "x"),
        ("file:x", "x"),
        ("file", ""),
        ("file", "bell\u{7}"),
    ] {
        let e = fail(&data, &["import", f, "--kind", kind, "--name", name]);
        assert_mentions(&e, &["object"]);
    }
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn failed_import_with_a_bad_owner_leaves_no_temp_files() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let chunks = chunk_files(&data);
    let before = snapshot(&data);
    let f = t.path().join("f.txt");
    write(&f, "owned content\n");
    let dir = t.path().join("dir");
    write(&dir.join("a.txt"), "a\n");
    for (path, owner) in [(&f, ""), (&f, "tab\there"), (&dir, "")] {
        let e = fail(
            &data,
            &[
                "import",
                path.to_str().unwrap(),
                "--kind",
                "file",
                "--name",
                "owned",
                "--owner",
                owner,
            ],
        );
        assert_mentions(&e, &["owner"]);
        // Checked right away, before another command's open sweeps them.
        assert_eq!(
            chunk_files(&data),
            chunks,
            "leftovers after --owner {owner:?}"
        );
    }
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn import_refuses_bbs_kind_names_outside_the_tree_layout() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let f = t.path().join("f.txt");
    write(&f, "x\n");
    let f = f.to_str().unwrap();
    for (kind, name) in [
        ("file", "../escape"),
        ("file", "a//b"),
        ("file", "/abs"),
        ("config", "./x"),
        ("message", "no-board"),
        ("applet", "a/b"),
    ] {
        let e = fail(&data, &["import", f, "--kind", kind, "--name", name]);
        assert_mentions(&e, &[name]);
    }
    assert_eq!(snapshot(&data), before);
    // The store still exports as a BBS tree.
    ok(
        &data,
        &["export-bbs", t.path().join("out").to_str().unwrap()],
    );
    Ok(())
}

#[test]
fn export_of_unknown_objects() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let ids: Vec<String> = json(&data, &["ls", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    // A hex prefix no object id starts with.
    let prefix = (0..=0xffffu32)
        .map(|n| format!("{n:04x}"))
        .find(|p| ids.iter().all(|id| !id.starts_with(p.as_str())))
        .unwrap();
    let dest = t.path().join("dest");
    for spec in [
        "message:general/999",
        "applet:nope",
        "file:日本語/nope.txt",
        prefix.as_str(),
        "ab",
        "zzzz-not-hex",
        "",
    ] {
        let e = fail(&data, &["export", spec, dest.to_str().unwrap()]);
        assert_mentions(&e, &["unknown object"]);
        assert!(
            !dest.exists(),
            "export of {spec:?} created {}",
            dest.display()
        );
    }
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn export_to_an_existing_destination_is_refused() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("keep.txt"), "keep me\n");
    let file = t.path().join("existing.json");
    write(&file, "old\n");
    let before_dest = read_tree(&dest);

    let e = fail(&data, &["export", "applet:lord", dest.to_str().unwrap()]);
    assert_mentions(&e, &["not empty"]);
    let e = fail(
        &data,
        &["export", "message:general/1", file.to_str().unwrap()],
    );
    assert_mentions(&e, &[file.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(&file)?, "old\n");
    assert_eq!(read_tree(&dest), before_dest);
    Ok(())
}

#[test]
fn export_of_a_deleted_object_says_it_is_deleted() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let tree = t.path().join("bbs");
    fs::remove_file(tree.join("boards/general/2.json"))?;
    ok(&data, &["import-bbs", tree.to_str().unwrap()]);
    let before = snapshot(&data);
    let dest = t.path().join("m.json");
    let e = fail(
        &data,
        &["export", "message:general/2", dest.to_str().unwrap()],
    );
    assert_mentions(&e, &["deleted"]);
    assert!(!dest.exists());
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn export_bbs_into_a_non_empty_directory() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("README"), "already here\n");
    let before = read_tree(&dest);
    let e = fail(&data, &["export-bbs", dest.to_str().unwrap()]);
    assert_mentions(&e, &[dest.to_str().unwrap(), "not empty"]);
    assert_eq!(read_tree(&dest), before);
    // A regular file as the destination.
    let file = t.path().join("file");
    write(&file, "f");
    fail(&data, &["export-bbs", file.to_str().unwrap()]);
    assert_eq!(fs::read(&file)?, b"f");
    Ok(())
}

#[test]
fn duplicate_init_is_refused() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let id_key = fs::read(data.join("identity.key"))?;
    let config = fs::read(data.join("config.toml"))?;
    let card_before = card(&data);
    for args in [&["init"][..], &["init", "--name", "other"][..]] {
        let e = fail(&data, args);
        assert_mentions(&e, &["already"]);
    }
    assert_eq!(fs::read(data.join("identity.key"))?, id_key);
    assert_eq!(fs::read(data.join("config.toml"))?, config);
    assert_eq!(card(&data), card_before);
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn init_into_a_non_empty_foreign_directory_is_refused() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let dir = t.path().join("home");
    write(&dir.join("notes.txt"), "my own files\n");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let before = read_tree(&dir);
    fail(&dir, &["init"]);
    assert_eq!(read_tree(&dir), before, "init changed a foreign directory");
    let mode = fs::metadata(&dir)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "init changed the mode of a foreign directory");
    Ok(())
}

/// `bbsync1` + base32 of the card bytes with one bit of the signature flipped.
fn card_with_broken_signature(card: &str) -> String {
    let b32 = card.strip_prefix("bbsync1").unwrap().to_ascii_uppercase();
    let mut bytes = BASE32_NOPAD.decode(b32.as_bytes()).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x04;
    format!(
        "bbsync1{}",
        BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
    )
}

#[test]
fn trust_add_of_malformed_or_forged_cards() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let other = t.path().join("other");
    init(&other, "other");
    let good = card(&other);
    let before = snapshot(&data);

    let forged = card_with_broken_signature(&good);
    assert_ne!(forged, good);
    assert!(forged.starts_with("bbsync1"));
    let e = fail(&data, &["trust", "add", &forged]);
    assert_mentions(&e, &["card", "signature"]);

    // The name changed by a forger: the signature no longer matches.
    let mut bytes = BASE32_NOPAD
        .decode(good["bbsync1".len()..].to_ascii_uppercase().as_bytes())
        .unwrap();
    let pos = bytes.windows(5).position(|w| w == b"other").unwrap();
    bytes[pos] = b'O';
    let renamed = format!(
        "bbsync1{}",
        BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
    );
    fail(&data, &["trust", "add", &renamed]);

    let truncated = &good[..good.len() - 10];
    for bad in [
        "bbsync1xyz",
        "hello",
        "",
        "bbsync1",
        "BBSYNC1AAAA",
        "bbsync1!!!!",
        truncated,
        &format!("{good}aa"),
    ] {
        let e = fail(&data, &["trust", "add", bad]);
        assert_mentions(&e, &["card"]);
    }
    for role in ["full", "blind"] {
        fail(&data, &["trust", "add", "--role", role, &forged]);
    }
    assert_eq!(snapshot(&data), before);
    // The real card still works afterwards.
    ok(&data, &["trust", "add", &good]);
    Ok(())
}

#[test]
fn newer_schema_is_refused_by_every_command() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let chunks = chunk_files(&data);
    {
        let store = Store::open(&data)?;
        store.dangerously_set_schema_version(99)?;
    }
    wait_unlocked(&data);
    let f = t.path().join("f.txt");
    write(&f, "new\n");
    let tree = t.path().join("bbs");
    let out = t.path().join("out");
    for args in [
        &["status"][..],
        &["ls"][..],
        &["id"][..],
        &["verify"][..],
        &["gc"][..],
        &["trust", "list"][..],
        &[
            "import",
            f.to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "f",
        ][..],
        &["import-bbs", tree.to_str().unwrap()][..],
        &["export-bbs", out.to_str().unwrap()][..],
    ] {
        let e = fail(&data, args);
        assert_mentions(&e, &["newer bbsync", "schema 99"]);
    }
    assert!(!out.exists());
    assert_eq!(chunk_files(&data), chunks);
    let e = fail(&data, &["init"]);
    assert_mentions(&e, &["already"]);
    // Still schema 99: nothing was migrated or overwritten.
    match Store::open(&data) {
        Err(e) => assert!(e.to_string().contains("schema 99"), "{e}"),
        Ok(_) => panic!("the store opened despite schema 99"),
    }
    Ok(())
}

#[test]
fn corrupted_identity_file() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let path = data.join("identity.key");
    let mut bytes = fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&path, &bytes)?;
    for args in [
        &["status"][..],
        &["id"][..],
        &["ls"][..],
        &["trust", "list"][..],
    ] {
        let e = fail(&data, args);
        assert_mentions(&e, &["identity", "corrupted"]);
    }
    assert_eq!(fs::read(&path)?, bytes, "the damaged file is left as it is");
    // Truncated and empty identity files fail the same way (not a panic).
    fs::write(&path, &bytes[..10])?;
    let e = fail(&data, &["status"]);
    assert_mentions(&e, &["identity"]);
    fs::write(&path, b"")?;
    let e = fail(&data, &["status"]);
    assert_mentions(&e, &["identity"]);
    Ok(())
}

#[test]
fn data_dir_that_is_a_regular_file() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let file = t.path().join("not-a-dir");
    write(&file, "plain file\n");
    for args in [&["status"][..], &["init"][..], &["ls"][..], &["id"][..]] {
        let e = fail(&file, args);
        assert_mentions(&e, &[file.to_str().unwrap(), "is not a directory"]);
    }
    assert_eq!(fs::read_to_string(&file)?, "plain file\n");
    Ok(())
}

#[test]
fn data_dir_that_was_never_initialized() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let missing = t.path().join("never");
    let empty = t.path().join("empty");
    fs::create_dir(&empty)?;
    let f = t.path().join("f.txt");
    write(&f, "x\n");
    for dir in [&missing, &empty] {
        for args in [
            &["status"][..],
            &["id"][..],
            &["ls"][..],
            &["verify"][..],
            &["trust", "list"][..],
            &[
                "import",
                f.to_str().unwrap(),
                "--kind",
                "file",
                "--name",
                "f",
            ][..],
        ] {
            let e = fail(dir, args);
            assert_mentions(&e, &["bbsync init"]);
        }
    }
    assert!(!missing.exists(), "a failed command created the data dir");
    assert!(
        read_tree(&empty).is_empty(),
        "a failed command wrote into the data dir"
    );
    Ok(())
}

#[test]
fn import_bbs_of_a_tree_with_unexpected_entries() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = t.path().join("d");
    init(&data, "strict");
    let before = snapshot(&data);
    assert_eq!(before.ls, serde_json::json!([]));

    type Spoil = fn(&Path) -> PathBuf;
    let cases: &[(&str, Spoil)] = &[
        ("junk file at the root", |r| {
            let p = r.join("junk.txt");
            write(&p, "junk");
            p
        }),
        ("unknown top-level dir", |r| {
            let p = r.join("other");
            write(&p.join("x.txt"), "x");
            p
        }),
        ("file directly in applets/", |r| {
            let p = r.join("applets/README");
            write(&p, "readme");
            p
        }),
        ("non-json file in a board", |r| {
            let p = r.join("boards/general/notes.txt");
            write(&p, "n");
            p
        }),
        ("file directly in data/<applet>/", |r| {
            let p = r.join("data/lord/stray.json");
            write(&p, "{}");
            p
        }),
    ];
    for (what, spoil) in cases {
        let tree = t.path().join(what.replace(['/', ' ', '<', '>'], "_"));
        mini_bbs(&tree);
        let bad = spoil(&tree);
        let o = run(&data, &["import-bbs", tree.to_str().unwrap()]);
        let e = assert_one_line_error(&o, what);
        assert_mentions(&e, &[bad.to_str().unwrap()]);
        assert_eq!(snapshot(&data), before, "{what}: something was imported");
        assert_eq!(chunk_temp_files(&data), Vec::<std::path::PathBuf>::new());
    }
    // A regular file instead of a tree.
    let f = t.path().join("file.txt");
    write(&f, "x");
    fail(&data, &["import-bbs", f.to_str().unwrap()]);
    assert_eq!(snapshot(&data), before);

    // A failed re-import does not tombstone anything either.
    let good = t.path().join("good");
    mini_bbs(&good);
    ok(&data, &["import-bbs", good.to_str().unwrap()]);
    let after_good = snapshot(&data);
    fs::remove_file(good.join("boards/general/2.json"))?;
    write(&good.join("junk.txt"), "junk");
    fail(&data, &["import-bbs", good.to_str().unwrap()]);
    assert_eq!(snapshot(&data), after_good);
    Ok(())
}

#[test]
fn data_dir_in_use_by_another_process() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let f = t.path().join("f.txt");
    write(&f, "x\n");
    {
        // This test process holds the store (and sled's lock) open.
        let _held = Store::open(&data)?;
        for args in [
            &["status"][..],
            &[
                "import",
                f.to_str().unwrap(),
                "--kind",
                "file",
                "--name",
                "f",
            ][..],
        ] {
            let e = fail(&data, args);
            assert_mentions(&e, &["in use"]);
        }
    }
    wait_unlocked(&data);
    assert_eq!(snapshot(&data), before);
    Ok(())
}

#[test]
fn invalid_config_toml() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let path = data.join("config.toml");
    let good = fs::read_to_string(&path)?;
    fs::write(&path, format!("{good}\nexclude_ownerz = [\"sysop\"]\n"))?;
    let e = fail(&data, &["status"]);
    assert_mentions(&e, &["config.toml", "exclude_ownerz"]);
    fs::write(&path, "this is = = not toml")?;
    let e = fail(&data, &["ls"]);
    assert_mentions(&e, &["config.toml"]);
    fs::write(&path, good)?;
    ok(&data, &["status"]);
    Ok(())
}

#[test]
fn import_of_a_symlink_or_special_file_is_refused() -> TestResult {
    let t = bbsync_tests::tempdir()?;
    let data = populated_store(t.path());
    let before = snapshot(&data);
    let target = t.path().join("target.txt");
    write(&target, "target\n");
    let link = t.path().join("link.txt");
    std::os::unix::fs::symlink(&target, &link)?;
    let e = fail(
        &data,
        &[
            "import",
            link.to_str().unwrap(),
            "--kind",
            "file",
            "--name",
            "l",
        ],
    );
    assert_mentions(&e, &[link.to_str().unwrap()]);
    // A symlink inside a directory object.
    let dir = t.path().join("dir");
    write(&dir.join("a.txt"), "a\n");
    std::os::unix::fs::symlink(&target, dir.join("b.txt"))?;
    let e = fail(
        &data,
        &[
            "import",
            dir.to_str().unwrap(),
            "--kind",
            "applet",
            "--name",
            "d",
        ],
    );
    assert_mentions(&e, &["b.txt"]);
    // A symlink in a BBS tree.
    let tree = t.path().join("bbs2");
    mini_bbs(&tree);
    std::os::unix::fs::symlink(&target, tree.join("files/link.txt"))?;
    let e = fail(&data, &["import-bbs", tree.to_str().unwrap()]);
    assert_mentions(&e, &["link.txt"]);
    assert_eq!(snapshot(&data), before);
    Ok(())
}
