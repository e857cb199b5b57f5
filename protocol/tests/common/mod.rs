//! Fixed inputs and small independent helpers shared by the integration
//! tests of `bbsync-protocol` (`vectors.rs`, `props.rs`, `errors.rs`).
//!
//! Nothing here calls into the crate's private encoders: the wire helpers
//! re-implement the documented layout by hand so that the tests check the
//! crate against the format description, not against itself.

#![allow(dead_code)]

use bbsync_protocol::{
    ChunkCipher, ChunkId, ChunkRef, ContentKey, Identity, InstanceId, Manifest, ObjectId,
    ObjectMeta, Shape,
};
use ed25519_dalek::Signer;

/// `created_at_ms` of the fixed identities (2023-11-14T22:13:20Z).
pub const T0: u64 = 1_700_000_000_000;

/// Secrets of the fixed identity "alice" (ed25519 seed, x25519 secret).
pub const ALICE_SECRETS: ([u8; 32], [u8; 32]) = ([0x11; 32], [0x12; 32]);
/// Secrets of the fixed identity "bob".
pub const BOB_SECRETS: ([u8; 32], [u8; 32]) = ([0x21; 32], [0x22; 32]);
/// Secrets of the fixed identity "carol".
pub const CAROL_SECRETS: ([u8; 32], [u8; 32]) = ([0x31; 32], [0x32; 32]);

/// The fixed identity "alice" (an author and wrapper).
pub fn alice() -> Identity {
    Identity::from_secrets("alice", T0, ALICE_SECRETS.0, ALICE_SECRETS.1).expect("fixed identity")
}

/// The fixed identity "bob" (a recipient).
pub fn bob() -> Identity {
    Identity::from_secrets("bob", T0 + 1, BOB_SECRETS.0, BOB_SECRETS.1).expect("fixed identity")
}

/// The fixed identity "carol" (a bystander).
pub fn carol() -> Identity {
    Identity::from_secrets("carol", T0 + 2, CAROL_SECRETS.0, CAROL_SECRETS.1)
        .expect("fixed identity")
}

/// The fixed content key bytes `00 01 02 .. 1f`.
pub fn content_key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// The fixed content key.
pub fn content_key() -> ContentKey {
    ContentKey::from_bytes(content_key_bytes())
}

/// The fixed object id `a0 a1 .. af`.
pub fn object_id() -> ObjectId {
    ObjectId(std::array::from_fn(|i| 0xa0 + i as u8))
}

/// SplitMix64 (Steele, Lea, Flood 2014): the pseudo-random byte source of the
/// vectors. Each step yields 8 bytes, little-endian; the output is truncated
/// to `len`.
pub fn splitmix64_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `text` repeated and truncated to `len` bytes.
pub fn repeat_bytes(text: &[u8], len: usize) -> Vec<u8> {
    text.iter().copied().cycle().take(len).collect()
}

/// The text repeated by the compressible vector plaintext.
pub const COMPRESSIBLE_TEXT: &str =
    "From: sysop\nBoard: general\nSubject: Welcome to the board!\n\nHello, caller.\n";

/// The sealed meta blob of [`sample_manifest`]: `ObjectMeta {format 1, shape
/// File}` sealed under [`content_key`].
pub fn sample_meta() -> Vec<u8> {
    let meta = ObjectMeta {
        format: 1,
        shape: Shape::File,
        mode: None,
    };
    ChunkCipher::new(&content_key())
        .seal_meta(&meta.encode())
        .expect("seal fixed meta")
}

/// A manifest of two chunks (format 2, committing to [`content_key`]),
/// signed by `author`.
pub fn sample_manifest(author: InstanceId) -> Manifest {
    Manifest {
        format: 2,
        object_id: object_id(),
        version: 3,
        kind: "message".into(),
        name: "general/0001.json".into(),
        owner: Some("sysop".into()),
        created_at_ms: T0 + 60_000,
        author,
        deleted: false,
        plaintext_len: 70_000,
        chunks: vec![
            ChunkRef {
                id: ChunkId([0xc1; 32]),
                len: 65_566,
            },
            ChunkRef {
                id: ChunkId([0xc2; 32]),
                len: 4_494,
            },
        ],
        meta: Some(sample_meta()),
        key_commit: Some(bbsync_protocol::key_commitment(
            &content_key(),
            &object_id(),
        )),
    }
}

