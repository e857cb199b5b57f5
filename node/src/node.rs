//! The swarm actor: one task owns the libp2p `Swarm`; everything else talks
//! to it through a [`NodeHandle`] (a bounded channel of commands, each with
//! a oneshot reply), as in the rust-libp2p file-sharing example. Inbound
//! requests are answered on tokio's blocking pool and the answer comes back
//! to the loop as a command, so store work never blocks the event loop.
//!
//! Bounded work per peer:
//! - at most [`MAX_REQUESTS_PER_PEER`] requests of one peer are worked on
//!   at once (a semaphore per peer; the others wait for a permit without a
//!   thread);
//! - a `Subscribe` (long poll) waits for the store's change notification
//!   asynchronously, holding its permit but no thread;
//! - a peer answered `Denied` loses its connections once the answer is
//!   sent, and its re-dials are refused for a while; connections of
//!   untrusted peers are capped ([`crate::gate`]).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bbsync_protocol::{
    InstanceId,
    wire::{MAX_WAIT_MS, Request, Response, SYNC_PROTOCOL},
};
use bbsync_store::{Store, StoreError};
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identity,
    multiaddr::Protocol,
    noise,
    request_response::{
        self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
    },
    swarm::{DialError, SwarmEvent},
    tcp, yamux,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::{
    NodeError,
    codec::{Inbound, SyncCodec},
    gate::Gate,
    invite::{self, Redemptions},
    onion, server,
};

/// Most connections accepted from others at once, and per peer; most
/// handshakes in progress. A node serves a few mirrors, not a crowd.
const MAX_INBOUND: u32 = 256;
const MAX_PER_PEER: u32 = 4;
const MAX_PENDING_INBOUND: u32 = 64;
/// How long the connections of a peer answered `Denied` stay open after the
/// answer went out, so that it arrives before the connection closes (a
/// close right away can overtake it). Its new connections are refused from
/// the denial on ([`crate::gate`]).
const DENIED_CLOSE_DELAY: Duration = Duration::from_secs(2);
/// Most requests of one peer worked on at once (over all its connections);
/// more wait for a permit (asynchronously, in arrival order). A clone
/// keeps 16 chunk and 4 manifest requests in flight by default.
pub const MAX_REQUESTS_PER_PEER: usize = 16;

/// The node's behaviours: the gate (who may stay connected), connection
/// limits, then the sync protocol.
#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    gate: Gate,
    limits: libp2p::connection_limits::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
}

type SyncEvent = request_response::Event<Inbound, Response>;

/// The instance id behind a peer id (`None` unless it is an ed25519 key).
pub fn instance_of(peer: &PeerId) -> Option<InstanceId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None; // not an identity multihash
    }
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(InstanceId(pk.try_into_ed25519().ok()?.to_bytes()))
}

/// [`instance_of`], or the error that a peer to talk to is not an ed25519
/// peer.
pub(crate) fn instance_of_peer(peer: &PeerId) -> Result<InstanceId, crate::NodeError> {
    instance_of(peer).ok_or_else(|| crate::NodeError::BadAddress {
        addr: peer.to_string(),
        reason: "not an ed25519 peer id".into(),
    })
}

/// The peer id of an instance.
pub fn peer_id_of(id: &InstanceId) -> Option<PeerId> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(id.as_bytes()).ok()?;
    Some(identity::PublicKey::from(ed).to_peer_id())
}

/// How a node answers inbound requests: given the store, the requester's
/// instance id (if its key is ed25519) and the request. [`server::answer`]
/// in production; tests inject faulty servers through
/// [`Node::start_with_responder`].
pub type Responder = Arc<dyn Fn(&Store, Option<InstanceId>, Request) -> Response + Send + Sync>;

