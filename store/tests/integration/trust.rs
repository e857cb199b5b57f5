//! Trust boundaries of the store (issue 10): what a trusted peer's
//! manifests and entries cannot do any more, each with the exact reason the
//! store gives. Items: 2 (key commitment, rekey keeps only verified
//! entries), 7 (versions near u64::MAX, a name taken over), 10 (excluded
//! owners' keys stay on this node).
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{fs, path::Path};

use bbsync_protocol::{
    ContentKey, EnvelopeEntry, Identity, Manifest, ObjectId, Role, Signed, SignedBody, Unverified,
    card_to_string, encoding, key_commitment, manifest::MAX_VERSION, wrap_content_key,
};
use bbsync_store::{Store, progress::NoProgress, rekey::RekeyOptions, sync::Served};

use crate::common::write;

type R = Result<(), Box<dyn std::error::Error>>;

fn tree(root: &Path) {
    write(root, "config/bbs.toml", b"name = \"Trust BBS\"\n");
    write(root, "boards/general/1.json", b"{\"id\":1}");
    write(root, "boards/general/2.json", b"{\"id\":2}");
    write(root, "data/lord/alice/save.json", b"{\"gold\": 5}");
    write(root, "data/lord/sysop/save.json", b"{\"gold\": 999999}");
}

/// `a` trusts `b` full and the other way round; `b` holds the tree and `a`
/// a clone of it (manifests, keys and chunks).
fn cloned(tmp: &Path) -> (Store, Store) {
    let a = Store::init(&tmp.join("a"), "alpha").unwrap();
    let b = Store::init(&tmp.join("b"), "beta").unwrap();
    a.trust_add(&card_to_string(&b.card().unwrap()), Role::Full)
        .unwrap();
    b.trust_add(&card_to_string(&a.card().unwrap()), Role::Full)
        .unwrap();
    let t = tmp.join("tree");
    tree(&t);
    b.import_bbs(&t, &NoProgress).unwrap();
    let ids: Vec<ObjectId> = b.raw_db().objects().map(|r| r.unwrap().0).collect();
    let served = b
        .serve_manifests(&ids, &a.card().unwrap().into_value(), Role::Full)
        .unwrap();
    let r = a.accept_manifests(&b.instance_id(), served).unwrap();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let chunks: Vec<_> = a
        .missing_chunks()
        .unwrap()
        .into_iter()
        .map(|(id, _)| (id, b.serve_chunk(&id).unwrap()))
        .collect();
    a.accept_chunks(chunks).unwrap();
    a.complete_ready().unwrap();
    (a, b)
}

/// The wire bytes of `body` under `sig` (the postcard wrapper by hand).
fn wire(body: &[u8], sig: &[u8; 64]) -> Vec<u8> {
    let mut out = encoding::encode(&1u16);
    out.extend(encoding::encode(&(body.len() as u64)));
    out.extend_from_slice(body);
    out.push(64);
    out.extend_from_slice(sig);
    out
}

/// Signs a manifest body by hand, skipping the format rules: what a
/// trusted but hostile author can send.
fn sign_by_hand(who: &Identity, m: &Manifest) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let body = encoding::encode(m);
    let key = ed25519_dalek::SigningKey::from_bytes(&who.ed25519_secret());
    let msg = [<Manifest as SignedBody>::DOMAIN, &body[..]].concat();
    wire(&body, &key.sign(&msg).to_bytes())
}

/// An entry for `to` wrapping `key`, claiming `claimed` as its wrapper but
/// signed by nobody who could (what a writer of a backup directory can
/// make from public keys alone).
fn forged_entry(
    to: &Store,
    m: &Manifest,
    claimed: bbsync_protocol::InstanceId,
    key: &ContentKey,
) -> Vec<u8> {
    let mallory = Identity::generate("mallory", 0).unwrap();
    let e = wrap_content_key(
        &mallory,
        m.object_id,
        m.version,
        to.instance_id(),
        &to.identity().x25519_public(),
        key,
    )
    .unwrap();
    let mut v: EnvelopeEntry = e.value().clone();
    v.wrapped_by = claimed;
    let sig: [u8; 64] = e.bytes()[e.bytes().len() - 64..].try_into().unwrap();
    wire(&encoding::encode(&v), &sig)
}

