//! Format-2 forget, prune and locking (issue 13), through the library on a
//! local directory: what prune deletes, repacks and keeps, that every
//! remaining snapshot reads back byte-identically after it, a crash at
//! every `prune2.*` failpoint (in-process, with the `failpoints` feature),
//! the lock's refusal and wait, stale and lost locks, and backups and
//! prunes running at the same time on one repository.

#![allow(clippy::unwrap_used)]

#[path = "integration/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bbsync_protocol::{Manifest, Unverified};
use bbsync_store::{
    Store,
    backup::{
        Backend, LocalDir,
        create::BackupOptions,
        retention::Policy,
        v2::{
            Repo2,
            format::ConfigFile,
            lock::{LockOptions, LockRecord, hostname, process_stamp},
            prune::PruneOptions,
        },
    },
    progress::NoProgress,
};
use common::{files, noise, write};
use sha2::{Digest, Sha256};

type R = Result<(), Box<dyn std::error::Error>>;

/// Everything in the repository: path -> SHA-256 of the bytes.
fn state(repo: &Path) -> BTreeMap<String, [u8; 32]> {
    files(repo, ".")
        .into_iter()
        .filter(|p| !p.starts_with("./locks") && !p.starts_with("locks"))
        .map(|p| {
            let h = Sha256::digest(fs::read(repo.join(&p)).unwrap()).into();
            (p, h)
        })
        .collect()
}

/// What a restore of `snapshot` gets, through the index: every object's
/// manifest file and every chunk, hashed in order (each checked against
/// its id on the way by `read_manifest` / `read_chunk`).
fn digest(repo: &Repo2, snapshot: &str) -> Result<[u8; 32], Box<dyn std::error::Error>> {
    let s = repo.load_snapshot(snapshot)?;
    let ix = repo.load_index()?;
    let mut h = Sha256::new();
    for o in &s.objects {
        let f = repo.read_manifest(&ix, &o.manifest_id)?;
        h.update(f.encode());
        let m = Unverified::<Manifest>::decode(&f.manifest)?.dangerously_assume_verified();
        for c in &m.chunks {
            let bytes = repo.read_chunk(&ix, &c.id)?;
            assert_eq!(bytes.len(), c.len as usize);
            h.update(&bytes);
        }
    }
    Ok(h.finalize().into())
}

/// `verify --read-data`: the problem classes found.
fn problems(repo: &Repo2) -> Vec<String> {
    let v = repo.verify(true, &NoProgress).unwrap();
    v.problems
        .iter()
        .map(|p| format!("{} {} {}", p.class, p.path, p.detail))
        .collect()
}

/// A repository with a small pack target, so that a small tree fills many
/// packs (and prune has packs to delete, repack and keep).
fn small_repo(dir: &Path, pack_target: u64) -> Repo2 {
    let backend = Arc::new(LocalDir::new(dir));
    let repo = Repo2::create(backend.clone()).unwrap();
    let mut c: ConfigFile = repo.config.clone();
    c.pack_target = pack_target;
    backend.write("config", &c.encode()).unwrap();
    Repo2::open(backend).unwrap()
}

fn post(tree: &Path, n: u32, body_seed: u64) {
    let body = hex::encode(noise(body_seed, 1500));
    write(
        tree,
        &format!("boards/general/{n}.json"),
        format!("{{\"id\":{n},\"body\":\"{body}\"}}").as_bytes(),
    );
}

fn unpost(tree: &Path, n: u32) {
    fs::remove_file(tree.join(format!("boards/general/{n}.json"))).unwrap();
}

