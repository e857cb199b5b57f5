//! Issue 10, item 5: a local user who can write into the BBS tree swaps a
//! path for a symlink (or another file, or a FIFO) after `import-bbs` has
//! walked the tree and before it reads the file. The swap is made exactly
//! there, through the store's failpoint `import.after_walk` (this test
//! links the store with its `failpoints` feature, in process). The import
//! must refuse with a clear error, change nothing, and never open anything
//! outside the tree (watched with inotify). A SQLite database (read through
//! a snapshot that SQLite takes, issue 17) is refused the same way.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    mem::MaybeUninit,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bbsync_store::{Store, StoreError, failpoint, progress::NoProgress};
use rustix::fs::inotify;

/// The failpoint is process-wide: one test at a time installs it.
static FAILPOINT: Mutex<()> = Mutex::new(());

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A small BBS tree (files, a board, an applet directory).
fn tree(root: &Path) {
    let _ = fs::remove_dir_all(root);
    assert_eq!(
        b"{\"id\":1,\"body\":\"hi\"}".len(),
        b"{\"s\":\"root-secret!\"}".len()
    );
    write(&root.join("config/bbs.toml"), b"name = \"swap\"\n");
    write(
        &root.join("boards/general/1.json"),
        b"{\"id\":1,\"body\":\"hi\"}",
    );
    write(&root.join("boards/general/2.json"), b"{\"id\":2}");
    write(&root.join("applets/game/main.lua"), b"print('game')\n");
    write(&root.join("applets/game/data/level.txt"), b"level 1\n");
}

/// Root-only material outside the tree, under the same names and with the
/// same sizes as the tree's files (so that a size check alone would not
/// notice the swap).
fn outside(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    write(&dir.join("1.json"), b"{\"s\":\"root-secret!\"}");
    write(&dir.join("2.json"), b"{\"s\":22}");
    write(&dir.join("level.txt"), b"secret!\n");
}

/// inotify on a directory: reports every open or read of it or its files.
struct Watch(OwnedFd);

impl Watch {
    fn new(dir: &Path) -> Watch {
        let fd =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::OPEN | inotify::WatchFlags::ACCESS,
        )
        .unwrap();
        Watch(fd)
    }

    /// Events since the last call (names of what was opened or read).
    fn events(&self) -> Vec<String> {
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut r = inotify::Reader::new(&self.0, &mut buf);
        let mut out = Vec::new();
        while let Ok(e) = r.next() {
            let name = e
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "(the directory itself)".into());
            out.push(format!("{:?} {name}", e.events()));
        }
        out
    }
}

struct Case {
    what: &'static str,
    /// The change made between the walk and the reads.
    swap: fn(tree: &Path, outside: &Path),
    /// The path the error must name, relative to the tree.
    path: &'static str,
    /// How the error must say what happened.
    says: &'static str,
}

fn symlink(target: &Path, at: &Path) {
    if at.is_dir() {
        fs::remove_dir_all(at).unwrap();
    } else {
        fs::remove_file(at).unwrap();
    }
    std::os::unix::fs::symlink(target, at).unwrap();
}

const CASES: &[Case] = &[
    Case {
        what: "a message file swapped for a symlink to a file outside",
        swap: |t, o| symlink(&o.join("1.json"), &t.join("boards/general/1.json")),
        path: "boards/general/1.json",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a board directory swapped for a symlink to a directory outside",
        swap: |t, o| symlink(o, &t.join("boards/general")),
        path: "boards/general",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a file inside an applet directory swapped for a symlink",
        swap: |t, o| symlink(&o.join("level.txt"), &t.join("applets/game/data/level.txt")),
        path: "applets/game/data/level.txt",
        says: "was replaced by a symlink",
    },
    Case {
        what: "the applet directory itself swapped for a symlink",
        swap: |t, o| symlink(o, &t.join("applets/game")),
        path: "applets/game",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a file replaced by another file of the same size (a hard link elsewhere)",
        swap: |t, _| {
            let p = t.join("boards/general/2.json");
            let other = t.join("other.tmp");
            fs::write(&other, b"{\"id\":9}").unwrap();
            fs::rename(&other, &p).unwrap();
        },
        path: "boards/general/2.json",
        says: "was replaced by another file",
    },
    Case {
        what: "a file swapped for a FIFO (opening it must not block)",
        swap: |t, _| {
            let p = t.join("config/bbs.toml");
            fs::remove_file(&p).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        },
        path: "config/bbs.toml",
        says: "was replaced by a special file",
    },
];

