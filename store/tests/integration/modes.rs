//! File modes (issue 18): kept by import, carried by sync, set by export;
//! setuid, setgid and sticky never kept; a chmod alone a new version;
//! objects written before modes were kept (format-1 meta, version-1
//! archive) still verify and export.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use bbsync_protocol::{
    ChunkCipher, ChunkRef, Compression, ContentKey, Manifest, ObjectId, ObjectMeta, Role, Shape,
    Signed, card_to_string, wrap_content_key,
};
use bbsync_store::{Store, progress::NoProgress, sync::Served};

use crate::common;

use crate::common::{snapshot, write};

type R = Result<(), Box<dyn std::error::Error>>;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A tree with files and directories of many modes; returns the paths whose
/// mode must come back exactly, with that mode.
fn tree_with_modes(root: &Path) -> Vec<(&'static str, u32)> {
    write(root, "config/bbs.toml", b"name = \"Modes BBS\"\n");
    write(root, "config/secret.toml", b"password = \"x\"\n");
    write(root, "boards/general/1.json", b"{\"id\":1}\n");
    write(root, "files/run.sh", b"#!/bin/sh\necho hi\n");
    write(root, "files/suid", b"not really a program\n");
    write(root, "applets/lord/main.lua", b"print('lord')\n");
    write(root, "applets/lord/bin/tool", b"tool\n");
    write(root, "applets/lord/private/key", b"k\n");
    fs::create_dir_all(root.join("applets/lord/open")).unwrap();
    let modes = vec![
        ("config/bbs.toml", 0o644),
        ("config/secret.toml", 0o600),
        ("boards/general/1.json", 0o640),
        ("files/run.sh", 0o755),
        ("applets/lord", 0o750),
        ("applets/lord/main.lua", 0o640),
        ("applets/lord/bin", 0o755),
        ("applets/lord/bin/tool", 0o711),
        ("applets/lord/private", 0o700),
        ("applets/lord/private/key", 0o400),
        ("applets/lord/open", 0o777),
    ];
    for (p, m) in &modes {
        chmod(&root.join(p), *m);
    }
    // Setuid, setgid and sticky: never kept.
    chmod(&root.join("files/suid"), 0o6755);
    modes
}

fn check_modes(out: &Path, modes: &[(&str, u32)]) {
    for (p, m) in modes {
        assert_eq!(
            mode_of(&out.join(p)),
            *m,
            "mode of {p} in {}",
            out.display()
        );
    }
    assert_eq!(
        mode_of(&out.join("files/suid")),
        0o755,
        "setuid/setgid kept"
    );
}

fn pair(tmp: &Path) -> (Store, Store) {
    let src = Store::init(&tmp.join("src"), "source").unwrap();
    let dst = Store::init(&tmp.join("dst"), "clone").unwrap();
    src.trust_add(&card_to_string(&dst.card().unwrap()), Role::Full)
        .unwrap();
    dst.trust_add(&card_to_string(&src.card().unwrap()), Role::Full)
        .unwrap();
    (src, dst)
}

/// Everything `src` has, into `dst` (what a clone does, without the network).
fn sync(src: &Store, dst: &Store) {
    let me = dst.card().unwrap().into_value();
    let ids: Vec<ObjectId> = src.raw_db().objects().map(|r| r.unwrap().0).collect();
    let served = src.serve_manifests(&ids, &me, Role::Full).unwrap();
    let acc = dst.accept_manifests(&src.instance_id(), served).unwrap();
    assert!(acc.rejected.is_empty(), "{:?}", acc.rejected);
    let chunks = dst
        .missing_chunks()
        .unwrap()
        .iter()
        .map(|(id, _)| (*id, src.serve_chunk(id).unwrap()))
        .collect();
    let (_, _, rejected) = dst.accept_chunks(chunks).unwrap();
    assert!(rejected.is_empty());
    dst.complete_ready().unwrap();
}

#[test]
fn modes_survive_import_sync_and_export_without_setuid() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    let modes = tree_with_modes(&tree);
    let (src, dst) = pair(tmp.path());
    src.import_bbs(&tree, &NoProgress)?;
    let out = tmp.path().join("out");
    let e = src.export_bbs(&out, &NoProgress)?;
    assert!(e.failed.is_empty(), "{:?}", e.failed);
    assert_eq!(snapshot(&tree), snapshot(&out));
    check_modes(&out, &modes);
    // A peer gets the modes with the objects.
    sync(&src, &dst);
    assert!(dst.verify(true, &NoProgress)?.is_ok());
    let out2 = tmp.path().join("out2");
    assert!(dst.export_bbs(&out2, &NoProgress)?.failed.is_empty());
    check_modes(&out2, &modes);
    // One object alone, file and directory.
    let one = tmp.path().join("one");
    fs::create_dir(&one)?;
    dst.export_object(&dst.resolve("config:secret.toml")?, &one)?;
    assert_eq!(mode_of(&one.join("secret.toml")), 0o600);
    let dir = tmp.path().join("lord");
    dst.export_object(&dst.resolve("applet:lord")?, &dir)?;
    assert_eq!(mode_of(&dir), 0o750);
    assert_eq!(mode_of(&dir.join("private/key")), 0o400);
    Ok(())
}

