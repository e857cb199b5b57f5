//! Backup repository format 2 (issue 13), through the library on a local
//! directory: a full backup links the store's sealed packs and repacks the
//! rest, everything reads back through the index and checks out, an
//! incremental backup after one new post writes one pack, one manifest
//! pack, one index file and one snapshot, and `latest` order follows the
//! sequence.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::{fs, sync::Arc};

use crate::common::{files, noise, read_back, write};
use bbsync_store::{
    Store,
    backup::{
        LocalDir,
        create::BackupOptions,
        v2::{Repo2, format::PackKind, tar::TarBackend},
    },
    progress::NoProgress,
};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn full_and_incremental_backups_in_format_2() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let data = tmp.path().join("data");
    let dir = tmp.path().join("repo");
    write(&tree, "config/bbs.toml", b"name = \"Test BBS\"\n");
    write(
        &tree,
        "boards/general/1.json",
        b"{\"id\":1,\"body\":\"hello\"}",
    );
    // Enough to fill (and seal) two store packs of 16 MiB, and leave an open one.
    write(&tree, "files/big.bin", &noise(7, 40 << 20));
    let store = Store::init(&data, "alpha")?;
    store.import_bbs(&tree, &NoProgress)?;

    let repo = Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let opts = BackupOptions::default();
    let r1 = store.backup_v2(&repo, &opts, &NoProgress)?;
    assert_eq!(r1.chunks_new, r1.chunks, "{r1:?}");
    assert!(
        r1.chunks_linked > 0,
        "no sealed store pack was linked: {r1:?}"
    );
    assert!(
        r1.chunks_linked < r1.chunks,
        "the open pack's chunks are repacked: {r1:?}"
    );
    assert_eq!(r1.manifests_new, r1.objects);
    assert_eq!(read_back(&repo, &r1.snapshot)?, r1.chunks);
    assert_eq!(files(&dir, "index").len(), 1);
    assert_eq!(files(&dir, "manifests").len(), 1);

    // One new post: one data pack, one manifest pack, one index file.
    let before: Vec<Vec<String>> = ["data", "manifests", "index"]
        .iter()
        .map(|d| files(&dir, d))
        .collect();
    write(
        &tree,
        "boards/general/2.json",
        b"{\"id\":2,\"body\":\"world\"}",
    );
    store.import_bbs(&tree, &NoProgress)?;
    let r2 = store.backup_v2(&repo, &opts, &NoProgress)?;
    assert_eq!((r2.chunks_new, r2.manifests_new), (1, 1), "{r2:?}");
    for (d, b) in ["data", "manifests", "index"].iter().zip(&before) {
        assert_eq!(files(&dir, d).len(), b.len() + 1, "{d}");
    }
    assert_eq!(read_back(&repo, &r2.snapshot)?, r2.chunks);

    // Nothing new: no pack, no index file; only the snapshot.
    let r3 = store.backup_v2(&repo, &opts, &NoProgress)?;
    assert_eq!((r3.chunks_new, r3.manifests_new), (0, 0), "{r3:?}");
    assert_eq!(files(&dir, "index").len(), 2);
    assert_eq!(
        repo.snapshot_ids()?,
        vec![
            r1.snapshot.clone(),
            r2.snapshot.clone(),
            r3.snapshot.clone()
        ]
    );
    assert_eq!(bbsync_store::backup::snapshot_seq(&r3.snapshot), 3);

    let v = repo.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.snapshots, 3);
    assert!(v.bytes_read >= r1.bytes, "{v:?}");

    // Export of one snapshot: a tar that reads as a repository in place.
    let out = tmp.path().join("export.tar");
    let e = repo.export("latest", &out)?;
    assert_eq!(e.snapshot, r3.snapshot);
    let tar = Repo2::open(Arc::new(TarBackend::open(&out)?))?;
    assert_eq!(tar.snapshot_ids()?, vec![r3.snapshot.clone()]);
    assert_eq!(read_back(&tar, &r3.snapshot)?, r3.chunks);
    let v = tar.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);
    let mut cut = fs::read(&out)?;
    cut.truncate(cut.len() - 2000);
    let cut_path = tmp.path().join("cut.tar");
    fs::write(&cut_path, &cut)?;
    let err = TarBackend::open(&cut_path).unwrap_err().to_string();
    assert!(err.contains("is not a valid bbsync export file"), "{err}");

    // A flipped byte in a chunk is caught when it is read.
    let ix = repo.load_index()?;
    let (id, at) = ix.chunks.iter().next().map(|(k, v)| (*k, *v)).unwrap();
    let path = dir.join(PackKind::Data.path(&at.pack));
    let mut bytes = fs::read(&path)?;
    bytes[at.offset as usize] ^= 1;
    // A linked pack shares the store's inode: write a new file instead.
    fs::remove_file(&path)?;
    fs::write(&path, &bytes)?;
    let e = repo.read_chunk(&ix, &id).unwrap_err().to_string();
    assert!(e.contains(&id.short()), "{e}");
    let v = repo.verify(true, &NoProgress)?;
    let classes: Vec<&str> = v.problems.iter().map(|p| p.class.as_str()).collect();
    assert_eq!(classes, ["corrupt-chunk"], "{:?}", v.problems);
    assert_eq!(v.problems[0].path, PackKind::Data.path(&at.pack));

    // A changed index file is refused by name.
    let name = files(&dir, "index")[0].clone();
    let mut b = fs::read(dir.join(&name))?;
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(dir.join(&name), &b)?;
    let e = repo.load_index().unwrap_err().to_string();
    assert!(e.contains("does not hash to its name"), "{e}");
    let v = repo.verify(false, &NoProgress)?;
    assert!(
        v.problems
            .iter()
            .any(|p| p.class == "bad-index" && p.path == name),
        "{:?}",
        v.problems
    );
    Ok(())
}

