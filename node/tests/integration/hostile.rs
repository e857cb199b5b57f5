//! A live server keeps serving after garbage and oversized messages: a raw
//! libp2p client (its own codec, same protocol name) sends bytes that are
//! not a request, then a request over the size cap; each time the server
//! answers nothing and drops that connection, while a well-behaved client
//! connected all along is still served.
#![allow(clippy::unwrap_used)]

use std::{io, sync::Arc, time::Duration};

use bbsync_node::{Multiaddr, Node};
use bbsync_protocol::{
    Role, card_to_string,
    wire::{MAX_REQUEST, Request, Response, SYNC_PROTOCOL},
};
use bbsync_store::Store;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    StreamProtocol, noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};

/// Sends raw bytes as a request and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await?;
        io.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_fail_alone() {
    let tmp = bbsync_tests::tempdir().unwrap();
    let server_store = Arc::new(Store::init(&tmp.path().join("server"), "server").unwrap());
    let good = Arc::new(Store::init(&tmp.path().join("good"), "good").unwrap());
    server_store
        .trust_add(&card_to_string(&good.card().unwrap()), Role::Full)
        .unwrap();
    let server = Node::start(server_store.clone()).unwrap();
    let listen = server
        .handle()
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let addr: Multiaddr = format!("{listen}/p2p/{}", server.handle().peer_id())
        .parse()
        .unwrap();

    // The raw client (a random identity: untrusted, but the messages fail
    // before trust is even looked at).
    let mut raw = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(
                    StreamProtocol::new(SYNC_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        // Idle connections stay open on this side: a closed connection can
        // only be the server's doing.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // A trusted client, connected before the garbage arrives.
    let client = Node::start(good.clone()).unwrap();
    let h = client.handle();
    let peer = h.dial(addr.clone()).await.unwrap();
    let hello = h.request(peer, Request::Hello).await.unwrap();
    assert!(matches!(hello, Response::Hello { .. }));

    let server_peer = server.handle().peer_id();
    let payloads = [
        b"this is not a bbsync request at all".to_vec(),
        vec![0xFF; MAX_REQUEST + 44_000],
    ];
    for p in payloads {
        let len = p.len();
        raw.dial(addr.clone()).unwrap();
        raw.behaviour_mut().send_request(&server_peer, p);
        let (mut answered, mut closed) = (None, false);
        while answered.is_none() || !closed {
            match tokio::time::timeout(Duration::from_secs(10), raw.select_next_some())
                .await
                .unwrap_or_else(|_| {
                    panic!("{len} bytes: answered {answered:?}, connection closed {closed}")
                }) {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => {
                    // The raw codec reads to the end of the stream: an empty
                    // read means the stream ended without an answer.
                    answered = Some(!response.is_empty());
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    answered = Some(false);
                }
                SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == server_peer => {
                    closed = true;
                }
                _ => {}
            }
        }
        assert_eq!(answered, Some(false), "{len} bytes got an answer");
    }

    // The trusted client is still served.
    let hello = h.request(peer, Request::Hello).await.unwrap();
    assert!(matches!(hello, Response::Hello { .. }));
    client.stop();
    server.stop();
}
