//! SQLite databases in a BBS tree, between real processes (issue 17): a
//! writer process (Python's sqlite3) commits transactions as fast as it can
//! while `import-bbs` runs, and every version that comes out again (export,
//! a standby that follows, a backup restored) passes `PRAGMA
//! integrity_check`, holds only whole transactions, and never has fewer
//! rows than the one before; a damaged source keeps the previous version;
//! dumps as SQL, JSON lines and CSV load back into the same rows; Axon
//! BBS's layout (with the database its own migrations create) is imported,
//! cloned to a second node and exported identically.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;
use rusqlite::{Connection, types::Value};

/// A process that writes a database as a busy BBS would
/// (`tests/data/sqlite_writer.py`); killed when dropped.
struct Writer {
    child: Child,
    progress: PathBuf,
}

impl Writer {
    /// Starts writing `db`; the last committed transaction goes to a file
    /// beside the tree (`db`'s directory's parent).
    fn start(db: &Path, mode: &str) -> Writer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sqlite_writer.py");
        let tree = db.parent().unwrap().parent().unwrap();
        let progress = tree.with_extension("progress");
        let child = Command::new("python3")
            .arg(script)
            .arg(db)
            .arg(mode)
            .arg(&progress)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let w = Writer { child, progress };
        w.wait_more(1);
        w
    }

    /// The number of the last transaction it committed.
    fn committed(&self) -> i64 {
        fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until it has committed `n` more transactions (it is alive and
    /// writing, whatever else runs).
    fn wait_more(&self, n: i64) {
        let want = self.committed() + n;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.committed() < want {
            assert!(
                Instant::now() < deadline,
                "the writer made no progress (at {})",
                self.committed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(
        format!("file:{}?immutable=1", path.display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap()
}

/// Checks a database written by [`Writer`]: integrity, whole transactions,
/// and no transaction missing before the last one. Returns its row count.
fn check_db(path: &Path) -> i64 {
    let c = open_ro(path);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{} fails its integrity check", path.display());
    let partial: i64 = c
        .query_row(
            "SELECT count(*) FROM (SELECT txn FROM posts GROUP BY txn \
             HAVING count(*) != 10 OR min(n) != 0 OR max(n) != 9)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(partial, 0, "{} holds part of a transaction", path.display());
    let (txns, max): (i64, i64) = c
        .query_row(
            "SELECT count(DISTINCT txn), coalesce(max(txn), 0) FROM posts",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        txns,
        max,
        "{} lacks a committed transaction",
        path.display()
    );
    c.query_row("SELECT count(*) FROM posts", [], |r| r.get(0))
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn node(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    init(&d, name);
    d
}

fn version(data: &Path, kind: &str, name: &str) -> u64 {
    ls_row(data, kind, name)
        .and_then(|r| r["version"].as_u64())
        .unwrap_or(0)
}

fn live_tree(root: &Path) -> PathBuf {
    write(&root.join("boards/general/1.json"), "{\"id\":1}\n");
    fs::create_dir_all(root.join("files")).unwrap();
    root.join("files/bbs.sqlite3")
}

#[test]
fn import_bbs_under_a_concurrent_writer_keeps_every_version_whole() -> TestResult {
    for mode in ["wal", "delete"] {
        let tmp = tempfile::tempdir()?;
        let tree = tmp.path().join("tree");
        let db = live_tree(&tree);
        let writer = Writer::start(&db, mode);
        let data = node(tmp.path(), "a");
        let mut last = 0;
        for i in 0..10 {
            writer.wait_more(3);
            let r = json(&data, &["import-bbs", s(&tree)]);
            assert_eq!(r["databases"], 1, "{r}");
            // The writer's -wal/-shm/-journal files never become objects.
            let names = ls_names(&data, &[]);
            assert_eq!(names.len(), 2, "{mode}: {names:?}");
            assert_eq!(version(&data, "file", "bbs.sqlite3"), i + 1, "{mode}");
            let out = tmp.path().join(format!("v{i}.db"));
            ok(&data, &["export", "file:bbs.sqlite3", s(&out)]);
            let n = check_db(&out);
            assert!(n > last, "{mode}: version {i} has {n} rows after {last}");
            last = n;
        }
        drop(writer);
        let (code, report) = verify(&data, &["--read-data"]);
        assert_eq!(code, 0, "{report}");
    }
    Ok(())
}

#[test]
fn a_standby_following_a_live_database_always_holds_a_whole_one() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let db = live_tree(&tree);
    let writer = Writer::start(&db, "wal");
    let a = node(tmp.path(), "primary");
    let b = node(tmp.path(), "standby");
    ok(&a, &["trust", "add", &card(&b), "--role", "full"]);
    let primary = serve(&a);
    let _standby = serve_with(
        &b,
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            &primary.addr,
        ],
    );
    let mut last = 0;
    for i in 0..10 {
        writer.wait_more(3);
        // Through the serving node's control socket.
        ok(&a, &["import-bbs", s(&tree)]);
        let v = version(&a, "file", "bbs.sqlite3");
        wait_for(60, "the standby to apply the new version", || {
            ls_row(&b, "file", "bbs.sqlite3")
                .is_some_and(|r| r["version"] == v && r["state"] == "ok")
        });
        let out = tmp.path().join(format!("standby-{i}.db"));
        ok(&b, &["export", "file:bbs.sqlite3", s(&out)]);
        let n = check_db(&out);
        assert!(
            n > last,
            "version {v} on the standby has {n} rows after {last}"
        );
        last = n;
    }
    Ok(())
}

#[test]
fn backups_of_a_live_database_restore_whole_databases() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let db = live_tree(&tree);
    let writer = Writer::start(&db, "wal");
    let a = node(tmp.path(), "a");
    let b = node(tmp.path(), "b");
    ok(&a, &["trust", "add", &card(&b), "--role", "full"]);
    ok(&b, &["trust", "add", &card(&a), "--role", "full"]);
    let repo = tmp.path().join("repo");
    let mut snaps = Vec::new();
    for _ in 0..5 {
        writer.wait_more(3);
        ok(&a, &["import-bbs", s(&tree)]);
        let r = json(&a, &["backup", "--repo", s(&repo)]);
        snaps.push(r["snapshot"].as_str().unwrap().to_string());
    }
    drop(writer);
    let mut last = 0;
    for (i, snap) in snaps.iter().enumerate() {
        let out = tmp.path().join(format!("restored-{i}"));
        json(
            &a,
            &["restore", "--repo", s(&repo), "--to-tree", s(&out), snap],
        );
        let n = check_db(&out.join("files/bbs.sqlite3"));
        assert!(n > last, "snapshot {i} has {n} rows after {last}");
        last = n;
    }
    // The last snapshot restored into another node's store (named: ids
    // have a one-second resolution, so `latest` is not defined between
    // snapshots taken within one second).
    ok(&b, &["restore", "--repo", s(&repo), snaps.last().unwrap()]);
    let out = tmp.path().join("from-b.db");
    ok(&b, &["export", "file:bbs.sqlite3", s(&out)]);
    assert_eq!(check_db(&out), last);
    Ok(())
}

/// Overwrites one page in the middle of a database with garbage.
fn damage(db: &Path) {
    let mut bytes = fs::read(db).unwrap();
    let mid = (bytes.len() / 4096 / 2) * 4096;
    bytes[mid..mid + 4096].fill(0x5a);
    fs::write(db, bytes).unwrap();
}

#[test]
fn a_database_damaged_at_the_source_keeps_the_previous_version() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let db = live_tree(&tree);
    {
        let c = Connection::open(&db)?;
        c.execute_batch(
            "CREATE TABLE posts(id INTEGER PRIMARY KEY, txn INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL);",
        )?;
        let tx = c.unchecked_transaction()?;
        for t in 1..=300 {
            for n in 0..10 {
                tx.execute(
                    "INSERT INTO posts(txn, n, body) VALUES (?1, ?2, ?3)",
                    rusqlite::params![t, n, "y".repeat(300)],
                )?;
            }
        }
        tx.commit()?;
    }
    let data = node(tmp.path(), "a");
    ok(&data, &["import-bbs", s(&tree)]);
    let before = snapshot(&data);
    damage(&db);
    let line = fail(&data, &["import-bbs", s(&tree)]);
    assert_mentions(&line, &["files/bbs.sqlite3", "integrity check"]);
    assert_eq!(snapshot(&data), before, "a failed import changed the store");
    let out = tmp.path().join("kept.db");
    ok(&data, &["export", "file:bbs.sqlite3", s(&out)]);
    assert_eq!(check_db(&out), 3000);
    // The same through `import` of the one file.
    let line = fail(
        &data,
        &["import", s(&db), "--kind", "file", "--name", "bbs.sqlite3"],
    );
    assert_mentions(&line, &["bbs.sqlite3", "integrity check"]);
    assert_eq!(snapshot(&data), before);
    // Nothing of the snapshots stays behind in the data dir.
    assert_eq!(fs::read_dir(data.join("tmp"))?.count(), 0);
    Ok(())
}

#[test]
fn databases_inside_directory_objects_are_snapshots_too() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let dir = tree.join("data/game/alice");
    write(&dir.join("notes.txt"), "level 3\n");
    let save = dir.join("save.db");
    // Kept open: what it commits stays in its WAL.
    let c = Connection::open(&save)?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=0; CREATE TABLE state(k TEXT PRIMARY KEY, v INTEGER);
         INSERT INTO state VALUES ('gold', 120), ('level', 3);",
    )?;
    assert!(dir.join("save.db-wal").metadata()?.len() > 0);
    let data = node(tmp.path(), "a");
    let r = json(&data, &["import-bbs", s(&tree)]);
    assert_eq!(r["databases"], 1, "{r}");
    let out = tmp.path().join("out");
    ok(&data, &["export-bbs", s(&out)]);
    let names: Vec<String> = fs::read_dir(out.join("data/game/alice"))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["notes.txt", "save.db"]);
    let got: i64 = open_ro(&out.join("data/game/alice/save.db")).query_row(
        "SELECT v FROM state WHERE k = 'gold'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(got, 120);
    // A commit that only reaches the WAL is a change of the directory.
    c.execute("UPDATE state SET v = 121 WHERE k = 'gold'", [])?;
    let r = json(&data, &["import-bbs", s(&tree)]);
    assert_eq!(r["changed"], 1, "{r}");
    Ok(())
}

/// Every row of every table of a database, with its rowid.
fn all_rows(c: &Connection) -> BTreeMap<String, Vec<Vec<Value>>> {
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let q = format!(
                "SELECT * FROM \"{}\" ORDER BY rowid",
                t.replace('"', "\"\"")
            );
            let mut st = c.prepare(&q).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                .unwrap()
                .collect::<Result<Vec<Vec<Value>>, _>>()
                .unwrap();
            (t, rows)
        })
        .collect()
}

