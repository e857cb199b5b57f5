//! The crash matrix (issue 11): every failpoint of `failpoint::POINTS`, on
//! every command path that passes it, crashes a real `bbsync` process there
//! (`return(abort)`: no destructors, no flush, as `kill -9` would) and makes
//! the write there fail with `ENOSPC`. After each fault:
//!
//! * the process died at that point (its stderr says `failpoint NAME:
//!   abort`), or failed with one line `error: ... No space left on device`
//!   (or, where the failing step is best-effort, finished and logged it);
//! * the store opens and `verify --read-data` finds nothing that says
//!   complete for data not on disk (only the problems the path allows while
//!   it is unfinished: incomplete objects of a clone, unreferenced chunks of
//!   an unfinished restore or GC), no temp file and no dirty marker is left,
//!   and a backup repository holds no snapshot that does not verify;
//! * the command run again finishes, `verify --read-data` is clean and the
//!   export (of the store, or of the backup) is byte-identical to the tree.
//!
//! The table [`MATRIX`] drives everything; a row is `(point, faults)` under
//! its path. `every_failpoint_is_on_a_row` fails when a point of
//! `failpoint::POINTS` is on no row, when a row names a point that does not
//! exist, or when the code has a `failpoint::hit`/`check` call whose name is
//! not in `POINTS`. The trees are small and built in Rust, the stores are
//! made once per test binary and copied for each row, and the rows of a
//! path run on two threads.

#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use crate::common::*;
use bbsync_store::failpoint::POINTS;

/// What a row injects at its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The process aborts at the n-th hit (1 = the first).
    Abort(u32),
    /// The n-th hit fails with `ENOSPC` (once): the command fails with one
    /// `error:` line (a follower logs it and retries by itself).
    Enospc(u32),
    /// The n-th hit fails with `ENOSPC` (once) in a best-effort step: the
    /// command still succeeds and logs the failure.
    EnospcLogged(u32),
}

impl Fault {
    /// The `FAILPOINTS` value for `point`.
    fn spec(self, point: &str) -> String {
        let (n, action) = match self {
            Fault::Abort(n) => (n, "return(abort)"),
            Fault::Enospc(n) | Fault::EnospcLogged(n) => (n, "1*return(enospc)"),
        };
        match n {
            1 => format!("{point}={action}"),
            n => format!("{point}={}*off->{action}", n - 1),
        }
    }
}

use Fault::{Abort, Enospc, EnospcLogged};

/// A command path of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path_ {
    /// `init` of a new data dir.
    Init,
    /// `trust remove` of a trusted instance.
    Trust,
    /// `import-bbs` of a changed tree (new, changed, deleted and touched
    /// objects) into a store holding the first tree.
    Import,
    /// `clone` of a source that moved on, into a node that cloned it before.
    Clone,
    /// `serve --follow` catching up with a source that moved on.
    Follow,
    /// `gc` of a store with unreferenced chunk files.
    Gc,
    /// `backup` into a new repository (hard links).
    Backup,
    /// `backup --copy` into a new repository.
    BackupCopy,
    /// `restore --rekey` of the newer snapshot into the store that held the
    /// first tree (a safety snapshot first, then chunks, records, GC).
    Restore,
    /// The first command (`ls`) on a store of schema 1: its migration
    /// (records rewritten and flushed in batches, the schema number last).
    Migrate,
    /// `export` of a SQLite database object to a new file (a temp file
    /// beside it, synced and checked, then renamed).
    Export,
    /// `backup` into a new repository of format 2 (packs written whole,
    /// one sync, index file, escrow, snapshot).
    Backup2,
    /// `restore --rekey` of the newer snapshot out of a format-2
    /// repository (a safety snapshot into it first).
    Restore2,
    /// `backups migrate` of a format-1 repository holding two snapshots.
    RepoMigrate,
    /// `backups prune --keep-last 1` of a format-2 repository holding
    /// three snapshots with escrows (tree1, tree2, tree4): two snapshots
    /// and two escrows go, a data and a manifest pack of each are partly
    /// dead (repacked: two new packs) or wholly dead (deleted), both of
    /// their index files are rewritten.
    Prune2,
}

use Path_ as P;

/// A failpoint and the faults injected there.
type Row = (&'static str, &'static [Fault]);

const A1: Fault = Abort(1);
const E1: Fault = Enospc(1);

