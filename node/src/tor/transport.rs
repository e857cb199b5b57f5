//! A libp2p [`Transport`] over arti: dials `/onion3/<addr>:<port>` through
//! Tor, and listens as an arti onion service. It yields raw Tor streams;
//! the node upgrades them with Noise and yamux like TCP
//! ([`super::upgraded`]).
//!
//! Listening on `/onion3/<anything>:<port>` launches this node's onion
//! service (its address comes from the keys in arti's state directory, so
//! it is stable across restarts) and reports the real address once the
//! service is reachable, i.e. its descriptor is published.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arti_client::{DataStream, ErrorKind, HasKind as _, StreamPrefs, TorClient};
use futures::{FutureExt, StreamExt, channel::mpsc, future::BoxFuture};
use libp2p::{
    Multiaddr,
    core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent},
    multiaddr::Protocol,
};
use safelog::DisplayRedacted as _;
use tokio::time::Instant;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{
    HsNickname, RunningOnionService, StreamRequest, config::OnionServiceConfigBuilder,
    status::State,
};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

use super::{
    TorError,
    retry::{RetryPolicy, retry},
};
use crate::onion;

/// The nickname of the node's onion service in arti's key store.
const NICKNAME: &str = "bbsync";
/// Longest wait for a launched service to become reachable.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(180);
/// Without a sign of an upload from arti, the first test connection to
/// our own service is made after this long.
const PROBE_ANYWAY_AFTER: Duration = Duration::from_secs(10);
/// Pause after a failed test connection; doubled up to [`PROBE_PAUSE_MAX`].
const PROBE_PAUSE_MIN: Duration = Duration::from_secs(2);
const PROBE_PAUSE_MAX: Duration = Duration::from_secs(16);
/// One test connection's own deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

type Event = TransportEvent<BoxFuture<'static, Result<DataStream, TorError>>, TorError>;

/// Dials and listens through one arti client.
pub struct TorTransport {
    client: Arc<TorClient<PreferredRuntime>>,
    dial_budget: Duration,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    listeners: HashMap<ListenerId, tokio::task::AbortHandle>,
}

impl TorTransport {
    /// A transport over `client`; a dial retries for up to `dial_budget`
    /// while the onion service cannot be reached (e.g. its descriptor is
    /// not published yet).
    pub fn new(client: Arc<TorClient<PreferredRuntime>>, dial_budget: Duration) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded();
        TorTransport {
            client,
            dial_budget,
            events_tx,
            events_rx,
            listeners: HashMap::new(),
        }
    }
}

impl Drop for TorTransport {
    fn drop(&mut self) {
        // The onion service lives in its listener task: stop it with us.
        for h in self.listeners.values() {
            h.abort();
        }
    }
}

