//! Fixed-input test vectors for every format of `bbsync-protocol`, in the
//! style of arti's `tor-cell/tests/testvec_*.rs`.
//!
//! The expected values live in `tests/vectors/*.json` as hex. Each check goes
//! both ways: the value built from the fixed inputs encodes to exactly the
//! vector bytes, and the vector bytes decode (and verify) to exactly that
//! value. Besides, every construction is recomputed here from the formulas of
//! DESIGN §4 with the primitive crates directly (ed25519-dalek, x25519-dalek,
//! hkdf, hmac, aes-gcm, sha2) and a hand-written wire parser, so the vectors
//! pin the documented format and not only the crate's current behaviour.
//!
//! `tests/vectors/bad.json` holds malformed samples, each with the exact
//! [`ErrorKind`] its decoder must return.
//!
//! To regenerate the files after a deliberate format change (and only then:
//! a changed vector is a changed wire format), run
//!
//! ```text
//! cargo test -p bbsync-protocol --test vectors -- --ignored regenerate_vectors
//! ```
//!
//! and review the diff of `protocol/tests/vectors/`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Payload},
};
use bbsync_protocol::{
    Checkpoint, ChunkCipher, ChunkRef, Compression, ContentKey, EnvelopeEntry, Error, ErrorKind,
    Identity, InstanceCard, InstanceId, InviteId, Manifest, ManifestId, ObjectId, ObjectMeta, Role,
    RootBuilder, Shape, Signed, SignedBody, Snapshot, SnapshotObject, SnapshotTrust, Unverified,
    Unwrapper, WrapSession, card_from_str, card_to_string, encoding,
    envelope::wrap_content_key_with_ephemeral,
    invite::{INVITE_PREFIX, Invite, check_redeem_mac, secret_hash},
};
use common::*;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// Domain strings, spelled out here so that a change in the crate shows up.
const CARD_DOMAIN: &[u8] = b"bbsync/card/v1\0";
const MANIFEST_DOMAIN: &[u8] = b"bbsync/manifest/v1\0";
const ENTRY_DOMAIN: &[u8] = b"bbsync/envelope-entry/v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"bbsync/checkpoint/v1\0";
const SNAPSHOT_DOMAIN: &[u8] = b"bbsync/snapshot/v1\0";
const SNAPSHOT_PREHASH_DOMAIN: &[u8] = b"bbsync/snapshot/v2/sha256\0";
const KEY_COMMIT_DOMAIN: &[u8] = b"bbsync/key-commit/v1";
const ROOT_DOMAIN: &[u8] = b"bbsync/checkpoint-root/v1\0";
const CHUNK_NONCE_DOMAIN: &[u8] = b"bbsync/chunk-nonce/v1";
const CHUNK_AAD_DOMAIN: &[u8] = b"bbsync/chunk/v1";
const WRAP_INFO: &[u8] = b"bbsync/wrap/v1";
const IDENTITY_MAGIC: &[u8] = b"bbsync-identity\n";
const META_NONCE_DOMAIN: &[u8] = b"bbsync/meta-nonce/v1";
const META_AAD: &[u8] = b"bbsync/meta/v1";
const LOCAL_KEY_SALT: &[u8] = b"bbsync/local-key/v1";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const INVITE_STRING_DOMAIN: &[u8] = b"bbsync/invite-string/v1\0";
const INVITE_SECRET_DOMAIN: &[u8] = b"bbsync/invite-secret/v1\0";
const INVITE_REDEEM_DOMAIN: &[u8] = b"bbsync/invite-redeem/v1\0";

/// Stored chunk bytes are written out in full up to this size.
const FULL_STORED_LIMIT: usize = 1024;

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(s(v)).unwrap_or_else(|e| panic!("bad hex {v}: {e}"))
}

fn h32(v: &Value) -> [u8; 32] {
    h(v).try_into()
        .unwrap_or_else(|_| panic!("expected 32 bytes: {v}"))
}

/// The fixed identity of that name (its secrets are checked against
/// `identity.json` by [`identity_vectors`]).
fn ident(name: &str) -> Identity {
    match name {
        "alice" => alice(),
        "bob" => bob(),
        "carol" => carol(),
        other => panic!("no fixed identity {other}"),
    }
}

fn seed_of(name: &str) -> [u8; 32] {
    match name {
        "alice" => ALICE_SECRETS.0,
        "bob" => BOB_SECRETS.0,
        "carol" => CAROL_SECRETS.0,
        other => panic!("no fixed identity {other}"),
    }
}

fn x_secret_of(name: &str) -> [u8; 32] {
    match name {
        "alice" => ALICE_SECRETS.1,
        "bob" => BOB_SECRETS.1,
        "carol" => CAROL_SECRETS.1,
        other => panic!("no fixed identity {other}"),
    }
}

fn compression_of(v: &Value) -> Compression {
    match s(v) {
        "none" => Compression::None,
        other => {
            let level = other
                .strip_prefix("zstd-")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("bad compression {other}"));
            Compression::Zstd(level)
        }
    }
}

fn compression_name(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Zstd(l) => format!("zstd-{l}"),
    }
}

/// Builds a plaintext from its description in `chunks.json`.
fn plaintext_of(spec: &Value) -> Vec<u8> {
    if let Some(hexed) = spec.get("hex") {
        h(hexed)
    } else if let Some(text) = spec.get("repeat") {
        repeat_bytes(s(text).as_bytes(), n(&spec["len"]) as usize)
    } else if let Some(seed) = spec.get("splitmix64") {
        splitmix64_bytes(n(seed), n(&spec["len"]) as usize)
    } else {
        panic!("bad plaintext spec {spec}")
    }
}

fn manifest_to_json(m: &Manifest) -> Value {
    json!({
        "format": m.format,
        "object_id": m.object_id.to_hex(),
        "version": m.version,
        "kind": m.kind,
        "name": m.name,
        "owner": m.owner,
        "created_at_ms": m.created_at_ms,
        "author": m.author.to_hex(),
        "deleted": m.deleted,
        "plaintext_len": m.plaintext_len,
        "chunks": m.chunks.iter().map(|c| json!({"id": c.id.to_hex(), "len": c.len})).collect::<Vec<_>>(),
        "meta": m.meta.as_ref().map(hex::encode),
        "key_commit": m.key_commit.as_ref().map(hex::encode),
    })
}

fn manifest_from_json(v: &Value) -> Manifest {
    Manifest {
        format: n(&v["format"]) as u16,
        object_id: s(&v["object_id"]).parse().unwrap(),
        version: n(&v["version"]),
        kind: s(&v["kind"]).into(),
        name: s(&v["name"]).into(),
        owner: v["owner"].as_str().map(String::from),
        created_at_ms: n(&v["created_at_ms"]),
        author: s(&v["author"]).parse().unwrap(),
        deleted: v["deleted"].as_bool().unwrap(),
        plaintext_len: n(&v["plaintext_len"]),
        chunks: arr(&v["chunks"])
            .iter()
            .map(|c| ChunkRef {
                id: s(&c["id"]).parse().unwrap(),
                len: n(&c["len"]) as u32,
            })
            .collect(),
        meta: v["meta"].as_str().map(|m| hex::decode(m).unwrap()),
        key_commit: v["key_commit"]
            .as_str()
            .map(|m| hex::decode(m).unwrap().try_into().unwrap()),
    }
}

/// The decode direction for signed structures: decode, verify (trusting any
/// signer) and hand back the verified value.
fn decode_verify<T: SignedBody>(bytes: &[u8]) -> bbsync_protocol::Result<Signed<T>> {
    Unverified::<T>::decode(bytes)?.verify(|_| true)
}

/// Checks the wire layout of `bytes` by hand: outer format 1, the expected
/// body, a strict ed25519 signature by `signer` over `domain || body`, and
/// that signing the body again by hand reproduces the bytes exactly.
fn check_wire_by_hand(bytes: &[u8], body: &[u8], domain: &[u8], signer_seed: &[u8; 32]) {
    let parts = parse_wire(bytes).expect("wire layout");
    assert_eq!(parts.format, 1, "outer format");
    assert_eq!(parts.body, body, "body bytes");
    let signer = InstanceId(
        ed25519_dalek::SigningKey::from_bytes(signer_seed)
            .verifying_key()
            .to_bytes(),
    );
    assert!(
        signature_ok(&signer, domain, body, &parts.sig),
        "signature by hand"
    );
    assert_eq!(
        build_wire(1, body, domain, signer_seed),
        bytes,
        "wire rebuilt by hand"
    );
}

// ---------------------------------------------------------------------------
// Generation (run only on purpose, see the crate comment)
// ---------------------------------------------------------------------------

/// Purposes whose `Identity::local_key` is pinned by identity.json: the ones
/// the store derives (import fingerprints, §13.3; the record MAC, §13.4).
const LOCAL_KEY_PURPOSES: [&str; 2] = ["fingerprint", "record-mac"];

const REGEN: &str = "cargo test -p bbsync-protocol --test vectors -- --ignored regenerate_vectors";

fn gen_identities() -> Value {
    let rows: Vec<Value> = [
        ("alice", T0, ALICE_SECRETS),
        ("bob", T0 + 1, BOB_SECRETS),
        ("carol", T0 + 2, CAROL_SECRETS),
    ]
    .iter()
    .map(|(name, created, (ed, x))| {
        let id = Identity::from_secrets(name, *created, *ed, *x).unwrap();
        json!({
            "name": name,
            "created_at_ms": created,
            "ed25519_secret": hex::encode(ed),
            "x25519_secret": hex::encode(x),
            "instance_id": id.instance_id().to_hex(),
            "x25519_public": hex::encode(id.x25519_public()),
            "file": hex::encode(&*id.to_file_bytes()),
            "local_keys": LOCAL_KEY_PURPOSES
                .iter()
                .map(|p| json!({"purpose": p, "key": hex::encode(*id.local_key(p))}))
                .collect::<Vec<_>>(),
        })
    })
    .collect();
    json!({
        "comment": "Identity::from_secrets(name, created_at_ms, ed25519_secret, x25519_secret): instance_id = ed25519 public key, x25519_public = X25519(secret, 9), file = Identity::to_file_bytes = magic || postcard(SecretFile) || SHA-256(body). local_keys: Identity::local_key(purpose) = HKDF-SHA256(salt = \"bbsync/local-key/v1\", ikm = ed25519_secret, info = \"bbsync/local/\" || purpose).",
        "regenerate": REGEN,
        "identities": rows,
    })
}

