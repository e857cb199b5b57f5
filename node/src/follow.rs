//! Follow (standby): a node subscribes to an upstream and applies each
//! change as it happens. The subscription is a long poll
//! (`Request::Subscribe`): the upstream holds the request until its change
//! log moves, so a change arrives within one round trip, with no polling
//! interval.
//!
//! One cursor per upstream, kept in the store. It advances only after the
//! changes of a page are durably applied: manifests recorded, their chunks
//! published (`syncfs`), the objects marked complete. A page that fails
//! (connection lost, a chunk the upstream cannot deliver, a local error)
//! is fetched again from the same cursor after a reconnect with
//! exponential backoff and jitter. Manifests the store refuses (a bad
//! signature, an untrusted author) are a decision, not a failure: they are
//! logged and counted, and the cursor moves past them.
//!
//! Trust: the first `serve --follow` of an upstream that is in no trust
//! record trusts it as `full` (the operator's explicit act); a reconnect or
//! a restart never adds or raises trust. Without a `full` record the
//! follower stops following that upstream, and says why in `status` and
//! the log ([`Store::admit_upstream`]); it checks again before applying
//! each page. A follower that its upstream answers `Denied` waits at least
//! [`DENIED_COOLDOWN`] (the upstream refuses its re-dials until then).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bbsync_protocol::{
    Invite, InviteRefusal, ObjectId,
    wire::{MAX_PAGE, Request, Response},
};
use bbsync_store::{Store, StoreError, failpoint, live::LiveTree};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::Serialize;

use crate::{
    CloneOptions, CloneReport, NodeError, NodeHandle,
    clone::{ManifestRequests, blocking, check_page, fetch_listed, hello, out_of_protocol},
    gate::DENIED_COOLDOWN,
    instance_of, invite,
};

/// Knobs of a follower.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// How long the upstream may hold one subscription request.
    pub wait: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Chunk requests in flight.
    pub jobs: usize,
    /// The BBS tree to keep equal to the applied objects (`serve --tree`):
    /// each page is written into it before the cursor moves.
    pub tree: Option<Arc<LiveTree>>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            wait: Duration::from_secs(25),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            jobs: 8,
            tree: None,
        }
    }
}

/// Where the follower of one upstream is (serialized as the words `status`
/// and the admin API show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum UpstreamState {
    /// Dialing the upstream or saying hello.
    #[default]
    #[serde(rename = "connecting")]
    Connecting,
    /// Connected and applying the upstream's changes.
    #[serde(rename = "following")]
    Following,
    /// The last session failed (`last_error` says why); the next starts
    /// after a back-off.
    #[serde(rename = "waiting to reconnect")]
    WaitingToReconnect,
    /// Not followed any more (`last_error` says why).
    #[serde(rename = "stopped")]
    Stopped,
    /// No follower runs in this process: only the cursor kept in the
    /// store is known.
    #[serde(rename = "not running")]
    NotRunning,
}

/// What `status` shows of one upstream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamStatus {
    /// The address followed.
    pub addr: String,
    /// The upstream's instance id (hex).
    pub instance: String,
    /// Where its follower is.
    pub state: UpstreamState,
    /// The last change-log number of the upstream applied here.
    pub cursor: u64,
    /// The upstream's last change-log number, as last seen.
    pub upstream_seq: u64,
    /// Changes of the upstream not applied here yet.
    pub lag_changes: u64,
    /// For how long this node has been behind (0 when caught up).
    pub lag_secs: f64,
    /// Objects applied since the node started.
    pub applied: u64,
    /// Manifests refused (logged), since the node started.
    pub rejected: u64,
    /// The last error, if any: kept until the follower has applied a page
    /// or caught up since (a reconnect alone does not clear it).
    pub last_error: Option<String>,
    /// Sessions that ended in an error (and were retried) since the node
    /// started.
    pub failed_sessions: u64,
}

/// The followers of this process, by address (what `status` reads when it
/// runs inside `serve`).
pub fn registry() -> &'static Mutex<BTreeMap<String, UpstreamStatus>> {
    static R: OnceLock<Mutex<BTreeMap<String, UpstreamStatus>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The upstreams of this node as `status` and the admin API show them:
