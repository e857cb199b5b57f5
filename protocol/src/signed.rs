//! Signed structures and the `Unverified` gate in front of them.
//!
//! Every signed structure travels and is stored as the postcard encoding of
//! [`Wire`]: `{format: u16, body: bytes, sig: [u8; 64]}` where `body` is the
//! postcard encoding of the structure itself (whose first field is its own
//! format number) and `sig` is ed25519 over `DOMAIN || body` by the signer
//! the body names. Verification works on those exact body bytes; nothing is
//! re-serialized to check a signature.
//!
//! A type whose bodies can be large (a snapshot lists every object) may
//! sign a digest instead, decided by the body's own format number
//! ([`SignedBody::prehashed`]): `sig` is then ed25519 over
//! `PREHASH_DOMAIN || SHA-256(body)`. The two domains differ in their
//! prefix, so no message is valid under both.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use std::ops::Range;

use crate::{
    Error, InstanceId, Result,
    encoding::{FORMAT_V1, decode, encode, push_varint, varint_len},
    identity::Identity,
};

/// The outer encoding of every signed structure, as decoded (the body
/// borrowed from the input). Written by [`wire`].
#[derive(Deserialize)]
struct Wire<'a> {
    format: u16,
    #[serde(borrow)]
    body: &'a [u8],
    #[serde(with = "serde_bytes")]
    sig: [u8; 64],
}

/// The postcard encoding of `Wire {format, body, sig}`, written by hand
/// (one copy of the body), and where the body lies in it.
fn wire(format: u16, body: &[u8], sig: &[u8; 64]) -> (Vec<u8>, Range<usize>) {
    let mut out = Vec::with_capacity(body.len() + WIRE_OVERHEAD);
    push_varint(&mut out, u64::from(format));
    push_varint(&mut out, body.len() as u64);
    let start = out.len();
    out.extend_from_slice(body);
    let end = out.len();
    push_varint(&mut out, 64);
    out.extend_from_slice(sig);
    (out, start..end)
}

/// Bytes the wire wrapper adds around a body at most (format varint up to 3,
/// two length prefixes up to 10 each, signature).
pub const WIRE_OVERHEAD: usize = 2 + 10 + 10 + 64;

/// A structure that is signed by one instance.
pub trait SignedBody: Serialize + DeserializeOwned + Sized {
    /// Name used in errors.
    const WHAT: &'static str;
    /// Domain separation string prefixed to the body before signing.
    const DOMAIN: &'static [u8];
    /// Largest accepted body, in bytes.
    const MAX_BODY: usize;
    /// The format number this version writes (and, unless
    /// [`SignedBody::decode_body`] says otherwise, the only one it reads).
    const FORMAT: u16 = FORMAT_V1;
    /// Domain separation string of a prehashed signature (see
    /// [`SignedBody::prehashed`]); unused by types that never prehash.
    const PREHASH_DOMAIN: &'static [u8] = b"";
    /// The format number the body carries.
    fn format(&self) -> u16;
    /// Whether this body's signature covers `PREHASH_DOMAIN ||
    /// SHA-256(body)` rather than `DOMAIN || body` (ed25519 hashes its
    /// message twice with SHA-512; a digest made once with SHA-256 costs a
    /// fifth of that on a large body). Decided by the body's format number.
    fn prehashed(&self) -> bool {
        false
    }
    /// The instance whose key must have signed it.
    fn signer(&self) -> InstanceId;
    /// Checks the rules of the format that the type system does not.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The canonical body bytes of this value, in the layout of its own
    /// format number (what is signed, and what decoding must give back).
    fn encode_body(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes body bytes strictly (size limit first, no trailing bytes)
    /// and refuses format numbers this version does not read. Types with
    /// more than one readable format override this and
    /// [`SignedBody::encode_body`] together.
    fn decode_body(bytes: &[u8]) -> Result<Self> {
        let value: Self = decode(Self::WHAT, bytes, Self::MAX_BODY)?;
        if value.format() != Self::FORMAT {
            return Err(Error::UnsupportedFormat {
                what: Self::WHAT,
                found: value.format(),
                supported: Self::FORMAT,
            });
        }
        Ok(value)
    }
}

thread_local! {
    /// Decoded public keys of recent signers. Decoding (point decompression)
    /// costs as much as a third of a verification, and a store's signatures
    /// come from a handful of instances.
    static KEYS: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn verifying_key(signer: &InstanceId) -> Option<VerifyingKey> {
    KEYS.with(|cell| {
        let mut keys = cell.borrow_mut();
        if let Some(k) = keys.get(signer.as_bytes()) {
            return Some(*k);
        }
        let k = VerifyingKey::from_bytes(signer.as_bytes()).ok()?;
        if keys.len() >= 256 {
            keys.clear();
        }
        keys.insert(*signer.as_bytes(), k);
        Some(k)
    })
}

fn signed_message<T: SignedBody>(value: &T, body: &[u8]) -> Vec<u8> {
    if value.prehashed() {
        use sha2::{Digest, Sha256};
        let mut msg = Vec::with_capacity(T::PREHASH_DOMAIN.len() + 32);
        msg.extend_from_slice(T::PREHASH_DOMAIN);
        msg.extend_from_slice(&Sha256::digest(body));
        return msg;
    }
    let mut msg = Vec::with_capacity(T::DOMAIN.len() + body.len());
    msg.extend_from_slice(T::DOMAIN);
    msg.extend_from_slice(body);
    msg
}

/// A signed structure whose signature has been checked and whose signer the
/// caller accepted. Holds the exact bytes it was decoded from or signed as.
#[derive(Clone)]
pub struct Signed<T> {
    bytes: Vec<u8>,
    /// Where the body lies in `bytes`.
    body: Range<usize>,
    value: T,
}

impl<T: SignedBody> Signed<T> {
    /// Signs `value` with `identity`, which must be the signer the value names.
    pub fn sign(identity: &Identity, value: T) -> Result<Self> {
        if value.signer() != identity.instance_id() {
            return Err(Error::invalid(
                T::WHAT,
                "signer named in the body is not the signing identity",
            ));
        }
        value.validate()?;
        let body = value.encode_body();
        if body.len() > T::MAX_BODY {
            return Err(Error::TooLarge {
                what: T::WHAT,
                len: body.len(),
                limit: T::MAX_BODY,
            });
        }
        let sig = identity.sign_raw(&signed_message(&value, &body));
        let (bytes, body) = wire(FORMAT_V1, &body, &sig);
        Ok(Signed { bytes, body, value })
    }

    /// The exact bytes to store or send.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The signed body bytes (what ids are computed over).
    pub fn body_bytes(&self) -> &[u8] {
        &self.bytes[self.body.clone()]
    }

    /// The verified value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Takes the verified value.
    pub fn into_value(self) -> T {
        self.value
    }
}

impl<T> std::ops::Deref for Signed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Signed").field(&self.value).finish()
    }
}

