//! Passphrase sealing: argon2id (v0x13) derives a 32-byte key from a
//! passphrase and a random salt, AES-256-GCM seals the bytes under it with
//! a random nonce and a caller-chosen aad. Used for the identity escrow of
//! a backup repository (`backup::escrow`) and for `identity.key` at rest
//! (`identity_file`).
//!
//! The parameters of a sealed file are read back from that file, so they
//! are bounded ([`KdfParams::check`]) before any hashing: whoever can
//! write the file could otherwise make an open allocate and hash without
//! limit.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use crate::error::{Result, StoreError};

/// Argon2id memory cost this version writes (KiB): 64 MiB.
pub const M_COST: u32 = 64 * 1024;
/// Argon2id iterations this version writes.
pub const T_COST: u32 = 3;
/// Argon2id lanes this version writes.
pub const P_COST: u32 = 1;
/// Shortest passphrase accepted for anything new.
pub const MIN_PASSPHRASE: usize = 8;
/// Largest argon2 memory cost accepted when reading (KiB): 1 GiB.
pub const MAX_M_COST: u32 = 1024 * 1024;
/// Most argon2 iterations accepted when reading.
pub const MAX_T_COST: u32 = 16;
/// Most argon2 lanes accepted when reading.
pub const MAX_P_COST: u32 = 8;
/// Most memory × iterations accepted (KiB × passes): 4 GiB of work, e.g.
/// 1 GiB × 4 or 256 MiB × 16; this version writes 64 MiB × 3.
pub const MAX_WORK: u64 = 4 * 1024 * 1024;
/// Shortest salt accepted.
pub const SALT_MIN: usize = 16;
/// Longest salt accepted.
pub const SALT_MAX: usize = 64;

/// The argon2id cost parameters of one sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory (KiB).
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// What this version writes.
    pub const CURRENT: KdfParams = KdfParams {
        m_cost: M_COST,
        t_cost: T_COST,
        p_cost: P_COST,
    };

    /// Checks the parameters against the bounds above, before any work.
    /// The error is the reason, for the caller to put in its context.
    pub fn check(&self) -> std::result::Result<(), String> {
        let (m, t, p) = (self.m_cost, self.t_cost, self.p_cost);
        if !(1..=MAX_P_COST).contains(&p)
            || !(1..=MAX_T_COST).contains(&t)
            || m < 8 * p
            || m > MAX_M_COST
            || u64::from(m) * u64::from(t) > MAX_WORK
        {
            return Err(format!(
                "argon2 parameters out of range (m_cost {m} KiB, t_cost {t}, p_cost {p}; at most {MAX_M_COST} KiB, {MAX_T_COST} passes, {MAX_P_COST} lanes, {MAX_WORK} KiB x passes)"
            ));
        }
        Ok(())
    }
}

/// A sealed value and what it takes to open it (besides the passphrase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The argon2id parameters.
    pub params: KdfParams,
    /// The argon2 salt.
    pub salt: Vec<u8>,
    /// The AES-GCM nonce.
    pub nonce: [u8; 12],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The stored parameters are out of bounds (nothing was hashed).
    Params(String),
    /// The stored salt is shorter or longer than allowed.
    Salt,
    /// The passphrase (or the sealed bytes) is wrong: authentication failed.
    WrongPassphrase,
    /// argon2 refused the parameters.
    Kdf(String),
}

/// Refuses passphrases shorter than [`MIN_PASSPHRASE`] characters, for
/// anything sealed anew.
pub fn check_new_passphrase(pass: &str) -> Result<()> {
    if pass.chars().count() < MIN_PASSPHRASE {
        return Err(StoreError::Invalid(format!(
            "the passphrase must have at least {MIN_PASSPHRASE} characters"
        )));
    }
    Ok(())
}

