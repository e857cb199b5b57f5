//! The store side of replication, driven in process between two stores (the
//! node crate carries the same calls over libp2p): clone, just-in-time
//! rekey, blind peers, hostile input, excluded owners, resume, versions.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{fs, path::Path};

use bbsync_protocol::{
    Checkpoint, ChunkId, Identity, InstanceCard, Manifest, Role, Signed, Unverified, card_to_string,
};
use bbsync_store::{
    Store,
    progress::NoProgress,
    sync::{Accepted, Served},
    verify::ProblemClass,
};

use crate::common;

use crate::common::{noise, snapshot, write};

type R = Result<(), Box<dyn std::error::Error>>;

fn mini_bbs(root: &Path) {
    write(root, "config/bbs.toml", b"name = \"Sync BBS\"\n");
    write(root, "applets/lord/main.lua", b"print('lord')\n");
    write(root, "applets/lord/assets/big.bin", &noise(1, 900_000));
    fs::create_dir_all(root.join("applets/lord/cache")).unwrap();
    write(root, "data/lord/alice/save.json", b"{\"gold\": 5}");
    write(root, "data/lord/sysop/save.json", b"{\"gold\": 999999}");
    for i in 0..40 {
        write(
            root,
            &format!("boards/general/{i}.json"),
            format!("{{\"id\":{i}}}").as_bytes(),
        );
    }
    write(root, "files/upload.bin", &noise(2, 2_500_000));
    write(root, "files/empty.txt", b"");
}

fn card_of(s: &Store) -> Signed<InstanceCard> {
    s.card().unwrap()
}

/// Two stores that trust each other (`role` is how the source sees the clone).
fn pair(tmp: &Path, role: Role) -> (Store, Store) {
    let src = Store::init(&tmp.join("src"), "source").unwrap();
    let dst = Store::init(&tmp.join("dst"), "clone").unwrap();
    src.trust_add(&card_to_string(&card_of(&dst)), role)
        .unwrap();
    dst.trust_add(&card_to_string(&card_of(&src)), Role::Full)
        .unwrap();
    (src, dst)
}

/// What a clone does, without the network: page through the changes, get
/// the manifests re-keyed, fetch the missing chunks, mark complete, and
/// return the source's checkpoint and what each step reported.
fn clone(src: &Store, dst: &Store, role: Role) -> (Signed<Checkpoint>, Vec<Accepted>, u64) {
    let cp_bytes = src.checkpoint().unwrap().bytes().to_vec();
    let cp = Unverified::<Checkpoint>::decode(&cp_bytes)
        .unwrap()
        .verify(|i| *i == src.instance_id())
        .unwrap();
    let me = card_of(dst).into_value();
    let mut reports = Vec::new();
    let mut cursor = 0;
    loop {
        let (page, next) = src.changes_page(cursor, 16).unwrap();
        if page.is_empty() {
            break;
        }
        cursor = next;
        let ids: Vec<_> = page.iter().map(|c| c.object_id).collect();
        let served = src.serve_manifests(&ids, &me, role).unwrap();
        reports.push(dst.accept_manifests(&src.instance_id(), served).unwrap());
    }
    let missing = dst.missing_chunks().unwrap();
    let chunks: Vec<(ChunkId, Vec<u8>)> = missing
        .iter()
        .map(|(id, _)| (*id, src.serve_chunk(id).unwrap()))
        .collect();
    let (stored, _, rejected) = dst.accept_chunks(chunks).unwrap();
    assert!(rejected.is_empty());
    dst.complete_ready().unwrap();
    (cp, reports, stored)
}

#[test]
fn clone_is_complete_and_proves_it() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let (cp, reports, stored) = clone(&src, &dst, Role::Full);
    assert!(reports.iter().all(|r| r.rejected.is_empty()));
    assert!(stored > 0);
    // The proof: the clone recomputes the source's root.
    assert_eq!(dst.root()?, (cp.count, cp.root));
    assert!(dst.verify(true, &NoProgress)?.is_ok());
    let out = tmp.path().join("out");
    let e = dst.export_bbs(&out, &NoProgress)?;
    assert!(e.failed.is_empty(), "{:?}", e.failed);
    assert_eq!(snapshot(&tree), snapshot(&out));
    // Cloning an up-to-date copy transfers nothing.
    let (_, reports, stored) = clone(&src, &dst, Role::Full);
    assert_eq!(stored, 0);
    assert!(reports.iter().all(|r| r.recorded.is_empty()));
    Ok(())
}

