//! The errors of `bbsync-protocol`: the right class for each failure, size
//! limits applied before decoding, and messages that are one line and never
//! carry secret material.

#![allow(clippy::unwrap_used)]

mod common;

use bbsync_protocol::{
    Checkpoint, ChunkCipher, Compression, ContentKey, EnvelopeEntry, Error, ErrorKind, Identity,
    InstanceCard, Manifest, RootBuilder, Signed, SignedBody, Unverified, card_from_str,
    card_to_string,
    chunk::{CHUNK_MAX, MAX_STORED_CHUNK},
    envelope::wrap_content_key_with_ephemeral,
};
use common::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn decode_verify<T: SignedBody>(bytes: &[u8]) -> bbsync_protocol::Result<Signed<T>> {
    Unverified::<T>::decode(bytes)?.verify(|_| true)
}

fn err_of<T>(r: bbsync_protocol::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Hex and base32 forms of every fixed secret, which no message may contain.
fn secret_strings() -> Vec<String> {
    let mut out = Vec::new();
    for (ed, x) in [ALICE_SECRETS, BOB_SECRETS, CAROL_SECRETS] {
        for secret in [ed, x] {
            out.push(hex::encode(secret));
            out.push(hex::encode(&secret[..8]));
            out.push(base32_lower(&secret));
        }
    }
    out.push(hex::encode(content_key_bytes()));
    out.push(hex::encode(&content_key_bytes()[..8]));
    out
}

/// One line, not empty, no secret.
fn assert_clean_message(e: &Error) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty message");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "multi-line message: {msg:?}"
    );
    let lower = msg.to_ascii_lowercase();
    for secret in secret_strings() {
        assert!(
            !lower.contains(&secret),
            "message {msg:?} contains secret material"
        );
    }
}

#[test]
fn untrusted_signer_is_rejected_after_a_good_signature() -> TestResult {
    let a = alice();
    let bytes = Signed::sign(&a, sample_manifest(a.instance_id()))?
        .bytes()
        .to_vec();
    let mut asked = None;
    let e = err_of(Unverified::<Manifest>::decode(&bytes)?.verify(|who| {
        asked = Some(*who);
        false
    }));
    assert_eq!(
        asked,
        Some(a.instance_id()),
        "the trust question names the signer"
    );
    assert_eq!(e.kind(), ErrorKind::Untrusted);
    assert!(matches!(
        e,
        Error::Untrusted {
            what: "manifest",
            ..
        }
    ));
    assert!(e.to_string().contains(&a.instance_id().short()), "{e}");
    assert_clean_message(&e);

    // Trusting someone else is no better.
    let b = bob();
    let e = err_of(Unverified::<Manifest>::decode(&bytes)?.verify(|who| *who == b.instance_id()));
    assert_eq!(e.kind(), ErrorKind::Untrusted);

    // A bad signature is reported as such even when the closure would refuse:
    // the trust question is only asked about a verified signer.
    let tampered = flipped(&bytes, bytes.len() - 10, 0x04);
    let e = err_of(
        Unverified::<Manifest>::decode(&tampered)?
            .verify(|_| panic!("asked about an unverified signer")),
    );
    assert_eq!(e.kind(), ErrorKind::BadSignature);
    Ok(())
}

#[test]
fn untrusted_kinds_for_every_signed_type() -> TestResult {
    let a = alice();
    let b = bob();
    let card = a.card(vec![], T0)?;
    let entry = wrap_content_key_with_ephemeral(
        &a,
        object_id(),
        1,
        b.instance_id(),
        &b.x25519_public(),
        &content_key(),
        [9; 32],
    )?;
    let cp = Signed::sign(
        &a,
        Checkpoint {
            format: 1,
            instance: a.instance_id(),
            seq: 1,
            count: 0,
            root: RootBuilder::new().finish(),
            created_at_ms: T0,
        },
    )?;
    let nobody = |_: &bbsync_protocol::InstanceId| false;
    assert_eq!(
        err_of(Unverified::<InstanceCard>::decode(card.bytes())?.verify(nobody)).kind(),
        ErrorKind::Untrusted
    );
    assert_eq!(
        err_of(Unverified::<EnvelopeEntry>::decode(entry.bytes())?.verify(nobody)).kind(),
        ErrorKind::Untrusted
    );
    assert_eq!(
        err_of(Unverified::<Checkpoint>::decode(cp.bytes())?.verify(nobody)).kind(),
        ErrorKind::Untrusted
    );
    Ok(())
}