fn sample_db(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, karma REAL, avatar BLOB);
         CREATE TABLE posts(id INTEGER PRIMARY KEY, user INTEGER REFERENCES users(id), body TEXT, score INTEGER);
         CREATE INDEX posts_user ON posts(user);
         CREATE TABLE \"odd, name\"(a TEXT, b INTEGER);
         INSERT INTO users(name, karma, avatar) VALUES
           ('alice', 1.5, X'89504e470d0a1a0a'), ('bob', NULL, NULL), ('ünï \"cödé\"', -0.25, X'');
         INSERT INTO posts(user, body, score) VALUES
           (1, 'hello, world', 3), (2, 'line one
line two', NULL), (3, '', -7), (1, NULL, 9223372036854775807), (2, 'quote \"x\" and ''y''', 0);
         INSERT INTO \"odd, name\" VALUES ('a,b', 1), (NULL, NULL);",
    )
    .unwrap();
}

/// Parses RFC 4180 CSV into rows of fields; `None` is an unquoted empty field.
fn parse_csv(text: &str) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        break;
                    }
                } else {
                    field.push(c);
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '\r' {
                break;
            }
            field.push(c);
            chars.next();
        }
        row.push((quoted || !field.is_empty()).then_some(field));
        match chars.next() {
            Some(',') => continue,
            Some('\r') => {
                assert_eq!(chars.next(), Some('\n'), "CSV lines end in CRLF");
                rows.push(std::mem::take(&mut row));
                if chars.peek().is_none() {
                    return rows;
                }
            }
            None => panic!("CSV does not end with CRLF"),
            Some(c) => panic!("unexpected {c:?}"),
        }
    }
}