fn expect_refused(err: StoreError, tree: &Path, case: &Case) {
    let want_path = tree.join(case.path);
    match &err {
        StoreError::ReplacedDuringImport { path, what } => {
            assert_eq!(path, &want_path, "{}: {err}", case.what);
            assert!(what.starts_with(case.says), "{}: {err}", case.what);
        }
        other => panic!("{}: expected ReplacedDuringImport, got {other}", case.what),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{} {} after the tree was scanned; not followed and not read (the import changed nothing)",
            want_path.display(),
            match &err {
                StoreError::ReplacedDuringImport { what, .. } => what.as_str(),
                _ => unreachable!(),
            }
        )
    );
}

/// Installs `swap` at the failpoint; returns a flag set when it ran.
fn swap_at_failpoint(case: &'static Case, tree: PathBuf, out: PathBuf) -> Arc<AtomicBool> {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    // Only the import of the thread that installs it: this test binary runs
    // other tests beside this one, and the failpoint is process-wide.
    let me = std::thread::current().id();
    failpoint::on_hit("import.after_walk", move || {
        if std::thread::current().id() == me && !flag.swap(true, Ordering::SeqCst) {
            (case.swap)(&tree, &out);
        }
    })
    .unwrap();
    ran
}

/// A SQLite database at `path` in WAL mode with `rows` rows of `body`
/// (closed: no -wal left). Same rows, same size.
fn database(path: &Path, body: &str, rows: usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = fs::remove_file(path);
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("CREATE TABLE posts(id INTEGER PRIMARY KEY, body TEXT)")
        .unwrap();
    for _ in 0..rows {
        c.execute("INSERT INTO posts(body) VALUES (?1)", [body])
            .unwrap();
    }
}

/// The tree with databases: one under files/, one in a directory of its
/// own, one inside an applet directory.
fn db_tree(root: &Path) {
    tree(root);
    database(&root.join("files/bbs.sqlite3"), "public post", 50);
    database(&root.join("files/db/users.sqlite3"), "public user", 50);
    database(&root.join("applets/game/state.db"), "public state", 50);
}

/// Root-only databases outside the tree, under the same names, with the
/// same schema and size (SQLite would read any of them gladly).
fn db_outside(dir: &Path) {
    outside(dir);
    database(&dir.join("bbs.sqlite3"), "root secret", 50);
    database(&dir.join("users.sqlite3"), "root secret", 50);
    database(&dir.join("state.db"), "root secret", 50);
}

const DB_CASES: &[Case] = &[
    Case {
        what: "a database file swapped for a symlink to a database outside",
        swap: |t, o| symlink(&o.join("bbs.sqlite3"), &t.join("files/bbs.sqlite3")),
        path: "files/bbs.sqlite3",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a database's directory swapped for a symlink to a directory outside",
        swap: |t, o| symlink(o, &t.join("files/db")),
        path: "files/db",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a database inside an applet directory swapped for a symlink",
        swap: |t, o| symlink(&o.join("state.db"), &t.join("applets/game/state.db")),
        path: "applets/game/state.db",
        says: "was replaced by a symlink",
    },
    Case {
        what: "a database replaced by another database of the same size",
        swap: |t, _| {
            let other = t.join("other.tmp");
            database(&other, "swapped in", 50);
            fs::rename(&other, t.join("files/bbs.sqlite3")).unwrap();
        },
        path: "files/bbs.sqlite3",
        says: "was replaced by another file",
    },
];