/// Four snapshots of a changing tree: s1 (posts 1..=40), s2 (posts
/// 100..=109 added: packs of their own), s3 (those gone again, 11..=20
/// gone, 21..=40 changed, 41..=50 added), s4 (51..=55 added). Returns the
/// ids and each snapshot's digest.
fn four_snapshots(
    store: &Store,
    tree: &Path,
    repo: &Repo2,
) -> (Vec<String>, BTreeMap<String, [u8; 32]>) {
    write(tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
    let opts = BackupOptions::default();
    let mut ids = Vec::new();
    let backup = |ids: &mut Vec<String>| {
        store.import_bbs(tree, &NoProgress).unwrap();
        ids.push(store.backup_v2(repo, &opts, &NoProgress).unwrap().snapshot);
    };
    for n in 1..=40 {
        post(tree, n, u64::from(n));
    }
    backup(&mut ids);
    for n in 100..=109 {
        post(tree, n, u64::from(n));
    }
    backup(&mut ids);
    for n in (11..=20).chain(100..=109) {
        unpost(tree, n);
    }
    for n in 21..=40 {
        post(tree, n, 1000 + u64::from(n));
    }
    for n in 41..=50 {
        post(tree, n, u64::from(n));
    }
    backup(&mut ids);
    for n in 51..=55 {
        post(tree, n, u64::from(n));
    }
    backup(&mut ids);
    let digests = ids
        .iter()
        .map(|id| (id.clone(), digest(repo, id).unwrap()))
        .collect();
    (ids, digests)
}

#[test]
fn forget_and_prune_delete_repack_and_keep() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let dir = tmp.path().join("repo");
    let store = Store::init(&tmp.path().join("data"), "alpha")?;
    let repo = small_repo(&dir, 64 * 1024);
    let (ids, digests) = four_snapshots(&store, &tree, &repo);
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));

    // Unknown snapshots are refused, by name, and nothing changes.
    let before = state(&dir);
    let e = repo.forget(&["nope".into()]).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "no snapshot nope in {}; nothing was forgotten",
            dir.display()
        )
    );
    let e = repo
        .prune(&PruneOptions {
            forget: vec!["nope".into()],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("no snapshot nope in {}; nothing was pruned", dir.display())
    );
    let e = repo
        .prune(&PruneOptions {
            max_unused_percent: 101,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--max-unused 101 is not a percentage (0..=100); nothing was pruned"
    );
    assert_eq!(state(&dir), before);

    // Nothing forgotten: nothing to do (every pack fully live).
    let r = repo.prune(&PruneOptions::default())?;
    assert_eq!(
        (
            r.packs_deleted,
            r.packs_repacked,
            r.index_written,
            r.index_removed
        ),
        (0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(state(&dir), before);

    // Forget s1 and s2: the snapshot files go, their data stays until
    // prune.
    let data_before = files(&dir, "data");
    let f = repo.forget(&ids[..2])?;
    assert_eq!(f.removed, ids[..2].to_vec());
    assert_eq!(repo.snapshot_ids()?, ids[2..].to_vec());
    assert_eq!(files(&dir, "data"), data_before);

    // A dry run lists what it would do and changes nothing.
    let before = state(&dir);
    let dry = repo.prune(&PruneOptions {
        dry_run: true,
        max_unused_percent: 0,
        ..Default::default()
    })?;
    assert_eq!(state(&dir), before, "a dry run changed the repository");
    assert!(dry.dry_run);
    assert!(dry.packs_deleted > 0 && dry.packs_repacked > 0, "{dry:?}");
    let listed = |a: &str| dry.actions.iter().filter(|x| x.action == a).count() as u64;
    assert_eq!(
        listed("delete-pack"),
        dry.packs_deleted + dry.packs_repacked
    );
    assert_eq!(listed("repack"), dry.packs_repacked);
    assert_eq!(listed("remove-index"), dry.index_removed);

    // The real run: the same plan; every remaining snapshot reads back
    // byte-identically and verifies clean.
    let r = repo.prune(&PruneOptions {
        max_unused_percent: 0,
        ..Default::default()
    })?;
    assert_eq!(
        (
            r.packs_deleted,
            r.packs_repacked,
            r.packs_kept,
            r.index_removed
        ),
        (
            dry.packs_deleted,
            dry.packs_repacked,
            dry.packs_kept,
            dry.index_removed
        )
    );
    assert_eq!(r.bytes_deleted, dry.bytes_deleted);
    assert!(r.packs_written > 0 && r.index_written > 0, "{r:?}");
    assert!(r.bytes_freed > 0, "{r:?}");
    assert_eq!(r.dead_bytes_kept, 0, "max-unused 0 leaves no dead byte");
    assert_eq!(r.remaining, 2);
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));
    for id in &ids[2..] {
        assert_eq!(digest(&repo, id)?, digests[id], "snapshot {id} changed");
    }
    // Every pack on disk is named, none is there twice, and a second
    // prune finds nothing to do.
    let after = state(&dir);
    let r2 = repo.prune(&PruneOptions {
        max_unused_percent: 0,
        ..Default::default()
    })?;
    assert_eq!(
        (
            r2.packs_deleted,
            r2.packs_repacked,
            r2.index_written,
            r2.index_removed
        ),
        (0, 0, 0, 0),
        "{r2:?}"
    );
    assert_eq!(state(&dir), after);

    // A policy: keep the last one; s3 goes, with what only it needed.
    let r = repo.prune(&PruneOptions {
        policy: Policy {
            keep_last: 1,
            ..Default::default()
        },
        ..Default::default()
    })?;
    assert_eq!(r.removed, vec![ids[2].clone()]);
    assert_eq!(
        r.kept.keys().cloned().collect::<Vec<_>>(),
        vec![ids[3].clone()]
    );
    assert_eq!(repo.snapshot_ids()?, vec![ids[3].clone()]);
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));
    assert_eq!(digest(&repo, &ids[3])?, digests[&ids[3]]);

    // Delete the last one too: nothing but config and keys remains.
    let r = repo.prune(&PruneOptions {
        forget: vec![ids[3].clone()],
        ..Default::default()
    })?;
    assert_eq!(r.remaining, 0);
    assert!(files(&dir, "data").is_empty(), "{:?}", files(&dir, "data"));
    assert!(files(&dir, "manifests").is_empty());
    assert!(files(&dir, "index").is_empty());
    assert!(problems(&repo).is_empty());
    Ok(())
}

