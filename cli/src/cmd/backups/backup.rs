//! `bbsync backup`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use bbsync_store::{
    Store,
    backup::{DEFAULT_REPO_FORMAT, create::BackupOptions},
};

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
    let store = open_for_backup(ctx, &a.only)?;
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

/// Arguments of `backup-cache` (hidden: `backup` runs it, see
/// [`open_for_backup`]).
#[derive(Debug, clap::Args)]
pub struct BackupCacheArgs {
    #[command(flatten)]
    only: OnlyArgs,
}

/// `bbsync backup-cache`: writes the backup cache of a selection when a
/// backup would not find one that serves ([`Store::prepare_backup_cache`]).
pub fn backup_cache(ctx: &Ctx, a: BackupCacheArgs) -> anyhow::Result<ExitCode> {
    let store = crate::cmd::open(ctx)?;
    let wrote = store.prepare_backup_cache(&a.only.selection())?;
    crate::cmd::close_at_exit(ctx, store)?;
    if !ctx.quiet {
        outln!(
            ctx,
            "backup cache: {}",
            if wrote { "written" } else { "up to date" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The store, for a backup of `only`. When a large store opened here
/// would be backed up by reading every record (no backup cache that
/// serves: its first backup, or many changes since the last), that read
/// is done first by another process (`bbsync backup-cache`, which writes
/// the cache), and the store is opened again: the pages the read leaves
/// in sled's cache, which does not shrink, and the malloc arenas it grows
/// are then gone before the snapshot is assembled. At 200,000 objects a
/// store's first backup peaked at 297-330 MB of RSS in one process. Not
/// when the passphrase of a sealed identity would have to be asked for
/// twice (the backup then reads every record itself).
fn open_for_backup(ctx: &Ctx, only: &OnlyArgs) -> anyhow::Result<Arc<Store>> {
    let store = crate::cmd::open(ctx)?;
    if ctx.remote()
        || !crate::large_store(&ctx.data_dir)
        || !crate::passphrase::without_prompt(ctx)?
        || store.backup_cache_serves(&only.selection())?
    {
        return Ok(store);
    }
    // Its lock must be let go for the other process.
    drop(store);
    if let Err(e) = run_backup_cache(ctx, only) {
        tracing::warn!("{e:#}; this backup reads every record itself");
    }
    crate::cmd::open(ctx)
}

/// Runs `bbsync backup-cache` for `only` in a process of its own.
fn run_backup_cache(ctx: &Ctx, only: &OnlyArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program to run backup-cache")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--data-dir").arg(&ctx.data_dir).arg("--quiet");
    if let Some(f) = &ctx.passphrase_file {
        cmd.arg("--passphrase-file").arg(ctx.path(f));
    }
    cmd.arg("backup-cache");
    for t in only.texts() {
        cmd.arg("--only").arg(t);
    }
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running backup-cache")?;
    anyhow::ensure!(status.success(), "backup-cache failed ({status})");
    Ok(())
}
