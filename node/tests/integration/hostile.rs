//! Hostile peers against a live server (real libp2p connections on
//! 127.0.0.1), issue 10 item 6 among them:
//! - garbage and oversized messages: the server answers nothing and drops
//!   that connection, while a well-behaved client is still served;
//! - an untrusted peer is answered `Denied` and disconnected, its re-dials
//!   are refused, and throwaway identities cannot fill the inbound slots;
//! - answers are de-duplicated and bounded in bytes;
//! - one peer's requests are bounded, and long polls hold no thread;
//! - a source that does not advance its cursor, or sends chunks that were
//!   not asked for, cannot keep a clone paging or fill its disk.
#![allow(clippy::unwrap_used)]

use bbsync_store::test_hooks::Tamper;
use std::{
    fs, io,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bbsync_node::{
    CloneOptions, FollowOptions, Multiaddr, Node, NodeHandle, Responder, clone_from, follow,
    node::MAX_REQUESTS_PER_PEER,
    server::{self, CHUNK_RESPONSE_BYTES, Limits},
};
use bbsync_protocol::{
    ChunkId, ObjectId, Role, card_to_string,
    wire::{
        MAX_IDS, MAX_REQUEST, Request, Response, SYNC_PROTOCOL, decode_response, encode_request,
    },
};
use bbsync_store::{Store, progress::NoProgress};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    PeerId, StreamProtocol, Swarm, noise,
    request_response::{self, ProtocolSupport},
    swarm::{SwarmEvent, dial_opts::DialOpts},
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
        // sync/2: a frame comes behind its kind byte and length (the only
        // kind a denial or an error comes in); the frame is returned.
        match v.split_first() {
            Some((&bbsync_protocol::wire::RESPONSE_FRAME, rest)) if rest.len() >= 4 => {
                Ok(rest[4..].to_vec())
            }
            _ => Ok(v),
        }
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

// ---------------------------------------------------------------------------
// Issue 10, item 6.

type Raw = Swarm<request_response::Behaviour<RawCodec>>;

/// A raw client with a fresh identity (untrusted by any server here). Idle
/// connections stay open on its side: a closed connection is the server's
/// doing.
fn raw_swarm() -> Raw {
    libp2p::SwarmBuilder::with_new_identity()
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
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// What a raw client saw.
#[derive(Debug, Default)]
struct Seen {
    answers: Vec<Response>,
    failures: usize,
    established: usize,
    closed: usize,
    dial_errors: usize,
}

impl Seen {
    fn open(&self) -> usize {
        self.established - self.closed
    }
}

/// Drives `raw` until `done` holds (panics after `secs`).
async fn drive(
    raw: &mut Raw,
    seen: &mut Seen,
    secs: u64,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(seen) {
        let ev = tokio::time::timeout_at(deadline, raw.select_next_some())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {seen:?}"));
        record(seen, ev);
    }
}

fn record(seen: &mut Seen, ev: SwarmEvent<request_response::Event<Vec<u8>, Vec<u8>>>) {
    match ev {
        SwarmEvent::ConnectionEstablished { .. } => seen.established += 1,
        SwarmEvent::ConnectionClosed { .. } => seen.closed += 1,
        SwarmEvent::OutgoingConnectionError { .. } => seen.dial_errors += 1,
        SwarmEvent::Behaviour(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        }) => match decode_response(&response) {
            Ok(r) => seen.answers.push(r),
            Err(_) => seen.failures += 1,
        },
        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
            seen.failures += 1;
        }
        _ => {}
    }
}

