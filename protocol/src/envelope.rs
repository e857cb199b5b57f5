//! Key-envelope entries: an object's content key wrapped for one recipient,
//! built like age's X25519 stanza with AES-256-GCM, and signed by the wrapper.
//!
//! ```text
//! shared   = X25519(eph, recipient_x25519)               (all-zero rejected)
//! wrap_key = HKDF-SHA256(ikm = shared, salt = eph_pub || recipient_x25519, info = "bbsync/wrap/v1")
//! body     = AES-256-GCM(wrap_key, nonce = 0^12, K, aad = object_id || version_be || recipient_id)
//! ```
//! The nonce can be constant because every wrap key is used once (fresh
//! ephemeral secret per entry).

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
}

fn aad(object_id: &ObjectId, version: u64, recipient: &InstanceId) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + 8 + 32);
    a.extend_from_slice(object_id.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(recipient.as_bytes());
    a
}

fn wrap_cipher(
    shared: &x25519_dalek::SharedSecret,
    eph_pub: &[u8; 32],
    recipient_x: &[u8; 32],
) -> Result<Aes256Gcm> {
    if !shared.was_contributory() {
        return Err(Error::NonContributory);
    }
    let salt = [eph_pub.as_slice(), recipient_x.as_slice()].concat();
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(WRAP_INFO, &mut key[..])
        .map_err(|_| Error::invalid("wrap key", "HKDF output length"))?;
    Ok(Aes256Gcm::new((&*key).into()))
}

/// Wraps `key` for a recipient with a fresh ephemeral secret and signs the
/// entry as `wrapper`.
pub fn wrap_content_key(
    wrapper: &Identity,
    object_id: ObjectId,
    version: u64,
    recipient: InstanceId,
    recipient_x25519: &[u8; 32],
    key: &ContentKey,
) -> Result<Signed<EnvelopeEntry>> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut eph[..]);
    wrap_content_key_with_ephemeral(
        wrapper,
        object_id,
        version,
        recipient,
        recipient_x25519,
        key,
        *eph,
    )
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
    let eph = StaticSecret::from(eph_secret);
    let eph_pub = XPublic::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&XPublic::from(*recipient_x25519));
    let cipher = wrap_cipher(&shared, &eph_pub, recipient_x25519)?;
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
        wrapper,
        EnvelopeEntry {
            format: FORMAT_V1,
            object_id,
            version,
            recipient,
            eph_pub,
            body,
            wrapped_by: wrapper.instance_id(),
        },
    )
}

impl Signed<EnvelopeEntry> {
    /// Unwraps the content key with `me`'s x25519 secret. Fails unless the
    /// entry is addressed to `me` and the AEAD tag verifies.
    pub fn unwrap_key(&self, me: &Identity) -> Result<ContentKey> {
        let e = self.value();
        if e.recipient != me.instance_id() {
            return Err(Error::invalid(
                "envelope entry",
                "addressed to another instance",
            ));
        }
        let my_x = me.x25519_public();
        let shared = me.x25519_secret().diffie_hellman(&XPublic::from(e.eph_pub));
        let cipher = wrap_cipher(&shared, &e.eph_pub, &my_x)?;
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
