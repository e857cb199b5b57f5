//! The `/bbsync/sync/2` codec. A request is one postcard frame, read to the
//! end of the stream under a size cap. An inbound request that is oversized
//! or does not decode is handed to the node as [`Inbound::Malformed`], so
//! that the node knows who sent it and drops that connection (a codec error
//! would only reset the stream: libp2p-request-response 0.30 does not
//! report a failed `read_request` to the behaviour).
//!
//! A response comes behind a kind byte (`bbsync_protocol::wire`): a frame
//! behind its length, read into a buffer of exactly that size; or a chunk
//! stream, each chunk behind its own length and read straight into a buffer
//! of its size (no response-sized buffer, no copy of a chunk out of it).
//! The writer sends each chunk's bytes as they are, through a small buffer
//! that only coalesces small pieces. Every length is checked against the
//! protocol's caps before anything is allocated.

use std::io;

use bbsync_protocol::{
    ChunkId,
    wire::{
        CHUNK_RECORD_HEAD_LEN, CHUNKS_HEAD_LEN, MAX_REQUEST, MAX_RESPONSE, RESPONSE_CHUNKS,
        RESPONSE_FRAME, Request, Response, chunk_record_head, chunks_head, decode_request,
        decode_response, encode_request, encode_response, frame_head, parse_chunk_record_head,
        parse_chunks_head, parse_frame_len,
    },
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, io::BufWriter};
use libp2p::StreamProtocol;

/// A request as the codec carries it: a valid one, or (inbound only) the
/// reason a peer's request was refused before it reached the server.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A decoded request.
    Valid(Request),
    /// Over the size cap or not a request; never written to the wire.
    Malformed(String),
}

/// Small pieces of a chunk stream are coalesced up to this size before
/// they go to the stream (larger chunks are written as they are).
const WRITE_COALESCE: usize = 64 * 1024;

/// The codec of `/bbsync/sync/2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

/// Reads to the end of the stream; `None` when there is more than `limit`.
async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    Ok((buf.len() <= limit).then_some(buf))
}

fn invalid(e: bbsync_protocol::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn bad_data(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Requires the end of the stream (nothing may follow a response).
async fn expect_end<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<()> {
    let mut one = [0u8; 1];
    match io.read(&mut one).await? {
        0 => Ok(()),
        _ => Err(bad_data("bytes after the end of a response".into())),
    }
}

/// Reads a chunk stream (after its kind byte): every chunk into a buffer of
/// exactly its length, the whole at most `MAX_RESPONSE` bytes.
async fn read_chunk_stream<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Response> {
    let mut head = [0u8; CHUNKS_HEAD_LEN];
    io.read_exact(&mut head).await?;
    let (n, m) = parse_chunks_head(head).map_err(invalid)?;
    let mut total = 1 + CHUNKS_HEAD_LEN + 32 * m;
    let mut missing = Vec::with_capacity(m);
    let mut id = [0u8; 32];
    for _ in 0..m {
        io.read_exact(&mut id).await?;
        missing.push(ChunkId(id));
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut h = [0u8; CHUNK_RECORD_HEAD_LEN];
        io.read_exact(&mut h).await?;
        let (id, len) = parse_chunk_record_head(h).map_err(invalid)?;
        total += CHUNK_RECORD_HEAD_LEN + len;
        if total > MAX_RESPONSE {
            return Err(bad_data(format!("response over {MAX_RESPONSE} bytes")));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        chunks.push((id, serde_bytes::ByteBuf::from(buf)));
    }
    Ok(Response::Chunks { chunks, missing })
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        // Transport errors stay errors (the stream is gone); what the peer
        // chose to send is judged by the node.
        let Some(buf) = read_limited(io, MAX_REQUEST).await? else {
            return Ok(Inbound::Malformed(format!(
                "request over {MAX_REQUEST} bytes"
            )));
        };
        Ok(match decode_request(&buf) {
            Ok(req) => Inbound::Valid(req),
            Err(e) => Inbound::Malformed(format!("undecodable request: {e}")),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut kind = [0u8; 1];
        io.read_exact(&mut kind).await?;
        let r = match kind[0] {
            RESPONSE_FRAME => {
                let mut len = [0u8; 4];
                io.read_exact(&mut len).await?;
                let len = parse_frame_len(len).map_err(invalid)?;
                let mut buf = vec![0u8; len];
                io.read_exact(&mut buf).await?;
                decode_response(&buf).map_err(invalid)?
            }
            RESPONSE_CHUNKS => read_chunk_stream(io).await?,
            k => return Err(bad_data(format!("unknown response kind {k}"))),
        };
        expect_end(io).await?;
        Ok(r)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Inbound::Valid(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a malformed request is never sent",
            ));
        };
        io.write_all(&encode_request(&req)).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match &res {
            Response::Chunks { chunks, missing } => {
                let mut w = BufWriter::with_capacity(WRITE_COALESCE, io);
                w.write_all(&chunks_head(chunks.len(), missing.len()))
                    .await?;
                for id in missing {
                    w.write_all(id.as_bytes()).await?;
                }
                for (id, bytes) in chunks {
                    w.write_all(&chunk_record_head(id, bytes.len())).await?;
                    w.write_all(bytes).await?;
                }
                w.close().await
            }
            other => {
                let frame = encode_response(other);
                io.write_all(&frame_head(frame.len())).await?;
                io.write_all(&frame).await?;
                io.close().await
            }
        }
    }
}
