//! Messages of the `/bbsync/sync/1` request-response protocol (DESIGN §6),
//! as bytes: one postcard frame per message, `{format, message}`, decoded
//! strictly under a size limit. They map one to one onto the store's
//! replication calls (`docs/sync.md`); the node crate moves them over
//! libp2p streams.

use serde::{Deserialize, Serialize};

use crate::{
    ChunkId, InstanceCard, InviteId, InviteRefusal, ManifestId, ObjectId, Result, Role,
    encoding::{FORMAT_V1, check_format, decode, encode},
    signed::{SignedBody, WIRE_OVERHEAD},
};

/// The libp2p protocol name.
pub const SYNC_PROTOCOL: &str = "/bbsync/sync/1";
/// Largest encoded request.
pub const MAX_REQUEST: usize = 256 * 1024;
/// Largest encoded response (a page of manifests or a batch of chunks).
pub const MAX_RESPONSE: usize = 48 * 1024 * 1024;
/// Most object ids in one `GetManifests`.
pub const MAX_IDS: usize = 4096;
/// Most chunk ids in one `GetChunks`.
pub const MAX_CHUNK_IDS: usize = 64;
/// Most changes in one page.
pub const MAX_PAGE: u32 = 4096;

/// What a peer asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The serving instance's card and checkpoint.
    Hello,
    /// Changes after a cursor (at most `limit`, capped at [`MAX_PAGE`]).
    /// A server fills each page up to the limit while it has changes, so a
    /// shorter page is the end of its log; a page with changes moves the
    /// cursor forward.
    Changes {
        /// Cursor: the last change-log number already seen.
        since: u64,
        /// Page size.
        limit: u32,
    },
    /// Latest manifests of these objects, re-keyed for the requester.
    GetManifests {
        /// At most [`MAX_IDS`].
        ids: Vec<ObjectId>,
    },
    /// Stored bytes of these chunks.
    GetChunks {
        /// At most [`MAX_CHUNK_IDS`].
        ids: Vec<ChunkId>,
    },
    /// Long poll of a follower: like `Changes`, but the server holds the
    /// request until its change log goes past `since` or `wait_ms` pass
    /// (capped at [`MAX_WAIT_MS`]); answered with `Changes` (maybe empty).
    Subscribe {
        /// Cursor: the last change-log number already applied.
        since: u64,
        /// Page size.
        limit: u32,
        /// How long the server may hold the request.
        wait_ms: u32,
    },
    /// The first step of redeeming an invite: a fresh challenge for this
    /// peer (the only request besides `Redeem` that a peer outside the
    /// trust table gets an answer to other than `Denied`).
    InviteChallenge,
    /// Redeems an invite of the server's (`docs/sync.md`, "Invites").
    Redeem {
        /// The invite's id.
        invite: InviteId,
        /// The redeemer's signed card (wire bytes); it must be the card of
        /// the Noise-authenticated peer.
        #[serde(with = "serde_bytes")]
        card: Vec<u8>,
        /// The challenge the server handed this peer.
        challenge: [u8; 32],
        /// The proof of the invite's secret
        /// ([`crate::invite::redeem_mac`]).
        mac: [u8; 32],
    },
}

/// Longest a server holds a `Subscribe`.
pub const MAX_WAIT_MS: u32 = 30_000;

/// One change in a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// Change-log number.
    pub seq: u64,
    /// The object.
    pub object_id: ObjectId,
    /// Its latest version.
    pub version: u64,
    /// That version's manifest id.
    pub manifest_id: ManifestId,
    /// A tombstone.
    pub deleted: bool,
}

