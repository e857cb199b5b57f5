//! The serving side: answers one request of a peer from the store.
//! Access control comes first: a peer whose Noise-authenticated key is not
//! in the trust table gets `Denied` for everything and learns nothing (the
//! node then closes its connections, see [`crate::node`]).
//!
//! Every answer is bounded: an id asked more than once is answered once,
//! and a `Manifests` or `Chunks` answer stops at [`Limits`] (the rest is
//! `deferred` or `missing`), well below the codec's 48 MiB response cap,
//! so that one request cannot make the server build an answer of any size.

use std::collections::HashSet;

use bbsync_protocol::{
    InstanceId,
    wire::{ErrorCode, MAX_CHUNK_IDS, MAX_PAGE, MAX_RESPONSE, Request, Response},
};
use bbsync_store::{Store, StoreError};

/// Bytes of chunks in one `Chunks` answer: the chunks that would take it
/// further are listed as `missing` (the first chunk is always sent). A
/// clone asks for about 4 MiB per request, so it never meets this bound.
pub const CHUNK_RESPONSE_BYTES: usize = 8 << 20;
/// Bytes of manifests and entries in one `Manifests` answer (about): the
/// ids that would take it further come back as `deferred`.
pub const MANIFEST_RESPONSE_BYTES: usize = 8 << 20;

// Both leave room for the framing of a full request's worth of items.
const _: () = assert!(CHUNK_RESPONSE_BYTES + (1 << 20) + MAX_CHUNK_IDS * 64 < MAX_RESPONSE);
const _: () = assert!(MANIFEST_RESPONSE_BYTES + (1 << 20) < MAX_RESPONSE);

/// How much one answer may hold (see [`CHUNK_RESPONSE_BYTES`] and
/// [`MANIFEST_RESPONSE_BYTES`], the defaults). Tests set small bounds
/// through a responder ([`answer_with`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of chunks in one `Chunks` answer.
    pub chunk_bytes: usize,
    /// Bytes of manifests and entries in one `Manifests` answer (about).
    pub manifest_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            chunk_bytes: CHUNK_RESPONSE_BYTES,
            manifest_bytes: MANIFEST_RESPONSE_BYTES,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error {
        code: ErrorCode::Internal,
        message: e.to_string(),
    }
}

/// Answers `req` from `peer` (its instance id, if its key is ed25519) with
/// the default [`Limits`].
pub fn answer(store: &Store, peer: Option<InstanceId>, req: Request) -> Response {
    answer_with(store, peer, req, &Limits::default())
}

/// Answers `req` from `peer` within `limits`. A `Subscribe` is answered
/// at once like `Changes` (the node holds the long poll on an async change
/// notification before it asks, and asks again when the log moves).
pub fn answer_with(
    store: &Store,
    peer: Option<InstanceId>,
    req: Request,
    limits: &Limits,
) -> Response {
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
        Request::Changes { since, limit } | Request::Subscribe { since, limit, .. } => {
            let (changes, cursor) = store.changes_page(since, limit.min(MAX_PAGE) as usize)?;
            Ok(Response::Changes {
                changes,
                cursor,
                last_seq: store.last_seq()?,
            })
        }
        Request::GetManifests { ids } => {
            let page = store.serve_manifests_within(&ids, &card, role, limits.manifest_bytes)?;
            tracing::debug!(
                peer = %peer.short(),
                n = page.items.len(),
                deferred = page.deferred.len(),
                ?role,
                "served manifests"
            );
            Ok(Response::Manifests {
                items: page.items,
                deferred: page.deferred,
            })
        }
        Request::GetChunks { ids } => Ok(serve_chunks(store, ids, limits.chunk_bytes)),
        // The node answers these itself (`crate::invite`: they need its
        // challenges), before any responder.
        Request::InviteChallenge | Request::Redeem { .. } => Ok(Response::Error {
            code: ErrorCode::BadRequest,
            message: "invite requests are answered by the node's invite handler".into(),
        }),
    })();
    r.unwrap_or_else(internal)
}

/// The chunks of `ids` that this node holds, each once, up to about
/// `max_bytes` (the first one always); the rest are `missing`.
fn serve_chunks(store: &Store, ids: Vec<bbsync_protocol::ChunkId>, max_bytes: usize) -> Response {
    let mut chunks = Vec::new();
    let mut missing = Vec::new();
    let mut seen = HashSet::with_capacity(ids.len());
    let mut bytes = 0usize;
    let mut full = false;
    // Any chunk held goes to a trusted peer: it is ciphertext, and its id
    // (a hash of that ciphertext) is learned only from a manifest this
    // node chose to serve.
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        let size = match store.packs().size(&id) {
            Some(n) if !full => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                missing.push(id);
                continue;
            }
        };
        if !chunks.is_empty() && bytes.saturating_add(size) > max_bytes {
            full = true;
            missing.push(id);
            continue;
        }
        match store.serve_chunk(&id) {
            Ok(b) => {
                bytes = bytes.saturating_add(b.len());
                chunks.push((id, serde_bytes::ByteBuf::from(b)));
            }
            Err(_) => missing.push(id),
        }
    }
    Response::Chunks { chunks, missing }
}
