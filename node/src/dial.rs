//! Addresses and dialing for the commands that reach peers (`clone`,
//! `fetch-missing`, invites) and the admin API's jobs: one implementation,
//! so that both give the same answers and the same errors.

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

use crate::{NodeError, NodeHandle, onion};

/// Parses one address (a malformed onion address is named as such).
pub fn parse_addr(s: &str) -> Result<Multiaddr, NodeError> {
    onion::check_text(s)
        .map_err(|e| NodeError::Address(format!("malformed address {s:?}: {e}")))?;
    s.parse::<Multiaddr>()
        .map_err(|e| NodeError::Address(format!("malformed address {s:?}: {e}")))
}

/// Parses full peer addresses (each must end in /p2p/<PeerId>).
pub fn parse_peer_addrs(texts: &[String]) -> Result<Vec<Multiaddr>, NodeError> {
    texts
        .iter()
        .map(|text| {
            let addr = parse_addr(text)?;
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(NodeError::Address(format!(
                    "address {text} must end in /p2p/<PeerId> (the form `bbsync serve` prints)"
                )));
            }
            Ok(addr)
        })
        .collect()
}

/// Dials `addr` within its dial timeout ([`NodeHandle::dial_timeout`]).
pub async fn dial_within(h: &NodeHandle, addr: &Multiaddr) -> Result<PeerId, NodeError> {
    let limit = h.dial_timeout(addr);
    tokio::time::timeout(limit, h.dial(addr.clone()))
        .await
        .map_err(|_| NodeError::Dial {
            peer: addr.to_string(),
            reason: format!("no answer within {} s", limit.as_secs()),
        })?
}

/// Dials every address. With `first_required`, failing to reach the first
/// one fails; the others (and all, without it) are skipped with a warning.
/// Errors when none answers.
pub async fn dial_all(
    h: &NodeHandle,
    addrs: Vec<Multiaddr>,
    first_required: bool,
) -> Result<Vec<PeerId>, NodeError> {
    let n = addrs.len();
    let mut peers = Vec::new();
    let mut last = None;
    for (i, addr) in addrs.into_iter().enumerate() {
        match dial_within(h, &addr).await {
            Ok(p) => peers.push(p),
            Err(e) if (i == 0 && first_required) || n == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("not used as a source: {e}");
                last = Some(e);
            }
        }
    }
    match (peers.is_empty(), last) {
        (true, Some(e)) => Err(NodeError::NoSource(Box::new(e))),
        _ => Ok(peers),
    }
}

/// Dials the first of `addrs` that answers (an invite's addresses, in the
/// issuer's order); the last error if none does.
pub async fn dial_first(h: &NodeHandle, addrs: &[Multiaddr]) -> Result<PeerId, NodeError> {
    let mut last = None;
    for addr in addrs {
        match dial_within(h, addr).await {
            Ok(p) => return Ok(p),
            Err(e) => {
                tracing::info!("{e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| NodeError::Address("the invite names no address".into())))
}