#[test]
fn sql_json_and_csv_dumps_load_back_into_the_same_rows() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("main.db");
    sample_db(&src);
    let data = node(tmp.path(), "a");
    ok(
        &data,
        &["import", s(&src), "--kind", "database", "--name", "main"],
    );
    let source = Connection::open(&src)?;
    let expected = all_rows(&source);

    // SQL: into a fresh database, the same schema and rows.
    let sql = tmp.path().join("dump.sql");
    let out = ok(&data, &["export", "database:main", "--as", "sql", s(&sql)]);
    // users, posts, "odd, name" and sqlite_sequence.
    assert!(out.contains("4 tables, 11 rows"), "{out}");
    let fresh = Connection::open_in_memory()?;
    fresh.execute_batch(&fs::read_to_string(&sql)?)?;
    assert_eq!(all_rows(&fresh), expected);
    let schema = |c: &Connection| -> Vec<(String, String)> {
        c.prepare("SELECT name, coalesce(sql, '') FROM sqlite_schema ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(schema(&fresh), schema(&source));
    // The same bytes on stdout.
    let o = bbsync(&data)
        .args(["export", "database:main", "--as", "sql", "-"])
        .output()?;
    assert!(o.status.success());
    assert_eq!(o.stdout, fs::read(&sql)?);

    // JSON lines: every row, typed.
    let jl = tmp.path().join("dump.jsonl");
    ok(&data, &["export", "database:main", "--as", "json", s(&jl)]);
    let mut by_table: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in fs::read_to_string(&jl)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        by_table
            .entry(v["table"].as_str().unwrap().to_string())
            .or_default()
            .push(v["row"].clone());
    }
    let users = &by_table["users"];
    assert_eq!(users.len(), 3);
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["karma"], 1.5);
    assert_eq!(users[0]["avatar"]["blob"], "89504e470d0a1a0a");
    assert!(users[1]["karma"].is_null());
    assert_eq!(users[2]["name"], "ünï \"cödé\"");
    let posts = &by_table["posts"];
    assert_eq!(posts.len(), 5);
    assert_eq!(posts[1]["body"], "line one\nline two");
    assert_eq!(posts[3]["score"], i64::MAX);
    assert_eq!(by_table["odd, name"].len(), 2);
    assert!(!by_table.contains_key("sqlite_sequence"));
    // One table only.
    let o = bbsync(&data)
        .args([
            "export",
            "database:main",
            "--as",
            "json",
            "--table",
            "users",
            "-",
        ])
        .output()?;
    assert_eq!(String::from_utf8(o.stdout)?.lines().count(), 3);

    // CSV: one file per table; loaded into tables of the same schema, the
    // same rows (the declared types bring the integers and reals back).
    let dir = tmp.path().join("csv");
    ok(&data, &["export", "database:main", "--as", "csv", s(&dir)]);
    let mut files: Vec<String> = fs::read_dir(&dir)?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["odd%2C%20name.csv", "posts.csv", "users.csv"]);
    let reload = Connection::open_in_memory()?;
    for (t, file) in [
        ("users", "users.csv"),
        ("posts", "posts.csv"),
        ("odd, name", "odd%2C%20name.csv"),
    ] {
        let create: String =
            source.query_row("SELECT sql FROM sqlite_schema WHERE name = ?1", [t], |r| {
                r.get(0)
            })?;
        reload.execute_batch(&create)?;
        let rows = parse_csv(&fs::read_to_string(dir.join(file))?);
        let header = &rows[0];
        let marks = vec!["?"; header.len()].join(",");
        let q = format!(
            "INSERT INTO \"{}\" VALUES ({marks})",
            t.replace('"', "\"\"")
        );
        for row in &rows[1..] {
            let vals: Vec<Value> = row
                .iter()
                .map(|f| match f {
                    None => Value::Null,
                    Some(x) if x.starts_with("\\x") => Value::Blob(hex_decode(&x[2..])),
                    Some(x) => Value::Text(x.clone()),
                })
                .collect();
            reload.execute(&q, rusqlite::params_from_iter(vals))?;
        }
    }
    // (sqlite_sequence included: the ids inserted move it the same way.)
    assert_eq!(all_rows(&reload), expected);
    let one = tmp.path().join("users.csv");
    ok(
        &data,
        &[
            "export",
            "database:main",
            "--as",
            "csv",
            "--table",
            "users",
            s(&one),
        ],
    );
    assert_eq!(fs::read(&one)?, fs::read(dir.join("users.csv"))?);

    // Refused, with the reason.
    let line = fail(&data, &["export", "database:main", "--as", "csv", "-"]);
    assert_mentions(&line, &["--table"]);
    let line = fail(
        &data,
        &[
            "export",
            "database:main",
            "--as",
            "sql",
            "--table",
            "nope",
            "-",
        ],
    );
    assert_mentions(&line, &["no table \"nope\"", "users", "posts"]);
    let line = fail(&data, &["export", "database:main", "--as", "sql", s(&sql)]);
    assert_mentions(&line, &["exists"]);
    write(&tmp.path().join("plain.txt"), "not a database\n");
    ok(
        &data,
        &[
            "import",
            s(&tmp.path().join("plain.txt")),
            "--kind",
            "file",
            "--name",
            "plain.txt",
        ],
    );
    let line = fail(&data, &["export", "file:plain.txt", "--as", "sql", "-"]);
    assert_mentions(&line, &["file:plain.txt", "not a SQLite database"]);
    let o = run(&data, &["export", "database:main", "x", "--table", "users"]);
    assert_eq!(o.code, 2, "--table needs --as: {}", o.stderr);
    Ok(())
}