#[test]
fn linked_store_packs_stay_linked_under_the_default_threshold() -> R {
    // A store pack a backup linked whole (at least 80 % live then) is not
    // copied by a prune that leaves it at least 80 % live, and is
    // deleted when nothing in it is live any more.
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let dir = tmp.path().join("repo");
    write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
    // Two sealed store packs of big.bin alone, then one that holds its
    // end and other.bin's start.
    write(&tree, "files/big.bin", &noise(7, 34 << 20));
    let store = Store::init(&tmp.path().join("data"), "alpha")?;
    store.import_bbs(&tree, &NoProgress)?;
    write(&tree, "files/other.bin", &noise(8, 20 << 20));
    store.import_bbs(&tree, &NoProgress)?;
    let repo = Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let opts = BackupOptions::default();
    let s1 = store.backup_v2(&repo, &opts, &NoProgress)?;
    assert!(s1.chunks_linked > 0, "{s1:?}");
    fs::remove_file(tree.join("files/big.bin"))?;
    store.import_bbs(&tree, &NoProgress)?;
    let s2 = store.backup_v2(&repo, &opts, &NoProgress)?;
    let d2 = digest(&repo, &s2.snapshot)?;
    let r = repo.prune(&PruneOptions {
        forget: vec![s1.snapshot.clone()],
        ..Default::default()
    })?;
    // big.bin's packs go (one may hold the config file's chunk too: that
    // one chunk is copied out); the mixed pack, mostly live, stays as it
    // is, dead bytes and all: no store pack's worth of bytes is copied.
    assert!(r.packs_deleted + r.packs_repacked >= 2, "{r:?}");
    assert!(r.bytes_freed >= 30 << 20, "{r:?}");
    assert!(r.dead_bytes_kept > 0, "{r:?}");
    assert!(r.bytes_written < 1 << 20, "{r:?}");
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));
    assert_eq!(digest(&repo, &s2.snapshot)?, d2);
    Ok(())
}

#[test]
fn escrows_of_removed_snapshots_go_but_each_instance_keeps_its_newest() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let dir = tmp.path().join("repo");
    write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
    post(&tree, 1, 1);
    let store = Store::init(&tmp.path().join("data"), "alpha")?;
    store.import_bbs(&tree, &NoProgress)?;
    let repo = Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let with_key = |p: &str| BackupOptions {
        identity_passphrase: Some(zeroize::Zeroizing::new(p.to_string())),
        ..Default::default()
    };
    let s1 = store.backup_v2(&repo, &with_key("first passphrase"), &NoProgress)?;
    let s2 = store.backup_v2(&repo, &with_key("second passphrase"), &NoProgress)?;
    let s3 = store.backup_v2(&repo, &BackupOptions::default(), &NoProgress)?;
    let k1 = s1.identity_escrow.clone().unwrap();
    let k2 = s2.identity_escrow.clone().unwrap();
    // An escrow a backup wrote before it was interrupted (no snapshot yet):
    // newer than every snapshot, never touched.
    let inst = k1
        .trim_start_matches("keys/")
        .rsplit_once('-')
        .unwrap()
        .0
        .to_string();
    let pending = format!("keys/{inst}-000099");
    fs::copy(dir.join(&k2), dir.join(&pending))?;
    // s1 goes: its escrow goes (s2's is newer); s2's stays while s2 does.
    let r = repo.prune(&PruneOptions {
        forget: vec![s1.snapshot.clone()],
        ..Default::default()
    })?;
    assert_eq!(r.keys_removed, vec![k1.clone()]);
    let keys = files(&dir, "keys");
    assert_eq!(keys, vec![k2.clone(), pending.clone()]);
    // s2 goes: its escrow goes with it, as a newer escrow of the instance
    // stays (the pending one, which nothing removes until a snapshot newer
    // than it exists).
    let r = repo.prune(&PruneOptions {
        forget: vec![s2.snapshot.clone()],
        ..Default::default()
    })?;
    assert_eq!(r.keys_removed, vec![k2.clone()], "{r:?}");
    assert_eq!(files(&dir, "keys"), vec![pending.clone()]);
    assert_eq!(repo.snapshot_ids()?, vec![s3.snapshot.clone()]);
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));
    Ok(())
}