#[test]
fn oversize_input_is_rejected_before_decoding() {
    // 0xff bytes would be a malformed varint if they were looked at: getting
    // TooLarge proves the size check comes first.
    fn too_large<T: SignedBody>(limit: usize) {
        let input = vec![0xffu8; limit + 1];
        let e = err_of(Unverified::<T>::decode(&input));
        assert!(
            matches!(e, Error::TooLarge { len, limit: l, .. } if len == limit + 1 && l == limit),
            "{}: {e}",
            T::WHAT
        );
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert_clean_message(&e);
        // At the limit it is decoded (and found malformed), not refused for size.
        let e = err_of(Unverified::<T>::decode(&input[..limit]));
        assert!(matches!(e, Error::Malformed { .. }), "{}: {e}", T::WHAT);
    }
    // Wire overhead: format (2) + two length prefixes (10 each) + signature (64).
    const OVERHEAD: usize = 2 + 10 + 10 + 64;
    too_large::<Manifest>(Manifest::MAX_BODY + OVERHEAD);
    too_large::<EnvelopeEntry>(EnvelopeEntry::MAX_BODY + OVERHEAD);
    too_large::<InstanceCard>(InstanceCard::MAX_BODY + OVERHEAD);
    too_large::<Checkpoint>(Checkpoint::MAX_BODY + OVERHEAD);

    let e = err_of(Identity::from_file_bytes(&vec![0xff; 4097]));
    assert!(
        matches!(
            e,
            Error::TooLarge {
                len: 4097,
                limit: 4096,
                ..
            }
        ),
        "{e}"
    );

    let e = err_of(card_from_str(&format!(
        "bbsync1{}",
        "a".repeat(2 * InstanceCard::MAX_BODY + 1)
    )));
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert_clean_message(&e);

    let cipher = ChunkCipher::new(&content_key());
    let e = err_of(cipher.open_verified(&vec![1u8; MAX_STORED_CHUNK + 1]));
    assert_eq!(e.kind(), ErrorKind::Malformed);
    let e = err_of(cipher.seal(&vec![0u8; CHUNK_MAX as usize + 1], Compression::None));
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(
        cipher
            .seal(&vec![0u8; CHUNK_MAX as usize], Compression::None)
            .is_ok()
    );
}

#[test]
fn oversize_body_cannot_be_signed() -> TestResult {
    let a = alice();
    let mut m = sample_manifest(a.instance_id());
    // Each chunk reference encodes to 32 + 3 bytes: enough of them pass every
    // rule but the size limit.
    let r = bbsync_protocol::ChunkRef {
        id: bbsync_protocol::ChunkId([7; 32]),
        len: 100_000,
    };
    m.chunks = vec![r; Manifest::MAX_BODY / 35 + 1];
    let e = err_of(Signed::sign(&a, m));
    assert!(
        matches!(
            e,
            Error::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{e}"
    );
    Ok(())
}

#[test]
fn trailing_bytes_are_rejected() -> TestResult {
    let a = alice();
    let b = bob();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "manifest",
            Signed::sign(&a, sample_manifest(a.instance_id()))?
                .bytes()
                .to_vec(),
        ),
        (
            "card",
            a.card(vec!["/ip4/192.0.2.1/tcp/1".into()], T0)?
                .bytes()
                .to_vec(),
        ),
        (
            "entry",
            wrap_content_key_with_ephemeral(
                &a,
                object_id(),
                1,
                b.instance_id(),
                &b.x25519_public(),
                &content_key(),
                [9; 32],
            )?
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
                    seq: 1,
                    count: 0,
                    root: [0; 32],
                    created_at_ms: T0,
                },
            )?
            .bytes()
            .to_vec(),
        ),
    ];
    for (what, good) in inputs {
        for extra in [&[0u8][..], &[1], &[0, 0], &[0xff; 64]] {
            let bad = [&good[..], extra].concat();
            let e = match what {
                "manifest" => err_of(decode_verify::<Manifest>(&bad)),
                "card" => err_of(decode_verify::<InstanceCard>(&bad)),
                "entry" => err_of(decode_verify::<EnvelopeEntry>(&bad)),
                _ => err_of(decode_verify::<Checkpoint>(&bad)),
            };
            assert!(matches!(e, Error::Malformed { .. }), "{what}: {e}");
            assert!(e.to_string().contains("trailing"), "{what}: {e}");
            assert_clean_message(&e);
        }
    }
    // Identity file: bytes after the checksum break the checksum.
    let file = a.to_file_bytes();
    let e = err_of(Identity::from_file_bytes(&[&file[..], b"\n"].concat()));
    assert_eq!(e.kind(), ErrorKind::Malformed);
    assert_clean_message(&e);
    Ok(())
}

