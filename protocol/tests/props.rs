//! Property tests of `bbsync-protocol`: round trips, determinism, "any
//! flipped byte is rejected", wrong recipients and small-order keys, and
//! "no decoder panics on arbitrary input".
//!
//! Failing cases are recorded by proptest in `tests/props.proptest-regressions`;
//! commit that file when it appears.

#![allow(clippy::unwrap_used)]

mod common;

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Payload},
};
use bbsync_protocol::{
    Checkpoint, ChunkCipher, ChunkId, ChunkRef, Compression, ContentKey, EnvelopeEntry, Error,
    ErrorKind, Identity, InstanceCard, InstanceId, Manifest, ManifestId, ObjectId, ObjectMeta,
    Shape, Signed, SignedBody, Unverified, Unwrapper, WrapSession, card_from_str, card_to_string,
    chunk::{
        CHUNK_HEADER_LEN, CHUNK_MAX, CHUNK_MIN, MAX_STORED_CHUNK, TAG_LEN, chunk_ranges, chunker,
    },
    envelope::{wrap_content_key, wrap_content_key_with_ephemeral},
    identity::IDENTITY_MAGIC,
};
use common::*;
use proptest::{collection::vec, option, prelude::*, sample::Index};
use sha2::{Digest, Sha256};

/// The smallest sealed chunk (header and tag around no data).
const MIN_CHUNK_LEN: u32 = (CHUNK_HEADER_LEN + TAG_LEN) as u32;

fn decode_verify<T: SignedBody>(bytes: &[u8]) -> bbsync_protocol::Result<Signed<T>> {
    Unverified::<T>::decode(bytes)?.verify(|_| true)
}

fn identity_from(seed: [u8; 32]) -> Identity {
    let mut x = seed;
    x[0] ^= 0x55;
    Identity::from_secrets("prop", T0, seed, x).unwrap()
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Plaintexts: small arbitrary bytes, or up to ~300 KiB built from a seed in
/// one of four shapes (random, repeated text, half and half, low entropy).
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..2048),
        1 => (any::<u64>(), 0usize..=300 * 1024, 0u8..4).prop_map(|(seed, len, shape)| synth(seed, len, shape)),
    ]
}

fn synth(seed: u64, len: usize, shape: u8) -> Vec<u8> {
    match shape {
        0 => splitmix64_bytes(seed, len),
        1 => repeat_bytes(COMPRESSIBLE_TEXT.as_bytes(), len),
        2 => {
            let mut v = repeat_bytes(COMPRESSIBLE_TEXT.as_bytes(), len / 2);
            v.extend(splitmix64_bytes(seed, len - len / 2));
            v
        }
        _ => splitmix64_bytes(seed, len)
            .into_iter()
            .map(|b| b & 0x03)
            .collect(),
    }
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        (1i32..=3).prop_map(Compression::Zstd)
    ]
}

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["config", "applet", "applet-data", "message", "file"])
            .prop_map(String::from),
        "[a-z0-9-]{1,32}",
    ]
}

/// Names that pass validation: no control characters, 1.. bytes.
fn object_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9/._-]{1,60}", "\\PC{1,40}"]
}

fn manifest(author: InstanceId) -> impl Strategy<Value = Manifest> {
    (
        (
            any::<[u8; 16]>(),
            1..=bbsync_protocol::MAX_VERSION,
            kind(),
            object_name(),
            option::of(object_name()),
        ),
        (
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            vec(
                (any::<[u8; 32]>(), MIN_CHUNK_LEN..=MAX_STORED_CHUNK as u32),
                0..8,
            ),
            option::of(vec(any::<u8>(), 0..64)),
            any::<[u8; 32]>(),
        ),
    )
        .prop_map(
            move |(
                (oid, version, kind, name, owner),
                (created, deleted, plen, chunks, meta, commit),
            )| {
                Manifest {
                    format: 2,
                    object_id: ObjectId(oid),
                    version,
                    kind,
                    name,
                    owner,
                    created_at_ms: created,
                    author,
                    deleted,
                    plaintext_len: if deleted { 0 } else { plen },
                    chunks: if deleted {
                        vec![]
                    } else {
                        chunks
                            .into_iter()
                            .map(|(id, len)| ChunkRef {
                                id: ChunkId(id),
                                len,
                            })
                            .collect()
                    },
                    meta: if deleted { None } else { meta },
                    key_commit: if deleted { None } else { Some(commit) },
                }
            },
        )
}

fn addresses() -> impl Strategy<Value = Vec<String>> {
    vec(
        prop_oneof![
            "/ip4/[0-9.]{7,15}/tcp/[0-9]{1,5}",
            "/onion3/[a-z2-7]{56}:[0-9]{1,5}",
            "\\PC{1,30}"
        ],
        0..4,
    )
}