#[test]
fn prune_refuses_or_waits_while_a_backup_holds_the_lock() -> R {
    let tmp = common::tempdir()?;
    let dir = tmp.path().join("repo");
    let repo = Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let host = "ab".repeat(32);
    let backup = repo.lock(&host, bbsync_store::backup::LockFor::BACKUP)?;
    let e = repo
        .prune(&PruneOptions {
            lock: LockOptions {
                host: host.clone(),
                wait: Duration::ZERO,
            },
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    let created = {
        let rec = LockRecord::decode("x", &fs::read(dir.join(backup.path()))?)?;
        bbsync_store::backup::rfc3339(rec.created_ms)
    };
    assert_eq!(
        e,
        format!(
            "backup repository {} is locked by {} (instance abababababababab, pid {}, since {created}) for a backup; nothing was pruned (retry later, or remove {} if that process is gone)",
            dir.display(),
            hostname(),
            std::process::id(),
            backup.path()
        )
    );
    let e = repo.forget(&[]).unwrap_err().to_string();
    assert!(e.contains("nothing was forgotten"), "{e}");
    // With a wait, prune goes on once the backup's lock is gone.
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, Ordering::SeqCst);
        drop(backup);
    });
    let r = repo.prune(&PruneOptions {
        lock: LockOptions {
            host,
            wait: Duration::from_secs(120),
        },
        ..Default::default()
    })?;
    assert!(released.load(Ordering::SeqCst), "prune ran under the lock");
    assert_eq!(r.remaining, 0);
    t.join().unwrap();
    Ok(())
}

#[test]
fn a_killed_holder_is_stale_a_reused_pid_is_not_the_holder_a_lost_lock_is_noticed() -> R {
    let tmp = common::tempdir()?;
    let dir = tmp.path().join("repo");
    let backend = Arc::new(LocalDir::new(&dir));
    let repo = Repo2::create(backend.clone())?;
    let host = "cd".repeat(32);
    let record = |pid: u32, process: Option<String>| LockRecord {
        host: host.clone(),
        hostname: hostname(),
        pid,
        exclusive: false,
        operation: "backup".into(),
        created_ms: bbsync_store::backup::now_ms(),
        refreshed_ms: bbsync_store::backup::now_ms(),
        process,
    };
    // A backup process killed (kill -9) while holding its lock.
    let mut child = std::process::Command::new("sleep").arg("600").spawn()?;
    let pid = child.id();
    let stamp = process_stamp(pid);
    assert!(stamp.is_some(), "no /proc stamp for a running process");
    backend.write(
        "locks/00000000000000000000000000000001",
        &record(pid, stamp).encode(),
    )?;
    child.kill()?;
    child.wait()?;
    // Our own pid (alive) but another run of it: the holder is gone.
    let mine = process_stamp(std::process::id()).unwrap();
    let boot = mine.split('/').next().unwrap();
    backend.write(
        "locks/00000000000000000000000000000002",
        &record(std::process::id(), Some(format!("{boot}/1"))).encode(),
    )?;
    let g = repo.lock(&host, bbsync_store::backup::LockFor::PRUNE)?;
    assert_eq!(
        g.removed_stale,
        vec![
            "locks/00000000000000000000000000000001".to_string(),
            "locks/00000000000000000000000000000002".to_string()
        ]
    );
    // Another machine with the same host name (another boot id): its pid
    // says nothing here; fresh by time, it holds.
    drop(g);
    backend.write(
        "locks/00000000000000000000000000000003",
        &record(u32::MAX - 1, Some("another-boot/5".into())).encode(),
    )?;
    let e = repo
        .lock(&host, bbsync_store::backup::LockFor::PRUNE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("locks/00000000000000000000000000000003"), "{e}");
    backend.remove("locks/00000000000000000000000000000003")?;

    // A lock removed under its holder (taken for stale by another writer)
    // is noticed before the holder changes anything more.
    let g = repo.lock(&host, bbsync_store::backup::LockFor::PRUNE)?;
    g.ensure_held()?;
    backend.remove(g.path())?;
    let e = g.ensure_held().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "the lock {}/{} was lost (removed by another writer that took it for stale, or not refreshed for 30 minutes); stopped before changing more",
            dir.display(),
            g.path()
        )
    );
    Ok(())
}

