//! Store tests: import/export round trips, unchanged re-imports, versions and
//! tombstones, and the `verify` mutilation table.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    path::{Path, PathBuf},
};

use bbsync_protocol::{EnvelopeEntry, Unverified};
use bbsync_store::{
    Store, StoreError,
    progress::NoProgress,
    verify::{ProblemClass, VerifyReport},
};

use crate::common;

use crate::common::{noise, snapshot, write};

type R = Result<(), Box<dyn std::error::Error>>;

/// A small BBS tree with every edge case the archive must keep.
fn mini_bbs(root: &Path) {
    write(root, "config/bbs.toml", b"name = \"Test BBS\"\n");
    write(root, "config/menus/main.ans", b"\x1b[1;33mMAIN\x1b[0m\r\n");
    write(root, "applets/lord/main.lua", b"print('lord')\n");
    write(root, "applets/lord/assets/big.bin", &noise(1, 700_000));
    write(
        root,
        "applets/lord/name with space \u{fc}.txt",
        b"unicode\n",
    );
    write(root, "applets/lord/empty.txt", b"");
    fs::create_dir_all(root.join("applets/lord/cache")).unwrap();
    fs::create_dir_all(root.join("applets/lord/a/b/c/d/e")).unwrap();
    write(root, "applets/lord/a/b/c/d/e/deep.txt", b"deep");
    write(root, "data/lord/alice/save.json", b"{\"gold\": 5}");
    fs::create_dir_all(root.join("data/lord/alice/tmp")).unwrap();
    write(
        root,
        "boards/general/1.json",
        b"{\"id\":1,\"body\":\"hello\"}",
    );
    write(
        root,
        "boards/general/2.json",
        b"{\"id\":2,\"body\":\"world\"}",
    );
    write(
        root,
        "files/\u{65e5}\u{672c}\u{8a9e}/\u{8aad}\u{3093}\u{3067}.txt",
        b"yomu",
    );
    write(root, "files/empty.txt", b"");
    write(root, "files/big upload.bin", &noise(2, 3_000_000));
}

/// Bytes appended to open packs beyond their committed length, and pack
/// files that the database does not know: what an interrupted write
/// leaves, and what there must never be once a store is open.
fn leftovers(store: &Store) -> u64 {
    let open: std::collections::HashMap<_, _> = store.packs().open_packs().into_iter().collect();
    let mut n = 0;
    for (pack, len) in store.packs().pack_files().unwrap().into_iter().flatten() {
        if let Some(c) = open.get(&pack) {
            n += len.saturating_sub(*c);
        }
    }
    n
}

/// The chunks the store holds (its index), sorted.
fn chunk_files(store: &Store) -> Vec<bbsync_protocol::ChunkId> {
    let mut v: Vec<_> = store
        .packs()
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    v.sort();
    v
}

/// Every file under the pack directory.
fn pack_files(data: &Path) -> Vec<PathBuf> {
    snapshot(&data.join("packs"))
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    tree: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = common::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    Fixture {
        tree,
        data: tmp.path().join("data"),
        out: tmp.path().join("out"),
        _tmp: tmp,
    }
}

#[test]
fn bbs_round_trip_is_byte_identical() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    let s = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!(s.new, 9);
    let e = store.export_bbs(&f.out, &NoProgress)?;
    assert!(e.failed.is_empty(), "{:?}", e.failed);
    assert_eq!(snapshot(&f.tree), snapshot(&f.out));
    Ok(())
}