async fn wait_until(secs: u64, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn noise(mut x: u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A server store with `posts` messages and, if `big`, a 26 MB file (about
/// 75 chunks), and a client store it trusts (full).
fn stores(tmp: &Path, posts: usize, big: bool) -> (Arc<Store>, Arc<Store>) {
    let tree = tmp.join("tree");
    write(&tree, "config/bbs.toml", b"name = \"hostile\"\n");
    for i in 0..posts {
        write(
            &tree,
            &format!("boards/general/{i}.json"),
            format!("{{\"id\":{i},\"body\":\"post {i}\"}}").as_bytes(),
        );
    }
    if big {
        write(&tree, "files/big.bin", &noise(7, 26_000_000));
    }
    let server = Arc::new(Store::init(&tmp.join("server"), "server").unwrap());
    let client = Arc::new(Store::init(&tmp.join("client"), "client").unwrap());
    server.import_bbs(&tree, &NoProgress).unwrap();
    server
        .trust_add(&card_to_string(&client.card().unwrap()), Role::Full)
        .unwrap();
    (server, client)
}

async fn listen(node: &Node) -> Multiaddr {
    let h = node.handle();
    let addr = h
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    format!("{addr}/p2p/{}", h.peer_id()).parse().unwrap()
}

fn good_server_id(peer: &PeerId) -> bbsync_protocol::InstanceId {
    bbsync_node::instance_of(peer).unwrap()
}

async fn connect(client: &Node, addr: &Multiaddr) -> (NodeHandle, PeerId) {
    let h = client.handle();
    let peer = h.dial(addr.clone()).await.unwrap();
    (h, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_peer_is_disconnected_and_its_redials_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 1, false);
    let server = Node::start(server_store).unwrap();
    let addr = listen(&server).await;
    let server_peer = server.handle().peer_id();

    // An untrusted peer: `Denied`, then the server closes the connection.
    let mut raw = raw_swarm();
    let mut seen = Seen::default();
    raw.dial(addr.clone()).unwrap();
    raw.behaviour_mut()
        .send_request(&server_peer, encode_request(&Request::Hello));
    drive(&mut raw, &mut seen, 20, "Denied and the close", |s| {
        !s.answers.is_empty() && s.established > 0 && s.open() == 0
    })
    .await;
    assert_eq!(seen.answers, vec![Response::Denied], "{seen:?}");

    // It dials again at once: the connection is refused before any request
    // is read (no second `Denied`).
    let mut again = Seen::default();
    raw.dial(addr.clone()).unwrap();
    raw.behaviour_mut()
        .send_request(&server_peer, encode_request(&Request::Hello));
    drive(&mut raw, &mut again, 20, "the refused re-dial", |s| {
        s.failures > 0 && s.open() == 0
    })
    .await;
    assert!(again.answers.is_empty(), "{again:?}");

    // A trusted peer is served all along.
    let client = Node::start(good).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    assert!(matches!(
        h.request(peer, Request::Hello).await.unwrap(),
        Response::Hello { .. }
    ));
    client.stop();
    server.stop();
}

/// The attack of the issue: 64 throwaway identities x 4 connections each
/// (the per-peer limit) against 256 inbound slots. The server keeps at most
/// `MAX_UNTRUSTED_INBOUND` of them, so a trusted peer connects and is
/// served while they are there; when they ask, they are denied and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_identities_cannot_fill_the_inbound_slots() {
    use libp2p::swarm::dial_opts::PeerCondition;
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 1, false);
    let server = Node::start(server_store).unwrap();
    let addr = listen(&server).await;
    let server_peer = server.handle().peer_id();

    let open = Arc::new(AtomicUsize::new(0));
    let resolved = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    // 0: hold the connections, 1: ask (Hello), 2: stop.
    let (phase, _) = tokio::sync::watch::channel(0u8);
    let mut attackers = Vec::new();
    for _ in 0..64 {
        let (open, resolved, denied) = (open.clone(), resolved.clone(), denied.clone());
        let mut phase = phase.subscribe();
        let addr = addr.clone();
        attackers.push(tokio::spawn(async move {
            let mut raw = raw_swarm();
            for _ in 0..4 {
                raw.dial(
                    DialOpts::peer_id(server_peer)
                        .addresses(vec![addr.clone()])
                        .condition(PeerCondition::Always)
                        .build(),
                )
                .unwrap();
            }
            let mut asked = false;
            loop {
                tokio::select! {
                    ev = raw.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            open.fetch_add(1, Ordering::SeqCst);
                            resolved.fetch_add(1, Ordering::SeqCst);
                        }
                        SwarmEvent::OutgoingConnectionError { .. } => {
                            resolved.fetch_add(1, Ordering::SeqCst);
                        }
                        SwarmEvent::ConnectionClosed { .. } => {
                            open.fetch_sub(1, Ordering::SeqCst);
                        }
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        }) if decode_response(&response).ok() == Some(Response::Denied) => {
                            denied.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    },
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow_and_update() == 2 {
                            return;
                        }
                        if !asked && raw.is_connected(&server_peer) {
                            asked = true;
                            raw.behaviour_mut()
                                .send_request(&server_peer, encode_request(&Request::Hello));
                        }
                    }
                }
            }
        }));
    }
    wait_until(60, "every attacker dial to end", || {
        resolved.load(Ordering::SeqCst) >= 64 * 4
    })
    .await;
    // (Well before the server's 30 s idle timeout could close them.)
    wait_until(20, "the server to keep at most its untrusted share", || {
        open.load(Ordering::SeqCst) <= bbsync_node::gate::MAX_UNTRUSTED_INBOUND
    })
    .await;
    let held = open.load(Ordering::SeqCst);

    // A trusted peer gets a slot while they hold theirs.
    let client = Node::start(good).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    assert!(matches!(
        h.request(peer, Request::Hello).await.unwrap(),
        Response::Hello { .. }
    ));

    // They ask: each is denied and loses its connections.
    phase.send(1).unwrap();
    wait_until(30, "the attackers to be denied and disconnected", || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    // (On a very slow machine the kept ones may have idled out already.)
    if held > 0 {
        assert!(denied.load(Ordering::SeqCst) > 0);
    }
    phase.send(2).unwrap();
    for a in attackers {
        a.await.unwrap();
    }
    client.stop();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_deduplicated_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 3, true);
    let big = server_store.resolve("file:big.bin").unwrap();
    let chunks: Vec<ChunkId> = server_store
        .dangerously_manifest_unverified(&big)
        .unwrap()
        .chunks
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(chunks.len() >= 64, "{} chunks", chunks.len());
    let server = Node::start(server_store).unwrap();
    let addr = listen(&server).await;
    let client = Node::start(good).unwrap();
    let (h, peer) = connect(&client, &addr).await;

    // 4,096 copies of one id: one manifest (one re-key), not 4,096.
    let Response::Manifests { items, deferred } = h
        .request(
            peer,
            Request::GetManifests {
                ids: vec![big; MAX_IDS],
            },
        )
        .await
        .unwrap()
    else {
        panic!("not a Manifests answer")
    };
    assert_eq!(items.len(), 1);
    assert!(deferred.is_empty());

    // 64 copies of one chunk id: one chunk.
    let Response::Chunks {
        chunks: got,
        missing,
    } = h
        .request(
            peer,
            Request::GetChunks {
                ids: vec![chunks[0]; 64],
            },
        )
        .await
        .unwrap()
    else {
        panic!("not a Chunks answer")
    };
    assert_eq!((got.len(), missing.len()), (1, 0));

    // 64 distinct chunks (about 16 MB): the answer stops at the server's
    // bound, the rest are listed missing, and asking again brings them.
    let mut want: Vec<ChunkId> = chunks[..64].to_vec();
    let mut received = 0;
    let mut answers = 0;
    while !want.is_empty() {
        let asked = want.len();
        let Response::Chunks {
            chunks: got,
            missing,
        } = h
            .request(peer, Request::GetChunks { ids: want.clone() })
            .await
            .unwrap()
        else {
            panic!("not a Chunks answer")
        };
        let bytes: usize = got.iter().map(|(_, b)| b.len()).sum();
        assert!(
            bytes <= CHUNK_RESPONSE_BYTES,
            "{bytes} bytes in one answer (bound {CHUNK_RESPONSE_BYTES})"
        );
        assert!(!got.is_empty());
        assert_eq!(got.len() + missing.len(), asked);
        for (id, b) in &got {
            assert_eq!(ChunkId::of(b), *id);
        }
        received += got.len();
        answers += 1;
        want = missing;
    }
    assert_eq!(received, 64);
    assert!(answers >= 2, "64 chunks came in one answer");
    client.stop();
    server.stop();
}