#[test]
fn just_in_time_rekey_writes_nothing_on_the_source() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let records = |s: &Store| {
        s.raw_db()
            .objects()
            .map(|r| {
                let (id, _) = r.unwrap();
                (
                    id,
                    s.raw_db()
                        .record(&id)
                        .unwrap()
                        .map(|r| (r.manifest, r.envelope)),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = (
        records(&src),
        src.last_seq()?,
        src.packs().list()?.len(),
        src.packs().pack_files()?,
    );
    let ids: Vec<_> = src.raw_db().objects().map(|r| r.unwrap().0).collect();
    let served = src.serve_manifests(&ids, &card_of(&dst).into_value(), Role::Full)?;
    assert!(served.iter().any(|s| s.entry.is_some()));
    let after = (
        records(&src),
        src.last_seq()?,
        src.packs().list()?.len(),
        src.packs().pack_files()?,
    );
    assert!(
        before == after,
        "serving manifests changed the source store"
    );
    // Each entry is for the clone, signed by the source, and opens there.
    for s in &served {
        if let Some(e) = &s.entry {
            let e = Unverified::<bbsync_protocol::EnvelopeEntry>::decode(e)?
                .verify(|w| *w == src.instance_id())?;
            assert_eq!(e.recipient, dst.instance_id());
            assert!(e.unwrap_key(dst.identity()).is_ok());
            assert!(e.unwrap_key(src.identity()).is_err());
        }
    }
    Ok(())
}

#[test]
fn blind_peer_holds_everything_and_reads_nothing() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Blind);
    src.import_bbs(&tree, &NoProgress)?;
    let (cp, _, _) = clone(&src, &dst, Role::Blind);
    assert_eq!(dst.root()?, (cp.count, cp.root));
    let report = dst.verify(true, &NoProgress)?;
    let undecryptable = report
        .problems
        .iter()
        .filter(|p| p.class == ProblemClass::Undecryptable)
        .count();
    assert!(undecryptable > 0);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.class == ProblemClass::Undecryptable),
        "{:?}",
        report.problems
    );
    let e = dst.export_bbs(&tmp.path().join("out"), &NoProgress)?;
    assert_eq!(e.objects, 0, "a blind copy exported something");
    Ok(())
}

#[test]
fn corrupt_chunk_is_rejected_and_never_stored() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let me = card_of(&dst).into_value();
    let ids: Vec<_> = src.raw_db().objects().map(|r| r.unwrap().0).collect();
    dst.accept_manifests(
        &src.instance_id(),
        src.serve_manifests(&ids, &me, Role::Full)?,
    )?;
    let missing = dst.missing_chunks()?;
    let mut chunks: Vec<(ChunkId, Vec<u8>)> = missing
        .iter()
        .map(|(id, _)| (*id, src.serve_chunk(id).unwrap()))
        .collect();
    let bad = chunks[0].0;
    chunks[0].1[20] ^= 0x01;
    let (_, _, rejected) = dst.accept_chunks(chunks)?;
    assert_eq!(rejected, vec![bad]);
    assert!(!dst.packs().contains(&bad));
    dst.complete_ready()?;
    assert_eq!(dst.missing_chunks()?, vec![(bad, missing[0].1)]);
    // From another (honest) source it arrives, and the clone completes.
    dst.accept_chunks(vec![(bad, src.serve_chunk(&bad)?)])?;
    dst.complete_ready()?;
    assert!(dst.missing_chunks()?.is_empty());
    assert!(dst.verify(true, &NoProgress)?.is_ok());
    Ok(())
}

#[test]
fn forged_manifests_and_entries_are_rejected() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let me = card_of(&dst).into_value();
    let ids: Vec<_> = src.raw_db().objects().map(|r| r.unwrap().0).collect();
    let mut served = src.serve_manifests(&ids, &me, Role::Full)?;
    // 1. a manifest with a flipped signature byte;
    let n = served[0].manifest.len();
    served[0].manifest[n - 3] ^= 0x10;
    // 2. a manifest by an instance nobody trusts;
    let mallory = Identity::generate("mallory", 0)?;
    let forged = Signed::sign(
        &mallory,
        Manifest {
            format: bbsync_protocol::manifest::MANIFEST_FORMAT,
            object_id: bbsync_protocol::ObjectId::random(),
            version: 1,
            kind: "message".into(),
            name: "general/evil".into(),
            owner: None,
            created_at_ms: 0,
            author: mallory.instance_id(),
            deleted: false,
            plaintext_len: 0,
            chunks: vec![],
            meta: None,
            key_commit: Some([0; 32]),
        },
    )?;
    served.push(Served {
        manifest: forged.bytes().to_vec(),
        entry: None,
    });
    // 3. an entry wrapped by mallory for the clone.
    let victim = served[1].clone();
    let m = Unverified::<Manifest>::decode(&victim.manifest)?.dangerously_assume_verified();
    let evil_entry = bbsync_protocol::wrap_content_key(
        &mallory,
        m.object_id,
        m.version,
        dst.instance_id(),
        &dst.identity().x25519_public(),
        &bbsync_protocol::ContentKey::generate(),
    )?;
    served[1].entry = Some(serde_bytes::ByteBuf::from(evil_entry.bytes().to_vec()));
    // 4. an entry with a flipped signature byte (the entries are checked in
    //    batches: the bad one must be named, the rest of its batch kept).
    let k = served
        .iter()
        .rposition(|s| s.entry.is_some())
        .expect("an entry");
    assert!(k > 1);
    let raw = served[k].entry.as_mut().expect("entry");
    let n = raw.len();
    raw[n - 5] ^= 0x01;
    let report = dst.accept_manifests(&src.instance_id(), served.clone())?;
    assert_eq!(report.rejected.len(), 4, "{:?}", report.rejected);
    assert_eq!(report.recorded.len(), served.len() - 4);
    assert!(dst.resolve("message:general/evil").is_err());
    Ok(())
}