fn instance_name() -> impl Strategy<Value = String> {
    "\\PC{1,30}".prop_filter("at most 128 bytes", |s| s.len() <= 128)
}

/// A signed structure's wire bytes, from one of the four signed types.
fn any_signed_bytes() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let seed = any::<[u8; 32]>();
    prop_oneof![
        seed.prop_flat_map(|seed| {
            let id = identity_from(seed);
            manifest(id.instance_id()).prop_map(move |m| {
                (
                    "manifest",
                    Signed::sign(&identity_from(seed), m)
                        .unwrap()
                        .bytes()
                        .to_vec(),
                )
            })
        }),
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>(),
            1..=bbsync_protocol::MAX_VERSION,
            any::<[u8; 32]>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(w, r, oid, version, key, eph)| {
                let wrapper = identity_from(w);
                let recipient = identity_from(r);
                let e = wrap_content_key_with_ephemeral(
                    &wrapper,
                    ObjectId(oid),
                    version,
                    recipient.instance_id(),
                    &recipient.x25519_public(),
                    &ContentKey::from_bytes(key),
                    eph,
                )
                .unwrap();
                ("entry", e.bytes().to_vec())
            }),
        (
            any::<[u8; 32]>(),
            instance_name(),
            addresses(),
            any::<u64>()
        )
            .prop_map(|(seed, name, addrs, created)| {
                let id = Identity::from_secrets(&name, 0, seed, seed).unwrap();
                ("card", id.card(addrs, created).unwrap().bytes().to_vec())
            }),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>()
        )
            .prop_map(|(seed, seq, count, root, created)| {
                let id = identity_from(seed);
                let cp = Checkpoint {
                    format: 1,
                    instance: id.instance_id(),
                    seq,
                    count,
                    root,
                    created_at_ms: created,
                };
                (
                    "checkpoint",
                    Signed::sign(&id, cp).unwrap().bytes().to_vec(),
                )
            }),
    ]
}

/// Decodes and verifies `bytes` as the named type, trusting every signer.
fn decode_named(what: &str, bytes: &[u8]) -> Result<(), Error> {
    match what {
        "manifest" => decode_verify::<Manifest>(bytes).map(|_| ()),
        "entry" => decode_verify::<EnvelopeEntry>(bytes).map(|_| ()),
        "card" => decode_verify::<InstanceCard>(bytes).map(|_| ()),
        "checkpoint" => decode_verify::<Checkpoint>(bytes).map(|_| ()),
        other => panic!("unknown type {other}"),
    }
}

/// Runs every byte decoder on `bytes`; the point is that none panics.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_verify::<Manifest>(bytes);
    let _ = decode_verify::<EnvelopeEntry>(bytes);
    let _ = decode_verify::<InstanceCard>(bytes);
    let _ = decode_verify::<Checkpoint>(bytes);
    let _ = Identity::from_file_bytes(bytes);
    let cipher = ChunkCipher::new(&content_key());
    let _ = cipher.open_verified(bytes);
    let _ = cipher.open(&ChunkId::of(bytes), bytes);
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = card_from_str(s);
    }
}

