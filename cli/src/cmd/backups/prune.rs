//! `bbsync backups prune`.

use std::process::ExitCode;

use bbsync_store::backup::{Repo, retention::Policy, v2::prune::PruneReport};

use crate::{Ctx, output};

/// One line of what a format-2 prune did (or would do).
pub(super) fn packs_line(p: &PruneReport) -> String {
    format!(
        "{} packs {}deleted, {} repacked into {}, {} kept; {} index files rewritten; {} freed",
        p.packs_deleted,
        if p.dry_run { "to be " } else { "" },
        p.packs_repacked,
        p.packs_written,
        p.packs_kept,
        p.index_removed,
        output::size(p.bytes_freed)
    )
}

/// `backups prune`: snapshots by `policy`, then the data no snapshot
/// references (with `dry_run`, only what would go).
pub(super) fn prune(
    ctx: &Ctx,
    repo: &Repo,
    policy: &Policy,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let r = repo.prune(
        policy,
        bbsync_store::backup::retention::Removal::dry_run_if(dry_run),
    )?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else if !ctx.quiet {
        for (id, rules) in &r.kept {
            outln!(ctx, "keep   {id} ({})", rules.join(", "));
        }
        for id in &r.removed {
            outln!(ctx, "remove {id}");
        }
        if let Some(p) = &r.packs {
            outln!(
                ctx,
                "prune{}: {} snapshots removed, {} kept; {}",
                if dry_run { " (dry run)" } else { "" },
                r.removed.len(),
                p.remaining,
                packs_line(p)
            );
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            ctx,
            "prune{}: {} snapshots removed, {} kept; {} manifests and {} chunks ({}) {}",
            if dry_run { " (dry run)" } else { "" },
            r.removed.len(),
            r.kept.len(),
            r.manifests_removed,
            r.chunks_removed,
            output::size(r.bytes_removed),
            if dry_run {
                "would be removed"
            } else {
                "removed"
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}
