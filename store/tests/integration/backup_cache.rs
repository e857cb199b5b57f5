//! The backup cache (docs/backup.md "Incremental backups"): a backup after
//! a change reads only the changed records, and its snapshot is exactly
//! the one a backup that reads every record writes (the same objects,
//! versions, manifests, counts and sizes), through new, edited and deleted
//! posts, a rekey (a record change outside the change log), another
//! selection, and a cache that is damaged or another store's.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::common::{noise, read_back, write};
use bbsync_protocol::{Role, card_to_string};
use bbsync_store::{
    Store,
    backup::{
        LocalDir,
        create::{BackupOptions, BackupReport},
        v2::Repo2,
    },
    progress::NoProgress,
    rekey::RekeyOptions,
    sync::Selection,
};

type R = Result<(), Box<dyn std::error::Error>>;

/// What a snapshot says, to compare two of them.
fn summary(repo: &Repo2, id: &str) -> String {
    let s = repo.load_snapshot(id).unwrap();
    format!(
        "{:?} {} {} {} {:?} {:?}",
        s.counts,
        s.bytes,
        s.plaintext_bytes,
        s.chunks,
        s.objects
            .iter()
            .map(|o| (o.object_id, o.version, o.manifest_id))
            .collect::<Vec<_>>(),
        s.only
    )
}

/// A backup that may use the cache, then one that reads every record (its
/// cache removed first): both snapshots must say the same.
fn backup_both(store: &Store, repo: &Repo2, opts: &BackupOptions) -> (BackupReport, BackupReport) {
    let cached = store.backup_v2(repo, opts, &NoProgress).unwrap();
    fs::remove_dir_all(store.dir().join("cache")).unwrap();
    let full = store.backup_v2(repo, opts, &NoProgress).unwrap();
    assert!(!full.from_cache, "{full:?}");
    assert_eq!(
        summary(repo, &cached.snapshot),
        summary(repo, &full.snapshot),
        "the cached backup's snapshot differs from a full read's"
    );
    for r in [&cached, &full] {
        assert_eq!(read_back(repo, &r.snapshot).unwrap(), r.chunks);
    }
    assert_eq!(
        (
            cached.objects,
            cached.chunks,
            cached.bytes,
            &cached.skipped_incomplete
        ),
        (
            full.objects,
            full.chunks,
            full.bytes,
            &full.skipped_incomplete
        )
    );
    (cached, full)
}

fn post(tree: &Path, n: u32, body: &str) {
    write(
        tree,
        &format!("boards/general/{n}.json"),
        format!("{{\"id\":{n},\"body\":\"{body}\"}}").as_bytes(),
    );
}

/// The setup of each test here: a tree of `posts` posts (and the `files`
/// given) named `name`, imported into a new store, and a new format-2
/// repository beside it. Returns the tree, the store and the repository.
fn posts_store(
    tmp: &Path,
    name: &str,
    posts: u32,
    files: &[(&str, Vec<u8>)],
) -> Result<(PathBuf, Store, Repo2), Box<dyn std::error::Error>> {
    let tree = tmp.join("tree");
    write(
        &tree,
        "config/bbs.toml",
        format!("name = \"{name}\"\n").as_bytes(),
    );
    for n in 1..=posts {
        post(&tree, n, "hello");
    }
    for (path, bytes) in files {
        write(&tree, path, bytes);
    }
    let store = Store::init(&tmp.join("data"), "alpha")?;
    store.import_bbs(&tree, &NoProgress)?;
    let repo = Repo2::create(Arc::new(LocalDir::new(&tmp.join("repo"))))?;
    Ok((tree, store, repo))
}

