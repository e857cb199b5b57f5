//! Key-envelope entries: an object's content key wrapped for one recipient,
//! built like age's X25519 stanza with AES-256-GCM, and signed by the wrapper.
//!
//! ```text
//! shared   = X25519(eph, recipient_x25519)               (all-zero rejected)
//! wrap_key = HKDF-SHA256(ikm = shared, salt = eph_pub || recipient_x25519,
//!                        info = "bbsync/wrap/v1" || object_id || version_be || recipient_id)
//! body     = AES-256-GCM(wrap_key, nonce = 0^12, K, aad = object_id || version_be || recipient_id)
//! ```
//! One ephemeral secret serves a whole [`WrapSession`] (an import, a rekey,
//! a just-in-time rekey for one peer), so the X25519 exchange is done once
//! per session and recipient instead of once per object. The wrap key still
//! differs for every entry because HKDF's `info` names the object version,
//! and an object version has exactly one content key, so the constant
//! AES-GCM nonce never encrypts two different keys under one wrap key.
//! Readers cache the exchange per ephemeral key the same way ([`Unwrapper`]).

use std::{collections::HashMap, sync::Mutex};

use aes_gcm::{Aes256Gcm, KeyInit, Nonce, aead::Aead};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::{
    ContentKey, Error, Identity, InstanceId, ObjectId, Result,
    encoding::FORMAT_V1,
    signed::{Signed, SignedBody},
};

const WRAP_INFO: &[u8] = b"bbsync/wrap/v1";

/// One recipient's wrapped copy of an object version's content key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeEntry {
    /// Format number.
    pub format: u16,
    /// The object the key belongs to.
    pub object_id: ObjectId,
    /// The object version this entry is for.
    pub version: u64,
    /// Who can unwrap it.
    pub recipient: InstanceId,
    /// Ephemeral x25519 public key.
    pub eph_pub: [u8; 32],
    /// AES-256-GCM of the 32-byte key: 48 bytes.
    #[serde(with = "serde_bytes")]
    pub body: [u8; 48],
    /// Who wrapped (and signed) it.
    pub wrapped_by: InstanceId,
}

impl SignedBody for EnvelopeEntry {
    const WHAT: &'static str = "envelope entry";
    const DOMAIN: &'static [u8] = b"bbsync/envelope-entry/v1\0";
    const MAX_BODY: usize = 512;
    fn format(&self) -> u16 {
        self.format
    }
    fn signer(&self) -> InstanceId {
        self.wrapped_by
    }
    fn validate(&self) -> Result<()> {
        if self.version == 0 {
            return Err(Error::invalid("envelope entry", "version 0"));
        }
        if self.version > crate::manifest::MAX_VERSION {
            return Err(Error::invalid(
                "envelope entry",
                "version above the highest allowed",
            ));
        }
        Ok(())
    }
}

fn aad(object_id: &ObjectId, version: u64, recipient: &InstanceId) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + 8 + 32);
    a.extend_from_slice(object_id.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(recipient.as_bytes());
    a
}

/// The X25519 exchange, rejecting a non-contributory (all-zero) result.
fn exchange(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&XPublic::from(*public));
    if !shared.was_contributory() {
        return Err(Error::NonContributory);
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

fn wrap_cipher(
    shared: &[u8; 32],
    eph_pub: &[u8; 32],
    recipient_x: &[u8; 32],
    slot: (&ObjectId, u64, &InstanceId),
) -> Result<Aes256Gcm> {
    let (object_id, version, recipient) = slot;
    let salt = [eph_pub.as_slice(), recipient_x.as_slice()].concat();
    let mut info = Vec::with_capacity(WRAP_INFO.len() + 16 + 8 + 32);
    info.extend_from_slice(WRAP_INFO);
    info.extend_from_slice(object_id.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    info.extend_from_slice(recipient.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(&info, &mut key[..])
        .map_err(|_| Error::invalid("wrap key", "HKDF output length"))?;
    Ok(Aes256Gcm::new((&*key).into()))
}

/// Wraps content keys for many object versions with one ephemeral secret
/// (see the module docs). The secret is zeroized when the session is dropped.
pub struct WrapSession<'a> {
    wrapper: &'a Identity,
    eph: StaticSecret,
    eph_pub: [u8; 32],
    shared: Mutex<HashMap<[u8; 32], Zeroizing<[u8; 32]>>>,
    /// SHA-256 of the key wrapped per (recipient, object, version): a second
    /// wrap with a different key would reuse a wrap key and is refused.
    wrapped: Mutex<HashMap<WrapSlot, [u8; 32]>>,
}

type WrapSlot = ([u8; 32], InstanceId, ObjectId, u64);
type SharedCache = HashMap<([u8; 32], [u8; 32]), Zeroizing<[u8; 32]>>;

impl std::fmt::Debug for WrapSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapSession([redacted])")
    }
}