/// A server whose manifest answers are bounded to a couple of kilobytes
/// defers the rest; a clone asks again and ends proven complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_asks_again_for_deferred_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 60, false);
    let limits = Limits {
        manifest_bytes: 2_000,
        ..Limits::default()
    };
    let responder: Responder = Arc::new(move |s, p, r| server::answer_with(s, p, r, &limits));
    let ids: Vec<ObjectId> = server_store
        .changes_page(0, 1000)
        .unwrap()
        .0
        .iter()
        .map(|c| c.object_id)
        .collect();
    let server = Node::start_with_responder(server_store, responder).unwrap();
    let addr = listen(&server).await;
    let client = Node::start(good.clone()).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    let Response::Manifests { items, deferred } = h
        .request(peer, Request::GetManifests { ids: ids.clone() })
        .await
        .unwrap()
    else {
        panic!("not a Manifests answer")
    };
    assert!(!items.is_empty() && !deferred.is_empty());
    assert_eq!(items.len() + deferred.len(), ids.len());
    assert_eq!(
        deferred[..],
        ids[items.len()..],
        "deferred: the tail, in order"
    );

    let report = clone_from(&h, good.clone(), &[peer], &CloneOptions::default())
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.objects as usize, ids.len());
    client.stop();
    server.stop();
}