/// The crash matrix: for each path, every failpoint it passes and the
/// faults injected there. To add a point: add it to `failpoint::POINTS`,
/// then a row under each path that passes it.
const MATRIX: &[(Path_, &[Row])] = &[
    (
        P::Init,
        &[
            // config.toml first, identity.key last (the init's commit).
            ("file.rename", &[A1, Abort(2), E1, Enospc(2)]),
        ],
    ),
    (P::Trust, &[("db.remove_trust", &[A1, E1])]),
    (
        P::Import,
        &[
            ("pack.stage", &[A1, Abort(3), E1]),
            ("import.publish", &[A1, E1]),
            ("pack.sync", &[A1, E1]),
            ("pack.write", &[A1, E1]),
            ("index.commit", &[A1, E1]),
            ("import.after_walk", &[A1, E1]),
            ("import.commit", &[A1, E1]),
            ("db.commit", &[A1, E1]),
            ("db.flush", &[A1, Abort(2), Abort(3), E1, Enospc(2)]),
            ("db.update_record", &[A1, Abort(3), E1]),
            ("index.committed", &[A1]),
            ("import.gc", &[A1, EnospcLogged(1)]),
            ("gc.drop", &[A1, EnospcLogged(1)]),
        ],
    ),
    (
        P::Clone,
        &[
            ("db.put_trust", &[A1, E1]),
            ("clone.accept", &[A1, E1]),
            ("db.commit", &[A1, E1]),
            ("db.flush", &[A1, Abort(2), E1, Enospc(2)]),
            ("pack.stage", &[A1, Abort(3), E1]),
            ("fetch.publish", &[A1, E1]),
            ("pack.sync", &[A1, E1]),
            ("pack.write", &[A1, E1]),
            ("index.commit", &[A1, E1]),
            ("index.committed", &[A1]),
            ("clone.complete", &[A1, E1]),
            ("db.mark_complete", &[A1, E1]),
            ("clone.gc", &[A1, EnospcLogged(1)]),
            ("gc.drop", &[A1, EnospcLogged(1)]),
        ],
    ),
    (
        P::Follow,
        &[
            // (No db.put_trust: the follower cloned its upstream before, so
            // trusts it already; a first follow's trust is on the clone row.)
            ("follow.accept", &[A1, E1]),
            ("db.commit", &[A1, E1]),
            ("pack.stage", &[A1, E1]),
            ("fetch.publish", &[A1, E1]),
            ("pack.sync", &[A1, E1]),
            ("pack.write", &[A1, E1]),
            ("index.commit", &[A1, E1]),
            ("index.committed", &[A1]),
            ("follow.complete", &[A1, E1]),
            ("db.mark_complete", &[A1, E1]),
            ("gc.drop", &[A1, EnospcLogged(1)]),
            ("follow.cursor", &[A1, E1]),
            // The follower keeps a live tree (`--tree`) in this row.
            ("live.write", &[A1, E1]),
            ("db.set_cursor", &[A1, E1]),
            ("db.flush", &[A1, Abort(3), E1]),
        ],
    ),
    (P::Gc, &[("gc.drop", &[A1, E1])]),
    (
        P::Backup,
        &[
            ("backup.repo_config", &[A1, E1]),
            ("repo.rename", &[A1, Abort(2), E1, Enospc(2)]),
            ("backup.stage", &[A1, Abort(3), E1]),
            ("backup.manifest", &[A1, Abort(3), E1]),
            ("backup.sync", &[A1, E1]),
            ("backup.snapshot", &[A1, E1]),
        ],
    ),
    (
        P::BackupCopy,
        &[
            ("backup.stage", &[A1, Abort(3), E1]),
            ("backup.sync_chunks", &[A1, E1]),
            ("backup.publish", &[A1, Abort(3), E1]),
            ("backup.snapshot", &[A1]),
        ],
    ),
    (
        P::Restore,
        &[
            // The safety snapshot of the store as it was.
            ("backup.stage", &[A1, E1]),
            ("backup.snapshot", &[A1, E1]),
            ("repo.rename", &[A1]),
            // Chunks, then trust and records, then GC and rekey.
            ("pack.stage", &[A1, Abort(3), E1]),
            ("pack.sync", &[A1, E1]),
            ("pack.write", &[A1, E1]),
            ("index.commit", &[A1, E1]),
            ("index.committed", &[A1]),
            ("restore.commit", &[A1, E1]),
            ("db.commit", &[A1, E1]),
            ("db.flush", &[A1, E1]),
            ("gc.drop", &[A1, EnospcLogged(1)]),
            ("restore.rekey", &[A1, E1]),
        ],
    ),
    (
        P::Migrate,
        &[
            ("db.update_record", &[A1, Abort(3), E1]),
            ("db.flush", &[A1, E1]),
            ("migrate.batch", &[A1, E1]),
        ],
    ),
    (P::Export, &[("sqlite.rename", &[A1, E1])]),
    (
        P::Backup2,
        &[
            ("backup.repo_config", &[A1, E1]),
            // config, then the packs, the index file and the snapshot.
            ("repo.rename", &[A1, Abort(2), Abort(3), E1, Enospc(2)]),
            ("backup.stage", &[A1, E1]),
            ("backup.sync_chunks", &[A1, E1]),
            ("backup.manifest", &[A1, E1]),
            ("backup.sync", &[A1, E1]),
            ("backup.snapshot", &[A1, E1]),
        ],
    ),
    (
        P::Restore2,
        &[
            // The safety snapshot of the store as it was.
            ("backup.stage", &[A1, E1]),
            ("backup.manifest", &[A1, E1]),
            ("backup.snapshot", &[A1, E1]),
            // Chunks read through the index, then trust and records.
            ("pack.stage", &[A1, E1]),
            ("pack.sync", &[A1, E1]),
            ("pack.write", &[A1, E1]),
            ("restore.commit", &[A1, E1]),
            ("db.commit", &[A1, E1]),
            ("restore.rekey", &[A1, E1]),
        ],
    ),
    (
        P::RepoMigrate,
        &[
            ("repo_migrate.pack", &[A1, Abort(2), E1]),
            ("repo_migrate.sync", &[A1, E1]),
            ("repo_migrate.index", &[A1, E1]),
            ("repo_migrate.snapshot", &[A1, E1]),
            ("repo_migrate.config", &[A1, E1]),
            ("repo_migrate.cleanup", &[A1, E1]),
            ("repo.rename", &[A1, E1]),
        ],
    ),
    (
        P::Prune2,
        &[
            // New packs (a data and a manifest pack), new index files, the
            // two snapshots, a sync; then the two old index files, a sync,
            // the four repacked packs, the two old escrows. Every point a
            // prune passes more than once is also crashed at its second hit
            // (between two removals: forget and remove_key as well).
            ("prune2.repack", &[A1, Abort(2), E1]),
            ("prune2.index", &[A1, E1]),
            ("prune2.forget", &[A1, Abort(2), E1]),
            ("prune2.sync", &[A1, E1]),
            ("prune2.remove_index", &[A1, Abort(2), E1]),
            ("prune2.sync_removed", &[A1, E1]),
            ("prune2.remove_pack", &[A1, Abort(2), E1]),
            ("prune2.remove_key", &[A1, Abort(2), E1]),
        ],
    ),
];

