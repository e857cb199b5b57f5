//! Backup repositories on S3 (issue 13), against a real S3 server
//! (`moto_server`, started per test on 127.0.0.1 behind a counting proxy;
//! tests/src/s3.rs): the backend's contract, format 2 through the library
//! (full and incremental backups, the incremental's PUT count, verify, the
//! mutilation table), a server cut mid-backup, and calls from inside a
//! tokio runtime. Without moto_server the tests skip, unless
//! `BBSYNC_REQUIRE_S3=1`.

#![allow(clippy::unwrap_used)]

use crate::common;
#[allow(dead_code)]
#[path = "../../../tests/src/s3.rs"]
mod s3srv;

use std::{io, sync::Arc, time::Duration};

use crate::common::{noise, read_back, write};
use bbsync_store::{
    Store,
    backup::{
        Backend, RepoLocation, S3Backend, S3Settings,
        create::BackupOptions,
        v2::{
            Repo2,
            format::{PackKind, snapshot_path},
        },
    },
    config::Secret,
    progress::NoProgress,
};
use s3srv::{MotoServer, Proxy};

type R = Result<(), Box<dyn std::error::Error>>;

/// moto behind a proxy, with a bucket; `None`: skipped.
fn server(bucket: &str) -> Option<(MotoServer, Proxy)> {
    let moto = MotoServer::start()?;
    moto.create_bucket(bucket);
    let proxy = Proxy::start(moto.port());
    Some((moto, proxy))
}

/// Settings for the test server: few, short retries, so that a cut
/// server fails a call within a second or two.
fn settings(endpoint: &str) -> S3Settings {
    let mut s = S3Settings::new(
        Some(endpoint.to_string()),
        s3srv::REGION,
        s3srv::ACCESS_KEY_ID,
        Secret::new(s3srv::SECRET_ACCESS_KEY.to_string()),
    );
    s.max_retries = 2;
    s.retry_min_delay = Duration::from_millis(50);
    s.max_uploads = 4;
    s
}

fn open(proxy: &Proxy, location: &str) -> Arc<dyn Backend> {
    RepoLocation::parse(location)
        .unwrap()
        .open(|| Ok(settings(&proxy.endpoint())))
        .unwrap()
}