/// live from the followers when this process runs them, else the cursors
/// kept in the store (state `not running`).
pub fn upstreams(store: &Store) -> Result<Vec<serde_json::Value>, StoreError> {
    let live: Vec<UpstreamStatus> = registry()
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    if live.is_empty() {
        return Ok(store
            .follow_cursors()?
            .into_iter()
            .map(|(id, cursor)| {
                serde_json::json!({
                    "instance": id.to_hex(),
                    "state": UpstreamState::NotRunning,
                    "cursor": cursor,
                })
            })
            .collect());
    }
    Ok(live
        .iter()
        .map(|u| serde_json::to_value(u).unwrap_or_default())
        .collect())
}

fn update(addr: &str, f: impl FnOnce(&mut UpstreamStatus)) {
    let mut r = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(r.entry(addr.to_string()).or_default());
}

/// Why a session ended.
enum Ended {
    /// Try again after a backoff.
    Retry(NodeError),
    /// Do not follow this upstream any more (trust).
    Stop(String),
}

impl From<NodeError> for Ended {
    fn from(e: NodeError) -> Self {
        Ended::Retry(e)
    }
}

/// A trust refusal of the store becomes a stop; other errors a retry.
fn stop_on_refusal(e: NodeError) -> Ended {
    match e {
        NodeError::Store(StoreError::Trust(why)) => Ended::Stop(why),
        other => Ended::Retry(other),
    }
}

/// One upstream: where to dial it (tried in order), who it must be, and
/// the invite to redeem before the first follow, if it came as one.
struct Upstream {
    key: String,
    addrs: Vec<Multiaddr>,
    peer: PeerId,
    invite: Option<Invite>,
}

/// Follows `addr` (which must end in `/p2p/<PeerId>`: the upstream is
/// pinned by it) until the task is dropped, or until the upstream is not
/// trusted as `full` here (see the module docs): then it returns, with the
/// reason in `status` and the log.
pub async fn follow(node: NodeHandle, store: Arc<Store>, addr: Multiaddr, opts: FollowOptions) {
    let key = addr.to_string();
    let peer = match addr.iter().last() {
        Some(Protocol::P2p(p)) => p,
        _ => {
            update(&key, |s| {
                s.addr = key.clone();
                s.state = UpstreamState::Stopped;
                s.last_error = Some("the address must end in /p2p/<PeerId>".into());
            });
            return;
        }
    };
    let up = Upstream {
        key,
        addrs: vec![addr],
        peer,
        invite: None,
    };
    run(node, store, up, opts).await;
}

/// Follows the issuer of `invite`: like [`follow`], dialing the invite's
/// addresses in order, and redeeming the invite before the first follow
/// of that upstream (when this node holds no cursor for it yet; a
/// restart with the same invite does not redeem it again). A refused
/// invite stops the follower (`status` says why), except a rate limit or
/// a stale challenge, which are retried.
pub async fn follow_invite(
    node: NodeHandle,
    store: Arc<Store>,
    invite: Invite,
    opts: FollowOptions,
) {
    let addrs = match invite::invite_addrs(&invite) {
        Ok(a) => a,
        Err(e) => {
            let key = format!("invite {}", invite.id.short());
            update(&key, |s| {
                s.addr = key.clone();
                s.state = UpstreamState::Stopped;
                s.last_error = Some(e.to_string());
            });
            return;
        }
    };
    let peer = match addrs[0].iter().last() {
        Some(Protocol::P2p(p)) => p,
        _ => return,
    };
    let up = Upstream {
        key: addrs[0].to_string(),
        addrs,
        peer,
        invite: Some(invite),
    };
    run(node, store, up, opts).await;
}