/// Pack points whose steps no path above passes with certainty on these
/// small trees (a new pack, a pack filling up and sealed, a repack, an
/// index rebuild, the move from one file per chunk): each is crashed by
/// the table of `packs.rs` (`CASES`), whose test fails when one of them has
/// no case there.
const IN_PACKS_TEST: &[&str] = &[
    "pack.create",
    "pack.seal",
    "pack.sealed",
    "gc.repack",
    "gc.delete",
    "index.rebuild",
    "migrate.group",
    "migrate.schema",
    "migrate.cleanup",
];

// ---------------------------------------------------------------- fixture

/// Trees and stores made once per test binary; every row works on copies.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// The first tree.
    tree1: PathBuf,
    /// The second: changed, deleted, added and (all) touched objects.
    tree2: PathBuf,
    /// Instance A holding tree1.
    a1: PathBuf,
    /// Instance A holding tree2 (A1 + import of tree2).
    a2: PathBuf,
    /// Instance B (trusted `full` by A): a clone of A1.
    b1: PathBuf,
    /// B's instance id.
    beta: String,
    /// A2 plus chunk files no manifest references (A1's old chunks).
    garbage: PathBuf,
    /// A backup repository (copies) holding a snapshot of A2.
    repo2: PathBuf,
    /// That snapshot's id (a restore names it: a rerun of `restore` without
    /// one would take the safety snapshot of the first run as the latest).
    snap2: String,
    /// The same backup of A2 in a format-2 repository.
    repo2v2: PathBuf,
    /// Its snapshot.
    snap2v2: String,
    /// A2 plus a SQLite database (`file:bbs.sqlite3`), imported from tree3
    /// (tree2 and the database).
    a3: PathBuf,
    /// That database as an `export` without a fault writes it (an import
    /// keeps a snapshot SQLite took, not the file's bytes).
    db_export: Vec<u8>,
    /// A2's live objects: (kind, name) -> (version, manifest id).
    versions2: BTreeMap<(String, String), (u64, String)>,
    /// Rows done, for the table printed at the end of each path.
    log: Mutex<Vec<String>>,
    /// What the prune rows work on, made by the first of them.
    prune2: OnceLock<Prune2Fixture>,
}

/// The format-2 repository of the prune rows and what it must hold after.
struct Prune2Fixture {
    /// Tree2 without `files/big.bin`, posts 25..=28 changed, 29 and 30 new.
    tree4: PathBuf,
    /// Instance A holding tree4 (A2 + import of tree4).
    a4: PathBuf,
    /// Snapshots of A1, A2 and A4, each with an escrow (format 2).
    repo: PathBuf,
    /// The snapshot of A4: the one `--keep-last 1` keeps.
    keep: String,
    /// Its escrow: the one key file left after the prune.
    key: String,
}

/// The passphrase of the prune repository's escrows.
const PRUNE2_PASSPHRASE: &str = "crash matrix passphrase";

impl Prune2Fixture {
    /// Built from copies of A1 and A2 (other paths' rows copy those while
    /// this runs: no process may open them).
    fn make(f: &Fixture) -> Prune2Fixture {
        let root = f.root.join("prune2");
        let tree4 = root.join("tree4");
        copy_dir(&f.tree2, &tree4);
        fs::remove_file(tree4.join("files/big.bin")).unwrap();
        for i in 25..=30 {
            write(
                &tree4.join(format!("boards/b{}/{i}.json", i % 3)),
                message(i, "four"),
            );
        }
        let (a1, a2, a4) = (root.join("a1"), root.join("a2"), root.join("a4"));
        copy_dir(&f.a1, &a1);
        copy_dir(&f.a2, &a2);
        copy_dir(&f.a2, &a4);
        ok(&a4, &["import-bbs", tree4.to_str().unwrap()]);
        let repo = root.join("repo");
        let r = repo.to_str().unwrap();
        let mut last = serde_json::Value::Null;
        for data in [&a1, &a2, &a4] {
            let o = bbsync(data)
                .env("BBSYNC_PASSPHRASE", PRUNE2_PASSPHRASE)
                .args(["--json", "backup", "--repo", r, "--include-identity"])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "backup of {}: {out}{}",
                data.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            last = serde_json::from_str(&out).unwrap();
        }
        let keep = last["snapshot"].as_str().unwrap().to_string();
        let key = last["identity_escrow"].as_str().unwrap().to_string();
        // An uninterrupted prune passes every point, and the points of the
        // rows at hit 2 twice.
        let reference = root.join("reference");
        copy_dir(&repo, &reference);
        let p = json(
            &a4,
            &[
                "backups",
                "prune",
                "--keep-last",
                "1",
                "--repo",
                reference.to_str().unwrap(),
            ],
        );
        let n = |k: &str| p["packs"][k].as_u64().unwrap();
        assert!(
            p["removed"].as_array().unwrap().len() == 2
                && n("packs_written") >= 2
                && n("index_written") >= 1
                && n("index_removed") >= 2
                && n("packs_deleted") + n("packs_repacked") >= 2
                && !p["packs"]["keys_removed"].as_array().unwrap().is_empty(),
            "the reference prune does not pass every point: {p}"
        );
        eprintln!(
            "Prune2 reference: {} snapshots removed, {} packs repacked into {}, {} deleted, {} index files removed and {} written, keys removed {}",
            p["removed"].as_array().unwrap().len(),
            n("packs_repacked"),
            n("packs_written"),
            n("packs_deleted"),
            n("index_removed"),
            n("index_written"),
            p["packs"]["keys_removed"]
        );
        Prune2Fixture {
            tree4,
            a4,
            repo,
            keep,
            key,
        }
    }
}

/// The fixture, shared by the tests that run at the same time and removed
/// with the last of them (a `static` would never be dropped).
fn fixture() -> Arc<Fixture> {
    static F: Mutex<Weak<Fixture>> = Mutex::new(Weak::new());
    let mut slot = F.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = slot.upgrade() {
        return f;
    }
    let f = Arc::new(Fixture::make());
    *slot = Arc::downgrade(&f);
    f
}