fn hex_decode(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// An Axon BBS install (github.com/achgulp/axon_bbs): its database as its
/// own migrations create it (`tests/data/axon_schema.sql`, made by
/// `scripts/axon-schema.sh`) with users, boards and posts, BitSync content,
/// per-user identity files, media, `.env`, and the software beside them.
fn axon_install(root: &Path) {
    let db = root.join("data/axon_bbs.sqlite3");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = Connection::open(&db).unwrap();
    // The dump creates tables in name order; references come later.
    c.execute_batch("PRAGMA foreign_keys=OFF").unwrap();
    c.execute_batch(include_str!("../data/axon_schema.sql"))
        .unwrap();
    c.execute_batch(
        "INSERT INTO core_user(password, is_superuser, username, first_name, last_name, email, is_staff, is_active,
            date_joined, access_level, is_banned, pubkey, nickname, is_agent, agent_parameters, is_moderator, karma)
         VALUES ('!', 1, 'sysop', '', '', '', 1, 1, '2026-01-01 00:00:00', 10, 0, 'PK0', 'Sysop', 0, '{}', 1, 0),
                ('!', 0, 'alice', '', '', '', 0, 1, '2026-01-02 00:00:00', 1, 0, 'PK1', 'Alice', 0, '{}', 0, 5);
         INSERT INTO messaging_messageboard(id, name, description, required_access_level, is_realtime,
            message_retention_days, trusted_peers, federation_poll_interval, local_poll_interval, use_lan_federation)
         VALUES (1, 'general', 'General', 0, 0, 30, '[]', 1.0, 0.5, 0);",
    )
    .unwrap();
    for i in 0..200 {
        c.execute(
            "INSERT INTO messaging_message(id, created_at, modified_at, is_pinned, subject, body, pubkey,
                agent_status, author_id, board_id)
             VALUES (?1, '2026-01-03 00:00:00', '2026-01-03 00:00:00', 0, ?2, ?3, 'PK1', 'none', 2, 1)",
            rusqlite::params![
                format!("{i:032x}"),
                format!("post {i}"),
                format!("body of post {i}: {}", "lorem ipsum ".repeat(20))
            ],
        )
        .unwrap();
    }
    drop(c);
    for h in ["3f2a9c", "b7e410"] {
        write(
            &root.join(format!("data/bitsync_chunks/{h}/.manifest")),
            format!("{{\"content_hash\":\"{h}\",\"chunks\":1}}"),
        );
        write(
            &root.join(format!("data/bitsync_chunks/{h}/0.chunk")),
            vec![0xa5u8; 70_000],
        );
    }
    write(
        &root.join("data/user_data/alice/identities.dat"),
        b"gAAAAA-fernet-token",
    );
    write(
        &root.join("data/user_data/alice/identity_key_manifest.json"),
        "{\"password_salt\":\"00\"}",
    );
    write(
        &root.join("media/avatars/alice.png"),
        b"\x89PNG\r\n\x1a\n....",
    );
    write(&root.join(".env"), "SECRET_KEY=not-a-real-one\n");
    // The software and its leftovers: not the BBS's state.
    write(&root.join("manage.py"), "# Django\n");
    write(&root.join("core/models.py"), "# models\n");
    write(&root.join("frontend/build/index.html"), "<html>\n");
    write(&root.join("logs/bbs.log"), "INFO started\n");
    write(&root.join("README.md"), "# Axon\n");
}

