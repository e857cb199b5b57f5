//! `rekey`: entries follow the trust table (added for new `full`
//! instances, dropped for removed ones, idempotent), and `--rotate` makes
//! the next versions unreadable to a removed instance while every trusted
//! one still reads everything.
#![allow(clippy::unwrap_used)]

use crate::common;
use bbsync_store::test_hooks::Tamper;

use crate::common::{noise, snapshot, write};
use bbsync_protocol::{
    ChunkCipher, ContentKey, EnvelopeEntry, InstanceId, ObjectId, Role, Signed, Unverified,
    card_to_string,
};
use bbsync_store::{Store, progress::NoProgress, rekey::RekeyOptions};

type R = Result<(), Box<dyn std::error::Error>>;

fn tree(root: &std::path::Path) {
    write(root, "config/bbs.toml", b"name = \"rekey\"\n");
    write(root, "boards/general/1.json", b"{\"id\":1}");
    write(root, "boards/general/2.json", b"{\"id\":2}");
    write(root, "files/big.bin", &noise(7, 300_000));
}

fn trust(on: &Store, whom: &Store) {
    on.trust_add(&card_to_string(&whom.card().unwrap()), Role::Full)
        .unwrap();
}

/// The entry of `who` in `owner`'s stored envelope of `id`, checked as
/// `who` would (signed by `owner`), if any.
fn entry_for(owner: &Store, id: &ObjectId, who: &Store) -> Option<Signed<EnvelopeEntry>> {
    let rec = owner.raw_db().record(id).unwrap().unwrap();
    let owner_id: InstanceId = owner.instance_id();
    rec.envelope.iter().find_map(|raw| {
        let u = Unverified::<EnvelopeEntry>::decode(raw).ok()?;
        if u.claimed().recipient != who.instance_id() {
            return None;
        }
        u.verify(|w| *w == owner_id).ok()
    })
}

fn live_ids(s: &Store) -> Vec<ObjectId> {
    s.raw_db()
        .objects()
        .map(|r| r.unwrap())
        .filter(|(_, st)| !st.deleted)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn entries_follow_the_trust_table_and_rotate_locks_out_a_removed_instance() -> R {
    let tmp = common::tempdir()?;
    let t = tmp.path().join("tree");
    tree(&t);
    let a = Store::init(&tmp.path().join("a"), "owner")?;
    let b = Store::init(&tmp.path().join("b"), "newcomer")?;
    let c = Store::init(&tmp.path().join("c"), "partner")?;
    trust(&a, &c);
    a.import_bbs(&t, &NoProgress)?;
    let ids = live_ids(&a);
    assert!(ids.iter().all(|id| entry_for(&a, id, &b).is_none()));

    // A newly trusted instance gets an entry on every object it can open.
    trust(&a, &b);
    let dry = a.rekey(
        &[],
        RekeyOptions {
            dry_run: true,
            ..Default::default()
        },
        &NoProgress,
    )?;
    assert_eq!(dry.entries_added as usize, ids.len());
    assert!(
        ids.iter().all(|id| entry_for(&a, id, &b).is_none()),
        "dry run wrote"
    );
    let r = a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    assert_eq!(r.entries_added as usize, ids.len());
    assert_eq!(r.entries_dropped, 0);
    let mut old_keys: Vec<(ObjectId, ContentKey)> = Vec::new();
    for id in &ids {
        let e = entry_for(&a, id, &b).expect("an entry for the newcomer");
        let m = a.manifest(id)?;
        let key = b.unwrap_for(&m, &e)?;
        assert_eq!(key.as_bytes(), a.content_key(&m)?.as_bytes());
        old_keys.push((*id, key));
    }
    // Idempotent.
    let again = a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    assert!(again.changed.is_empty(), "{again:?}");
    assert!(a.verify(true, &NoProgress)?.is_ok());

    // Removed: its entries go, and the report says what it could read.
    a.trust_remove(&b.instance_id())?;
    let before = snapshot(&tmp.path().join("a/packs"));
    let r = a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    assert_eq!(r.entries_dropped as usize, ids.len());
    assert_eq!(r.exposed.len(), ids.len());
    assert!(ids.iter().all(|id| entry_for(&a, id, &b).is_none()));
    assert_eq!(
        before,
        snapshot(&tmp.path().join("a/packs")),
        "no content changed"
    );

    // Rotation: trust again, hand out entries, remove, rotate.
    trust(&a, &b);
    a.rekey(&[], RekeyOptions::default(), &NoProgress)?;
    a.trust_remove(&b.instance_id())?;
    let r = a.rekey(
        &[],
        RekeyOptions {
            rotate: true,
            ..Default::default()
        },
        &NoProgress,
    )?;
    assert_eq!(r.rotated.len(), ids.len(), "{r:?}");
    assert_eq!(r.exposed.len(), ids.len());
    for (id, old) in &old_keys {
        let m = a.manifest(id)?;
        assert_eq!(m.version, 2, "a rotation is a new version");
        assert!(
            entry_for(&a, id, &b).is_none(),
            "the removed instance has an entry"
        );
        // The old key opens none of the new chunks...
        let old_cipher = ChunkCipher::new(old);
        for c in &m.chunks {
            let stored = a.packs().read(&c.id)?;
            assert!(
                old_cipher.open(&c.id, &stored).is_err(),
                "old key opens a new chunk"
            );
        }
        // ... while the trusted partner reads the new version.
        let e = entry_for(&a, id, &c).expect("an entry for the partner");
        let key = c.unwrap_for(&m, &e)?;
        let cipher = ChunkCipher::new(&key);
        for ch in &m.chunks {
            cipher.open(&ch.id, &a.packs().read(&ch.id)?)?;
        }
    }
    assert!(a.verify(true, &NoProgress)?.is_ok());
    let out = tmp.path().join("out");
    a.export_bbs(&out, &NoProgress)?;
    assert_eq!(snapshot(&t), snapshot(&out));
    // Nothing left to do.
    let r = a.rekey(
        &[],
        RekeyOptions {
            rotate: true,
            ..Default::default()
        },
        &NoProgress,
    )?;
    assert!(r.changed.is_empty() && r.rotated.is_empty(), "{r:?}");
    Ok(())
}
