//! The clone driver: Hello (pin the source, check its card and
//! checkpoint) -> page through the changes -> manifests, re-keyed by the
//! source -> missing chunks, many requests in flight -> complete -> compare
//! the root with the checkpoint. Re-running it resumes: what is verified on
//! disk is not fetched again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    Checkpoint, ChunkId, InstanceCard, ObjectId, Role, Signed, Unverified,
    wire::{MAX_CHUNK_IDS, Request, Response, WireChange},
};
use bbsync_store::{
    ObjectState, Store, failpoint,
    packs::Staged,
    progress::{NoProgress, Progress},
    sync::{Selection, Served, StagedChunks},
};
use futures::{StreamExt, stream, stream::BoxStream};
use libp2p::PeerId;
use serde::Serialize;

use crate::{NodeError, NodeHandle, node::instance_of_peer};

/// Bytes asked for in one chunk request (at most).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Manifest requests in flight at once.
const MANIFEST_REQUESTS_IN_FLIGHT: usize = 4;
/// Changes asked for per page.
const PAGE: u32 = 4096;
/// Staged bytes made durable together.
const PUBLISH_EVERY: u64 = 128 * 1024 * 1024;

/// Where progress of a clone goes (a bar in the CLI).
pub type ProgressSink = Arc<dyn Progress + Send + Sync>;

/// Knobs of a clone.
#[derive(Clone)]
pub struct CloneOptions {
    /// Chunk requests in flight at once.
    pub jobs: usize,
    /// Object ids per manifest request.
    pub manifest_batch: usize,
    /// Which objects to take (everything by default).
    pub selection: Selection,
    /// Progress of the manifest and chunk phases.
    pub progress: ProgressSink,
}

impl std::fmt::Debug for CloneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloneOptions")
            .field("jobs", &self.jobs)
            .field("manifest_batch", &self.manifest_batch)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            jobs: 16,
            manifest_batch: 256,
            selection: Selection::default(),
            progress: Arc::new(NoProgress),
        }
    }
}

/// What a clone did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CloneReport {
    /// The source's instance id.
    pub source: String,
    /// Objects recorded (new or newer versions).
    pub objects: u64,
    /// Manifests already held.
    pub already: u64,
    /// Manifests left out by `--skip-*` / `--only`.
    pub skipped: u64,
    /// Manifests refused, with the reason.
    pub rejected_manifests: Vec<(String, String)>,
    /// Chunks fetched and stored.
    pub chunks_fetched: u64,
    /// Chunks that were already on disk.
    pub chunks_reused: u64,
    /// Chunks that failed their hash check (never stored).
    pub chunks_rejected: u64,
    /// Chunks the source did not have.
    pub chunks_unavailable: u64,
    /// Chunks a source sent without being asked for them (or twice):
    /// dropped, never stored.
    pub chunks_dropped: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// A full clone: the root recomputed here over the objects the source
    /// listed equals the source's signed checkpoint. A partial clone
    /// (`--skip-*` / `--only`): every selected object is complete here.
    pub complete: bool,
    /// Whether a selection left objects out (then there is no root proof).
    pub partial: bool,
    /// Objects in the source's checkpoint.
    pub checkpoint_count: u64,
    /// Objects the source listed that are missing or incomplete here.
    pub lacking: u64,
    /// Wall time.
    #[serde(serialize_with = "bbsync_store::serialize_secs")]
    pub elapsed: Duration,
    /// Of which: hello, change pages and manifests (re-keyed by the source,
    /// checked and recorded here).
    #[serde(serialize_with = "bbsync_store::serialize_secs")]
    pub manifests_elapsed: Duration,
    /// Of which: fetching, checking and storing chunks.
    #[serde(serialize_with = "bbsync_store::serialize_secs")]
    pub chunks_elapsed: Duration,
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, bbsync_store::StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Request {
            peer: "local".into(),
            reason: format!("store task failed: {e}"),
        })?
        .map_err(NodeError::from)
}