/// A manifest with the entry wrapped for the requester (if it may have one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireManifest {
    /// Signed manifest wire bytes.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// Envelope entry wire bytes for the requester.
    pub entry: Option<serde_bytes::ByteBuf>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request breaks a limit or a rule.
    BadRequest,
    /// The server failed (its message says which part, never secrets).
    Internal,
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Hello`.
    Hello {
        /// Signed instance card bytes.
        #[serde(with = "serde_bytes")]
        card: Vec<u8>,
        /// Signed checkpoint bytes.
        #[serde(with = "serde_bytes")]
        checkpoint: Vec<u8>,
    },
    /// Answer to `Changes`.
    Changes {
        /// The page.
        changes: Vec<WireChange>,
        /// Cursor to continue from.
        cursor: u64,
        /// The server's last change-log number.
        last_seq: u64,
    },
    /// Answer to `GetManifests`: each requested id at most once; unknown
    /// and unservable ids are left out.
    Manifests {
        /// The manifests.
        items: Vec<WireManifest>,
        /// Ids not answered because the answer reached the server's size
        /// bound: ask for them again. At least one item comes before any.
        deferred: Vec<ObjectId>,
    },
    /// Answer to `GetChunks`: each requested id at most once.
    Chunks {
        /// Chunks found, each with its stored bytes.
        chunks: Vec<(ChunkId, serde_bytes::ByteBuf)>,
        /// Ids not answered: the server does not hold them, or the answer
        /// reached the server's size bound (ask another source, or again).
        missing: Vec<ChunkId>,
    },
    /// The requester is not trusted: nothing else is said.
    Denied,
    /// The request failed.
    Error {
        /// Class.
        code: ErrorCode,
        /// One line, no secrets.
        message: String,
    },
    /// Answer to `InviteChallenge`: answer it within a minute, once.
    InviteChallenge {
        /// Fresh random bytes, for this peer only.
        challenge: [u8; 32],
    },
    /// Answer to `Redeem`: the server now trusts the redeemer's card with
    /// this role.
    Redeemed {
        /// The role the invite granted.
        role: Role,
    },
    /// Answer to `InviteChallenge` or `Redeem`: refused, and why.
    InviteRefused {
        /// Why.
        reason: InviteRefusal,
    },
}

#[derive(Serialize, Deserialize)]
struct Frame<T> {
    format: u16,
    message: T,
}

/// Encodes a request frame.
pub fn encode_request(r: &Request) -> Vec<u8> {
    encode(&Frame {
        format: FORMAT_V1,
        message: r,
    })
}

/// Decodes a request frame, refusing anything over [`MAX_REQUEST`] bytes or
/// over the id limits.
pub fn decode_request(bytes: &[u8]) -> Result<Request> {
    let f: Frame<Request> = decode("sync request", bytes, MAX_REQUEST)?;
    check_format("sync request", f.format)?;
    let too_many = match &f.message {
        Request::GetManifests { ids } => ids.len() > MAX_IDS,
        Request::GetChunks { ids } => ids.len() > MAX_CHUNK_IDS,
        Request::Changes { limit, .. } | Request::Subscribe { limit, .. } => {
            *limit == 0 || *limit > MAX_PAGE
        }
        Request::Redeem { card, .. } => card.len() > InstanceCard::MAX_BODY + WIRE_OVERHEAD,
        Request::Hello | Request::InviteChallenge => false,
    };
    if too_many {
        return Err(crate::Error::invalid(
            "sync request",
            "over a per-request limit",
        ));
    }
    Ok(f.message)
}

/// Encodes a response frame.
pub fn encode_response(r: &Response) -> Vec<u8> {
    encode(&Frame {
        format: FORMAT_V1,
        message: r,
    })
}

/// Decodes a response frame, refusing anything over [`MAX_RESPONSE`] bytes.
pub fn decode_response(bytes: &[u8]) -> Result<Response> {
    let f: Frame<Response> = decode("sync response", bytes, MAX_RESPONSE)?;
    check_format("sync response", f.format)?;
    Ok(f.message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<(Request, Response)> {
        let oid = ObjectId([7; 16]);
        let cid = ChunkId([9; 32]);
        vec![
            (
                Request::Hello,
                Response::Hello {
                    card: vec![1, 2, 3],
                    checkpoint: vec![4, 5],
                },
            ),
            (
                Request::Changes {
                    since: 5,
                    limit: 100,
                },
                Response::Changes {
                    changes: vec![WireChange {
                        seq: 6,
                        object_id: oid,
                        version: 2,
                        manifest_id: ManifestId([3; 32]),
                        deleted: false,
                    }],
                    cursor: 6,
                    last_seq: 9,
                },
            ),
            (
                Request::GetManifests { ids: vec![oid] },
                Response::Manifests {
                    items: vec![WireManifest {
                        manifest: vec![0xAA; 40],
                        entry: Some(serde_bytes::ByteBuf::from(vec![0xBB; 20])),
                    }],
                    deferred: vec![ObjectId([6; 16])],
                },
            ),
            (
                Request::GetChunks { ids: vec![cid] },
                Response::Chunks {
                    chunks: vec![(cid, serde_bytes::ByteBuf::from(vec![1; 64]))],
                    missing: vec![ChunkId([8; 32])],
                },
            ),
            (Request::Hello, Response::Denied),
            (
                Request::Hello,
                Response::Error {
                    code: ErrorCode::BadRequest,
                    message: "too many ids".into(),
                },
            ),
            (
                Request::InviteChallenge,
                Response::InviteChallenge { challenge: [2; 32] },
            ),
            (
                Request::Redeem {
                    invite: InviteId([1; 16]),
                    card: vec![9; 100],
                    challenge: [2; 32],
                    mac: [3; 32],
                },
                Response::Redeemed { role: Role::Blind },
            ),
            (
                Request::InviteChallenge,
                Response::InviteRefused {
                    reason: InviteRefusal::RateLimited {
                        retry_after_secs: 12,
                    },
                },
            ),
        ]
    }

    #[test]
    fn round_trips() {
        for (req, resp) in samples() {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
            assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        }
    }

    #[test]
    fn frames_start_with_the_format_number() {
        assert_eq!(encode_request(&Request::Hello), vec![1, 0]);
        assert_eq!(encode_response(&Response::Denied), vec![1, 4]);
        let mut bad = encode_request(&Request::Hello);
        bad[0] = 2;
        assert_eq!(
            decode_request(&bad).unwrap_err().kind(),
            crate::ErrorKind::UnsupportedFormat
        );
    }

    #[test]
    fn limits_are_enforced() {
        let many = Request::GetChunks {
            ids: vec![ChunkId([1; 32]); MAX_CHUNK_IDS + 1],
        };
        assert!(decode_request(&encode_request(&many)).is_err());
        let zero = Request::Changes { since: 0, limit: 0 };
        assert!(decode_request(&encode_request(&zero)).is_err());
        let huge_card = Request::Redeem {
            invite: InviteId([1; 16]),
            card: vec![0; InstanceCard::MAX_BODY + WIRE_OVERHEAD + 1],
            challenge: [0; 32],
            mac: [0; 32],
        };
        assert!(decode_request(&encode_request(&huge_card)).is_err());
        let huge = vec![0u8; MAX_REQUEST + 1];
        assert_eq!(
            decode_request(&huge).unwrap_err().kind(),
            crate::ErrorKind::Malformed
        );
        let mut trailing = encode_request(&Request::Hello);
        trailing.push(0);
        assert!(decode_request(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
