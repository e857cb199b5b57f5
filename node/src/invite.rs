//! Invites over `/bbsync/sync/1` (issue 15): the issuer's handler for
//! `InviteChallenge` and `Redeem`, the only requests a peer outside the
//! trust table gets an answer to other than `Denied`, and the redeemer's
//! side ([`redeem`]).
//!
//! The exchange (docs/sync.md, "Invites"):
//! 1. the redeemer dials an address of the invite with the invite's PeerId
//!    (Noise proves the issuer's identity before anything is sent);
//! 2. `InviteChallenge` -> 32 fresh random bytes, kept by the issuer for
//!    that peer alone, for at most [`CHALLENGE_TTL`], usable once;
//! 3. `Redeem {invite, card, challenge, mac}`, the MAC binding the secret
//!    to both instance ids, the invite id, the challenge and the card
//!    (`bbsync_protocol::invite`); the issuer takes the challenge back
//!    (a replay finds none), then checks and spends the invite in one
//!    store transaction ([`Store::redeem_invite`]);
//! 4. `Redeemed {role}`, or `InviteRefused {reason}`.
//!
//! Challenges are rate-limited per peer ([`PEER_BURST`] at once, one more
//! every [`PEER_REFILL`]) and over all peers ([`GLOBAL_BURST`], one more
//! every [`GLOBAL_REFILL`]); a peer cannot redeem without one. Invite
//! strings and secrets never reach a log: the issuer logs invite ids and
//! peers, the redeemer never logs the invite.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bbsync_protocol::{
    InstanceId, Invite, InviteRefusal, Role,
    wire::{Request, Response},
};
use bbsync_store::{Store, invite::Redeemed};

use crate::{NodeError, NodeHandle, clone::blocking, peer_id_of};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Challenges one peer may ask for at once.
pub const PEER_BURST: u32 = 5;
/// One more challenge for a peer after this long.
pub const PEER_REFILL: Duration = Duration::from_secs(12);
/// Challenges all peers together may ask for at once.
pub const GLOBAL_BURST: u32 = 60;
/// One more challenge for everyone after this long.
pub const GLOBAL_REFILL: Duration = Duration::from_secs(1);
/// Most peers with a challenge or a rate record kept at once.
const MAX_TRACKED: usize = 4096;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: u32, every: Duration) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
    }

    /// Takes one token, or says how long until there is one.
    fn take(&mut self, now: Instant, burst: u32, every: Duration) -> Result<(), Duration> {
        self.refill(now, burst, every);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(every.mul_f64(1.0 - self.tokens))
        }
    }
}

#[derive(Debug, Default)]
struct State {
    challenges: HashMap<InstanceId, ([u8; 32], Instant)>,
    peers: HashMap<InstanceId, Bucket>,
    global: Option<Bucket>,
}

/// The issuer's state for redemptions: outstanding challenges and rate
/// limits (in memory; a restart forgets them, which only costs redeemers
/// a new challenge).
#[derive(Debug, Default)]
pub struct Redemptions {
    state: Mutex<State>,
}