#[test]
fn unchanged_reimport_writes_nothing() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    let first = store.import_bbs(&f.tree, &NoProgress)?;
    let before = chunk_files(&store);
    let seq = store.last_seq()?;
    let again = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!(
        (
            again.new,
            again.changed,
            again.deleted,
            again.chunks_written
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(again.unchanged, first.new);
    assert_eq!(store.last_seq()?, seq, "no new change-log entry");
    // Touch every file: metadata changes, content does not -> still nothing written.
    let walk: Vec<_> = snapshot(&f.tree)
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .collect();
    for (rel, data) in &walk {
        fs::write(f.tree.join(rel), data.as_ref().unwrap())?;
    }
    let third = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!((third.new, third.changed, third.chunks_written), (0, 0, 0));
    assert_eq!(store.last_seq()?, seq);
    assert_eq!(chunk_files(&store), before);
    Ok(())
}

#[test]
fn changed_object_gets_next_version_and_shares_chunks() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    store.import_bbs(&f.tree, &NoProgress)?;
    let id = store.resolve("file:big upload.bin")?;
    let v1 = store.manifest(&id)?;
    // Change a few bytes near the end of a 3 MB file.
    let mut data = fs::read(f.tree.join("files/big upload.bin"))?;
    let n = data.len();
    data[n - 100..n - 90].copy_from_slice(b"CHANGED!!!");
    fs::write(f.tree.join("files/big upload.bin"), &data)?;
    let s = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!((s.changed, s.new), (1, 0));
    let v2 = store.manifest(&id)?;
    assert_eq!(v2.version, v1.version + 1);
    let old: std::collections::HashSet<_> = v1.chunks.iter().map(|c| c.id).collect();
    let shared = v2.chunks.iter().filter(|c| old.contains(&c.id)).count();
    assert!(
        shared >= v2.chunks.len() - 2,
        "only {shared} of {} chunks shared",
        v2.chunks.len()
    );
    assert_eq!(s.chunks_written as usize, v2.chunks.len() - shared);
    // The chunks only the old version used are collected.
    assert!(store.verify(true, &NoProgress)?.is_ok());
    store.export_bbs(&f.out, &NoProgress)?;
    assert_eq!(snapshot(&f.tree), snapshot(&f.out));
    Ok(())
}

#[test]
fn removed_content_becomes_a_signed_tombstone() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    store.import_bbs(&f.tree, &NoProgress)?;
    let id = store.resolve("message:general/2")?;
    fs::remove_file(f.tree.join("boards/general/2.json"))?;
    let s = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!(s.deleted, 1);
    let m = store.manifest(&id)?; // signature verified
    assert!(m.deleted && m.chunks.is_empty() && m.version == 2);
    assert!(store.verify(true, &NoProgress)?.is_ok());
    store.export_bbs(&f.out, &NoProgress)?;
    assert_eq!(snapshot(&f.tree), snapshot(&f.out));
    // Coming back revives the same object with a new version.
    write(
        &f.tree,
        "boards/general/2.json",
        b"{\"id\":2,\"body\":\"back\"}",
    );
    let s = store.import_bbs(&f.tree, &NoProgress)?;
    assert_eq!(s.changed, 1);
    assert_eq!(store.resolve("message:general/2")?, id);
    assert_eq!(store.manifest(&id)?.version, 3);
    Ok(())
}

#[test]
fn single_file_and_directory_objects_export_exactly() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    store.import_path(
        &f.tree.join("applets/lord"),
        "applet",
        "lord-copy",
        None,
        &NoProgress,
    )?;
    store.import_path(
        &f.tree.join("files/big upload.bin"),
        "file",
        "x/y.bin",
        Some("bob".into()),
        &NoProgress,
    )?;
    let d = f.out.join("dir");
    store.export_object(&store.resolve("applet:lord-copy")?, &d)?;
    assert_eq!(snapshot(&f.tree.join("applets/lord")), snapshot(&d));
    let file = f.out.join("y.bin");
    store.export_object(&store.resolve("file:x/y.bin")?, &file)?;
    assert_eq!(
        fs::read(&file)?,
        fs::read(f.tree.join("files/big upload.bin"))?
    );
    // Export refuses to overwrite.
    let e = store
        .export_object(&store.resolve("file:x/y.bin")?, &file)
        .unwrap_err();
    assert!(matches!(e, StoreError::DestinationNotEmpty(_)), "{e}");
    Ok(())
}

#[test]
fn bad_tree_changes_nothing() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    write(&f.tree, "stray.txt", b"not part of the layout");
    let e = store.import_bbs(&f.tree, &NoProgress).unwrap_err();
    assert!(matches!(e, StoreError::BadTree { .. }), "{e}");
    assert!(e.to_string().contains("stray.txt"));
    assert_eq!(store.raw_db().object_count(), 0);
    assert!(chunk_files(&store).is_empty());
    assert!(pack_files(&f.data).is_empty(), "nothing written");
    Ok(())
}

