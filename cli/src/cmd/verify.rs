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

/// `bbsync gc`.
pub fn gc(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let (files, bytes) = store.gc()?;
    if ctx.json {
        output::json(
            ctx,
            &json!({ "removed_chunks": files, "removed_bytes": bytes }),
        )?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "gc: removed {files} unreferenced chunk files ({})",
            output::size(bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
