//! `verify` and `gc`.

use std::process::ExitCode;

use serde_json::json;

use crate::{Ctx, output, progress::Bar};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Re-hash every chunk (otherwise only presence and length are checked).
    #[arg(long)]
    read_data: bool,
}

/// `bbsync verify`.
pub fn run(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let r = store.verify(a.read_data, &bar)?;
    super::close_at_exit(ctx, store)?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else {
        for p in r.problems.iter().take(output::MAX_LISTED) {
            outln!(
                ctx,
                "{:<22} {} {}{}",
                p.class.to_string(),
                p.object.as_deref().unwrap_or("-"),
                p.chunk
                    .as_deref()
                    .map(|c| format!("chunk {} ", &c[..16.min(c.len())]))
                    .unwrap_or_default(),
                p.detail
            );
        }
        output::more_listed(ctx, r.problems.len());
        if !ctx.quiet || !r.is_ok() {
            let what = output::checked(r.read_data, r.bytes_read, r.elapsed);
            let mut counts: Vec<_> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            counts.sort();
            let verdict = output::verdict(r.problems.len(), &counts);
            outln!(
                ctx,
                "verify: {} objects, {} chunks, {what}: {verdict}",
                r.objects,
                r.chunks
            );
        }
    }
    Ok(if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Arguments of `gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Also drop the pins of a restore that stopped, so that the chunks it
    /// copied are collected now (its rerun copies them again); without
    /// this, pins older than a day are dropped.
    #[arg(long)]
    drop_restore_pins: bool,
}

/// `bbsync gc`.
pub fn gc(ctx: &Ctx, a: GcArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let dropped = if a.drop_restore_pins {
        store.drop_restore_pins()?
    } else {
        None
    };
    let r = store.gc()?;
    if let Some(p) = &dropped
        && !ctx.json
        && !ctx.quiet
    {
        outln!(
            ctx,
            "gc: dropped the pins of a restore that stopped{} ({} chunks)",
            if p.snapshot.is_empty() {
                String::new()
            } else {
                format!(" (snapshot {} from {})", p.snapshot, p.repo)
            },
            p.ids.len()
        );
    }
    if ctx.json {
        output::json(
            ctx,
            &json!({
                "restore_pins_dropped": dropped.as_ref().map(|p| p.ids.len()),
                "removed_chunks": r.chunks_removed,
                "removed_bytes": r.bytes_removed,
                "packs_repacked": r.packs_repacked,
                "chunks_moved": r.chunks_moved,
                "packs_deleted": r.packs_deleted,
                "bytes_freed": r.bytes_freed,
            }),
        )?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "gc: dropped {} unreferenced chunks ({}); repacked {} packs ({} chunks moved), deleted {} packs ({} freed)",
            r.chunks_removed,
            output::size(r.bytes_removed),
            r.packs_repacked,
            r.chunks_moved,
            r.packs_deleted,
            output::size(r.bytes_freed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync repair-index`.
pub fn repair_index(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let (r, g) = store.repair_index(&bar)?;
    if ctx.json {
        output::json(ctx, &json!({ "rebuild": r, "gc": g }))?;
    } else {
        for s in r.skipped.iter().take(output::MAX_LISTED) {
            errln!(ctx, "left out: {s}");
        }
        if !ctx.quiet {
            outln!(
                ctx,
                "repair-index: {} packs read ({} through their trailer, {} walked), {} chunks indexed, {} unreferenced dropped, in {:.2}s",
                r.packs,
                r.sealed,
                r.walked,
                r.chunks,
                g.chunks_removed,
                r.elapsed.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync migrate`.
pub fn migrate(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !ctx.remote(),
        "migrate cannot run inside a serving node; stop `bbsync serve` first"
    );
    let pass = super::passphrase(ctx)?;
    let bar = Bar::new(ctx.progress);
    let r = bbsync_store::Store::migrate(&ctx.data_dir, pass.as_deref().map(String::as_str), &bar)
        .map_err(|e| {
            anyhow::Error::new(e).context(format!("migrating data dir {}", ctx.data_dir.display()))
        })?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else {
        for s in r.chunks_damaged.iter().take(output::MAX_LISTED) {
            errln!(ctx, "left out (damaged): {s}");
        }
        if !ctx.quiet {
            if r.from_schema >= bbsync_store::PACKS_SCHEMA && !r.removed_chunk_dir {
                outln!(
                    ctx,
                    "migrate: the data dir already uses pack files (schema {}); nothing to do",
                    r.from_schema
                );
            } else {
                outln!(
                    ctx,
                    "migrate: schema {} -> {}: {} chunks moved into packs ({}), {} already there, {} missing, {} damaged left out, {} unreferenced dropped, in {:.2}s",
                    r.from_schema,
                    r.to_schema,
                    r.chunks_moved,
                    output::size(r.bytes_moved),
                    r.chunks_already,
                    r.chunks_missing,
                    r.chunks_damaged.len(),
                    r.chunks_unreferenced,
                    r.elapsed.as_secs_f64()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
