//! Identity escrow: this instance's secrets sealed with a passphrase
//! (argon2id, then AES-256-GCM), so that a repository alone is enough to
//! bring a lost node back (`keys/identity.<instance id>`). The sealing
//! itself is [`crate::seal`], shared with `identity.key` at rest.

use bbsync_protocol::{Identity, card_to_string};

use super::repofile::KeyFile;
use crate::{
    error::{Result, StoreError},
    seal::{self, KdfParams, OpenError, Sealed},
};

const AAD: &[u8] = b"bbsync/identity-escrow/v1";
/// Largest escrow file read.
pub const MAX_KEY_FILE: usize = 64 * 1024;

/// `keys/identity.<hex id>` of an instance.
pub fn key_path(identity: &Identity) -> String {
    format!("keys/identity.{}", identity.instance_id().to_hex())
}

/// Seals an identity with a passphrase.
pub fn seal(identity: &Identity, pass: &str) -> Result<KeyFile> {
    let secrets = identity.to_file_bytes();
    let sealed = seal::seal(&secrets, pass, AAD)?;
    let card = identity
        .card(Vec::new(), identity.created_at_ms())
        .map_err(|e| StoreError::Invalid(format!("signing the card: {e}")))?;
    Ok(KeyFile {
        format: 1,
        instance: identity.instance_id().to_hex(),
        card: card_to_string(&card),
        kdf: "argon2id".into(),
        m_cost: sealed.params.m_cost,
        t_cost: sealed.params.t_cost,
        p_cost: sealed.params.p_cost,
        salt: hex::encode(&sealed.salt),
        nonce: hex::encode(sealed.nonce),
        sealed: hex::encode(&sealed.ciphertext),
    })
}

/// Opens a sealed identity. A wrong passphrase (or a damaged file) is
/// `StoreError::Passphrase`.
pub fn open(file: &KeyFile, path: &str, pass: &str) -> Result<Identity> {
    let bad = |what: &str| StoreError::Repo(format!("{path} is damaged: {what}"));
    if file.format != 1 || file.kdf != "argon2id" {
        return Err(bad("unknown format or kdf"));
    }
    let params = KdfParams {
        m_cost: file.m_cost,
        t_cost: file.t_cost,
        p_cost: file.p_cost,
    };
    params.check().map_err(|why| bad(&why))?;
    let salt = hex::decode(&file.salt)
        .ok()
        .filter(|s| (seal::SALT_MIN..=seal::SALT_MAX).contains(&s.len()))
        .ok_or_else(|| bad("salt (16 to 64 bytes of hex)"))?;
    let nonce: [u8; 12] = hex::decode(&file.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("nonce"))?;
    let ciphertext = hex::decode(&file.sealed).map_err(|_| bad("sealed secrets"))?;
    let sealed = Sealed {
        params,
        salt,
        nonce,
        ciphertext,
    };
    let plain = seal::open(&sealed, pass, AAD).map_err(|e| match e {
        OpenError::WrongPassphrase => {
            StoreError::Passphrase(format!("wrong passphrase for the identity escrow {path}"))
        }
        OpenError::Params(why) => bad(&why),
        OpenError::Salt => bad("salt (16 to 64 bytes of hex)"),
        OpenError::Kdf(why) => StoreError::Repo(format!("identity escrow: {why}")),
    })?;
    let id = Identity::from_file_bytes(&plain).map_err(|e| bad(&e.to_string()))?;
    if id.instance_id().to_hex() != file.instance {
        return Err(bad("the secrets are of another instance"));
    }
    Ok(id)
}