fn gen_cards() -> Value {
    let specs: [(&str, Vec<&str>, u64); 2] = [
        (
            "alice",
            vec!["/ip4/192.0.2.10/tcp/4001", "/dns4/bbs.example.org/tcp/4001"],
            T0 + 1_000,
        ),
        ("bob", vec![], T0 + 2_000),
    ];
    let rows: Vec<Value> = specs
        .iter()
        .map(|(who, addrs, created)| {
            let id = ident(who);
            let card = id
                .card(addrs.iter().map(|a| a.to_string()).collect(), *created)
                .unwrap();
            json!({
                "identity": who,
                "addresses": addrs,
                "created_at_ms": created,
                "body": hex::encode(card.body_bytes()),
                "bytes": hex::encode(card.bytes()),
                "string": card_to_string(&card),
            })
        })
        .collect();
    json!({
        "comment": "Identity::card(addresses, created_at_ms) of the fixed identities (identity.json). bytes = postcard Wire {format 1, body, ed25519(\"bbsync/card/v1\\0\" || body)}; string = \"bbsync1\" + lower-case unpadded base32 of bytes.",
        "regenerate": REGEN,
        "cards": rows,
    })
}

fn gen_chunks() -> Value {
    let key = content_key();
    let cipher = ChunkCipher::new(&key);
    let plaintexts: Vec<(&str, Value)> = vec![
        ("empty", json!({"hex": ""})),
        ("short-text", json!({"hex": hex::encode(b"Hello, BBS!\n")})),
        (
            "compressible-100k",
            json!({"repeat": COMPRESSIBLE_TEXT, "len": 100 * 1024}),
        ),
        (
            "random-100k",
            json!({"splitmix64": 0x6262_7379_6e63_u64, "len": 100 * 1024}),
        ),
    ];
    let mut rows = Vec::new();
    for (name, spec) in &plaintexts {
        let pt = plaintext_of(spec);
        for comp in [Compression::None, Compression::Zstd(3)] {
            let sealed = cipher.seal(&pt, comp).unwrap();
            let mut row = json!({
                "name": format!("{name}/{}", compression_name(comp)),
                "plaintext": spec,
                "plaintext_sha256": hex::encode(Sha256::digest(&pt)),
                "compression": compression_name(comp),
                "nonce": hex::encode(&sealed.bytes[2..14]),
                "flags": sealed.bytes[1],
                "stored_len": sealed.bytes.len(),
                "id": sealed.id.to_hex(),
            });
            if sealed.bytes.len() <= FULL_STORED_LIMIT {
                row["stored"] = json!(hex::encode(&sealed.bytes));
            }
            rows.push(row);
        }
    }
    json!({
        "comment": "ChunkCipher::new(key).seal(plaintext, compression). data = plaintext, or its zstd compression when smaller (flags = 1); nonce = HMAC-SHA256(key, \"bbsync/chunk-nonce/v1\" || flags || data)[..12]; stored = 01 || flags || nonce || AES-256-GCM(key, nonce, data, aad = \"bbsync/chunk/v1\" || flags); id = SHA-256(stored). Plaintexts: hex, or `repeat` text cycled to len bytes, or `splitmix64` seed: SplitMix64 outputs as little-endian u64s, truncated to len. Compressed vectors depend on the zstd library version (pinned by Cargo.lock). `stored` is given when at most 1024 bytes.",
        "regenerate": REGEN,
        "key": hex::encode(key.as_bytes()),
        "chunks": rows,
    })
}

fn manifest_rows(ms: Vec<Manifest>) -> Vec<Value> {
    let a = alice();
    ms.into_iter()
        .map(|m| {
            let signed = Signed::sign(&a, m.clone()).unwrap();
            json!({
                "signer": "alice",
                "manifest": manifest_to_json(&m),
                "body": hex::encode(signed.body_bytes()),
                "bytes": hex::encode(signed.bytes()),
                "manifest_id": signed.id().to_hex(),
            })
        })
        .collect()
}

fn gen_manifests() -> Value {
    let a = alice().instance_id();
    json!({
        "comment": "Signed::sign(alice, manifest). bytes = postcard Wire {format 1, body = postcard(Manifest), ed25519(\"bbsync/manifest/v1\\0\" || body)}; manifest_id = SHA-256(body). Format 2 (\"manifests\") = the fields of format 1, then key_commit: Option<[u8; 32]> = HMAC-SHA256(K, \"bbsync/key-commit/v1\" || object_id) for a content version (K = the content key of chunks.json), None on a tombstone. \"legacy_v1\" rows are the same values in format 1, written before the key commitment: still read (decode and verify), never written by this version.",
        "regenerate": REGEN,
        "manifests": manifest_rows(vec![sample_manifest(a), sample_tombstone(a)]),
        "legacy_v1": manifest_rows(vec![sample_manifest_v1(a), sample_tombstone_v1(a)]),
    })
}

/// The snapshot of the vectors: alice's, trusting bob (full) and carol
/// (blind), two objects; in the format this version writes.
fn sample_snapshot() -> Snapshot {
    sample_snapshot_of(bbsync_protocol::SNAPSHOT_FORMAT)
}

/// The same in snapshot format `format` (1: the whole body signed; 2: its
/// SHA-256; 3: the same, and the body ends with the digest of the two
/// objects' manifest files, whose hashes are [0x31; 32] and [0x32; 32]).
fn sample_snapshot_of(format: u16) -> Snapshot {
    let card = |who: &str, t: u64| ident(who).card(Vec::new(), t).unwrap().bytes().to_vec();
    Snapshot {
        format,
        id: "20231114T221320Z-0a0b0c0d".into(),
        created_ms: T0,
        host: alice().instance_id(),
        host_card: card("alice", T0),
        description: "nightly".into(),
        tags: vec!["cron".into(), "weekly".into()],
        bbsync_version: "0.1.0".into(),
        schema_version: 2,
        only: vec![],
        counts: vec![("file".into(), 1), ("message".into(), 1)],
        bytes: 70_060,
        plaintext_bytes: 70_000,
        chunks: 2,
        trust: vec![
            SnapshotTrust {
                card: card("bob", T0 + 1),
                role: Role::Full,
            },
            SnapshotTrust {
                card: card("carol", T0 + 2),
                role: Role::Blind,
            },
        ],
        identity_escrow: Some(format!("keys/identity.{}", alice().instance_id())),
        objects: vec![
            SnapshotObject {
                object_id: ObjectId([0x10; 16]),
                version: 1,
                manifest_id: ManifestId([0x01; 32]),
            },
            SnapshotObject {
                object_id: object_id(),
                version: 3,
                manifest_id: ManifestId([0xaa; 32]),
            },
        ],
        manifest_files: (format >= 3)
            .then(|| bbsync_protocol::manifest_files_digest([Some([0x31; 32]), Some([0x32; 32])])),
    }
}

/// The snapshot body encoded by hand (postcard of Snapshot, field by field).
fn snapshot_body_by_hand(s: &Snapshot) -> Vec<u8> {
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend(varint(b.len() as u64));
        out.extend_from_slice(b);
    };
    let mut out = varint(u64::from(s.format));
    bytes(&mut out, s.id.as_bytes());
    out.extend(varint(s.created_ms));
    out.extend_from_slice(s.host.as_bytes());
    bytes(&mut out, &s.host_card);
    bytes(&mut out, s.description.as_bytes());
    out.extend(varint(s.tags.len() as u64));
    for t in &s.tags {
        bytes(&mut out, t.as_bytes());
    }
    bytes(&mut out, s.bbsync_version.as_bytes());
    out.extend(varint(u64::from(s.schema_version)));
    out.extend(varint(s.only.len() as u64));
    for o in &s.only {
        bytes(&mut out, o.as_bytes());
    }
    out.extend(varint(s.counts.len() as u64));
    for (k, n) in &s.counts {
        bytes(&mut out, k.as_bytes());
        out.extend(varint(*n));
    }
    out.extend(varint(s.bytes));
    out.extend(varint(s.plaintext_bytes));
    out.extend(varint(s.chunks));
    out.extend(varint(s.trust.len() as u64));
    for t in &s.trust {
        bytes(&mut out, &t.card);
        out.push(match t.role {
            Role::Full => 0,
            Role::Blind => 1,
        });
    }
    match &s.identity_escrow {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            bytes(&mut out, p.as_bytes());
        }
    }
    out.extend(varint(s.objects.len() as u64));
    for o in &s.objects {
        out.extend_from_slice(o.object_id.as_bytes());
        out.extend(varint(o.version));
        out.extend_from_slice(o.manifest_id.as_bytes());
    }
    if s.format >= 3 {
        // SHA-256("bbsync/snapshot/manifest-files/v1\0" || each file's hash).
        let mut h = Sha256::new();
        h.update(b"bbsync/snapshot/manifest-files/v1\0");
        h.update([0x31; 32]);
        h.update([0x32; 32]);
        let d: [u8; 32] = h.finalize().into();
        assert_eq!(s.manifest_files, Some(d));
        out.extend_from_slice(&d);
    }
    out
}

fn gen_snapshots() -> Value {
    let a = alice();
    let rows: Vec<Value> = [1u16, 2, 3]
        .into_iter()
        .map(|format| {
            let snap = sample_snapshot_of(format);
            let signed = Signed::sign(&a, snap.clone()).unwrap();
            json!({
                "signer": "alice",
                "format": format,
                "id": snap.id,
                "body": hex::encode(signed.body_bytes()),
                "bytes": hex::encode(signed.bytes()),
            })
        })
        .collect();
    json!({
        "comment": "Signed::sign(alice, snapshot): bytes = postcard Wire {format 1, body = postcard(Snapshot), sig} by the host; snapshot format 1: sig = ed25519(\"bbsync/snapshot/v1\\0\" || body); snapshot format 2 (written since issue 13's fifth session; same body layout): sig = ed25519(\"bbsync/snapshot/v2/sha256\\0\" || SHA-256(body)); snapshot format 3 (written since 2026-12-01): signed as format 2, and the body ends, after objects, with manifest_files (32 raw bytes) = SHA-256(\"bbsync/snapshot/manifest-files/v1\\0\" || the SHA-256 of each object's manifest file, in object order; here [0x31; 32] and [0x32; 32]). Fields in order: format, id, created_ms, host (32 raw), host_card (bytes: the host's card wire bytes), description, tags, bbsync_version, schema_version, only, counts [(kind, n)], bytes, plaintext_bytes, chunks, trust [(card bytes, role: 0 full / 1 blind)], identity_escrow (option), objects [(object_id 16 raw, version, manifest_id 32 raw)]. Cards: Identity::card([], created) of alice (T0), bob (T0+1), carol (T0+2). Repository format 1 stores base64(bytes) in snapshots/<id>.json.",
        "regenerate": REGEN,
        "snapshots": rows,
    })
}

