//! The serving side: answers one request of a peer from the store.
//! Access control comes first: a peer whose Noise-authenticated key is not
//! in the trust table gets `Denied` for everything and learns nothing.

use std::time::Duration;

use bbsync_protocol::{
    InstanceId,
    wire::{ErrorCode, MAX_PAGE, MAX_WAIT_MS, Request, Response},
};
use bbsync_store::{Store, StoreError, sync::Served};

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error {
        code: ErrorCode::Internal,
        message: e.to_string(),
    }
}

/// Answers `req` from `peer` (its instance id, if its key is ed25519).
pub fn answer(store: &Store, peer: Option<InstanceId>, req: Request) -> Response {
    let Some(peer) = peer else {
        return Response::Denied;
    };
    let (card, role) = match store.trusted_card(&peer) {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(peer = %peer.short(), "denied: not in the trust table");
            return Response::Denied;
        }
        Err(e) => return internal(e),
    };
    let r: Result<Response, StoreError> = (|| match req {
        Request::Hello => Ok(Response::Hello {
            card: store.card()?.bytes().to_vec(),
            checkpoint: store.checkpoint()?.bytes().to_vec(),
        }),
        Request::Changes { since, limit } => {
            let (changes, cursor) = store.changes_page(since, limit.min(MAX_PAGE) as usize)?;
            Ok(Response::Changes {
                changes,
                cursor,
                last_seq: store.db().last_seq()?,
            })
        }
        Request::Subscribe {
            since,
            limit,
            wait_ms,
        } => {
            let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
            store.db().wait_for_change(since, wait)?;
            // Trust may have been withdrawn while the request waited.
            if store.trusted_card(&peer)?.is_none() {
                tracing::warn!(peer = %peer.short(), "denied: removed from the trust table");
                return Ok(Response::Denied);
            }
            let (changes, cursor) = store.changes_page(since, limit.min(MAX_PAGE) as usize)?;
            Ok(Response::Changes {
                changes,
                cursor,
                last_seq: store.db().last_seq()?,
            })
        }
        Request::GetManifests { ids } => {
            let items: Vec<Served> = store.serve_manifests(&ids, &card, role)?;
            tracing::debug!(peer = %peer.short(), n = items.len(), ?role, "served manifests");
            Ok(Response::Manifests { items })
        }
        Request::GetChunks { ids } => {
            let mut chunks = Vec::with_capacity(ids.len());
            let mut missing = Vec::new();
            // Any chunk held goes to a trusted peer: it is ciphertext, and its
            // id (a hash of that ciphertext) is learned only from a manifest
            // this node chose to serve.
            for id in ids {
                match store.serve_chunk(&id) {
                    Ok(b) => chunks.push((id, serde_bytes::ByteBuf::from(b))),
                    Err(_) => missing.push(id),
                }
            }
            Ok(Response::Chunks { chunks, missing })
        }
    })();
    r.unwrap_or_else(internal)
}
