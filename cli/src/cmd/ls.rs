//! `ls` and `status`.

use std::{collections::BTreeMap, process::ExitCode};

use bbsync_store::ObjectState;
use serde_json::json;

use crate::{Ctx, output};

/// Arguments of `ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only objects of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Include deleted objects (tombstones).
    #[arg(long)]
    all: bool,
}

fn state_word(st: &ObjectState) -> &'static str {
    if st.deleted {
        "deleted"
    } else if !st.complete {
        "incomplete"
    } else {
        "ok"
    }
}

/// `bbsync ls`.
pub fn run(ctx: &Ctx, a: LsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let mut rows = Vec::new();
    for r in store.db().objects() {
        let (id, st) = r?;
        if a.kind.as_ref().is_some_and(|k| *k != st.kind) || (st.deleted && !a.all) {
            continue;
        }
        rows.push((id, st));
    }
    rows.sort_by(|a, b| (&a.1.kind, &a.1.name).cmp(&(&b.1.kind, &b.1.name)));
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, st)| {
                json!({
                    "id": id.to_hex(),
                    "kind": st.kind,
                    "name": st.name,
                    "owner": st.owner,
                    "version": st.version,
                    "manifest_id": st.manifest_id.to_hex(),
                    "seq": st.seq,
                    "size": st.plaintext_len,
                    "stored": st.stored_len,
                    "chunks": st.chunks,
                    "state": state_word(st),
                })
            })
            .collect();
        output::json(ctx, &v)?;
    } else {
        outln!(
            ctx,
            "{:<16}  {:<11}  {:>4}  {:>10}  {:<10}  NAME",
            "ID",
            "KIND",
            "VER",
            "SIZE",
            "STATE"
        );
        for (id, st) in &rows {
            outln!(
                ctx,
                "{}  {:<11}  {:>4}  {:>10}  {:<10}  {}{}",
                id.short(),
                st.kind,
                st.version,
                output::size(st.plaintext_len),
                state_word(st),
                st.name,
                st.owner
                    .as_ref()
                    .map(|o| format!("  (owner {o})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync status`.
pub fn status(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let (mut objects, mut deleted, mut incomplete, mut plain, mut stored) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for r in store.db().objects() {
        let (_, st) = r?;
        if st.deleted {
            deleted += 1;
            continue;
        }
        objects += 1;
        if !st.complete {
            incomplete += 1;
        }
        plain += st.plaintext_len;
        stored += st.stored_len;
        *by_kind.entry(st.kind.clone()).or_default() += 1;
    }
    let (mut chunks, mut chunk_bytes) = (0u64, 0u64);
    for (_, len) in store.packs().list()? {
        chunks += 1;
        chunk_bytes += len;
    }
    let (mut packs, mut pack_bytes) = (0u64, 0u64);
    for (_, len) in store.packs().pack_files()?.into_iter().flatten() {
        packs += 1;
        pack_bytes += len;
    }
    let trusted = store.trust_list()?;
    let seq = store.db().last_seq()?;
    let card = store.card()?;
    // Upstreams: live from the followers when this runs inside `serve`,
    // else the cursors kept in the store.
    let live: Vec<bbsync_node::UpstreamStatus> = bbsync_node::follow::registry()
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    let upstreams: Vec<serde_json::Value> = if live.is_empty() {
        store
            .db()
            .cursors()?
            .into_iter()
            .map(|(id, cursor)| {
                json!({ "instance": id.to_hex(), "state": "not running", "cursor": cursor })
            })
            .collect()
    } else {
        live.iter()
            .map(|u| serde_json::to_value(u).unwrap_or_default())
            .collect()
    };
    // The live tree, when this runs inside a `serve` that keeps one.
    let live = bbsync_store::live::status()
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let live = live.tree.is_some().then_some(live);
    if ctx.json {
        output::json(
            ctx,
            &json!({
                "live": live,
                "data_dir": store.dir(),
                "instance_id": store.instance_id().to_hex(),
                "name": card.name,
                "schema_version": store.db().schema_version()?,
                "seq": seq,
                "objects": objects,
                "objects_by_kind": by_kind,
                "deleted": deleted,
                "incomplete": incomplete,
                "plaintext_bytes": plain,
                "referenced_bytes": stored,
                "chunks": chunks,
                "chunk_bytes": chunk_bytes,
                "packs": packs,
                "pack_bytes": pack_bytes,
                "trusted": trusted.len(),
                "identity_encrypted": store.identity_is_sealed()?,
                "upstreams": upstreams,
            }),
        )?;
    } else {
        outln!(ctx, "instance   {} ({})", store.instance_id(), card.name);
        outln!(ctx, "data dir   {}", store.dir().display());
        if store.identity_is_sealed()? {
            outln!(ctx, "identity   identity.key sealed with a passphrase");
        }
        outln!(
            ctx,
            "objects    {objects} live ({}), {deleted} deleted, {incomplete} incomplete",
            by_kind
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        outln!(
            ctx,
            "content    {} plaintext in {} chunks ({}), {} pack files ({} on disk)",
            output::size(plain),
            chunks,
            output::size(chunk_bytes),
            packs,
            output::size(pack_bytes)
        );
        outln!(ctx, "change log seq {seq}");
        outln!(ctx, "trusted    {} instance(s)", trusted.len());
        for u in &upstreams {
            let field = |k: &str| u.get(k).cloned().unwrap_or_default();
            let text = |k: &str| field(k).as_str().unwrap_or("").to_string();
            let mut line = format!(
                "upstream   {} {}: {}, cursor {}",
                text("addr"),
                &text("instance").get(..16).unwrap_or(""),
                text("state"),
                field("cursor")
            );
            if u.get("upstream_seq").is_some() {
                line.push_str(&format!(
                    ", behind by {} change(s) / {:.1}s, {} applied, {} refused",
                    field("lag_changes"),
                    field("lag_secs").as_f64().unwrap_or(0.0),
                    field("applied"),
                    field("rejected"),
                ));
            }
            if let Some(e) = u.get("last_error").and_then(|e| e.as_str()) {
                line.push_str(&format!(
                    "; last error ({} failed session(s)): {e}",
                    field("failed_sessions")
                ));
            }
            outln!(ctx, "{line}");
        }
        if let Some(l) = &live {
            let tree = l
                .tree
                .as_deref()
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let mut line = if l.role == "primary" {
                format!(
                    "tree       {tree} (primary, watched): {} import(s) since start, {} written from peers",
                    l.imports, l.written
                )
            } else {
                format!(
                    "tree       {tree} (standby): upstream change {} applied; {} written, {} removed since start",
                    l.applied_seq, l.written, l.removed
                )
            };
            if !l.held.is_empty() {
                line.push_str(&format!("; {} file(s) still being written", l.held.len()));
            }
            line.push_str(&format!("; {} conflict(s)", l.conflicts.len()));
            if let Some(e) = &l.last_error {
                line.push_str(&format!("; last error: {e}"));
            }
            outln!(ctx, "{line}");
            for (path, why) in l.conflicts.iter().take(output::MAX_LISTED) {
                outln!(ctx, "conflict   {path}: {why}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