#[test]
fn stale_temp_files_are_removed_on_open() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    store.import_bbs(&f.tree, &NoProgress)?;
    let (pack, committed) = store.packs().open_packs()[0];
    let path = store.packs().path(&pack);
    drop(store);
    // What a crash between staging and publishing leaves behind: bytes
    // appended to the open pack beyond its committed length.
    let mut f2 = fs::OpenOptions::new().append(true).open(&path)?;
    std::io::Write::write_all(&mut f2, b"half a chunk")?;
    drop(f2);
    assert_eq!(fs::metadata(&path)?.len(), committed + 12);
    let store = Store::open(&f.data)?;
    assert_eq!(fs::metadata(&path)?.len(), committed);
    assert_eq!(leftovers(&store), 0);
    assert!(store.verify(true, &NoProgress)?.is_ok());
    Ok(())
}

/// A BBS tree that is a file (the OS says "not a directory") is refused
/// as such; one that does not exist is unreadable. (The kind of the OS
/// error decides, not its text.)
#[test]
fn a_tree_that_is_a_file_is_refused_as_not_a_tree() -> R {
    let f = fixture();
    let store = Store::init(&f.data, "alpha")?;
    let file = f.out.with_extension("txt");
    fs::write(&file, "not a tree")?;
    let e = store.import_bbs(&file, &NoProgress).unwrap_err();
    assert!(
        e.to_string().contains("a BBS tree must be a directory"),
        "{e}"
    );
    let e = store
        .import_bbs(&f.out.join("missing"), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, StoreError::Unreadable { .. }), "{e}");
    Ok(())
}

#[test]
fn newer_schema_is_refused() -> R {
    let f = fixture();
    Store::init(&f.data, "alpha")?
        .dangerously_set_schema_version(bbsync_store::SCHEMA_VERSION + 1)?;
    let e = Store::open(&f.data).unwrap_err();
    assert!(matches!(e, StoreError::NewerSchema { .. }), "{e}");
    assert!(e.to_string().contains("newer bbsync"));
    Ok(())
}

#[test]
fn second_process_is_refused_while_store_is_open() -> R {
    let f = fixture();
    let _a = Store::init(&f.data, "alpha")?;
    // sled's lock is per process (fcntl), so check from a child process.
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "store::open_from_child",
            "--ignored",
            "--nocapture",
        ])
        .env("BBSYNC_TEST_OPEN", &f.data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in use by another bbsync process"), "{text}");
    Ok(())
}

#[test]
#[ignore = "helper run by second_process_is_refused_while_store_is_open"]
fn open_from_child() {
    if let Ok(dir) = std::env::var("BBSYNC_TEST_OPEN") {
        match Store::open(Path::new(&dir)) {
            Ok(_) => println!("opened"),
            Err(e) => println!("{e}"),
        }
    }
}

// ---- verify mutilation table -------------------------------------------

fn classes(r: &VerifyReport) -> Vec<ProblemClass> {
    let mut v: Vec<_> = r.problems.iter().map(|p| p.class).collect();
    v.dedup();
    v
}

/// Builds a healthy store, applies `damage`, and returns the report of
/// `verify` with and without `--read-data`.
fn damaged(damage: impl FnOnce(&Store)) -> (VerifyReport, VerifyReport) {
    let f = fixture();
    let store = Store::init(&f.data, "alpha").unwrap();
    store.import_bbs(&f.tree, &NoProgress).unwrap();
    let healthy = store.verify(true, &NoProgress).unwrap();
    assert!(healthy.is_ok(), "healthy store: {:?}", healthy.problems);
    damage(&store);
    (
        store.verify(false, &NoProgress).unwrap(),
        store.verify(true, &NoProgress).unwrap(),
    )
}

/// The first chunk of an object: its id, the pack file holding it and its location.
fn first_chunk(
    store: &Store,
    spec: &str,
) -> (
    bbsync_protocol::ChunkId,
    PathBuf,
    bbsync_store::packs::Location,
) {
    let id = store.resolve(spec).unwrap();
    let m = store.manifest(&id).unwrap();
    let cid = m.chunks[0].id;
    let loc = store.packs().location(&cid).unwrap().unwrap();
    (cid, store.packs().path(&loc.pack), loc)
}

