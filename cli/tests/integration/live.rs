//! Live mirroring between real `bbsync serve` processes on 127.0.0.1: the
//! primary watches its BBS tree (`--watch`), the standby keeps its own
//! tree equal to it (`--follow ADDR --tree DIR`); failover with `promote`
//! and the old primary rejoining as a standby of the new one.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::common::*;

fn node(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    init(&d, name);
    d
}

fn trust(on: &Path, whom: &Path) {
    ok(on, &["trust", "add", &card(whom), "--role", "full"]);
}

/// The files of a live tree (bbsync's own `.bbsync/` left out).
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    only_files(read_tree(root))
}

fn only_files(t: Tree) -> BTreeMap<String, Vec<u8>> {
    t.into_iter()
        .filter(|(k, _)| !k.starts_with(".bbsync"))
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// The files of a live tree, or `None` when a file vanished while it was
/// read (the standby is still applying changes: ask again).
fn try_files(root: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    try_read_tree(root).ok().map(only_files)
}

fn same(a: &Path, b: &Path) -> bool {
    match (try_files(a), try_files(b)) {
        (Some(fa), Some(fb)) => !fa.is_empty() && fa == fb,
        _ => false,
    }
}

fn wait_same(a: &Path, b: &Path, secs: u64, what: &str) {
    wait_for(secs, what, || same(a, b));
    assert_eq!(files(a), files(b), "{what}");
}

fn post(id: u32, body: &str) -> String {
    format!("{{\"id\":{id},\"from\":\"sysop\",\"subject\":\"post {id}\",\"body\":\"{body}\"}}\n")
}

fn primary(a: &Path, tree: &Path) -> Server {
    serve_with(
        a,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--watch",
            tree.to_str().unwrap(),
        ],
    )
}

fn standby(b: &Path, upstream: &str, tree: &Path) -> Server {
    serve_with(
        b,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            upstream,
            "--tree",
            tree.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_standby_tree_follows_posts_edits_deletes_and_a_burst() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("bbs-a"), tmp.path().join("bbs-b"));
    mini_bbs(&ta);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let p = primary(&a, &ta);
    // A file in the standby's tree that bbsync did not write, where a post
    // of the primary will go.
    write(
        &tb.join("boards/general/7.json"),
        "written on the standby\n",
    );
    let _s = standby(&b, &p.addr, &tb);
    wait_for(60, "the mini BBS in the standby's tree", || {
        match (try_files(&tb), try_files(&ta)) {
            (Some(fb), Some(fa)) => {
                fb.get("boards/general/2.json") == fa.get("boards/general/2.json")
                    && fb.len() == fa.len() + 1
            }
            _ => false,
        }
    });
    let mut expected = files(&ta);
    expected.insert(
        "boards/general/7.json".into(),
        b"written on the standby\n".to_vec(),
    );
    assert_eq!(
        files(&tb),
        expected,
        "the mini BBS, and the stray file left as it is"
    );

    // A new post, byte for byte.
    let new = ta.join("boards/general/42.json");
    write(&new, post(42, "a new post"));
    let at_b = tb.join("boards/general/42.json");
    wait_for(30, "post 42 on the standby", || {
        std::fs::read(&at_b).ok() == Some(post(42, "a new post").into_bytes())
    });
    // An edit, and an edit of a directory object (swapped as a whole).
    write(&new, post(42, "edited"));
    write(&ta.join("data/lord/alice/save.json"), "{\"level\": 4}\n");
    std::fs::remove_file(ta.join("applets/lord/empty.txt"))?;
    wait_for(30, "the edits on the standby", || {
        std::fs::read(&at_b).ok() == Some(post(42, "edited").into_bytes())
            && std::fs::read(tb.join("data/lord/alice/save.json")).ok()
                == Some(b"{\"level\": 4}\n".to_vec())
            && !tb.join("applets/lord/empty.txt").exists()
    });
    // A delete.
    std::fs::remove_file(&new)?;
    wait_for(30, "the delete on the standby", || !at_b.exists());

    // The post whose place holds a file bbsync did not write: left alone,
    // a conflict in status.
    write(
        &ta.join("boards/general/7.json"),
        post(7, "from the primary"),
    );
    wait_for(30, "the conflict in status", || {
        ok(&b, &["status"]).contains(
            "conflict   boards/general/7.json: boards/general/7.json was not written by bbsync",
        )
    });
    assert_eq!(
        std::fs::read(tb.join("boards/general/7.json"))?,
        b"written on the standby\n"
    );
    let st = json(&b, &["status"]);
    assert_eq!(st["live"]["role"], "standby");
    assert!(
        st["live"]["conflicts"]["boards/general/7.json"].is_string(),
        "{st}"
    );
    // Moved away, the post comes through with the next change.
    std::fs::rename(
        tb.join("boards/general/7.json"),
        tmp.path().join("7.json.mine"),
    )?;

    // A burst of 1,000 posts.
    for i in 0..1000u32 {
        write(&ta.join(format!("boards/burst/{i}.json")), post(i, "burst"));
    }
    wait_same(&ta, &tb, 180, "the burst of 1,000 posts on the standby");
    assert_eq!(
        std::fs::read(tb.join("boards/general/7.json"))?,
        post(7, "from the primary").into_bytes()
    );
    let st = json(&b, &["status"]);
    assert_eq!(st["live"]["conflicts"], serde_json::json!({}), "{st}");
    // The marker says what was applied.
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tb.join(".bbsync/tree.json"))?)?;
    assert_eq!(marker["role"], "standby");
    assert_eq!(marker["seq"], json(&a, &["status"])["seq"]);
    Ok(())
}