fn derive(
    pass: &str,
    salt: &[u8],
    p: KdfParams,
) -> std::result::Result<Zeroizing<[u8; 32]>, OpenError> {
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| OpenError::Kdf(format!("bad argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.as_bytes(), salt, &mut key[..])
        .map_err(|e| OpenError::Kdf(format!("argon2: {e}")))?;
    Ok(key)
}

/// Seals `plain` with `pass` (at least [`MIN_PASSPHRASE`] characters),
/// with the current parameters, a fresh 16-byte salt and nonce.
pub fn seal(plain: &[u8], pass: &str, aad: &[u8]) -> Result<Sealed> {
    check_new_passphrase(pass)?;
    let mut salt = vec![0u8; 16];
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let key = derive(pass, &salt, KdfParams::CURRENT)
        .map_err(|e| StoreError::Invalid(format!("sealing with a passphrase: {e:?}")))?;
    let cipher = Aes256Gcm::new_from_slice(&key[..])
        .map_err(|e| StoreError::Invalid(format!("passphrase key: {e}")))?;
    let ciphertext = cipher
        .encrypt((&nonce).into(), Payload { msg: plain, aad })
        .map_err(|_| StoreError::Invalid("sealing with a passphrase failed".into()))?;
    Ok(Sealed {
        params: KdfParams::CURRENT,
        salt,
        nonce,
        ciphertext,
    })
}

/// Opens a sealed value: parameters and salt checked first (no work
/// before), then argon2id and AES-256-GCM with `aad`.
pub fn open(
    sealed: &Sealed,
    pass: &str,
    aad: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, OpenError> {
    sealed.params.check().map_err(OpenError::Params)?;
    if !(SALT_MIN..=SALT_MAX).contains(&sealed.salt.len()) {
        return Err(OpenError::Salt);
    }
    let key = derive(pass, &sealed.salt, sealed.params)?;
    let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|e| OpenError::Kdf(e.to_string()))?;
    cipher
        .decrypt(
            (&sealed.nonce).into(),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenError::WrongPassphrase)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_what_does_not_fit() {
        let s = seal(b"secret bytes", "correct horse", b"aad/v1").unwrap();
        assert_eq!(s.params, KdfParams::CURRENT);
        assert_eq!(
            &open(&s, "correct horse", b"aad/v1").unwrap()[..],
            b"secret bytes"
        );
        assert_eq!(
            open(&s, "wrong horse!", b"aad/v1").unwrap_err(),
            OpenError::WrongPassphrase
        );
        assert_eq!(
            open(&s, "correct horse", b"aad/v2").unwrap_err(),
            OpenError::WrongPassphrase
        );
        let mut flipped = s.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(
            open(&flipped, "correct horse", b"aad/v1").unwrap_err(),
            OpenError::WrongPassphrase
        );
        assert!(seal(b"x", "short", b"a").is_err());
    }

    #[test]
    fn parameters_and_salt_are_bounded_before_any_work() {
        let s = seal(b"x", "correct horse", b"a").unwrap();
        for params in [
            KdfParams {
                m_cost: MAX_M_COST + 1,
                ..KdfParams::CURRENT
            },
            KdfParams {
                t_cost: 0,
                ..KdfParams::CURRENT
            },
            KdfParams {
                t_cost: MAX_T_COST + 1,
                ..KdfParams::CURRENT
            },
            KdfParams {
                p_cost: MAX_P_COST + 1,
                ..KdfParams::CURRENT
            },
            KdfParams {
                m_cost: MAX_M_COST,
                t_cost: 5,
                p_cost: 1,
            },
            KdfParams {
                m_cost: 7,
                t_cost: 1,
                p_cost: 1,
            },
        ] {
            let bad = Sealed {
                params,
                ..s.clone()
            };
            assert!(matches!(
                open(&bad, "correct horse", b"a"),
                Err(OpenError::Params(_))
            ));
        }
        for len in [SALT_MIN - 1, SALT_MAX + 1] {
            let bad = Sealed {
                salt: vec![0; len],
                ..s.clone()
            };
            assert_eq!(
                open(&bad, "correct horse", b"a").unwrap_err(),
                OpenError::Salt
            );
        }
    }
}
