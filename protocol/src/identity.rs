//! Instance identity (ed25519 + x25519 secrets) and trust roles. The signed
//! instance card an identity makes is in [`crate::card`].

use std::{fmt, str::FromStr};

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{
    Error, InstanceId, Result,
    encoding::{FORMAT_V1, check_format, decode, encode},
};

/// What a trusted instance may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// May receive content keys (envelope entries, just-in-time rekey).
    Full,
    /// May hold and serve ciphertext and manifests, never keys.
    Blind,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Full => "full",
            Role::Blind => "blind",
        })
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Role::Full),
            "blind" => Ok(Role::Blind),
            other => Err(Error::invalid(
                "role",
                format!("{other:?} (expected full or blind)"),
            )),
        }
    }
}

/// An instance's secrets: its ed25519 signing key (also its libp2p identity)
/// and its static x25519 key for key wrapping. Zeroized on drop; `Debug`
/// shows only the public id.
pub struct Identity {
    signing: SigningKey,
    x25519: StaticSecret,
    x25519_public: [u8; 32],
    name: String,
    created_at_ms: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.instance_id())
            .field("name", &self.name)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// Encoded form of the secrets (inside the checksummed identity file).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SecretFile {
    format: u16,
    name: String,
    created_at_ms: u64,
    ed25519_secret: [u8; 32],
    x25519_secret: [u8; 32],
}

/// Magic prefix of an identity file.
pub const IDENTITY_MAGIC: &[u8; 16] = b"bbsync-identity\n";
const MAX_IDENTITY_FILE: usize = 4096;

/// Longest instance name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "instance name",
            format!("must be 1..={MAX_NAME_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate(name: &str, created_at_ms: u64) -> Result<Self> {
        check_name(name)?;
        let mut rng = rand::rngs::OsRng;
        let x25519 = StaticSecret::random_from_rng(rng);
        Ok(Identity {
            signing: SigningKey::generate(&mut rng),
            x25519_public: XPublic::from(&x25519).to_bytes(),
            x25519,
            name: name.to_owned(),
            created_at_ms,
        })
    }

    /// An identity from fixed secret bytes (test vectors, restores).
    pub fn from_secrets(
        name: &str,
        created_at_ms: u64,
        ed25519_secret: [u8; 32],
        x25519_secret: [u8; 32],
    ) -> Result<Self> {
        check_name(name)?;
        let x25519 = StaticSecret::from(x25519_secret);
        Ok(Identity {
            signing: SigningKey::from_bytes(&ed25519_secret),
            x25519_public: XPublic::from(&x25519).to_bytes(),
            x25519,
            name: name.to_owned(),
            created_at_ms,
        })
    }

    /// This instance's id (its ed25519 public key).
    pub fn instance_id(&self) -> InstanceId {
        InstanceId(self.signing.verifying_key().to_bytes())
    }

    /// This instance's x25519 public key.
    pub fn x25519_public(&self) -> [u8; 32] {
        self.x25519_public
    }

    /// The instance's human name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the identity was created (ms since the epoch).
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The ed25519 secret seed, for building the libp2p keypair. Zeroized on drop.
    pub fn ed25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// A 32-byte key for local-only purposes (never sent), derived from the
    /// ed25519 secret with HKDF-SHA256 and `info = "bbsync/local/" || purpose`.
    pub fn local_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let seed = Zeroizing::new(self.signing.to_bytes());
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"bbsync/local-key/v1"), &seed[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        let info = [b"bbsync/local/".as_slice(), purpose.as_bytes()].concat();
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(&info, &mut out[..]);
        out
    }

    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }

    /// Encodes the secrets as an identity file: magic, postcard body, SHA-256
    /// of the body (so that corruption is detected, not misread).
    pub fn to_file_bytes(&self) -> Zeroizing<Vec<u8>> {
        let file = SecretFile {
            format: FORMAT_V1,
            name: self.name.clone(),
            created_at_ms: self.created_at_ms,
            ed25519_secret: self.signing.to_bytes(),
            x25519_secret: self.x25519.to_bytes(),
        };
        let body = Zeroizing::new(encode(&file));
        let mut out = Zeroizing::new(Vec::with_capacity(16 + body.len() + 32));
        out.extend_from_slice(IDENTITY_MAGIC);
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body[..]));
        out
    }

    /// Decodes an identity file written by [`Identity::to_file_bytes`].
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "identity file";
        if bytes.len() > MAX_IDENTITY_FILE {
            return Err(Error::TooLarge {
                what: WHAT,
                len: bytes.len(),
                limit: MAX_IDENTITY_FILE,
            });
        }
        let rest = bytes
            .strip_prefix(IDENTITY_MAGIC)
            .ok_or_else(|| Error::malformed(WHAT, "not a bbsync identity file (bad magic)"))?;
        if rest.len() < 32 {
            return Err(Error::malformed(WHAT, "truncated"));
        }
        let (body, sum) = rest.split_at(rest.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(Error::malformed(
                WHAT,
                "checksum mismatch (file is corrupted)",
            ));
        }
        let file: SecretFile = decode(WHAT, body, MAX_IDENTITY_FILE)?;
        check_format(WHAT, file.format)?;
        Identity::from_secrets(
            &file.name,
            file.created_at_ms,
            file.ed25519_secret,
            file.x25519_secret,
        )
    }
}