enum Command {
    Listen(Multiaddr, oneshot::Sender<Result<Multiaddr, NodeError>>),
    Listeners(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<ConnectedPeer>>),
    Dial(Multiaddr, PeerId, oneshot::Sender<Result<(), NodeError>>),
    Request(
        PeerId,
        Request,
        oneshot::Sender<Result<Response, NodeError>>,
    ),
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
        peer: PeerId,
        request_id: InboundRequestId,
    },
    /// The peers of the trust table now (after a change in the store).
    Trusted(HashSet<PeerId>),
    /// Close the connections of a peer that was answered `Denied`.
    CloseDenied(PeerId),
}

/// Counters of a running node since it started (read by `/metrics`).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Requests of peers answered (anything but `Denied`).
    pub requests_served: AtomicU64,
    /// Requests of peers answered `Denied`.
    pub requests_denied: AtomicU64,
    /// Chunks sent to peers.
    pub chunks_sent: AtomicU64,
    /// Stored bytes of the chunks sent to peers.
    pub bytes_sent: AtomicU64,
    /// Chunks received from peers (before their checks).
    pub chunks_received: AtomicU64,
    /// Stored bytes of the chunks received from peers.
    pub bytes_received: AtomicU64,
}

/// A peer connected now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectedPeer {
    /// Its peer id.
    pub peer_id: String,
    /// Its instance id (hex), when its key is ed25519.
    pub instance: Option<String>,
    /// The remote address of its first connection.
    pub addr: String,
    /// `dialer` (this node dialed it) or `listener` (it dialed this node).
    pub role: &'static str,
    /// Open connections.
    pub connections: u32,
    /// When its first connection opened (Unix ms).
    pub since_ms: u64,
    /// When it last sent a request or an answer (Unix ms).
    pub last_seen_ms: u64,
}

/// A cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    stats: Arc<NodeStats>,
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    tor: bool,
    dial_budget: Duration,
}

/// How long a dial of an ordinary (TCP) address may take.
const TCP_DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// libp2p's own bound on a connection attempt, kept for TCP-only nodes.
const LIBP2P_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the retry budget, what a Tor dial's handshake may take.
const TOR_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Tor settings of a node (used only when built with the `tor` feature).
#[derive(Clone, Debug)]
pub struct TorOptions {
    /// arti's directories (state: onion service keys; cache) unless the
    /// config file names its own: `<data>/tor/`.
    pub dir: PathBuf,
    /// An arti configuration file (arti's TOML format); `None`: the public
    /// Tor network with arti's defaults.
    pub config_file: Option<PathBuf>,
    /// How long a dial of an onion address keeps retrying while the
    /// service cannot be reached (its descriptor not published yet).
    pub dial_budget: Duration,
}

impl TorOptions {
    /// The default dial retry budget.
    pub const DEFAULT_DIAL_BUDGET: Duration = Duration::from_secs(90);

    /// Options for a node whose data dir is `data_dir` (arti under `<data>/tor/`).
    pub fn for_data_dir(data_dir: &std::path::Path) -> Self {
        TorOptions {
            dir: data_dir.join("tor"),
            config_file: None,
            dial_budget: Self::DEFAULT_DIAL_BUDGET,
        }
    }
}

/// How to start a node.
#[derive(Clone)]
pub struct NodeOptions {
    /// Tor: `Some` to dial and serve onion addresses (needs the `tor`
    /// feature), `None` for a TCP-only node.
    pub tor: Option<TorOptions>,
    /// How inbound requests are answered ([`server::answer`] by default).
    pub responder: Responder,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            tor: None,
            responder: Arc::new(server::answer),
        }
    }
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("tor", &self.tor)
            .finish_non_exhaustive()
    }
}

/// Whether this build can use Tor (the `tor` feature).
pub const TOR_SUPPORTED: bool = cfg!(feature = "tor");

/// A running node: the handle and the task that owns the swarm.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// The peer ids of the instances in the trust table (any role). Only ids:
/// every request still checks the peer's trust record and card itself.
fn trusted_peers(store: &Store) -> Result<HashSet<PeerId>, StoreError> {
    Ok(store
        .trusted_ids()?
        .into_iter()
        .filter_map(|id| peer_id_of(&id))
        .collect())
}