#[test]
fn unknown_formats_are_unsupported() -> TestResult {
    let a = alice();
    // Manifests: formats 1 (legacy) and 2 are read; 3 is not.
    let mut m = sample_manifest(a.instance_id());
    m.format = 3;
    let bytes = Signed::sign(&a, m)?.bytes().to_vec();
    let e = err_of(Unverified::<Manifest>::decode(&bytes));
    assert!(
        matches!(
            e,
            Error::UnsupportedFormat {
                what: "manifest",
                found: 3,
                supported: 2
            }
        ),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::UnsupportedFormat);
    assert_clean_message(&e);

    // The outer wire format too.
    let good = Signed::sign(&a, sample_manifest(a.instance_id()))?
        .bytes()
        .to_vec();
    let mut outer = good.clone();
    outer[0] = 2;
    let e = err_of(Unverified::<Manifest>::decode(&outer));
    assert!(
        matches!(e, Error::UnsupportedFormat { found: 2, .. }),
        "{e}"
    );

    // And chunks.
    let sealed = ChunkCipher::new(&content_key()).seal(b"x", Compression::None)?;
    let e = err_of(ChunkCipher::new(&content_key()).open_verified(&flipped(&sealed.bytes, 0, 3)));
    assert!(
        matches!(
            e,
            Error::UnsupportedFormat {
                what: "chunk",
                found: 2,
                supported: 1
            }
        ),
        "{e}"
    );
    Ok(())
}

#[test]
fn card_string_errors_are_one_line_without_secrets() -> TestResult {
    let a = alice();
    let card = a.card(vec!["/ip4/192.0.2.1/tcp/4001".into()], T0)?;
    let good = card_to_string(&card);
    let payload = good.strip_prefix("bbsync1").ok_or("prefix")?.to_string();
    let mut sig_flipped = card.bytes().to_vec();
    let at = sig_flipped.len() - 20;
    sig_flipped[at] ^= 0x10;

    let cases: Vec<(&str, String, ErrorKind)> = vec![
        ("missing prefix", payload.clone(), ErrorKind::Malformed),
        (
            "upper-case prefix",
            format!("BBSYNC1{payload}"),
            ErrorKind::Malformed,
        ),
        (
            "bad base32",
            format!("bbsync1{}8{}", &payload[..5], &payload[6..]),
            ErrorKind::Malformed,
        ),
        (
            "padding",
            format!("bbsync1{payload}===="),
            ErrorKind::Malformed,
        ),
        (
            "inner whitespace",
            format!("bbsync1{} {}", &payload[..20], &payload[20..]),
            ErrorKind::Malformed,
        ),
        (
            "base32 of garbage",
            format!("bbsync1{}", base32_lower(b"not a card at all")),
            ErrorKind::Malformed,
        ),
        (
            "base32 of nothing",
            "bbsync1".to_string(),
            ErrorKind::Malformed,
        ),
        (
            "flipped signature",
            format!("bbsync1{}", base32_lower(&sig_flipped)),
            ErrorKind::BadSignature,
        ),
    ];
    for (what, input, kind) in cases {
        let e = err_of(card_from_str(&input));
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert_clean_message(&e);
        // The message does not echo the pasted string back.
        if input.len() > 40 {
            assert!(!e.to_string().contains(&input[7..40]), "{what}: {e}");
        }
    }
    // The good one parses.
    assert_eq!(card_from_str(&good)?.value(), card.value());
    Ok(())
}

#[test]
fn identity_file_errors_do_not_leak_secrets() -> TestResult {
    let a = alice();
    let file = a.to_file_bytes().to_vec();
    for i in 0..file.len() {
        let e = err_of(Identity::from_file_bytes(&flipped(&file, i, 0x01)));
        assert_eq!(e.kind(), ErrorKind::Malformed, "byte {i}: {e}");
        assert_clean_message(&e);
    }
    // Debug forms are redacted too.
    let dbg = format!(
        "{a:?} {:?} {:?}",
        content_key(),
        ChunkCipher::new(&content_key())
    );
    let lower = dbg.to_ascii_lowercase();
    for secret in secret_strings() {
        assert!(
            !lower.contains(&secret),
            "Debug output {dbg:?} contains secret material"
        );
    }
    assert!(dbg.contains("redacted"));
    Ok(())
}