// ---------------------------------------------------------------------------
// Chunks
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn seal_open_round_trip(pt in plaintext(), key in any::<[u8; 32]>(), comp in compression()) {
        let cipher = ChunkCipher::new(&ContentKey::from_bytes(key));
        let sealed = cipher.seal(&pt, comp).unwrap();
        prop_assert_eq!(sealed.id, ChunkId::of(&sealed.bytes));
        prop_assert_eq!(sealed.id.0.to_vec(), Sha256::digest(&sealed.bytes).to_vec());
        if sealed.bytes[1] == 0 {
            prop_assert_eq!(&sealed.bytes[2..14], &cipher.nonce_for(0, &pt)[..]);
        }
        prop_assert!(sealed.bytes.len() <= pt.len() + 30, "sealing never grows by more than header and tag");
        prop_assert!(sealed.bytes.len() <= MAX_STORED_CHUNK);
        prop_assert_eq!(cipher.open(&sealed.id, &sealed.bytes).unwrap(), pt.clone());
        prop_assert_eq!(cipher.open_verified(&sealed.bytes).unwrap(), pt.clone());
        // Deterministic: same plaintext, key and setting -> same chunk.
        let again = ChunkCipher::new(&ContentKey::from_bytes(key)).seal(&pt, comp).unwrap();
        prop_assert_eq!(&again, &sealed);
        // Uncompressed results do not depend on the setting.
        if sealed.bytes[1] == 0 {
            prop_assert_eq!(cipher.seal(&pt, Compression::None).unwrap(), sealed);
        }
    }

    /// One nonce, one message: two seals of a plaintext under one key share a
    /// nonce exactly when they are the same bytes, whatever the settings.
    #[test]
    fn one_nonce_one_message(pt in plaintext(), l1 in 0i32..=4, l2 in 0i32..=4) {
        let cipher = ChunkCipher::new(&content_key());
        let comp = |l: i32| if l == 0 { Compression::None } else { Compression::Zstd(l) };
        let a = cipher.seal(&pt, comp(l1)).unwrap();
        let b = cipher.seal(&pt, comp(l2)).unwrap();
        prop_assert_eq!(a.bytes[2..14] == b.bytes[2..14], a.bytes == b.bytes);
    }

    #[test]
    fn different_keys_give_different_chunks(pt in plaintext(), k1 in any::<[u8; 32]>(), k2 in any::<[u8; 32]>(), comp in compression()) {
        prop_assume!(k1 != k2);
        let c1 = ChunkCipher::new(&ContentKey::from_bytes(k1));
        let c2 = ChunkCipher::new(&ContentKey::from_bytes(k2));
        let s1 = c1.seal(&pt, comp).unwrap();
        let s2 = c2.seal(&pt, comp).unwrap();
        prop_assert_ne!(s1.id, s2.id);
        // And the other key cannot open it.
        prop_assert_eq!(c2.open(&s1.id, &s1.bytes).map_err(|e| e.kind()), Err(ErrorKind::Crypto));
    }

    #[test]
    fn flipped_chunk_byte_is_rejected(pt in plaintext(), comp in compression(), at in any::<Index>(), mask in 1u8..) {
        let cipher = ChunkCipher::new(&content_key());
        let sealed = cipher.seal(&pt, comp).unwrap();
        let i = at.index(sealed.bytes.len());
        let bad = flipped(&sealed.bytes, i, mask);
        let by_id = cipher.open(&sealed.id, &bad);
        prop_assert!(matches!(by_id, Err(Error::HashMismatch { .. })), "open: {:?}", by_id.map(|p| p.len()));
        match cipher.open_verified(&bad) {
            Ok(other) => prop_assert!(false, "byte {} ^ {:#04x} opened to {} bytes", i, mask, other.len()),
            Err(e) => prop_assert!(
                matches!(e.kind(), ErrorKind::Crypto | ErrorKind::Malformed | ErrorKind::UnsupportedFormat),
                "unexpected kind {:?}: {}", e.kind(), e
            ),
        }
    }

    #[test]
    fn truncated_chunk_is_rejected(pt in vec(any::<u8>(), 0..4096), comp in compression(), cut in any::<Index>()) {
        let cipher = ChunkCipher::new(&content_key());
        let sealed = cipher.seal(&pt, comp).unwrap();
        let short = &sealed.bytes[..cut.index(sealed.bytes.len())];
        prop_assert!(cipher.open_verified(short).is_err());
        prop_assert!(cipher.open(&sealed.id, short).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// FastCDC ranges cover the data in order, within the size bounds, and the
    /// streaming chunker cuts at the same places.
    #[test]
    fn chunk_ranges_cover_the_data(seed in any::<u64>(), len in 0usize..3 * 1024 * 1024, shape in 0u8..4) {
        let data = synth(seed, len, shape);
        let ranges = chunk_ranges(&data);
        prop_assert!(!ranges.is_empty());
        let mut pos = 0;
        for (i, r) in ranges.iter().enumerate() {
            prop_assert_eq!(r.start, pos);
            prop_assert!(r.len() <= CHUNK_MAX as usize);
            if i + 1 < ranges.len() {
                prop_assert!(r.len() >= CHUNK_MIN as usize);
            }
            pos = r.end;
        }
        prop_assert_eq!(pos, data.len());
        if !data.is_empty() {
            let streamed: Vec<Vec<u8>> = chunker(&data[..]).collect::<Result<_, _>>().unwrap();
            let sliced: Vec<Vec<u8>> = ranges.iter().map(|r| data[r.clone()].to_vec()).collect();
            prop_assert_eq!(streamed, sliced);
        }
    }
}

/// Regression: the synthetic nonce was once HMAC over the plaintext only,
/// while what is encrypted is the plaintext *or its zstd compression*,
/// depending on the compression setting (and on the zstd version). The same
/// plaintext sealed under the same key with two settings then reused one
/// nonce for two different messages. The nonce is now taken over
/// `flags || data`.
#[test]
fn a_nonce_is_never_reused_for_different_data() {
    let key = content_key_bytes();
    let cipher = ChunkCipher::new(&content_key());
    let pt = repeat_bytes(COMPRESSIBLE_TEXT.as_bytes(), 100 * 1024);
    let none = cipher.seal(&pt, Compression::None).unwrap();
    for level in [1, 3, 19] {
        let zstd = cipher.seal(&pt, Compression::Zstd(level)).unwrap();
        assert_ne!(none.bytes, zstd.bytes);
        if none.bytes[2..14] == zstd.bytes[2..14] {
            // Show what the reuse gives away: without the key, the xor of the two
            // ciphertexts is the xor of the raw and the compressed plaintext.
            let aad = [b"bbsync/chunk/v1".as_slice(), &[1]].concat();
            let data = Aes256Gcm::new(&key.into())
                .decrypt(
                    aes_gcm::Nonce::from_slice(&zstd.bytes[2..14]),
                    Payload {
                        msg: &zstd.bytes[14..],
                        aad: &aad,
                    },
                )
                .unwrap();
            let n = data.len();
            let leaked = (0..n).all(|i| none.bytes[14 + i] ^ zstd.bytes[14 + i] == pt[i] ^ data[i]);
            panic!(
                "zstd level {level}: nonce {} used for the raw and the compressed chunk; keystream reuse visible: {leaked}",
                hex::encode(&zstd.bytes[2..14])
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Meta blobs and local keys
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn meta_round_trip_and_any_flip_fails(
        meta in vec(any::<u8>(), 0..2048),
        key in any::<[u8; 32]>(),
        at in any::<Index>(),
        mask in 1u8..,
    ) {
        let cipher = ChunkCipher::new(&ContentKey::from_bytes(key));
        let sealed = cipher.seal_meta(&meta).unwrap();
        prop_assert_eq!(sealed.len(), meta.len() + 12 + 16);
        prop_assert_eq!(&cipher.seal_meta(&meta).unwrap(), &sealed, "deterministic");
        prop_assert_eq!(cipher.open_meta(&sealed).unwrap(), meta.clone());
        let i = at.index(sealed.len());
        let e = cipher.open_meta(&flipped(&sealed, i, mask)).unwrap_err();
        prop_assert_eq!(e.kind(), ErrorKind::Crypto);
        // Domain separation: a meta nonce is never the chunk nonce of the same bytes.
        prop_assert_ne!(&sealed[..12], &cipher.nonce_for(0, &meta)[..]);
        // Chunks and meta blobs do not open as each other.
        let chunk = cipher.seal(&meta, Compression::None).unwrap();
        prop_assert!(cipher.open_meta(&chunk.bytes).is_err());
        prop_assert!(cipher.open_verified(&[&[1, 0][..], &sealed].concat()).is_err());
    }

    #[test]
    fn meta_decoders_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        let _ = ChunkCipher::new(&content_key()).open_meta(&bytes);
        let _ = ObjectMeta::decode(&bytes);
    }

    #[test]
    fn object_meta_round_trip(dir in any::<bool>()) {
        let meta = ObjectMeta { format: 1, shape: if dir { Shape::Dir } else { Shape::File }, mode: None };
        prop_assert_eq!(ObjectMeta::decode(&meta.encode()).unwrap(), meta);
    }

    #[test]
    fn local_keys_are_per_identity_and_purpose(
        s1 in any::<[u8; 32]>(),
        s2 in any::<[u8; 32]>(),
        p1 in "\\PC{0,20}",
        p2 in "\\PC{0,20}",
    ) {
        let a = identity_from(s1);
        prop_assert_eq!(*a.local_key(&p1), *identity_from(s1).local_key(&p1));
        if p1 != p2 {
            prop_assert_ne!(*a.local_key(&p1), *a.local_key(&p2));
        }
        if s1 != s2 {
            prop_assert_ne!(*a.local_key(&p1), *identity_from(s2).local_key(&p1));
        }
        // Not the seed, and not the x25519 secret's public half.
        prop_assert_ne!(*a.local_key(&p1), s1);
        prop_assert_ne!(*a.local_key(&p1), a.x25519_public());
    }
}

// ---------------------------------------------------------------------------
// Signed structures
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn flipped_signed_byte_is_rejected((what, bytes) in any_signed_bytes(), at in any::<Index>(), mask in 1u8..) {
        prop_assert!(decode_named(what, &bytes).is_ok());
        let i = at.index(bytes.len());
        let bad = flipped(&bytes, i, mask);
        prop_assert!(decode_named(what, &bad).is_err(), "{} byte {} ^ {:#04x} accepted", what, i, mask);
    }

    #[test]
    fn truncated_or_extended_signed_bytes_are_rejected((what, bytes) in any_signed_bytes(), cut in any::<Index>(), extra in vec(any::<u8>(), 1..8)) {
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(decode_named(what, short).is_err());
        let long = [&bytes[..], &extra].concat();
        prop_assert!(decode_named(what, &long).is_err());
    }

    #[test]
    fn manifest_round_trip(seed in any::<[u8; 32]>(), m in manifest(identity_from([0; 32]).instance_id())) {
        // Re-author the generated manifest for this case's identity.
        let id = identity_from(seed);
        let m = Manifest { author: id.instance_id(), ..m };
        let signed = Signed::sign(&id, m.clone()).unwrap();
        let back = Unverified::<Manifest>::decode(signed.bytes()).unwrap().verify(|w| *w == id.instance_id()).unwrap();
        prop_assert_eq!(back.value(), &m);
        prop_assert_eq!(back.bytes(), signed.bytes());
        prop_assert_eq!(back.body_bytes(), signed.body_bytes());
        prop_assert_eq!(back.id(), ManifestId::of(signed.body_bytes()));
        prop_assert_eq!(back.into_value(), m);
    }

    #[test]
    fn card_round_trip(seed in any::<[u8; 32]>(), name in instance_name(), addrs in addresses(), created in any::<u64>()) {
        let id = Identity::from_secrets(&name, 0, seed, seed).unwrap();
        let card = id.card(addrs.clone(), created).unwrap();
        let text = card_to_string(&card);
        prop_assert!(text.starts_with("bbsync1"));
        prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        let back = card_from_str(&text).unwrap();
        prop_assert_eq!(back.value(), card.value());
        prop_assert_eq!(back.bytes(), card.bytes());
        prop_assert_eq!(&back.name, &name);
        prop_assert_eq!(&back.addresses, &addrs);
        prop_assert_eq!(back.x25519, id.x25519_public());
    }

    #[test]
    fn checkpoint_round_trip(seed in any::<[u8; 32]>(), seq in any::<u64>(), count in any::<u64>(), root in any::<[u8; 32]>(), created in any::<u64>()) {
        let id = identity_from(seed);
        let cp = Checkpoint { format: 1, instance: id.instance_id(), seq, count, root, created_at_ms: created };
        let signed = Signed::sign(&id, cp.clone()).unwrap();
        let back = decode_verify::<Checkpoint>(signed.bytes()).unwrap();
        prop_assert_eq!(back.value(), &cp);
    }
}

// ---------------------------------------------------------------------------
// Envelope entries
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn envelope_round_trip_and_wrong_recipient(
        a_seed in any::<[u8; 32]>(),
        b_seed in any::<[u8; 32]>(),
        oid in any::<[u8; 16]>(),
        version in 1..=bbsync_protocol::MAX_VERSION,
        key in any::<[u8; 32]>(),
    ) {
        prop_assume!(a_seed != b_seed);
        let wrapper = alice();
        let a = identity_from(a_seed);
        let b = identity_from(b_seed);
        let entry = wrap_content_key(&wrapper, ObjectId(oid), version, a.instance_id(), &a.x25519_public(), &ContentKey::from_bytes(key)).unwrap();
        let got = decode_verify::<EnvelopeEntry>(entry.bytes()).unwrap();
        prop_assert_eq!(got.value(), entry.value());
        let unwrapped = got.unwrap_key(&a).unwrap();
        prop_assert_eq!(unwrapped.as_bytes(), &key);

        // B cannot unwrap A's entry.
        prop_assert_eq!(got.unwrap_key(&b).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Invalid));

        // The recipient changed in the signed bytes: the signature fails.
        let mut swapped = entry.bytes().to_vec();
        let at = swapped.windows(32).position(|w| w == a.instance_id().as_bytes()).unwrap();
        swapped[at..at + 32].copy_from_slice(b.instance_id().as_bytes());
        let e = decode_verify::<EnvelopeEntry>(&swapped).unwrap_err();
        prop_assert_eq!(e.kind(), ErrorKind::BadSignature);

        // The wrapper re-signs it for B: B still cannot decrypt (the key was
        // agreed with A's x25519 key and the aad names A), and A is refused.
        let resigned = Signed::sign(&wrapper, EnvelopeEntry { recipient: b.instance_id(), ..entry.value().clone() }).unwrap();
        let resigned = decode_verify::<EnvelopeEntry>(resigned.bytes()).unwrap();
        prop_assert_eq!(resigned.unwrap_key(&b).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Crypto));
        prop_assert_eq!(resigned.unwrap_key(&a).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Invalid));

        // Another object or version with the same wrapped body does not decrypt either (aad).
        let moved = Signed::sign(&wrapper, EnvelopeEntry { version: version.wrapping_add(1), ..entry.value().clone() }).unwrap();
        prop_assert_eq!(moved.unwrap_key(&a).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Crypto));
    }

    #[test]
    fn fresh_ephemeral_per_entry(key in any::<[u8; 32]>()) {
        let w = alice();
        let r = bob();
        let k = ContentKey::from_bytes(key);
        let e1 = wrap_content_key(&w, object_id(), 1, r.instance_id(), &r.x25519_public(), &k).unwrap();
        let e2 = wrap_content_key(&w, object_id(), 1, r.instance_id(), &r.x25519_public(), &k).unwrap();
        prop_assert_ne!(e1.eph_pub, e2.eph_pub);
        prop_assert_ne!(e1.body, e2.body);
        prop_assert_eq!(e1.unwrap_key(&r).unwrap(), e2.unwrap_key(&r).unwrap());
    }
}

