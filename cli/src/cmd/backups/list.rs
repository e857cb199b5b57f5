//! `bbsync backups list`.

use std::process::ExitCode;

use bbsync_store::backup::{Repo, SnapshotSignature};

use crate::{Ctx, output};

/// `backups list`.
pub(super) fn list(ctx: &Ctx, repo: &Repo) -> anyhow::Result<ExitCode> {
    let snaps = repo.snapshots()?;
    if ctx.json {
        let rows: Vec<_> = snaps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id, "created": s.created, "host": s.host_name,
                    "objects": s.objects.len(), "bytes": s.bytes,
                    "plaintext_bytes": s.plaintext_bytes, "tags": s.tags,
                    "description": s.description, "counts": s.counts,
                })
            })
            .collect();
        output::json(ctx, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &snaps {
        outln!(
            ctx,
            "{}  {}  {:>7} objects  {:>10}  {}{}{}",
            s.id,
            output::clean(&s.host_name),
            s.objects.len(),
            output::size(s.plaintext_bytes),
            if s.signature == SnapshotSignature::Unsigned {
                "(unsigned) "
            } else {
                ""
            },
            if s.tags.is_empty() {
                String::new()
            } else {
                format!("[{}] ", output::clean(&s.tags.join(",")))
            },
            output::clean(&s.description)
        );
    }
    if !ctx.quiet {
        outln!(ctx, "{} snapshots in {}", snaps.len(), repo.location());
    }
    Ok(ExitCode::SUCCESS)
}