async fn run(node: NodeHandle, store: Arc<Store>, up: Upstream, opts: FollowOptions) {
    let key = up.key.clone();
    let upstream = instance_of(&up.peer);
    update(&key, |s| {
        s.addr = key.clone();
        s.instance = upstream.map(|i| i.to_hex()).unwrap_or_default();
    });
    let mut backoff = opts.backoff_min;
    loop {
        update(&key, |s| s.state = UpstreamState::Connecting);
        let started = Instant::now();
        let mut established = false;
        let Err(ended) = session(&node, &store, &up, &opts, &key, &mut established).await;
        let err = match ended {
            Ended::Retry(e) => e,
            Ended::Stop(why) => {
                tracing::error!(upstream = %key, "follow: {why}");
                update(&key, |s| {
                    s.state = UpstreamState::Stopped;
                    s.last_error = Some(why);
                });
                return;
            }
        };
        // A session that was established (connected, hello answered, for
        // at least a second) or ran for a while was healthy: start backing
        // off anew. An upstream that restarts ends a healthy session, and
        // the standby should be back as soon as the upstream is: restarts a
        // few seconds apart used to double the delay each time (9 s after
        // the sixth, up to 45 s). An upstream that answers hello and drops
        // at once still backs off, so it cannot make the standby spin.
        let lasted = started.elapsed();
        if (established && lasted > Duration::from_secs(1)) || lasted > Duration::from_secs(10) {
            backoff = opts.backoff_min;
        }
        let mut delay = jittered(backoff);
        if matches!(err, NodeError::Denied { .. }) {
            // The upstream refuses this node's connections for a while
            // after a denial; knocking sooner only gets refused.
            delay = delay.max(DENIED_COOLDOWN + jittered(opts.backoff_min));
        }
        if let NodeError::InviteRefused {
            refusal: InviteRefusal::RateLimited { retry_after_secs },
            ..
        } = err
        {
            delay = delay.max(Duration::from_secs(u64::from(retry_after_secs)));
        }
        tracing::warn!(upstream = %key, "follow: {err}; reconnecting in {:.1}s", delay.as_secs_f64());
        update(&key, |s| {
            s.state = UpstreamState::WaitingToReconnect;
            s.last_error = Some(err.to_string());
            s.failed_sessions += 1;
        });
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jittered(d: Duration) -> Duration {
    use rand::Rng as _;
    d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// Dials the first of `addrs` that answers; the last error if none does.
async fn dial_first(node: &NodeHandle, addrs: &[Multiaddr]) -> Result<(), NodeError> {
    let mut last = None;
    for addr in addrs {
        let limit = node.dial_timeout(addr);
        match tokio::time::timeout(limit, node.dial(addr.clone())).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(NodeError::Dial {
                    peer: addr.to_string(),
                    reason: format!("no answer within {} s", limit.as_secs()),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| NodeError::BadAddress {
        addr: "-".into(),
        reason: "no address to dial".into(),
    }))
}

/// A refused invite stops the follower, unless trying again can help.
fn stop_on_invite_refusal(e: NodeError) -> Ended {
    match e {
        NodeError::InviteRefused {
            refusal:
                InviteRefusal::RateLimited { .. }
                | InviteRefusal::BadChallenge
                | InviteRefusal::Unavailable,
            ..
        } => Ended::Retry(e),
        NodeError::InviteRefused { .. } => Ended::Stop(format!(
            "{e}; not following it (ask its operator for a new invite)"
        )),
        other => Ended::Retry(other),
    }
}

/// The start of a follow session: the upstream dialled, its invite
/// redeemed if this node does not follow it yet, its card checked and the
/// upstream admitted (trusted as `full` on its first follow). Returns its
/// instance id.
async fn establish(
    node: &NodeHandle,
    store: &Arc<Store>,
    up: &Upstream,
    key: &str,
) -> Result<bbsync_protocol::InstanceId, Ended> {
    let peer = up.peer;
    let upstream = crate::node::instance_of_peer(&peer)?;
    dial_first(node, &up.addrs).await?;
    if let Some(inv) = &up.invite {
        let followed = {
            let store = store.clone();
            blocking(move || Ok(store.follow_cursor(&upstream)?.is_some())).await?
        };
        if !followed {
            let role = invite::redeem(node, store, inv)
                .await
                .map_err(stop_on_invite_refusal)?;
            tracing::warn!(upstream = %key, %role, "redeemed the invite: the upstream trusts this node");
        }
    }
    let (card, _) = hello(node, peer).await?;
    let added = {
        let store = store.clone();
        blocking(move || store.admit_upstream(&card))
            .await
            .map_err(stop_on_refusal)?
    };
    if added {
        tracing::warn!(upstream = %key, "trusting upstream {} as full (first follow of it)", upstream.short());
    }
    Ok(upstream)
}

/// Moves the upstream's cursor to `next` (durably), then, on a standby
/// with a live tree, the tree's marker.
async fn advance_cursor(
    store: &Arc<Store>,
    opts: &FollowOptions,
    upstream: bbsync_protocol::InstanceId,
    next: u64,
) -> Result<(), Ended> {
    let st = store.clone();
    blocking(move || {
        failpoint::check("follow.cursor", || "advancing the upstream cursor".into())?;
        st.set_follow_cursor(&upstream, next)
    })
    .await?;
    if let Some(tree) = opts.tree.as_ref().filter(|t| !t.is_primary()) {
        let tree = tree.clone();
        let marker = bbsync_store::live::Marker {
            format: 1,
            instance: store.instance_id().to_hex(),
            role: "standby".into(),
            upstream: Some(upstream.to_hex()),
            seq: next,
            updated_at_ms: bbsync_protocol::now_ms(),
        };
        blocking(move || tree.write_marker(&marker)).await?;
        bbsync_store::live::update_status(|s| s.applied_seq = next);
    }
    Ok(())
}

/// One connection's worth of following; it never ends well: the error
/// says why it ended (to retry, or to stop).
async fn session(
    node: &NodeHandle,
    store: &Arc<Store>,
    up: &Upstream,
    opts: &FollowOptions,
    key: &str,
    established: &mut bool,
) -> Result<std::convert::Infallible, Ended> {
    let peer = up.peer;
    let upstream = establish(node, store, up, key).await?;
    *established = true;
    let mut cursor = {
        let store = store.clone();
        blocking(move || Ok(store.follow_cursor(&upstream)?.unwrap_or(0))).await?
    };
    // A live tree is brought in line with the store once per process,
    // before the first page: a failure is retried as a failed page is.
    if let Some(tree) = opts.tree.as_ref().filter(|t| !t.is_reconciled()) {
        let (st, tree) = (store.clone(), tree.clone());
        let root = tree.root().display().to_string();
        let r = blocking(move || st.tree_reconcile(&tree)).await?;
        tracing::info!(
            written = r.written,
            removed = r.removed,
            unchanged = r.unchanged,
            adopted = r.adopted,
            conflicts = r.conflicts.len(),
            "the tree {root} is in line with the store"
        );
    }
    update(key, |s| {
        s.state = UpstreamState::Following;
        s.cursor = cursor;
    });
    tracing::info!(upstream = %key, cursor, "following");
    let mut behind_since: Option<Instant> = None;
    let mut conflicted: Vec<ObjectId> = Vec::new();
    let clone_opts = CloneOptions {
        jobs: opts.jobs,
        ..Default::default()
    };
    loop {
        let Response::Changes {
            changes,
            cursor: next,
            last_seq,
        } = node
            .request(
                peer,
                Request::Subscribe {
                    since: cursor,
                    limit: MAX_PAGE,
                    wait_ms: u32::try_from(opts.wait.as_millis()).unwrap_or(u32::MAX),
                },
            )
            .await?
        else {
            return Err(out_of_protocol(&peer, "Changes").into());
        };
        check_page(&peer, cursor, MAX_PAGE, &changes, next)?;
        // Trust may have changed since the last page: an upstream that is
        // not `full` here any more is not followed further.
        {
            let store = store.clone();
            blocking(move || store.check_upstream(&upstream))
                .await
                .map_err(stop_on_refusal)?;
        }
        let (applied, rejected) = if changes.is_empty() {
            (0, 0)
        } else {
            let ids: Vec<ObjectId> = changes.iter().map(|c| c.object_id).collect();
            apply(node, store, peer, upstream, ids, &clone_opts).await?
        };
        // The live tree follows the store before the cursor moves: a page
        // whose objects could not be written is applied again. Objects left
        // alone earlier (conflicts) are tried again with each page.
        if let Some(tree) = &opts.tree {
            let mut ids: Vec<ObjectId> = changes.iter().map(|c| c.object_id).collect();
            ids.extend(conflicted.iter().copied());
            let (store, tree) = (store.clone(), tree.clone());
            let rep = blocking(move || store.tree_apply(&tree, &ids)).await?;
            conflicted = rep.conflict_ids;
        }
        // Durably applied (or nothing to apply): only now the cursor moves.
        if next != cursor {
            advance_cursor(store, opts, upstream, next).await?;
            cursor = next;
        }
        let lag = last_seq.saturating_sub(cursor);
        let since = if lag == 0 {
            behind_since = None;
            0.0
        } else {
            behind_since
                .get_or_insert_with(Instant::now)
                .elapsed()
                .as_secs_f64()
        };
        update(key, |s| {
            // The last error stays until the follower applied a page or
            // caught up after it: a session that reconnects and fails on
            // the same change again must not look healthy in between.
            if lag == 0 || cursor > s.cursor {
                s.last_error = None;
            }
            s.cursor = cursor;
            s.upstream_seq = last_seq;
            s.lag_changes = lag;
            s.lag_secs = since;
            s.applied += applied;
            s.rejected += rejected;
        });
    }
}

/// Applies the objects of one change page: manifests (re-keyed by the
/// upstream), then their missing chunks, then completion. Errs unless every
/// recorded object ends complete. Returns (objects applied, manifests refused).
async fn apply(
    node: &NodeHandle,
    store: &Arc<Store>,
    peer: PeerId,
    upstream: bbsync_protocol::InstanceId,
    ids: Vec<ObjectId>,
    opts: &CloneOptions,
) -> Result<(u64, u64), NodeError> {
    let mut answers = ManifestRequests::new(node, peer, ids.clone(), 256);
    let mut recorded = Vec::new();
    let mut created = Vec::new();
    let mut rejected = 0;
    let mut replaced = 0;
    while let Some(answer) = answers.next().await {
        let (items, _) = answer?;
        let store = store.clone();
        let acc = blocking(move || {
            failpoint::check("follow.accept", || "recording received manifests".into())?;
            store.accept_manifests(&upstream, items)
        })
        .await?;
        for (what, why) in &acc.rejected {
            tracing::warn!(object = %what, "follow: refused: {why}");
        }
        rejected += acc.rejected.len() as u64;
        replaced += acc.replaced;
        recorded.extend(acc.recorded);
        created.extend(acc.created_at_ms);
    }
    // Chunks of every object of the page, not only the ones recorded now: a
    // page that failed before left its manifests recorded but incomplete.
    let mut report = CloneReport::default();
    let want = ids.clone();
    fetch_listed(
        node,
        store,
        &[peer],
        move |s: &Store| s.missing_chunks_of(&want),
        opts,
        &mut report,
    )
    .await?;
    let (_done, incomplete) = {
        let store = store.clone();
        let ids = ids.clone();
        blocking(move || {
            failpoint::check("follow.complete", || {
                "marking fetched objects complete".into()
            })?;
            let done = store.complete_ready_of(&ids)?;
            let incomplete = store.missing_chunks_of(&ids)?.len();
            Ok((done, incomplete))
        })
        .await?
    };
    if incomplete > 0 {
        return Err(NodeError::Request {
            peer: peer.to_string(),
            reason: format!("{incomplete} chunk(s) could not be fetched; the page is retried"),
        });
    }
    if replaced > 0 {
        // The old versions' chunks that nothing references any more go, as
        // after an import. Applied already: a failure here is only logged.
        let store = store.clone();
        if let Err(e) = blocking(move || store.gc()).await {
            tracing::warn!("follow: removing unreferenced chunks failed: {e}");
        }
    }
    let now = bbsync_protocol::now_ms();
    for (id, at) in recorded.iter().zip(&created) {
        tracing::info!(
            target: "bbsync::follow",
            object = %id.to_hex(),
            created_at_ms = at,
            applied_at_ms = now,
            "applied"
        );
    }
    Ok((recorded.len() as u64, rejected))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn upstream_states_serialize_as_the_words_status_shows() {
        for (state, word) in [
            (UpstreamState::Connecting, "connecting"),
            (UpstreamState::Following, "following"),
            (UpstreamState::WaitingToReconnect, "waiting to reconnect"),
            (UpstreamState::Stopped, "stopped"),
            (UpstreamState::NotRunning, "not running"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), word);
        }
    }
}
