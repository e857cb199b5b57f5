//! `ls` and `status`.

use std::process::ExitCode;

use bbsync_store::summary::{ObjectFilter, state_word};
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

/// `bbsync ls`.
pub fn run(ctx: &Ctx, a: LsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let rows = store.list_objects(&ObjectFilter {
        kind: a.kind,
        name_contains: None,
        include_deleted: a.all,
    })?;
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
    let sum = store.summary()?;
    let upstreams = bbsync_node::follow::upstreams(&store)?;
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
                "instance_id": sum.instance_id,
                "name": sum.name,
                "schema_version": sum.schema_version,
                "seq": sum.seq,
                "objects": sum.objects,
                "objects_by_kind": sum.objects_by_kind,
                "deleted": sum.deleted,
                "incomplete": sum.incomplete,
                "plaintext_bytes": sum.plaintext_bytes,
                "referenced_bytes": sum.referenced_bytes,
                "chunks": sum.chunks,
                "chunk_bytes": sum.chunk_bytes,
                "packs": sum.packs,
                "pack_bytes": sum.pack_bytes,
                "trusted": sum.trusted,
                "identity_encrypted": sum.identity_encrypted,
                "restore_pins": sum.restore_pins,
                "upstreams": upstreams,
            }),
        )?;
    } else {
        outln!(ctx, "instance   {} ({})", store.instance_id(), sum.name);
        outln!(ctx, "data dir   {}", store.dir().display());
        if sum.identity_encrypted {
            outln!(ctx, "identity   identity.key sealed with a passphrase");
        }
        outln!(
            ctx,
            "objects    {} live ({}), {} deleted, {} incomplete",
            sum.objects,
            sum.objects_by_kind
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            sum.deleted,
            sum.incomplete
        );
        outln!(
            ctx,
            "content    {} plaintext in {} chunks ({}), {} pack files ({} on disk)",
            output::size(sum.plaintext_bytes),
            sum.chunks,
            output::size(sum.chunk_bytes),
            sum.packs,
            output::size(sum.pack_bytes)
        );
        outln!(ctx, "change log seq {}", sum.seq);
        outln!(ctx, "trusted    {} instance(s)", sum.trusted);
        if let Some(p) = &sum.restore_pins {
            let again = if p.snapshot.is_empty() {
                "run that restore again".to_string()
            } else {
                format!("`bbsync restore {} --repo {}`", p.snapshot, p.repo)
            };
            outln!(
                ctx,
                "restore    {} chunks pinned by a restore that is running or stopped before it finished: {again} finishes it without copying them again; `bbsync gc --drop-restore-pins` gives it up (otherwise the pins expire in {} h)",
                p.chunks,
                p.expires_in_secs.div_ceil(3600)
            );
        }
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
