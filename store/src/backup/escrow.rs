//! Identity escrow: this instance's secrets sealed with a passphrase
//! (argon2id, then AES-256-GCM), so that a repository alone is enough to
//! bring a lost node back (`keys/identity.<instance id>`).

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Payload},
};
use bbsync_protocol::{Identity, card_to_string};
use zeroize::Zeroizing;

use super::repofile::KeyFile;
use crate::error::{Result, StoreError};

const AAD: &[u8] = b"bbsync/identity-escrow/v1";
/// Argon2id memory cost (KiB): 64 MiB.
pub const M_COST: u32 = 64 * 1024;
/// Argon2id iterations.
pub const T_COST: u32 = 3;
/// Argon2id lanes.
pub const P_COST: u32 = 1;
/// Shortest passphrase accepted for a new escrow.
pub const MIN_PASSPHRASE: usize = 8;

/// Largest argon2 memory cost accepted from an escrow file (KiB): 1 GiB.
pub const MAX_M_COST: u32 = 1024 * 1024;
/// Most argon2 iterations accepted from an escrow file.
pub const MAX_T_COST: u32 = 16;
/// Most argon2 lanes accepted from an escrow file.
pub const MAX_P_COST: u32 = 8;
/// Most memory × iterations accepted (KiB × passes): 4 GiB of work, e.g.
/// 1 GiB × 4 or 256 MiB × 16; this version writes 64 MiB × 3.
pub const MAX_WORK: u64 = 4 * 1024 * 1024;
/// Largest escrow file read.
pub const MAX_KEY_FILE: usize = 64 * 1024;
const SALT_MIN: usize = 16;
const SALT_MAX: usize = 64;

/// Checks the argon2 parameters of an escrow file against the bounds above,
/// before any work: the file comes from the repository, and whoever can
/// write there could otherwise make a restore allocate and hash without
/// limit.
fn check_params(file: &KeyFile) -> std::result::Result<(), String> {
    let (m, t, p) = (file.m_cost, file.t_cost, file.p_cost);
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

/// `keys/identity.<hex id>` of an instance.
pub fn key_path(identity: &Identity) -> String {
    format!("keys/identity.{}", identity.instance_id().to_hex())
}

fn derive(pass: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| StoreError::Repo(format!("identity escrow: bad argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.as_bytes(), salt, &mut key[..])
        .map_err(|e| StoreError::Repo(format!("identity escrow: argon2: {e}")))?;
    Ok(key)
}

/// Seals an identity with a passphrase.
pub fn seal(identity: &Identity, pass: &str) -> Result<KeyFile> {
    if pass.chars().count() < MIN_PASSPHRASE {
        return Err(StoreError::Invalid(format!(
            "the passphrase must have at least {MIN_PASSPHRASE} characters"
        )));
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let key = derive(pass, &salt, M_COST, T_COST, P_COST)?;
    let cipher = Aes256Gcm::new_from_slice(&key[..])
        .map_err(|e| StoreError::Invalid(format!("identity escrow key: {e}")))?;
    let secrets = identity.to_file_bytes();
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &secrets,
                aad: AAD,
            },
        )
        .map_err(|_| StoreError::Invalid("sealing the identity failed".into()))?;
    let card = identity
        .card(Vec::new(), identity.created_at_ms())
        .map_err(|e| StoreError::Invalid(format!("signing the card: {e}")))?;
    Ok(KeyFile {
        format: 1,
        instance: identity.instance_id().to_hex(),
        card: card_to_string(&card),
        kdf: "argon2id".into(),
        m_cost: M_COST,
        t_cost: T_COST,
        p_cost: P_COST,
        salt: hex::encode(salt),
        nonce: hex::encode(nonce),
        sealed: hex::encode(sealed),
    })
}

/// Opens a sealed identity. A wrong passphrase (or a damaged file) is
/// `StoreError::Passphrase`.
pub fn open(file: &KeyFile, path: &str, pass: &str) -> Result<Identity> {
    let bad = |what: &str| StoreError::Repo(format!("{path} is damaged: {what}"));
    if file.format != 1 || file.kdf != "argon2id" {
        return Err(bad("unknown format or kdf"));
    }
    check_params(file).map_err(|why| bad(&why))?;
    let salt = hex::decode(&file.salt)
        .ok()
        .filter(|s| (SALT_MIN..=SALT_MAX).contains(&s.len()))
        .ok_or_else(|| bad("salt (16 to 64 bytes of hex)"))?;
    let nonce: [u8; 12] = hex::decode(&file.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("nonce"))?;
    let sealed = hex::decode(&file.sealed).map_err(|_| bad("sealed secrets"))?;
    let key = derive(pass, &salt, file.m_cost, file.t_cost, file.p_cost)?;
    let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| bad("key"))?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: &sealed,
                    aad: AAD,
                },
            )
            .map_err(|_| {
                StoreError::Passphrase(format!("wrong passphrase for the identity escrow {path}"))
            })?,
    );
    let id = Identity::from_file_bytes(&plain).map_err(|e| bad(&e.to_string()))?;
    if id.instance_id().to_hex() != file.instance {
        return Err(bad("the secrets are of another instance"));
    }
    Ok(id)
}
