//! `bbsync backups delete SNAPSHOT`.

use std::process::ExitCode;

use bbsync_store::backup::Repo;

use super::prune::packs_line;
use crate::{Ctx, output};

/// `backups delete SNAPSHOT`: the snapshot, then the data no other
/// snapshot references.
pub(super) fn delete(ctx: &Ctx, repo: &Repo, id: &str) -> anyhow::Result<ExitCode> {
    let r = repo.delete_snapshot(id, bbsync_store::backup::retention::Removal::Apply)?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else if let (false, Some(p)) = (ctx.quiet, &r.packs) {
        outln!(
            ctx,
            "deleted snapshot {}; {}",
            r.removed.join(", "),
            packs_line(p)
        );
    } else if !ctx.quiet {
        outln!(
            ctx,
            "deleted snapshot {}; removed {} manifests and {} chunks ({})",
            r.removed.join(", "),
            r.manifests_removed,
            r.chunks_removed,
            output::size(r.bytes_removed)
        );
    }
    Ok(ExitCode::SUCCESS)
}