/// Keeps the gate's view of the trust table current: reads it again after
/// every change the store announces (trust changes announce themselves).
async fn refresh_trusted(
    store: Arc<Store>,
    tx: mpsc::Sender<Command>,
    mut changes: watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || trusted_peers(&s)).await {
            Ok(Ok(peers)) => {
                if tx.send(Command::Trusted(peers)).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => tracing::warn!("reading the trust table: {e}"),
            Err(_) => return,
        }
    }
}

impl Node {
    /// Starts a node for `store` (its identity is the libp2p identity).
    pub fn start(store: Arc<Store>) -> Result<Node, NodeError> {
        Self::start_with_responder(store, Arc::new(server::answer))
    }

    /// Starts a node that answers requests with `responder`.
    pub fn start_with_responder(
        store: Arc<Store>,
        responder: Responder,
    ) -> Result<Node, NodeError> {
        Self::start_with(
            store,
            NodeOptions {
                responder,
                ..Default::default()
            },
        )
    }

    /// Starts a node with `opts` (Tor, responder). Must be called inside a
    /// tokio runtime.
    pub fn start_with(store: Arc<Store>, opts: NodeOptions) -> Result<Node, NodeError> {
        let NodeOptions { tor, responder } = opts;
        let mut secret = *store.identity().ed25519_secret();
        // `ed25519_from_bytes` zeroizes the copy it is given.
        let keypair = identity::Keypair::ed25519_from_bytes(&mut secret).map_err(|e| {
            NodeError::Identity {
                reason: e.to_string(),
            }
        })?;
        let peer_id = keypair.public().to_peer_id();
        // Watch first, then read: no trust change can fall in between.
        let changes = store.watch_changes();
        let trusted = trusted_peers(&store)?;
        let behaviour = Behaviour {
            gate: Gate::new(trusted),
            limits: libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(MAX_INBOUND))
                    .with_max_established_per_peer(Some(MAX_PER_PEER))
                    .with_max_pending_incoming(Some(MAX_PENDING_INBOUND)),
            ),
            sync: request_response::Behaviour::with_codec(
                SyncCodec,
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(120))
                    .with_max_concurrent_streams(128),
            ),
        };
        let dial_budget = tor
            .as_ref()
            .map_or(TorOptions::DEFAULT_DIAL_BUDGET, |t| t.dial_budget);
        let (other, tor) = other_transport(&keypair, tor)?;
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NodeError::Setup {
                what: "TCP transport",
                reason: e.to_string(),
            })?
            .with_other_transport(|_| other)
            .map_err(|e| NodeError::Setup {
                what: "Tor transport",
                reason: e.to_string(),
            })?
            .with_behaviour(|_| behaviour)
            .map_err(|e| NodeError::Setup {
                what: "libp2p behaviour",
                reason: e.to_string(),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            // libp2p bounds every connection attempt (10 s by default); an
            // onion dial may retry for its whole budget (each transport
            // bounds its own handshakes as well).
            .with_connection_timeout(if tor {
                dial_budget + TOR_HANDSHAKE_TIMEOUT
            } else {
                LIBP2P_CONNECTION_TIMEOUT
            })
            .build();
        let (tx, rx) = mpsc::channel(256);
        let stats = Arc::new(NodeStats::default());
        let handle = NodeHandle {
            stats: stats.clone(),
            tx: tx.clone(),
            peer_id,
            tor,
            dial_budget,
        };
        let (stop, stop_rx) = watch::channel(false);
        let refresher = tokio::spawn(refresh_trusted(store.clone(), tx.clone(), changes));
        let event_loop = EventLoop {
            swarm,
            rx,
            tx,
            store,
            responder,
            redemptions: Arc::new(Redemptions::default()),
            pending: HashMap::new(),
            listens: HashMap::new(),
            dials: HashMap::new(),
            permits: HashMap::new(),
            closing: HashSet::new(),
            stop: stop_rx,
            stats,
            peers: HashMap::new(),
        };
        let task = tokio::spawn(event_loop.run());
        Ok(Node {
            handle,
            task,
            refresher,
            stop,
        })
    }

    /// The handle.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node (open connections are dropped); requests still being
    /// answered, waiting subscriptions included, end at once.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        self.refresher.abort();
    }
}