#[test]
fn signing_checks_signer_and_rules() -> TestResult {
    let a = alice();
    let b = bob();
    // The body names bob, alice signs: refused.
    let e = err_of(Signed::sign(&a, sample_manifest(b.instance_id())));
    assert_eq!(e.kind(), ErrorKind::Invalid);
    // Rules of the format are checked before signing.
    let mut m = sample_manifest(a.instance_id());
    m.version = 0;
    assert_eq!(err_of(Signed::sign(&a, m)).kind(), ErrorKind::Invalid);
    let mut m = sample_manifest(a.instance_id());
    m.kind = "Bad Kind".into();
    assert_eq!(err_of(Signed::sign(&a, m)).kind(), ErrorKind::Invalid);
    let mut m = sample_tombstone(a.instance_id());
    m.plaintext_len = 1;
    assert_eq!(err_of(Signed::sign(&a, m)).kind(), ErrorKind::Invalid);
    let mut m = sample_manifest(a.instance_id());
    m.chunks[0].len = 0;
    assert_eq!(err_of(Signed::sign(&a, m)).kind(), ErrorKind::Invalid);
    let mut m = sample_manifest(a.instance_id());
    m.owner = Some(String::new());
    assert_eq!(err_of(Signed::sign(&a, m)).kind(), ErrorKind::Invalid);
    // Names.
    assert_eq!(
        err_of(Identity::from_secrets("", T0, [1; 32], [2; 32])).kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        err_of(Identity::from_secrets("a\nb", T0, [1; 32], [2; 32])).kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        err_of(Identity::from_secrets(
            &"n".repeat(129),
            T0,
            [1; 32],
            [2; 32]
        ))
        .kind(),
        ErrorKind::Invalid
    );
    assert!(Identity::from_secrets(&"n".repeat(128), T0, [1; 32], [2; 32]).is_ok());
    assert_eq!(
        err_of(a.card(vec![String::new()], T0)).kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        err_of(a.card(vec!["/ip4/192.0.2.1".into(); 33], T0)).kind(),
        ErrorKind::Invalid
    );
    Ok(())
}

/// Re-encodes wire bytes with a non-minimal (two-byte) varint for the outer
/// format number: `81 00` instead of `01`. Nothing signed changes.
fn with_padded_format(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(bytes[0], 1);
    [&[0x81, 0x00][..], &bytes[1..]].concat()
}

/// BUG (malleable wire encoding), see the report: postcard accepts
/// non-minimal varints, and `Unverified::decode` does not check that the
/// bytes are the canonical encoding of what it decoded. Anyone can turn the
/// wire bytes of a signed object into other bytes that still verify.
#[test]
fn non_canonical_wire_bytes_are_rejected() -> TestResult {
    let a = alice();
    let good = Signed::sign(&a, sample_manifest(a.instance_id()))?;
    let padded = with_padded_format(good.bytes());
    assert_ne!(padded, good.bytes());
    let result = decode_verify::<Manifest>(&padded);
    assert!(
        result.is_err(),
        "non-canonical bytes verified as {:?}",
        result.map(|s| s.id())
    );
    Ok(())
}

