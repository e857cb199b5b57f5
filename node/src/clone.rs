//! The clone driver: Hello (pin the source, check its card and
//! checkpoint) -> page through the changes -> manifests, re-keyed by the
//! source -> missing chunks, many requests in flight -> complete -> compare
//! the root with the checkpoint. Re-running it resumes: what is verified on
//! disk is not fetched again.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    Checkpoint, ChunkId, InstanceCard, Role, Unverified,
    wire::{MAX_CHUNK_IDS, Request, Response},
};
use bbsync_store::{Store, sync::StagedChunks};
use futures::{StreamExt, stream};
use libp2p::PeerId;
use serde::Serialize;

use crate::{NodeError, NodeHandle, instance_of};

/// Bytes asked for in one chunk request (at most).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Staged bytes made durable together.
const PUBLISH_EVERY: u64 = 128 * 1024 * 1024;

/// Knobs of a clone.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    /// Chunk requests in flight at once.
    pub jobs: usize,
    /// Object ids per manifest request.
    pub manifest_batch: usize,
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            jobs: 16,
            manifest_batch: 1024,
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
    /// Bytes fetched.
    pub bytes: u64,
    /// The root recomputed here equals the source's checkpoint.
    pub complete: bool,
    /// Objects in the source's checkpoint.
    pub checkpoint_count: u64,
    /// Wall time.
    #[serde(serialize_with = "bbsync_store::serialize_secs")]
    pub elapsed: Duration,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, bbsync_store::StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Request("local".into(), format!("store task failed: {e}")))?
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
            async move {
                let n = ids.len() as u64;
                let answer = node.request(peer, Request::GetChunks { ids }).await;
                let (chunks, missing) = match answer {
                    Ok(Response::Chunks { chunks, missing }) => (chunks, missing),
                    Ok(_) => return Err(out_of_protocol(&peer, "Chunks")),
                    Err(e) if !single => {
                        tracing::warn!(%peer, "chunk request failed, will ask another source: {e}");
                        return Ok((StagedChunks::default(), n, 0));
                    }
                    Err(e) => return Err(e),
                };
                let bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
                let chunks: Vec<(ChunkId, Vec<u8>)> =
                    chunks.into_iter().map(|(id, b)| (id, b.into_vec())).collect();
                let staged = blocking(move || store.stage_chunks(chunks)).await?;
                if !staged.rejected.is_empty() {
                    tracing::warn!(%peer, n = staged.rejected.len(), "chunks failed their hash check; not stored");
                }
                Ok::<_, NodeError>((staged, missing.len() as u64, bytes))
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    // Staged chunks become durable in groups of PUBLISH_EVERY bytes: each
    // publish costs two syncfs calls, and a crash loses at most one group.
    let mut pending = Vec::new();
    let mut pending_bytes = 0u64;
    let mut stored = 0;
    while let Some(r) = results.next().await {
        let (staged, unavailable, bytes) = match r {
            Ok(x) => x,
            Err(e) => {
                // What was fetched but not yet made durable is dropped
                // (a re-run fetches it again).
                store.chunks().discard(pending);
                return Err(e);
            }
        };
        report.chunks_reused += staged.present;
        report.chunks_rejected += staged.rejected.len() as u64;
        report.chunks_unavailable += unavailable;
        report.bytes += bytes;
        pending_bytes += staged.bytes;
        pending.extend(staged.staged);
        if pending_bytes >= PUBLISH_EVERY {
            let group = std::mem::take(&mut pending);
            pending_bytes = 0;
            let store = store.clone();
            stored += blocking(move || store.publish_chunks(group)).await?;
        }
    }
    if !pending.is_empty() {
        let store = store.clone();
        stored += blocking(move || store.publish_chunks(pending)).await?;
    }
    report.chunks_fetched += stored;
    Ok(stored)
}

fn out_of_protocol(peer: &PeerId, what: &str) -> NodeError {
    NodeError::Protocol(peer.to_string(), format!("expected {what}"))
}