#[test]
fn an_axon_install_is_imported_cloned_and_exported_identically() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let install = tmp.path().join("axon");
    axon_install(&install);
    let a = node(tmp.path(), "a");
    let b = node(tmp.path(), "b");
    ok(&a, &["trust", "add", &card(&b), "--role", "full"]);
    let r = json(&a, &["import-bbs", s(&install), "--layout", "axon"]);
    assert_eq!(r["databases"], 1, "{r}");
    let names = ls_names(&a, &[]);
    let want: Vec<(&str, &str)> = vec![
        ("bitsync", "3f2a9c"),
        ("bitsync", "b7e410"),
        ("config", "axon/.env"),
        ("database", "axon_bbs.sqlite3"),
        ("file", "media/avatars/alice.png"),
        ("user-data", "alice"),
    ];
    assert_eq!(
        names,
        want.iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect()
    );
    assert_eq!(ls_row(&a, "user-data", "alice").unwrap()["owner"], "alice");
    // Unchanged: nothing new.
    let r = json(&a, &["import-bbs", s(&install), "--layout", "axon"]);
    assert_eq!(r["unchanged"], 6, "{r}");

    let server = serve(&a);
    ok(&b, &["clone", &server.addr]);
    drop(server);
    // The layout from config.toml on the clone.
    let cfg = b.join("config.toml");
    let mut text = fs::read_to_string(&cfg)?;
    text.push_str("\nlayout = \"axon\"\n");
    fs::write(&cfg, text)?;
    let out_b = tmp.path().join("export-b");
    ok(&b, &["export-bbs", s(&out_b)]);
    // The layout from the environment on the source.
    let out_a = tmp.path().join("export-a");
    let o = bbsync(&a)
        .env("BBSYNC_LAYOUT", "axon")
        .args(["export-bbs", s(&out_a)])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tree(&out_a, &out_b);

    // Every file of the BBS's state is back byte for byte; the software is not.
    for f in [
        "data/bitsync_chunks/3f2a9c/.manifest",
        "data/bitsync_chunks/b7e410/0.chunk",
        "data/user_data/alice/identities.dat",
        "data/user_data/alice/identity_key_manifest.json",
        "media/avatars/alice.png",
        ".env",
    ] {
        assert_eq!(fs::read(install.join(f))?, fs::read(out_b.join(f))?, "{f}");
    }
    for f in ["manage.py", "core", "frontend", "logs", "README.md"] {
        assert!(!out_b.join(f).exists(), "{f} was exported");
    }
    // The database: consistent, the same schema and rows as the BBS's.
    let exported = out_b.join("data/axon_bbs.sqlite3");
    let ok_check: String =
        open_ro(&exported).query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    assert_eq!(ok_check, "ok");
    let original = open_ro(&install.join("data/axon_bbs.sqlite3"));
    assert_eq!(all_rows(&open_ro(&exported)), all_rows(&original));
    let posts: i64 =
        open_ro(&exported).query_row("SELECT count(*) FROM messaging_message", [], |r| r.get(0))?;
    assert_eq!(posts, 200);
    Ok(())
}