#[test]
fn low_order_points_give_zero_shared_secrets() {
    // Sanity of the list itself, with the bare X25519 function.
    for p in low_order_points() {
        for scalar in [[0x42u8; 32], ALICE_SECRETS.1, BOB_SECRETS.1] {
            assert_eq!(
                x25519_dalek::x25519(scalar, p),
                [0u8; 32],
                "{}",
                hex::encode(p)
            );
        }
    }
}

#[test]
fn wrapping_for_a_low_order_key_is_refused() {
    let w = alice();
    let r = bob();
    for p in low_order_points() {
        for eph in [[0x42u8; 32], [0x01; 32]] {
            let e = wrap_content_key_with_ephemeral(
                &w,
                object_id(),
                1,
                r.instance_id(),
                &p,
                &content_key(),
                eph,
            )
            .unwrap_err();
            assert!(
                matches!(e, Error::NonContributory),
                "{}: {e}",
                hex::encode(p)
            );
            assert_eq!(e.kind(), ErrorKind::Crypto);
        }
        let e =
            wrap_content_key(&w, object_id(), 1, r.instance_id(), &p, &content_key()).unwrap_err();
        assert!(
            matches!(e, Error::NonContributory),
            "{}: {e}",
            hex::encode(p)
        );
    }
}

#[test]
fn unwrapping_a_low_order_ephemeral_is_refused() {
    let w = alice();
    let r = bob();
    let good = wrap_content_key_with_ephemeral(
        &w,
        object_id(),
        1,
        r.instance_id(),
        &r.x25519_public(),
        &content_key(),
        [7; 32],
    )
    .unwrap();
    for p in low_order_points() {
        // A validly signed entry whose eph_pub is a small-order point.
        let evil = Signed::sign(
            &w,
            EnvelopeEntry {
                eph_pub: p,
                ..good.value().clone()
            },
        )
        .unwrap();
        let evil = decode_verify::<EnvelopeEntry>(evil.bytes()).unwrap();
        let e = evil.unwrap_key(&r).unwrap_err();
        assert!(
            matches!(e, Error::NonContributory),
            "{}: {e}",
            hex::encode(p)
        );
        assert_eq!(e.kind(), ErrorKind::Crypto);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A wrap session uses one ephemeral key for all its entries, but every
    /// object version gets its own wrap key; one Unwrapper opens them all.
    #[test]
    fn wrap_session_round_trip(
        eph in any::<[u8; 32]>(),
        items in vec((any::<[u8; 16]>(), 1u64..1000, any::<[u8; 32]>(), 0usize..3), 1..12),
    ) {
        let wrapper = alice();
        let people = [alice(), bob(), carol()];
        let session = WrapSession::with_ephemeral(&wrapper, eph);
        let unwrapper = Unwrapper::new();
        let mut seen = std::collections::HashMap::new();
        for (oid, version, key, who) in items {
            let r = &people[who];
            // One content key per object version (the session's rule).
            let key = *seen.entry((oid, version)).or_insert(key);
            let entry = session
                .wrap(ObjectId(oid), version, r.instance_id(), &r.x25519_public(), &ContentKey::from_bytes(key))
                .unwrap();
            prop_assert_eq!(entry.eph_pub, x25519_dalek::x25519(eph, x25519_dalek::X25519_BASEPOINT_BYTES));
            let same = wrap_content_key_with_ephemeral(
                &wrapper, ObjectId(oid), version, r.instance_id(), &r.x25519_public(), &ContentKey::from_bytes(key), eph,
            )
            .unwrap();
            prop_assert_eq!(entry.bytes(), same.bytes());
            let entry = decode_verify::<EnvelopeEntry>(entry.bytes()).unwrap();
            prop_assert_eq!(unwrapper.unwrap(r, &entry).unwrap(), ContentKey::from_bytes(key));
            prop_assert_eq!(entry.unwrap_key(r).unwrap(), ContentKey::from_bytes(key));
            for other in &people {
                if other.instance_id() != r.instance_id() {
                    let e = unwrapper.unwrap(other, &entry).map(|_| ()).unwrap_err();
                    prop_assert_eq!(e.kind(), ErrorKind::Invalid);
                }
            }
            // The same wrapped body moved to another version does not open.
            let moved = Signed::sign(&wrapper, EnvelopeEntry { version: version + 1000, ..entry.value().clone() }).unwrap();
            prop_assert_eq!(unwrapper.unwrap(r, &moved).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Crypto));
        }
    }
}

