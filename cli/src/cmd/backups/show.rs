//! `bbsync backups show SNAPSHOT`.

use std::process::ExitCode;

use bbsync_store::backup::{Repo, SnapshotSignature};

use crate::{Ctx, output};

/// `backups show SNAPSHOT`.
pub(super) fn show(ctx: &Ctx, repo: &Repo, spec: &str) -> anyhow::Result<ExitCode> {
    let id = repo.resolve_snapshot(spec)?;
    let s = repo.load_snapshot(&id)?;
    if ctx.json {
        output::json(ctx, &s)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(ctx, "snapshot:       {}", s.id);
    outln!(ctx, "created:        {}", s.created);
    outln!(
        ctx,
        "host:           {} (instance {})",
        output::clean(&s.host_name),
        s.host_id
    );
    outln!(ctx, "host card:      {}", s.host);
    outln!(
        ctx,
        "signature:      {}",
        match s.signature {
            SnapshotSignature::Verified => "signed by the host, verified",
            SnapshotSignature::Unsigned =>
                "none (written before snapshots were signed; restore needs --trust-host)",
        }
    );
    outln!(ctx, "description:    {}", output::clean(&s.description));
    outln!(ctx, "tags:           {}", output::clean(&s.tags.join(", ")));
    outln!(
        ctx,
        "bbsync:         {} (store schema {})",
        s.bbsync_version,
        s.schema_version
    );
    if !s.only.is_empty() {
        outln!(ctx, "only:           {}", output::clean(&s.only.join(", ")));
    }
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    outln!(
        ctx,
        "objects:        {} ({})",
        s.objects.len(),
        counts.join(", ")
    );
    outln!(
        ctx,
        "size:           {} plaintext, {} sealed in {} chunks",
        output::size(s.plaintext_bytes),
        output::size(s.bytes),
        s.chunks
    );
    outln!(ctx, "trusted:        {} instances", s.trust.len());
    outln!(
        ctx,
        "identity:       {}",
        s.identity_escrow.as_deref().unwrap_or("not included")
    );
    outln!(ctx, "objects sha256: {}", s.objects_sha256);
    Ok(ExitCode::SUCCESS)
}