/// Splits chunks into requests of at most MAX_CHUNK_IDS chunks and about
/// BATCH_BYTES, so that the bytes in flight stay bounded (jobs x BATCH_BYTES).
fn size_bounded_batches(chunks: Vec<(ChunkId, u32)>) -> Vec<Vec<ChunkId>> {
    let mut batches = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0u64;
    for (id, len) in chunks {
        if !cur.is_empty()
            && (cur.len() >= MAX_CHUNK_IDS || cur_bytes + u64::from(len) > BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(id);
        cur_bytes += u64::from(len);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Runs one round of chunk requests (batch -> source index), staging what
/// arrives and making it durable every PUBLISH_EVERY bytes. A failed request
/// only counts its chunks as unavailable when there are other sources to
/// try; with a single source it fails the clone. Returns chunks stored.
async fn fetch_round(
    node: &NodeHandle,
    store: &Arc<Store>,
    sources: &[PeerId],
    batches: Vec<(usize, Vec<ChunkId>)>,
    opts: &CloneOptions,
    report: &mut CloneReport,
) -> Result<u64, NodeError> {
    let single = sources.len() == 1;
    let mut results = stream::iter(batches)
        .map(|(s, ids)| {
            let node = node.clone();
            let store = store.clone();
            let peer = sources[s];
            let progress = opts.progress.clone();
            async move {
                let n = ids.len() as u64;
                let mut asked: HashSet<ChunkId> = ids.iter().copied().collect();
                let answer = node.request(peer, Request::GetChunks { ids }).await;
                let (chunks, missing) = match answer {
                    Ok(Response::Chunks { chunks, missing }) => (chunks, missing),
                    Ok(_) => return Err(out_of_protocol(&peer, "Chunks")),
                    Err(e) if !single => {
                        tracing::warn!(%peer, "chunk request failed, will ask another source: {e}");
                        return Ok((StagedChunks::default(), n, 0, 0));
                    }
                    Err(e) => return Err(e),
                };
                // Only chunks asked for, each once: anything else a source
                // sends (hash-valid or not) is dropped before the store
                // sees it.
                let sent = chunks.len();
                let chunks: Vec<(ChunkId, Vec<u8>)> = chunks
                    .into_iter()
                    .filter(|(id, _)| asked.remove(id))
                    .map(|(id, b)| (id, b.into_vec()))
                    .collect();
                let dropped = (sent - chunks.len()) as u64;
                if dropped > 0 {
                    tracing::warn!(%peer, n = dropped, "dropped chunks that were not asked for (or sent twice)");
                }
                let unavailable = missing.iter().filter(|m| asked.contains(m)).count() as u64;
                let bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
                progress.advance(chunks.len() as u64, bytes);
                let staged = blocking(move || store.stage_chunks(chunks)).await?;
                if !staged.rejected.is_empty() {
                    tracing::warn!(%peer, n = staged.rejected.len(), "chunks failed their hash check; not stored");
                }
                Ok::<_, NodeError>((staged, unavailable, bytes, dropped))
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    // Staged chunks become durable in groups of PUBLISH_EVERY bytes: each
    // publish costs two syncfs calls, and a crash loses at most one group.
    let mut pending = Vec::new();
    let mut pending_bytes = 0u64;
    let mut stored = 0;
    while let Some(r) = results.next().await {
        let (staged, unavailable, bytes, dropped) = match r {
            Ok(x) => x,
            Err(e) => {
                // What was fetched but not yet made durable is dropped
                // (a re-run fetches it again).
                store.packs().discard(pending);
                return Err(e);
            }
        };
        report.chunks_reused += staged.present;
        report.chunks_rejected += staged.rejected.len() as u64;
        report.chunks_unavailable += unavailable;
        report.chunks_dropped += dropped;
        report.bytes += bytes;
        pending_bytes += staged.bytes;
        pending.extend(staged.staged);
        if pending_bytes >= PUBLISH_EVERY {
            let group = std::mem::take(&mut pending);
            pending_bytes = 0;
            let store = store.clone();
            stored += blocking(move || publish(&store, group)).await?;
        }
    }
    if !pending.is_empty() {
        let store = store.clone();
        stored += blocking(move || publish(&store, pending)).await?;
    }
    report.chunks_fetched += stored;
    Ok(stored)
}

/// Makes a group of received chunks durable and visible (failpoint
/// `fetch.publish` first; what it refuses is discarded).
fn publish(store: &Store, group: Vec<Staged>) -> Result<u64, bbsync_store::StoreError> {
    if let Err(e) = failpoint::check("fetch.publish", || {
        format!("publishing {} received chunks", group.len())
    }) {
        store.packs().discard(group);
        return Err(e);
    }
    store.publish_chunks(group)
}

pub(crate) fn out_of_protocol(peer: &PeerId, what: &str) -> NodeError {
    NodeError::Protocol {
        peer: peer.to_string(),
        reason: format!("expected {what}"),
    }
}

/// Checks a page of changes asked for from `since` with `limit`: at most
/// `limit` changes, each after `since` and at most the page's `cursor`, in
/// increasing order, and a page with changes moves the cursor forward. A
/// source that breaks this (a cursor that does not advance) could keep a
/// clone paging, or a follower applying the same page, forever.
pub(crate) fn check_page(
    peer: &PeerId,
    since: u64,
    limit: u32,
    changes: &[WireChange],
    cursor: u64,
) -> Result<(), NodeError> {
    let bad = |why: String| {
        Err(NodeError::Protocol {
            peer: peer.to_string(),
            reason: why,
        })
    };
    if changes.len() > limit as usize {
        return bad(format!(
            "a page of {} changes, more than the {limit} asked for",
            changes.len()
        ));
    }
    if cursor < since {
        return bad(format!(
            "the change cursor went back from {since} to {cursor}"
        ));
    }
    if !changes.is_empty() && cursor == since {
        return bad(format!(
            "a page of changes that does not advance the cursor (still {since})"
        ));
    }
    let mut last = since;
    for c in changes {
        if c.seq <= last || c.seq > cursor {
            return bad(format!(
                "change {} is out of order or outside the page ({since}, {cursor}]",
                c.seq
            ));
        }
        last = c.seq;
    }
    Ok(())
}

/// Says hello to a source: its card must be the identity its peer id
/// names. Returns its verified card and checkpoint (trust is the caller's
/// decision: only an operator's explicit act adds it).
pub(crate) async fn hello(
    node: &NodeHandle,
    peer: PeerId,
) -> Result<(Signed<InstanceCard>, Signed<Checkpoint>), NodeError> {
    let source = instance_of_peer(&peer)?;
    let Response::Hello { card, checkpoint } = node.request(peer, Request::Hello).await? else {
        return Err(out_of_protocol(&peer, "Hello"));
    };
    let card = Unverified::<InstanceCard>::decode(&card)
        .and_then(|u| u.verify_self_signed())
        .map_err(|e| NodeError::Check {
            what: "source card",
            source: e,
        })?;
    if card.instance != source {
        return Err(NodeError::Protocol {
            peer: peer.to_string(),
            reason: "its card names another instance".into(),
        });
    }
    let checkpoint = Unverified::<Checkpoint>::decode(&checkpoint)
        .and_then(|u| u.verify(|i| *i == source))
        .map_err(|e| NodeError::Check {
            what: "source checkpoint",
            source: e,
        })?;
    Ok((card, checkpoint))
}

/// Manifest requests to one peer: `batch` ids per request, several in
/// flight, in order; the ids an answer defers (the server's size bound) are
/// asked for again after the others. Every deferring answer must serve at
/// least one manifest and defer only ids it was asked for, so the ids left
/// shrink with each round and the requests end.
pub(crate) struct ManifestRequests {
    node: NodeHandle,
    peer: PeerId,
    batch: usize,
    todo: Vec<ObjectId>,
    inflight: Option<Answers>,
}

/// Manifest answers in request order, each with the ids it was asked for.
type Answers = BoxStream<'static, (Vec<ObjectId>, Result<Response, NodeError>)>;

impl ManifestRequests {
    pub(crate) fn new(node: &NodeHandle, peer: PeerId, ids: Vec<ObjectId>, batch: usize) -> Self {
        ManifestRequests {
            node: node.clone(),
            peer,
            batch: batch.max(1),
            todo: ids,
            inflight: None,
        }
    }

    /// The next answer: its manifests and how many of the ids it was asked
    /// for it answered (not deferred); `None` when every id was answered.
    pub(crate) async fn next(&mut self) -> Option<Result<(Vec<Served>, u64), NodeError>> {
        loop {
            if self.inflight.is_none() {
                if self.todo.is_empty() {
                    return None;
                }
                let batches: Vec<Vec<ObjectId>> = std::mem::take(&mut self.todo)
                    .chunks(self.batch)
                    .map(<[ObjectId]>::to_vec)
                    .collect();
                let (node, peer) = (self.node.clone(), self.peer);
                self.inflight = Some(
                    stream::iter(batches)
                        .map(move |ids| {
                            let node = node.clone();
                            async move {
                                let r = node
                                    .request(peer, Request::GetManifests { ids: ids.clone() })
                                    .await;
                                (ids, r)
                            }
                        })
                        .buffered(MANIFEST_REQUESTS_IN_FLIGHT)
                        .boxed(),
                );
            }
            let next = self.inflight.as_mut()?.next().await;
            match next {
                None => self.inflight = None,
                Some((asked, answer)) => return Some(self.take(asked, answer)),
            }
        }
    }

    fn take(
        &mut self,
        asked: Vec<ObjectId>,
        answer: Result<Response, NodeError>,
    ) -> Result<(Vec<Served>, u64), NodeError> {
        let Response::Manifests { items, deferred } = answer? else {
            return Err(out_of_protocol(&self.peer, "Manifests"));
        };
        if !deferred.is_empty() {
            let asked_set: HashSet<&ObjectId> = asked.iter().collect();
            let mut once = HashSet::new();
            if items.is_empty()
                || deferred
                    .iter()
                    .any(|d| !asked_set.contains(d) || !once.insert(*d))
            {
                return Err(NodeError::Protocol {
                    peer: self.peer.to_string(),
                    reason:
                        "a manifest answer deferred ids it was not asked for, or served nothing"
                            .into(),
                });
            }
            self.todo.extend(deferred.iter().copied());
        }
        Ok((items, (asked.len() - deferred.len()) as u64))
    }
}

/// A page of manifests being committed, and how many ids it answered.
type Committing = (
    tokio::task::JoinHandle<Result<bbsync_store::sync::Accepted, NodeError>>,
    u64,
);

/// Waits for a page's commit and counts it into `report`; returns how many
/// objects it replaced.
async fn recorded(
    (task, n): Committing,
    report: &mut CloneReport,
    opts: &CloneOptions,
    start: Instant,
) -> Result<u64, NodeError> {
    let accepted = task.await.map_err(|e| NodeError::Request {
        peer: "local".into(),
        reason: format!("store task failed: {e}"),
    })??;
    report.objects += accepted.recorded.len() as u64;
    report.already += accepted.already;
    report.skipped += accepted.skipped;
    for (what, why) in &accepted.rejected {
        tracing::warn!(object = %what, "rejected: {why}");
    }
    report.rejected_manifests.extend(accepted.rejected);
    opts.progress.advance(n, 0);
    tracing::debug!(ms = start.elapsed().as_millis(), n, "manifests recorded");
    Ok(accepted.replaced)
}

/// Clones everything the first of `sources` serves into `store`, fetching
/// chunks from every source that answers. The first source (the one the
/// operator named) is trusted as `full` here once its card proves the
/// identity its peer id names; the others only serve chunks, which are
/// checked by id, and are not added to the trust table. A chunk that one
/// source fails to deliver, or delivers damaged, is asked of another.
/// Config objects are completed before the rest.
pub async fn clone_from(
    node: &NodeHandle,
    store: Arc<Store>,
    sources: &[PeerId],
    opts: &CloneOptions,
) -> Result<CloneReport, NodeError> {
    let start = Instant::now();
    let Some(&peer) = sources.first() else {
        return Err(NodeError::BadAddress {
            addr: "-".into(),
            reason: "no source given".into(),
        });
    };
    let source = instance_of_peer(&peer)?;
    // 1. Hello: the primary must answer, and is trusted (the operator named
    //    it); the others are extra chunk sources, not trusted.
    let (card, checkpoint) = hello(node, peer).await?;
    {
        let store = store.clone();
        blocking(move || store.trust_card(&card, Role::Full)).await?;
    }
    tracing::debug!(ms = start.elapsed().as_millis(), "hello");
    let chunk_sources = extra_sources(node, peer, &sources[1..]).await;
    let mut report = CloneReport {
        source: source.to_hex(),
        checkpoint_count: checkpoint.count,
        partial: !opts.selection.is_all(),
        ..Default::default()
    };
    // 2. Changes, page by page, then their manifests.
    opts.progress.start("objects", checkpoint.count, 0);
    let (listed, replaced) =
        record_changes(node, &store, peer, source, opts, &mut report, start).await?;
    opts.progress.finish();
    report.manifests_elapsed = start.elapsed();
    // 3. Missing chunks: config first (so a mirror can be configured while
    //    the bulk arrives), then everything else.
    let selection = opts.selection.clone();
    let config_first = |st: &ObjectState| !st.complete && st.kind == "config";
    fetch_chunks(
        node,
        &store,
        &chunk_sources,
        &config_first,
        opts,
        &mut report,
    )
    .await?;
    let all = move |st: &ObjectState| !st.complete && selection.matches(&st.kind, &st.name);
    fetch_chunks(node, &store, &chunk_sources, &all, opts, &mut report).await?;
    report.chunks_elapsed = start.elapsed() - report.manifests_elapsed;
    if replaced > 0 {
        // Older versions replaced here leave chunks nothing references.
        let store = store.clone();
        let gc = blocking(move || {
            failpoint::check("clone.gc", || "collecting unreferenced chunks".into())?;
            store.gc()
        });
        if let Err(e) = gc.await {
            tracing::warn!("clone: removing unreferenced chunks failed: {e}");
        }
    }
    // 4. The proof: the root over the objects the source listed, as held
    //    here, must be the root the source signed.
    prove(&store, listed, &checkpoint, opts, &mut report).await?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Step 2 of [`clone_from`]: the source's changes, page by page, and
/// their manifests, checked and recorded. Returns the objects the source
/// listed and how many older versions here were replaced.
async fn record_changes(
    node: &NodeHandle,
    store: &Arc<Store>,
    peer: PeerId,
    source: bbsync_protocol::InstanceId,
    opts: &CloneOptions,
    report: &mut CloneReport,
    start: Instant,
) -> Result<(HashSet<bbsync_protocol::ObjectId>, u64), NodeError> {
    let mut listed: HashSet<bbsync_protocol::ObjectId> = HashSet::new();
    let mut replaced = 0u64;
    let mut cursor = 0;
    loop {
        let Response::Changes {
            changes,
            cursor: next,
            ..
        } = node
            .request(
                peer,
                Request::Changes {
                    since: cursor,
                    limit: PAGE,
                },
            )
            .await?
        else {
            return Err(out_of_protocol(&peer, "Changes"));
        };
        check_page(&peer, cursor, PAGE, &changes, next)?;
        if changes.is_empty() {
            break;
        }
        // A short page is the end of the source's log (a source fills its
        // pages while it has changes).
        let last_page = changes.len() < PAGE as usize;
        cursor = next;
        tracing::debug!(
            ms = start.elapsed().as_millis(),
            n = changes.len(),
            "change page"
        );
        listed.extend(changes.iter().map(|c| c.object_id));
        // Several manifest requests in flight: the source re-keys the next
        // batches (on its other cores) while this side checks one.
        let ids = changes.iter().map(|c| c.object_id).collect();
        // Each answer is checked (signatures, entries: all cores, nothing
        // read of the objects held) while the one before is committed.
        let mut answers = ManifestRequests::new(node, peer, ids, opts.manifest_batch);
        let mut committing: Option<Committing> = None;
        while let Some(answer) = answers.next().await {
            let (items, n) = answer?;
            let checked = {
                let store = store.clone();
                blocking(move || Ok(store.check_served(&source, items))).await?
            };
            if let Some(c) = committing.take() {
                replaced += recorded(c, report, opts, start).await?;
            }
            let store = store.clone();
            let selection = opts.selection.clone();
            committing = Some((
                tokio::spawn(blocking(move || {
                    failpoint::check("clone.accept", || "recording received manifests".into())?;
                    store.accept_checked(&source, checked, &selection)
                })),
                n,
            ));
        }
        if let Some(c) = committing.take() {
            replaced += recorded(c, report, opts, start).await?;
        }
        if last_page {
            break;
        }
    }
    Ok((listed, replaced))
}

/// Step 4 of [`clone_from`]: whether the copy is complete. A whole clone
/// must hold every object the source `listed`, and their root must be the
/// one the source signed in its `checkpoint`; a partial one must hold every
/// selected object's chunks.
async fn prove(
    store: &Arc<Store>,
    listed: HashSet<bbsync_protocol::ObjectId>,
    checkpoint: &Checkpoint,
    opts: &CloneOptions,
    report: &mut CloneReport,
) -> Result<(), NodeError> {
    let (count, root, lacking) = {
        let store = store.clone();
        blocking(move || store.root_of(&listed)).await?
    };
    report.lacking = lacking;
    report.complete = if report.partial {
        // No proof for a partial copy; every selected object must be here.
        let store = store.clone();
        let selection = opts.selection.clone();
        blocking(move || {
            Ok(store
                .missing_chunks_where(|st| selection.matches(&st.kind, &st.name))?
                .is_empty())
        })
        .await?
    } else {
        lacking == 0 && count == checkpoint.count && root == checkpoint.root
    };
    Ok(())
}

/// Hellos the extra sources (their cards must prove their peer ids; they
/// are not trusted here); returns `first` followed by those that answered.
async fn extra_sources(node: &NodeHandle, first: PeerId, others: &[PeerId]) -> Vec<PeerId> {
    let mut out = vec![first];
    for &other in others {
        match hello(node, other).await {
            Ok(_) => out.push(other),
            Err(e) => tracing::warn!(peer = %other, "not used as a source: {e}"),
        }
    }
    out
}

/// Fetches the missing chunks of the incomplete objects `keep` takes, many
/// requests in flight, spread over `sources`; each response is checked and
/// staged as it arrives. What a source fails to deliver (error, missing,
/// damaged) is asked of another in the next round, until every source was
/// tried for it. Then marks complete what is complete.
async fn fetch_chunks<K>(
    node: &NodeHandle,
    store: &Arc<Store>,
    sources: &[PeerId],
    keep: &K,
    opts: &CloneOptions,
    report: &mut CloneReport,
) -> Result<(), NodeError>
where
    K: Fn(&ObjectState) -> bool + Clone + Send + 'static,
{
    let keep = keep.clone();
    fetch_listed(
        node,
        store,
        sources,
        move |s: &Store| s.missing_chunks_where(keep.clone()),
        opts,
        report,
    )
    .await?;
    let store = store.clone();
    blocking(move || {
        failpoint::check("clone.complete", || {
            "marking fetched objects complete".into()
        })?;
        store.complete_ready()
    })
    .await?;
    Ok(())
}

/// The rounds of [`fetch_chunks`] for the chunks `list` names (it is asked
/// again before each round); completing objects is the caller's.
pub(crate) async fn fetch_listed<L>(
    node: &NodeHandle,
    store: &Arc<Store>,
    sources: &[PeerId],
    list: L,
    opts: &CloneOptions,
    report: &mut CloneReport,
) -> Result<(), NodeError>
where
    L: Fn(&Store) -> Result<Vec<(ChunkId, u32)>, bbsync_store::StoreError> + Clone + Send + 'static,
{
    // The sources each chunk was asked of, for the later rounds (none with
    // one source: there is one round; 200,000 chunks' entries took 21 MB).
    let mut tried: HashMap<ChunkId, Vec<usize>> = HashMap::new();
    let rounds = sources.len();
    for round in 0..rounds {
        let missing = {
            let store = store.clone();
            let list = list.clone();
            blocking(move || list(&store)).await?
        };
        if missing.is_empty() {
            break;
        }
        let total: u64 = missing.iter().map(|(_, l)| u64::from(*l)).sum();
        opts.progress.start("chunks", missing.len() as u64, total);
        let mut per_source: Vec<Vec<(ChunkId, u32)>> = vec![Vec::new(); sources.len()];
        let n = sources.len();
        for (j, (id, len)) in missing.into_iter().enumerate() {
            if rounds == 1 {
                per_source[0].push((id, len));
                continue;
            }
            let seen = tried.entry(id).or_default();
            // Round 0 spreads batches over the sources; later rounds take the
            // first source not tried for this chunk.
            let first = if round == 0 {
                (j / MAX_CHUNK_IDS) % n
            } else {
                0
            };
            let Some(s) = (0..n).map(|k| (first + k) % n).find(|s| !seen.contains(s)) else {
                continue;
            };
            seen.push(s);
            per_source[s].push((id, len));
        }
        // Interleave the sources' batches so that all of them work at once.
        let mut per_source: Vec<std::vec::IntoIter<Vec<ChunkId>>> = per_source
            .into_iter()
            .map(|l| size_bounded_batches(l).into_iter())
            .collect();
        let mut batches: Vec<(usize, Vec<ChunkId>)> = Vec::new();
        loop {
            let before = batches.len();
            for (s, list) in per_source.iter_mut().enumerate() {
                if let Some(b) = list.next() {
                    batches.push((s, b));
                }
            }
            if batches.len() == before {
                break;
            }
        }
        let r = fetch_round(node, store, sources, batches, opts, report).await;
        opts.progress.finish();
        r?;
    }
    Ok(())
}

/// What [`fetch_missing`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FetchReport {
    /// Sources that answered.
    pub sources: u64,
    /// Chunks fetched and stored.
    pub chunks_fetched: u64,
    /// Chunks that failed their hash check (never stored).
    pub chunks_rejected: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Objects that became complete.
    pub objects_completed: u64,
    /// Chunks still missing afterwards.
    pub still_missing: u64,
    /// Wall time.
    #[serde(serialize_with = "bbsync_store::serialize_secs")]
    pub elapsed: Duration,
}

/// Fetches the chunks that local manifests reference and the disk lacks
/// (after `restore --skip-chunks`, or an interrupted clone) from `sources`,
/// whose cards must prove their peer ids; trust is not changed.
pub async fn fetch_missing(
    node: &NodeHandle,
    store: Arc<Store>,
    sources: &[PeerId],
    opts: &CloneOptions,
) -> Result<FetchReport, NodeError> {
    let start = Instant::now();
    let before = {
        let store = store.clone();
        blocking(move || store.incomplete_count()).await?
    };
    let mut answered = Vec::new();
    for &peer in sources {
        match hello(node, peer).await {
            Ok(_) => answered.push(peer),
            Err(e) if sources.len() == 1 => return Err(e),
            Err(e) => tracing::warn!(%peer, "not used as a source: {e}"),
        }
    }
    if answered.is_empty() {
        return Err(NodeError::Request {
            peer: "every source".into(),
            reason: "none of the sources answered".into(),
        });
    }
    let mut report = CloneReport::default();
    // Complete objects too: a chunk file of one may have been lost.
    let all = |_: &ObjectState| true;
    fetch_chunks(node, &store, &answered, &all, opts, &mut report).await?;
    let (after, still) = {
        let store = store.clone();
        blocking(move || {
            Ok((
                store.incomplete_count()?,
                store.missing_chunks_where(|_| true)?.len() as u64,
            ))
        })
        .await?
    };
    Ok(FetchReport {
        sources: answered.len() as u64,
        chunks_fetched: report.chunks_fetched,
        chunks_rejected: report.chunks_rejected,
        bytes: report.bytes,
        objects_completed: before.saturating_sub(after),
        still_missing: still,
        elapsed: start.elapsed(),
    })
}
