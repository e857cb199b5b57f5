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
        if r.problems.len() > output::MAX_LISTED {
            outln!(
                ctx,
                "... and {} more problem(s) (--json lists them all)",
                r.problems.len() - output::MAX_LISTED
            );
        }
        if !ctx.quiet || !r.is_ok() {
            let what = if r.read_data {
                format!(
                    "{} read in {} ({})",
                    output::size(r.bytes_read),
                    output::secs(r.elapsed),
                    output::rate(r.bytes_read, r.elapsed)
                )
            } else {
                format!("checked in {}", output::secs(r.elapsed))
            };
            let verdict = if r.is_ok() {
                "OK".to_string()
            } else {
                let mut counts: Vec<_> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
                counts.sort();
                format!("{} problem(s): {}", r.problems.len(), counts.join(", "))
            };
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
