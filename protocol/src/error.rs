//! The error type of the protocol crate.

/// Broad classes of [`Error`], for callers that decide what to do by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The bytes could not be decoded (truncated, malformed, too large, trailing bytes).
    Malformed,
    /// A known structure with a format number this version does not understand.
    UnsupportedFormat,
    /// A signature did not verify.
    BadSignature,
    /// The signature verified but the signer is not trusted for this purpose.
    Untrusted,
    /// Authenticated decryption failed, or the key does not fit the data.
    Crypto,
    /// A chunk's bytes do not hash to its id.
    HashMismatch,
    /// A value violates a rule of the format (bad name, inconsistent fields).
    Invalid,
}

/// Errors of the protocol crate. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes of `what` could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Encoded `what` is larger than its limit.
    #[error("{what} too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Unknown format number.
    #[error("unsupported {what} format {found} (this version understands {supported})")]
    UnsupportedFormat {
        /// What was being decoded.
        what: &'static str,
        /// The format number found.
        found: u16,
        /// The format number this version writes and reads.
        supported: u16,
    },
    /// An ed25519 signature did not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// The signer is not trusted.
    #[error("{what} signed by untrusted instance {signer}")]
    Untrusted {
        /// What was signed.
        what: &'static str,
        /// Short form of the signer's id.
        signer: String,
    },
    /// AEAD decryption failed.
    #[error("decryption failed for {what}")]
    Decrypt {
        /// What was being decrypted.
        what: &'static str,
    },
    /// A content key does not match the key commitment of the manifest it
    /// was unwrapped for (a substituted key).
    #[error(
        "content key of object {object} version {version} does not match the manifest's key commitment"
    )]
    KeyCommitment {
        /// Short form of the object id.
        object: String,
        /// The object version.
        version: u64,
    },
    /// The x25519 exchange produced a non-contributory (all-zero) secret.
    #[error("key agreement rejected: non-contributory x25519 public key")]
    NonContributory,
    /// A chunk does not hash to its id.
    #[error("chunk {expected} hashes to {actual}")]
    HashMismatch {
        /// The id it should have.
        expected: String,
        /// The hash of the bytes seen.
        actual: String,
    },
    /// A value breaks a rule of the format.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What is invalid.
        what: &'static str,
        /// The rule it breaks.
        reason: String,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Malformed { .. } | Error::TooLarge { .. } => ErrorKind::Malformed,
            Error::UnsupportedFormat { .. } => ErrorKind::UnsupportedFormat,
            Error::BadSignature { .. } => ErrorKind::BadSignature,
            Error::Untrusted { .. } => ErrorKind::Untrusted,
            Error::Decrypt { .. } | Error::NonContributory | Error::KeyCommitment { .. } => {
                ErrorKind::Crypto
            }
            Error::HashMismatch { .. } => ErrorKind::HashMismatch,
            Error::Invalid { .. } => ErrorKind::Invalid,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Error::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl ToString) -> Self {
        Error::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}
