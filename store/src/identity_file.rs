//! `<data>/identity.key`, plain or sealed with a passphrase (issue 15).
//!
//! A plain file is the protocol crate's identity file (magic
//! `bbsync-identity\n`, docs/format.md §5). A sealed one wraps exactly those
//! bytes:
//!
//! ```text
//! file = "bbsync-idsealed\n" (16) || body || SHA-256(body) (32)
//! body = postcard {format: u16 = 1, instance: InstanceId (32), m_cost: u32, t_cost: u32,
//!                  p_cost: u32, salt: bytes, nonce: [u8; 12], sealed: bytes}
//! sealed = AES-256-GCM(argon2id(passphrase, salt, m, t, p), nonce, plain identity file,
//!                      aad = "bbsync/identity-at-rest/v1\0" || instance)
//! ```
//!
//! The instance id is in the clear so that errors can name the instance
//! and so that the opened secrets can be checked against it; the
//! checksum tells a damaged file from a wrong passphrase. The argon2
//! parameters are bounded before any hashing ([`crate::seal`]).

use bbsync_protocol::{Identity, InstanceId, encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{
    error::{Result, StoreError},
    seal::{self, KdfParams, OpenError, Sealed},
};

/// Magic prefix of a sealed identity file.
pub const SEALED_MAGIC: &[u8; 16] = b"bbsync-idsealed\n";
/// Largest identity file read, plain or sealed.
pub const MAX_FILE: usize = 8 * 1024;
const AAD_DOMAIN: &[u8] = b"bbsync/identity-at-rest/v1\0";

#[derive(Serialize, Deserialize)]
struct SealedFile {
    format: u16,
    instance: InstanceId,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    #[serde(with = "serde_bytes")]
    salt: Vec<u8>,
    nonce: [u8; 12],
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
}

fn aad(instance: &InstanceId) -> Vec<u8> {
    [AAD_DOMAIN, instance.as_bytes().as_slice()].concat()
}

/// Whether identity file bytes are sealed (by their magic).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(SEALED_MAGIC)
}

/// The bytes of `identity` sealed with `pass` (at least
/// [`seal::MIN_PASSPHRASE`] characters).
pub fn seal_identity(identity: &Identity, pass: &str) -> Result<Vec<u8>> {
    let instance = identity.instance_id();
    let plain = identity.to_file_bytes();
    let s = seal::seal(&plain, pass, &aad(&instance))?;
    let body = encoding::encode(&SealedFile {
        format: encoding::FORMAT_V1,
        instance,
        m_cost: s.params.m_cost,
        t_cost: s.params.t_cost,
        p_cost: s.params.p_cost,
        salt: s.salt,
        nonce: s.nonce,
        sealed: s.ciphertext,
    });
    let mut out = Vec::with_capacity(16 + body.len() + 32);
    out.extend_from_slice(SEALED_MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Sha256::digest(&body));
    Ok(out)
}

fn decode_sealed(bytes: &[u8], path: &str) -> Result<SealedFile> {
    let bad = |why: String| StoreError::Corrupt(format!("{path}: {why}"));
    if bytes.len() > MAX_FILE {
        return Err(bad(format!(
            "{} bytes, more than an identity file can be ({MAX_FILE})",
            bytes.len()
        )));
    }
    let rest = bytes
        .strip_prefix(SEALED_MAGIC)
        .ok_or_else(|| bad("not a sealed bbsync identity file (bad magic)".into()))?;
    if rest.len() < 32 {
        return Err(bad("truncated".into()));
    }
    let (body, sum) = rest.split_at(rest.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad("checksum mismatch (file is corrupted)".into()));
    }
    let f: SealedFile =
        encoding::decode("sealed identity file", body, MAX_FILE).map_err(|e| bad(e.to_string()))?;
    encoding::check_format("sealed identity file", f.format).map_err(|e| bad(e.to_string()))?;
    Ok(f)
}

/// The instance id a sealed file names (in the clear), after its checksum.
pub fn sealed_instance(bytes: &[u8], path: &str) -> Result<InstanceId> {
    Ok(decode_sealed(bytes, path)?.instance)
}

/// Opens a sealed identity file with `pass`. A wrong passphrase is
/// `StoreError::Passphrase` ("wrong passphrase for PATH"); damage (checksum,
/// parameters out of bounds, secrets of another instance) is `Corrupt`.
pub fn open_sealed(bytes: &[u8], pass: &str, path: &str) -> Result<Identity> {
    let f = decode_sealed(bytes, path)?;
    let bad = |why: String| StoreError::Corrupt(format!("{path}: {why}"));
    let sealed = Sealed {
        params: KdfParams {
            m_cost: f.m_cost,
            t_cost: f.t_cost,
            p_cost: f.p_cost,
        },
        salt: f.salt.clone(),
        nonce: f.nonce,
        ciphertext: f.sealed.clone(),
    };
    let plain: Zeroizing<Vec<u8>> =
        seal::open(&sealed, pass, &aad(&f.instance)).map_err(|e| match e {
            OpenError::WrongPassphrase => {
                StoreError::Passphrase(format!("wrong passphrase for {path}"))
            }
            OpenError::Params(why) => bad(why),
            OpenError::Salt => bad("salt out of range (16 to 64 bytes)".into()),
            OpenError::Kdf(why) => bad(why),
        })?;
    let id = Identity::from_file_bytes(&plain).map_err(|e| bad(e.to_string()))?;
    if id.instance_id() != f.instance {
        return Err(bad("the sealed secrets are of another instance".into()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seals_opens_and_tells_damage_from_a_wrong_passphrase() {
        let id = Identity::generate("alpha", 1).unwrap();
        let bytes = seal_identity(&id, "correct horse").unwrap();
        assert!(is_sealed(&bytes));
        assert!(!is_sealed(&id.to_file_bytes()));
        assert_eq!(sealed_instance(&bytes, "f").unwrap(), id.instance_id());
        let back = open_sealed(&bytes, "correct horse", "f").unwrap();
        assert_eq!(back.instance_id(), id.instance_id());
        assert_eq!(back.x25519_public(), id.x25519_public());
        assert_eq!(back.name(), "alpha");
        let e = open_sealed(&bytes, "wrong horse", "f").unwrap_err();
        assert!(matches!(e, StoreError::Passphrase(_)), "{e}");
        assert_eq!(e.to_string(), "wrong passphrase for f");
        let mut damaged = bytes.clone();
        damaged[40] ^= 1;
        let e = open_sealed(&damaged, "correct horse", "f").unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(seal_identity(&id, "short").is_err());
        // The secrets never appear in the clear.
        let plain = id.to_file_bytes();
        let secret = &plain[plain.len() - 32 - 64..plain.len() - 32];
        assert!(!bytes.windows(32).any(|w| w == &secret[..32]));
    }

    #[test]
    fn out_of_bound_parameters_are_refused_before_hashing() {
        let id = Identity::generate("alpha", 1).unwrap();
        let bytes = seal_identity(&id, "correct horse").unwrap();
        let mut f = decode_sealed(&bytes, "f").unwrap();
        f.m_cost = u32::MAX;
        let body = encoding::encode(&f);
        let mut out = SEALED_MAGIC.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body));
        let e = open_sealed(&out, "correct horse", "f").unwrap_err();
        assert!(
            e.to_string().contains("argon2 parameters out of range"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = SEALED_MAGIC.to_vec();
            bytes.extend_from_slice(&b);
            let _ = sealed_instance(&bytes, "f");
            let _ = decode_sealed(&b, "f");
        }
    }
}