/// [`sample_manifest`] in the legacy format 1 (no key commitment).
pub fn sample_manifest_v1(author: InstanceId) -> Manifest {
    Manifest {
        format: 1,
        key_commit: None,
        ..sample_manifest(author)
    }
}

/// [`sample_tombstone`] in the legacy format 1.
pub fn sample_tombstone_v1(author: InstanceId) -> Manifest {
    Manifest {
        format: 1,
        ..sample_tombstone(author)
    }
}

/// A tombstone version of [`sample_manifest`]'s object.
pub fn sample_tombstone(author: InstanceId) -> Manifest {
    Manifest {
        version: 4,
        owner: None,
        created_at_ms: T0 + 120_000,
        deleted: true,
        plaintext_len: 0,
        chunks: vec![],
        meta: None,
        key_commit: None,
        ..sample_manifest(author)
    }
}

/// The small-order (non-contributory) x25519 public keys: the seven u
/// coordinates of libsodium's blocklist, and the same with the unused top
/// bit set (X25519 ignores it).
pub fn low_order_points() -> Vec<[u8; 32]> {
    let mut base: Vec<[u8; 32]> = Vec::new();
    let mut zero = [0u8; 32];
    base.push(zero);
    zero[0] = 1;
    base.push(zero);
    base.push(hex32(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    ));
    base.push(hex32(
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    ));
    base.push(hex32(
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ));
    base.push(hex32(
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ));
    base.push(hex32(
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ));
    let high: Vec<[u8; 32]> = base
        .iter()
        .map(|p| {
            let mut q = *p;
            q[31] |= 0x80;
            q
        })
        .collect();
    base.extend(high);
    base
}

/// Parses 64 hex digits.
pub fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).expect("hex").try_into().expect("32 bytes")
}

/// `bytes` with `mask` xored into the byte at `index`.
pub fn flipped(bytes: &[u8], index: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[index] ^= mask;
    out
}

// ---------------------------------------------------------------------------
// Independent implementation of the signed wire layout (DESIGN §4, signed.rs):
// postcard of `{format: u16, body: bytes, sig: bytes(64)}`, i.e.
// varint(format) || varint(len(body)) || body || varint(64) || sig,
// where sig = ed25519(signer, DOMAIN || body).
// ---------------------------------------------------------------------------

/// Unsigned LEB128, as postcard writes integers wider than a byte.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Reads an unsigned LEB128 at `*pos`.
pub fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The parts of a signed structure's wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireParts {
    /// The outer format number.
    pub format: u64,
    /// The signed body bytes.
    pub body: Vec<u8>,
    /// The ed25519 signature.
    pub sig: [u8; 64],
}

/// Splits wire bytes by hand; `None` unless they follow the layout exactly.
pub fn parse_wire(bytes: &[u8]) -> Option<WireParts> {
    let mut pos = 0;
    let format = read_varint(bytes, &mut pos)?;
    let body_len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
    let body = bytes.get(pos..pos.checked_add(body_len)?)?.to_vec();
    pos += body_len;
    if read_varint(bytes, &mut pos)? != 64 {
        return None;
    }
    let sig: [u8; 64] = bytes.get(pos..pos + 64)?.try_into().ok()?;
    pos += 64;
    (pos == bytes.len()).then_some(WireParts { format, body, sig })
}

/// Builds wire bytes by hand: signs `domain || body` with the ed25519 seed.
pub fn build_wire(format: u64, body: &[u8], domain: &[u8], ed25519_seed: &[u8; 32]) -> Vec<u8> {
    let key = ed25519_dalek::SigningKey::from_bytes(ed25519_seed);
    let sig = key.sign(&[domain, body].concat()).to_bytes();
    let mut out = varint(format);
    out.extend(varint(body.len() as u64));
    out.extend_from_slice(body);
    out.extend(varint(64));
    out.extend_from_slice(&sig);
    out
}

/// Checks by hand that `sig` is ed25519 by `signer` over `domain || body`.
pub fn signature_ok(signer: &InstanceId, domain: &[u8], body: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(signer.as_bytes()) else {
        return false;
    };
    key.verify_strict(
        &[domain, body].concat(),
        &ed25519_dalek::Signature::from_bytes(sig),
    )
    .is_ok()
}

/// RFC 4648 base32 without padding, lower case (the card string alphabet).
pub fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}