#[test]
fn wrap_session_refuses_low_order_keys_and_goes_on() {
    let wrapper = alice();
    let b = bob();
    let session = WrapSession::with_ephemeral(&wrapper, [0x55; 32]);
    let unwrapper = Unwrapper::new();
    for p in low_order_points() {
        let e = session
            .wrap(object_id(), 1, b.instance_id(), &p, &content_key())
            .unwrap_err();
        assert!(
            matches!(e, Error::NonContributory),
            "{}: {e}",
            hex::encode(p)
        );
        // A validly signed entry with a small-order eph_pub, through the cache.
        let good = session
            .wrap(
                object_id(),
                1,
                b.instance_id(),
                &b.x25519_public(),
                &content_key(),
            )
            .unwrap();
        let evil = Signed::sign(
            &wrapper,
            EnvelopeEntry {
                eph_pub: p,
                ..good.value().clone()
            },
        )
        .unwrap();
        let e = unwrapper.unwrap(&b, &evil).unwrap_err();
        assert!(
            matches!(e, Error::NonContributory),
            "{}: {e}",
            hex::encode(p)
        );
        // Neither failure poisons the session or the cache.
        assert_eq!(unwrapper.unwrap(&b, &good).unwrap(), content_key());
    }
}

/// HARDENING, see the report: a wrap key depends on (ephemeral key,
/// recipient, object, version) only and the AES-GCM nonce is constant, so a
/// session asked to wrap two *different* content keys for the same object
/// version and recipient encrypts two messages under one (key, nonce). The
/// module documents "one content key per object version" as the caller's
/// duty; nothing enforces it.
#[test]
fn wrap_session_never_reuses_a_wrap_key_for_another_content_key() {
    let wrapper = alice();
    let b = bob();
    let session = WrapSession::with_ephemeral(&wrapper, [0x66; 32]);
    let k1 = ContentKey::from_bytes([1; 32]);
    let k2 = ContentKey::from_bytes([2; 32]);
    let e1 = session.wrap(object_id(), 7, b.instance_id(), &b.x25519_public(), &k1);
    let e2 = session.wrap(object_id(), 7, b.instance_id(), &b.x25519_public(), &k2);
    if let (Ok(e1), Ok(e2)) = (e1, e2) {
        // Keystream reuse: the xor of the bodies is the xor of the keys.
        let leaked =
            (0..32).all(|i| e1.body[i] ^ e2.body[i] == k1.as_bytes()[i] ^ k2.as_bytes()[i]);
        panic!(
            "two content keys wrapped under one wrap key and nonce; k1 ^ k2 readable from the entries: {leaked}"
        );
    }
}