#[test]
fn a_database_swapped_after_the_walk_is_refused_like_any_other_file() {
    let _one = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    let o = tmp.path().join("outside");
    for (i, case) in DB_CASES.iter().enumerate() {
        db_tree(&t);
        db_outside(&o);
        let store = Store::init(&tmp.path().join(format!("data{i}")), "victim").unwrap();
        let watch = Watch::new(&o);
        assert!(watch.events().is_empty());
        let ran = swap_at_failpoint(case, t.clone(), o.clone());
        let r = store.import_bbs(&t, &NoProgress);
        failpoint::clear("import.after_walk");
        assert!(
            ran.load(Ordering::SeqCst),
            "{}: the swap never ran",
            case.what
        );
        expect_refused(r.unwrap_err(), &t, case);
        assert_eq!(
            watch.events(),
            Vec::<String>::new(),
            "{}: something outside the tree was opened or read",
            case.what
        );
        assert_eq!(store.raw_db().object_count(), 0, "{}", case.what);
        assert_eq!(store.packs().list().unwrap().len(), 0, "{}", case.what);
        // No snapshot was left behind either.
        let left: Vec<_> = fs::read_dir(tmp.path().join(format!("data{i}/tmp")))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{}: left in tmp: {left:?}", case.what);
    }

    // A re-import after the database changed: refused, the held version
    // stays, and export gives its rows, not the database outside.
    db_tree(&t);
    db_outside(&o);
    let store = Store::init(&tmp.path().join("again"), "victim").unwrap();
    store.import_bbs(&t, &NoProgress).unwrap();
    let before = store.last_seq().unwrap();
    let c = rusqlite::Connection::open(t.join("files/bbs.sqlite3")).unwrap();
    c.execute("INSERT INTO posts(body) VALUES ('edited')", [])
        .unwrap();
    drop(c);
    let watch = Watch::new(&o);
    let ran = swap_at_failpoint(&DB_CASES[0], t.clone(), o.clone());
    let r = store.import_bbs(&t, &NoProgress);
    failpoint::clear("import.after_walk");
    assert!(ran.load(Ordering::SeqCst));
    expect_refused(r.unwrap_err(), &t, &DB_CASES[0]);
    assert!(watch.events().is_empty());
    assert_eq!(store.last_seq().unwrap(), before);
    let out = tmp.path().join("export");
    store.export_bbs(&out, &NoProgress).unwrap();
    let c = rusqlite::Connection::open(out.join("files/bbs.sqlite3")).unwrap();
    let bodies: Vec<String> = c
        .prepare("SELECT DISTINCT body FROM posts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies, ["public post"]);
}

#[test]
fn a_path_swapped_after_the_walk_is_refused_and_nothing_outside_is_read() {
    let _one = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    let o = tmp.path().join("outside");
    for (i, case) in CASES.iter().enumerate() {
        tree(&t);
        outside(&o);
        let store = Store::init(&tmp.path().join(format!("data{i}")), "victim").unwrap();
        let watch = Watch::new(&o);
        assert!(watch.events().is_empty());
        let ran = swap_at_failpoint(case, t.clone(), o.clone());
        let r = store.import_bbs(&t, &NoProgress);
        failpoint::clear("import.after_walk");
        assert!(
            ran.load(Ordering::SeqCst),
            "{}: the swap never ran",
            case.what
        );
        expect_refused(r.unwrap_err(), &t, case);
        assert_eq!(
            watch.events(),
            Vec::<String>::new(),
            "{}: something outside the tree was opened or read",
            case.what
        );
        // Nothing was stored: no object, no chunk file, nothing staged.
        assert_eq!(store.raw_db().object_count(), 0, "{}", case.what);
        assert_eq!(store.packs().list().unwrap().len(), 0, "{}", case.what);
    }

    // A re-import: the held version stays, and export gives its bytes, not
    // the file outside.
    tree(&t);
    outside(&o);
    let store = Store::init(&tmp.path().join("again"), "victim").unwrap();
    store.import_bbs(&t, &NoProgress).unwrap();
    let before = store.last_seq().unwrap();
    write(
        &t.join("boards/general/1.json"),
        b"{\"id\":1,\"body\":\"edited\"}",
    );
    let watch = Watch::new(&o);
    let ran = swap_at_failpoint(&CASES[0], t.clone(), o.clone());
    let r = store.import_bbs(&t, &NoProgress);
    failpoint::clear("import.after_walk");
    assert!(ran.load(Ordering::SeqCst));
    expect_refused(r.unwrap_err(), &t, &CASES[0]);
    assert!(watch.events().is_empty());
    assert_eq!(store.last_seq().unwrap(), before);
    let out = tmp.path().join("export");
    store.export_bbs(&out, &NoProgress).unwrap();
    assert_eq!(
        fs::read(out.join("boards/general/1.json")).unwrap(),
        b"{\"id\":1,\"body\":\"hi\"}"
    );
}