impl Transport for TorTransport {
    type Output = DataStream;
    type Error = TorError;
    type ListenerUpgrade = BoxFuture<'static, Result<DataStream, TorError>>;
    type Dial = BoxFuture<'static, Result<DataStream, TorError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let port = match addr.iter().collect::<Vec<_>>().as_slice() {
            [Protocol::Onion3(a)] if a.port() != 0 => a.port(),
            _ => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        if self.listeners.values().any(|h| !h.is_finished()) {
            return Err(TransportError::Other(TorError::Service(
                "this node already runs its onion service".into(),
            )));
        }
        let task = tokio::spawn(run_listener(
            self.client.clone(),
            id,
            port,
            self.events_tx.clone(),
        ));
        self.listeners.insert(id, task.abort_handle());
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.listeners.remove(&id) {
            Some(h) => {
                h.abort();
                let _ = self
                    .events_tx
                    .unbounded_send(TransportEvent::ListenerClosed {
                        listener_id: id,
                        reason: Ok(()),
                    });
                true
            }
            None => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let target = match onion::target(&addr) {
            None => return Err(TransportError::MultiaddrNotSupported(addr)),
            Some(Err(e)) => {
                return Err(TransportError::Other(TorError::Address(
                    addr.to_string(),
                    e,
                )));
            }
            Some(Ok(t)) => t,
        };
        let client = self.client.clone();
        let budget = self.dial_budget;
        Ok(dial_with_retry(client, target, budget).boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        match self.events_rx.poll_next_unpin(cx) {
            Poll::Ready(Some(ev)) => {
                if let TransportEvent::ListenerClosed { listener_id, .. } = &ev {
                    self.listeners.remove(listener_id);
                }
                Poll::Ready(ev)
            }
            // We hold a sender ourselves: the channel never ends.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Connects to `target` on [`RetryPolicy::onion`]'s schedule within
/// `budget`: right after a service starts (or restarts), its descriptor may
/// not be on the directories yet, or name introduction points it has not
/// re-established, and an attempt fails or hangs.
///
/// Every attempt runs in its own arti isolation group, so that it starts
/// from scratch: arti shares one connection task and one cached descriptor
/// per (service, isolation), and a later `connect` in the same group waits
/// for a task that is still pending (e.g. for a rendezvous that will never
/// come) or reuses a descriptor fetched while the service was down.
async fn dial_with_retry(
    client: Arc<TorClient<PreferredRuntime>>,
    target: onion::OnionTarget,
    budget: Duration,
) -> Result<DataStream, TorError> {
    let started = Instant::now();
    let policy = RetryPolicy::onion(budget);
    let host = Arc::new(target.host.clone());
    let port = target.port;
    let res = retry(&policy, |_| {
        let client = client.clone();
        let host = host.clone();
        async move {
            let mut prefs = StreamPrefs::new();
            prefs.new_isolation_group();
            client
                .connect_with_prefs((host.as_str(), port), &prefs)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    match res {
        Ok((stream, attempts)) => {
            if attempts > 1 {
                tracing::info!(
                    host = %target.host,
                    attempts,
                    "reached the onion service after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(stream)
        }
        Err(e) => Err(TorError::Unreachable {
            host: target.host,
            port,
            secs: e.elapsed.as_secs(),
            attempts: e.attempts,
            last: e.last,
        }),
    }
}

/// Launches the onion service, accepts streams for `port` from the start,
/// and reports its address once it is published.
async fn run_listener(
    client: Arc<TorClient<PreferredRuntime>>,
    id: ListenerId,
    port: u16,
    tx: mpsc::UnboundedSender<Event>,
) {
    if let Err(e) = serve_onion(&client, id, port, &tx).await {
        let _ = tx.unbounded_send(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Err(e),
        });
    }
}

async fn serve_onion(
    client: &TorClient<PreferredRuntime>,
    id: ListenerId,
    port: u16,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), TorError> {
    let svc_err = |e: &dyn std::fmt::Display| TorError::Service(e.to_string());
    client
        .bootstrap()
        .await
        .map_err(|e| TorError::Bootstrap(e.to_string()))?;
    let nickname: HsNickname = NICKNAME.parse().map_err(|e| svc_err(&e))?;
    let config = OnionServiceConfigBuilder::default()
        .nickname(nickname)
        .build()
        .map_err(|e| svc_err(&e))?;
    let (service, rend_requests) = client
        .launch_onion_service(config)
        .map_err(|e| svc_err(&e))?
        .ok_or_else(|| TorError::Service("the onion service is disabled".into()))?;
    let hsid = service
        .onion_address()
        .ok_or_else(|| TorError::Service("the onion service has no address".into()))?;
    let text = hsid.display_unredacted().to_string();
    let bytes = onion::decode(&text).map_err(|e| svc_err(&e))?;
    let addr = onion::multiaddr(bytes, port);
    tracing::info!(%addr, "onion service launched; waiting until it is published");

    // Streams are accepted from the start, not only after publication: a
    // client that holds the previous run's descriptor reaches us as soon as
    // arti has re-established the (persisted) introduction points, and the
    // reachability probe below needs its rendezvous handled. A rendezvous
    // request left unhandled until publication leaves that client waiting
    // for a rendezvous that never comes.
    let accepting = accept_streams(
        tor_hsservice::handle_rend_requests(rend_requests),
        id,
        port,
        addr.clone(),
        tx.clone(),
    );
    futures::pin_mut!(accepting);
    let started = Instant::now();
    let host = format!("{}.onion", onion::encode(&bytes));
    tokio::select! {
        res = wait_published(client, &service, &host, port) => res?,
        () = &mut accepting => return Ok(()),
    }
    tracing::info!(
        %addr,
        "onion service published after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = tx.unbounded_send(TransportEvent::NewAddress {
        listener_id: id,
        listen_addr: addr,
    });
    accepting.await;
    // The service lives as long as this task (dropped here).
    drop(service);
    Ok(())
}

/// Hands every stream for `port` to libp2p and refuses the others, until
/// the node is gone.
async fn accept_streams(
    streams: impl futures::Stream<Item = StreamRequest>,
    id: ListenerId,
    port: u16,
    addr: Multiaddr,
    tx: mpsc::UnboundedSender<Event>,
) {
    futures::pin_mut!(streams);
    while let Some(req) = streams.next().await {
        let wanted = matches!(req.request(), IncomingStreamRequest::Begin(b) if b.port() == port);
        if !wanted {
            // "Connection refused": also how the probe knows it reached us.
            tokio::spawn(async move {
                let _ = req
                    .reject(End::new_with_reason(EndReason::CONNECTREFUSED))
                    .await;
            });
            continue;
        }
        let ev = TransportEvent::Incoming {
            listener_id: id,
            upgrade: accept(req).boxed(),
            local_addr: addr.clone(),
            // Inbound Tor connections have no remote address.
            send_back_addr: Multiaddr::empty(),
        };
        if tx.unbounded_send(ev).is_err() {
            break;
        }
    }
}

/// Waits until the service is published: arti says it is fully reachable
/// (descriptors uploaded for both time periods), or a test connection to
/// our own address through Tor reaches us.
///
/// Why not arti's state alone: on a young network (no shared random value
/// yet, one time period) arti never says `Running`; it says
/// `DegradedUnreachable` once the descriptor is uploaded, and its
/// publisher reports `Bootstrapping` again whenever a new consensus
/// arrives within a minute of the last upload (its upload rate limit),
/// for up to a minute, even though the descriptor is on the directories.
/// A restart that met a new consensus in its first seconds therefore
/// waited 60-120 s for a quiet `DegradedUnreachable`. The probe asks the
/// network instead: it fetches the descriptor and introduces itself like
/// any client (in its own isolation group), and our service refuses the
/// probe's port, which proves the rendezvous worked.
async fn wait_published(
    client: &TorClient<PreferredRuntime>,
    service: &RunningOnionService,
    host: &str,
    port: u16,
) -> Result<(), TorError> {
    let started = Instant::now();
    let deadline = started + PUBLISH_TIMEOUT;
    let mut events = service.status_events();
    let mut seen: Option<State> = None;
    let mut next_probe: Option<Instant> = None;
    let mut probe_pause = PROBE_PAUSE_MIN;
    let mut last_probe: Option<String> = None;
    loop {
        let status = service.status();
        let state = status.state();
        let uploaded = state == State::DegradedUnreachable && status.current_problem().is_none();
        if seen != Some(state) {
            tracing::debug!(
                ?state,
                problem = ?status.current_problem(),
                "onion service state after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            // A (new) sign of an upload: probe now.
            if uploaded {
                next_probe = Some(Instant::now());
            }
            seen = Some(state);
        }
        if state.is_fully_reachable() {
            return Ok(());
        }
        let now = Instant::now();
        // arti's status is a watch: a short-lived state can be missed.
        // Without any sign of an upload for a while, probe anyway.
        if next_probe.is_none() && now >= started + PROBE_ANYWAY_AFTER {
            next_probe = Some(now);
        }
        if now >= deadline {
            return Err(TorError::Service(format!(
                "not published after {} s (state {state:?}, last problem: {}; last test connection: {})",
                started.elapsed().as_secs(),
                status
                    .current_problem()
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "none".into()),
                last_probe.as_deref().unwrap_or("none made")
            )));
        }
        if next_probe.is_some_and(|at| now >= at) {
            match probe(client, host, port, deadline - now).await {
                Ok(()) => {
                    let state = service.status().state();
                    if !state.is_fully_reachable() {
                        tracing::warn!(
                            "onion service: reachable through Tor (a test connection got \
                             through), but arti reports {state:?}: its descriptor is not on \
                             the directories of every time period (a young Tor network?); \
                             some clients may not reach it yet"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(
                        "onion service: test connection failed ({e}); next in {} s",
                        probe_pause.as_secs()
                    );
                    last_probe = Some(e);
                    next_probe = Some(Instant::now() + probe_pause);
                    probe_pause = (probe_pause * 2).min(PROBE_PAUSE_MAX);
                }
            }
            continue;
        }
        let wake = next_probe
            .unwrap_or(started + PROBE_ANYWAY_AFTER)
            .min(deadline);
        match tokio::time::timeout_at(wake, events.next()).await {
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => return Err(TorError::Service("the onion service stopped".into())),
        }
    }
}

/// One test connection to our own service (`host`), to a port it refuses.
async fn probe(
    client: &TorClient<PreferredRuntime>,
    host: &str,
    port: u16,
    left: Duration,
) -> Result<(), String> {
    let probe_port = if port == 1 { 2 } else { 1 };
    let limit = PROBE_TIMEOUT.min(left);
    let mut prefs = StreamPrefs::new();
    prefs.new_isolation_group();
    match tokio::time::timeout(limit, client.connect_with_prefs((host, probe_port), &prefs)).await {
        // Only the service itself answers a BEGIN on an onion circuit.
        Ok(Err(e)) if e.kind() == ErrorKind::RemoteConnectionRefused => Ok(()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

async fn accept(req: StreamRequest) -> Result<DataStream, TorError> {
    req.accept(Connected::new_empty())
        .await
        .map_err(|e| TorError::Service(format!("accepting a stream: {e}")))
}