#[test]
fn exclusive_locks_exclude_everyone_under_contention() {
    let tmp = common::tempdir().unwrap();
    let repo = Repo2::create(Arc::new(LocalDir::new(&tmp.path().join("repo")))).unwrap();
    let exclusive_in = Arc::new(AtomicUsize::new(0));
    let shared_in = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let repo = repo.clone();
            let (ex, sh, taken) = (exclusive_in.clone(), shared_in.clone(), taken.clone());
            std::thread::spawn(move || {
                let exclusive = t % 3 == 0;
                let opts = LockOptions {
                    host: format!("{t:02}").repeat(32),
                    wait: Duration::from_secs(300),
                };
                for _ in 0..15 {
                    let what = bbsync_store::backup::LockFor {
                        exclusive,
                        operation: "test",
                        refused: "tested",
                    };
                    let g = repo.lock_with(&opts, what).unwrap();
                    taken.fetch_add(1, Ordering::SeqCst);
                    if exclusive {
                        assert_eq!(
                            ex.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two exclusive holders"
                        );
                        assert_eq!(sh.load(Ordering::SeqCst), 0, "exclusive beside shared");
                        std::thread::yield_now();
                        ex.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        sh.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(ex.load(Ordering::SeqCst), 0, "shared beside exclusive");
                        std::thread::yield_now();
                        sh.fetch_sub(1, Ordering::SeqCst);
                    }
                    g.ensure_held().unwrap();
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(taken.load(Ordering::SeqCst), 6 * 15);
    assert!(files(&tmp.path().join("repo"), "locks").is_empty());
}

#[test]
fn backups_and_prunes_at_the_same_time_never_corrupt_the_repository() -> R {
    let tmp = common::tempdir()?;
    let dir = tmp.path().join("repo");
    let repo = small_repo(&dir, 32 * 1024);
    let digests: Arc<Mutex<BTreeMap<String, [u8; 32]>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    // Prunes finished: backup i of a host waits for the i-th (a
    // condition, not a timer), so prunes fall between and across backups.
    let pruned = Arc::new(AtomicUsize::new(0));
    // Backups finished: a prune round waits for one more (a condition), so
    // that the pruner, which would take the exclusive lock again at once,
    // cannot starve the backups' shared locks.
    let finished = Arc::new(AtomicUsize::new(0));
    const BACKUPS: u32 = 12;
    // Two hosts back up into the repository, each changing its tree
    // between backups (new posts, changed ones, deleted ones).
    let backups: Vec<_> = ["alpha", "beta"]
        .into_iter()
        .enumerate()
        .map(|(h, name)| {
            let repo = repo.clone();
            let root = tmp.path().join(name);
            let (digests, done, pruned) = (digests.clone(), done.clone(), pruned.clone());
            let finished = finished.clone();
            std::thread::spawn(move || {
                let tree = root.join("tree");
                let store = Store::init(&root.join("data"), name).unwrap();
                let host = store.instance_id().to_hex();
                write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
                for i in 0..BACKUPS {
                    let deadline = std::time::Instant::now() + Duration::from_secs(300);
                    while pruned.load(Ordering::SeqCst) < i as usize {
                        assert!(std::time::Instant::now() < deadline, "no prune ran");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let seed = (h as u64 + 1) * 10_000 + u64::from(i) * 100;
                    for n in 0..6 {
                        post(&tree, i * 6 + n, seed + u64::from(n));
                    }
                    if i >= 2 {
                        for n in 0..3 {
                            unpost(&tree, (i - 2) * 6 + n);
                        }
                        post(&tree, (i - 1) * 6 + 5, seed + 99);
                    }
                    store.import_bbs(&tree, &NoProgress).unwrap();
                    let lock = LockOptions {
                        host: host.clone(),
                        wait: Duration::from_secs(600),
                    };
                    let g = repo
                        .lock_with(&lock, bbsync_store::backup::LockFor::BACKUP)
                        .unwrap();
                    let r = store
                        .backup_v2(&repo, &BackupOptions::default(), &NoProgress)
                        .unwrap();
                    let d = digest(&repo, &r.snapshot).unwrap();
                    g.ensure_held().unwrap();
                    drop(g);
                    digests.lock().unwrap().insert(r.snapshot, d);
                    finished.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Meanwhile: prunes (keep the last 4, repack anything with a dead
    // byte) and forgets, until both hosts are done.
    let pruner = {
        let repo = repo.clone();
        let (done, pruned, finished) = (done.clone(), pruned.clone(), finished.clone());
        std::thread::spawn(move || {
            let lock = LockOptions {
                host: "ee".repeat(32),
                wait: Duration::from_secs(600),
            };
            let mut rounds = 0u32;
            let (mut removed, mut packs_gone) = (0usize, 0u64);
            loop {
                // The last round starts after both hosts are done, so the
                // policy's outcome is known at the end.
                let all_done = done.load(Ordering::SeqCst) == 2;
                rounds += 1;
                let seen = finished.load(Ordering::SeqCst);
                let r = repo
                    .prune(&PruneOptions {
                        policy: Policy {
                            keep_last: 4,
                            ..Default::default()
                        },
                        max_unused_percent: 0,
                        lock: lock.clone(),
                        ..Default::default()
                    })
                    .unwrap();
                removed += r.removed.len();
                packs_gone += r.packs_deleted + r.packs_repacked;
                pruned.fetch_add(1, Ordering::SeqCst);
                if rounds.is_multiple_of(3) {
                    let ids = repo.snapshot_ids().unwrap();
                    if ids.len() > 2 {
                        let _ = repo.forget_with(&ids[..1], &lock);
                    }
                }
                if all_done && rounds >= 3 {
                    break;
                }
                let deadline = std::time::Instant::now() + Duration::from_secs(300);
                while finished.load(Ordering::SeqCst) == seen && done.load(Ordering::SeqCst) < 2 {
                    assert!(std::time::Instant::now() < deadline, "no backup ran");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            (rounds, removed, packs_gone)
        })
    };
    for b in backups {
        b.join().unwrap();
    }
    let (rounds, removed, packs_gone) = pruner.join().unwrap();
    eprintln!(
        "{rounds} prune rounds beside {} backups: {removed} snapshots and {packs_gone} packs removed",
        2 * BACKUPS
    );
    assert!(rounds >= 3);
    assert!(
        removed > 0 && packs_gone > 0,
        "the prunes had nothing to do"
    );
    let problems = problems(&repo);
    assert!(problems.is_empty(), "{problems:?}");
    let ids = repo.snapshot_ids()?;
    assert!(!ids.is_empty() && ids.len() <= 4, "{ids:?}");
    let digests = digests.lock().unwrap();
    for id in &ids {
        assert_eq!(digest(&repo, id)?, digests[id], "snapshot {id} changed");
    }
    assert!(files(&dir, "locks").is_empty());
    Ok(())
}

/// Copies a directory tree (real copies, no links).
#[cfg(feature = "failpoints")]
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// At every hit of every `prune2.*` point, a prune stops there (the test
/// thread unwinds out of it: nothing after the point runs, as after a
/// crash). After each: every remaining snapshot reads back
/// byte-identically and verify finds nothing but packs no index file names
/// (left by the interrupted write; never a missing or damaged record);
/// prune run again finishes, and verify is clean.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_at_every_prune_point_leaves_a_verifiable_repository_and_a_rerun_finishes() -> R {
    use bbsync_store::failpoint;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU32;

    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let base = tmp.path().join("base");
    let store = Store::init(&tmp.path().join("data"), "alpha")?;
    let repo = small_repo(&base, 48 * 1024);
    // An escrow per snapshot, so that prune has key files to remove.
    let (ids, digests) = four_snapshots(&store, &tree, &repo);
    let with_key = BackupOptions {
        identity_passphrase: Some(zeroize::Zeroizing::new("passphrase".into())),
        ..Default::default()
    };
    let k4 = store.backup_v2(&repo, &with_key, &NoProgress)?;
    let k5 = store.backup_v2(&repo, &with_key, &NoProgress)?;
    // A pack an interrupted backup left (no index file names it).
    let stray = {
        let b = bbsync_store::backup::v2::format::PackBuilder::new(
            bbsync_store::backup::v2::format::PackKind::Data,
        );
        let id = b.id();
        let (bytes, _) = b.finish();
        let path = format!("data/{}", id.rel_path());
        LocalDir::new(&base).write(&path, &bytes)?;
        path
    };
    let opts = |present: &[String]| PruneOptions {
        forget: [&ids[0], &ids[1], &k4.snapshot]
            .into_iter()
            .filter(|i| present.contains(i))
            .cloned()
            .collect(),
        max_unused_percent: 0,
        ..Default::default()
    };
    let keep: Vec<String> = vec![ids[2].clone(), ids[3].clone(), k5.snapshot.clone()];
    let mut digests = digests;
    digests.insert(k5.snapshot.clone(), digest(&repo, &k5.snapshot)?);

    // The reference: an uninterrupted prune.
    let reference = tmp.path().join("reference");
    copy_dir(&base, &reference);
    let rr = Repo2::open(Arc::new(LocalDir::new(&reference)))?;
    let full = rr.prune(&opts(&rr.snapshot_ids()?))?;
    assert!(
        full.packs_deleted > 0 && full.packs_repacked > 0 && !full.keys_removed.is_empty(),
        "the reference prune must pass every point: {full:?}"
    );
    assert!(!fs::exists(reference.join(&stray))?);
    let want_ids = rr.snapshot_ids()?;
    assert_eq!(want_ids, keep);
    let want_chunks: BTreeSet<_> = rr.load_index()?.chunks.keys().copied().collect();

    let points = [
        "prune2.repack",
        "prune2.index",
        "prune2.forget",
        "prune2.sync",
        "prune2.remove_index",
        "prune2.sync_removed",
        "prune2.remove_pack",
        "prune2.remove_key",
    ];
    let me = std::thread::current().id();
    let mut crashes = 0;
    for point in points {
        for n in 1.. {
            let dir = tmp.path().join(format!("crash-{point}-{n}"));
            copy_dir(&base, &dir);
            let repo = Repo2::open(Arc::new(LocalDir::new(&dir)))?;
            let hits = Arc::new(AtomicU32::new(0));
            let h = hits.clone();
            failpoint::on_hit(point, move || {
                if std::thread::current().id() == me && h.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    panic!("crash at {point} (hit {n})");
                }
            })?;
            let o = opts(&repo.snapshot_ids()?);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.prune(&o)));
            failpoint::clear(point);
            match run {
                Ok(r) => {
                    r?;
                    assert!(n > 1, "{point} was never passed");
                    fs::remove_dir_all(&dir)?;
                    break;
                }
                Err(_) => crashes += 1,
            }
            // What the crash left: every snapshot that stays reads back the
            // same, and nothing worse than unindexed packs.
            for id in &keep {
                assert_eq!(
                    digest(&repo, id)?,
                    digests[id],
                    "{point} hit {n}: snapshot {id}"
                );
            }
            for p in problems(&repo) {
                assert!(p.starts_with("unindexed-pack "), "{point} hit {n}: {p}");
            }
            // Run again: it finishes, and the result is the reference's.
            let r = repo.prune(&opts(&repo.snapshot_ids()?))?;
            assert!(!r.dry_run);
            let left = problems(&repo);
            assert!(
                left.is_empty(),
                "{point} hit {n}, after the rerun: {left:?}"
            );
            assert_eq!(repo.snapshot_ids()?, want_ids, "{point} hit {n}");
            let chunks: BTreeSet<_> = repo.load_index()?.chunks.keys().copied().collect();
            assert_eq!(chunks, want_chunks, "{point} hit {n}");
            for id in &keep {
                assert_eq!(digest(&repo, id)?, digests[id], "{point} hit {n}: {id}");
            }
            assert!(!fs::exists(dir.join(&stray))?, "{point} hit {n}");
            fs::remove_dir_all(&dir)?;
        }
    }
    eprintln!("prune crashed and rerun at {crashes} hits");
    assert!(crashes >= points.len(), "{crashes}");
    Ok(())
}

#[test]
fn a_damaged_repository_is_not_pruned() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let dir = tmp.path().join("repo");
    let store = Store::init(&tmp.path().join("data"), "alpha")?;
    let repo = small_repo(&dir, 64 * 1024);
    let (ids, _) = four_snapshots(&store, &tree, &repo);
    let opts = PruneOptions {
        forget: ids[..2].to_vec(),
        max_unused_percent: 0,
        ..Default::default()
    };
    // A pack holding live chunks is gone: pruning could only make it
    // worse (it would repack and delete around the hole).
    let ix = repo.load_index()?;
    let s4 = repo.load_snapshot(&ids[3])?;
    let m = s4
        .objects
        .iter()
        .map(|o| {
            let f = repo.read_manifest(&ix, &o.manifest_id).unwrap();
            Unverified::<Manifest>::decode(&f.manifest)
                .unwrap()
                .dangerously_assume_verified()
        })
        .find(|m| !m.chunks.is_empty())
        .unwrap();
    let at = ix.chunks[&m.chunks[0].id];
    let pack = bbsync_store::backup::v2::format::PackKind::Data.path(&at.pack);
    let saved = fs::read(dir.join(&pack))?;
    fs::remove_file(dir.join(&pack))?;
    let before = state(&dir);
    let e = repo.prune(&opts).unwrap_err().to_string();
    assert!(
        e.starts_with("chunk ")
            && e.contains(" of manifest ")
            && e.ends_with(
                "is in no pack of the repository; run `bbsync backups verify --read-data` (nothing was pruned)"
            ),
        "{e}"
    );
    assert_eq!(state(&dir), before);
    fs::write(dir.join(&pack), &saved)?;
    // A changed index file: refused by name.
    let name = files(&dir, "index")[0].clone();
    let mut b = fs::read(dir.join(&name))?;
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(dir.join(&name), &b)?;
    let before = state(&dir);
    let e = repo.prune(&opts).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "backup repository {} is damaged: {name}: its content does not hash to its name (changed or damaged); run `bbsync backups verify --read-data` (nothing was pruned)",
            dir.display()
        )
    );
    assert_eq!(state(&dir), before);
    // A snapshot that does not verify: named, and how to get past it.
    b[last] ^= 1;
    fs::write(dir.join(&name), &b)?;
    let snap = dir.join("snapshots").join(&ids[2]);
    let mut sb = fs::read(&snap)?;
    let n = sb.len();
    sb[n - 1] ^= 1;
    fs::write(&snap, &sb)?;
    let e = repo.prune(&opts).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("snapshot {}: ", ids[2]))
            && e.ends_with(&format!(
                "; repair it or delete it (`bbsync backups delete {}`) before pruning (nothing was pruned)",
                ids[2]
            )),
        "{e}"
    );
    // Deleting it works without reading it.
    let r = repo.prune(&PruneOptions {
        forget: vec![ids[0].clone(), ids[1].clone(), ids[2].clone()],
        ..Default::default()
    })?;
    assert_eq!(r.remaining, 1);
    assert!(problems(&repo).is_empty(), "{:?}", problems(&repo));
    Ok(())
}

/// Two hosts back up into one repository at the same time, both under
/// shared locks, and both have drawn their sequence before either writes
/// its snapshot (the failpoint before the snapshot holds each until the
/// other is there): the sequences differ, `latest` is the snapshot of the
/// higher one, and no sequence claim is left.
#[cfg(feature = "failpoints")]
#[test]
fn two_backups_at_once_draw_different_sequences() -> R {
    use bbsync_store::{
        backup::{Repo, snapshot_seq},
        failpoint,
    };
    use std::{cell::Cell, sync::Condvar};

    thread_local! {
        /// Set in this test's backup threads: other tests of this binary
        /// pass the same failpoint and must not wait here.
        static MINE: Cell<bool> = const { Cell::new(false) };
    }
    let tmp = common::tempdir()?;
    let dir = tmp.path().join("repo");
    Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let repo = Repo::open_dir(&dir)?;
    let stores: Vec<Store> = ["alpha", "beta"]
        .iter()
        .map(|name| {
            let root = tmp.path().join(name);
            let tree = root.join("tree");
            write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
            for n in 0..5 {
                post(&tree, n, u64::from(n) + name.len() as u64 * 1000);
            }
            let store = Store::init(&root.join("data"), name).unwrap();
            store.import_bbs(&tree, &NoProgress).unwrap();
            store
        })
        .collect();
    // A rendezvous of the two backup threads (with a deadline: a backup
    // that fails before it goes on alone and the test reports its error).
    let arrived = Arc::new((Mutex::new(0u32), Condvar::new()));
    let a = arrived.clone();
    failpoint::on_hit("backup.snapshot", move || {
        if !MINE.with(Cell::get) {
            return;
        }
        let (n, cv) = &*a;
        let mut n = n.lock().unwrap();
        *n += 1;
        cv.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while *n < 2 && std::time::Instant::now() < deadline {
            n = cv.wait_timeout(n, Duration::from_millis(100)).unwrap().0;
        }
    })?;
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = stores
            .iter()
            .map(|store| {
                let repo = &repo;
                s.spawn(move || {
                    MINE.with(|m| m.set(true));
                    store.backup(repo, &BackupOptions::default(), &NoProgress)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    failpoint::clear("backup.snapshot");
    let ids: Vec<String> = reports
        .into_iter()
        .map(|r| r.map(|r| r.snapshot))
        .collect::<Result<_, _>>()?;
    assert_eq!(*arrived.0.lock().unwrap(), 2, "the backups did not meet");
    let mut seqs: Vec<u64> = ids.iter().map(|i| snapshot_seq(i)).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2], "{ids:?}");
    let later = ids.iter().find(|i| snapshot_seq(i) == 2).unwrap();
    assert_eq!(&repo.resolve_snapshot("latest")?, later);
    assert_eq!(repo.v2().unwrap().snapshot_ids()?.len(), 2);
    assert!(files(&dir, "seqs").is_empty(), "{:?}", files(&dir, "seqs"));
    assert!(files(&dir, "locks").is_empty());
    let problems = problems(repo.v2().unwrap());
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}
