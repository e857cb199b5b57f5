//! `bbsync backup`.

use std::process::ExitCode;

use bbsync_store::backup::{DEFAULT_REPO_FORMAT, create::BackupOptions};

use super::{RepoArg, repo_storage};
use crate::{Ctx, cmd::OnlyArgs, output, passphrase::get as passphrase, progress::Bar};

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    only: OnlyArgs,
    /// Free text stored with the snapshot.
    #[arg(long, default_value = "")]
    description: String,
    /// A tag, repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Also seal this instance's identity with a passphrase into the
    /// repository (env BBSYNC_PASSPHRASE, or a prompt on a terminal).
    #[arg(long)]
    include_identity: bool,
    /// Format 2: copy the store's pack files into the repository even
    /// where a hard link would do (format 1: no effect, chunks are always
    /// copied).
    #[arg(long)]
    copy: bool,
    /// Format of a repository this backup creates: 2 (packs and an index,
    /// the default) or 1 (a file per chunk, for older bbsync). An existing
    /// repository keeps its format (`backups migrate` converts 1 to 2).
    #[arg(long, value_name = "N", default_value_t = bbsync_store::backup::DEFAULT_REPO_FORMAT)]
    repo_format: u16,
}

/// `bbsync backup`.
pub fn backup(ctx: &Ctx, a: BackupArgs) -> anyhow::Result<ExitCode> {
    let store = crate::cmd::open(ctx)?;
    let storage = repo_storage(ctx, &a.repo)?;
    storage.check_writable()?;
    let pass = if a.include_identity {
        Some(passphrase(ctx, "the identity escrow", true)?)
    } else {
        None
    };
    let (repo, created) = storage.open_or_create(a.repo_format)?;
    if !created && repo.format() != a.repo_format && a.repo_format != DEFAULT_REPO_FORMAT {
        anyhow::bail!(
            "--repo-format {}: {} is a repository of format {} already (a repository keeps its format; nothing was backed up)",
            a.repo_format,
            repo.location(),
            repo.format()
        );
    }
    let repo = repo.with_lock_wait(a.repo.lock_wait.unwrap_or_default());
    let bar = Bar::new(ctx.progress);
    let mut r = store.backup(
        &repo,
        &BackupOptions {
            selection: a.only.selection(),
            only: a.only.texts(),
            description: a.description,
            tags: a.tags,
            identity_passphrase: pass,
            copy: a.copy,
        },
        &bar,
    )?;
    r.repo_created = created;
    crate::cmd::close_at_exit(ctx, store)?;
    if ctx.json {
        output::json(ctx, &r)?;
        return Ok(ExitCode::SUCCESS);
    }
    for o in r.skipped_incomplete.iter().take(output::MAX_LISTED) {
        errln!(ctx, "left out (incomplete, chunks missing): {o}");
    }
    if !ctx.quiet {
        if created {
            outln!(
                ctx,
                "created backup repository {} (format {})",
                r.repo,
                repo.format()
            );
        }
        if let Some(k) = &r.identity_escrow {
            outln!(ctx, "identity sealed into {k}");
        }
        outln!(
            ctx,
            "backup: snapshot {}: {} objects, {} chunks ({} new: {} linked, {} copied, {}), {} manifests written, {} left out, in {} ({})",
            r.snapshot,
            r.objects,
            r.chunks,
            r.chunks_new,
            r.chunks_linked,
            r.chunks_new - r.chunks_linked,
            output::size(r.bytes_new),
            r.manifests_new,
            r.skipped_incomplete.len(),
            output::secs(r.elapsed),
            output::rate(r.bytes_new, r.elapsed),
        );
    }
    Ok(ExitCode::SUCCESS)
}
