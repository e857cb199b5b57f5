//! Which inbound connections a node keeps, before any request is read: a
//! libp2p behaviour that refuses an established inbound connection of a
//! peer that is not in the trust table when
//! - that peer was answered `Denied` less than [`DENIED_COOLDOWN`] ago
//!   (its re-dials are refused until then), or
//! - [`MAX_UNTRUSTED_INBOUND`] connections of untrusted peers are open
//!   already (throwaway identities cannot take the slots of trusted peers).
//!
//! Trusted peers are always let through (up to the connection limits).
//! Who is trusted comes from the store, refreshed by the node whenever the
//! store's change notification fires (a trust change wakes it).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// How long a peer that was answered `Denied` has its new connections
/// refused (its connections are closed once the denial is sent).
pub const DENIED_COOLDOWN: Duration = Duration::from_secs(30);
/// Most connections of untrusted peers open at once (they get one `Denied`
/// each, then are closed).
pub const MAX_UNTRUSTED_INBOUND: usize = 32;
/// Most peers remembered as recently denied (older entries go first).
const MAX_REMEMBERED: usize = 4096;

/// Why the gate refused a connection.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("this peer was denied less than {}s ago", DENIED_COOLDOWN.as_secs())]
    RecentlyDenied,
    #[error("too many connections of untrusted peers ({MAX_UNTRUSTED_INBOUND})")]
    TooManyUntrusted,
}

/// The gate's state; lives in the swarm (the event loop owns it).
#[derive(Debug, Default)]
pub struct Gate {
    trusted: HashSet<PeerId>,
    denied_until: HashMap<PeerId, Instant>,
    untrusted: HashMap<ConnectionId, PeerId>,
}

impl Gate {
    /// A gate that lets `trusted` through.
    pub fn new(trusted: HashSet<PeerId>) -> Self {
        Gate {
            trusted,
            ..Default::default()
        }
    }

    /// Replaces the set of trusted peers (after a trust change).
    pub fn set_trusted(&mut self, trusted: HashSet<PeerId>) {
        self.untrusted.retain(|_, p| !trusted.contains(p));
        self.trusted = trusted;
    }

    /// Whether `peer` is in the trust table (as last refreshed).
    pub fn is_trusted(&self, peer: &PeerId) -> bool {
        self.trusted.contains(peer)
    }

    /// Refuses `peer`'s new connections for [`DENIED_COOLDOWN`] (unless it
    /// becomes trusted meanwhile).
    pub fn denied(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self.denied_until.len() >= MAX_REMEMBERED {
            self.denied_until.retain(|_, until| *until > now);
            if self.denied_until.len() >= MAX_REMEMBERED {
                // A flood of throwaway identities: forget the oldest half.
                let mut all: Vec<Instant> = self.denied_until.values().copied().collect();
                all.sort_unstable();
                let cut = all[all.len() / 2];
                self.denied_until.retain(|_, until| *until > cut);
            }
        }
        self.denied_until.insert(peer, now + DENIED_COOLDOWN);
    }

    fn admit(&mut self, connection: ConnectionId, peer: PeerId) -> Result<(), Refused> {
        if self.trusted.contains(&peer) {
            return Ok(());
        }
        if let Some(until) = self.denied_until.get(&peer) {
            if *until > Instant::now() {
                return Err(Refused::RecentlyDenied);
            }
            self.denied_until.remove(&peer);
        }
        if self.untrusted.len() >= MAX_UNTRUSTED_INBOUND {
            return Err(Refused::TooManyUntrusted);
        }
        self.untrusted.insert(connection, peer);
        Ok(())
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        match self.admit(connection_id, peer) {
            Ok(()) => Ok(dummy::ConnectionHandler),
            Err(why) => {
                tracing::debug!(%peer, "refused an inbound connection: {why}");
                Err(ConnectionDenied::new(why))
            }
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            self.untrusted.remove(&connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn untrusted_connections_are_capped_and_denied_peers_wait() {
        let trusted = PeerId::random();
        let mut g = Gate::new([trusted].into_iter().collect());
        for i in 0..MAX_UNTRUSTED_INBOUND {
            g.admit(ConnectionId::new_unchecked(i), PeerId::random())
                .unwrap();
        }
        assert!(matches!(
            g.admit(ConnectionId::new_unchecked(9999), PeerId::random()),
            Err(Refused::TooManyUntrusted)
        ));
        // A trusted peer still gets in.
        g.admit(ConnectionId::new_unchecked(10_000), trusted)
            .unwrap();
        // A closed untrusted connection frees its place.
        g.untrusted.remove(&ConnectionId::new_unchecked(0));
        let denied = PeerId::random();
        g.denied(denied);
        assert!(matches!(
            g.admit(ConnectionId::new_unchecked(10_001), denied),
            Err(Refused::RecentlyDenied)
        ));
        g.admit(ConnectionId::new_unchecked(10_002), PeerId::random())
            .unwrap();
        // Trusted after its denial: let through at once.
        g.set_trusted([trusted, denied].into_iter().collect());
        g.admit(ConnectionId::new_unchecked(10_003), denied)
            .unwrap();
    }
}
