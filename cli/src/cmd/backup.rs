//! `backup`, `backups ...` and `restore`: thin wrappers over
//! `bbsync_store::backup`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use crate::{Ctx, output, passphrase::get as passphrase, progress::Bar};
use bbsync_store::{
    Store, StoreError,
    backup::{
        BackupConfig, DEFAULT_REPO_FORMAT, Repo, RepoLocation, RepoStorage, SnapshotSignature,
        create::BackupOptions,
        restore::{RestoreOptions, escrow_of, open_escrow, precheck_snapshot},
        retention::Policy,
    },
    sync::Selection,
};

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
    #[arg(long, value_name = "DURATION", value_parser = super::invite::parse_duration)]
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

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Only objects of this kind (and name or name prefix), repeatable.
    #[arg(long, value_name = "KIND[:NAME]")]
    only: Vec<String>,
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

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest` [default: latest].
    snapshot: Option<String>,
    #[command(flatten)]
    repo: RepoArg,
    /// Only objects of this kind (and name or name prefix), repeatable.
    #[arg(long, value_name = "KIND[:NAME]")]
    only: Vec<String>,
    /// Replace objects held here at the same or a newer version.
    #[arg(long)]
    overwrite: bool,
    /// Add envelope entries for the trusted `full` instances to what is restored.
    #[arg(long)]
    rekey: bool,
    /// Restore manifests only; fetch the chunks from peers later (`fetch-missing`).
    #[arg(long)]
    skip_chunks: bool,
    /// Do not back the current store up into the repository first.
    #[arg(long)]
    no_safety_snapshot: bool,
    /// Believe the snapshot's host, named by its card string (after
    /// checking its fingerprint out of band): needed for a snapshot of an
    /// instance this node does not trust `full`, and for an unsigned
    /// (older) snapshot. The host is then trusted `full`; its trust table
    /// is never imported.
    #[arg(long, value_name = "CARD")]
    trust_host: Option<String>,
    /// Write the snapshot's plaintext BBS tree into this new or empty
    /// directory instead, without touching the store.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["overwrite", "rekey", "skip_chunks"])]
    to_tree: Option<PathBuf>,
}

fn open_repo(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<Repo> {
    open_repository(ctx, arg)
}

/// One line of what a format-2 prune did (or would do).
fn packs_line(p: &bbsync_store::backup::v2::prune::PruneReport) -> String {
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

fn selection(only: &[String]) -> anyhow::Result<Selection> {
    Ok(Selection::from_only(only)?)
}

/// `bbsync backup`.
pub fn backup(ctx: &Ctx, a: BackupArgs) -> anyhow::Result<ExitCode> {
    let sel = selection(&a.only)?;
    let store = super::open(ctx)?;
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
            selection: sel,
            only: a.only.clone(),
            description: a.description,
            tags: a.tags,
            identity_passphrase: pass,
            copy: a.copy,
        },
        &bar,
    )?;
    r.repo_created = created;
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

/// `bbsync backups ...`.
pub fn backups(ctx: &Ctx, c: BackupsCommand) -> anyhow::Result<ExitCode> {
    match c {
        BackupsCommand::List(r) => list(ctx, &open_repo(ctx, &r)?),
        BackupsCommand::Show { id, repo } => show(ctx, &open_repo(ctx, &repo)?, &id),
        BackupsCommand::Verify {
            id,
            read_data,
            repo,
        } => verify(ctx, &open_repo(ctx, &repo)?, id.as_deref(), read_data),
        BackupsCommand::Delete { id, repo } => {
            let repo = open_repo(ctx, &repo)?;
            let r = repo.delete_snapshot(&id, false)?;
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
            let r = repo.prune(&policy, dry_run)?;
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
        BackupsCommand::Export { id, file, repo } => {
            export(ctx, &open_repo(ctx, &repo)?, &id, &file)
        }
        BackupsCommand::Migrate(r) => migrate(ctx, &r),
        BackupsCommand::Stats(r) => {
            let s = open_repo(ctx, &r)?.stats()?;
            if ctx.json {
                output::json(ctx, &s)?;
            } else {
                outln!(
                    ctx,
                    "repository:       {} ({}, format {})",
                    s.repo,
                    s.repo_id,
                    s.format
                );
                outln!(ctx, "snapshots:        {}", s.snapshots);
                outln!(ctx, "manifests:        {}", s.manifests);
                outln!(
                    ctx,
                    "chunks:           {} ({})",
                    s.chunks,
                    output::size(s.chunk_bytes)
                );
                if s.format >= 2 {
                    outln!(
                        ctx,
                        "packs:            {} data, {} manifest; {} index files",
                        s.data_packs,
                        s.manifest_packs,
                        s.index_files
                    );
                }
                outln!(
                    ctx,
                    "snapshots hold:   {} sealed, {} plaintext (deduplicated {:.1}x)",
                    output::size(s.snapshot_bytes),
                    output::size(s.plaintext_bytes),
                    s.snapshot_bytes as f64 / (s.chunk_bytes.max(1)) as f64
                );
                outln!(ctx, "identity escrows: {}", s.identity_escrows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `backups export SNAPSHOT FILE`.
fn export(ctx: &Ctx, repo: &Repo, spec: &str, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(r2) = repo.v2() else {
        anyhow::bail!(
            "{} is a format-1 repository; export writes format 2 (run `bbsync backups migrate --repo {}` first)",
            repo.location(),
            repo.location()
        );
    };
    let out = ctx.path(file);
    let r = {
        let _lock = repo.lock("", false, "export", "exported")?;
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

/// `backups migrate`.
fn migrate(ctx: &Ctx, arg: &RepoArg) -> anyhow::Result<ExitCode> {
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

fn list(ctx: &Ctx, repo: &Repo) -> anyhow::Result<ExitCode> {
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

fn show(ctx: &Ctx, repo: &Repo, spec: &str) -> anyhow::Result<ExitCode> {
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

fn verify(ctx: &Ctx, repo: &Repo, id: Option<&str>, read_data: bool) -> anyhow::Result<ExitCode> {
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
            outln!(
                ctx,
                "backups verify: {} snapshots, {} manifests, {} chunks, {what}: {verdict}",
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

/// The store to restore into. An uninitialized data dir is created with
/// the identity escrowed in the repository for the snapshot's host.
fn store_for_restore(
    ctx: &Ctx,
    repo: &Repo,
    snapshot: Option<&str>,
    trust_host: Option<&str>,
) -> anyhow::Result<Arc<Store>> {
    if ctx.store.is_some() {
        return super::open(ctx);
    }
    match super::open(ctx) {
        Ok(s) => return Ok(s),
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::NotInitialized(_))) => {}
        Err(e) => return Err(e),
    }
    let id = repo.resolve_snapshot(snapshot.unwrap_or("latest"))?;
    let snap = repo.load_snapshot(&id)?;
    // Refused snapshots are refused before anything is created.
    precheck_snapshot(&snap, trust_host)?;
    let Some((path, key)) = escrow_of(repo, &snap)? else {
        anyhow::bail!(
            "{} is not a bbsync data dir and {} holds no identity escrow for {}; run `bbsync init` first to restore under a new identity",
            ctx.data_dir.display(),
            repo.location(),
            output::clean(&snap.host_name)
        );
    };
    let pass = passphrase(ctx, &path, false)?;
    let identity = open_escrow(&path, &key, &pass)?;
    let store = Store::init_with(&ctx.data_dir, identity)?;
    if !ctx.quiet && !ctx.json {
        outln!(
            ctx,
            "restored identity {} ({}) from {path}",
            store.identity().name(),
            store.instance_id().short()
        );
    }
    Ok(Arc::new(store))
}

/// `bbsync restore`.
pub fn restore(ctx: &Ctx, a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let sel = selection(&a.only)?;
    let repo = open_repo(ctx, &a.repo)?;
    if let Some(dir) = &a.to_tree {
        let store = super::open(ctx)?;
        let bar = Bar::new(ctx.progress);
        let r = store.restore_to_tree(
            &repo,
            a.snapshot.as_deref(),
            &sel,
            &ctx.path(dir),
            a.trust_host.as_deref(),
            &bar,
        )?;
        if ctx.json {
            output::json(ctx, &r)?;
        } else {
            for (o, why) in r.failed.iter().take(output::MAX_LISTED) {
                errln!(ctx, "not written: {o}: {why}");
            }
            if !ctx.quiet || !r.failed.is_empty() {
                outln!(
                    ctx,
                    "restore --to-tree: snapshot {}: {} objects, {} files, {} written to {}, {} failed, in {}",
                    r.snapshot,
                    r.objects,
                    r.files,
                    output::size(r.bytes),
                    ctx.path(dir).display(),
                    r.failed.len(),
                    output::secs(r.elapsed)
                );
            }
        }
        return Ok(if r.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let store = store_for_restore(ctx, &repo, a.snapshot.as_deref(), a.trust_host.as_deref())?;
    let bar = Bar::new(ctx.progress);
    let asked = a.snapshot.clone();
    let r = store.restore(
        &repo,
        &RestoreOptions {
            snapshot: a.snapshot,
            selection: sel,
            overwrite: a.overwrite,
            rekey: a.rekey,
            skip_chunks: a.skip_chunks,
            safety_snapshot: !a.no_safety_snapshot,
            trust_host: a.trust_host,
            clone_source: None,
        },
        &bar,
    );
    bbsync_store::backup::history::record(
        store.dir(),
        std::path::Path::new(&repo.location()),
        asked.as_deref(),
        &r,
    );
    let r = r?;
    print_restore(ctx, &r);
    Ok(ExitCode::SUCCESS)
}

/// Prints a restore report.
pub fn print_restore(ctx: &Ctx, r: &bbsync_store::backup::restore::RestoreReport) {
    if ctx.json {
        let _ = output::json(ctx, r);
        return;
    }
    if ctx.quiet {
        return;
    }
    if let Some(s) = &r.safety_snapshot {
        outln!(ctx, "safety snapshot of the store before the restore: {s}");
    }
    if !r.trusted.is_empty() {
        outln!(ctx, "trusted now: {}", r.trusted.join(", "));
    }
    if r.trust_table.starts_with("not restored") {
        errln!(ctx, "the snapshot's trust table was {}", r.trust_table);
    }
    for o in r.undecryptable.iter().take(output::MAX_LISTED) {
        errln!(
            ctx,
            "undecryptable here (no envelope entry for this instance): {o}"
        );
    }
    for (o, why) in r.refused.iter().take(output::MAX_LISTED) {
        errln!(ctx, "not restored: {o}: {why}");
    }
    if r.entries_dropped > 0 {
        errln!(
            ctx,
            "{} envelope entries left out: their signatures do not verify (or their wrapper is not trusted)",
            r.entries_dropped
        );
    }
    if let Some(k) = &r.rekey {
        outln!(
            ctx,
            "rekey: {} envelopes changed ({} entries added, {} dropped)",
            k.changed.len(),
            k.entries_added,
            k.entries_dropped
        );
    }
    outln!(
        ctx,
        "restore: snapshot {} (host {}, {}): {} objects restored ({} replaced), {} already here, {} left out, {} undecryptable, {} refused, {} chunks copied ({}), {} already present, {} incomplete, in {} ({})",
        r.snapshot,
        r.host,
        r.host_accepted,
        r.restored,
        r.replaced,
        r.skipped_existing,
        r.skipped_selection,
        r.undecryptable.len(),
        r.refused.len(),
        r.chunks_copied,
        output::size(r.bytes_copied),
        r.chunks_present,
        r.incomplete,
        output::secs(r.elapsed),
        output::rate(r.bytes_copied, r.elapsed),
    );
}

/// `clone --from-backup REPO`: restores the latest snapshot of `repo`
/// (chunks included) before the network clone, which then fetches only
/// what is missing or newer.
pub fn restore_for_clone(
    ctx: &Ctx,
    store: &Store,
    repo: Option<PathBuf>,
    selection: &Selection,
    source: Option<bbsync_protocol::InstanceId>,
) -> anyhow::Result<Option<bbsync_store::backup::restore::RestoreReport>> {
    let Some(dir) = repo else {
        return Ok(None);
    };
    let repo = open_repository(ctx, &RepoArg::path(dir))?;
    let bar = Bar::new(ctx.progress);
    let r = store.restore(
        &repo,
        &RestoreOptions {
            selection: selection.clone(),
            safety_snapshot: true,
            clone_source: source,
            ..Default::default()
        },
        &bar,
    )?;
    if !ctx.json {
        print_restore(ctx, &r);
    }
    Ok(Some(r))
}

/// The last line of a `clone --from-backup`: where the chunks came from.
pub fn print_hybrid(
    ctx: &Ctx,
    r: Option<&bbsync_store::backup::restore::RestoreReport>,
    from_network: u64,
) {
    if let Some(r) = r
        && !ctx.json
        && !ctx.quiet
    {
        outln!(
            ctx,
            "clone --from-backup: {} chunks from the backup ({}), {} from the network",
            r.chunks_copied,
            output::size(r.bytes_copied),
            from_network
        );
    }
}