#[test]
fn excluded_owners_are_never_served() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let src_dir = src.dir().to_path_buf();
    drop(src);
    fs::write(
        src_dir.join("config.toml"),
        "exclude_owners = [\"sysop\"]\ncompression_level = 1\n",
    )?;
    let src = Store::open(&src_dir)?;
    let (cp, _, _) = clone(&src, &dst, Role::Full);
    assert_eq!(dst.root()?, (cp.count, cp.root));
    assert!(dst.resolve("applet-data:lord/sysop").is_err());
    assert!(dst.resolve("applet-data:lord/alice").is_ok());
    // Asking for it by id gets nothing either.
    let sysop = src.resolve("applet-data:lord/sysop")?;
    let served = src.serve_manifests(&[sysop], &card_of(&dst).into_value(), Role::Full)?;
    assert!(served.is_empty());
    Ok(())
}

#[test]
fn interrupted_clone_resumes_without_refetching() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    let me = card_of(&dst).into_value();
    let ids: Vec<_> = src.raw_db().objects().map(|r| r.unwrap().0).collect();
    dst.accept_manifests(
        &src.instance_id(),
        src.serve_manifests(&ids, &me, Role::Full)?,
    )?;
    let missing = dst.missing_chunks()?;
    let half = missing.len() / 2;
    let first: Vec<_> = missing[..half]
        .iter()
        .map(|(id, _)| (*id, src.serve_chunk(id).unwrap()))
        .collect();
    dst.accept_chunks(first)?;
    dst.complete_ready()?;
    // "Restart": what is left to fetch is exactly the other half.
    let left: Vec<_> = dst
        .missing_chunks()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let expect: Vec<_> = missing[half..].iter().map(|(id, _)| *id).collect();
    assert_eq!(left.len(), expect.len());
    assert!(left.iter().all(|id| expect.contains(id)));
    let (_, _, stored) = clone(&src, &dst, Role::Full);
    assert_eq!(stored as usize, expect.len());
    assert!(dst.verify(true, &NoProgress)?.is_ok());
    Ok(())
}

#[test]
fn newer_versions_replace_older_and_tombstones_arrive() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    mini_bbs(&tree);
    let (src, dst) = pair(tmp.path(), Role::Full);
    src.import_bbs(&tree, &NoProgress)?;
    clone(&src, &dst, Role::Full);
    write(
        &tree,
        "boards/general/1.json",
        b"{\"id\":1,\"edited\":true}",
    );
    fs::remove_file(tree.join("boards/general/2.json"))?;
    src.import_bbs(&tree, &NoProgress)?;
    let (cp, reports, _) = clone(&src, &dst, Role::Full);
    let recorded: usize = reports.iter().map(|r| r.recorded.len()).sum();
    assert_eq!(recorded, 2);
    assert_eq!(dst.root()?, (cp.count, cp.root));
    let out = tmp.path().join("out");
    dst.export_bbs(&out, &NoProgress)?;
    assert_eq!(snapshot(&tree), snapshot(&out));
    // An older version sent again is ignored.
    let id = src.resolve("message:general/1")?;
    let current = dst.state(&id)?.version;
    let report = dst.accept_manifests(
        &src.instance_id(),
        src.serve_manifests(&[id], &card_of(&dst).into_value(), Role::Full)?,
    )?;
    assert_eq!((report.already, report.recorded.len()), (1, 0));
    assert_eq!(dst.state(&id)?.version, current);
    Ok(())
}