/// Lets every blocked responder of the bound test go when dropped.
struct ReleaseAll(Arc<(Mutex<usize>, std::sync::Condvar)>);

impl Drop for ReleaseAll {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0;
        *lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = usize::MAX / 2;
        cv.notify_all();
    }
}

/// One peer's requests: at most `MAX_REQUESTS_PER_PEER` are worked on at
/// once (the others wait, without a thread), and another peer is served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peers_requests_are_bounded_and_others_are_still_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 2, false);
    let other = Arc::new(Store::init(&tmp.path().join("other"), "other").unwrap());
    server_store
        .trust_add(&card_to_string(&other.card().unwrap()), Role::Full)
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let allowance = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
    // Whatever happens, the blocked responders are let go at the end (a
    // runtime waits for its blocking threads when it is dropped).
    let _release_all = ReleaseAll(allowance.clone());
    let (f, m, a) = (in_flight.clone(), most.clone(), allowance.clone());
    let responder: Responder = Arc::new(move |store, peer, req| {
        if matches!(req, Request::GetChunks { .. }) {
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let (lock, cv) = &*a;
            let mut left = lock.lock().unwrap();
            while *left == 0 {
                left = cv.wait(left).unwrap();
            }
            *left -= 1;
            drop(left);
            f.fetch_sub(1, Ordering::SeqCst);
        }
        server::answer(store, peer, req)
    });
    let server = Node::start_with_responder(server_store, responder).unwrap();
    let addr = listen(&server).await;
    let client = Node::start(good).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    const N: usize = 40;
    let answered = Arc::new(AtomicUsize::new(0));
    for _ in 0..N {
        let (h, answered) = (h.clone(), answered.clone());
        tokio::spawn(async move {
            let r = h
                .request(
                    peer,
                    Request::GetChunks {
                        ids: vec![ChunkId([1; 32])],
                    },
                )
                .await;
            assert!(matches!(r, Ok(Response::Chunks { .. })), "{r:?}");
            answered.fetch_add(1, Ordering::SeqCst);
        });
    }
    wait_until(30, "the first requests to be worked on", || {
        in_flight.load(Ordering::SeqCst) >= MAX_REQUESTS_PER_PEER
    })
    .await;

    // Another peer is served while this one's permits are all taken.
    let second = Node::start(other).unwrap();
    let (h2, peer2) = connect(&second, &addr).await;
    assert!(matches!(
        h2.request(peer2, Request::Hello).await.unwrap(),
        Response::Hello { .. }
    ));

    // Let them finish one at a time: never more than the bound at once.
    for k in 1..=N {
        {
            let (lock, cv) = &*allowance;
            *lock.lock().unwrap() += 1;
            cv.notify_all();
        }
        wait_until(30, "the next answer", || {
            answered.load(Ordering::SeqCst) >= k
        })
        .await;
        assert!(
            most.load(Ordering::SeqCst) <= MAX_REQUESTS_PER_PEER,
            "{} requests of one peer were worked on at once (bound {MAX_REQUESTS_PER_PEER})",
            most.load(Ordering::SeqCst)
        );
    }
    assert_eq!(most.load(Ordering::SeqCst), MAX_REQUESTS_PER_PEER);
    second.stop();
    client.stop();
    server.stop();
}