#[test]
fn s3_backend_contract() -> R {
    let Some((_moto, proxy)) = server("contract") else {
        return Ok(());
    };
    let b = Arc::new(S3Backend::open(
        "contract",
        "repo/one",
        &settings(&proxy.endpoint()),
    )?);
    assert_eq!(b.location(), "s3://contract/repo/one");
    let dbg = format!("{b:?} {:?}", settings(&proxy.endpoint()));
    assert!(!dbg.contains(s3srv::SECRET_ACCESS_KEY), "{dbg}");

    // Absent things.
    assert_eq!(
        b.read("config").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(b.size("config")?, None);
    assert!(b.list("data")?.is_empty());
    b.remove("config")?;

    // Whole and ranged reads.
    b.write("config", b"0123456789")?;
    assert_eq!(b.read("config")?, b"0123456789");
    assert_eq!(b.size("config")?, Some(10));
    assert_eq!(b.read_range("config", 2, 5)?, b"23456");
    assert_eq!(b.read_range("config", 10, 0)?, b"");
    let e = b.read_range("config", 8, 5).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e} / {e:?}");
    assert_eq!(e.to_string(), "config is shorter than 13 bytes");
    let e = b.read_range("config", 20, 5).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e} / {e:?}");
    assert_eq!(
        b.read_range("nothing", 0, 5).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // Listing: names of files and of "directories", one level, sorted.
    b.write("data/ab/ab01.pack", b"x")?;
    b.write("data/cd/cd01.pack", b"y")?;
    b.write("data/cd/cd02.pack", b"z")?;
    assert_eq!(b.list("data")?, ["ab", "cd"]);
    assert_eq!(b.list("data/cd")?, ["cd01.pack", "cd02.pack"]);
    assert_eq!(b.list("data/cd/")?, ["cd01.pack", "cd02.pack"]);
    b.remove("data/cd/cd01.pack")?;
    assert_eq!(b.list("data/cd")?, ["cd02.pack"]);

    // Staged: invisible (to list and size) until published.
    b.stage("data/ef/ef01.pack", b"staged")?;
    b.sync()?;
    assert!(b.list("data")?.iter().all(|n| n != "ef") || b.list("data/ef")?.is_empty());
    assert_eq!(b.size("data/ef/ef01.pack")?, None);
    b.publish("data/ef/ef01.pack")?;
    assert_eq!(b.read("data/ef/ef01.pack")?, b"staged");
    assert_eq!(b.list("data/ef")?, ["ef01.pack"]);
    b.stage("data/ef/ef02.pack", b"left behind")?;
    b.sync()?;
    assert_eq!(b.remove_temp_files()?, 1);
    assert_eq!(b.remove_temp_files()?, 0);

    // Conditional create: sent as `If-None-Match: *` (not a HEAD first).
    let before = (proxy.conditional_puts(), proxy.count("HEAD"));
    assert!(b.write_new("locks/a", b"first")?);
    assert!(!b.write_new("locks/a", b"second")?);
    assert_eq!(b.read("locks/a")?, b"first");
    assert_eq!(proxy.conditional_puts() - before.0, 2);
    assert_eq!(proxy.count("HEAD"), before.1);
    // Two writers racing for one name: each gets an answer, and the object
    // holds a winner's bytes. (That exactly one wins is the server's
    // promise: AWS keeps it; moto 5.2.1 checks the condition outside any
    // lock, so both may win there. The lock race below is what bbsync
    // relies on, and it holds either way.)
    for round in 0..5 {
        let path = format!("locks/race-{round}");
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u8)
                .map(|w| {
                    let (b, path, barrier) = (b.clone(), path.clone(), &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        b.write_new(&path, &[w; 16]).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().any(|w| *w), "round {round}: {results:?}");
        let held = b.read(&path)?;
        assert!(
            (0..2u8).any(|w| results[w as usize] && held == [w; 16]),
            "round {round}: {results:?} {held:?}"
        );
    }

    // Lazy writes: visible after sync; the counters agree with the proxy.
    let before = (b.counts(), proxy.count("PUT"));
    for i in 0..12u8 {
        b.write_lazy(&format!("index/{i:02}"), &[i; 1000])?;
    }
    b.sync()?;
    assert_eq!(b.list("index")?.len(), 12);
    let d = b.counts().since(&before.0);
    assert_eq!(d.put, 12, "{d}");
    assert_eq!(proxy.count("PUT") - before.1, 12);
    assert_eq!(d.bytes_up, 12_000);
    assert_eq!(b.counts().put, proxy.count("PUT"), "{}", b.counts());
    assert_eq!(b.counts().get, proxy.count("GET") - b.counts().list);
    assert_eq!(b.counts().head, proxy.count("HEAD"));
    assert_eq!(b.counts().delete, proxy.count("DELETE"));
    assert_eq!(proxy.unparsed(), 0);

    // A 4xx answer is not retried: one GET for an absent object.
    let before = (b.counts(), proxy.count("GET"));
    assert!(b.read("index/absent").is_err());
    assert_eq!(proxy.count("GET") - before.1, 1);
    assert_eq!(b.counts().since(&before.0).retries, 0);

    // A failed lazy upload: sync returns it, with its path; the next
    // write_lazy already refuses.
    let before = b.counts();
    proxy.cut();
    b.write_lazy("index/late", b"never")?;
    let e = b.sync().unwrap_err().to_string();
    assert!(
        e.starts_with("uploading index/late: S3 request failed after retries: "),
        "{e}"
    );
    assert!(!e.contains(s3srv::SECRET_ACCESS_KEY), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // A refused connection is transient: tried 1 + max_retries (2) times.
    let d = b.counts().since(&before);
    assert_eq!((d.put, d.retries), (3, 2), "{d}");
    b.sync()?; // reported once
    proxy.restore();
    b.write_lazy("index/late", b"now")?;
    b.sync()?;
    assert_eq!(b.read("index/late")?, b"now");

    // A server without conditional writes (501 NotImplemented): a HEAD,
    // then a PUT, from then on.
    proxy.refuse_conditional_puts(true);
    let fb = S3Backend::open("contract", "repo/one", &settings(&proxy.endpoint()))?;
    let before = (
        proxy.conditional_puts(),
        proxy.count("HEAD"),
        proxy.count("PUT"),
    );
    assert!(fb.write_new("locks/fallback", b"first")?);
    assert!(!fb.write_new("locks/fallback", b"second")?);
    assert_eq!(fb.read("locks/fallback")?, b"first");
    assert_eq!(proxy.conditional_puts() - before.0, 1, "asked once");
    assert_eq!(proxy.count("HEAD") - before.1, 2);
    assert_eq!(
        proxy.count("PUT") - before.2,
        2,
        "the refused one and the plain one"
    );
    proxy.refuse_conditional_puts(false);

    // A bucket that does not exist is an error, not an absent object.
    let nb = S3Backend::open("no-such-bucket", "x", &settings(&proxy.endpoint()))?;
    let e = nb.read("config").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Other);
    assert_eq!(e.to_string(), "the bucket does not exist (S3 NoSuchBucket)");
    assert!(nb.write("config", b"x").is_err());

    // Called from inside a tokio runtime (both kinds), and dropped there.
    let b2 = S3Backend::open("contract", "repo/one", &settings(&proxy.endpoint()))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            assert_eq!(b2.read("config").unwrap(), b"0123456789");
            b2.write_lazy("index/rt", b"rt").unwrap();
            b2.sync().unwrap();
            drop(b2);
        });
    tokio::runtime::Runtime::new()?.block_on(async {
        let b3 = S3Backend::open("contract", "repo/one", &settings(&proxy.endpoint())).unwrap();
        assert_eq!(b3.read("index/rt").unwrap(), b"rt");
    });
    Ok(())
}