#[test]
fn verify_flipped_byte_is_corrupt_chunk() {
    let (quick, full) = damaged(|s| {
        let (_, p, loc) = first_chunk(s, "file:big upload.bin");
        let mut b = fs::read(&p).unwrap();
        b[loc.offset as usize + 1000] ^= 0x40;
        fs::write(&p, b).unwrap();
    });
    assert!(quick.is_ok(), "same length: only --read-data can see it");
    assert_eq!(classes(&full), vec![ProblemClass::CorruptChunk]);
    assert_eq!(
        full.problems[0].object.as_deref(),
        Some("file:big upload.bin")
    );
}

#[test]
fn verify_truncated_chunk_is_corrupt_chunk() {
    // A pack cut in the middle of a chunk: that chunk (and any after it)
    // is corrupt, and the pack is reported as cut short.
    let (quick, full) = damaged(|s| {
        let (_, p, loc) = first_chunk(s, "applet:lord");
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..loc.offset as usize + loc.len as usize / 2]).unwrap();
    });
    let want = vec![ProblemClass::CorruptChunk, ProblemClass::TruncatedPack];
    assert_eq!(classes(&quick), want);
    assert_eq!(classes(&full), want);
    assert!(
        quick
            .problems
            .iter()
            .any(|p| p.class == ProblemClass::CorruptChunk
                && p.object.as_deref() == Some("applet:lord")),
        "{:?}",
        quick.problems
    );
}

#[test]
fn verify_deleted_chunk_is_missing_chunk() {
    // The chunk is gone from the index (its bytes unreachable).
    let (quick, full) = damaged(|s| {
        let (cid, _, _) = first_chunk(s, "config:bbs.toml");
        s.packs().remove_many(&[cid]).unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::MissingChunk]);
    assert_eq!(classes(&full), vec![ProblemClass::MissingChunk]);
}

#[test]
fn verify_extra_file_is_orphan_chunk() {
    let (quick, full) = damaged(|s| {
        let bytes = b"nobody references me, nobody at all: 64 bytes of an orphan chunk";
        let id = bbsync_protocol::ChunkId::of(bytes);
        s.packs().put(id, bytes).unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::OrphanChunk]);
    assert_eq!(classes(&full), vec![ProblemClass::OrphanChunk]);
}

#[test]
fn verify_broken_manifest_signature() {
    let (quick, full) = damaged(|s| {
        let id = s.resolve("message:general/1").unwrap();
        s.dangerously_edit_record(&id, |r| {
            let n = r.manifest.len();
            r.manifest[n - 5] ^= 1; // inside the signature
        })
        .unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::BadManifestSignature]);
    assert_eq!(classes(&full), vec![ProblemClass::BadManifestSignature]);
}

#[test]
fn verify_removed_envelope_entry_is_undecryptable() {
    let (quick, full) = damaged(|s| {
        let id = s
            .resolve("data:x")
            .or_else(|_| s.resolve("applet-data:lord/alice"))
            .unwrap();
        let me = s.instance_id();
        let kept: Vec<Vec<u8>> = s
            .raw_db()
            .envelope(&id)
            .unwrap()
            .into_iter()
            .filter(|e| {
                Unverified::<EnvelopeEntry>::decode(e)
                    .unwrap()
                    .dangerously_assume_verified()
                    .recipient
                    != me
            })
            .collect();
        s.dangerously_edit_record(&id, |r| {
            r.envelope = kept.into_iter().map(serde_bytes::ByteBuf::from).collect()
        })
        .unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::Undecryptable]);
    assert_eq!(classes(&full), vec![ProblemClass::Undecryptable]);
}

#[test]
fn verify_forged_envelope_entry_is_bad_envelope() {
    let (quick, _) = damaged(|s| {
        let id = s.resolve("config:menus/main.ans").unwrap();
        s.dangerously_edit_record(&id, |r| {
            let n = r.envelope[0].len();
            r.envelope[0][n - 3] ^= 0x80; // signature byte
        })
        .unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::BadEnvelope]);
}

#[test]
fn verify_incomplete_object() {
    let (quick, _) = damaged(|s| {
        let id = s.resolve("file:empty.txt").unwrap();
        s.dangerously_edit_record(&id, |r| r.state.complete = false)
            .unwrap();
    });
    assert_eq!(classes(&quick), vec![ProblemClass::IncompleteObject]);
}
