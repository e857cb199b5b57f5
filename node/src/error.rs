//! The error type of the node crate.

/// What kind of failure a [`NodeError`] is, for callers that decide on it
/// (the admin API's HTTP status, a follower's retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operator gave something that cannot be used (an address, an
    /// option).
    Usage,
    /// A peer could not be reached, or a request to it failed on the way.
    Unreachable,
    /// A peer refused: this instance is not in its trust table, it refused
    /// an invite, or it answered with an error.
    Refused,
    /// A peer answered something that does not fit the protocol or fails a
    /// format or signature check.
    Protocol,
    /// This node could not set itself up (its identity key, a transport,
    /// Tor, a listener).
    Setup,
    /// A store operation failed: its own kind says more.
    Store(bbsync_store::ErrorKind),
    /// The node task is gone.
    Stopped,
}

/// Errors of the node crate. Messages name peers and addresses, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A malformed or unusable address.
    #[error("bad address {addr}: {reason}")]
    BadAddress {
        /// The address (or what stood for it: `the invite`, `-`).
        addr: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An address that cannot be used (the text says which and why).
    #[error("{0}")]
    Address(String),
    /// None of several sources could be reached (the last error).
    #[error("none of the sources could be reached: {0}")]
    NoSource(Box<NodeError>),
    /// This node's identity key cannot be used by libp2p.
    #[error("cannot use this node's identity key: {reason}")]
    Identity {
        /// libp2p's error.
        reason: String,
    },
    /// A part of the network stack could not be built.
    #[error("cannot set up the {what}: {reason}")]
    Setup {
        /// The part (`TCP transport`, `Tor transport`, `libp2p behaviour`).
        what: &'static str,
        /// The error.
        reason: String,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address (or `an onion service (port N)`).
        addr: String,
        /// Why.
        reason: String,
    },
    /// Dialing failed.
    #[error("cannot reach {peer}: {reason}")]
    Dial {
        /// The address or peer dialed.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A request failed on the way.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer (or `every source`, `local`).
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer refused us.
    #[error("{peer} denied the request (this instance is not in its trust table)")]
    Denied {
        /// The peer.
        peer: String,
    },
    /// The issuer refused an invite redemption.
    #[error("{peer} refused the invite: {refusal}")]
    InviteRefused {
        /// The issuer.
        peer: String,
        /// Its reason.
        refusal: bbsync_protocol::InviteRefusal,
    },
    /// The peer answered with an error.
    #[error("{peer} answered: {message}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its error message (the peer's text, shown as it came).
        message: String,
    },
    /// The peer answered something that does not fit.
    #[error("{peer} answered out of protocol: {reason}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What did not fit.
        reason: String,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] bbsync_store::StoreError),
    /// A format or signature check of something a peer sent failed.
    #[error("{what}: {source}")]
    Check {
        /// What was checked (`source card`, `source checkpoint`).
        what: &'static str,
        /// The protocol error.
        #[source]
        source: bbsync_protocol::Error,
    },
    /// Tor could not be set up or used.
    #[error("tor: {0}")]
    Tor(String),
    /// The node task is gone.
    #[error("the node stopped")]
    Stopped,
}

impl NodeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use NodeError::*;
        match self {
            BadAddress { .. } | Address(_) => ErrorKind::Usage,
            NoSource(_) | Dial { .. } | Request { .. } => ErrorKind::Unreachable,
            Denied { .. } | InviteRefused { .. } | Remote { .. } => ErrorKind::Refused,
            Protocol { .. } | Check { .. } => ErrorKind::Protocol,
            Identity { .. } | Setup { .. } | Listen { .. } | Tor(_) => ErrorKind::Setup,
            Store(e) => ErrorKind::Store(e.kind()),
            Stopped => ErrorKind::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kinds_follow_what_went_wrong() {
        let s = |s: &str| s.to_string();
        let bad = NodeError::BadAddress {
            addr: s("x"),
            reason: s("y"),
        };
        assert_eq!(bad.kind(), ErrorKind::Usage);
        assert_eq!(bad.to_string(), "bad address x: y");
        let denied = NodeError::Denied { peer: s("p") };
        assert_eq!(denied.kind(), ErrorKind::Refused);
        assert_eq!(
            NodeError::NoSource(Box::new(denied)).kind(),
            ErrorKind::Unreachable
        );
        let key = NodeError::Identity { reason: s("bad") };
        assert_eq!(key.kind(), ErrorKind::Setup);
        assert_eq!(key.to_string(), "cannot use this node's identity key: bad");
        let store = NodeError::from(bbsync_store::StoreError::Invalid(s("no")));
        assert_eq!(
            store.kind(),
            ErrorKind::Store(bbsync_store::ErrorKind::Usage)
        );
    }
}