/// Long polls wait for the store's change notification without holding a
/// thread: while 16 subscriptions are pending on the server, none of them
/// is inside the (blocking) responder; a change answers all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_hold_no_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 2, false);
    let calls = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let (c, i) = (calls.clone(), inside.clone());
    let responder: Responder = Arc::new(move |store, peer, req| {
        let sub = matches!(req, Request::Subscribe { .. });
        if sub {
            c.fetch_add(1, Ordering::SeqCst);
            i.fetch_add(1, Ordering::SeqCst);
        }
        let r = server::answer(store, peer, req);
        if sub {
            i.fetch_sub(1, Ordering::SeqCst);
        }
        r
    });
    let since = server_store.last_seq().unwrap();
    let server = Node::start_with_responder(server_store.clone(), responder).unwrap();
    let addr = listen(&server).await;
    let client = Node::start(good).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let with_news = Arc::new(AtomicUsize::new(0));
    for _ in 0..16 {
        let (h, answered, with_news) = (h.clone(), answered.clone(), with_news.clone());
        tokio::spawn(async move {
            let r = h
                .request(
                    peer,
                    Request::Subscribe {
                        since,
                        limit: 100,
                        wait_ms: 30_000,
                    },
                )
                .await
                .unwrap();
            if matches!(r, Response::Changes { changes, .. } if !changes.is_empty()) {
                with_news.fetch_add(1, Ordering::SeqCst);
            }
            answered.fetch_add(1, Ordering::SeqCst);
        });
    }
    wait_until(30, "16 subscriptions at the server", || {
        calls.load(Ordering::SeqCst) >= 16
    })
    .await;
    wait_until(10, "no subscription to hold a responder thread", || {
        inside.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "answered before any change"
    );

    // A change answers every one of them.
    write(
        &tmp.path().join("tree"),
        "boards/general/new.json",
        b"{\"new\":1}",
    );
    server_store
        .import_bbs(&tmp.path().join("tree"), &NoProgress)
        .unwrap();
    wait_until(30, "every subscription to be answered", || {
        answered.load(Ordering::SeqCst) == 16
    })
    .await;
    assert_eq!(with_news.load(Ordering::SeqCst), 16);
    client.stop();
    server.stop();
}