/// Deterministic bytes (xorshift), `len` of them.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn message(i: u64, salt: &str) -> String {
    let body = data_encoding::HEXLOWER.encode(&noise(
        i * 7919 + salt.len() as u64,
        600 + (i as usize % 5) * 700,
    ));
    format!(
        "{{\"id\":{i},\"from\":\"user{}\",\"salt\":\"{salt}\",\"body\":\"{body}\"}}\n",
        i % 7
    )
}

/// A SQLite database at `path` with the posts `ids` (rollback journal,
/// closed: no companion file left).
fn database(path: &Path, ids: std::ops::Range<u64>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE posts(id INTEGER PRIMARY KEY, body TEXT)")
        .unwrap();
    for i in ids {
        c.execute(
            "INSERT INTO posts(id, body) VALUES (?1, ?2)",
            rusqlite::params![i as i64, message(i, "db")],
        )
        .unwrap();
    }
}

/// Copies a directory tree (new inodes and times, same bytes, empty
/// directories kept).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &dest);
        } else if ft.is_file() {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The live objects of a store: (kind, name) -> (version, manifest id);
/// `None` while the store cannot be read (e.g. its node is starting).
fn versions(data: &Path) -> Option<BTreeMap<(String, String), (u64, String)>> {
    let o = run(data, &["--json", "ls"]);
    if o.code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
    let rows = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "ok")
        .map(|r| {
            (
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                ),
                (
                    r["version"].as_u64().unwrap(),
                    r["manifest_id"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    Some(rows)
}

impl Fixture {
    fn make() -> Fixture {
        let tmp = bbsync_tests::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        // Tree 1: the mini BBS, 24 posts, a file of several chunks.
        let tree1 = root.join("tree1");
        mini_bbs(&tree1);
        for i in 3..=24 {
            write(
                &tree1.join(format!("boards/b{}/{i}.json", i % 3)),
                message(i, "one"),
            );
        }
        write(&tree1.join("files/big.bin"), noise(42, 700_000));
        // Tree 2: a copy (every file touched), with changes, deletions
        // and additions.
        let tree2 = root.join("tree2");
        copy_dir(&tree1, &tree2);
        for i in 3..=6 {
            write(
                &tree2.join(format!("boards/b{}/{i}.json", i % 3)),
                message(i, "two"),
            );
        }
        for i in 7..=9 {
            fs::remove_file(tree2.join(format!("boards/b{}/{i}.json", i % 3))).unwrap();
        }
        for i in 25..=28 {
            write(
                &tree2.join(format!("boards/b{}/{i}.json", i % 3)),
                message(i, "two"),
            );
        }
        let mut big = noise(42, 700_000);
        big[300_000..400_000].copy_from_slice(&noise(43, 100_000));
        write(&tree2.join("files/big.bin"), big);
        write(
            &tree2.join("config/bbs.toml"),
            "name = \"Mini BBS, second edition\"\nsysop = \"root\"\n",
        );
        write(
            &tree2.join("applets/lord/main.lua"),
            "print('Legend of the Red Dragon, v2')\n",
        );

        let a1 = root.join("a1");
        let b1 = root.join("b1");
        init(&a1, "alpha");
        let beta = init(&b1, "beta")["instance_id"]
            .as_str()
            .unwrap()
            .to_string();
        ok(&a1, &["trust", "add", "--role", "full", &card(&b1)]);
        ok(&a1, &["import-bbs", tree1.to_str().unwrap()]);
        {
            let server = serve(&a1);
            ok(&b1, &["clone", &server.addr]);
            assert!(server.stop().success());
        }
        let a2 = root.join("a2");
        copy_dir(&a1, &a2);
        ok(&a2, &["import-bbs", tree2.to_str().unwrap()]);
        let versions2 = versions(&a2).unwrap();
        // Garbage: A1's chunks that A2 no longer references.
        let garbage = root.join("garbage");
        copy_dir(&a2, &garbage);
        let have = real_chunks(&a2).into_iter().collect::<BTreeSet<_>>();
        let mut orphans = 0;
        let lacking: Vec<PathBuf> = real_chunks(&a1)
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        {
            // A1's chunks that A2 lacks, written into the garbage store's
            // packs and index with nothing referencing them.
            let from = bbsync_store::Store::open(&a1).unwrap();
            let to = bbsync_store::Store::open(&garbage).unwrap();
            for c in lacking {
                let name = c.file_name().unwrap().to_str().unwrap();
                let id: bbsync_protocol::ChunkId = name.parse().unwrap();
                to.packs()
                    .put(id, &from.packs().read(&id).unwrap())
                    .unwrap();
                orphans += 1;
            }
        }
        wait_unlocked(&garbage);
        wait_unlocked(&a1);
        assert!(orphans >= 5, "only {orphans} unreferenced chunks");
        let repo2 = root.join("repo2");
        let snap2 = json(
            &a2,
            &[
                "backup",
                "--repo-format",
                "1",
                "--copy",
                "--repo",
                repo2.to_str().unwrap(),
            ],
        )["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        let repo2v2 = root.join("repo2v2");
        let snap2v2 = json(&a2, &["backup", "--repo", repo2v2.to_str().unwrap()])["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        // A3: a SQLite database besides (imported through a snapshot,
        // written out through a checked temp file).
        let tree3 = root.join("tree3");
        copy_dir(&tree2, &tree3);
        database(&tree3.join("files/bbs.sqlite3"), 0..60);
        let a3 = root.join("a3");
        copy_dir(&a2, &a3);
        ok(&a3, &["import-bbs", tree3.to_str().unwrap()]);
        let out = root.join("bbs.sqlite3");
        ok(&a3, &["export", "file:bbs.sqlite3", out.to_str().unwrap()]);
        let db_export = fs::read(&out).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            tree1,
            tree2,
            a1,
            a2,
            b1,
            beta,
            garbage,
            repo2,
            snap2,
            repo2v2,
            snap2v2,
            a3,
            db_export,
            versions2,
            log: Mutex::new(Vec::new()),
            prune2: OnceLock::new(),
        }
    }
}

// ---------------------------------------------------------------- processes

/// `bbsync --no-progress --data-dir DATA ARGS` with `FAILPOINTS` set (or
/// unset), waited for.
fn run_fp(data: &Path, args: &[&str], failpoints: Option<&str>) -> Out {
    let mut c = bbsync(data);
    if let Some(spec) = failpoints {
        c.env("FAILPOINTS", spec);
    }
    let o = c.args(args).output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A `serve --follow` process whose stderr goes to a file.
struct Follower {
    child: Child,
    log: PathBuf,
}

impl Follower {
    fn start(
        data: &Path,
        upstream: &str,
        tree: Option<&Path>,
        failpoints: Option<&str>,
        log: PathBuf,
    ) -> Follower {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bbsync"));
        c.arg("--no-progress").arg("--data-dir").arg(data).args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--follow",
            upstream,
        ]);
        if let Some(t) = tree {
            c.arg("--tree").arg(t);
        }
        c.env_remove("BBSYNC_DATA")
            .env_remove("BBSYNC_LOG")
            .env_remove("RUST_LOG")
            .env_remove("FAILPOINTS")
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap());
        if let Some(spec) = failpoints {
            c.env("FAILPOINTS", spec);
        }
        let mut child = c.spawn().unwrap();
        // Its first address means it serves (the control socket is up), or
        // nothing at all means it died first; no other process may open the
        // store before that.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        Follower { child, log }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it with SIGTERM and waits.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- checks

/// The problems `verify --read-data` may report after a fault on `path`,
/// before the command ran again.
fn allowed_while_unfinished(path: Path_) -> &'static [&'static str] {
    match path {
        // Manifests are recorded before their chunks arrive.
        P::Clone | P::Follow => &["incomplete-object"],
        // Chunks are published before the records that reference them;
        // a GC removes unreferenced chunks one by one.
        P::Restore | P::Restore2 | P::Gc => &["orphan-chunk"],
        // An import is atomic per object and collects its leftovers at the
        // next open; a backup, a migration (finished by any open) and an
        // export do not leave the store unfinished.
        P::Init
        | P::Trust
        | P::Import
        | P::Backup
        | P::BackupCopy
        | P::Migrate
        | P::Export
        | P::Backup2
        | P::RepoMigrate
        | P::Prune2 => &[],
    }
}

/// Checks what a store looks like right after a fault: it opens, nothing
/// says complete for data not on disk, no temp file or marker is left.
fn check_store_after_fault(data: &Path, path: Path_, what: &str) {
    wait_unlocked(data);
    let (_, report) = verify(data, &["--read-data"]);
    let allowed = allowed_while_unfinished(path);
    let classes = problem_classes(&report);
    assert!(
        classes.iter().all(|c| allowed.contains(&c.as_str())),
        "{what}: after the fault: {report}"
    );
    assert!(
        chunk_temp_files(data).is_empty(),
        "{what}: temp files or the dirty marker left: {:?}",
        chunk_temp_files(data)
    );
}

/// Checks a repository right after a fault: every snapshot in it verifies
/// with its data (none is written before its data is durable); chunks and
/// manifests that no snapshot references yet are what an unfinished backup
/// leaves (the rerun uses them, `backups prune` would remove them).
fn check_repo_after_fault(data: &Path, repo: &Path, what: &str) {
    if repo.join("config").exists() {
        // Format 2: packs no index file names yet are what an unfinished
        // backup leaves.
        let r = repo.to_str().unwrap();
        let o = run(
            data,
            &["--json", "backups", "verify", "--repo", r, "--read-data"],
        );
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: backups verify --json ({e}): {}{}",
                o.stdout, o.stderr
            )
        });
        assert!(
            problem_classes(&v).iter().all(|c| c == "unindexed-pack"),
            "{what}: repository after the fault: {v}"
        );
        return;
    }
    if !repo.join("repo.json").exists() {
        return;
    }
    let r = repo.to_str().unwrap();
    let o = run(
        data,
        &["--json", "backups", "verify", "--repo", r, "--read-data"],
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: backups verify --json ({e}): {}{}",
            o.stdout, o.stderr
        )
    });
    assert!(
        problem_classes(&v)
            .iter()
            .all(|c| c == "orphan-chunk" || c == "orphan-manifest"),
        "{what}: repository after the fault: {v}"
    );
}

