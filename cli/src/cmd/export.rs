//! `export` and `export-bbs`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::{Ctx, output, progress::Bar};

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The object: `kind:name`, or its id (or a unique prefix of 4+ hex digits).
    object: String,
    /// Destination file, or directory (new or empty) for directory objects.
    dest: PathBuf,
}

/// Arguments of `export-bbs`.
#[derive(Debug, clap::Args)]
pub struct ExportBbsArgs {
    /// Destination directory (new or empty).
    dir: PathBuf,
}

/// `bbsync export`.
pub fn run(ctx: &Ctx, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let id = store.resolve(&a.object)?;
    let s = store
        .export_object(&id, &ctx.path(&a.dest))
        .with_context(|| format!("exporting {} to {}", a.object, a.dest.display()))?;
    if ctx.json {
        output::json(ctx, &s)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "export: {} ({} files, {}) -> {} in {}",
            a.object,
            s.files,
            output::size(s.bytes),
            a.dest.display(),
            output::secs(s.elapsed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync export-bbs`.
pub fn run_bbs(ctx: &Ctx, a: ExportBbsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let s = store
        .export_bbs(&ctx.path(&a.dir), &bar)
        .with_context(|| format!("exporting to {}", a.dir.display()))?;
    if ctx.json {
        output::json(ctx, &s)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "export-bbs: {} objects, {} files, {} in {} ({}) -> {}",
            s.objects,
            s.files,
            output::size(s.bytes),
            output::secs(s.elapsed),
            output::rate(s.bytes, s.elapsed),
            a.dir.display()
        );
    }
    if s.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !ctx.json {
            for (obj, why) in s.failed.iter().take(output::MAX_LISTED) {
                errln!(ctx, "not exported: {obj}: {why}");
            }
            if s.failed.len() > output::MAX_LISTED {
                errln!(
                    ctx,
                    "... and {} more (--json lists them all)",
                    s.failed.len() - output::MAX_LISTED
                );
            }
        }
        anyhow::bail!("{} object(s) could not be exported", s.failed.len())
    }
}