impl<'a> WrapSession<'a> {
    /// A session with a fresh ephemeral secret.
    pub fn new(wrapper: &'a Identity) -> Self {
        let mut eph = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut eph[..]);
        Self::with_ephemeral(wrapper, *eph)
    }

    /// A session with a caller-chosen ephemeral secret. Only for test
    /// vectors: an ephemeral secret must never be reused across sessions.
    pub fn with_ephemeral(wrapper: &'a Identity, eph_secret: [u8; 32]) -> Self {
        let eph = StaticSecret::from(eph_secret);
        let eph_pub = XPublic::from(&eph).to_bytes();
        WrapSession {
            wrapper,
            eph,
            eph_pub,
            shared: Mutex::new(HashMap::new()),
            wrapped: Mutex::new(HashMap::new()),
        }
    }

    fn shared_with(&self, recipient_x: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        let mut cache = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cache.get(recipient_x) {
            return Ok(s.clone());
        }
        let s = exchange(&self.eph, recipient_x)?;
        cache.insert(*recipient_x, s.clone());
        Ok(s)
    }

    /// Wraps `key` of `object_id`/`version` for one recipient and signs the entry.
    pub fn wrap(
        &self,
        object_id: ObjectId,
        version: u64,
        recipient: InstanceId,
        recipient_x25519: &[u8; 32],
        key: &ContentKey,
    ) -> Result<Signed<EnvelopeEntry>> {
        {
            use sha2::Digest;
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let mut wrapped = self
                .wrapped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match wrapped.entry((*recipient_x25519, recipient, object_id, version)) {
                std::collections::hash_map::Entry::Occupied(e) if *e.get() != digest => {
                    return Err(Error::invalid(
                        "envelope entry",
                        "a different key for an object version already wrapped in this session",
                    ));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(digest);
                }
            }
        }
        let shared = self.shared_with(recipient_x25519)?;
        let cipher = wrap_cipher(
            &shared,
            &self.eph_pub,
            recipient_x25519,
            (&object_id, version, &recipient),
        )?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&[0u8; 12]),
                aes_gcm::aead::Payload {
                    msg: key.as_bytes(),
                    aad: &aad(&object_id, version, &recipient),
                },
            )
            .map_err(|_| Error::invalid("envelope entry", "AES-GCM refused the key"))?;
        let body: [u8; 48] = ct
            .as_slice()
            .try_into()
            .map_err(|_| Error::invalid("envelope entry", "wrapped key is not 48 bytes"))?;
        Signed::sign(
            self.wrapper,
            EnvelopeEntry {
                format: FORMAT_V1,
                object_id,
                version,
                recipient,
                eph_pub: self.eph_pub,
                body,
                wrapped_by: self.wrapper.instance_id(),
            },
        )
    }
}

/// Wraps `key` for a recipient with a fresh ephemeral secret and signs the
/// entry as `wrapper` (a session of one entry).
pub fn wrap_content_key(
    wrapper: &Identity,
    object_id: ObjectId,
    version: u64,
    recipient: InstanceId,
    recipient_x25519: &[u8; 32],
    key: &ContentKey,
) -> Result<Signed<EnvelopeEntry>> {
    WrapSession::new(wrapper).wrap(object_id, version, recipient, recipient_x25519, key)
}

/// [`wrap_content_key`] with a caller-chosen ephemeral secret. Only for test
/// vectors: an ephemeral secret must never be used twice.
pub fn wrap_content_key_with_ephemeral(
    wrapper: &Identity,
    object_id: ObjectId,
    version: u64,
    recipient: InstanceId,
    recipient_x25519: &[u8; 32],
    key: &ContentKey,
    eph_secret: [u8; 32],
) -> Result<Signed<EnvelopeEntry>> {
    WrapSession::with_ephemeral(wrapper, eph_secret).wrap(
        object_id,
        version,
        recipient,
        recipient_x25519,
        key,
    )
}

/// Unwraps entries addressed to one identity, caching the X25519 exchange
/// per ephemeral key (entries of one wrap session share it). The cache holds
/// secrets: it is zeroized on drop and bounded in size.
#[derive(Default)]
pub struct Unwrapper {
    cache: Mutex<SharedCache>,
}

impl std::fmt::Debug for Unwrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unwrapper([redacted])")
    }
}

const UNWRAP_CACHE_MAX: usize = 4096;

impl Unwrapper {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unwraps the content key of an entry addressed to `me`.
    pub fn unwrap(&self, me: &Identity, entry: &Signed<EnvelopeEntry>) -> Result<ContentKey> {
        let e = entry.value();
        let my_x = me.x25519_public();
        if e.recipient != me.instance_id() {
            return Err(Error::invalid(
                "envelope entry",
                "addressed to another instance",
            ));
        }
        let shared = {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match cache.get(&(my_x, e.eph_pub)) {
                Some(s) => s.clone(),
                None => {
                    let s = exchange(me.x25519_secret(), &e.eph_pub)?;
                    if cache.len() >= UNWRAP_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert((my_x, e.eph_pub), s.clone());
                    s
                }
            }
        };
        let cipher = wrap_cipher(
            &shared,
            &e.eph_pub,
            &my_x,
            (&e.object_id, e.version, &e.recipient),
        )?;
        let pt = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    aes_gcm::aead::Payload {
                        msg: &e.body,
                        aad: &aad(&e.object_id, e.version, &e.recipient),
                    },
                )
                .map_err(|_| Error::Decrypt {
                    what: "envelope entry",
                })?,
        );
        let k: [u8; 32] = pt.as_slice().try_into().map_err(|_| Error::Decrypt {
            what: "envelope entry",
        })?;
        Ok(ContentKey::from_bytes(k))
    }
}

impl Signed<EnvelopeEntry> {
    /// Unwraps the content key with `me`'s x25519 secret. Fails unless the
    /// entry is addressed to `me` and the AEAD tag verifies.
    pub fn unwrap_key(&self, me: &Identity) -> Result<ContentKey> {
        Unwrapper::new().unwrap(me, self)
    }
}