fn gen_envelopes() -> Value {
    let key = content_key();
    let specs = [
        ("alice", "bob", 3u64, [0x42u8; 32]),
        ("alice", "alice", 4, [0x43; 32]),
        // One session: the same ephemeral key for several entries.
        ("alice", "bob", 5, [0x44; 32]),
        ("alice", "carol", 5, [0x44; 32]),
        ("alice", "bob", 6, [0x44; 32]),
    ];
    let rows: Vec<Value> = specs
        .iter()
        .map(|(w, r, version, eph)| {
            let wrapper = ident(w);
            let recipient = ident(r);
            let entry = wrap_content_key_with_ephemeral(
                &wrapper,
                object_id(),
                *version,
                recipient.instance_id(),
                &recipient.x25519_public(),
                &key,
                *eph,
            )
            .unwrap();
            let (shared, wrap_key) = wrap_by_hand(
                eph,
                &recipient.x25519_public(),
                &object_id(),
                *version,
                &recipient.instance_id(),
            );
            json!({
                "wrapper": w,
                "recipient": r,
                "object_id": object_id().to_hex(),
                "version": version,
                "content_key": hex::encode(key.as_bytes()),
                "eph_secret": hex::encode(eph),
                "eph_pub": hex::encode(entry.eph_pub),
                "shared_secret": hex::encode(shared),
                "wrap_key": hex::encode(wrap_key),
                "wrapped_body": hex::encode(entry.body),
                "body": hex::encode(entry.body_bytes()),
                "bytes": hex::encode(entry.bytes()),
            })
        })
        .collect();
    json!({
        "comment": "WrapSession::with_ephemeral(wrapper, eph_secret).wrap(object_id, version, recipient id, recipient x25519, content_key) (= wrap_content_key_with_ephemeral for a one-entry session). Rows with the same eph_secret come from one session. shared = X25519(eph, recipient_x25519); wrap_key = HKDF-SHA256(ikm = shared, salt = eph_pub || recipient_x25519, info = \"bbsync/wrap/v1\" || object_id || version_be64 || recipient_id); wrapped_body = AES-256-GCM(wrap_key, nonce = 0^12, content_key, aad = object_id || version_be64 || recipient_id); bytes = postcard Wire {format 1, body = postcard(EnvelopeEntry), ed25519(\"bbsync/envelope-entry/v1\\0\" || body)}.",
        "regenerate": REGEN,
        "entries": rows,
    })
}

fn gen_meta() -> Value {
    let cipher = ChunkCipher::new(&content_key());
    let rows: Vec<Value> = [("file", Shape::File), ("dir", Shape::Dir)]
        .iter()
        .map(|(name, shape)| {
            let meta = ObjectMeta {
                format: 1,
                shape: *shape,
                mode: None,
            };
            let encoded = meta.encode();
            let sealed = cipher.seal_meta(&encoded).unwrap();
            json!({
                "shape": name,
                "encoded": hex::encode(&encoded),
                "sealed": hex::encode(&sealed),
            })
        })
        .collect();
    json!({
        "comment": "ObjectMeta {format 1, shape} encoded with postcard, then ChunkCipher::new(key).seal_meta: sealed = nonce || AES-256-GCM(key, nonce, encoded, aad = \"bbsync/meta/v1\"), nonce = HMAC-SHA256(key, \"bbsync/meta-nonce/v1\" || encoded)[..12].",
        "regenerate": REGEN,
        "key": hex::encode(content_key_bytes()),
        "metas": rows,
    })
}

fn checkpoint_items() -> Vec<(ObjectId, u64, ManifestId)> {
    // Deliberately not in sorted order.
    vec![
        (ObjectId([0x30; 16]), 7, ManifestId([0x03; 32])),
        (ObjectId([0x10; 16]), 1, ManifestId([0x01; 32])),
        (ObjectId([0xf0; 16]), 2, ManifestId([0x0f; 32])),
        (ObjectId([0x20; 16]), u64::MAX, ManifestId([0x02; 32])),
        (object_id(), 3, ManifestId([0xaa; 32])),
    ]
}

fn gen_checkpoints() -> Value {
    let a = alice();
    let lists: Vec<Vec<(ObjectId, u64, ManifestId)>> = vec![vec![], checkpoint_items()];
    let rows: Vec<Value> = lists
        .iter()
        .enumerate()
        .map(|(i, items)| {
            let mut rb = RootBuilder::new();
            for (o, v, m) in items {
                rb.push(*o, *v, *m);
            }
            let count = rb.count();
            let root = rb.finish();
            let cp = Checkpoint {
                format: 1,
                instance: a.instance_id(),
                seq: 42 + i as u64,
                count,
                root,
                created_at_ms: T0 + 3_600_000,
            };
            let signed = Signed::sign(&a, cp).unwrap();
            json!({
                "signer": "alice",
                "items": items.iter().map(|(o, v, m)| json!({"object_id": o.to_hex(), "version": v, "manifest_id": m.to_hex()})).collect::<Vec<_>>(),
                "root": hex::encode(root),
                "seq": 42 + i as u64,
                "count": count,
                "created_at_ms": T0 + 3_600_000,
                "body": hex::encode(signed.body_bytes()),
                "bytes": hex::encode(signed.bytes()),
            })
        })
        .collect();
    json!({
        "comment": "RootBuilder over items (pushed in the listed order): root = SHA-256(\"bbsync/checkpoint-root/v1\\0\" || for each item sorted: object_id || version_be64 || manifest_id). Checkpoint {format 1, instance: alice, seq, count, root, created_at_ms} signed by alice: postcard Wire with domain \"bbsync/checkpoint/v1\\0\".",
        "regenerate": REGEN,
        "checkpoints": rows,
    })
}

/// The identity file body, encoded by hand (postcard of SecretFile).
fn identity_body_by_hand(
    format: u64,
    name: &str,
    created: u64,
    ed: &[u8; 32],
    x: &[u8; 32],
) -> Vec<u8> {
    let mut body = varint(format);
    body.extend(varint(name.len() as u64));
    body.extend_from_slice(name.as_bytes());
    body.extend(varint(created));
    body.extend_from_slice(ed);
    body.extend_from_slice(x);
    body
}

fn identity_file_by_hand(body: &[u8]) -> Vec<u8> {
    [IDENTITY_MAGIC, body, &Sha256::digest(body)].concat()
}

fn bad(name: &str, decoder: &str, input: &[u8], kind: ErrorKind, why: &str) -> Value {
    json!({"name": name, "decoder": decoder, "hex": hex::encode(input), "kind": format!("{kind:?}"), "why": why})
}