/// The problems of a verify, as `class path: detail` lines.
fn problems(repo: &Repo2, read_data: bool) -> Vec<String> {
    repo.verify(read_data, &NoProgress)
        .unwrap()
        .problems
        .iter()
        .map(|p| format!("{} {}: {}", p.class, p.path, p.detail))
        .collect()
}

/// A store with a BBS tree of a few posts and 20 MiB of files (one sealed
/// store pack and an open one).
fn sample_store(tmp: &std::path::Path) -> (Store, std::path::PathBuf) {
    let tree = tmp.join("tree");
    write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
    for i in 1..=5 {
        write(
            &tree,
            &format!("boards/general/{i}.json"),
            format!("{{\"id\":{i},\"body\":\"post {i}\"}}").as_bytes(),
        );
    }
    write(&tree, "files/big.bin", &noise(11, 20 << 20));
    let store = Store::init(&tmp.join("data"), "alpha").unwrap();
    store.import_bbs(&tree, &NoProgress).unwrap();
    (store, tree)
}

#[test]
fn format_2_on_s3_backup_incremental_verify_and_mutilations() -> R {
    let Some((_moto, proxy)) = server("bbs-backups") else {
        return Ok(());
    };
    let tmp = common::tempdir()?;
    let (store, tree) = sample_store(tmp.path());
    let b = open(&proxy, "s3://bbs-backups/axon/nightly");
    let repo = Repo2::create(b.clone())?;
    assert_eq!(repo.location(), "s3://bbs-backups/axon/nightly");
    let opts = BackupOptions::default();
    let c = b.request_counts().unwrap();
    let r1 = store.backup_v2(&repo, &opts, &NoProgress)?;
    eprintln!(
        "full backup on S3 ({} bytes of chunks): {}",
        r1.bytes,
        b.request_counts().unwrap().since(&c)
    );
    assert_eq!(r1.chunks_new, r1.chunks, "{r1:?}");
    assert_eq!(r1.chunks_linked, 0, "nothing is linked into S3: {r1:?}");
    assert_eq!(read_back(&repo, &r1.snapshot)?, r1.chunks);

    // One new post: a handful of PUTs (the budget is 10), and the
    // backend's counters say the same as the proxy.
    write(
        &tree,
        "boards/general/6.json",
        b"{\"id\":6,\"body\":\"one more\"}",
    );
    store.import_bbs(&tree, &NoProgress)?;
    let (c0, p0) = (b.request_counts().unwrap(), proxy.counts());
    // Run from inside a tokio runtime, as `serve`'s scheduled backups do.
    let r2 = tokio::runtime::Runtime::new()?
        .block_on(async { store.backup_v2(&repo, &opts, &NoProgress) })?;
    let d = b.request_counts().unwrap().since(&c0);
    let puts = proxy.count("PUT") - p0.get("PUT").copied().unwrap_or(0);
    eprintln!("incremental after one new post on S3: {d}");
    assert_eq!((r2.chunks_new, r2.manifests_new), (1, 1), "{r2:?}");
    assert_eq!(d.put, puts);
    assert!(puts <= 10, "{puts} PUTs for one new post: {d}");
    assert_eq!(read_back(&repo, &r2.snapshot)?, r2.chunks);

    // Verify, with and without reading the data; a fresh handle on the
    // same location sees the same repository.
    let fresh = Repo2::open(open(&proxy, "s3://bbs-backups/axon/nightly"))?;
    assert_eq!(
        fresh.snapshot_ids()?,
        [r1.snapshot.clone(), r2.snapshot.clone()]
    );
    assert_eq!(problems(&fresh, false), Vec::<String>::new());
    let v = fresh.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);
    assert!(v.bytes_read >= r1.bytes, "{v:?}");
    assert_eq!(read_back(&fresh, &r1.snapshot)?, r1.chunks);
    assert_eq!(proxy.unparsed(), 0);

    // The mutilation table, each case undone before the next.
    let ix = repo.load_index()?;
    let (big_pack, big_len) = ix
        .packs
        .iter()
        .filter(|(_, (k, _))| *k == PackKind::Data)
        .map(|(p, (_, len))| (*p, *len))
        .max_by_key(|(_, len)| *len)
        .unwrap();
    let pack = PackKind::Data.path(&big_pack);
    let original = b.read(&pack)?;
    assert_eq!(original.len() as u64, big_len);

    b.remove(&pack)?;
    let p = problems(&repo, false);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!("missing-pack {pack}: missing, holds chunks of ")),
        "{p:?}"
    );

    b.write(&pack, &original[..original.len() - 100])?;
    let p = problems(&repo, false);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!(
            "truncated-pack {pack}: has {} bytes, the index says {big_len}, holds chunks of ",
            big_len - 100
        )),
        "{p:?}"
    );

    let (at_offset, _) = ix
        .chunks
        .values()
        .filter(|at| at.pack == big_pack)
        .map(|at| (at.offset, at.len))
        .min()
        .unwrap();
    let mut corrupt = original.clone();
    corrupt[at_offset as usize + 10] ^= 0x40;
    b.write(&pack, &corrupt)?;
    assert_eq!(problems(&repo, false), Vec::<String>::new(), "sizes agree");
    let p = problems(&repo, true);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!("corrupt-chunk {pack}: entry ")),
        "{p:?}"
    );
    assert!(
        p[0].ends_with(&format!("at offset {at_offset} does not hash to its id")),
        "{p:?}"
    );
    b.write(&pack, &original)?;

    // The newest index file gone: the new post's chunk and manifest are
    // in no index, and its packs are named by none.
    let names = b.list("index")?;
    let newest = names
        .iter()
        .find(|n| {
            let bytes = b.read(&format!("index/{n}")).unwrap();
            bbsync_store::backup::v2::format::IndexFile::decode(&format!("index/{n}"), &bytes)
                .unwrap()
                .seq
                == 2
        })
        .unwrap()
        .clone();
    let index_path = format!("index/{newest}");
    let index_bytes = b.read(&index_path)?;
    b.remove(&index_path)?;
    let p = problems(&repo, false);
    let classes: std::collections::BTreeSet<&str> =
        p.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        classes,
        ["missing-manifest", "unindexed-pack"].into_iter().collect(),
        "{p:?}"
    );
    assert!(
        p.iter().any(|l| l.starts_with("missing-manifest manifest ")
            && l.contains(": in no index file (an index file is missing or damaged) (snapshot ")),
        "{p:?}"
    );
    b.write(&index_path, &index_bytes)?;

    let snap = snapshot_path(&r2.snapshot);
    let snap_bytes = b.read(&snap)?;
    let mut forged = snap_bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    b.write(&snap, &forged)?;
    assert_eq!(
        problems(&repo, false),
        [format!(
            "bad-snapshot-signature {snap}: snapshot {}: bad signature: {snap} was changed after its host signed it",
            r2.snapshot
        )]
    );
    b.write(&snap, &snap_bytes)?;
    assert_eq!(problems(&repo, true), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_server_cut_mid_backup_fails_clearly_and_a_rerun_completes() -> R {
    let Some((_moto, proxy)) = server("bbs-backups") else {
        return Ok(());
    };
    let tmp = common::tempdir()?;
    let (store, _tree) = sample_store(tmp.path());
    let b = open(&proxy, "s3://bbs-backups/cut");
    let repo = Repo2::create(b.clone())?;
    let opts = BackupOptions::default();

    // The second PUT of the backup cuts the server: packs are being
    // uploaded (under their final names, `write_lazy`; no index names
    // them yet).
    proxy.cut_at_put(2);
    let e = store
        .backup_v2(&repo, &opts, &NoProgress)
        .unwrap_err()
        .to_string();
    eprintln!("the cut backup: {e}");
    assert!(proxy.is_cut());
    assert!(!e.contains('\n'), "{e}");
    assert!(!e.contains(s3srv::SECRET_ACCESS_KEY), "{e}");
    assert!(
        e.starts_with("syncing s3://bbs-backups/cut: uploading ")
            && e.contains(".pack: S3 request failed after retries: "),
        "{e}"
    );
    proxy.restore();

    // Nothing is half-visible: no snapshot, no index file; the packs that
    // made it are whole and named by no index (`unindexed-pack`, the
    // harmless leftover of an interrupted write, and nothing else).
    assert!(repo.snapshot_ids()?.is_empty());
    assert!(b.list("index")?.is_empty());
    let left = problems(&repo, true);
    assert!(
        left.iter().all(|p| p.starts_with("unindexed-pack ")),
        "{left:?}"
    );

    // The rerun completes and checks out.
    let r = store.backup_v2(&repo, &opts, &NoProgress)?;
    assert_eq!(repo.snapshot_ids()?, std::slice::from_ref(&r.snapshot));
    assert_eq!(read_back(&repo, &r.snapshot)?, r.chunks);
    assert_eq!(problems(&repo, true), Vec::<String>::new());
    // Format 2 stages nothing (packs go up whole under their names): no
    // temp object is left by the cut run.
    assert!(b.remove_temp_files()? <= r.chunks);
    assert_eq!(b.remove_temp_files()?, 0);
    assert_eq!(problems(&repo, false), Vec::<String>::new());
    Ok(())
}

#[test]
fn two_exclusive_lockers_racing_on_s3_never_both_hold_the_lock() -> R {
    let Some((_moto, proxy)) = server("bbs-backups") else {
        return Ok(());
    };
    let repo = Arc::new(Repo2::create(open(&proxy, "s3://bbs-backups/locks"))?);
    for round in 0..8 {
        let barrier = std::sync::Barrier::new(2);
        let held: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = ["alpha", "beta"]
                .into_iter()
                .map(|host| {
                    let (repo, barrier) = (repo.clone(), &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        repo.lock(host, bbsync_store::backup::LockFor::PRUNE)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let holders = held.iter().filter(|r| r.is_ok()).count();
        assert!(holders <= 1, "round {round}: both hold the lock");
        for r in &held {
            if let Err(e) = r {
                let e = e.to_string();
                assert!(e.contains("s3://bbs-backups/locks"), "{e}");
            }
        }
        drop(held);
        assert!(
            repo.backend().list("locks")?.is_empty(),
            "round {round}: a lock was left behind"
        );
    }
    // Alone, a locker gets it, and a second one is refused while it holds.
    let g = repo.lock("alpha", bbsync_store::backup::LockFor::PRUNE)?;
    let e = repo
        .lock("beta", bbsync_store::backup::LockFor::PRUNE)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("backup repository s3://bbs-backups/locks is locked by ")
            && e.contains("for a prune; nothing was pruned (retry later, or remove locks/"),
        "{e}"
    );
    drop(g);
    Ok(())
}