/// The final state: `verify --read-data` clean and the store exports `tree`.
fn check_store_final(data: &Path, tree: &Path, work: &Path, what: &str) {
    let (code, report) = verify(data, &["--read-data"]);
    assert_eq!(code, 0, "{what}: verify after the rerun: {report}");
    let out = work.join("export");
    let _ = fs::remove_dir_all(&out);
    ok(data, &["export-bbs", out.to_str().unwrap()]);
    assert_same_tree(tree, &out);
}

/// The final state of a backup: the repository verifies with its data and
/// its latest snapshot restores (as a plain tree) to `tree`.
fn check_backup_final(data: &Path, repo: &Path, tree: &Path, work: &Path, what: &str) {
    let r = repo.to_str().unwrap();
    let o = run(data, &["backups", "verify", "--repo", r, "--read-data"]);
    assert_eq!(
        o.code, 0,
        "{what}: repository after the rerun:\n{}{}",
        o.stdout, o.stderr
    );
    let out = work.join("restored-tree");
    ok(
        data,
        &["restore", "--repo", r, "--to-tree", out.to_str().unwrap()],
    );
    assert_same_tree(tree, &out);
}

/// Checks how a one-shot command ended under `fault` at `point`.
fn check_fault_outcome(o: &Out, point: &str, fault: Fault, what: &str) {
    match fault {
        Abort(_) => {
            assert_eq!(
                o.code, -1,
                "{what}: expected death by abort, got exit {}\nstdout: {}\nstderr: {}",
                o.code, o.stdout, o.stderr
            );
            assert!(
                o.stderr.contains(&format!("failpoint {point}: abort")),
                "{what}: stderr does not show the failpoint: {}",
                o.stderr
            );
        }
        Enospc(_) => {
            let line = assert_one_line_error(o, what);
            assert_mentions(&line, &["no space left on device"]);
        }
        EnospcLogged(_) => {
            assert_eq!(o.code, 0, "{what}: expected success\nstderr: {}", o.stderr);
            assert!(
                o.stderr.to_lowercase().contains("no space left on device"),
                "{what}: the failure is not logged: {}",
                o.stderr
            );
        }
    }
}