#[test]
fn a_standby_restarted_mid_stream_resumes_without_rewriting() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("bbs-a"), tmp.path().join("bbs-b"));
    mini_bbs(&ta);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let p = primary(&a, &ta);
    let mut s = standby(&b, &p.addr, &tb);
    wait_same(&ta, &tb, 60, "the mini BBS on the standby");
    let early = tb.join("boards/general/1.json");
    let ino = std::fs::metadata(&early)?.ino();
    let writer = {
        let ta = ta.clone();
        std::thread::spawn(move || {
            for i in 0..400u32 {
                write(
                    &ta.join(format!("boards/stream/{i}.json")),
                    post(i, "stream"),
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    wait_for(60, "part of the stream on the standby", || {
        tb.join("boards/stream/50.json").exists()
    });
    s.child.kill()?;
    s.child.wait()?;
    s = standby(&b, &p.addr, &tb);
    writer.join().unwrap();
    wait_same(
        &ta,
        &tb,
        120,
        "the whole stream after the standby's restart",
    );
    assert_eq!(
        std::fs::metadata(&early)?.ino(),
        ino,
        "an unchanged file was rewritten after the restart"
    );
    drop(s);
    Ok(())
}

#[test]
fn a_file_written_slowly_never_appears_half_written_on_the_standby() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("bbs-a"), tmp.path().join("bbs-b"));
    mini_bbs(&ta);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let p = primary(&a, &ta);
    let _s = standby(&b, &p.addr, &tb);
    wait_same(&ta, &tb, 60, "the mini BBS on the standby");
    let full: Vec<u8> = (0..10u32)
        .flat_map(|i| format!("{{\"piece\":{i},\"pad\":\"{}\"}}\n", "x".repeat(900)).into_bytes())
        .collect();
    let writer = {
        let (path, full) = (ta.join("boards/general/slow.json"), full.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(path).unwrap();
            for piece in full.chunks(full.len() / 10) {
                f.write_all(piece).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(120));
            }
        })
    };
    let at_b = tb.join("boards/general/slow.json");
    let mut seen_whole = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen_whole && std::time::Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(&at_b) {
            assert_eq!(
                bytes.len(),
                full.len(),
                "the standby's tree held a half-written file"
            );
            assert_eq!(bytes, full);
            seen_whole = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    writer.join().unwrap();
    assert!(seen_whole, "the slowly written file never arrived");
    // Nor did the primary import a part of it.
    let row = ls_row(&a, "message", "general/slow").unwrap();
    assert_eq!(row["version"], 1, "{row}");
    Ok(())
}

#[test]
fn failover_drill_promote_and_rejoin_lose_no_post() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("bbs-a"), tmp.path().join("bbs-b"));
    mini_bbs(&ta);
    let a = node(tmp.path(), "alpha");
    let b = node(tmp.path(), "beta");
    // Each may follow the other (the standby now, the rejoining old
    // primary later).
    trust(&a, &b);
    trust(&b, &a);
    let mut pa = primary(&a, &ta);
    let mut sb = standby(&b, &pa.addr, &tb);
    for i in 0..20u32 {
        write(
            &ta.join(format!("boards/general/{}.json", 100 + i)),
            post(100 + i, "before"),
        );
    }
    wait_same(&ta, &tb, 60, "the posts before the failover on the standby");
    // The standby is cut off; the primary takes one more post, then dies
    // (kill -9) before it could send it.
    let a_addr = pa.addr.clone();
    assert!(sb.stop().success());
    write(
        &ta.join("boards/general/199.json"),
        post(199, "only on the old primary"),
    );
    wait_for(30, "post 199 imported on the old primary", || {
        ls_row(&a, "message", "general/199").is_some()
    });
    pa.child.kill()?;
    pa.child.wait()?;

    // Failover: the standby comes back (its upstream is down), is promoted
    // through its running node, and takes posts.
    sb = standby(&b, &a_addr, &tb);
    let out = ok(&b, &["promote"]);
    assert!(
        out.contains("promoted: this node is the primary now, watching"),
        "{out}"
    );
    let e = fail(&b, &["promote"]);
    assert_mentions(&e, &["this node is the primary already"]);
    for i in 0..10u32 {
        write(
            &tb.join(format!("boards/general/{}.json", 200 + i)),
            post(200 + i, "after"),
        );
    }
    wait_for(30, "the new primary imports its posts", || {
        ls_row(&b, "message", "general/209").is_some()
    });
    // A restart keeps the role (the command line still says --follow --tree).
    assert!(sb.stop().success());
    write(
        &tb.join("boards/general/210.json"),
        post(210, "while the new primary was down"),
    );
    sb = standby(&b, &a_addr, &tb);
    wait_for(
        30,
        "the restarted new primary imports what was written while it was down",
        || ls_row(&b, "message", "general/210").is_some(),
    );
    assert_eq!(json(&b, &["status"])["live"]["role"], "primary");

    // The old primary rejoins as a standby of the new one, on the same
    // address (the new primary still pulls from it: what it wrote and never
    // sent comes over).
    let port = a_addr.split('/').nth(4).unwrap().to_string();
    pa = serve_with(
        &a,
        &[
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{port}"),
            "--follow",
            &sb.addr,
            "--tree",
            ta.to_str().unwrap(),
        ],
    );
    wait_same(&ta, &tb, 90, "both trees identical after the rejoin");
    let fb = files(&tb);
    for id in (100..120).chain([199]).chain(200..211) {
        assert!(
            fb.contains_key(&format!("boards/general/{id}.json")),
            "post {id} lost"
        );
    }
    assert_eq!(json(&a, &["status"])["live"]["role"], "standby");
    // The rejoined old primary follows: a new post reaches its tree.
    write(
        &tb.join("boards/general/300.json"),
        post(300, "after the rejoin"),
    );
    wait_same(&ta, &tb, 30, "a post after the rejoin on the old primary");
    // Fail back while both run: the new primary is demoted through its
    // running node (its tree is no longer watched; its upstream's changes
    // are written into it), the old one promoted again.
    let out = ok(&b, &["demote"]);
    assert!(
        out.contains("demoted: this node is a standby again"),
        "{out}"
    );
    assert_eq!(json(&b, &["status"])["live"]["role"], "standby");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tb.join(".bbsync/tree.json"))?)?;
    assert_eq!(marker["role"], "standby", "{marker}");
    let e = fail(&b, &["demote"]);
    assert_mentions(&e, &["this node was not promoted"]);
    let out = ok(&a, &["promote"]);
    assert!(
        out.contains("promoted: this node is the primary now"),
        "{out}"
    );
    write(
        &ta.join("boards/general/400.json"),
        post(400, "after the fail-back"),
    );
    wait_same(
        &ta,
        &tb,
        30,
        "a post after the fail-back on the demoted node",
    );
    // A restart keeps the demotion: the demoted node still follows.
    assert!(sb.stop().success());
    sb = standby(&b, &pa.addr, &tb);
    write(
        &ta.join("boards/general/401.json"),
        post(401, "after the demoted node's restart"),
    );
    wait_same(&ta, &tb, 30, "a post after the demoted node restarted");
    assert_eq!(json(&b, &["status"])["live"]["role"], "standby");
    // On a stopped node, demote only forgets the promotion.
    assert!(pa.stop().success());
    let out = ok(&a, &["demote"]);
    assert!(
        out.contains("demoted: `serve --follow ADDR --tree"),
        "{out}"
    );
    let e = fail(&a, &["demote"]);
    assert_mentions(&e, &["this node was not promoted"]);
    drop(sb);
    Ok(())
}