/// A source whose change pages do not advance the cursor: the clone stops
/// with a protocol error (it would page forever), and so does a follower's
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_must_advance_its_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 5, false);
    let stuck: Responder = Arc::new(|store, peer, req| match req {
        Request::Changes { since, limit } | Request::Subscribe { since, limit, .. } => {
            match server::answer(store, peer, Request::Changes { since: 0, limit }) {
                Response::Changes {
                    changes, last_seq, ..
                } => Response::Changes {
                    changes,
                    cursor: since,
                    last_seq,
                },
                other => other,
            }
        }
        other => server::answer(store, peer, other),
    });
    let follower_store = Arc::new(Store::init(&tmp.path().join("follower"), "follower").unwrap());
    server_store
        .trust_add(&card_to_string(&follower_store.card().unwrap()), Role::Full)
        .unwrap();
    let server = Node::start_with_responder(server_store, stuck).unwrap();
    let addr = listen(&server).await;
    let server_peer = server.handle().peer_id();
    let client = Node::start(good.clone()).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        clone_from(&h, good.clone(), &[peer], &CloneOptions::default()),
    )
    .await
    .expect("the clone kept paging")
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{server_peer} answered out of protocol: a page of changes that does not advance the cursor (still 0)"
        )
    );

    // A follower of it: its session ends with the same error (instead of
    // applying the same page again and again), and it reconnects later.
    let follower = Node::start(follower_store.clone()).unwrap();
    let opts = FollowOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..Default::default()
    };
    let task = tokio::spawn(follow(
        follower.handle(),
        follower_store.clone(),
        addr.clone(),
        opts,
    ));
    let key = addr.to_string();
    wait_until(30, "the follower's session to fail on the cursor", || {
        bbsync_node::follow::registry()
            .lock()
            .unwrap()
            .get(&key)
            .and_then(|s| s.last_error.clone())
            .is_some_and(|e| e.contains("does not advance the cursor (still"))
    })
    .await;
    assert_eq!(
        follower_store
            .raw_db()
            .cursor(&good_server_id(&server_peer))
            .unwrap(),
        Some(0),
        "the follower's cursor moved"
    );
    task.abort();
    client.stop();
    follower.stop();
    server.stop();
}

/// Chunks a source sends without being asked (hash-valid ones included)
/// and chunks sent twice are dropped before they reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_that_were_not_asked_for_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_store, good) = stores(tmp.path(), 20, false);
    let extra: Vec<(ChunkId, Vec<u8>)> = (0..3)
        .map(|i| {
            let b = noise(100 + i, 5000);
            (ChunkId::of(&b), b)
        })
        .collect();
    let sent_extra = Arc::new(AtomicBool::new(false));
    let (x, flag) = (extra.clone(), sent_extra.clone());
    let stuffing: Responder =
        Arc::new(
            move |store, peer, req| match server::answer(store, peer, req) {
                Response::Chunks {
                    mut chunks,
                    missing,
                } => {
                    if let Some(first) = chunks.first().cloned() {
                        chunks.push(first);
                    }
                    for (id, b) in &x {
                        chunks.push((*id, serde_bytes::ByteBuf::from(b.clone())));
                    }
                    flag.store(true, Ordering::SeqCst);
                    Response::Chunks { chunks, missing }
                }
                other => other,
            },
        );
    let server = Node::start_with_responder(server_store, stuffing).unwrap();
    let addr = listen(&server).await;
    let client = Node::start(good.clone()).unwrap();
    let (h, peer) = connect(&client, &addr).await;
    let report = clone_from(&h, good.clone(), &[peer], &CloneOptions::default())
        .await
        .unwrap();
    assert!(sent_extra.load(Ordering::SeqCst));
    assert!(report.complete, "{report:?}");
    assert!(report.chunks_dropped >= 4, "{report:?}");
    for (id, _) in &extra {
        assert!(
            !good.packs().contains(id),
            "an unrequested chunk was stored"
        );
    }
    assert!(good.verify(true, &NoProgress).unwrap().is_ok());
    let stray = good.packs().list().unwrap().len() as u64;
    assert_eq!(stray, good.referenced_chunks().unwrap().len() as u64);
    client.stop();
    server.stop();
}