/// A signed structure as it arrived: decoded, but neither its signature nor
/// its signer checked. [`Unverified::verify`] is the only way to its value.
pub struct Unverified<T> {
    inner: Signed<T>,
    sig: [u8; 64],
}

impl<T: SignedBody> Unverified<T> {
    /// Decodes the wire bytes of a `T`, with size limits and strict format checks.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let limit = T::MAX_BODY + WIRE_OVERHEAD;
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                what: T::WHAT,
                len: bytes.len(),
                limit,
            });
        }
        let (wire, rest) = postcard::take_from_bytes::<Wire<'_>>(bytes)
            .map_err(|e| Error::malformed(T::WHAT, e))?;
        if !rest.is_empty() {
            return Err(Error::malformed(
                T::WHAT,
                format!("{} trailing bytes", rest.len()),
            ));
        }
        crate::encoding::check_format(T::WHAT, wire.format)?;
        let value = T::decode_body(wire.body)?;
        // postcard accepts over-long varints: insist on the one canonical
        // encoding, so a signed structure has exactly one byte string. (The
        // whole input was decoded: it is canonical exactly when it is as
        // long as the canonical encoding, every varint at its shortest.)
        let start = varint_len(u64::from(wire.format)) + varint_len(wire.body.len() as u64);
        if value.encode_body() != wire.body || bytes.len() != start + wire.body.len() + 1 + 64 {
            return Err(Error::malformed(T::WHAT, "not in canonical encoding"));
        }
        let body = start..start + wire.body.len();
        let sig = wire.sig;
        Ok(Unverified {
            inner: Signed {
                bytes: bytes.to_vec(),
                body,
                value,
            },
            sig,
        })
    }

    /// The instance that claims to have signed this (not yet checked).
    pub fn claimed_signer(&self) -> InstanceId {
        self.inner.value.signer()
    }

    /// Checks the signature (strict ed25519) and the format rules, then asks
    /// `trusted` whether the signer is acceptable.
    pub fn verify(self, trusted: impl FnOnce(&InstanceId) -> bool) -> Result<Signed<T>> {
        let signer = self.inner.value.signer();
        let key = verifying_key(&signer).ok_or(Error::BadSignature { what: T::WHAT })?;
        let sig = Signature::from_bytes(&self.sig);
        key.verify_strict(
            &signed_message(&self.inner.value, self.inner.body_bytes()),
            &sig,
        )
        .map_err(|_| Error::BadSignature { what: T::WHAT })?;
        self.accept(trusted)
    }

    /// The checks after the signature: format rules, then trust.
    fn accept(self, trusted: impl FnOnce(&InstanceId) -> bool) -> Result<Signed<T>> {
        let signer = self.inner.value.signer();
        self.inner.value.validate()?;
        if !trusted(&signer) {
            return Err(Error::Untrusted {
                what: T::WHAT,
                signer: signer.short(),
            });
        }
        Ok(self.inner)
    }

    /// The fields as claimed, nothing checked: only for deciding whether a
    /// structure concerns us at all (e.g. an entry's recipient), never for
    /// trusting its content.
    pub fn claimed(&self) -> &T {
        &self.inner.value
    }

    /// Applies the format rules and asks `trusted` about the signer, but
    /// skips the signature check. Only for bytes the caller can prove it
    /// verified before, unchanged since (the store keeps a keyed MAC of what
    /// it verified); never for bytes from a peer or a backup.
    pub fn dangerously_verified_before(
        self,
        trusted: impl FnOnce(&InstanceId) -> bool,
    ) -> Result<Signed<T>> {
        self.accept(trusted)
    }

    /// Applies the format rules and asks `trusted` about the signer, but
    /// skips the signature check, because the caller verified another
    /// signature that covers a hash of these exact bytes: a format-3
    /// snapshot's digest of its manifest files (its host backs up only
    /// manifests it verified when it stored them). Never for bytes that no
    /// signature the caller verified covers.
    pub fn dangerously_vouched_for(
        self,
        trusted: impl FnOnce(&InstanceId) -> bool,
    ) -> Result<Signed<T>> {
        self.accept(trusted)
    }

    /// Returns the value without checking anything. Only for bytes this
    /// instance verified before storing them in its own database (listing,
    /// garbage collection); never for bytes from a peer or a backup.
    pub fn dangerously_assume_verified(self) -> Signed<T> {
        self.inner
    }

    /// Checks a structure that names its own key as signer (a card).
    pub fn verify_self_signed(self) -> Result<Signed<T>> {
        self.verify(|_| true)
    }
}

