//! Messages of the `/bbsync/sync/2` request-response protocol (DESIGN §6),
//! as bytes: one postcard frame per message, `{format, message}`, decoded
//! strictly under a size limit. They map one to one onto the store's
//! replication calls (`docs/sync.md`); the node crate moves them over
//! libp2p streams.
//!
//! On a stream, a request is its frame (read to the end, capped). A
//! response starts with a kind byte ([`response_wire`]): an ordinary frame
//! behind its length, so the reader allocates exactly that much, or, for
//! [`Response::Chunks`], a chunk stream, in which every chunk comes behind
//! its own length, so the reader puts each chunk straight into a buffer of
//! its size and nothing is copied out of a larger message:
//!
//! ```text
//! response = 00 || len u32 BE || frame (len bytes, at most MAX_RESPONSE)
//!          | 01 || format u16 BE (1) || n_chunks u16 BE || n_missing u16 BE
//!             || n_missing × chunk id (32)
//!             || n_chunks × (chunk id (32) || len u32 BE || stored chunk (len bytes))
//! ```
//!
//! `n_chunks + n_missing` is at most [`MAX_CHUNK_IDS`], each `len` a
//! possible stored chunk length, and the whole response at most
//! [`MAX_RESPONSE`] bytes; the stream ends right after it.

use serde::{Deserialize, Serialize};

use crate::{
    ChunkId, InstanceCard, InviteId, InviteRefusal, ManifestId, ObjectId, Result, Role,
    encoding::{FORMAT_V1, check_format, decode, encode},
    signed::{SignedBody, WIRE_OVERHEAD},
};

/// The libp2p protocol name. Version 2: responses on the stream are
/// length-prefixed, and chunks come as a chunk stream (module docs).
pub const SYNC_PROTOCOL: &str = "/bbsync/sync/2";
/// First byte of a response on the stream: a frame follows, behind its length.
pub const RESPONSE_FRAME: u8 = 0;
/// First byte of a response on the stream: a chunk stream follows.
pub const RESPONSE_CHUNKS: u8 = 1;
/// Bytes of a chunk stream's head after the kind byte.
pub const CHUNKS_HEAD_LEN: usize = 6;
/// Bytes before each chunk of a chunk stream: its id and length.
pub const CHUNK_RECORD_HEAD_LEN: usize = 36;
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

/// The bytes before a response frame of `frame_len` bytes: kind and length.
pub fn frame_head(frame_len: usize) -> [u8; 5] {
    let mut h = [0u8; 5];
    h[0] = RESPONSE_FRAME;
    h[1..].copy_from_slice(&(frame_len as u32).to_be_bytes());
    h
}

/// The length in a frame head (after the kind byte), refused over [`MAX_RESPONSE`].
pub fn parse_frame_len(b: [u8; 4]) -> Result<usize> {
    let len = u32::from_be_bytes(b) as usize;
    if len > MAX_RESPONSE {
        return Err(crate::Error::TooLarge {
            what: "sync response",
            len,
            limit: MAX_RESPONSE,
        });
    }
    Ok(len)
}

/// The head of a chunk stream (kind byte included).
pub fn chunks_head(chunks: usize, missing: usize) -> [u8; 1 + CHUNKS_HEAD_LEN] {
    let mut h = [0u8; 1 + CHUNKS_HEAD_LEN];
    h[0] = RESPONSE_CHUNKS;
    h[1..3].copy_from_slice(&FORMAT_V1.to_be_bytes());
    h[3..5].copy_from_slice(&(chunks as u16).to_be_bytes());
    h[5..7].copy_from_slice(&(missing as u16).to_be_bytes());
    h
}

/// Reads a chunk stream's head (after the kind byte): `(chunks, missing)`,
/// refusing another format or more than [`MAX_CHUNK_IDS`] ids.
pub fn parse_chunks_head(b: [u8; CHUNKS_HEAD_LEN]) -> Result<(usize, usize)> {
    check_format("chunk stream", u16::from_be_bytes([b[0], b[1]]))?;
    let chunks = u16::from_be_bytes([b[2], b[3]]) as usize;
    let missing = u16::from_be_bytes([b[4], b[5]]) as usize;
    if chunks + missing > MAX_CHUNK_IDS {
        return Err(crate::Error::invalid(
            "chunk stream",
            "more chunk ids than a request may ask for",
        ));
    }
    Ok((chunks, missing))
}

