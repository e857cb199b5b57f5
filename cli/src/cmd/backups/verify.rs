//! `bbsync backups verify [SNAPSHOT]`.

use std::process::ExitCode;

use bbsync_store::backup::Repo;

use crate::{Ctx, output, progress::Bar};

/// `backups verify [SNAPSHOT]`: exit 1 on any problem.
pub(super) fn verify(
    ctx: &Ctx,
    repo: &Repo,
    id: Option<&str>,
    read_data: bool,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(ctx.progress);
    let r = repo.verify(id, read_data, &bar)?;
    if ctx.json {
        output::json(ctx, &r)?;
    } else {
        for p in r.problems.iter().take(output::MAX_LISTED) {
            outln!(ctx, "{:<18} {}: {}", p.class, p.path, p.detail);
        }
        output::more_listed(ctx, r.problems.len());
        if !ctx.quiet || !r.is_ok() {
            let what = output::checked(r.read_data, r.bytes_read, r.elapsed);
            let counts: Vec<_> = r.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let verdict = output::verdict(r.problems.len(), &counts);
            let vouched = if r.manifests_vouched > 0 {
                format!(" ({} signed for by their snapshot)", r.manifests_vouched)
            } else {
                String::new()
            };
            outln!(
                ctx,
                "backups verify: {} snapshots, {} manifests{vouched}, {} chunks, {what}: {verdict}",
                r.snapshots,
                r.manifests,
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
