//! The error type of the node crate.

/// Errors of the node crate. Messages name peers and addresses, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A malformed address.
    #[error("bad address {0}: {1}")]
    BadAddress(String, String),
    /// An address that cannot be used (the text says which and why).
    #[error("{0}")]
    Address(String),
    /// None of several sources could be reached (the last error).
    #[error("none of the sources could be reached: {0}")]
    NoSource(Box<NodeError>),
    /// Listening failed.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
    /// Dialing failed.
    #[error("cannot reach {0}: {1}")]
    Dial(String, String),
    /// A request failed on the way.
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    /// The peer refused us.
    #[error("{0} denied the request (this instance is not in its trust table)")]
    Denied(String),
    /// The issuer refused an invite redemption.
    #[error("{0} refused the invite: {1}")]
    InviteRefused(String, bbsync_protocol::InviteRefusal),
    /// The peer answered with an error.
    #[error("{0} answered: {1}")]
    Remote(String, String),
    /// The peer answered something that does not fit.
    #[error("{0} answered out of protocol: {1}")]
    Protocol(String, String),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] bbsync_store::StoreError),
    /// A format check failed.
    #[error("{0}: {1}")]
    Check(String, bbsync_protocol::Error),
    /// Tor could not be set up or used.
    #[error("tor: {0}")]
    Tor(String),
    /// The node task is gone.
    #[error("the node stopped")]
    Stopped,
}