fn rate_limited(wait: Duration) -> InviteRefusal {
    InviteRefusal::RateLimited {
        retry_after_secs: u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

impl Redemptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh challenge for `peer` (replacing any it had), unless the
    /// peer or everyone asked too often lately.
    pub fn challenge(&self, peer: &InstanceId) -> Result<[u8; 32], InviteRefusal> {
        let now = Instant::now();
        let mut s = self.lock();
        if s.peers.len() >= MAX_TRACKED {
            // Forget peers whose buckets have filled up again (idle ones).
            let idle = PEER_REFILL * PEER_BURST;
            s.peers
                .retain(|_, b| now.saturating_duration_since(b.at) < idle);
        }
        if s.challenges.len() >= MAX_TRACKED {
            s.challenges
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < CHALLENGE_TTL);
        }
        if s.peers.len() >= MAX_TRACKED || s.challenges.len() >= MAX_TRACKED {
            return Err(rate_limited(GLOBAL_REFILL));
        }
        let global = s
            .global
            .get_or_insert_with(|| Bucket::full(GLOBAL_BURST, now));
        let mut g = *global;
        g.take(now, GLOBAL_BURST, GLOBAL_REFILL)
            .map_err(rate_limited)?;
        let mut p = s
            .peers
            .get(peer)
            .copied()
            .unwrap_or_else(|| Bucket::full(PEER_BURST, now));
        p.take(now, PEER_BURST, PEER_REFILL).map_err(rate_limited)?;
        // Both limits passed: spend both tokens.
        s.global = Some(g);
        s.peers.insert(*peer, p);
        let mut c = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut c);
        s.challenges.insert(*peer, (c, now));
        Ok(c)
    }

    /// Takes back `peer`'s challenge: true only if it is `given` and not
    /// older than [`CHALLENGE_TTL`]. Either way the peer has none after.
    pub fn take_challenge(&self, peer: &InstanceId, given: &[u8; 32]) -> bool {
        match self.lock().challenges.remove(peer) {
            Some((c, at)) => c == *given && at.elapsed() <= CHALLENGE_TTL,
            None => false,
        }
    }
}

/// Answers `InviteChallenge` and `Redeem` of `peer` (its instance id, if
/// its key is ed25519); other requests are not this module's (`Denied`).
/// Runs store work: call it on the blocking pool.
pub fn answer(
    store: &Store,
    redemptions: &Redemptions,
    peer: Option<InstanceId>,
    req: Request,
) -> Response {
    let Some(peer) = peer else {
        return Response::Denied;
    };
    let refused = |reason| Response::InviteRefused { reason };
    match req {
        Request::InviteChallenge => match redemptions.challenge(&peer) {
            Ok(challenge) => Response::InviteChallenge { challenge },
            Err(reason) => {
                tracing::warn!(peer = %peer.short(), "invite challenge refused: {reason}");
                refused(reason)
            }
        },
        Request::Redeem {
            invite,
            card,
            challenge,
            mac,
        } => {
            if !redemptions.take_challenge(&peer, &challenge) {
                tracing::warn!(peer = %peer.short(), invite = %invite.short(), "redemption refused: no such challenge for this peer (replayed or too old)");
                return refused(InviteRefusal::BadChallenge);
            }
            match store.redeem_invite(&peer, &invite, &card, &challenge, &mac) {
                Ok(Ok(done)) => {
                    let again = matches!(done, Redeemed::Again(_));
                    tracing::info!(
                        peer = %peer.short(),
                        invite = %invite.short(),
                        role = %done.role(),
                        again,
                        "invite redeemed: the peer is trusted"
                    );
                    Response::Redeemed { role: done.role() }
                }
                Ok(Err(reason)) => {
                    tracing::warn!(peer = %peer.short(), invite = %invite.short(), "redemption refused: {reason}");
                    refused(reason)
                }
                Err(e) => {
                    tracing::error!(peer = %peer.short(), invite = %invite.short(), "redemption failed: {e}");
                    refused(InviteRefusal::Unavailable)
                }
            }
        }
        _ => Response::Denied,
    }
}

/// Whether a request is one of the invite exchange's.
pub fn is_invite_request(req: &Request) -> bool {
    matches!(req, Request::InviteChallenge | Request::Redeem { .. })
}