/// The transport beside TCP: Tor (upgraded like TCP) when asked for and
/// built in, else one that supports no address. Also: whether Tor is on.
type OtherTransport =
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>;

#[cfg(feature = "tor")]
fn other_transport(
    keypair: &identity::Keypair,
    tor: Option<TorOptions>,
) -> Result<(OtherTransport, bool), NodeError> {
    use libp2p::core::Transport as _;
    let Some(t) = tor else {
        return Ok((
            libp2p::core::transport::dummy::DummyTransport::new().boxed(),
            false,
        ));
    };
    let client = crate::tor::client::create(t.config_file.as_deref(), &t.dir)
        .map_err(|e| NodeError::Tor(e.to_string()))?;
    let transport = crate::tor::upgraded(
        crate::tor::TorTransport::new(client, t.dial_budget),
        keypair,
        t.dial_budget + TOR_HANDSHAKE_TIMEOUT,
    )
    .map_err(|e| NodeError::Tor(e.to_string()))?;
    Ok((transport, true))
}

#[cfg(not(feature = "tor"))]
fn other_transport(
    _keypair: &identity::Keypair,
    _tor: Option<TorOptions>,
) -> Result<(OtherTransport, bool), NodeError> {
    use libp2p::core::Transport as _;
    Ok((
        libp2p::core::transport::dummy::DummyTransport::new().boxed(),
        false,
    ))
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// How long a dial of `addr` may take: the Tor retry budget plus a
    /// handshake for onion addresses, 30 s for others.
    pub fn dial_timeout(&self, addr: &Multiaddr) -> Duration {
        if onion::is_onion(addr) {
            self.dial_budget + TOR_HANDSHAKE_TIMEOUT
        } else {
            TCP_DIAL_TIMEOUT
        }
    }

    /// Checks that this node can dial `addr` (an onion address needs Tor).
    fn check_dialable(&self, addr: &Multiaddr) -> Result<(), NodeError> {
        let bad = |why: String| NodeError::BadAddress {
            addr: addr.to_string(),
            reason: why,
        };
        match onion::target(addr) {
            None if onion::is_onion(addr) => Err(bad(
                "an onion address is /onion3/<address>:<port>[/p2p/<PeerId>]".into(),
            )),
            None => Ok(()),
            Some(Err(e)) => Err(bad(e.to_string())),
            Some(Ok(_)) if !TOR_SUPPORTED => Err(bad(
                "this bbsync was built without Tor (cargo feature `tor`)".into(),
            )),
            Some(Ok(_)) if !self.tor => Err(bad("this node was started without Tor".into())),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Launches this node's onion service with virtual port `port`, waits
    /// until its descriptor is published and returns its address
    /// `/onion3/<56 chars>:<port>` (stable across restarts: the keys live
    /// in arti's state directory).
    pub async fn listen_onion(&self, port: u16) -> Result<Multiaddr, NodeError> {
        if !TOR_SUPPORTED {
            return Err(NodeError::Tor(
                "this bbsync was built without Tor (cargo feature `tor`)".into(),
            ));
        }
        if !self.tor {
            return Err(NodeError::Tor("this node was started without Tor".into()));
        }
        if port == 0 {
            return Err(NodeError::Listen {
                addr: "onion service".into(),
                reason: "the onion port must be 1-65535".into(),
            });
        }
        // Any 35 bytes stand for "this node's own onion address".
        self.listen(onion::multiaddr([0; 35], port))
            .await
            .map_err(|e| match e {
                NodeError::Listen { reason, .. } => NodeError::Listen {
                    addr: format!("an onion service (port {port})"),
                    reason,
                },
                other => other,
            })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Listens on `addr`; returns the first address it is reachable at.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, NodeError> {
        self.call(|r| Command::Listen(addr, r)).await?
    }

    /// The node's counters since it started.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<ConnectedPeer>, NodeError> {
        self.call(Command::Peers).await
    }

    /// Every address this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.call(Command::Listeners).await
    }

    /// Dials `addr`, which must end in `/p2p/<PeerId>`: the connection is
    /// refused unless the peer proves that identity (Noise). Returns it.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NodeError> {
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(p)) => p,
            _ => {
                return Err(NodeError::BadAddress {
                    addr: addr.to_string(),
                    reason: "it must end in /p2p/<PeerId>".into(),
                });
            }
        };
        self.check_dialable(&addr)?;
        self.call(|r| Command::Dial(addr, peer, r)).await??;
        Ok(peer)
    }

    /// Sends a request and waits for the answer. `Denied` and `Error`
    /// answers become errors.
    pub async fn request(&self, peer: PeerId, req: Request) -> Result<Response, NodeError> {
        match self.call(|r| Command::Request(peer, req, r)).await?? {
            Response::Denied => Err(NodeError::Denied {
                peer: peer.to_string(),
            }),
            Response::Error { message, .. } => Err(NodeError::Remote {
                peer: peer.to_string(),
                message,
            }),
            other => Ok(other),
        }
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Command>,
    store: Arc<Store>,
    responder: Responder,
    /// Invite challenges and rate limits (the issuer's side).
    redemptions: Arc<Redemptions>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NodeError>>>,
    listens: HashMap<
        libp2p::core::transport::ListenerId,
        (String, oneshot::Sender<Result<Multiaddr, NodeError>>),
    >,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NodeError>>>>,
    /// Per peer: the permits of its requests being worked on.
    permits: HashMap<PeerId, Arc<Semaphore>>,
    /// Inbound requests answered `Denied`: once the answer is sent (or
    /// fails), the peer's connections are closed.
    closing: HashSet<InboundRequestId>,
    /// Set when the node stops: requests in progress give up.
    stop: watch::Receiver<bool>,
    /// Counters shared with the handles.
    stats: Arc<NodeStats>,
    /// The peers connected now.
    peers: HashMap<PeerId, ConnectedPeer>,
}

