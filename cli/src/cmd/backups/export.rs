//! `bbsync backups export SNAPSHOT FILE`.

use std::process::ExitCode;

use bbsync_store::backup::Repo;

use crate::{Ctx, output};

/// `backups export SNAPSHOT FILE`.
pub(super) fn export(
    ctx: &Ctx,
    repo: &Repo,
    spec: &str,
    file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let Some(r2) = repo.v2() else {
        anyhow::bail!(
            "{} is a format-1 repository; export writes format 2 (run `bbsync backups migrate --repo {}` first)",
            repo.location(),
            repo.location()
        );
    };
    let out = ctx.path(file);
    let r = {
        let _lock = repo.lock("", bbsync_store::backup::LockFor::EXPORT)?;
        r2.export(spec, &out)?
    };
    if ctx.json {
        output::json(ctx, &r)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "backups export: snapshot {} into {}: {} data packs, {} manifest packs, identity escrow {}, {} in {}",
            r.snapshot,
            r.file,
            r.data_packs,
            r.manifest_packs,
            if r.identity_escrow {
                "included"
            } else {
                "not included"
            },
            output::size(r.bytes),
            output::secs(r.elapsed)
        );
    }
    Ok(ExitCode::SUCCESS)
}
