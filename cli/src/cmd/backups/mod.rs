//! `backup`, `backups ...` and `restore`: thin wrappers over
//! `bbsync_store::backup`, one file per subcommand. What they share is
//! here: where the repository is (`--repo`) and how it is opened.

mod backup;
mod delete;
mod export;
mod list;
mod migrate;
mod prune;
mod restore;
mod show;
mod stats;
mod verify;

use std::{path::PathBuf, process::ExitCode};

use bbsync_store::backup::{BackupConfig, Repo, RepoLocation, RepoStorage, retention::Policy};

pub use self::{
    backup::{BackupArgs, BackupCacheArgs, backup, backup_cache},
    restore::{RestoreArgs, print_hybrid, restore, restore_for_clone},
};
use crate::Ctx;

/// Where the repository is: `--repo`, else `BBSYNC_REPO`, else the config's
/// `backup_repo`, else `<data>/backup`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RepoArg {
    /// Backup repository: a directory, `s3://bucket/prefix`, or an export
    /// file (`backups export`) to read in place [env: BBSYNC_REPO;
    /// default: config `backup_repo`, else <data dir>/backup].
    #[arg(long, value_name = "REPO")]
    repo: Option<PathBuf>,
    /// How long to wait for another command's lock on a format-2
    /// repository (`30s`, `10m`, `1h`) [default: refuse at once, naming
    /// the holder].
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd::invite::parse_duration)]
    lock_wait: Option<std::time::Duration>,
}

impl RepoArg {
    /// A repository named by a path (`clone --from-backup REPO`).
    pub fn path(repo: PathBuf) -> RepoArg {
        RepoArg {
            repo: Some(repo),
            lock_wait: None,
        }
    }
}

/// The config.toml of the command's data dir (the serving node's, for a
/// control-socket client).
fn config(ctx: &Ctx) -> bbsync_store::Result<BackupConfig> {
    match &ctx.config {
        Some(c) => Ok(c.backup.clone()),
        None => Ok(crate::config::Config::load(&ctx.data_dir.join("config.toml"))?.backup),
    }
}

/// Where `arg` points: `--repo`, `BBSYNC_REPO`, the config's `backup_repo`
/// or `<data>/backup`; `s3://bucket/prefix` is S3 (opened with the S3
/// settings of the environment and config.toml's `[s3]`: inside a serving
/// node for a control-socket client, the node's own; the client's
/// `AWS_*` variables do not travel), a regular file is an export file.
/// Every repository argument of every command goes through here
/// (`RepoLocation::resolve` and `RepoLocation::storage_with`, which the
/// admin API's jobs and the scheduled backups of `serve` use too).
pub fn repo_storage(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<RepoStorage> {
    let given = match &arg.repo {
        Some(r) => Some(r.to_string_lossy().into_owned()),
        None => ctx.env("BBSYNC_REPO").map(str::to_string),
    };
    let loc = RepoLocation::resolve(given.as_deref(), &ctx.cwd, || config(ctx), &ctx.data_dir)?;
    let s3 = if loc.is_s3() { config(ctx)?.s3 } else { None };
    Ok(loc.storage_with(s3.as_ref())?)
}

/// Opens the repository `arg` names (either format, or an export file),
/// with the lock wait it asks for.
pub fn open_repository(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<Repo> {
    let repo = repo_storage(ctx, arg)?.open()?;
    Ok(repo.with_lock_wait(arg.lock_wait.unwrap_or_default()))
}

/// `backups` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BackupsCommand {
    /// List the snapshots of a repository.
    #[command(
        after_help = "Examples:\n  bbsync backups list --repo /mnt/backup\n  bbsync --json backups list"
    )]
    List(RepoArg),
    /// Show one snapshot (`--json`: everything, object list included).
    #[command(
        after_help = "Examples:\n  bbsync backups show latest --repo /mnt/backup\n  bbsync --json backups show 20261130T0330 --repo /mnt/backup"
    )]
    Show {
        /// Snapshot id, unique prefix, or `latest`.
        id: String,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Check snapshots, manifests and chunks; exit 1 on any problem.
    #[command(
        after_help = "Examples:\n  bbsync backups verify --repo /mnt/backup\n  bbsync backups verify latest --read-data --repo /mnt/backup"
    )]
    Verify {
        /// Only this snapshot (default: the whole repository, unreferenced files included).
        id: Option<String>,
        /// Re-hash every chunk (otherwise presence and size only).
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Remove one snapshot, then the data no other snapshot references.
    #[command(after_help = "Example:\n  bbsync backups delete 20261130T0330 --repo /mnt/backup")]
    Delete {
        /// Snapshot id or unique prefix.
        id: String,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Remove snapshots by policy, then the data no snapshot references
    /// (with no --keep option: only unreferenced data).
    #[command(
        after_help = "Examples:\n  bbsync backups prune --repo /mnt/backup --keep-daily 7 --keep-weekly 4 --dry-run\n  bbsync backups prune --repo /mnt/backup --keep-last 10"
    )]
    Prune {
        /// Keep the newest N snapshots.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N days that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_daily: u32,
        /// Keep the newest snapshot of each of the last N weeks that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_weekly: u32,
        /// Keep the newest snapshot of each of the last N months that have one.
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_monthly: u32,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Sizes and counts of a repository.
    #[command(after_help = "Example:\n  bbsync backups stats --repo /mnt/backup")]
    Stats(RepoArg),
    /// Write one snapshot of a format-2 repository into one self-contained
    /// file (a tar: restore --repo FILE and clone --from-backup FILE read it
    /// in place).
    #[command(
        after_help = "Examples:\n  bbsync backups export latest /media/usb/bbs.tar --repo /mnt/backup\n  bbsync restore --repo /media/usb/bbs.tar"
    )]
    Export {
        /// Snapshot id, unique prefix, or `latest`.
        id: String,
        /// The file to write (must not exist).
        file: PathBuf,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Convert a format-1 repository to format 2 in place (resumable: run
    /// it again after an interruption).
    #[command(after_help = "Example:\n  bbsync backups migrate --repo /mnt/backup")]
    Migrate(RepoArg),
}

fn open_repo(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<Repo> {
    open_repository(ctx, arg)
}

/// `bbsync backups ...`.
pub fn backups(ctx: &Ctx, c: BackupsCommand) -> anyhow::Result<ExitCode> {
    match c {
        BackupsCommand::List(r) => list::list(ctx, &open_repo(ctx, &r)?),
        BackupsCommand::Show { id, repo } => show::show(ctx, &open_repo(ctx, &repo)?, &id),
        BackupsCommand::Verify {
            id,
            read_data,
            repo,
        } => verify::verify(ctx, &open_repo(ctx, &repo)?, id.as_deref(), read_data),
        BackupsCommand::Delete { id, repo } => delete::delete(ctx, &open_repo(ctx, &repo)?, &id),
        BackupsCommand::Prune {
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
            repo,
        } => {
            let repo = open_repo(ctx, &repo)?;
            let policy = Policy {
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
            };
            prune::prune(ctx, &repo, &policy, dry_run)
        }
        BackupsCommand::Export { id, file, repo } => {
            export::export(ctx, &open_repo(ctx, &repo)?, &id, &file)
        }
        BackupsCommand::Migrate(r) => migrate::migrate(ctx, &r),
        BackupsCommand::Stats(r) => stats::stats(ctx, &open_repo(ctx, &r)?),
    }
}