/// Answers one inbound request: a `Subscribe` as a long poll on the
/// store's change notification, the invite exchange by [`invite::answer`]
/// (whatever the responder; it needs this node's challenges), anything
/// else by the responder, on the blocking pool.
async fn respond_to(
    store: Arc<Store>,
    responder: Responder,
    redemptions: Arc<Redemptions>,
    peer: Option<InstanceId>,
    request: Request,
) -> Response {
    match request {
        Request::Subscribe {
            since,
            limit,
            wait_ms,
        } => long_poll(store, responder, peer, since, limit, wait_ms).await,
        r if invite::is_invite_request(&r) => {
            tokio::task::spawn_blocking(move || invite::answer(&store, &redemptions, peer, r))
                .await
                .unwrap_or_else(|e| Response::Error {
                    code: bbsync_protocol::wire::ErrorCode::Internal,
                    message: format!("server task failed: {e}"),
                })
        }
        other => run_responder(store, responder, peer, other).await,
    }
}

async fn run_responder(
    store: Arc<Store>,
    responder: Responder,
    peer: Option<InstanceId>,
    request: Request,
) -> Response {
    tokio::task::spawn_blocking(move || responder(&store, peer, request))
        .await
        .unwrap_or_else(|e| Response::Error {
            code: bbsync_protocol::wire::ErrorCode::Internal,
            message: format!("server task failed: {e}"),
        })
}