/// Rows of the `posts` table of a copy of the database at `path` (a copy:
/// opening a WAL database in the standby's tree would add files to it).
fn rows_of_copy(path: &Path, scratch: &Path) -> Option<i64> {
    let copy = scratch.join(format!("copy-{}.sqlite3", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
    }
    std::fs::copy(path, &copy).ok()?;
    let conn = rusqlite::Connection::open(&copy).ok()?;
    conn.query_row("SELECT count(*) FROM posts", [], |r| r.get(0))
        .ok()
}

#[test]
fn a_live_sqlite_database_in_a_layout_reaches_the_standby_consistent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("axon-a"), tmp.path().join("axon-b"));
    std::fs::create_dir_all(ta.join("data"))?;
    write(
        &ta.join("data/user_data/alice/prefs.json"),
        "{\"theme\":\"amber\"}\n",
    );
    write(&ta.join("media/logo.txt"), "AXON\n");
    // The BBS's database, open and written in WAL mode all along.
    let conn = rusqlite::Connection::open(ta.join("data/axon_bbs.sqlite3"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT NOT NULL);")?;
    conn.execute("INSERT INTO posts (body) VALUES ('first')", [])?;
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let ta_s = ta.to_str().unwrap();
    let p = serve_with(
        &a,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--watch",
            ta_s,
            "--layout",
            "axon",
        ],
    );
    let tb_s = tb.to_str().unwrap();
    let _s = serve_with(
        &b,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            &p.addr,
            "--tree",
            tb_s,
            "--layout",
            "axon",
        ],
    );
    let db_b = tb.join("data/axon_bbs.sqlite3");
    // The objects of one page are written in object-id order (random): the
    // database may come before the others.
    wait_for(
        60,
        "the database and the other objects on the standby",
        || {
            rows_of_copy(&db_b, tmp.path()) == Some(1)
                && tb.join("data/user_data/alice/prefs.json").exists()
                && tb.join("media/logo.txt").exists()
        },
    );
    assert_eq!(
        std::fs::read(tb.join("data/user_data/alice/prefs.json"))?,
        b"{\"theme\":\"amber\"}\n"
    );
    assert_eq!(std::fs::read(tb.join("media/logo.txt"))?, b"AXON\n");
    // Commits while the database stays open: each is taken through a
    // consistent snapshot; the standby's copy always opens.
    for i in 0..50 {
        conn.execute(
            "INSERT INTO posts (body) VALUES (?1)",
            [format!("post {i}")],
        )?;
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for(60, "all 51 rows on the standby", || {
        let n = rows_of_copy(&db_b, tmp.path());
        assert!(n.is_some(), "the standby's database did not open");
        n == Some(51)
    });
    drop(conn);
    Ok(())
}