/// The head of one chunk in a chunk stream.
pub fn chunk_record_head(id: &ChunkId, len: usize) -> [u8; CHUNK_RECORD_HEAD_LEN] {
    let mut h = [0u8; CHUNK_RECORD_HEAD_LEN];
    h[..32].copy_from_slice(id.as_bytes());
    h[32..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Reads the head of one chunk: its id and a possible stored length.
pub fn parse_chunk_record_head(b: [u8; CHUNK_RECORD_HEAD_LEN]) -> Result<(ChunkId, usize)> {
    let id = ChunkId::from_slice(&b[..32])?;
    let len = u32::from_be_bytes([b[32], b[33], b[34], b[35]]) as usize;
    if !(crate::manifest::MIN_STORED_CHUNK..=crate::chunk::MAX_STORED_CHUNK).contains(&len) {
        return Err(crate::Error::invalid(
            "chunk stream",
            "a chunk length no stored chunk can have",
        ));
    }
    Ok((id, len))
}

/// A whole response as it goes on the stream (the codec writes the same
/// bytes piece by piece, without building this buffer).
pub fn response_wire(r: &Response) -> Vec<u8> {
    match r {
        Response::Chunks { chunks, missing } => {
            let mut out = chunks_head(chunks.len(), missing.len()).to_vec();
            for id in missing {
                out.extend_from_slice(id.as_bytes());
            }
            for (id, b) in chunks {
                out.extend_from_slice(&chunk_record_head(id, b.len()));
                out.extend_from_slice(b);
            }
            out
        }
        other => {
            let frame = encode_response(other);
            let mut out = frame_head(frame.len()).to_vec();
            out.extend_from_slice(&frame);
            out
        }
    }
}

/// Decodes a whole response from its stream bytes (what the codec reads
/// piece by piece): every limit checked, nothing may follow it.
pub fn decode_response_wire(b: &[u8]) -> Result<Response> {
    let short = || crate::Error::malformed("sync response", "cut short");
    let (&kind, rest) = b.split_first().ok_or_else(short)?;
    match kind {
        RESPONSE_FRAME => {
            let head: [u8; 4] = rest
                .get(..4)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?;
            let len = parse_frame_len(head)?;
            let frame = &rest[4..];
            if frame.len() != len {
                return Err(crate::Error::malformed(
                    "sync response",
                    format!("frame of {} bytes, its head says {len}", frame.len()),
                ));
            }
            decode_response(frame)
        }
        RESPONSE_CHUNKS => {
            let head: [u8; CHUNKS_HEAD_LEN] = rest
                .get(..CHUNKS_HEAD_LEN)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?;
            let (n, m) = parse_chunks_head(head)?;
            let mut pos = CHUNKS_HEAD_LEN;
            let mut missing = Vec::with_capacity(m);
            for _ in 0..m {
                missing.push(ChunkId::from_slice(
                    rest.get(pos..pos + 32).ok_or_else(short)?,
                )?);
                pos += 32;
            }
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                let h: [u8; CHUNK_RECORD_HEAD_LEN] = rest
                    .get(pos..pos + CHUNK_RECORD_HEAD_LEN)
                    .ok_or_else(short)?
                    .try_into()
                    .map_err(|_| short())?;
                let (id, len) = parse_chunk_record_head(h)?;
                pos += CHUNK_RECORD_HEAD_LEN;
                let bytes = rest.get(pos..pos + len).ok_or_else(short)?;
                pos += len;
                chunks.push((id, serde_bytes::ByteBuf::from(bytes.to_vec())));
            }
            if b.len() > MAX_RESPONSE + 1 {
                return Err(crate::Error::TooLarge {
                    what: "sync response",
                    len: b.len(),
                    limit: MAX_RESPONSE,
                });
            }
            if pos != rest.len() {
                return Err(crate::Error::malformed(
                    "sync response",
                    format!("{} trailing bytes", rest.len() - pos),
                ));
            }
            Ok(Response::Chunks { chunks, missing })
        }
        k => Err(crate::Error::malformed(
            "sync response",
            format!("unknown response kind {k}"),
        )),
    }
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
            assert_eq!(decode_response_wire(&response_wire(&resp)).unwrap(), resp);
        }
    }

    #[test]
    fn chunk_streams_are_checked() {
        let cid = ChunkId([9; 32]);
        let r = Response::Chunks {
            chunks: vec![(cid, serde_bytes::ByteBuf::from(vec![1; 64]))],
            missing: vec![ChunkId([8; 32])],
        };
        let w = response_wire(&r);
        assert_eq!(w[0], RESPONSE_CHUNKS);
        assert_eq!(
            w.len(),
            1 + CHUNKS_HEAD_LEN + 32 + CHUNK_RECORD_HEAD_LEN + 64
        );
        // Cut short anywhere, or one byte too many: refused.
        for n in 0..w.len() {
            assert!(decode_response_wire(&w[..n]).is_err(), "{n}");
        }
        let mut long = w.clone();
        long.push(0);
        assert!(decode_response_wire(&long).is_err());
        // An impossible chunk length, too many ids, another format.
        let mut bad = w.clone();
        bad[1 + CHUNKS_HEAD_LEN + 32 + 32..1 + CHUNKS_HEAD_LEN + 32 + 36]
            .copy_from_slice(&5u32.to_be_bytes());
        assert!(decode_response_wire(&bad).is_err());
        let mut bad = w.clone();
        bad[3..5].copy_from_slice(&(MAX_CHUNK_IDS as u16).to_be_bytes());
        assert!(decode_response_wire(&bad).is_err());
        let mut bad = w.clone();
        bad[2] = 2;
        assert!(decode_response_wire(&bad).is_err());
        // A frame whose length disagrees, an unknown kind.
        let f = response_wire(&Response::Denied);
        assert_eq!(f[..5], frame_head(2));
        let mut bad = f.clone();
        bad[4] = 3;
        assert!(decode_response_wire(&bad).is_err());
        assert!(decode_response_wire(&[7]).is_err());
        assert!(parse_frame_len(((MAX_RESPONSE + 1) as u32).to_be_bytes()).is_err());
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
            let _ = decode_response_wire(&bytes);
        }
    }
}