/// A `Subscribe`: asks the responder at once; if the answer is an empty
/// page with the cursor where it was (nothing new), waits for the store's
/// next change (a commit, or a trust change: a peer removed meanwhile gets
/// `Denied`) and asks again, until `wait_ms` (at most [`MAX_WAIT_MS`])
/// pass. The wait is a future, not a thread.
async fn long_poll(
    store: Arc<Store>,
    responder: Responder,
    peer: Option<InstanceId>,
    since: u64,
    limit: u32,
    wait_ms: u32,
) -> Response {
    let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look: no change can slip in between.
    let mut changes = store.watch_changes();
    loop {
        let request = Request::Subscribe {
            since,
            limit,
            wait_ms,
        };
        let answer = run_responder(store.clone(), responder.clone(), peer, request).await;
        let nothing_new = matches!(
            &answer,
            Response::Changes { changes, cursor, .. } if changes.is_empty() && *cursor == since
        );
        if !nothing_new {
            return answer;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            // Time is up (or the store is gone): the empty page it is.
            Ok(Err(_)) | Err(_) => return answer,
        }
    }
}

impl EventLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Listen(addr, reply) => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.listens.insert(id, (addr.to_string(), reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(NodeError::Listen {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }));
                }
            },
            Command::Listeners(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Peers(reply) => {
                let mut v: Vec<ConnectedPeer> = self.peers.values().cloned().collect();
                v.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(v);
            }
            Command::Dial(addr, peer, reply) => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.dials.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Dial {
                            peer: addr.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::Request(peer, req, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, Inbound::Valid(req));
                self.pending.insert(id, reply);
            }
            Command::Respond {
                channel,
                response,
                peer,
                request_id,
            } => {
                let denied = matches!(response, Response::Denied);
                self.seen(&peer);
                if denied {
                    self.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.requests_served.fetch_add(1, Ordering::Relaxed);
                }
                if let Response::Chunks { chunks, .. } = &response {
                    let bytes: usize = chunks.iter().map(|(_, b)| b.len()).sum();
                    self.stats
                        .chunks_sent
                        .fetch_add(chunks.len() as u64, Ordering::Relaxed);
                    self.stats
                        .bytes_sent
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                }
                if denied {
                    // New connections of this peer are refused from now on;
                    // the ones it has are closed once the answer is out.
                    self.swarm.behaviour_mut().gate.denied(peer);
                    self.closing.insert(request_id);
                }
                if self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("a peer went away before its answer was sent");
                    if self.closing.remove(&request_id) {
                        self.close_denied(peer);
                    }
                }
            }
            Command::Trusted(peers) => self.swarm.behaviour_mut().gate.set_trusted(peers),
            Command::CloseDenied(peer) => self.close_denied(peer),
        }
    }

    /// Notes that `peer` was heard from now.
    fn seen(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.last_seen_ms = bbsync_protocol::now_ms();
        }
    }

    /// Closes every connection of a peer that was answered `Denied` (unless
    /// it became trusted meanwhile).
    fn close_denied(&mut self, peer: PeerId) {
        if self.swarm.behaviour().gate.is_trusted(&peer) || !self.swarm.is_connected(&peer) {
            return;
        }
        tracing::info!(%peer, "closed the connections of a denied peer");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Closes a denied peer's connections once its answer had time to arrive.
    fn close_denied_soon(&self, peer: PeerId) {
        let tx = self.tx.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let stopped = tokio::select! {
                () = tokio::time::sleep(DENIED_CLOSE_DELAY) => false,
                _ = stop.wait_for(|stopped| *stopped) => true,
            };
            if !stopped {
                let _ = tx.send(Command::CloseDenied(peer)).await;
            }
        });
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Gate(never)) => match never {},
            other => self.on_swarm(other),
        }
    }

    fn on_sync(&mut self, ev: SyncEvent) {
        match ev {
            request_response::Event::Message {
                peer,
                connection_id,
                message,
            } => match message {
                request_response::Message::Request {
                    request: Inbound::Malformed(reason),
                    ..
                } => {
                    // The answer channel is dropped (the stream closes
                    // without an answer) and the peer loses the connection;
                    // other connections are not affected.
                    tracing::warn!(%peer, "dropped the connection: {reason}");
                    self.swarm.close_connection(connection_id);
                }
                request_response::Message::Request {
                    request_id,
                    request: Inbound::Valid(request),
                    channel,
                } => {
                    let store = self.store.clone();
                    let responder = self.responder.clone();
                    let redemptions = self.redemptions.clone();
                    let tx = self.tx.clone();
                    let instance = instance_of(&peer);
                    let permits = self
                        .permits
                        .entry(peer)
                        .or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_PER_PEER)))
                        .clone();
                    let mut stop = self.stop.clone();
                    tokio::spawn(async move {
                        let work = async move {
                            // Waiting for a permit takes no thread.
                            let _permit = permits.acquire_owned().await.ok()?;
                            Some(respond_to(store, responder, redemptions, instance, request).await)
                        };
                        let response = tokio::select! {
                            r = work => r,
                            _ = stop.wait_for(|stopped| *stopped) => None,
                        };
                        if let Some(response) = response {
                            let _ = tx
                                .send(Command::Respond {
                                    channel,
                                    response,
                                    peer,
                                    request_id,
                                })
                                .await;
                        }
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.seen(&peer);
                    if let Response::Chunks { chunks, .. } = &response {
                        let bytes: usize = chunks.iter().map(|(_, b)| b.len()).sum();
                        self.stats
                            .chunks_received
                            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
                        self.stats
                            .bytes_received
                            .fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NodeError::Request {
                        peer: peer.to_string(),
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.closing.remove(&request_id) {
                    self.close_denied(peer);
                } else {
                    tracing::warn!(%peer, "dropped a request: {error}");
                }
            }
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => {
                if self.closing.remove(&request_id) {
                    self.close_denied_soon(peer);
                }
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                if let Some((_, reply)) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((addr, reply)) = self.listens.remove(&listener_id) {
                    let why = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = reply.send(Err(NodeError::Listen { addr, reason: why }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                let now = bbsync_protocol::now_ms();
                self.peers
                    .entry(peer_id)
                    .and_modify(|p| p.connections += 1)
                    .or_insert_with(|| ConnectedPeer {
                        peer_id: peer_id.to_string(),
                        instance: instance_of(&peer_id).map(|i| i.to_hex()),
                        addr: endpoint.get_remote_address().to_string(),
                        role: if endpoint.is_dialer() {
                            "dialer"
                        } else {
                            "listener"
                        },
                        connections: 1,
                        since_ms: now,
                        last_seen_ms: now,
                    });
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let why = match &error {
                    // Noise proved another identity at that address (a
                    // stale address, or a man in the middle): nothing was
                    // sent to it.
                    DialError::WrongPeerId { obtained, address } => format!(
                        "the node at {} proved another identity ({obtained}); nothing was sent to it",
                        address
                    ),
                    other => other.to_string(),
                };
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(NodeError::Dial {
                        peer: peer.to_string(),
                        reason: why.clone(),
                    }));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, "incoming connection failed: {error}");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, "disconnected");
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connections = num_established;
                }
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    // Requests still running keep their permits (Arc).
                    self.permits.remove(&peer_id);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A peer id that is not an ed25519 key (here a SHA-256 multihash, as
    /// an RSA peer's is) names no instance: clone, follow and hello refuse
    /// it as a bad address before any request.
    #[test]
    fn a_peer_that_is_not_an_ed25519_key_is_a_bad_address() {
        let sha = libp2p::multihash::Multihash::<64>::wrap(0x12, &[7u8; 32]).unwrap();
        let peer = PeerId::from_multihash(sha).unwrap();
        assert_eq!(instance_of(&peer), None);
        let e = instance_of_peer(&peer).unwrap_err();
        assert!(
            matches!(&e, crate::NodeError::BadAddress { reason, .. } if reason == "not an ed25519 peer id"),
            "{e}"
        );
        let kp = identity::Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let id = instance_of_peer(&peer).unwrap();
        assert_eq!(peer_id_of(&id), Some(peer));
    }
}
