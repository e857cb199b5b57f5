//! The instance card: the public face of an instance (name, keys,
//! addresses), self-signed by its identity, and its copy-pasteable string
//! form. Kept apart from [`crate::identity`] (the secrets) so that signing
//! ([`crate::signed`]) depends on the identity and the card on both, with no
//! cycle.

use serde::{Deserialize, Serialize};

use crate::{
    Error, InstanceId, Result,
    encoding::FORMAT_V1,
    identity::{Identity, check_name},
    signed::{Signed, SignedBody, Unverified},
};

impl Identity {
    /// A signed card for this instance, naming the given addresses.
    pub fn card(&self, addresses: Vec<String>, created_at_ms: u64) -> Result<Signed<InstanceCard>> {
        Signed::sign(
            self,
            InstanceCard {
                format: FORMAT_V1,
                name: self.name().to_string(),
                instance: self.instance_id(),
                x25519: self.x25519_public(),
                addresses,
                created_at_ms,
            },
        )
    }
}

/// The public face of an instance: name, keys and addresses, self-signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCard {
    /// Format number ([`FORMAT_V1`]).
    pub format: u16,
    /// Human name.
    pub name: String,
    /// ed25519 public key (the instance id, and the signer of this card).
    pub instance: InstanceId,
    /// x25519 public key that content keys are wrapped for.
    pub x25519: [u8; 32],
    /// Addresses the instance may be reached at (multiaddrs), possibly none.
    pub addresses: Vec<String>,
    /// When the card was made (ms since the epoch).
    pub created_at_ms: u64,
}

/// Prefix of the card string form.
pub const CARD_PREFIX: &str = "bbsync1";
const MAX_ADDRESSES: usize = 32;
const MAX_ADDRESS_LEN: usize = 512;

impl SignedBody for InstanceCard {
    const WHAT: &'static str = "instance card";
    const DOMAIN: &'static [u8] = b"bbsync/card/v1\0";
    const MAX_BODY: usize = 32 * 1024;
    fn format(&self) -> u16 {
        self.format
    }
    fn signer(&self) -> InstanceId {
        self.instance
    }
    fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        if self.addresses.len() > MAX_ADDRESSES
            || self.addresses.iter().any(|a| {
                a.is_empty() || a.len() > MAX_ADDRESS_LEN || a.chars().any(char::is_control)
            })
        {
            return Err(Error::invalid("instance card", "bad address list"));
        }
        Ok(())
    }
}

/// The copy-pasteable string form of a card: `bbsync1` + lower-case base32
/// (no padding) of the signed card bytes.
pub fn card_to_string(card: &Signed<InstanceCard>) -> String {
    let mut s = String::from(CARD_PREFIX);
    s.push_str(
        &data_encoding::BASE32_NOPAD
            .encode(card.bytes())
            .to_ascii_lowercase(),
    );
    s
}

/// Parses and verifies a card string. Whitespace around it is ignored.
pub fn card_from_str(s: &str) -> Result<Signed<InstanceCard>> {
    const WHAT: &str = "card string";
    let s = s.trim();
    let b32 = s
        .strip_prefix(CARD_PREFIX)
        .ok_or_else(|| Error::malformed(WHAT, format!("does not start with {CARD_PREFIX}")))?;
    if b32.len() > 2 * InstanceCard::MAX_BODY {
        return Err(Error::malformed(WHAT, "too long"));
    }
    let bytes = data_encoding::BASE32_NOPAD
        .decode(b32.to_ascii_uppercase().as_bytes())
        .map_err(|e| Error::malformed(WHAT, format!("bad base32 ({e})")))?;
    Unverified::<InstanceCard>::decode(&bytes)?.verify_self_signed()
}