#[test]
fn bad_layouts_and_uncovered_paths_are_refused_and_change_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let install = tmp.path().join("axon");
    axon_install(&install);
    let a = node(tmp.path(), "a");
    ok(&a, &["import-bbs", s(&install), "--layout", "axon"]);
    let before = snapshot(&a);

    let line = fail(&a, &["import-bbs", s(&install), "--layout", "nosuch"]);
    assert_mentions(&line, &["layout nosuch", "no such built-in layout", "axon"]);
    let bad = tmp.path().join("bad.toml");
    write(&bad, "[[rule]]\npath = \"data/*\"\nkind = \"file\"\n");
    let line = fail(&a, &["import-bbs", s(&install), "--layout", s(&bad)]);
    assert_mentions(&line, &["bad.toml", "rule 1", "name"]);
    write(
        &bad,
        "[[rule]]\npath = \"data/*\"\nkind = \"file\"\nname = \"x\"\n",
    );
    let line = fail(&a, &["import-bbs", s(&install), "--layout", s(&bad)]);
    assert_mentions(&line, &["rule 1", "wildcard {1}"]);
    // Something the layout does not know about, in the BBS's data.
    write(&install.join("data/unexpected.bin"), "?");
    let line = fail(&a, &["import-bbs", s(&install), "--layout", "axon"]);
    assert_mentions(
        &line,
        &["data/unexpected.bin", "not covered by layout axon"],
    );
    fs::remove_file(install.join("data/unexpected.bin"))?;
    // Its database damaged.
    damage(&install.join("data/axon_bbs.sqlite3"));
    let line = fail(&a, &["import-bbs", s(&install), "--layout", "axon"]);
    assert_mentions(&line, &["data/axon_bbs.sqlite3", "integrity check"]);
    assert_eq!(snapshot(&a), before);
    // A layout that exports nothing of these objects says so per object.
    let other = tmp.path().join("other.toml");
    write(
        &other,
        "[[rule]]\npath = \"db/*.sqlite3\"\nkind = \"database\"\nname = \"{1}.db\"\n",
    );
    let o = run(
        &a,
        &[
            "export-bbs",
            s(&tmp.path().join("out")),
            "--layout",
            s(&other),
        ],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("database:axon_bbs.sqlite3: no rule of layout"),
        "{}",
        o.stderr
    );
    Ok(())
}

