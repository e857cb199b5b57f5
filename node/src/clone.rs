//! The clone driver: Hello (pin the source, check its card and
//! checkpoint) -> page through the changes -> manifests, re-keyed by the
//! source -> missing chunks, many requests in flight -> complete -> compare
//! the root with the checkpoint. Re-running it resumes: what is verified on
//! disk is not fetched again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    Checkpoint, ChunkId, InstanceCard, Role, Unverified,
    wire::{MAX_CHUNK_IDS, Request, Response},
};
use bbsync_store::Store;
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
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, bbsync_store::StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Request("local".into(), format!("store task failed: {e}")))?
        .map_err(NodeError::from)
}

fn out_of_protocol(peer: &PeerId, what: &str) -> NodeError {
    NodeError::Protocol(peer.to_string(), format!("expected {what}"))
}

/// Clones everything `peer` serves into `store`. The peer is trusted as
/// `full` here once its card proves the identity its peer id names.
pub async fn clone_from(
    node: &NodeHandle,
    store: Arc<Store>,
    peer: PeerId,
    opts: &CloneOptions,
) -> Result<CloneReport, NodeError> {
    let start = Instant::now();
    let source = instance_of(&peer)
        .ok_or_else(|| NodeError::BadAddress(peer.to_string(), "not an ed25519 peer id".into()))?;
    // 1. Hello: the card must be the pinned identity; trust it as full.
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
    {
        let store = store.clone();
        blocking(move || store.trust_card(&card, Role::Full)).await?;
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
    // 3. Missing chunks, many requests in flight; each batch is checked and
    //    stored as it arrives.
    let missing = {
        let store = store.clone();
        blocking(move || store.missing_chunks()).await?
    };
    // Requests of at most MAX_CHUNK_IDS chunks and about BATCH_BYTES, so
    // that the bytes in flight stay bounded (jobs x BATCH_BYTES).
    let mut batches: Vec<Vec<ChunkId>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0u64;
    for (id, len) in missing {
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
    let mut results = stream::iter(batches)
        .map(|ids| {
            let node = node.clone();
            let store = store.clone();
            async move {
                let Response::Chunks { chunks, missing } =
                    node.request(peer, Request::GetChunks { ids }).await?
                else {
                    return Err(out_of_protocol(&peer, "Chunks"));
                };
                let bytes: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
                let chunks: Vec<(ChunkId, Vec<u8>)> = chunks
                    .into_iter()
                    .map(|(id, b)| (id, b.into_vec()))
                    .collect();
                let staged = blocking(move || store.stage_chunks(chunks)).await?;
                Ok::<_, NodeError>((staged, missing.len() as u64, bytes))
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    // Staged chunks become durable in groups of PUBLISH_EVERY bytes: each
    // publish costs two syncfs calls, and a crash loses at most one group.
    let mut pending = Vec::new();
    let mut pending_bytes = 0u64;
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
            report.chunks_fetched += blocking(move || store.publish_chunks(group)).await?;
        }
    }
    if !pending.is_empty() {
        let store = store.clone();
        report.chunks_fetched += blocking(move || store.publish_chunks(pending)).await?;
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
