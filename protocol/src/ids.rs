//! Identifiers: chunk, object, manifest and instance ids.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 bytes in hex, for messages and logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..8.min($len)])
            }

            /// Parses raw bytes of exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; $len] = bytes
                    .try_into()
                    .map_err(|_| Error::malformed($what, format!("expected {} bytes, got {}", $len, bytes.len())))?;
                Ok(Self(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                if s.len() != 2 * $len {
                    return Err(Error::malformed($what, format!("expected {} hex digits, got {}", 2 * $len, s.len())));
                }
                let bytes = hex::decode(s).map_err(|e| Error::malformed($what, e))?;
                Self::from_slice(&bytes)
            }
        }
    };
}

byte_id!(
    /// SHA-256 of a sealed chunk's stored bytes.
    ChunkId, 32, "chunk id"
);
byte_id!(
    /// 16 random bytes fixed when an object is created.
    ObjectId, 16, "object id"
);
byte_id!(
    /// SHA-256 of a manifest's signed body bytes.
    ManifestId, 32, "manifest id"
);
byte_id!(
    /// An instance's ed25519 public key.
    InstanceId, 32, "instance id"
);
byte_id!(
    /// 16 random bytes naming one invite in its issuer's store.
    InviteId, 16, "invite id"
);

impl ChunkId {
    /// The id of some stored chunk bytes.
    pub fn of(stored: &[u8]) -> Self {
        ChunkId(Sha256::digest(stored).into())
    }
}

impl ManifestId {
    /// The id of some manifest body bytes.
    pub fn of(body: &[u8]) -> Self {
        ManifestId(Sha256::digest(body).into())
    }
}

impl ObjectId {
    /// A fresh random object id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        ObjectId(b)
    }
}

impl InviteId {
    /// A fresh random invite id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        InviteId(b)
    }
}