/// The full addresses to dial an invite's issuer at: each address of the
/// invite with `/p2p/<the invite's PeerId>` appended (an address that
/// names another PeerId, or does not parse, is left out with a warning).
/// Errs when none is left.
pub fn invite_addrs(invite: &Invite) -> Result<Vec<libp2p::Multiaddr>, NodeError> {
    use libp2p::multiaddr::Protocol;
    let peer = peer_id_of(&invite.source).ok_or_else(|| NodeError::BadAddress {
        addr: invite.source.to_hex(),
        reason: "the invite names a key that is not a valid ed25519 key".into(),
    })?;
    let mut out = Vec::new();
    let mut why = String::new();
    for text in &invite.addresses {
        let mut addr: libp2p::Multiaddr = match text.parse() {
            Ok(a) => a,
            Err(e) => {
                why = format!("{text}: {e}");
                tracing::warn!("left out an address of the invite: {why}");
                continue;
            }
        };
        match addr.iter().last() {
            Some(Protocol::P2p(p)) if p == peer => {}
            Some(Protocol::P2p(p)) => {
                why = format!("{text} names another peer ({p})");
                tracing::warn!("left out an address of the invite: {why}");
                continue;
            }
            _ => addr.push(Protocol::P2p(peer)),
        }
        out.push(addr);
    }
    if out.is_empty() {
        return Err(NodeError::BadAddress {
            addr: "the invite".into(),
            reason: format!("none of its addresses can be dialed ({why})"),
        });
    }
    Ok(out)
}

/// Redeems `invite` with its issuer, to which this node must be connected
/// (dialed with the invite's PeerId, so Noise proved the issuer's
/// identity): asks for a challenge, proves the secret for this instance
/// and its card, and returns the role the issuer now trusts it with.
/// Trust on this side is the caller's (a clone trusts its source).
pub async fn redeem(
    node: &NodeHandle,
    store: &Arc<Store>,
    invite: &Invite,
) -> Result<Role, NodeError> {
    let peer = peer_id_of(&invite.source).ok_or_else(|| NodeError::BadAddress {
        addr: invite.source.to_hex(),
        reason: "the invite names a key that is not a valid ed25519 key".into(),
    })?;
    let refused = |reason| NodeError::InviteRefused {
        peer: peer.to_string(),
        refusal: reason,
    };
    let challenge = match node.request(peer, Request::InviteChallenge).await? {
        Response::InviteChallenge { challenge } => challenge,
        Response::InviteRefused { reason } => return Err(refused(reason)),
        _ => return Err(crate::clone::out_of_protocol(&peer, "InviteChallenge")),
    };
    let card = {
        let store = store.clone();
        blocking(move || Ok(store.card()?.bytes().to_vec())).await?
    };
    let mac = invite.redeem_mac(&store.instance_id(), &challenge, &card);
    let req = Request::Redeem {
        invite: invite.id,
        card,
        challenge,
        mac,
    };
    match node.request(peer, req).await? {
        Response::Redeemed { role } => Ok(role),
        Response::InviteRefused { reason } => Err(refused(reason)),
        _ => Err(crate::clone::out_of_protocol(&peer, "Redeemed")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn challenges_are_per_peer_single_use_and_rate_limited() {
        let r = Redemptions::default();
        let (a, b) = (InstanceId([1; 32]), InstanceId([2; 32]));
        let ca = r.challenge(&a).unwrap();
        let cb = r.challenge(&b).unwrap();
        assert_ne!(ca, cb);
        // Another peer's challenge is not this one's.
        assert!(!r.take_challenge(&a, &cb));
        // ... and the failed try used up a's challenge.
        assert!(!r.take_challenge(&a, &ca));
        let ca = r.challenge(&a).unwrap();
        assert!(r.take_challenge(&a, &ca));
        assert!(!r.take_challenge(&a, &ca), "a challenge works once");
        // a has used 2 of its PEER_BURST; the rest, then refused.
        for _ in 2..PEER_BURST {
            r.challenge(&a).unwrap();
        }
        match r.challenge(&a) {
            Err(InviteRefusal::RateLimited { retry_after_secs }) => {
                assert!((1..=PEER_REFILL.as_secs() as u32 + 1).contains(&retry_after_secs));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Others are not held back by a.
        r.challenge(&b).unwrap();
    }

    #[test]
    fn everyone_together_is_rate_limited_too() {
        let r = Redemptions::default();
        let mut refused = 0;
        for i in 0..(GLOBAL_BURST + 10) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            if r.challenge(&InstanceId(id)).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 9, "{refused}");
    }
}
