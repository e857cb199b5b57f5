//! # bbsync-node
//!
//! The network side of a bbsync node: a libp2p swarm (TCP + Noise + yamux,
//! the instance's ed25519 key as its libp2p identity) owned by one task,
//! driven through a cloneable [`NodeHandle`]; the `/bbsync/sync/1`
//! request-response protocol with a size-capped postcard codec; the server
//! side that answers peers from the store (access control first); invites
//! (the issuer's challenge and redemption, the redeemer's side); the
//! clone driver; and the follower of a standby node. With the `tor`
//! feature (default) it also dials `/onion3/...` addresses through arti and
//! serves as an onion service ([`tor`]). Store work never runs on the event loop: it goes to
//! tokio's blocking pool.

pub mod clone;
pub mod codec;
pub mod config;
pub mod dial;
mod error;
pub mod follow;
pub mod gate;
pub mod http;
pub mod invite;
pub mod node;
pub mod onion;
pub mod schedule;
pub mod server;
#[cfg(feature = "tor")]
pub mod tor;

pub use clone::{CloneOptions, CloneReport, FetchReport, ProgressSink, clone_from, fetch_missing};
pub use config::NodeConfig;
pub use error::{ErrorKind, NodeError};
pub use follow::{FollowOptions, UpstreamState, UpstreamStatus, follow, follow_invite};
pub use libp2p::{Multiaddr, PeerId, multiaddr::Protocol as AddrProtocol};
pub use node::{
    ConnectedPeer, Node, NodeHandle, NodeOptions, NodeStats, Responder, TOR_SUPPORTED, TorOptions,
    instance_of, peer_id_of,
};