/// A format-3 snapshot signs a digest of its manifest files, and `backups
/// verify` does not check again the signature of a manifest whose file is
/// one the snapshot signed for. A repository writer who swaps a manifest's
/// file for one with a forged signature (same manifest, so the same id; a
/// new manifest pack and an index file of a higher sequence, which wins)
/// makes the digest differ: every manifest of that snapshot is verified
/// again, and the forged one is reported.
#[test]
fn a_manifest_file_swapped_under_a_signed_snapshot_is_verified_again() -> R {
    use bbsync_store::backup::{
        repofile::ManifestFile,
        v2::format::{IndexFile, ManifestRef, PackBuilder, index_path},
    };
    use sha2::{Digest, Sha256};

    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let data = tmp.path().join("data");
    let dir = tmp.path().join("repo");
    for i in 0..5 {
        let body = format!("{{\"id\":{i},\"body\":\"post {i}\"}}");
        write(&tree, &format!("boards/general/{i}.json"), body.as_bytes());
    }
    let store = Store::init(&data, "alpha")?;
    store.import_bbs(&tree, &NoProgress)?;
    let repo = Repo2::create(Arc::new(LocalDir::new(&dir)))?;
    let r = store.backup_v2(&repo, &BackupOptions::default(), &NoProgress)?;
    let v = repo.verify(true, &NoProgress)?;
    assert!(v.is_ok(), "{:?}", v.problems);
    assert!(v.manifests >= 5, "{v:?}");
    assert_eq!(v.manifests_vouched, v.manifests, "{v:?}");

    // The same snapshot in format 2 (written before format 3; signed by
    // the same host): it signs no manifest files, so every manifest's
    // signature is verified, and all is well.
    let snap_path = dir.join(bbsync_store::backup::v2::format::snapshot_path(&r.snapshot));
    let format_3 = fs::read(&snap_path)?;
    let mut older = bbsync_protocol::Unverified::<bbsync_protocol::Snapshot>::decode(&format_3)?
        .claimed()
        .clone();
    (older.format, older.manifest_files) = (2, None);
    let signed = bbsync_protocol::Signed::sign(store.identity(), older)?;
    fs::write(&snap_path, signed.bytes())?;
    let v2 = repo.verify(true, &NoProgress)?;
    assert!(v2.is_ok(), "{:?}", v2.problems);
    assert_eq!((v2.manifests, v2.manifests_vouched), (v.manifests, 0));
    fs::write(&snap_path, &format_3)?;

    // The forged file: a manifest's own signature with one bit flipped.
    let snap = repo.load_snapshot(&r.snapshot)?;
    let mid = snap.objects[0].manifest_id;
    let ix = repo.load_index()?;
    let (_, at) = ix.manifest(&mid).unwrap();
    let pack = fs::read(dir.join(PackKind::Manifests.path(&at.pack)))?;
    let start = at.offset as usize;
    let file = &pack[start..start + at.len as usize];
    let mut mf = ManifestFile::decode(file)?;
    let sig_at = mf.manifest.len() - 64 + 5;
    mf.manifest[sig_at] ^= 1;
    let forged = mf.encode();
    let forged_hash: [u8; 32] = Sha256::digest(&forged).into();
    let mut pb = PackBuilder::new(PackKind::Manifests);
    pb.push(forged_hash, &forged)?;
    let id = pb.id();
    let (bytes, ip) = pb.finish();
    let path = dir.join(PackKind::Manifests.path(&id));
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(&path, &bytes)?;
    let index = IndexFile {
        format: 1,
        seq: 1000,
        packs: vec![ip],
        manifests: vec![ManifestRef {
            manifest: mid.0,
            file: forged_hash,
        }],
    }
    .encode();
    fs::write(dir.join(index_path(&index)), &index)?;

    let v = repo.verify(true, &NoProgress)?;
    assert_eq!(v.manifests_vouched, 0, "{v:?}");
    let classes: Vec<&str> = v.problems.iter().map(|p| p.class.as_str()).collect();
    assert_eq!(classes, ["bad-manifest"], "{:?}", v.problems);
    assert!(
        v.problems[0].detail.contains(&mid.short()) && v.problems[0].detail.contains("signature"),
        "{:?}",
        v.problems
    );
    Ok(())
}