#[test]
fn a_chmod_alone_is_a_new_version() -> R {
    let tmp = common::tempdir()?;
    let tree = tmp.path().join("tree");
    tree_with_modes(&tree);
    let (src, _) = pair(tmp.path());
    let first = src.import_bbs(&tree, &NoProgress)?;
    assert_eq!(first.changed, 0);
    // Unchanged: nothing.
    let again = src.import_bbs(&tree, &NoProgress)?;
    assert_eq!((again.changed, again.new), (0, 0));
    // A file's mode, and the mode of a file inside a directory object.
    chmod(&tree.join("boards/general/1.json"), 0o600);
    chmod(&tree.join("applets/lord/main.lua"), 0o755);
    let s = src.import_bbs(&tree, &NoProgress)?;
    assert_eq!(s.changed, 2, "{s:?}");
    assert_eq!(
        s.chunks_written, 1,
        "only the archive (with its modes) changed: {s:?}"
    );
    let st = src.state(&src.resolve("message:general/1")?)?;
    assert_eq!(st.version, 2);
    // The root of a directory object.
    chmod(&tree.join("applets/lord"), 0o700);
    assert_eq!(src.import_bbs(&tree, &NoProgress)?.changed, 1);
    let out = tmp.path().join("out");
    assert!(src.export_bbs(&out, &NoProgress)?.failed.is_empty());
    assert_eq!(mode_of(&out.join("boards/general/1.json")), 0o600);
    assert_eq!(mode_of(&out.join("applets/lord/main.lua")), 0o755);
    assert_eq!(mode_of(&out.join("applets/lord")), 0o700);
    // Back and forth: each a version.
    chmod(&tree.join("boards/general/1.json"), 0o640);
    assert_eq!(src.import_bbs(&tree, &NoProgress)?.changed, 1);
    assert_eq!(src.state(&src.resolve("message:general/1")?)?.version, 3);
    Ok(())
}

/// A version-1 directory archive (no modes), built by hand.
fn archive_v1(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut a = b"BBDIR\0".to_vec();
    a.extend_from_slice(&1u16.to_be_bytes());
    for (path, data) in entries {
        a.push(if data.is_some() { 2 } else { 1 });
        a.extend_from_slice(&(path.len() as u16).to_be_bytes());
        a.extend_from_slice(path.as_bytes());
        if let Some(d) = data {
            a.extend_from_slice(&(d.len() as u64).to_be_bytes());
            a.extend_from_slice(d);
        }
    }
    a.push(0);
    a
}

/// What a node before modes (and before key commitments) wrote: a
/// format-1 manifest whose meta is format 1, signed by `author` and
/// wrapped for `to`.
fn old_object(
    author: &Store,
    to: &Store,
    kind: &str,
    name: &str,
    shape: Shape,
    plain: &[u8],
) -> (Served, Vec<(bbsync_protocol::ChunkId, Vec<u8>)>) {
    let key = ContentKey::generate();
    let cipher = ChunkCipher::new(&key);
    let sealed = cipher.seal(plain, Compression::None).unwrap();
    let meta = ObjectMeta {
        format: 1,
        shape,
        mode: None,
    };
    let object_id = ObjectId::random();
    let m = Signed::sign(
        author.identity(),
        Manifest {
            format: 1,
            object_id,
            version: 1,
            kind: kind.into(),
            name: name.into(),
            owner: None,
            created_at_ms: 1,
            author: author.instance_id(),
            deleted: false,
            plaintext_len: plain.len() as u64,
            chunks: vec![ChunkRef {
                id: sealed.id,
                len: sealed.bytes.len() as u32,
            }],
            meta: Some(cipher.seal_meta(&meta.encode()).unwrap()),
            key_commit: None,
        },
    )
    .unwrap();
    let entry = wrap_content_key(
        author.identity(),
        object_id,
        1,
        to.instance_id(),
        &to.identity().x25519_public(),
        &key,
    )
    .unwrap();
    (
        Served {
            manifest: m.bytes().to_vec(),
            entry: Some(serde_bytes::ByteBuf::from(entry.bytes().to_vec())),
        },
        vec![(sealed.id, sealed.bytes)],
    )
}

#[test]
fn objects_from_before_modes_verify_and_export_as_before() -> R {
    let tmp = common::tempdir()?;
    let (src, dst) = pair(tmp.path());
    let archive = archive_v1(&[
        ("a.txt", Some(b"old applet\n")),
        ("sub", None),
        ("sub/b.txt", Some(b"")),
    ]);
    let (d, dc) = old_object(&src, &dst, "applet", "old", Shape::Dir, &archive);
    let (f, fc) = old_object(
        &src,
        &dst,
        "message",
        "general/9",
        Shape::File,
        b"old post\n",
    );
    let acc = dst.accept_manifests(&src.instance_id(), vec![d, f])?;
    assert!(acc.rejected.is_empty(), "{:?}", acc.rejected);
    let (_, _, rejected) = dst.accept_chunks(dc.into_iter().chain(fc).collect())?;
    assert!(rejected.is_empty());
    dst.complete_ready()?;
    let report = dst.verify(true, &NoProgress)?;
    assert!(report.is_ok(), "{report:?}");
    let out = tmp.path().join("out");
    let e = dst.export_bbs(&out, &NoProgress)?;
    assert!(e.failed.is_empty(), "{:?}", e.failed);
    let got = snapshot(&out);
    let want: Vec<(PathBuf, Option<Vec<u8>>)> = vec![
        ("applets".into(), None),
        ("applets/old".into(), None),
        ("applets/old/a.txt".into(), Some(b"old applet\n".to_vec())),
        ("applets/old/sub".into(), None),
        ("applets/old/sub/b.txt".into(), Some(Vec::new())),
        ("boards".into(), None),
        ("boards/general".into(), None),
        ("boards/general/9.json".into(), Some(b"old post\n".to_vec())),
    ];
    assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
    // Written with the umask, as before.
    let umask_file = {
        let probe = tmp.path().join("probe");
        fs::write(&probe, b"")?;
        mode_of(&probe)
    };
    assert_eq!(mode_of(&out.join("boards/general/9.json")), umask_file);
    assert_eq!(mode_of(&out.join("applets/old/a.txt")), umask_file);
    Ok(())
}