/// Signatures per ed25519 batch in [`verify_many`].
pub const VERIFY_BATCH: usize = 256;

/// Verifies many structures of one type, like [`Unverified::verify`] on each
/// (`trusted` gets the item's index and its signer), but checks the
/// signatures in ed25519 batches of [`VERIFY_BATCH`], which costs about
/// half as much per signature. Weak (small-order) signer keys are refused
/// up front. When a batch fails, each of its items is checked on its own
/// with `verify_strict`, so the result names exactly the bad ones. (A batch
/// equation is cofactorless like `verify_strict`; the one case it accepts
/// that `verify_strict` refuses, a small-order R, needs the signer's own
/// secret key to produce, so it cannot forge anything.)
pub fn verify_many<T: SignedBody>(
    items: Vec<Unverified<T>>,
    trusted: impl Fn(usize, &InstanceId) -> bool,
) -> Vec<Result<Signed<T>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut iter = items.into_iter().peekable();
    while iter.peek().is_some() {
        let group: Vec<Unverified<T>> = iter.by_ref().take(VERIFY_BATCH).collect();
        // Most items of a group share a signer (one author's manifests):
        // its key is decompressed once.
        let mut last: Option<(InstanceId, Option<VerifyingKey>)> = None;
        let keys: Option<Vec<VerifyingKey>> = group
            .iter()
            .map(|u| {
                let signer = u.claimed_signer();
                match &last {
                    Some((s, k)) if *s == signer => *k,
                    _ => {
                        let k = verifying_key(&signer).filter(|k| !k.is_weak());
                        last = Some((signer, k));
                        k
                    }
                }
            })
            .collect();
        let batch_ok = keys.is_some_and(|keys| {
            let msgs: Vec<Vec<u8>> = group
                .iter()
                .map(|u| signed_message(&u.inner.value, u.inner.body_bytes()))
                .collect();
            let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let sigs: Vec<Signature> = group
                .iter()
                .map(|u| Signature::from_bytes(&u.sig))
                .collect();
            ed25519_dalek::verify_batch(&msg_refs, &sigs, &keys).is_ok()
        });
        for u in group {
            let i = out.len();
            out.push(if batch_ok {
                u.accept(|s| trusted(i, s))
            } else {
                u.verify(|s| trusted(i, s))
            });
        }
    }
    out
}

impl<T> std::fmt::Debug for Unverified<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unverified(..)")
    }
}
