//! The `/bbsync/sync/1` codec: one postcard frame per message, read to the
//! end of the stream under a size cap. An inbound request that is oversized
//! or does not decode is handed to the node as [`Inbound::Malformed`], so
//! that the node knows who sent it and drops that connection (a codec error
//! would only reset the stream: libp2p-request-response 0.30 does not
//! report a failed `read_request` to the behaviour).

use std::io;

use bbsync_protocol::wire::{
    MAX_REQUEST, MAX_RESPONSE, Request, Response, decode_request, decode_response, encode_request,
    encode_response,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// The codec of `/bbsync/sync/1`.
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
        let buf = read_limited(io, MAX_RESPONSE).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response over {MAX_RESPONSE} bytes"),
            )
        })?;
        decode_response(&buf).map_err(invalid)
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
        io.write_all(&encode_response(&res)).await?;
        io.close().await
    }
}
