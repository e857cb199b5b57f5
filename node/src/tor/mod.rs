//! Tor through arti: a libp2p transport that dials onion addresses and
//! listens as an onion service ([`transport`]) with its retry schedule
//! ([`retry`]), the arti configuration ([`config`]) and the client
//! ([`client`]). Compiled with the `tor` feature (on by default).

pub mod client;
pub mod config;
pub mod retry;
pub mod transport;

use std::time::Duration;

use libp2p::{
    PeerId,
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, Transport as _, upgrade::Version},
    },
    identity, noise, yamux,
};

pub use transport::TorTransport;

use crate::onion::OnionAddrError;

/// Errors of the Tor transport.
#[derive(Debug, thiserror::Error)]
pub enum TorError {
    /// The arti configuration could not be loaded.
    #[error("tor config {0}: {1}")]
    Config(String, String),
    /// The arti client could not be created or bootstrapped.
    #[error("tor bootstrap failed: {0}")]
    Bootstrap(String),
    /// The onion service could not be launched or published.
    #[error("onion service: {0}")]
    Service(String),
    /// A malformed onion address.
    #[error("bad onion address {0}: {1}")]
    Address(String, OnionAddrError),
    /// Every dial attempt failed within the retry budget.
    #[error(
        "onion service {host}:{port} unreachable after {secs} s and {attempts} attempt(s): {last}"
    )]
    Unreachable {
        /// `<56 chars>.onion`.
        host: String,
        /// The virtual port.
        port: u16,
        /// Seconds spent.
        secs: u64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
}

/// Noise + yamux over Tor streams, as TCP gets them; `timeout` bounds a
/// whole dial (retries included) or the upgrade of an inbound stream.
pub fn upgraded(
    tor: TorTransport,
    keypair: &identity::Keypair,
    timeout: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    Ok(tor
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(keypair)?)
        .multiplex(yamux::Config::default())
        .timeout(timeout)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}