// ---------------------------------------------------------------------------
// Every single-bit flip and every truncation of the fixed samples
// ---------------------------------------------------------------------------

#[test]
fn every_single_bit_flip_and_truncation_is_rejected() {
    let a = alice();
    let b = bob();
    let samples: Vec<(&str, Vec<u8>)> = vec![
        (
            "manifest",
            Signed::sign(&a, sample_manifest(a.instance_id()))
                .unwrap()
                .bytes()
                .to_vec(),
        ),
        (
            "manifest",
            Signed::sign(&a, sample_tombstone(a.instance_id()))
                .unwrap()
                .bytes()
                .to_vec(),
        ),
        (
            "entry",
            wrap_content_key_with_ephemeral(
                &a,
                object_id(),
                3,
                b.instance_id(),
                &b.x25519_public(),
                &content_key(),
                [0x42; 32],
            )
            .unwrap()
            .bytes()
            .to_vec(),
        ),
        (
            "card",
            a.card(vec!["/ip4/192.0.2.10/tcp/4001".into()], T0)
                .unwrap()
                .bytes()
                .to_vec(),
        ),
        (
            "checkpoint",
            Signed::sign(
                &a,
                Checkpoint {
                    format: 1,
                    instance: a.instance_id(),
                    seq: 9,
                    count: 3,
                    root: [7; 32],
                    created_at_ms: T0,
                },
            )
            .unwrap()
            .bytes()
            .to_vec(),
        ),
    ];
    for (what, bytes) in &samples {
        assert!(decode_named(what, bytes).is_ok());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                assert!(
                    decode_named(what, &flipped(bytes, i, 1 << bit)).is_err(),
                    "{what}: byte {i} bit {bit} accepted"
                );
            }
        }
        for cut in 0..bytes.len() {
            assert!(
                decode_named(what, &bytes[..cut]).is_err(),
                "{what}: truncated to {cut} accepted"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Identity files
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn identity_file_round_trip_and_any_flip_fails(
        ed in any::<[u8; 32]>(),
        x in any::<[u8; 32]>(),
        name in instance_name(),
        created in any::<u64>(),
        at in any::<Index>(),
        mask in 1u8..,
    ) {
        let id = Identity::from_secrets(&name, created, ed, x).unwrap();
        let file = id.to_file_bytes();
        let back = Identity::from_file_bytes(&file).unwrap();
        prop_assert_eq!(back.instance_id(), id.instance_id());
        prop_assert_eq!(back.x25519_public(), id.x25519_public());
        prop_assert_eq!(back.name(), name.as_str());
        prop_assert_eq!(back.created_at_ms(), created);
        prop_assert_eq!(*back.ed25519_secret(), ed);
        let i = at.index(file.len());
        let bad = flipped(&file, i, mask);
        let e = Identity::from_file_bytes(&bad).map(|_| ()).unwrap_err();
        prop_assert_eq!(e.kind(), ErrorKind::Malformed, "byte {} ^ {:#04x}: {}", i, mask, e);
    }
}

// ---------------------------------------------------------------------------
// No decoder panics
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..4096)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_encodings(
        (_what, bytes) in any_signed_bytes(),
        edits in vec((any::<Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut b = bytes;
        for (at, byte, op) in edits {
            let i = at.index(b.len() + 1);
            match op {
                0 if i < b.len() => b[i] = byte,
                1 => b.insert(i, byte),
                _ if i < b.len() => { b.remove(i); }
                _ => b.push(byte),
            }
        }
        decode_everything(&b);
    }

    #[test]
    fn signed_decoders_never_panic_on_wrapped_bodies(body in vec(any::<u8>(), 0..1024), format in 0u64..4, sig in any::<[u8; 32]>()) {
        // A well-formed wire around an arbitrary body reaches the body decoders.
        let mut wire = varint(format);
        wire.extend(varint(body.len() as u64));
        wire.extend_from_slice(&body);
        wire.extend(varint(64));
        wire.extend_from_slice(&sig);
        wire.extend_from_slice(&sig);
        decode_everything(&wire);
        // Signed by a real key over the real domain, so verify gets past the signature.
        for (domain, what) in [
            (<Manifest as SignedBody>::DOMAIN, "manifest"),
            (<EnvelopeEntry as SignedBody>::DOMAIN, "entry"),
            (<InstanceCard as SignedBody>::DOMAIN, "card"),
            (<Checkpoint as SignedBody>::DOMAIN, "checkpoint"),
        ] {
            let _ = decode_named(what, &build_wire(format, &body, domain, &ALICE_SECRETS.0));
        }
    }

    #[test]
    fn identity_file_decoder_never_panics_on_checksummed_bodies(body in vec(any::<u8>(), 0..512)) {
        let file = [IDENTITY_MAGIC.as_slice(), &body, &Sha256::digest(&body)].concat();
        let _ = Identity::from_file_bytes(&file);
    }

    #[test]
    fn chunk_decoder_never_panics_on_chunk_shaped_bytes(flags in 0u8..4, rest in vec(any::<u8>(), 0..2048)) {
        let stored = [&[1, flags][..], &rest].concat();
        let cipher = ChunkCipher::new(&content_key());
        prop_assert!(cipher.open_verified(&stored).is_err());
    }

    #[test]
    fn card_strings_never_panic(s in any::<String>(), b32 in "[a-z2-7A-Z=]{0,400}", tail in "\\PC{0,40}", bytes in vec(any::<u8>(), 0..300)) {
        let _ = card_from_str(&s);
        let _ = card_from_str(&format!("bbsync1{s}"));
        let _ = card_from_str(&format!("bbsync1{b32}"));
        let _ = card_from_str(&format!("bbsync1{b32}{tail}"));
        let _ = card_from_str(&format!(" \tbbsync1{}\n", base32_lower(&bytes)));
    }

    #[test]
    fn id_parsers_never_panic(s in any::<String>(), hexish in "[0-9a-fA-FxX ]{0,70}", uni in "[0-9a-fé€]{0,64}") {
        for input in [&s, &hexish, &uni] {
            let _ = input.parse::<ChunkId>();
            let _ = input.parse::<ObjectId>();
            let _ = input.parse::<ManifestId>();
            let _ = input.parse::<InstanceId>();
        }
    }

    #[test]
    fn id_parsers_round_trip(b in any::<[u8; 32]>(), o in any::<[u8; 16]>()) {
        let c = ChunkId(b);
        prop_assert_eq!(c.to_string().parse::<ChunkId>().unwrap(), c);
        prop_assert_eq!(c.to_hex().to_ascii_uppercase().parse::<ChunkId>().unwrap(), c);
        prop_assert_eq!(ManifestId(b).to_hex().parse::<ManifestId>().unwrap(), ManifestId(b));
        prop_assert_eq!(InstanceId(b).to_hex().parse::<InstanceId>().unwrap(), InstanceId(b));
        prop_assert_eq!(ObjectId(o).to_hex().parse::<ObjectId>().unwrap(), ObjectId(o));
        prop_assert!(ObjectId(o).to_hex()[1..].parse::<ObjectId>().is_err());
        let long = ObjectId(o).to_hex() + "0";
        prop_assert!(long.parse::<ObjectId>().is_err());
    }
}