fn gen_bad() -> Value {
    let a = alice();
    let b = bob();
    let seed = ALICE_SECRETS.0;
    let mut rows = Vec::new();

    // Manifests.
    let good = Signed::sign(&a, sample_manifest(a.instance_id())).unwrap();
    let bytes = good.bytes().to_vec();
    let body = good.body_bytes().to_vec();
    rows.push(bad(
        "manifest/bad-empty",
        "manifest",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "manifest/bad-truncated",
        "manifest",
        &bytes[..bytes.len() - 1],
        ErrorKind::Malformed,
        "last signature byte missing",
    ));
    rows.push(bad(
        "manifest/bad-trailing-byte",
        "manifest",
        &[&bytes[..], &[0]].concat(),
        ErrorKind::Malformed,
        "one byte after the wire structure",
    ));
    rows.push(bad(
        "manifest/bad-wire-format-2",
        "manifest",
        &flipped(&bytes, 0, 0x03),
        ErrorKind::UnsupportedFormat,
        "outer format 2",
    ));
    let mut m3 = sample_manifest(a.instance_id());
    m3.format = 3;
    let f3 = Signed::sign(&a, m3).unwrap();
    rows.push(bad(
        "manifest/bad-format-3",
        "manifest",
        f3.bytes(),
        ErrorKind::UnsupportedFormat,
        "body format 3 (1 and 2 are read), validly signed",
    ));
    let mut no_commit = sample_manifest(a.instance_id());
    no_commit.key_commit = None;
    rows.push(bad(
        "manifest/bad-no-key-commit",
        "manifest",
        &build_wire(1, &encoding::encode(&no_commit), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed format-2 content version without a key commitment",
    ));
    let mut max = sample_manifest(a.instance_id());
    max.version = u64::MAX;
    rows.push(bad(
        "manifest/bad-version-u64-max",
        "manifest",
        &build_wire(1, &encoding::encode(&max), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed manifest at version u64::MAX (above MAX_VERSION = 2^53 - 1)",
    ));
    let mut bidi = sample_manifest(a.instance_id());
    bidi.name = "general/\u{202e}nosj.0001".into();
    rows.push(bad(
        "manifest/bad-bidi-name",
        "manifest",
        &build_wire(1, &encoding::encode(&bidi), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed manifest whose name holds U+202E RIGHT-TO-LEFT OVERRIDE",
    ));

    // Snapshots.
    let snap = Signed::sign(&a, sample_snapshot()).unwrap();
    let sb = snap.bytes().to_vec();
    rows.push(bad(
        "snapshot/bad-signature",
        "snapshot",
        &flipped(&sb, sb.len() - 10, 0x01),
        ErrorKind::BadSignature,
        "one signature bit flipped",
    ));
    rows.push(bad(
        "snapshot/bad-trailing-byte",
        "snapshot",
        &[&sb[..], &[0]].concat(),
        ErrorKind::Malformed,
        "one byte after the wire structure",
    ));
    // (Signed by hand as format 1: the whole body.)
    let mut unsorted = sample_snapshot_of(1);
    unsorted.objects.reverse();
    rows.push(bad(
        "snapshot/bad-unsorted-objects",
        "snapshot",
        &build_wire(1, &encoding::encode(&unsorted), SNAPSHOT_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed snapshot whose objects are not sorted by id",
    ));
    let mut other_card = sample_snapshot_of(1);
    other_card.host_card = ident("bob").card(Vec::new(), T0).unwrap().bytes().to_vec();
    rows.push(bad(
        "snapshot/bad-host-card",
        "snapshot",
        &build_wire(1, &encoding::encode(&other_card), SNAPSHOT_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed by alice, but the host card is bob's",
    ));
    rows.push(bad(
        "manifest/bad-signature",
        "manifest",
        &flipped(&bytes, bytes.len() - 40, 0x01),
        ErrorKind::BadSignature,
        "one signature bit flipped",
    ));
    rows.push(bad(
        "manifest/bad-body-bit",
        "manifest",
        &flipped(&bytes, 5, 0x01),
        ErrorKind::BadSignature,
        "one object_id bit flipped",
    ));
    rows.push(bad(
        "manifest/bad-body-trailing-byte",
        "manifest",
        &build_wire(1, &[&body[..], &[0]].concat(), MANIFEST_DOMAIN, &seed),
        ErrorKind::Malformed,
        "validly signed body with one byte after the manifest",
    ));
    let mut v0 = sample_manifest(a.instance_id());
    v0.version = 0;
    rows.push(bad(
        "manifest/bad-version-0",
        "manifest",
        &build_wire(1, &encoding::encode(&v0), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed manifest with version 0",
    ));
    let mut kind = sample_manifest(a.instance_id());
    kind.kind = "Message".into();
    rows.push(bad(
        "manifest/bad-kind",
        "manifest",
        &build_wire(1, &encoding::encode(&kind), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed manifest with an upper-case kind",
    ));
    let mut tomb_meta = sample_tombstone(a.instance_id());
    tomb_meta.meta = Some(sample_meta());
    rows.push(bad(
        "manifest/bad-tombstone-with-meta",
        "manifest",
        &build_wire(1, &encoding::encode(&tomb_meta), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed tombstone that still carries a meta blob",
    ));
    let mut tiny = sample_manifest(a.instance_id());
    tiny.chunks[1].len = 29;
    rows.push(bad(
        "manifest/bad-chunk-len-29",
        "manifest",
        &build_wire(1, &encoding::encode(&tiny), MANIFEST_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed manifest naming a chunk shorter than header and tag",
    ));
    rows.push(bad(
        "manifest/bad-signer-is-not-author",
        "manifest",
        &build_wire(
            1,
            &encoding::encode(&sample_manifest(b.instance_id())),
            MANIFEST_DOMAIN,
            &seed,
        ),
        ErrorKind::BadSignature,
        "author is bob, signed by alice",
    ));
    let parts = parse_wire(&bytes).unwrap();
    let mut short_sig = varint(1);
    short_sig.extend(varint(body.len() as u64));
    short_sig.extend_from_slice(&body);
    short_sig.extend(varint(63));
    short_sig.extend_from_slice(&parts.sig[..63]);
    rows.push(bad(
        "manifest/bad-sig-length-63",
        "manifest",
        &short_sig,
        ErrorKind::Malformed,
        "signature of 63 bytes",
    ));
    rows.push(bad(
        "manifest/bad-card-domain",
        "manifest",
        &build_wire(1, &body, CARD_DOMAIN, &seed),
        ErrorKind::BadSignature,
        "manifest body signed under the card domain",
    ));

    // Envelope entries.
    let entry = wrap_content_key_with_ephemeral(
        &a,
        object_id(),
        3,
        b.instance_id(),
        &b.x25519_public(),
        &content_key(),
        [0x42; 32],
    )
    .unwrap();
    let eb = entry.bytes().to_vec();
    rows.push(bad(
        "envelope-entry/bad-empty",
        "envelope-entry",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "envelope-entry/bad-truncated",
        "envelope-entry",
        &eb[..eb.len() - 1],
        ErrorKind::Malformed,
        "last signature byte missing",
    ));
    rows.push(bad(
        "envelope-entry/bad-trailing-byte",
        "envelope-entry",
        &[&eb[..], &[0]].concat(),
        ErrorKind::Malformed,
        "one byte after the wire structure",
    ));
    let mut e2 = entry.value().clone();
    e2.format = 2;
    rows.push(bad(
        "envelope-entry/bad-format-2",
        "envelope-entry",
        Signed::sign(&a, e2).unwrap().bytes(),
        ErrorKind::UnsupportedFormat,
        "body format 2, validly signed",
    ));
    // The wrapped body's length prefix sits after format(1) object_id(16) version(1) recipient(32) eph_pub(32).
    let ebody = entry.body_bytes().to_vec();
    assert_eq!(ebody[82], 48, "wrapped body length prefix");
    // Drop the last byte of the wrapped key and fix its length prefix; wrapped_by stays whole.
    let short_body = [&ebody[..82], &[47], &ebody[83..83 + 47], &ebody[83 + 48..]].concat();
    rows.push(bad(
        "envelope-entry/bad-wrapped-body-47",
        "envelope-entry",
        &build_wire(1, &short_body, ENTRY_DOMAIN, &seed),
        ErrorKind::Malformed,
        "validly signed entry whose wrapped key is 47 bytes",
    ));
    rows.push(bad(
        "envelope-entry/bad-recipient-swapped",
        "envelope-entry",
        &swap_bytes(
            &eb,
            b.instance_id().as_bytes(),
            carol().instance_id().as_bytes(),
        ),
        ErrorKind::BadSignature,
        "recipient replaced by carol in the signed bytes",
    ));

    // Cards.
    let card = a
        .card(vec!["/ip4/192.0.2.10/tcp/4001".into()], T0 + 1_000)
        .unwrap();
    let cb = card.bytes().to_vec();
    rows.push(bad(
        "card/bad-empty",
        "card",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "card/bad-truncated",
        "card",
        &cb[..cb.len() - 1],
        ErrorKind::Malformed,
        "last signature byte missing",
    ));
    rows.push(bad(
        "card/bad-trailing-byte",
        "card",
        &[&cb[..], &[0]].concat(),
        ErrorKind::Malformed,
        "one byte after the wire structure",
    ));
    let mut c2 = card.value().clone();
    c2.format = 2;
    rows.push(bad(
        "card/bad-format-2",
        "card",
        Signed::sign(&a, c2).unwrap().bytes(),
        ErrorKind::UnsupportedFormat,
        "body format 2, validly signed",
    ));
    let mut noname = card.value().clone();
    noname.name = String::new();
    rows.push(bad(
        "card/bad-empty-name",
        "card",
        &build_wire(1, &encoding::encode(&noname), CARD_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed card with an empty name",
    ));
    let mut ctl = card.value().clone();
    ctl.addresses = vec!["/ip4/192.0.2.10/tcp/4001\n".into()];
    rows.push(bad(
        "card/bad-address-control-char",
        "card",
        &build_wire(1, &encoding::encode(&ctl), CARD_DOMAIN, &seed),
        ErrorKind::Invalid,
        "validly signed card with a newline in an address",
    ));
    let mut other = card.value().clone();
    other.instance = b.instance_id();
    rows.push(bad(
        "card/bad-signed-by-other",
        "card",
        &build_wire(1, &encoding::encode(&other), CARD_DOMAIN, &seed),
        ErrorKind::BadSignature,
        "card naming bob, signed by alice",
    ));

    // Card strings (input is the UTF-8 string, hex encoded like the rest).
    let good_str = card_to_string(&card);
    let payload = good_str.strip_prefix("bbsync1").unwrap();
    let mut bad_sig = cb.clone();
    let i = bad_sig.len() - 32;
    bad_sig[i] ^= 0x01;
    for (name, text, kind, why) in [
        (
            "card-string/bad-empty",
            String::new(),
            ErrorKind::Malformed,
            "empty string",
        ),
        (
            "card-string/bad-prefix",
            format!("bbsync2{payload}"),
            ErrorKind::Malformed,
            "wrong prefix",
        ),
        (
            "card-string/bad-no-prefix",
            payload.to_string(),
            ErrorKind::Malformed,
            "no prefix",
        ),
        (
            "card-string/bad-base32-symbol",
            format!("bbsync1{}1{}", &payload[..10], &payload[11..]),
            ErrorKind::Malformed,
            "'1' is not base32",
        ),
        (
            "card-string/bad-base32-length",
            format!("bbsync1{}", &payload[..payload.len() - 1]),
            ErrorKind::Malformed,
            "one symbol short",
        ),
        (
            "card-string/bad-garbage",
            format!("bbsync1{}", base32_lower(b"hello, world")),
            ErrorKind::Malformed,
            "valid base32 of garbage",
        ),
        (
            "card-string/bad-signature",
            format!("bbsync1{}", base32_lower(&bad_sig)),
            ErrorKind::BadSignature,
            "valid card with one signature bit flipped",
        ),
    ] {
        rows.push(bad(name, "card-string", text.as_bytes(), kind, why));
    }

    // Checkpoints.
    let cp = Checkpoint {
        format: 1,
        instance: a.instance_id(),
        seq: 42,
        count: 0,
        root: RootBuilder::new().finish(),
        created_at_ms: T0,
    };
    let kb = Signed::sign(&a, cp.clone()).unwrap().bytes().to_vec();
    rows.push(bad(
        "checkpoint/bad-empty",
        "checkpoint",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "checkpoint/bad-truncated",
        "checkpoint",
        &kb[..kb.len() - 1],
        ErrorKind::Malformed,
        "last signature byte missing",
    ));
    rows.push(bad(
        "checkpoint/bad-trailing-byte",
        "checkpoint",
        &[&kb[..], &[0]].concat(),
        ErrorKind::Malformed,
        "one byte after the wire structure",
    ));
    rows.push(bad(
        "checkpoint/bad-format-2",
        "checkpoint",
        Signed::sign(
            &a,
            Checkpoint {
                format: 2,
                ..cp.clone()
            },
        )
        .unwrap()
        .bytes(),
        ErrorKind::UnsupportedFormat,
        "body format 2, validly signed",
    ));
    rows.push(bad(
        "checkpoint/bad-manifest-bytes",
        "checkpoint",
        &bytes,
        ErrorKind::Malformed,
        "a manifest is not a checkpoint",
    ));

    // Identity files.
    let (ed, x) = ALICE_SECRETS;
    let file = a.to_file_bytes().to_vec();
    rows.push(bad(
        "identity-file/bad-empty",
        "identity-file",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "identity-file/bad-magic",
        "identity-file",
        &flipped(&file, 0, 0x20),
        ErrorKind::Malformed,
        "magic in upper case",
    ));
    rows.push(bad(
        "identity-file/bad-checksum",
        "identity-file",
        &flipped(&file, file.len() - 1, 0x01),
        ErrorKind::Malformed,
        "checksum bit flipped",
    ));
    rows.push(bad(
        "identity-file/bad-body-bit",
        "identity-file",
        &flipped(&file, 30, 0x01),
        ErrorKind::Malformed,
        "secret bit flipped",
    ));
    rows.push(bad(
        "identity-file/bad-truncated",
        "identity-file",
        &file[..file.len() - 1],
        ErrorKind::Malformed,
        "last checksum byte missing",
    ));
    rows.push(bad(
        "identity-file/bad-trailing-byte",
        "identity-file",
        &[&file[..], b"\n"].concat(),
        ErrorKind::Malformed,
        "newline after the checksum",
    ));
    rows.push(bad(
        "identity-file/bad-format-2",
        "identity-file",
        &identity_file_by_hand(&identity_body_by_hand(2, "alice", T0, &ed, &x)),
        ErrorKind::UnsupportedFormat,
        "format 2 with a correct checksum",
    ));
    rows.push(bad(
        "identity-file/bad-empty-name",
        "identity-file",
        &identity_file_by_hand(&identity_body_by_hand(1, "", T0, &ed, &x)),
        ErrorKind::Invalid,
        "empty name with a correct checksum",
    ));
    rows.push(bad(
        "identity-file/bad-body-trailing-byte",
        "identity-file",
        &identity_file_by_hand(&[identity_body_by_hand(1, "alice", T0, &ed, &x), vec![0]].concat()),
        ErrorKind::Malformed,
        "one byte after the body, with a correct checksum",
    ));

    // Chunks, opened with the key of chunks.json.
    let cipher = ChunkCipher::new(&content_key());
    let sealed = cipher.seal(b"Hello, BBS!\n", Compression::None).unwrap();
    let sb = sealed.bytes.clone();
    rows.push(bad(
        "chunk/bad-empty",
        "chunk",
        &[],
        ErrorKind::Malformed,
        "empty input",
    ));
    rows.push(bad(
        "chunk/bad-truncated-29",
        "chunk",
        &cipher.seal(b"", Compression::None).unwrap().bytes[..29],
        ErrorKind::Malformed,
        "shorter than header and tag",
    ));
    rows.push(bad(
        "chunk/bad-format-2",
        "chunk",
        &flipped(&sb, 0, 0x03),
        ErrorKind::UnsupportedFormat,
        "format byte 2",
    ));
    rows.push(bad(
        "chunk/bad-flags-2",
        "chunk",
        &flipped(&sb, 1, 0x02),
        ErrorKind::Malformed,
        "unknown flag bit",
    ));
    rows.push(bad(
        "chunk/bad-compressed-flag",
        "chunk",
        &flipped(&sb, 1, 0x01),
        ErrorKind::Crypto,
        "compressed flag set on an uncompressed chunk (authenticated as aad)",
    ));
    rows.push(bad(
        "chunk/bad-nonce",
        "chunk",
        &flipped(&sb, 2, 0x01),
        ErrorKind::Crypto,
        "nonce bit flipped",
    ));
    rows.push(bad(
        "chunk/bad-ciphertext",
        "chunk",
        &flipped(&sb, 14, 0x80),
        ErrorKind::Crypto,
        "ciphertext bit flipped",
    ));
    rows.push(bad(
        "chunk/bad-tag",
        "chunk",
        &flipped(&sb, sb.len() - 1, 0x01),
        ErrorKind::Crypto,
        "tag bit flipped",
    ));
    let mut by_id = bad(
        "chunk-by-id/bad-hash",
        "chunk-by-id",
        &flipped(&sb, 14, 0x80),
        ErrorKind::HashMismatch,
        "opened by the id of the unflipped chunk",
    );
    by_id["id"] = json!(sealed.id.to_hex());
    rows.push(by_id);

    // Meta blobs, opened with the same key, and their plaintext.
    let meta = cipher
        .seal_meta(
            &ObjectMeta {
                format: 1,
                shape: Shape::Dir,
                mode: None,
            }
            .encode(),
        )
        .unwrap();
    for (name, input, kind, why) in [
        (
            "meta/bad-empty",
            vec![],
            ErrorKind::Malformed,
            "empty input",
        ),
        (
            "meta/bad-truncated-27",
            meta[..27].to_vec(),
            ErrorKind::Malformed,
            "shorter than nonce and tag",
        ),
        (
            "meta/bad-nonce",
            flipped(&meta, 0, 0x01),
            ErrorKind::Crypto,
            "nonce bit flipped",
        ),
        (
            "meta/bad-tag",
            flipped(&meta, meta.len() - 1, 0x01),
            ErrorKind::Crypto,
            "tag bit flipped",
        ),
        (
            "meta/bad-chunk",
            sb.clone(),
            ErrorKind::Crypto,
            "a sealed chunk is not a meta blob",
        ),
    ] {
        rows.push(bad(name, "meta", &input, kind, why));
    }
    for (name, input, kind, why) in [
        (
            "object-meta/bad-empty",
            vec![],
            ErrorKind::Malformed,
            "empty input",
        ),
        (
            "object-meta/bad-format-3",
            vec![3, 0],
            ErrorKind::UnsupportedFormat,
            "format 3",
        ),
        (
            "object-meta/bad-format-2-no-mode",
            vec![2, 0],
            ErrorKind::Malformed,
            "format 2 without its mode",
        ),
        (
            "object-meta/bad-mode-setuid",
            vec![2, 0, 0xed, 0x13],
            ErrorKind::Invalid,
            "mode 0o4755: setuid is never kept",
        ),
        (
            "object-meta/bad-shape-2",
            vec![1, 2],
            ErrorKind::Malformed,
            "no shape number 2",
        ),
        (
            "object-meta/bad-trailing-byte",
            vec![1, 0, 0],
            ErrorKind::Malformed,
            "one byte after the value",
        ),
    ] {
        rows.push(bad(name, "object-meta", &input, kind, why));
    }

    json!({
        "comment": "Malformed samples. decoder: manifest | envelope-entry | card | checkpoint | snapshot = Unverified::<T>::decode(bytes) then verify(trust all); card-string = card_from_str(utf8); identity-file = Identity::from_file_bytes; chunk = ChunkCipher::new(key of chunks.json).open_verified; chunk-by-id = open(id, bytes); meta = open_meta with that key; object-meta = ObjectMeta::decode. kind = the exact ErrorKind.",
        "regenerate": REGEN,
        "samples": rows,
    })
}

/// Replaces the one occurrence of `from` in `bytes` by `to`.
fn swap_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at: Vec<usize> = (0..=bytes.len() - from.len())
        .filter(|&i| &bytes[i..i + from.len()] == from)
        .collect();
    assert_eq!(at.len(), 1, "pattern occurs once");
    let mut out = bytes.to_vec();
    out[at[0]..at[0] + to.len()].copy_from_slice(to);
    out
}

/// X25519 + HKDF of DESIGN §4, by hand: (shared secret, wrap key).
fn wrap_by_hand(
    eph_secret: &[u8; 32],
    recipient_x: &[u8; 32],
    object_id: &ObjectId,
    version: u64,
    recipient_id: &InstanceId,
) -> ([u8; 32], [u8; 32]) {
    let eph_pub = x25519_dalek::x25519(*eph_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(*eph_secret, *recipient_x);
    let salt = [&eph_pub[..], &recipient_x[..]].concat();
    let mut wrap_key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), &shared)
        .expand(
            &[
                WRAP_INFO,
                &object_id.0[..],
                &version.to_be_bytes(),
                recipient_id.as_bytes(),
            ]
            .concat(),
            &mut wrap_key,
        )
        .unwrap();
    (shared, wrap_key)
}

/// The fixed invite of `invite.json`: alice's, for two addresses.
fn sample_invite() -> (Invite, [u8; 32]) {
    let secret = [0x5e; 32];
    let inv = Invite::new(
        ident("alice").instance_id(),
        InviteId([0x1d; 16]),
        zeroize::Zeroizing::new(secret),
        vec![
            "/ip4/192.0.2.10/tcp/4040".into(),
            "/onion3/2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid:4040".into(),
        ],
    )
    .unwrap();
    (inv, secret)
}

const INVITE_CHALLENGE: [u8; 32] = [0xc4; 32];

fn gen_invites() -> Value {
    let (inv, secret) = sample_invite();
    let bob = ident("bob");
    let card = bob.card(Vec::new(), T0 + 2_000).unwrap();
    json!({
        "comment": "Invite of alice (identity.json). payload = postcard {format 1, source (32), id (16), secret (32), addresses: Vec<String>}; string = \"bbsyncinvite1\" + lower-case unpadded base32 of (payload || SHA-256(\"bbsync/invite-string/v1\\0\" || payload)[..4]); secret_hash = SHA-256(\"bbsync/invite-secret/v1\\0\" || secret); mac = HMAC-SHA256(secret, \"bbsync/invite-redeem/v1\\0\" || source || redeemer || id || challenge || SHA-256(redeemer card wire bytes)), for bob's card of card.json.",
        "regenerate": REGEN,
        "invites": [{
            "source_identity": "alice",
            "id": inv.id.to_hex(),
            "secret": hex::encode(secret),
            "addresses": inv.addresses,
            "payload": hex::encode(&inv.payload()[..]),
            "string": inv.to_text().as_str(),
            "secret_hash": hex::encode(secret_hash(&secret)),
            "redeemer_identity": "bob",
            "card": hex::encode(card.bytes()),
            "challenge": hex::encode(INVITE_CHALLENGE),
            "mac": hex::encode(inv.redeem_mac(&bob.instance_id(), &INVITE_CHALLENGE, card.bytes())),
        }],
    })
}

#[test]
#[ignore = "writes tests/vectors/*.json; run only to regenerate after a deliberate format change"]
fn regenerate_vectors() {
    let dir = vectors_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, value) in [
        ("identity.json", gen_identities()),
        ("card.json", gen_cards()),
        ("chunks.json", gen_chunks()),
        ("manifest.json", gen_manifests()),
        ("envelope.json", gen_envelopes()),
        ("checkpoint.json", gen_checkpoints()),
        ("snapshot.json", gen_snapshots()),
        ("meta.json", gen_meta()),
        ("invite.json", gen_invites()),
        ("bad.json", gen_bad()),
    ] {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        std::fs::write(dir.join(name), text).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

#[test]
fn invite_vectors() -> TestResult {
    let v = load("invite.json");
    for row in arr(&v["invites"]) {
        let source = ident(s(&row["source_identity"])).instance_id();
        let redeemer = ident(s(&row["redeemer_identity"])).instance_id();
        let id: InviteId = s(&row["id"]).parse()?;
        let secret = h32(&row["secret"]);
        let addresses: Vec<String> = arr(&row["addresses"])
            .iter()
            .map(|a| s(a).to_string())
            .collect();
        let payload = h(&row["payload"]);
        let string = s(&row["string"]);
        let card = h(&row["card"]);
        let challenge = h32(&row["challenge"]);
        let mac = h32(&row["mac"]);

        // Encode.
        let inv = Invite::new(
            source,
            id,
            zeroize::Zeroizing::new(secret),
            addresses.clone(),
        )?;
        assert_eq!(&inv.payload()[..], &payload[..]);
        assert_eq!(inv.to_text().as_str(), string);
        assert_eq!(hex::encode(secret_hash(&secret)), s(&row["secret_hash"]));
        assert_eq!(inv.redeem_mac(&redeemer, &challenge, &card), mac);
        // Decode.
        let back = Invite::parse(string)?;
        assert_eq!((back.source, back.id), (source, id));
        assert_eq!(back.addresses, addresses);
        assert_eq!(&back.payload()[..], &payload[..]);
        assert!(check_redeem_mac(
            &secret, &source, &redeemer, &id, &challenge, &card, &mac
        ));
        let mut wrong = mac;
        wrong[31] ^= 1;
        assert!(!check_redeem_mac(
            &secret, &source, &redeemer, &id, &challenge, &card, &wrong
        ));

        // By hand: the payload layout, the checksum and base32, the hash
        // and the HMAC from the primitive crates.
        let mut p = vec![1u8];
        p.extend_from_slice(source.as_bytes());
        p.extend_from_slice(id.as_bytes());
        p.extend_from_slice(&secret);
        p.push(addresses.len() as u8);
        for a in &addresses {
            p.push(a.len() as u8);
            p.extend_from_slice(a.as_bytes());
        }
        assert_eq!(p, payload);
        let sum = Sha256::digest([INVITE_STRING_DOMAIN, &p].concat());
        let mut all = p.clone();
        all.extend_from_slice(&sum[..4]);
        assert_eq!(
            format!(
                "{INVITE_PREFIX}{}",
                data_encoding::BASE32_NOPAD
                    .encode(&all)
                    .to_ascii_lowercase()
            ),
            string
        );
        assert_eq!(
            hex::encode(Sha256::digest([INVITE_SECRET_DOMAIN, &secret].concat())),
            s(&row["secret_hash"])
        );
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&secret)?;
        m.update(INVITE_REDEEM_DOMAIN);
        m.update(source.as_bytes());
        m.update(redeemer.as_bytes());
        m.update(id.as_bytes());
        m.update(&challenge);
        m.update(&Sha256::digest(&card));
        assert_eq!(m.finalize().into_bytes().as_slice(), &mac[..]);
        // The card is bob's card of card.json.
        let cards = load("card.json");
        assert!(arr(&cards["cards"]).iter().any(|c| h(&c["bytes"]) == card));
    }
    Ok(())
}

#[test]
fn domains_match_the_crate() {
    assert_eq!(<InstanceCard as SignedBody>::DOMAIN, CARD_DOMAIN);
    assert_eq!(<Manifest as SignedBody>::DOMAIN, MANIFEST_DOMAIN);
    assert_eq!(<EnvelopeEntry as SignedBody>::DOMAIN, ENTRY_DOMAIN);
    assert_eq!(<Checkpoint as SignedBody>::DOMAIN, CHECKPOINT_DOMAIN);
    assert_eq!(<Snapshot as SignedBody>::DOMAIN, SNAPSHOT_DOMAIN);
    assert_eq!(
        <Snapshot as SignedBody>::PREHASH_DOMAIN,
        SNAPSHOT_PREHASH_DOMAIN
    );
    assert_eq!(bbsync_protocol::identity::IDENTITY_MAGIC, IDENTITY_MAGIC);
}

#[test]
fn identity_vectors() -> TestResult {
    let v = load("identity.json");
    for row in arr(&v["identities"]) {
        let name = s(&row["name"]);
        let created = n(&row["created_at_ms"]);
        let ed = h32(&row["ed25519_secret"]);
        let x = h32(&row["x25519_secret"]);
        let file = h(&row["file"]);

        // The fixtures the other vectors use are these identities.
        assert_eq!(
            (seed_of(name), x_secret_of(name)),
            (ed, x),
            "{name}: fixture secrets"
        );

        // Encode: fixed secrets -> ids and file bytes.
        let id = Identity::from_secrets(name, created, ed, x)?;
        assert_eq!(
            id.instance_id().to_hex(),
            s(&row["instance_id"]),
            "{name}: instance id"
        );
        assert_eq!(
            hex::encode(id.x25519_public()),
            s(&row["x25519_public"]),
            "{name}: x25519 public"
        );
        assert_eq!(&id.to_file_bytes()[..], &file[..], "{name}: file bytes");
        assert_eq!(
            id.created_at_ms(),
            ident(name).created_at_ms(),
            "{name}: fixture time"
        );

        // Decode: file bytes -> the same identity, and back to the same bytes.
        let back = Identity::from_file_bytes(&file)?;
        assert_eq!(back.instance_id(), id.instance_id());
        assert_eq!(back.x25519_public(), id.x25519_public());
        assert_eq!(back.name(), name);
        assert_eq!(back.created_at_ms(), created);
        assert_eq!(*back.ed25519_secret(), ed);
        assert_eq!(&back.to_file_bytes()[..], &file[..]);
        let parsed: InstanceId = s(&row["instance_id"]).parse()?;
        assert_eq!(parsed, id.instance_id());

        // By hand: ed25519 and X25519 public keys, file layout.
        let ed_pub = ed25519_dalek::SigningKey::from_bytes(&ed)
            .verifying_key()
            .to_bytes();
        assert_eq!(ed_pub, id.instance_id().0);
        assert_eq!(
            x25519_dalek::x25519(x, x25519_dalek::X25519_BASEPOINT_BYTES),
            id.x25519_public()
        );
        assert_eq!(
            identity_file_by_hand(&identity_body_by_hand(1, name, created, &ed, &x)),
            file
        );

        // Local keys, both ways round and by hand.
        let local = arr(&row["local_keys"]);
        assert_eq!(local.len(), LOCAL_KEY_PURPOSES.len());
        for lk in local {
            let purpose = s(&lk["purpose"]);
            let expected = h32(&lk["key"]);
            assert_eq!(
                *id.local_key(purpose),
                expected,
                "{name}: local key {purpose}"
            );
            assert_eq!(*back.local_key(purpose), expected);
            let mut by_hand = [0u8; 32];
            Hkdf::<Sha256>::new(Some(LOCAL_KEY_SALT), &ed)
                .expand(
                    &[b"bbsync/local/".as_slice(), purpose.as_bytes()].concat(),
                    &mut by_hand,
                )
                .map_err(|_| "hkdf")?;
            assert_eq!(by_hand, expected, "{name}: local key {purpose} by hand");
        }
    }
    Ok(())
}

#[test]
fn meta_vectors() -> TestResult {
    let v = load("meta.json");
    let key_bytes = h32(&v["key"]);
    let cipher = ChunkCipher::new(&ContentKey::from_bytes(key_bytes));
    let aead = Aes256Gcm::new(&key_bytes.into());
    for row in arr(&v["metas"]) {
        let shape = match s(&row["shape"]) {
            "file" => Shape::File,
            "dir" => Shape::Dir,
            other => panic!("shape {other}"),
        };
        let meta = ObjectMeta {
            format: 1,
            shape,
            mode: None,
        };
        let encoded = h(&row["encoded"]);
        let sealed = h(&row["sealed"]);

        // Encode.
        assert_eq!(meta.encode(), encoded);
        assert_eq!(cipher.seal_meta(&encoded)?, sealed);
        // Decode.
        assert_eq!(cipher.open_meta(&sealed)?, encoded);
        assert_eq!(ObjectMeta::decode(&encoded)?, meta);

        // By hand: format varint, shape variant index; HMAC nonce; AES-GCM.
        assert_eq!(encoded, vec![1, shape as u8]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_bytes)?;
        mac.update(META_NONCE_DOMAIN);
        mac.update(&encoded);
        let nonce = &mac.finalize().into_bytes()[..12];
        assert_eq!(&sealed[..12], nonce);
        let ct = aead
            .encrypt(
                aes_gcm::Nonce::from_slice(nonce),
                Payload {
                    msg: &encoded,
                    aad: META_AAD,
                },
            )
            .map_err(|_| "encrypt")?;
        assert_eq!(&sealed[12..], &ct[..]);
    }
    Ok(())
}

#[test]
fn card_vectors() -> TestResult {
    let v = load("card.json");
    for row in arr(&v["cards"]) {
        let who = s(&row["identity"]);
        let id = ident(who);
        let addresses: Vec<String> = arr(&row["addresses"])
            .iter()
            .map(|a| s(a).to_string())
            .collect();
        let created = n(&row["created_at_ms"]);
        let bytes = h(&row["bytes"]);
        let body = h(&row["body"]);
        let string = s(&row["string"]);
        let expected = InstanceCard {
            format: 1,
            name: id.name().to_string(),
            instance: id.instance_id(),
            x25519: id.x25519_public(),
            addresses: addresses.clone(),
            created_at_ms: created,
        };

        // Encode.
        let card = id.card(addresses, created)?;
        assert_eq!(card.bytes(), &bytes[..], "{who}: card bytes");
        assert_eq!(card.body_bytes(), &body[..], "{who}: card body");
        assert_eq!(card_to_string(&card), string, "{who}: card string");
        assert_eq!(card.value(), &expected);

        // Decode, from bytes and from the string.
        let from_bytes = Unverified::<InstanceCard>::decode(&bytes)?;
        assert_eq!(from_bytes.claimed_signer(), id.instance_id());
        let from_bytes = from_bytes.verify_self_signed()?;
        assert_eq!(from_bytes.value(), &expected);
        assert_eq!(from_bytes.bytes(), &bytes[..]);
        let from_str = card_from_str(string)?;
        assert_eq!(from_str.value(), &expected);
        assert_eq!(from_str.bytes(), &bytes[..]);
        // Pasted with surrounding whitespace or in upper case, it is the same card.
        let payload = string.strip_prefix("bbsync1").ok_or("prefix")?;
        assert_eq!(card_from_str(&format!("  {string}\n"))?.bytes(), &bytes[..]);
        assert_eq!(
            card_from_str(&format!("bbsync1{}", payload.to_ascii_uppercase()))?.bytes(),
            &bytes[..]
        );

        // By hand: wire layout, signature, string form.
        check_wire_by_hand(&bytes, &body, CARD_DOMAIN, &seed_of(who));
        assert_eq!(string, format!("bbsync1{}", base32_lower(&bytes)));
        assert_eq!(body[0], 1, "body format");
    }
    Ok(())
}

#[test]
fn chunk_vectors() -> TestResult {
    let v = load("chunks.json");
    let key_bytes = h32(&v["key"]);
    assert_eq!(key_bytes, content_key_bytes());
    let key = ContentKey::from_bytes(key_bytes);
    let cipher = ChunkCipher::new(&key);
    let aead = Aes256Gcm::new(&key_bytes.into());
    let mut seen_compressed = false;
    for row in arr(&v["chunks"]) {
        let name = s(&row["name"]);
        let pt = plaintext_of(&row["plaintext"]);
        assert_eq!(
            hex::encode(Sha256::digest(&pt)),
            s(&row["plaintext_sha256"]),
            "{name}: plaintext"
        );
        let comp = compression_of(&row["compression"]);
        let id: bbsync_protocol::ChunkId = s(&row["id"]).parse()?;
        let nonce = h(&row["nonce"]);
        let flags = n(&row["flags"]) as u8;

        // Encode.
        let sealed = cipher.seal(&pt, comp)?;
        assert_eq!(sealed.id, id, "{name}: id");
        assert_eq!(
            sealed.bytes.len() as u64,
            n(&row["stored_len"]),
            "{name}: stored length"
        );
        assert_eq!(sealed.bytes[0], 1, "{name}: format");
        assert_eq!(sealed.bytes[1], flags, "{name}: flags");
        assert_eq!(&sealed.bytes[2..14], &nonce[..], "{name}: nonce");
        let stored = match row.get("stored") {
            Some(hexed) => {
                let stored = h(hexed);
                assert_eq!(sealed.bytes, stored, "{name}: stored bytes");
                stored
            }
            // Only the hash is recorded; equal ids mean equal bytes.
            None => sealed.bytes.clone(),
        };

        // Decode.
        assert_eq!(cipher.open(&id, &stored)?, pt, "{name}: open");
        assert_eq!(cipher.open_verified(&stored)?, pt, "{name}: open_verified");

        // By hand: id = SHA-256(stored); AES-256-GCM with aad = domain || flags;
        // nonce = HMAC(K, domain || flags || data)[..12] over the data encrypted.
        assert_eq!(Sha256::digest(&stored)[..], id.0[..], "{name}: id by hand");
        let aad = [CHUNK_AAD_DOMAIN, &[flags]].concat();
        let data = aead
            .decrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: &stored[14..],
                    aad: &aad,
                },
            )
            .map_err(|_| format!("{name}: AES-GCM by hand"))?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_bytes)?;
        mac.update(CHUNK_NONCE_DOMAIN);
        mac.update(&[flags]);
        mac.update(&data);
        assert_eq!(
            &mac.finalize().into_bytes()[..12],
            &nonce[..],
            "{name}: nonce by hand"
        );
        assert_eq!(&cipher.nonce_for(flags, &data)[..], &nonce[..]);
        if flags == 0 {
            assert_eq!(data, pt, "{name}: uncompressed data");
            let ct = aead
                .encrypt(
                    aes_gcm::Nonce::from_slice(&nonce),
                    Payload {
                        msg: &pt,
                        aad: &aad,
                    },
                )
                .map_err(|_| "encrypt")?;
            assert_eq!(&stored[14..], &ct[..], "{name}: sealed by hand");
        } else {
            assert_eq!(flags, 1, "{name}: flags");
            assert_eq!(comp, Compression::Zstd(3));
            assert_eq!(data[..4], ZSTD_MAGIC, "{name}: zstd frame");
            assert!(
                data.len() < pt.len(),
                "{name}: compression kept only when smaller"
            );
            seen_compressed = true;
        }
    }
    assert!(seen_compressed, "the vectors include a compressed chunk");
    Ok(())
}

#[test]
fn manifest_vectors() -> TestResult {
    let v = load("manifest.json");
    let legacy = arr(&v["legacy_v1"]);
    assert_eq!(legacy.len(), arr(&v["manifests"]).len());
    for (row, old) in arr(&v["manifests"]).iter().zip(legacy) {
        // Format 2 by hand: format byte 02, the format-1 fields of the
        // matching legacy row, then key_commit (00, or 01 + HMAC-SHA256(K,
        // "bbsync/key-commit/v1" || object_id)).
        let manifest = manifest_from_json(&row["manifest"]);
        let body = h(&row["body"]);
        let old_body = h(&old["body"]);
        let mut by_hand = vec![2u8];
        by_hand.extend_from_slice(&old_body[1..]);
        if manifest.deleted {
            by_hand.push(0);
        } else {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&content_key_bytes()).unwrap();
            mac.update(KEY_COMMIT_DOMAIN);
            mac.update(manifest.object_id.as_bytes());
            let commit: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(manifest.key_commit, Some(commit), "key_commit by hand");
            by_hand.push(1);
            by_hand.extend_from_slice(&commit);
            assert_eq!(
                bbsync_protocol::key_commitment(&content_key(), &manifest.object_id),
                commit
            );
        }
        assert_eq!(body, by_hand, "format-2 body by hand");
    }
    for row in legacy {
        // Old vectors, kept: format 1 still decodes and verifies, has no
        // key commitment, and re-encodes to exactly its bytes.
        let manifest = manifest_from_json(&row["manifest"]);
        let bytes = h(&row["bytes"]);
        let body = h(&row["body"]);
        assert_eq!(manifest.format, 1);
        assert_eq!(manifest.key_commit, None);
        let back = Unverified::<Manifest>::decode(&bytes)?.verify(|_| true)?;
        assert_eq!(back.value(), &manifest);
        assert_eq!(back.bytes(), &bytes[..]);
        assert_eq!(back.id().to_hex(), s(&row["manifest_id"]));
        assert_eq!(Signed::sign(&alice(), manifest)?.bytes(), &bytes[..]);
        check_wire_by_hand(&bytes, &body, MANIFEST_DOMAIN, &seed_of("alice"));
    }
    for row in arr(&v["manifests"]) {
        let signer = s(&row["signer"]);
        let id = ident(signer);
        let manifest = manifest_from_json(&row["manifest"]);
        let bytes = h(&row["bytes"]);
        let body = h(&row["body"]);
        let mid: ManifestId = s(&row["manifest_id"]).parse()?;

        // Encode.
        let signed = Signed::sign(&id, manifest.clone())?;
        assert_eq!(signed.bytes(), &bytes[..], "manifest bytes");
        assert_eq!(signed.body_bytes(), &body[..], "manifest body");
        assert_eq!(signed.id(), mid, "manifest id");
        assert_eq!(
            encoding::encode(&manifest),
            body,
            "body is postcard of the manifest"
        );
        assert_eq!(manifest.format, 2);

        // Decode.
        let un = Unverified::<Manifest>::decode(&bytes)?;
        assert_eq!(un.claimed_signer(), id.instance_id());
        let back = un.verify(|who| *who == id.instance_id())?;
        assert_eq!(back.value(), &manifest);
        assert_eq!(back.bytes(), &bytes[..]);
        assert_eq!(back.id(), mid);

        // By hand.
        check_wire_by_hand(&bytes, &body, MANIFEST_DOMAIN, &seed_of(signer));
        assert_eq!(
            Sha256::digest(&body)[..],
            mid.0[..],
            "ManifestId = SHA-256(body)"
        );
        assert_eq!(body[0], 2, "body format");
        assert_eq!(
            &body[1..17],
            manifest.object_id.as_bytes(),
            "object id follows the format"
        );
    }
    Ok(())
}

#[test]
fn envelope_vectors() -> TestResult {
    let v = load("envelope.json");
    for row in arr(&v["entries"]) {
        let wrapper = ident(s(&row["wrapper"]));
        let recipient_name = s(&row["recipient"]);
        let recipient = ident(recipient_name);
        let object_id: ObjectId = s(&row["object_id"]).parse()?;
        let version = n(&row["version"]);
        let key_bytes = h32(&row["content_key"]);
        let eph = h32(&row["eph_secret"]);
        let eph_pub = h32(&row["eph_pub"]);
        let shared = h32(&row["shared_secret"]);
        let wrap_key = h32(&row["wrap_key"]);
        let wrapped: [u8; 48] = h(&row["wrapped_body"]).try_into().map_err(|_| "48 bytes")?;
        let body = h(&row["body"]);
        let bytes = h(&row["bytes"]);
        let expected = EnvelopeEntry {
            format: 1,
            object_id,
            version,
            recipient: recipient.instance_id(),
            eph_pub,
            body: wrapped,
            wrapped_by: wrapper.instance_id(),
        };

        // Encode.
        let entry = wrap_content_key_with_ephemeral(
            &wrapper,
            object_id,
            version,
            recipient.instance_id(),
            &recipient.x25519_public(),
            &ContentKey::from_bytes(key_bytes),
            eph,
        )?;
        assert_eq!(entry.bytes(), &bytes[..], "entry bytes");
        assert_eq!(entry.body_bytes(), &body[..], "entry body");
        assert_eq!(entry.value(), &expected);

        // Decode, verify, unwrap.
        let back = decode_verify::<EnvelopeEntry>(&bytes)?;
        assert_eq!(back.value(), &expected);
        assert_eq!(back.bytes(), &bytes[..]);
        assert_eq!(back.unwrap_key(&recipient)?.as_bytes(), &key_bytes);
        for other in [alice(), bob(), carol()] {
            if other.instance_id() != recipient.instance_id() {
                assert_eq!(
                    back.unwrap_key(&other).map(|_| ()).map_err(|e| e.kind()),
                    Err(ErrorKind::Invalid)
                );
            }
        }

        // By hand, from the DESIGN formula.
        let recipient_x = recipient.x25519_public();
        assert_eq!(
            x25519_dalek::x25519(eph, x25519_dalek::X25519_BASEPOINT_BYTES),
            eph_pub,
            "eph_pub"
        );
        assert_eq!(
            wrap_by_hand(
                &eph,
                &recipient_x,
                &object_id,
                version,
                &recipient.instance_id()
            ),
            (shared, wrap_key),
            "shared secret and wrap key"
        );
        assert_eq!(
            x25519_dalek::x25519(x_secret_of(recipient_name), eph_pub),
            shared,
            "recipient side of the exchange"
        );
        assert_ne!(shared, [0u8; 32]);
        let aad = [
            &object_id.0[..],
            &version.to_be_bytes(),
            recipient.instance_id().as_bytes(),
        ]
        .concat();
        let gcm = Aes256Gcm::new(&wrap_key.into());
        let nonce = aes_gcm::Nonce::from_slice(&[0u8; 12]);
        let ct = gcm
            .encrypt(
                nonce,
                Payload {
                    msg: &key_bytes,
                    aad: &aad,
                },
            )
            .map_err(|_| "encrypt")?;
        assert_eq!(ct, wrapped, "wrapped key by hand");
        let pt = gcm
            .decrypt(
                nonce,
                Payload {
                    msg: &wrapped,
                    aad: &aad,
                },
            )
            .map_err(|_| "decrypt")?;
        assert_eq!(pt, key_bytes);
        check_wire_by_hand(&bytes, &body, ENTRY_DOMAIN, &seed_of(s(&row["wrapper"])));
    }

    // Rows that share an ephemeral secret come out of one WrapSession, in
    // order, byte for byte; one Unwrapper opens every entry.
    let rows = arr(&v["entries"]);
    let mut sessions: Vec<[u8; 32]> = rows.iter().map(|r| h32(&r["eph_secret"])).collect();
    sessions.dedup();
    assert!(
        sessions.len() < rows.len(),
        "the vectors include a multi-entry session"
    );
    let unwrapper = Unwrapper::new();
    for eph in sessions {
        let wrapper = alice();
        let session = WrapSession::with_ephemeral(&wrapper, eph);
        let mut wrap_keys = std::collections::BTreeSet::new();
        for row in rows.iter().filter(|r| h32(&r["eph_secret"]) == eph) {
            assert_eq!(s(&row["wrapper"]), "alice");
            let recipient = ident(s(&row["recipient"]));
            let entry = session.wrap(
                s(&row["object_id"]).parse()?,
                n(&row["version"]),
                recipient.instance_id(),
                &recipient.x25519_public(),
                &ContentKey::from_bytes(h32(&row["content_key"])),
            )?;
            assert_eq!(
                hex::encode(entry.bytes()),
                s(&row["bytes"]),
                "session entry"
            );
            assert_eq!(
                unwrapper.unwrap(&recipient, &entry)?.as_bytes(),
                &h32(&row["content_key"])
            );
            assert!(
                wrap_keys.insert(s(&row["wrap_key"]).to_string()),
                "a wrap key is used for one entry only"
            );
        }
    }
    Ok(())
}

#[test]
fn checkpoint_vectors() -> TestResult {
    let v = load("checkpoint.json");
    let mut saw_items = false;
    for row in arr(&v["checkpoints"]) {
        let signer = s(&row["signer"]);
        let id = ident(signer);
        let mut items: Vec<(ObjectId, u64, ManifestId)> = arr(&row["items"])
            .iter()
            .map(|it| -> Result<_, Box<dyn std::error::Error>> {
                Ok((
                    s(&it["object_id"]).parse()?,
                    n(&it["version"]),
                    s(&it["manifest_id"]).parse()?,
                ))
            })
            .collect::<Result<_, _>>()?;
        saw_items |= items.len() > 1;
        let root = h32(&row["root"]);
        let bytes = h(&row["bytes"]);
        let body = h(&row["body"]);

        // Root, in the listed order and reversed.
        let mut rb = RootBuilder::new();
        for (o, ver, m) in &items {
            rb.push(*o, *ver, *m);
        }
        assert_eq!(rb.count(), n(&row["count"]));
        assert_eq!(rb.finish(), root, "root");
        let mut rev = RootBuilder::new();
        for (o, ver, m) in items.iter().rev() {
            rev.push(*o, *ver, *m);
        }
        assert_eq!(rev.finish(), root, "root is independent of push order");

        // Root by hand.
        items.sort();
        let mut hsh = Sha256::new();
        hsh.update(ROOT_DOMAIN);
        for (o, ver, m) in &items {
            hsh.update(o.0);
            hsh.update(ver.to_be_bytes());
            hsh.update(m.0);
        }
        assert_eq!(<[u8; 32]>::from(hsh.finalize()), root, "root by hand");

        let cp = Checkpoint {
            format: 1,
            instance: id.instance_id(),
            seq: n(&row["seq"]),
            count: n(&row["count"]),
            root,
            created_at_ms: n(&row["created_at_ms"]),
        };
        // Encode.
        let signed = Signed::sign(&id, cp.clone())?;
        assert_eq!(signed.bytes(), &bytes[..], "checkpoint bytes");
        assert_eq!(signed.body_bytes(), &body[..]);
        // Decode.
        let back = decode_verify::<Checkpoint>(&bytes)?;
        assert_eq!(back.value(), &cp);
        assert_eq!(back.bytes(), &bytes[..]);
        check_wire_by_hand(&bytes, &body, CHECKPOINT_DOMAIN, &seed_of(signer));
    }
    assert!(saw_items);
    Ok(())
}

#[test]
fn snapshot_vectors() -> TestResult {
    let v = load("snapshot.json");
    let rows = arr(&v["snapshots"]);
    assert_eq!(rows.len(), 3);
    for row in rows {
        let signer = s(&row["signer"]);
        let format = u16::try_from(n(&row["format"]))?;
        let snap = sample_snapshot_of(format);
        let bytes = h(&row["bytes"]);
        let body = h(&row["body"]);
        assert_eq!(s(&row["id"]), snap.id);
        // Encode.
        let signed = Signed::sign(&ident(signer), snap.clone())?;
        assert_eq!(signed.bytes(), &bytes[..]);
        assert_eq!(signed.body_bytes(), &body[..]);
        // Decode: only the host's signature is accepted.
        let un = Unverified::<Snapshot>::decode(&bytes)?;
        assert_eq!(un.claimed_signer(), alice().instance_id());
        let back = un.verify(|who| *who == alice().instance_id())?;
        assert_eq!(back.value(), &snap);
        assert_eq!(back.host_card()?.name, "alice");
        let trust = back.trust_cards()?;
        assert_eq!(
            trust
                .iter()
                .map(|(c, r)| (c.name.clone(), *r))
                .collect::<Vec<_>>(),
            vec![
                ("bob".to_string(), Role::Full),
                ("carol".to_string(), Role::Blind)
            ]
        );
        // By hand.
        assert_eq!(snapshot_body_by_hand(&snap), body, "body by hand");
        if format == 1 {
            check_wire_by_hand(&bytes, &body, SNAPSHOT_DOMAIN, &seed_of(signer));
        } else {
            // The signature covers the body's SHA-256, not the body.
            let digest = Sha256::digest(&body);
            let parts = parse_wire(&bytes).expect("wire layout");
            assert_eq!((parts.format, &parts.body), (1, &body));
            assert!(signature_ok(
                &alice().instance_id(),
                SNAPSHOT_PREHASH_DOMAIN,
                &digest,
                &parts.sig
            ));
            assert!(!signature_ok(
                &alice().instance_id(),
                SNAPSHOT_DOMAIN,
                &body,
                &parts.sig
            ));
            // A format-1 signature over the same body (its format number
            // changed to 1) is not a format-2 signature, nor the reverse.
            let mut as_v1 = snap.clone();
            as_v1.format = 1;
            as_v1.manifest_files = None;
            let v1_body = encoding::encode(&as_v1);
            let forged = build_wire(1, &body, SNAPSHOT_DOMAIN, &seed_of(signer));
            let e = Unverified::<Snapshot>::decode(&forged)?
                .verify(|_| true)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadSignature);
            assert_bad_snapshot_signature(&v1_body, &parts.sig)?;
        }
        // Any appended trust entry breaks the signature (issue 10, item 1b).
        let mut forged = snap.clone();
        forged.trust.push(SnapshotTrust {
            card: ident("bob").card(Vec::new(), 5).unwrap().bytes().to_vec(),
            role: Role::Full,
        });
        let forged_body = forged.encode_body();
        let parts = parse_wire(&bytes).unwrap();
        assert_bad_snapshot_signature(&forged_body, &parts.sig)?;
    }
    Ok(())
}

/// `body` wired by hand with `sig` (a signature over something else)
/// decodes as a snapshot, and its signature check fails.
fn assert_bad_snapshot_signature(body: &[u8], sig: &[u8; 64]) -> TestResult {
    let mut wire = varint(1);
    wire.extend(varint(body.len() as u64));
    wire.extend_from_slice(body);
    wire.extend(varint(64));
    wire.extend_from_slice(sig);
    let e = Unverified::<Snapshot>::decode(&wire)?
        .verify(|_| true)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadSignature);
    Ok(())
}

fn run_bad(decoder: &str, input: &[u8], row: &Value) -> Result<(), Error> {
    match decoder {
        "manifest" => decode_verify::<Manifest>(input).map(|_| ()),
        "envelope-entry" => decode_verify::<EnvelopeEntry>(input).map(|_| ()),
        "card" => decode_verify::<InstanceCard>(input).map(|_| ()),
        "checkpoint" => decode_verify::<Checkpoint>(input).map(|_| ()),
        "snapshot" => decode_verify::<Snapshot>(input).map(|_| ()),
        "card-string" => card_from_str(std::str::from_utf8(input).unwrap()).map(|_| ()),
        "identity-file" => Identity::from_file_bytes(input).map(|_| ()),
        "chunk" => ChunkCipher::new(&content_key())
            .open_verified(input)
            .map(|_| ()),
        "meta" => ChunkCipher::new(&content_key())
            .open_meta(input)
            .map(|_| ()),
        "object-meta" => ObjectMeta::decode(input).map(|_| ()),
        "chunk-by-id" => {
            let id = s(&row["id"]).parse()?;
            ChunkCipher::new(&content_key())
                .open(&id, input)
                .map(|_| ())
        }
        other => panic!("unknown decoder {other}"),
    }
}

#[test]
fn bad_samples_fail_with_their_kind() {
    let v = load("bad.json");
    let samples = arr(&v["samples"]);
    assert!(samples.len() >= 40);
    for row in samples {
        let name = s(&row["name"]);
        let input = h(&row["hex"]);
        let err = match run_bad(s(&row["decoder"]), &input, row) {
            Ok(()) => panic!("{name}: accepted"),
            Err(e) => e,
        };
        assert_eq!(
            format!("{:?}", err.kind()),
            s(&row["kind"]),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "{name}: message is one line: {msg:?}"
        );
    }
}

#[test]
fn bad_samples_cover_every_decoder() {
    let v = load("bad.json");
    let decoders: std::collections::BTreeSet<&str> = arr(&v["samples"])
        .iter()
        .map(|r| s(&r["decoder"]))
        .collect();
    for d in [
        "manifest",
        "envelope-entry",
        "card",
        "checkpoint",
        "snapshot",
        "card-string",
        "identity-file",
        "chunk",
        "chunk-by-id",
        "meta",
        "object-meta",
    ] {
        assert!(decoders.contains(d), "no bad sample for {d}");
    }
}
