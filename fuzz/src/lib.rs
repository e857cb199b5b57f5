//! Shared checks of the bbsync-protocol fuzz targets.
//!
//! Every target feeds its input to a decoder twice:
//!
//! 1. as wire bytes: decoding must not panic, and when the bytes decode *and*
//!    verify, re-encoding the verified value must give back exactly the same
//!    bytes (the body is the canonical postcard encoding of the value, and
//!    the wire is the canonical encoding of `{format 1, body, sig}`);
//! 2. as a body: when the input decodes as the structure itself, it is
//!    re-signed by a fixed fuzzing identity, and the signed bytes must decode
//!    and verify to the same value (or fail with `UnsupportedFormat` when the
//!    input carried a format number this version does not read).

use std::{fmt::Debug, sync::OnceLock};

use bbsync_protocol::{
    Error, ErrorKind, Identity, InstanceId, Signed, SignedBody, Unverified,
    encoding::{FORMAT_V1, decode},
};

/// The identity that signs re-signed bodies.
pub fn fuzz_identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(
        || match Identity::from_secrets("fuzz", 0, [0xf1; 32], [0xf2; 32]) {
            Ok(id) => id,
            Err(e) => panic!("fixed fuzz identity: {e}"),
        },
    )
}

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

/// The canonical wire bytes of a signed body: `varint(1) || varint(len) ||
/// body || varint(64) || sig`.
pub fn canonical_wire(body: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = varint(u64::from(FORMAT_V1));
    out.extend(varint(body.len() as u64));
    out.extend_from_slice(body);
    out.extend(varint(sig.len() as u64));
    out.extend_from_slice(sig);
    out
}

/// Whether this version reads `format` of `T`: the format it writes, and
/// for manifests also the legacy format 1 (without key commitment).
pub fn readable<T: SignedBody>(format: u16) -> bool {
    format == T::FORMAT || (T::WHAT == "manifest" && format == FORMAT_V1)
}

/// Error messages are one line (they end up in logs and CLI output).
pub fn check_error(e: &Error) {
    let msg = e.to_string();
    assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "error message {msg:?}"
    );
    let _ = e.kind();
}

/// `Some(value)` for `Ok`, after checking the error otherwise.
pub fn ok_or_check<T>(r: bbsync_protocol::Result<T>) -> Option<T> {
    r.map_err(|e| check_error(&e)).ok()
}

/// Decodes and verifies `data` as a `T` (trusting every signer). When that
/// succeeds, checks that re-encoding gives back the same bytes.
pub fn check_wire<T: SignedBody + Debug>(data: &[u8]) -> Option<Signed<T>> {
    let unverified = ok_or_check(Unverified::<T>::decode(data))?;
    let claimed = unverified.claimed_signer();
    let signed = ok_or_check(unverified.verify(|who| *who == claimed))?;
    assert_eq!(signed.bytes(), data, "Signed::bytes is the input");
    assert_eq!(
        signed.value().encode_body(),
        signed.body_bytes(),
        "verified body is not the canonical encoding of {:?}",
        signed.value()
    );
    // The signature is the last 64 bytes of any input that decoded.
    let sig = &data[data.len() - 64..];
    assert_eq!(
        canonical_wire(signed.body_bytes(), sig),
        data,
        "verified wire bytes are not canonical"
    );
    Some(signed)
}

/// Decodes `data` as a `T` body, names the fuzzing identity as its signer
/// with `set_signer`, signs it, and checks that the signed bytes decode and
/// verify to the same value.
pub fn check_resign<T: SignedBody + Clone + PartialEq + Debug>(
    data: &[u8],
    set_signer: impl FnOnce(&mut T, InstanceId),
) -> Option<Signed<T>> {
    let mut value: T = decode(T::WHAT, data, T::MAX_BODY).ok()?;
    let id = fuzz_identity();
    set_signer(&mut value, id.instance_id());
    // Signing refuses values that break the format's rules: fine.
    let signed = Signed::sign(id, value.clone()).ok()?;
    assert_eq!(value.encode_body(), signed.body_bytes());
    assert_eq!(
        canonical_wire(
            signed.body_bytes(),
            &signed.bytes()[signed.bytes().len() - 64..]
        ),
        signed.bytes()
    );
    let result = Unverified::<T>::decode(signed.bytes())
        .and_then(|u| u.verify(|who| *who == id.instance_id()));
    if readable::<T>(value.format()) {
        let back = match result {
            Ok(back) => back,
            Err(e) => panic!("re-signed {} does not verify: {e}", T::WHAT),
        };
        assert_eq!(back.value(), &value);
        assert_eq!(back.bytes(), signed.bytes());
        Some(back)
    } else {
        match result {
            Ok(_) => panic!("{} with format {} accepted", T::WHAT, value.format()),
            Err(e) => assert_eq!(e.kind(), ErrorKind::UnsupportedFormat, "{e}"),
        }
        None
    }
}