#[test]
fn a_cached_backup_writes_the_snapshot_a_full_read_writes() -> R {
    let tmp = common::tempdir()?;
    let (tree, store, repo) = posts_store(
        tmp.path(),
        "cache",
        40,
        &[("files/big.bin", noise(3, 3 << 20))],
    )?;
    let all = BackupOptions::default();

    let first = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(!first.from_cache, "no cache yet: {first:?}");
    // Nothing changed: the cache serves, and the snapshots agree.
    let (r, _) = backup_both(&store, &repo, &all);
    assert!(r.from_cache, "{r:?}");
    assert_eq!((r.chunks_new, r.manifests_new), (0, 0), "{r:?}");

    // New, edited and deleted posts, and a new file.
    post(&tree, 41, "new");
    post(&tree, 7, "edited");
    fs::remove_file(tree.join("boards/general/9.json"))?;
    write(&tree, "files/small.bin", &noise(4, 9_000));
    store.import_bbs(&tree, &NoProgress)?;
    let before = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(before.from_cache, "{before:?}");
    assert_eq!(before.objects, first.objects + 2, "{before:?}");
    assert!(before.manifests_new >= 4, "{before:?}");
    post(&tree, 42, "again");
    store.import_bbs(&tree, &NoProgress)?;
    let (r, full) = backup_both(&store, &repo, &all);
    assert!(r.from_cache, "{r:?}");
    assert_eq!((r.chunks_new, r.manifests_new), (1, 1), "{r:?}");
    assert_eq!(full.objects, first.objects + 3);

    // A rekey changes envelopes outside the change log: the cache is not
    // used, and the new envelopes are backed up.
    let other = Store::init(&tmp.path().join("other"), "beta")?;
    store.trust_add(&card_to_string(&other.card()?), Role::Full)?;
    store.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(!r.from_cache, "a rekey must invalidate the cache: {r:?}");
    assert!(r.manifests_new >= 40, "{r:?}");
    let (r, _) = backup_both(&store, &repo, &all);
    assert!(r.from_cache, "{r:?}");

    // Another selection has its own cache.
    let posts = BackupOptions {
        selection: Selection::from_only(&["message".to_string()])?,
        only: vec!["message".to_string()],
        ..Default::default()
    };
    let p1 = store.backup_v2(&repo, &posts, &NoProgress)?;
    assert!(!p1.from_cache, "{p1:?}");
    assert!(p1.objects < r.objects, "{p1:?}");
    post(&tree, 43, "selected");
    store.import_bbs(&tree, &NoProgress)?;
    let (p2, _) = backup_both(&store, &repo, &posts);
    assert!(p2.from_cache, "{p2:?}");
    assert_eq!(p2.objects, p1.objects + 1);

    // A damaged cache is not used (and the backup is still right).
    let cache_dir = store.dir().join("cache");
    fs::remove_dir_all(&cache_dir)?;
    store.backup_v2(&repo, &all, &NoProgress)?;
    let caches: Vec<_> = fs::read_dir(&cache_dir)?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("backup-")
        })
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let mut bytes = fs::read(&caches[0])?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&caches[0], &bytes)?;
    let (r, _) = backup_both(&store, &repo, &all);
    assert!(!r.from_cache, "a damaged cache was used: {r:?}");

    // Another store's cache (same selection, same file name) is not used:
    // it is keyed with that store's local key.
    let tree2 = tmp.path().join("tree2");
    write(&tree2, "config/bbs.toml", b"name = \"other\"\n");
    post(&tree2, 1, "other");
    other.import_bbs(&tree2, &NoProgress)?;
    other.backup_v2(&repo, &all, &NoProgress)?;
    store.backup_v2(&repo, &all, &NoProgress)?;
    let name = caches[0].file_name().unwrap();
    fs::copy(other.dir().join("cache").join(name), cache_dir.join(name))?;
    let (r, _) = backup_both(&store, &repo, &all);
    assert!(!r.from_cache, "another store's cache was used: {r:?}");
    Ok(())
}

/// `prepare_backup_cache` (what `bbsync backup-cache` runs for a large
/// store's backup) writes the cache only when a backup would not find one
/// that serves; the backup after it is served by it, with the snapshot a
/// full read writes; and a damaged cache is still not used (the header
/// alone says it would serve, the backup's own check says no).
#[test]
fn a_prepared_cache_serves_the_next_backup_with_a_full_reads_snapshot() -> R {
    let tmp = common::tempdir()?;
    let (tree, store, repo) = posts_store(tmp.path(), "prepare", 30, &[])?;
    let all = BackupOptions::default();
    let sel = &all.selection;

    assert!(!store.backup_cache_serves(sel)?, "no cache yet");
    assert!(
        store.prepare_backup_cache(sel)?,
        "the cache was not written"
    );
    assert!(store.backup_cache_serves(sel)?);
    assert!(
        !store.prepare_backup_cache(sel)?,
        "a cache that serves was written again"
    );
    let first = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(
        first.from_cache,
        "the prepared cache did not serve: {first:?}"
    );
    assert_eq!(first.objects, 31, "{first:?}");
    let (r, _) = backup_both(&store, &repo, &all);
    assert!(r.from_cache, "{r:?}");

    // A change the cache does not hold is read by the backup as ever.
    post(&tree, 31, "new");
    store.import_bbs(&tree, &NoProgress)?;
    assert!(store.backup_cache_serves(sel)?, "one change is few");
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(r.from_cache, "{r:?}");
    assert_eq!(r.objects, first.objects + 1, "{r:?}");

    // Another selection is another cache.
    let posts = Selection::from_only(&["message".to_string()])?;
    assert!(!store.backup_cache_serves(&posts)?);

    // A damaged body: the header still says it would serve, the backup
    // does not use it, and its snapshot is a full read's.
    let cache = fs::read_dir(store.dir().join("cache"))?
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("backup-")
        })
        .unwrap();
    let mut bytes = fs::read(&cache)?;
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    fs::write(&cache, &bytes)?;
    assert!(store.backup_cache_serves(sel)?);
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(!r.from_cache, "a damaged cache was used: {r:?}");
    assert_eq!(r.objects, first.objects + 1, "{r:?}");
    assert_eq!(read_back(&repo, &r.snapshot)?, r.chunks);
    Ok(())
}

