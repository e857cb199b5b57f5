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
    time::{Duration, Instant},
};

use arti_client::{DataStream, TorClient};
use futures::{FutureExt, StreamExt, channel::mpsc, future::BoxFuture};
use libp2p::{
    Multiaddr,
    core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent},
    multiaddr::Protocol,
};
use safelog::DisplayRedacted as _;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{HsNickname, StreamRequest, config::OnionServiceConfigBuilder};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

use super::TorError;
use crate::onion;

/// The nickname of the node's onion service in arti's key store.
const NICKNAME: &str = "bbsync";
/// Longest wait for a launched service to become reachable.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a service that published for one time period only waits
/// before it counts as published.
const ONE_PERIOD_GRACE: Duration = Duration::from_secs(5);
/// First pause between dial attempts; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

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

/// Connects to `target`, retrying with backoff (1 s doubling to 8 s) until
/// `budget` is spent: right after a service starts (or restarts), its
/// descriptor is not yet on the directories and a dial fails.
async fn dial_with_retry(
    client: Arc<TorClient<PreferredRuntime>>,
    target: onion::OnionTarget,
    budget: Duration,
) -> Result<DataStream, TorError> {
    let started = Instant::now();
    let mut pause = BACKOFF_MIN;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = budget.saturating_sub(started.elapsed());
        let attempt = tokio::time::timeout(
            left.max(Duration::from_secs(1)),
            client.connect((target.host.as_str(), target.port)),
        )
        .await;
        let err = match attempt {
            Ok(Ok(stream)) => {
                if attempts > 1 {
                    tracing::info!(
                        host = %target.host,
                        attempts,
                        "reached the onion service after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(stream);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        let elapsed = started.elapsed();
        if elapsed + pause >= budget {
            return Err(TorError::Unreachable {
                host: target.host.clone(),
                port: target.port,
                secs: elapsed.as_secs(),
                attempts,
                last: err,
            });
        }
        tracing::info!(
            host = %target.host,
            attempt = attempts,
            "onion service not reachable yet ({err}); retrying in {} s",
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// Launches the onion service, waits until it is reachable, reports its
/// address, then hands every accepted stream for `port` to libp2p.
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

    // Wait until the descriptor is published (Running / DegradedReachable).
    // A service that knows only one time period (a young test network
    // without shared random values) stays `DegradedUnreachable` with no
    // problem after its uploads; after a grace period that counts too,
    // with a warning.
    let started = Instant::now();
    let mut events = service.status_events();
    let mut status = service.status();
    let reachable = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let mut quiet_since: Option<Instant> = None;
        loop {
            let state = status.state();
            if state.is_fully_reachable() {
                return true;
            }
            let quiet = state == tor_hsservice::status::State::DegradedUnreachable
                && status.current_problem().is_none();
            match (quiet, quiet_since) {
                (true, Some(t)) if t.elapsed() >= ONE_PERIOD_GRACE => {
                    tracing::warn!(
                        "onion service: descriptor published for one time period only \
                         (a young Tor network?); some clients may not reach it yet"
                    );
                    return true;
                }
                (true, None) => quiet_since = Some(Instant::now()),
                (false, _) => quiet_since = None,
                _ => {}
            }
            let wait = match quiet_since {
                Some(t) => ONE_PERIOD_GRACE.saturating_sub(t.elapsed()),
                None => PUBLISH_TIMEOUT,
            };
            match tokio::time::timeout(wait, events.next()).await {
                Ok(Some(s)) => status = s,
                Ok(None) => return false,
                Err(_) => {} // re-check the grace period
            }
        }
    })
    .await
    .unwrap_or(false);
    let state = service.status().state();
    if !reachable {
        return Err(TorError::Service(format!(
            "not published after {} s (state {state:?}, last problem: {})",
            started.elapsed().as_secs(),
            service
                .status()
                .current_problem()
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "none".into())
        )));
    }
    tracing::info!(
        %addr,
        "onion service published after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = tx.unbounded_send(TransportEvent::NewAddress {
        listener_id: id,
        listen_addr: addr.clone(),
    });

    let mut streams = Box::pin(tor_hsservice::handle_rend_requests(rend_requests));
    while let Some(req) = streams.next().await {
        let wanted = matches!(req.request(), IncomingStreamRequest::Begin(b) if b.port() == port);
        if !wanted {
            tokio::spawn(async move {
                let _ = req.reject(End::new_with_reason(EndReason::DONE)).await;
            });
            continue;
        }
        let upgrade = accept(req).boxed();
        let ev = TransportEvent::Incoming {
            listener_id: id,
            upgrade,
            local_addr: addr.clone(),
            // Inbound Tor connections have no remote address.
            send_back_addr: Multiaddr::empty(),
        };
        if tx.unbounded_send(ev).is_err() {
            break;
        }
    }
    // The service lives as long as this task (dropped here).
    drop(service);
    Ok(())
}

async fn accept(req: StreamRequest) -> Result<DataStream, TorError> {
    req.accept(Connected::new_empty())
        .await
        .map_err(|e| TorError::Service(format!("accepting a stream: {e}")))
}