fn served(manifest: Vec<u8>, entry: Option<Vec<u8>>) -> Served {
    Served {
        manifest,
        entry: entry.map(serde_bytes::ByteBuf::from),
    }
}

#[test]
fn a_manifest_at_u64_max_is_refused() -> R {
    let tmp = tempfile::tempdir()?;
    let (a, b) = cloned(tmp.path());
    let id = b.resolve("message:general/1")?;
    let (m, key) = b.manifest_and_key(&id)?;
    let mut evil = m.value().clone();
    evil.version = u64::MAX;
    let entry = wrap_content_key(
        b.identity(),
        id,
        1, // (an entry cannot name u64::MAX either)
        a.instance_id(),
        &a.identity().x25519_public(),
        &key,
    )?;
    let r = a.accept_manifests(
        &b.instance_id(),
        vec![served(
            sign_by_hand(b.identity(), &evil),
            Some(entry.bytes().to_vec()),
        )],
    )?;
    assert!(r.recorded.is_empty(), "{r:?}");
    assert_eq!(
        r.rejected,
        vec![(
            "manifest".to_string(),
            format!(
                "invalid manifest: version 18446744073709551615 is above the highest allowed ({MAX_VERSION})"
            )
        )]
    );
    // The object is as it was, and the next local change gets version 2.
    assert_eq!(a.state(&id)?.version, 1);
    let f = tmp.path().join("post.json");
    fs::write(&f, b"{\"id\":1,\"edited\":true}")?;
    a.import_path(&f, "message", "general/1", None, &NoProgress)?;
    assert_eq!(a.state(&id)?.version, 2);
    Ok(())
}

#[test]
fn an_object_at_the_last_version_is_reported_and_the_rest_imported() -> R {
    let tmp = tempfile::tempdir()?;
    let (a, b) = cloned(tmp.path());
    let id = b.resolve("message:general/1")?;
    let (m, key) = b.manifest_and_key(&id)?;
    let last = Signed::sign(
        b.identity(),
        Manifest {
            version: MAX_VERSION,
            ..m.value().clone()
        },
    )?;
    let entry = wrap_content_key(
        b.identity(),
        id,
        MAX_VERSION,
        a.instance_id(),
        &a.identity().x25519_public(),
        &key,
    )?;
    let r = a.accept_manifests(
        &b.instance_id(),
        vec![served(last.bytes().to_vec(), Some(entry.bytes().to_vec()))],
    )?;
    assert_eq!(r.recorded, vec![id], "{r:?}");
    // The tree changes that object and adds one: the new one is imported,
    // the one at the last version is reported by name.
    let t = tmp.path().join("tree");
    write(&t, "boards/general/1.json", b"{\"id\":1,\"edited\":true}");
    write(&t, "boards/general/3.json", b"{\"id\":3}");
    let stats = a.import_bbs(&t, &NoProgress)?;
    assert_eq!(stats.new, 1, "{stats:?}");
    assert_eq!(
        stats.stuck,
        vec![(
            "message:general/1".to_string(),
            format!(
                "at version {MAX_VERSION}, the highest there is (written by instance {}): it cannot change any more",
                b.instance_id().short()
            )
        )]
    );
    assert_eq!(a.state(&id)?.version, MAX_VERSION);
    assert!(a.resolve("message:general/3").is_ok());
    Ok(())
}

#[test]
fn a_new_object_cannot_take_a_live_name() -> R {
    let tmp = tempfile::tempdir()?;
    let (a, b) = cloned(tmp.path());
    let held = a.resolve("message:general/2")?;
    // b signs a fresh object (new id) under the same kind:name.
    let (m, _) = b.manifest_and_key(&held)?;
    let key = ContentKey::generate();
    let other = ObjectId::random();
    let takeover = Signed::sign(
        b.identity(),
        Manifest {
            object_id: other,
            key_commit: Some(key_commitment(&key, &other)),
            ..m.value().clone()
        },
    )?;
    let entry = wrap_content_key(
        b.identity(),
        other,
        m.version,
        a.instance_id(),
        &a.identity().x25519_public(),
        &key,
    )?;
    let r = a.accept_manifests(
        &b.instance_id(),
        vec![served(
            takeover.bytes().to_vec(),
            Some(entry.bytes().to_vec()),
        )],
    )?;
    assert!(r.recorded.is_empty(), "{r:?}");
    assert_eq!(
        r.rejected,
        vec![(
            "message:general/2".to_string(),
            format!(
                "another object already has the name message:general/2 here (object {}); the name stays with it",
                held.short()
            )
        )]
    );
    assert_eq!(a.resolve("message:general/2")?, held);
    assert!(a.state(&other).is_err());
    Ok(())
}

