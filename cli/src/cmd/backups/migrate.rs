//! `bbsync backups migrate`.

use std::process::ExitCode;

use bbsync_store::backup::RepoStorage;

use super::{RepoArg, repo_storage};
use crate::{Ctx, output, progress::Bar};

/// `backups migrate`.
pub(super) fn migrate(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<ExitCode> {
    let backend = match repo_storage(ctx, arg)? {
        RepoStorage::Export(f) => anyhow::bail!(
            "{} is an export file (format 2, read only); nothing to migrate",
            f.display()
        ),
        storage => storage.backend()?,
    };
    let host = match &ctx.store {
        Some(s) => s.instance_id().to_hex(),
        None => String::new(),
    };
    let bar = Bar::new(ctx.progress);
    let r = bbsync_store::backup::migrate::migrate(
        backend,
        &host,
        arg.lock_wait.unwrap_or_default(),
        &bar,
    )?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else if !ctx.quiet {
        if r.already {
            outln!(
                ctx,
                "{} is a format-2 repository already; nothing to do",
                r.repo
            );
        } else {
            outln!(
                ctx,
                "backups migrate: {} is format 2 now: {} snapshots, {} chunks packed ({}) into {} data packs{}, {} manifests into {} manifest packs, {} index files, {} escrows; {} format-1 files removed, in {}",
                r.repo,
                r.snapshots,
                r.chunks,
                output::size(r.bytes),
                r.data_packs,
                if r.chunks_done_before > 0 {
                    format!(" ({} packed by an earlier run)", r.chunks_done_before)
                } else {
                    String::new()
                },
                r.manifests,
                r.manifest_packs,
                r.index_files,
                r.keys,
                r.files_removed,
                output::secs(r.elapsed)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