#[test]
fn live_tree_misuse_is_refused_with_one_line() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = node(tmp.path(), "alpha");
    let t = tmp.path().join("bbs");
    let u = tmp.path().join("other");
    let (ts, us) = (t.to_str().unwrap(), u.to_str().unwrap());
    let listen = ["serve", "--listen", "/ip4/127.0.0.1/tcp/0"];
    let e = fail(&a, &[&listen[..], &["--tree", ts]].concat());
    assert_mentions(&e, &["--tree", "give --follow ADDR too", "--watch DIR"]);
    let e = fail(&a, &[&listen[..], &["--watch", ts, "--tree", us]].concat());
    assert_mentions(&e, &["a node keeps one live tree"]);
    let inside = a.join("bbs");
    let e = fail(
        &a,
        &[&listen[..], &["--watch", inside.to_str().unwrap()]].concat(),
    );
    assert_mentions(&e, &["must not contain one another"]);
    let e = fail(&a, &["promote"]);
    assert_mentions(&e, &["no tree to watch", "--tree DIR"]);
    let e = fail(&a, &["demote"]);
    assert_mentions(&e, &["this node was not promoted"]);
    // A promotion is kept; promoting twice is refused.
    let out = ok(&a, &["promote", "--tree", ts]);
    assert!(out.contains("promoted: `bbsync serve` watches"), "{out}");
    let e = fail(&a, &["promote", "--tree", ts]);
    assert_mentions(&e, &["this node is the primary already"]);
    assert!(!t.exists(), "a refused or offline command made the tree");
    // A promoted node that follows no upstream: demoting it while it runs
    // would leave its tree neither watched nor written.
    let s = serve_with(&a, &listen[1..]);
    let e = fail(&a, &["demote"]);
    assert_mentions(
        &e,
        &[
            "the serving node follows no upstream",
            "stop it, then `bbsync demote`",
        ],
    );
    assert_eq!(json(&a, &["status"])["live"]["role"], "primary");
    drop(s);
    Ok(())
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> Option<u32> {
    std::fs::symlink_metadata(p).ok().map(|m| m.mode() & 0o7777)
}