#[test]
fn a_substituted_key_is_refused_by_the_key_commitment() -> R {
    let tmp = tempfile::tempdir()?;
    let (a, b) = cloned(tmp.path());
    let id = b.resolve("message:general/1")?;
    // A new version on b; b (trusted full, so a valid wrapper) hands a an
    // entry for a key of its choosing instead of the object's.
    let t = tmp.path().join("tree");
    write(&t, "boards/general/1.json", b"{\"id\":1,\"v\":2}");
    b.import_bbs(&t, &NoProgress)?;
    let m = b.manifest(&id)?;
    assert_eq!(m.version, 2);
    let chosen = ContentKey::generate();
    let entry = wrap_content_key(
        b.identity(),
        id,
        2,
        a.instance_id(),
        &a.identity().x25519_public(),
        &chosen,
    )?;
    let r = a.accept_manifests(
        &b.instance_id(),
        vec![served(m.bytes().to_vec(), Some(entry.bytes().to_vec()))],
    )?;
    assert!(r.recorded.is_empty(), "{r:?}");
    assert_eq!(
        r.rejected,
        vec![(
            "message:general/1".to_string(),
            format!(
                "envelope entry of {}: content key of object {} version 2 does not match the manifest's key commitment",
                id.short(),
                id.short()
            )
        )]
    );
    assert_eq!(a.state(&id)?.version, 1);
    Ok(())
}

#[test]
fn rekey_keeps_only_entries_whose_signatures_verify() -> R {
    let tmp = tempfile::tempdir()?;
    let a = Store::init(&tmp.path().join("a"), "alpha")?;
    let t = tmp.path().join("tree");
    tree(&t);
    a.import_bbs(&t, &NoProgress)?;
    let id = a.resolve("message:general/1")?;
    let (m, key) = a.manifest_and_key(&id)?;
    // An unsigned entry placed first, claiming the author as wrapper and
    // wrapping a key the attacker chose.
    let chosen = ContentKey::generate();
    let forged = forged_entry(&a, &m, a.instance_id(), &chosen);
    a.dangerously_edit_record(&id, |r| {
        r.envelope
            .insert(0, serde_bytes::ByteBuf::from(forged.clone()))
    })?;
    let r = a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    assert_eq!(r.entries_dropped, 1, "{r:?}");
    let rec = a.raw_db().record(&id)?.unwrap();
    assert!(
        rec.envelope.iter().all(|e| e.as_ref() != forged.as_slice()),
        "the forged entry is still recorded"
    );
    assert_eq!(a.content_key(&m)?.as_bytes(), key.as_bytes());
    assert!(a.verify(true, &NoProgress)?.is_ok());
    Ok(())
}

#[test]
fn excluded_owners_are_wrapped_for_this_instance_only() -> R {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a");
    let a = Store::init(&dir, "alpha")?;
    let b = Store::init(&tmp.path().join("b"), "beta")?;
    a.trust_add(&card_to_string(&b.card()?), Role::Full)?;
    drop(a);
    fs::write(
        dir.join("config.toml"),
        "exclude_owners = [\"sysop\"]\ncompression_level = 1\n",
    )?;
    let a = Store::open(&dir)?;
    let t = tmp.path().join("tree");
    tree(&t);
    a.import_bbs(&t, &NoProgress)?;
    let recipients = |spec: &str| -> Vec<_> {
        let id = a.resolve(spec).unwrap();
        a.raw_db()
            .record(&id)
            .unwrap()
            .unwrap()
            .envelope
            .iter()
            .map(|e| {
                Unverified::<EnvelopeEntry>::decode(e)
                    .unwrap()
                    .claimed()
                    .recipient
            })
            .collect()
    };
    assert_eq!(
        recipients("applet-data:lord/sysop"),
        vec![a.instance_id()],
        "an excluded owner's key went to a peer"
    );
    assert_eq!(
        recipients("applet-data:lord/alice"),
        vec![a.instance_id(), b.instance_id()]
    );
    // rekey keeps it so.
    a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    assert_eq!(recipients("applet-data:lord/sysop"), vec![a.instance_id()]);
    Ok(())
}