/// The write-out of a database is atomic: an error or a crash right before
/// the rename (failpoint `sqlite.rename`) leaves no target, and the next
/// export succeeds.
#[test]
fn a_database_write_out_interrupted_before_its_rename_leaves_no_target() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("main.db");
    sample_db(&src);
    let data = node(tmp.path(), "a");
    ok(
        &data,
        &["import", s(&src), "--kind", "database", "--name", "main"],
    );
    let target = tmp.path().join("out.db");
    let o = bbsync(&data)
        .env("FAILPOINTS", "sqlite.rename=return(eio)")
        .args(["export", "database:main", s(&target)])
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert_mentions(
        &String::from_utf8_lossy(&o.stderr),
        &["out.db", "input/output error"],
    );
    let left: Vec<_> = fs::read_dir(tmp.path())?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out.db"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let o = bbsync(&data)
        .env("FAILPOINTS", "sqlite.rename=return(abort)")
        .args(["export", "database:main", s(&target)])
        .output()?;
    assert_eq!(o.status.code(), None, "killed by a signal");
    assert!(!target.exists());
    // The next export replaces the temp file the killed one left.
    ok(&data, &["export", "database:main", s(&target)]);
    assert_eq!(
        all_rows(&open_ro(&target)),
        all_rows(&Connection::open(&src)?)
    );
    assert!(!tmp.path().join(".out.db.bbsync-tmp").exists());
    Ok(())
}