// ---------------------------------------------------------------- paths

/// Runs one row of a one-shot command path in its own directory.
fn run_row(
    f: &Fixture,
    path: Path_,
    point: &'static str,
    fault: Fault,
    work: &Path,
    upstream: Option<&str>,
) -> String {
    let spec = fault.spec(point);
    let what = format!("{path:?} / {spec}");
    fs::create_dir_all(work).unwrap();
    match path {
        P::Init => {
            let data = work.join("new");
            let o = run_fp(&data, &["init", "--name", "fresh"], Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            let o = run(&data, &["init", "--name", "fresh"]);
            assert_eq!(o.code, 0, "{what}: init again: {}", o.stderr);
            let (code, report) = verify(&data, &["--read-data"]);
            assert_eq!(code, 0, "{what}: {report}");
            assert!(
                !data.join(".identity.key.tmp").exists() && data.join("config.toml").is_file(),
                "{what}: leftovers after init"
            );
        }
        P::Trust => {
            let data = work.join("data");
            copy_dir(&f.a1, &data);
            let args = ["trust", "remove", f.beta.as_str()];
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            check_store_after_fault(&data, path, &what);
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            assert_eq!(
                json(&data, &["trust", "list"]),
                serde_json::json!([]),
                "{what}"
            );
            check_store_final(&data, &f.tree1, work, &what);
        }
        P::Import | P::Gc | P::Clone => {
            let (template, args, tree): (&Path, Vec<String>, &Path) = match path {
                P::Import => (
                    &f.a1,
                    vec!["import-bbs".into(), f.tree2.display().to_string()],
                    &f.tree2,
                ),
                P::Gc => (&f.garbage, vec!["gc".into()], &f.tree2),
                _ => (
                    &f.b1,
                    vec!["clone".into(), upstream.unwrap().to_string()],
                    &f.tree2,
                ),
            };
            let data = work.join("data");
            copy_dir(template, &data);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            check_store_after_fault(&data, path, &what);
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            check_store_final(&data, tree, work, &what);
        }
        P::Backup | P::BackupCopy => {
            let data = work.join("data");
            copy_dir(&f.a2, &data);
            let repo = work.join("repo");
            let mut args = vec![
                "backup",
                "--repo-format",
                "1",
                "--repo",
                repo.to_str().unwrap(),
            ];
            if path == P::BackupCopy {
                args.push("--copy");
            }
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            check_repo_after_fault(&data, &repo, &what);
            let snaps = fs::read_dir(repo.join("snapshots"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(snaps, 0, "{what}: a failed backup left a snapshot");
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            check_backup_final(&data, &repo, &f.tree2, work, &what);
        }
        P::Backup2 => {
            let data = work.join("data");
            copy_dir(&f.a2, &data);
            let repo = work.join("repo");
            let args = ["backup", "--repo", repo.to_str().unwrap()];
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            check_repo_after_fault(&data, &repo, &what);
            let snaps = fs::read_dir(repo.join("snapshots"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(snaps, 0, "{what}: a failed backup left a snapshot");
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            check_backup_final(&data, &repo, &f.tree2, work, &what);
        }
        P::RepoMigrate => {
            let data = work.join("data");
            copy_dir(&f.a2, &data);
            let repo = work.join("repo");
            copy_dir(&f.repo2, &repo);
            let r = repo.to_str().unwrap();
            let listed = ok(&data, &["--json", "backups", "list", "--repo", r]);
            let args = ["backups", "migrate", "--repo", r];
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            if repo.join("repo.json").exists() && repo.join("config").exists() {
                // Switched, format-1 files not all gone: every command
                // but migrate refuses and says to finish it.
                let o = run(&data, &["backups", "list", "--repo", r]);
                assert!(
                    o.code == 1 && o.stderr.contains("run `bbsync backups migrate"),
                    "{what}: {}",
                    o.stderr
                );
            } else {
                // Not switched: still format 1, its snapshots as they were.
                assert!(repo.join("repo.json").exists(), "{what}");
                let now = ok(&data, &["--json", "backups", "list", "--repo", r]);
                assert_eq!(now, listed, "{what}: the snapshots changed");
            }
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            assert!(
                !repo.join("repo.json").exists() && repo.join("config").exists(),
                "{what}: not format 2 after the rerun"
            );
            assert_eq!(
                ok(&data, &["--json", "backups", "list", "--repo", r]),
                listed,
                "{what}: the snapshots changed"
            );
            check_backup_final(&data, &repo, &f.tree2, work, &what);
        }
        P::Restore | P::Restore2 => {
            let data = work.join("data");
            copy_dir(&f.a1, &data);
            let repo = work.join("repo");
            copy_dir(
                if path == P::Restore2 {
                    &f.repo2v2
                } else {
                    &f.repo2
                },
                &repo,
            );
            let args = [
                "restore",
                "--rekey",
                "--repo",
                repo.to_str().unwrap(),
                if path == P::Restore2 {
                    &f.snap2v2
                } else {
                    &f.snap2
                },
            ];
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            check_store_after_fault(&data, path, &what);
            check_repo_after_fault(&data, &repo, &what);
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            check_store_final(&data, &f.tree2, work, &what);
        }
        P::Migrate => {
            let data = work.join("data");
            copy_dir(&f.a2, &data);
            bbsync_store::Store::open(&data)
                .unwrap()
                .dangerously_set_schema_version(1)
                .unwrap();
            wait_released(&data);
            let o = run_fp(&data, &["ls"], Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            // Any command finishes the migration (the rerun).
            let o = run(&data, &["ls"]);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            let st = json(&data, &["status"]);
            assert_eq!(
                st["schema_version"],
                bbsync_store::SCHEMA_VERSION,
                "{what}: {st}"
            );
            check_store_final(&data, &f.tree2, work, &what);
        }
        P::Export => {
            let data = work.join("data");
            copy_dir(&f.a3, &data);
            let out = work.join("out/bbs.sqlite3");
            fs::create_dir_all(out.parent().unwrap()).unwrap();
            let args = ["export", "file:bbs.sqlite3", out.to_str().unwrap()];
            let o = run_fp(&data, &args, Some(&spec));
            check_fault_outcome(&o, point, fault, &what);
            // Never a half-written database under the target's name; after
            // an error, no temp file either.
            assert!(!out.exists(), "{what}: the target exists after the fault");
            let tmp = work.join("out/.bbs.sqlite3.bbsync-tmp");
            if matches!(fault, Enospc(_)) {
                assert!(!tmp.exists(), "{what}: the temp file was left");
            }
            check_store_after_fault(&data, path, &what);
            let o = run(&data, &args);
            assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
            assert!(
                fs::read(&out).unwrap() == f.db_export,
                "{what}: the database differs from an export without a fault"
            );
            assert!(!tmp.exists(), "{what}: the temp file was left");
            let (code, report) = verify(&data, &["--read-data"]);
            assert_eq!(code, 0, "{what}: verify after the rerun: {report}");
        }
        P::Prune2 => run_prune2_row(f, point, fault, work, &what),
        P::Follow => run_follow_row(f, point, fault, work, upstream.unwrap(), &what),
    }
    format!("{path:?} | {point} | {} | ok", fault_label(path, fault))
}

/// How a fault and its expected outcome read in the printed table.
fn fault_label(path: Path_, f: Fault) -> String {
    let (n, what) = match f {
        Abort(n) => (n, "abort, rerun completes"),
        Enospc(n) if path == P::Follow => (n, "ENOSPC, logged, follower retries and catches up"),
        Enospc(n) => (n, "ENOSPC, one-line error, rerun completes"),
        EnospcLogged(n) => (n, "ENOSPC, logged, command succeeds"),
    };
    match n {
        1 => what.to_string(),
        n => format!("{what} (at hit {n})"),
    }
}

/// `backups prune --keep-last 1` with the fault. After it: the repository
/// verifies with its data (packs no index file names are allowed: new ones
/// not indexed yet, or old ones whose index file is gone), the snapshot
/// prune keeps restores, and prune run again finishes: that snapshot and
/// its escrow are all that is left, verify is clean, it still restores.
fn run_prune2_row(f: &Fixture, point: &str, fault: Fault, work: &Path, what: &str) {
    let p = f.prune2.get_or_init(|| Prune2Fixture::make(f));
    let data = work.join("data");
    copy_dir(&p.a4, &data);
    let repo = work.join("repo");
    copy_dir(&p.repo, &repo);
    let r = repo.to_str().unwrap();
    let args = ["backups", "prune", "--keep-last", "1", "--repo", r];
    let o = run_fp(&data, &args, Some(&fault.spec(point)));
    check_fault_outcome(&o, point, fault, what);
    check_repo_after_fault(&data, &repo, what);
    let out = work.join("kept-tree");
    ok(
        &data,
        &[
            "restore",
            "--repo",
            r,
            "--to-tree",
            out.to_str().unwrap(),
            &p.keep,
        ],
    );
    assert_same_tree(&p.tree4, &out);
    let o = run(&data, &args);
    assert_eq!(o.code, 0, "{what}: the rerun failed: {}", o.stderr);
    let ids: Vec<String> = json(&data, &["backups", "list", "--repo", r])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [p.keep.as_str()], "{what}: snapshots after the rerun");
    let keys: Vec<String> = fs::read_dir(repo.join("keys"))
        .unwrap()
        .map(|e| format!("keys/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(keys, [p.key.as_str()], "{what}: key files after the rerun");
    check_backup_final(&data, &repo, &p.tree4, work, what);
}

/// A follower started with the fault: it aborts there (and is restarted
/// without it), or logs the injected error and retries by itself; either
/// way it catches up with the upstream.
fn run_follow_row(f: &Fixture, point: &str, fault: Fault, work: &Path, upstream: &str, what: &str) {
    let data = work.join("data");
    copy_dir(&f.b1, &data);
    let spec = fault.spec(point);
    // The live tree's writer is on the path only with a tree.
    let tree = (point == "live.write").then(|| work.join("tree"));
    let first = Follower::start(
        &data,
        upstream,
        tree.as_deref(),
        Some(&spec),
        work.join("follower-1.log"),
    );
    let follower = match fault {
        Abort(_) => {
            let mut first = first;
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(st) = first.child.try_wait().unwrap() {
                    break st;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: the follower never reached the failpoint\n{}",
                    first.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(status.code(), None, "{what}: expected death by abort");
            let err = first.stderr();
            assert!(
                err.contains(&format!("failpoint {point}: abort")),
                "{what}: stderr does not show the failpoint: {err}"
            );
            drop(first);
            check_store_after_fault(&data, P::Follow, what);
            Follower::start(
                &data,
                upstream,
                tree.as_deref(),
                None,
                work.join("follower-2.log"),
            )
        }
        Enospc(_) | EnospcLogged(_) => first,
    };
    // Caught up: the same objects as the upstream, the cursor at its last
    // change; and an injected error was logged on the way.
    let logged = |f: &Follower| {
        f.stderr()
            .to_lowercase()
            .contains("no space left on device")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = versions(&data).as_ref() == Some(&f.versions2)
            && run(&data, &["--json", "status"])
                .stdout
                .parse::<serde_json::Value>()
                .is_ok_and(|v| {
                    let up = &v["upstreams"][0];
                    up["lag_changes"] == 0
                        && up["cursor"] == up["upstream_seq"]
                        && up["cursor"].as_u64() > Some(0)
                });
        if caught_up && (matches!(fault, Abort(_)) || logged(&follower)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the follower did not catch up (or logged no injected error)\n{}",
            follower.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    follower.stop();
    wait_unlocked(&data);
    check_store_final(&data, &f.tree2, work, what);
    if let Some(t) = &tree {
        // The tree holds the upstream's files, and no temp file.
        assert!(
            fs::read_dir(t.join(".bbsync/tmp"))
                .unwrap()
                .next()
                .is_none(),
            "{what}: a temp file was left in the live tree"
        );
        let files = |root: &Path| -> BTreeMap<String, Vec<u8>> {
            read_tree(root)
                .into_iter()
                .filter(|(k, _)| !k.starts_with(".bbsync"))
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect()
        };
        assert!(
            files(t) == files(&f.tree2),
            "{what}: the live tree differs from the upstream's tree"
        );
    }
}

/// Runs every row of `path` (two at a time), each in its own directory,
/// and prints the path's part of the matrix.
fn run_path(path: Path_) {
    let f = fixture();
    let rows: Vec<(&'static str, Fault)> = MATRIX
        .iter()
        .filter(|(p, _)| *p == path)
        .flat_map(|(_, rows)| rows.iter())
        .flat_map(|(point, faults)| faults.iter().map(move |fault| (*point, *fault)))
        .collect();
    assert!(!rows.is_empty(), "no rows for {path:?}");
    // A source for the network paths: A2, served for the whole path.
    let server = matches!(path, P::Clone | P::Follow).then(|| {
        let data = f.root.join(format!("served-{path:?}"));
        copy_dir(&f.a2, &data);
        serve(&data)
    });
    let upstream = server.as_ref().map(|s| s.addr.clone());
    let base = f.root.join(format!("rows-{path:?}"));
    let queue = Mutex::new(rows.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some((i, (point, fault))) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let work = base.join(i.to_string());
                    let line = run_row(&f, path, point, fault, &work, upstream.as_deref());
                    let _ = fs::remove_dir_all(&work);
                    results.lock().unwrap().push((i, line));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort();
    let mut log = f.log.lock().unwrap();
    for (_, line) in results {
        eprintln!("{line}");
        log.push(line);
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn init_crashes_and_errors_resume() {
    run_path(P::Init);
}

#[test]
fn trust_crashes_and_errors_resume() {
    run_path(P::Trust);
}

#[test]
fn import_crashes_and_errors_resume() {
    run_path(P::Import);
}

#[test]
fn clone_crashes_and_errors_resume() {
    run_path(P::Clone);
}

#[test]
fn follow_crashes_and_errors_resume() {
    run_path(P::Follow);
}

#[test]
fn gc_crashes_and_errors_resume() {
    run_path(P::Gc);
}

#[test]
fn backup_crashes_and_errors_resume() {
    run_path(P::Backup);
    run_path(P::BackupCopy);
}

#[test]
fn restore_crashes_and_errors_resume() {
    run_path(P::Restore);
}

#[test]
fn backup_format_2_crashes_and_errors_resume() {
    run_path(P::Backup2);
}

#[test]
fn restore_format_2_crashes_and_errors_resume() {
    run_path(P::Restore2);
}

#[test]
fn repository_migration_crashes_and_errors_resume() {
    run_path(P::RepoMigrate);
}

#[test]
fn prune_format_2_crashes_and_errors_resume() {
    run_path(P::Prune2);
}

#[test]
fn migration_crashes_and_errors_resume() {
    run_path(P::Migrate);
}

#[test]
fn export_crashes_and_errors_resume() {
    run_path(P::Export);
}

/// Every point of `failpoint::POINTS` is on a row, every row names a
/// point, and every `failpoint::hit`/`check` call in the store and node
/// sources names a point of `POINTS`.
#[test]
fn every_failpoint_is_on_a_row() {
    let listed: BTreeSet<&str> = POINTS.iter().map(|(n, _)| *n).collect();
    assert_eq!(listed.len(), POINTS.len(), "a point is listed twice");
    let on_rows: BTreeSet<&str> = MATRIX
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(p, _)| *p))
        .chain(IN_PACKS_TEST.iter().copied())
        .collect();
    let missing: Vec<_> = listed.difference(&on_rows).collect();
    assert!(
        missing.is_empty(),
        "failpoints on no row of the crash matrix: {missing:?}"
    );
    let unknown: Vec<_> = on_rows.difference(&listed).collect();
    assert!(
        unknown.is_empty(),
        "rows name unknown failpoints: {unknown:?}"
    );
    for (_, rows) in MATRIX {
        for (point, faults) in rows.iter() {
            assert!(!faults.is_empty(), "{point}: a row without faults");
        }
    }
    // The code's calls.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut in_code = BTreeSet::new();
    for dir in ["store/src", "node/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = fs::read_to_string(&file).unwrap();
            for pat in ["failpoint::hit(\"", "failpoint::check(\"", "failpoint(\""] {
                for (at, _) in text.match_indices(pat) {
                    let rest = &text[at + pat.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    in_code.insert(name.to_string());
                }
            }
        }
    }
    let in_code: BTreeSet<&str> = in_code.iter().map(String::as_str).collect();
    let unlisted: Vec<_> = in_code.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "failpoints in the code but not in POINTS: {unlisted:?}"
    );
    let unused: Vec<_> = listed.difference(&in_code).collect();
    assert!(
        unused.is_empty(),
        "POINTS lists points the code does not have: {unused:?}"
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}