/// The modes a tree must keep (of files and of directory objects' entries).
const MODES: [(&str, u32); 8] = [
    ("config/bbs.toml", 0o600),
    ("boards/general/1.json", 0o640),
    ("files/run.sh", 0o755),
    ("applets/lord", 0o750),
    ("applets/lord/main.lua", 0o600),
    ("applets/lord/assets", 0o700),
    ("applets/lord/assets/x.bin", 0o444),
    ("data/lord/alice/save.json", 0o660),
];

/// Whether every path of [`MODES`] has its mode (or the last of `chmods`
/// naming it), and the setuid file arrived as 0755.
fn modes_are_kept(root: &Path, chmods: &[(&str, u32)]) -> bool {
    let mut want: BTreeMap<&str, u32> = MODES.into_iter().collect();
    want.extend(chmods.iter().copied());
    want.iter().all(|(p, m)| mode_of(&root.join(p)) == Some(*m))
        && mode_of(&root.join("files/suid")) == Some(0o755)
}

#[test]
fn modes_reach_the_standby_tree_an_export_and_a_restore_without_setuid() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (ta, tb) = (tmp.path().join("bbs-a"), tmp.path().join("bbs-b"));
    mini_bbs(&ta);
    write(&ta.join("files/run.sh"), "#!/bin/sh\necho hi\n");
    write(&ta.join("files/suid"), "not really a program\n");
    for (p, m) in MODES {
        chmod(&ta.join(p), m);
    }
    // Setuid and setgid: never kept (modes come from a peer).
    chmod(&ta.join("files/suid"), 0o6755);
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    trust(&a, &b);
    let p = primary(&a, &ta);
    let s = standby(&b, &p.addr, &tb);
    wait_same(&ta, &tb, 60, "the mini BBS on the standby");
    wait_for(30, "the modes in the standby's tree", || {
        modes_are_kept(&tb, &[])
    });
    // A chmod alone, of a file object and of a directory object's entry,
    // is a change that reaches the standby.
    let chmods = [
        ("boards/general/1.json", 0o600),
        ("applets/lord/main.lua", 0o750),
    ];
    for (p, m) in chmods {
        chmod(&ta.join(p), m);
    }
    wait_for(30, "the chmods on the standby", || {
        modes_are_kept(&tb, &chmods)
    });
    let row = ls_row(&b, "message", "general/1").unwrap();
    assert_eq!(row["version"], 2, "{row}");
    drop(s);
    drop(p);
    // export-bbs and restore --to-tree write the same modes.
    let out = tmp.path().join("export");
    ok(&b, &["export-bbs", out.to_str().unwrap()]);
    assert_eq!(files(&out), files(&ta));
    assert!(modes_are_kept(&out, &chmods), "modes of export-bbs");
    let repo = tmp.path().join("repo");
    ok(&b, &["backup", "--repo", repo.to_str().unwrap()]);
    let restored = tmp.path().join("restored");
    ok(
        &b,
        &[
            "restore",
            "--repo",
            repo.to_str().unwrap(),
            "--to-tree",
            restored.to_str().unwrap(),
        ],
    );
    assert_eq!(files(&restored), files(&ta));
    assert!(
        modes_are_kept(&restored, &chmods),
        "modes of restore --to-tree"
    );
    Ok(())
}
