//! Envelope-entry wire bytes: decode + verify + unwrap never panics; a
//! verified entry re-encodes to the same bytes; an entry body re-signed
//! verifies to the same value. Inputs of 88+ bytes also drive a wrap with a
//! fuzzed key, ephemeral secret, object id and version, which must unwrap to
//! the same key, also through a `WrapSession` and an `Unwrapper`.

#![no_main]

use bbsync_fuzz::{check_error, check_resign, check_wire, fuzz_identity};
use bbsync_protocol::{
    ContentKey, EnvelopeEntry, ObjectId, Unwrapper, WrapSession,
    envelope::wrap_content_key_with_ephemeral,
};
use libfuzzer_sys::fuzz_target;

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

fuzz_target!(|data: &[u8]| {
    let me = fuzz_identity();
    let decoded = check_wire::<EnvelopeEntry>(data);
    // Fuzzed eph_pub and body, addressed to anyone: unwrapping must fail cleanly
    // unless the bytes happen to be a real wrap for `me`.
    let resigned = check_resign::<EnvelopeEntry>(data, |e, id| e.wrapped_by = id);
    for entry in decoded.iter().chain(resigned.iter()) {
        if let Err(e) = entry.unwrap_key(me) {
            check_error(&e);
        }
    }
    if data.len() >= 32 + 32 + 16 + 8 {
        let key = ContentKey::from_bytes(arr(&data[..32]));
        let eph: [u8; 32] = arr(&data[32..64]);
        let object_id = ObjectId(arr(&data[64..80]));
        let version = u64::from_be_bytes(arr(&data[80..88]));
        // Only a small-order recipient key is refused, and ours is not one.
        let entry = wrap_content_key_with_ephemeral(
            me,
            object_id,
            version,
            me.instance_id(),
            &me.x25519_public(),
            &key,
            eph,
        )
        .unwrap_or_else(|e| panic!("wrap failed: {e}"));
        let back = check_wire::<EnvelopeEntry>(entry.bytes()).expect("fresh entry verifies");
        assert_eq!(back.value(), entry.value());
        assert_eq!(back.unwrap_key(me).expect("unwrap own entry"), key);

        // The same ephemeral key as a session: the same first entry, and a
        // second object version under another wrap key; one Unwrapper opens both.
        let session = WrapSession::with_ephemeral(me, eph);
        let unwrapper = Unwrapper::new();
        let first = session
            .wrap(
                object_id,
                version,
                me.instance_id(),
                &me.x25519_public(),
                &key,
            )
            .expect("session wrap");
        assert_eq!(first.bytes(), entry.bytes());
        let next = version.wrapping_add(1);
        let second = session
            .wrap(object_id, next, me.instance_id(), &me.x25519_public(), &key)
            .expect("session wrap");
        assert_eq!(second.eph_pub, first.eph_pub);
        assert_ne!(second.body, first.body, "one wrap key per object version");
        assert_eq!(unwrapper.unwrap(me, &first).expect("unwrap first"), key);
        assert_eq!(unwrapper.unwrap(me, &second).expect("unwrap second"), key);
    }
});