/// The index files a backup wrote since the cache was made are read
/// beside it; a prune that rewrites index files makes the backup read
/// them all again; every snapshot reads back and the repository verifies.
#[test]
fn the_index_cache_follows_new_and_rewritten_index_files() -> R {
    let tmp = common::tempdir()?;
    let (tree, store, repo) = posts_store(
        tmp.path(),
        "index",
        10,
        &[("files/a.bin", noise(5, 200_000))],
    )?;
    let all = BackupOptions::default();
    let index_caches = || {
        fs::read_dir(store.dir().join("cache"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("index-")
            })
            .count()
    };
    let s1 = store.backup_v2(&repo, &all, &NoProgress)?;
    assert_eq!(index_caches(), 1);

    // Another host's backup into the same repository adds index files;
    // this store's next backups read them beside the cache.
    let other = Store::init(&tmp.path().join("other"), "beta")?;
    let tree2 = tmp.path().join("tree2");
    write(&tree2, "config/bbs.toml", b"name = \"other\"\n");
    write(&tree2, "files/b.bin", &noise(6, 300_000));
    other.import_bbs(&tree2, &NoProgress)?;
    other.backup_v2(&repo, &all, &NoProgress)?;
    for n in 11..=13 {
        post(&tree, n, "more");
        store.import_bbs(&tree, &NoProgress)?;
        let r = store.backup_v2(&repo, &all, &NoProgress)?;
        assert_eq!((r.chunks_new, r.manifests_new), (1, 1), "{r:?}");
        // Read beside the cache: the other host's index file and this
        // store's own since the cache was last written (by the first
        // backup, which read every index file and added its own).
        assert_eq!(r.index_files_read, u64::from(n - 10), "{r:?}");
    }
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert_eq!((r.chunks_new, r.manifests_new), (0, 0), "{r:?}");

    // Delete a file, back up, forget every older snapshot and prune with
    // no unused share allowed: its pack goes and index files are
    // rewritten. The next backup (after the file comes back, with new
    // chunks) must still write what the repository lacks.
    fs::remove_file(tree.join("files/a.bin"))?;
    store.import_bbs(&tree, &NoProgress)?;
    let keep = store.backup_v2(&repo, &all, &NoProgress)?;
    let older: Vec<String> = repo
        .snapshot_ids()?
        .into_iter()
        .filter(|i| *i != keep.snapshot)
        .collect();
    assert!(older.contains(&s1.snapshot));
    let p = repo.prune(&bbsync_store::backup::v2::prune::PruneOptions {
        forget: older,
        max_unused_percent: 0,
        ..Default::default()
    })?;
    assert!(p.packs_deleted + p.packs_repacked > 0, "{p:?}");
    write(&tree, "files/a.bin", &noise(5, 200_000));
    store.import_bbs(&tree, &NoProgress)?;
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert!(r.chunks_new > 0, "{r:?}");
    assert_eq!(r.index_files_read, repo.index_names()?.len() as u64 - 1);
    assert_eq!(read_back(&repo, &r.snapshot)?, r.chunks);
    let v = repo.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);

    // A damaged index cache is not used; the backup is still complete.
    let path = fs::read_dir(store.dir().join("cache"))?
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("index-")
        })
        .unwrap();
    let mut bytes = fs::read(&path)?;
    bytes[10] ^= 0x40;
    fs::write(&path, &bytes)?;
    post(&tree, 14, "last");
    store.import_bbs(&tree, &NoProgress)?;
    let r = store.backup_v2(&repo, &all, &NoProgress)?;
    assert_eq!((r.chunks_new, r.manifests_new), (1, 1), "{r:?}");
    let v = repo.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);
    Ok(())
}

/// With thousands of objects the cache's objects are collected in two
/// halves at once; the snapshot is still exactly a full read's, with
/// changes on both sides of the split.
#[test]
fn a_large_selection_collected_in_halves_writes_the_same_snapshot() -> R {
    let tmp = common::tempdir()?;
    let (tree, store, repo) = posts_store(tmp.path(), "halves", 4200, &[])?;
    let all = BackupOptions::default();
    store.backup_v2(&repo, &all, &NoProgress)?;
    for n in (1..=4200).step_by(300) {
        post(&tree, n, "edited");
    }
    for n in (150..=4200).step_by(600) {
        fs::remove_file(tree.join(format!("boards/general/{n}.json")))?;
    }
    for n in 4201..=4220 {
        post(&tree, n, "new");
    }
    store.import_bbs(&tree, &NoProgress)?;
    let (r, full) = backup_both(&store, &repo, &all);
    assert!(r.from_cache, "{r:?}");
    // 4,200 posts (the deleted ones as tombstones), the config, 20 new.
    assert_eq!(full.objects, 4200 + 1 + 20, "{full:?}");
    Ok(())
}