/// Every varint of the wire wrapper padded in turn (the body's length, the
/// signature's length): each padding makes other bytes for the same signed
/// object, and each is refused as not canonical. (Since decoding borrows
/// the body and checks the length of the whole instead of encoding it
/// again.)
#[test]
fn padded_length_varints_of_the_wire_are_rejected() -> TestResult {
    let a = alice();
    let good = Signed::sign(&a, sample_manifest(a.instance_id()))?;
    let bytes = good.bytes();
    let body_len = good.body_bytes().len();
    // format (1) || varint(body_len) || body || varint(64) = 0x40 || sig
    let mut varint = Vec::new();
    let mut v = body_len as u64;
    while v >= 0x80 {
        varint.push((v as u8) | 0x80);
        v >>= 7;
    }
    varint.push(v as u8);
    assert_eq!(&bytes[1..1 + varint.len()], &varint[..]);
    let body_at = 1 + varint.len();
    let sig_len_at = body_at + body_len;
    assert_eq!(bytes[sig_len_at], 0x40);
    // The body's length: its last byte gets a continuation bit and a zero
    // byte follows.
    let mut padded_len = varint.clone();
    *padded_len.last_mut().unwrap() |= 0x80;
    padded_len.push(0);
    let a1 = [&bytes[..1], &padded_len[..], &bytes[body_at..]].concat();
    // The signature's length: `c0 00` instead of `40`.
    let a2 = [
        &bytes[..sig_len_at],
        &[0xc0, 0x00][..],
        &bytes[sig_len_at + 1..],
    ]
    .concat();
    for (what, padded) in [("body length", a1), ("signature length", a2)] {
        assert_ne!(padded, bytes);
        let e = match decode_verify::<Manifest>(&padded) {
            Ok(m) => panic!("{what}: non-canonical bytes verified as {:?}", m.id()),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
    }
    Ok(())
}

#[test]
fn names_refuse_bidi_and_invisible_characters() -> TestResult {
    let a = alice();
    for (name, code) in [
        ("general/\u{202e}txt.exe", "U+202E"),
        ("general/a\u{2066}b", "U+2066"),
        ("general/zero\u{200b}width", "U+200B"),
        ("general/\u{feff}bom", "U+FEFF"),
        ("general/tag\u{e0041}", "U+E0041"),
        ("general/c1\u{9b}31m", "U+009B"),
    ] {
        let mut m = sample_manifest(a.instance_id());
        m.name = name.into();
        let e = err_of(Signed::sign(&a, m));
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert_eq!(
            e.to_string(),
            format!(
                "invalid object name: contains {code}, a control or invisible formatting character (names may hold neither)"
            )
        );
        assert_clean_message(&e);
    }
    // Joiners stay allowed (Persian, Indic scripts, emoji sequences).
    let mut m = sample_manifest(a.instance_id());
    m.name = "general/\u{0645}\u{06cc}\u{200c}\u{062e}\u{0648}\u{0627}\u{0647}\u{0645}".into();
    Signed::sign(&a, m)?;
    Ok(())
}

#[test]
fn versions_stop_below_u64_max() -> TestResult {
    let a = alice();
    for v in [bbsync_protocol::MAX_VERSION + 1, u64::MAX] {
        let mut m = sample_manifest(a.instance_id());
        m.version = v;
        let e = err_of(Signed::sign(&a, m));
        assert_eq!(
            e.to_string(),
            format!(
                "invalid manifest: version {v} is above the highest allowed ({})",
                bbsync_protocol::MAX_VERSION
            )
        );
    }
    let mut m = sample_manifest(a.instance_id());
    m.version = bbsync_protocol::MAX_VERSION;
    Signed::sign(&a, m)?;
    assert_eq!(
        bbsync_protocol::manifest::next_version(bbsync_protocol::MAX_VERSION),
        None
    );
    assert_eq!(bbsync_protocol::manifest::next_version(3), Some(4));
    Ok(())
}

#[test]
fn key_commitment_rules() -> TestResult {
    let a = alice();
    let invalid = |m: Manifest| err_of(Signed::sign(&a, m)).to_string();
    let mut m = sample_manifest(a.instance_id());
    m.key_commit = None;
    assert_eq!(invalid(m), "invalid manifest: no key commitment");
    let mut t = sample_tombstone(a.instance_id());
    t.key_commit = Some([7; 32]);
    assert_eq!(
        invalid(t),
        "invalid manifest: tombstone with a key commitment"
    );
    let mut v1 = sample_manifest_v1(a.instance_id());
    v1.key_commit = Some([7; 32]);
    assert_eq!(
        invalid(v1),
        "invalid manifest: format 1 has no key commitment"
    );

    // The right key passes, any other is refused by name.
    let m = Signed::sign(&a, sample_manifest(a.instance_id()))?;
    m.check_key(&content_key())?;
    let e = err_of(m.check_key(&ContentKey::from_bytes([9; 32])));
    assert_eq!(e.kind(), ErrorKind::Crypto);
    assert_eq!(
        e.to_string(),
        format!(
            "content key of object {} version 3 does not match the manifest's key commitment",
            object_id().short()
        )
    );
    // A legacy manifest commits to nothing (docs/format.md §7).
    let v1 = Signed::sign(&a, sample_manifest_v1(a.instance_id()))?;
    v1.check_key(&ContentKey::from_bytes([9; 32]))?;
    // Legacy bytes decode as format 1 and re-encode to themselves.
    let back = Unverified::<Manifest>::decode(v1.bytes())?.verify(|_| true)?;
    assert_eq!(back.format, 1);
    assert_eq!(back.bytes(), v1.bytes());
    Ok(())
}