/// Says hello to a source: its card must be the identity its peer id
/// names (then it is trusted as `full` here); returns its checkpoint.
async fn hello(
    node: &NodeHandle,
    store: &Arc<Store>,
    peer: PeerId,
) -> Result<bbsync_protocol::Signed<Checkpoint>, NodeError> {
    let source = instance_of(&peer)
        .ok_or_else(|| NodeError::BadAddress(peer.to_string(), "not an ed25519 peer id".into()))?;
    let Response::Hello { card, checkpoint } = node.request(peer, Request::Hello).await? else {
        return Err(out_of_protocol(&peer, "Hello"));
    };
    let card = Unverified::<InstanceCard>::decode(&card)
        .and_then(|u| u.verify_self_signed())
        .map_err(|e| NodeError::Check("source card".into(), e))?;
    if card.instance != source {
        return Err(NodeError::Protocol(
            peer.to_string(),
            "its card names another instance".into(),
        ));
    }
    let checkpoint = Unverified::<Checkpoint>::decode(&checkpoint)
        .and_then(|u| u.verify(|i| *i == source))
        .map_err(|e| NodeError::Check("source checkpoint".into(), e))?;
    let store = store.clone();
    blocking(move || store.trust_card(&card, Role::Full)).await?;
    Ok(checkpoint)
}

/// Clones everything the first of `sources` serves into `store`, fetching
/// chunks from every source that answers (each trusted as `full` here once
/// its card proves the identity its peer id names). A chunk that one source
/// fails to deliver, or delivers damaged, is asked of another.
pub async fn clone_from(
    node: &NodeHandle,
    store: Arc<Store>,
    sources: &[PeerId],
    opts: &CloneOptions,
) -> Result<CloneReport, NodeError> {
    let start = Instant::now();
    let Some(&peer) = sources.first() else {
        return Err(NodeError::BadAddress("-".into(), "no source given".into()));
    };
    let source = instance_of(&peer)
        .ok_or_else(|| NodeError::BadAddress(peer.to_string(), "not an ed25519 peer id".into()))?;
    // 1. Hello: the primary must answer; the others are extra chunk sources.
    let checkpoint = hello(node, &store, peer).await?;
    let mut chunk_sources = vec![peer];
    for &other in &sources[1..] {
        match hello(node, &store, other).await {
            Ok(_) => chunk_sources.push(other),
            Err(e) => tracing::warn!(peer = %other, "not used as a source: {e}"),
        }
    }
    let mut report = CloneReport {
        source: source.to_hex(),
        checkpoint_count: checkpoint.count,
        ..Default::default()
    };
    // 2. Changes, page by page, then their manifests.
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
                    limit: 4096,
                },
            )
            .await?
        else {
            return Err(out_of_protocol(&peer, "Changes"));
        };
        if changes.is_empty() {
            break;
        }
        cursor = next;
        for ids in changes.chunks(opts.manifest_batch) {
            let ids: Vec<_> = ids.iter().map(|c| c.object_id).collect();
            let Response::Manifests { items } =
                node.request(peer, Request::GetManifests { ids }).await?
            else {
                return Err(out_of_protocol(&peer, "Manifests"));
            };
            let store = store.clone();
            let accepted = blocking(move || store.accept_manifests(&source, items)).await?;
            report.objects += accepted.recorded.len() as u64;
            report.already += accepted.already;
            for (what, why) in &accepted.rejected {
                tracing::warn!(object = %what, "rejected: {why}");
            }
            report.rejected_manifests.extend(accepted.rejected);
        }
    }
    // 3. Missing chunks, many requests in flight, spread over the sources;
    //    each response is checked and staged as it arrives. What a source
    //    fails to deliver (error, missing, damaged) is asked of another in
    //    the next round, until every source was tried for it.
    let mut tried: HashMap<ChunkId, Vec<usize>> = HashMap::new();
    for round in 0..chunk_sources.len() {
        let missing = {
            let store = store.clone();
            blocking(move || store.missing_chunks()).await?
        };
        if missing.is_empty() {
            break;
        }
        let mut per_source: Vec<Vec<(ChunkId, u32)>> = vec![Vec::new(); chunk_sources.len()];
        for (j, (id, len)) in missing.into_iter().enumerate() {
            let n = chunk_sources.len();
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
        let per_source: Vec<Vec<Vec<ChunkId>>> =
            per_source.into_iter().map(size_bounded_batches).collect();
        let most = per_source.iter().map(Vec::len).max().unwrap_or(0);
        let mut batches: Vec<(usize, Vec<ChunkId>)> = Vec::new();
        for k in 0..most {
            for (s, list) in per_source.iter().enumerate() {
                if let Some(b) = list.get(k) {
                    batches.push((s, b.clone()));
                }
            }
        }
        fetch_round(node, &store, &chunk_sources, batches, opts, &mut report).await?;
    }
    // 4. Complete what is complete, then the proof.
    let (count, root) = {
        let store = store.clone();
        blocking(move || {
            store.complete_ready()?;
            store.root()
        })
        .await?
    };
    report.complete = count == checkpoint.count && root == checkpoint.root;
    report.elapsed = start.elapsed();
    Ok(report)
}
