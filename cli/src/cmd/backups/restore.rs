//! `bbsync restore` (into the store, or `--to-tree`), and the restore
//! that `clone --from-backup` runs first.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use bbsync_store::{
    Store, StoreError,
    backup::{
        Repo,
        restore::{RestoreOptions, RestoreReport, escrow_of, open_escrow, precheck_snapshot},
    },
    sync::Selection,
};

use super::{RepoArg, open_repo, open_repository};
use crate::{Ctx, cmd, cmd::OnlyArgs, output, passphrase::get as passphrase, progress::Bar};

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest` [default: the snapshot of a
    /// restore from this repository that stopped (a day at most), else latest].
    snapshot: Option<String>,
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    only: OnlyArgs,
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

/// The store to restore into. An uninitialized data dir is created with
/// the identity escrowed in the repository for the snapshot's host.
fn store_for_restore(
    ctx: &Ctx,
    repo: &Repo,
    snapshot: Option<&str>,
    trust_host: Option<&str>,
) -> anyhow::Result<Arc<Store>> {
    if ctx.store.is_some() {
        return cmd::open(ctx);
    }
    match cmd::open(ctx) {
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
    let sel = a.only.selection();
    let repo = open_repo(ctx, &a.repo)?;
    if let Some(dir) = &a.to_tree {
        let store = cmd::open(ctx)?;
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
pub fn print_restore(ctx: &Ctx, r: &RestoreReport) {
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
    if r.trust_table.refused() {
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
    if r.resumed {
        outln!(
            ctx,
            "restore: resumed the restore of snapshot {} that had stopped ({} chunks were here already)",
            r.snapshot,
            r.chunks_present
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
) -> anyhow::Result<Option<RestoreReport>> {
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
pub fn print_hybrid(ctx: &Ctx, r: Option<&RestoreReport>, from_network: u64) {
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
