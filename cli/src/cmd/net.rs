//! `clone` and `fetch-missing`, and what `serve` (cmd/serve.rs) shares
//! with them: the runtime, the node's start, Tor options, `--only`.

use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use bbsync_node::{
    CloneOptions, Multiaddr, Node, NodeOptions, TorOptions, clone_from,
    dial::{dial_all, dial_first, parse_peer_addrs},
    fetch_missing, onion,
};
use bbsync_protocol::{Invite, invite::is_invite_text};
use bbsync_store::{Store, StoreError, sync::Selection};

use crate::{Ctx, output, progress::Bar};

/// Every address an invite names, parsed (to decide whether Tor is needed).
pub(super) fn invite_multiaddrs(invite: &Invite) -> anyhow::Result<Vec<Multiaddr>> {
    let addrs = bbsync_node::invite::invite_addrs(invite)?;
    for a in &addrs {
        onion::check_text(&a.to_string())
            .map_err(|e| anyhow!("the invite's address {a} is malformed: {e}"))?;
    }
    Ok(addrs)
}

/// Arguments of `clone`.
#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The source's full address, ending in /p2p/<PeerId> (as `serve`
    /// prints it), or an invite string of the source (`bbsync invite
    /// create` on it): then the invite is redeemed first (the source trusts
    /// this node with the invite's role), and an empty or missing data dir
    /// is initialized.
    #[arg(value_name = "ADDR|INVITE")]
    addr: String,
    /// With an invite and a new data dir: the name of this instance
    /// [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// With an invite and a new data dir: seal identity.key with a
    /// passphrase (as `init --encrypt-identity`).
    #[arg(long)]
    encrypt_identity: bool,
    /// Another source to fetch chunks from (repeatable); its card must prove
    /// its peer id too, and it is not added to the trust table (chunks are
    /// checked by id). A chunk one source fails to deliver is asked of another.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Chunk requests in flight at once.
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// Leave out the BBS configuration (`config` objects).
    #[arg(long)]
    skip_config: bool,
    /// Leave out applets (`applet` objects; their data still comes).
    #[arg(long)]
    skip_applets: bool,
    /// Take only objects of this kind, or this kind and name (exact, or a
    /// path prefix: `message:general`). Repeatable.
    #[arg(long, value_name = "KIND[:NAME]", value_parser = parse_only)]
    only: Vec<(String, Option<String>)>,
    /// Restore from this backup repository first; only what it lacks (or
    /// holds older) comes from the network.
    #[arg(long, value_name = "REPO")]
    from_backup: Option<std::path::PathBuf>,
}

/// Arguments of `fetch-missing`.
#[derive(Debug, clap::Args)]
pub struct FetchMissingArgs {
    /// A peer to fetch from (repeatable), ending in /p2p/<PeerId> [default:
    /// the `peers` of config.toml].
    #[arg(long = "from", value_name = "ADDR")]
    from: Vec<String>,
    /// Chunk requests in flight at once.
    #[arg(long, default_value_t = 16)]
    jobs: usize,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(super) fn parse_only(s: &str) -> Result<(String, Option<String>), String> {
    Selection::parse_only(s).map_err(|e| e.to_string())
}

/// Tor settings for a node that needs Tor (`needed`), from
/// `--tor-config`, `BBSYNC_TOR_CONFIG` or config.toml's `tor_config`.
pub(super) fn tor_options(ctx: &Ctx, needed: bool) -> anyhow::Result<Option<TorOptions>> {
    if !needed {
        return Ok(None);
    }
    if !bbsync_node::TOR_SUPPORTED {
        bail!(
            "this bbsync was built without Tor (cargo feature `tor`): onion addresses and --onion need it"
        );
    }
    let config_file = match (&ctx.tor_config, ctx.env("BBSYNC_TOR_CONFIG")) {
        (Some(p), _) => Some(ctx.path(p)),
        (None, Some(p)) if !p.is_empty() => Some(ctx.path(Path::new(p))),
        _ => crate::config::of(ctx)?
            .node
            .tor_config
            .as_ref()
            .map(|p| ctx.data_dir.join(p)),
    };
    if let Some(f) = &config_file
        && !f.is_file()
    {
        bail!("tor config {}: no such file", f.display());
    }
    Ok(Some(TorOptions {
        config_file,
        dial_budget: Duration::from_secs(ctx.tor_dial_budget),
        ..TorOptions::for_data_dir(&ctx.data_dir)
    }))
}

/// Starts a node for `store`, with Tor when any of `addrs` is an onion
/// address (or `force_tor`).
pub(super) fn start_node(
    ctx: &Ctx,
    store: &Arc<Store>,
    addrs: &[Multiaddr],
    force_tor: bool,
) -> anyhow::Result<Node> {
    let needed = force_tor || addrs.iter().any(onion::is_onion);
    let opts = NodeOptions {
        tor: tor_options(ctx, needed)?,
        ..Default::default()
    };
    Ok(Node::start_with(store.clone(), opts)?)
}

/// `bbsync fetch-missing`.
pub fn fetch_missing_cmd(ctx: &Ctx, a: FetchMissingArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let texts = if a.from.is_empty() {
        crate::config::of(ctx)?.node.peers.clone()
    } else {
        a.from.clone()
    };
    if texts.is_empty() {
        bail!("no peer to fetch from: pass --from ADDR or set `peers` in config.toml");
    }
    let addrs = parse_peer_addrs(&texts)?;
    let opts = CloneOptions {
        jobs: a.jobs.max(1),
        progress: std::sync::Arc::new(Bar::new(ctx.progress)),
        ..Default::default()
    };
    let report = runtime()?.block_on(async move {
        let node = start_node(ctx, &store, &addrs, false)?;
        let h = node.handle();
        let peers = dial_all(&h, addrs, false).await?;
        let r = fetch_missing(&h, store, &peers, &opts).await;
        node.stop();
        anyhow::Ok(r?)
    })?;
    if ctx.json {
        output::json(ctx, &report)?;
    } else if !ctx.quiet || report.still_missing > 0 {
        outln!(
            ctx,
            "fetch-missing: {} chunks fetched ({}) from {} source(s), {} rejected, {} objects completed, {} chunks still missing, in {} ({})",
            report.chunks_fetched,
            output::size(report.bytes),
            report.sources,
            report.chunks_rejected,
            report.objects_completed,
            report.still_missing,
            output::secs(report.elapsed),
            output::rate(report.bytes, report.elapsed),
        );
    }
    if report.still_missing > 0 {
        bail!(
            "{} chunk(s) are still missing (no source had them)",
            report.still_missing
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The store for `clone INVITE`: the data dir's, or a new one when the
/// data dir is missing or empty. Returns it and, when it was made here,
/// whether the directory existed before (to undo the init if the invite
/// cannot be redeemed).
fn store_for_invite(ctx: &Ctx, a: &CloneArgs) -> anyhow::Result<(Arc<Store>, Option<bool>)> {
    let new = ctx.store.is_none()
        && matches!(
            Store::identity_sealed(&ctx.data_dir),
            Err(StoreError::NotInitialized(_))
        );
    if !new {
        let store = super::open(ctx)?;
        check_as_made(ctx, &store, a.name.as_deref(), a.encrypt_identity)?;
        return Ok((store, None));
    }
    let existed = ctx.data_dir.exists();
    let name = super::init::new_name(a.name.clone());
    let pass = if a.encrypt_identity {
        Some(super::init::new_passphrase(ctx)?)
    } else {
        None
    };
    let store = Store::init_sealed(&ctx.data_dir, &name, pass.as_deref().map(String::as_str))
        .with_context(|| format!("initializing {}", ctx.data_dir.display()))?;
    Ok((Arc::new(store), Some(existed)))
}

/// `--name` and `--encrypt-identity` describe the data dir a command makes;
/// on one that exists (a command run again, e.g. a resumed clone or a
/// restarted `serve`), they must describe it as it is.
pub(super) fn check_as_made(
    ctx: &Ctx,
    store: &Store,
    name: Option<&str>,
    encrypt: bool,
) -> anyhow::Result<()> {
    let have = store.identity().name();
    if let Some(n) = name
        && n != have
    {
        bail!(
            "--name {n}: {} is initialized already, as {have}",
            ctx.data_dir.display()
        );
    }
    if encrypt && !store.identity_is_sealed()? {
        bail!(
            "--encrypt-identity: {} is initialized already, with a plain identity.key (`bbsync identity encrypt` seals it)",
            ctx.data_dir.display()
        );
    }
    Ok(())
}

/// Takes back what [`store_for_invite`] made: the data dir as it was
/// (missing, or empty). Called only when the invite was not redeemed.
fn undo_init(dir: &Path, existed: bool) {
    let r = if existed {
        std::fs::read_dir(dir).and_then(|entries| {
            for e in entries {
                let p = e?.path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
            Ok(())
        })
    } else {
        std::fs::remove_dir_all(dir)
    };
    if let Err(e) = r {
        tracing::warn!("removing the data dir made for the invite: {e}");
    }
}

/// `bbsync clone INVITE`: redeem, then clone as from an address.
fn clone_invite(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be checked here is, before the data dir is made.
    let invite = Invite::parse(&a.addr).map_err(|e| anyhow!("{e}"))?;
    let source_addrs = invite_multiaddrs(&invite)?;
    let extra = parse_peer_addrs(&a.peers)?;
    let selection = Selection {
        skip_config: a.skip_config,
        skip_applets: a.skip_applets,
        only: a.only.clone(),
    };
    let (store, made) = store_for_invite(ctx, &a)?;
    let source_peer = bbsync_node::peer_id_of(&invite.source)
        .ok_or_else(|| anyhow!("the invite names an invalid key"))?;
    let all: Vec<Multiaddr> = source_addrs.iter().chain(&extra).cloned().collect();
    let redeemed = runtime()?.block_on(async {
        let node = start_node(ctx, &store, &all, false)?;
        let h = node.handle();
        let r = async {
            dial_first(&h, &source_addrs).await?;
            anyhow::Ok(bbsync_node::invite::redeem(&h, &store, &invite).await?)
        }
        .await;
        node.stop();
        r
    });
    let role = match redeemed {
        Ok(role) => role,
        Err(e) => {
            if let Some(existed) = made {
                drop(store);
                undo_init(&ctx.data_dir, existed);
            }
            return Err(e);
        }
    };
    if !ctx.quiet && !ctx.json {
        if made.is_some() {
            outln!(
                ctx,
                "initialized {}: instance {} ({})",
                ctx.data_dir.display(),
                store.instance_id(),
                store.identity().name()
            );
        }
        outln!(
            ctx,
            "invite redeemed: {source_peer} trusts this instance as {role}"
        );
    }
    let from_backup = super::backup::restore_for_clone(
        ctx,
        &store,
        a.from_backup.clone(),
        &selection,
        Some(invite.source),
    )?;
    let opts = CloneOptions {
        jobs: a.jobs.max(1),
        selection,
        progress: std::sync::Arc::new(Bar::new(ctx.progress)),
        ..Default::default()
    };
    let report = runtime()?.block_on(async move {
        let node = start_node(ctx, &store, &all, false)?;
        let h = node.handle();
        dial_first(&h, &source_addrs).await?;
        let mut peers = vec![source_peer];
        if !extra.is_empty() {
            peers.extend(dial_all(&h, extra, false).await.unwrap_or_default());
        }
        let r = clone_from(&h, store, &peers, &opts).await;
        node.stop();
        anyhow::Ok(r?)
    })?;
    finish_clone(ctx, report, from_backup.as_ref(), Some(role))
}

/// `bbsync clone`.
pub fn clone(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<ExitCode> {
    if is_invite_text(&a.addr) {
        return clone_invite(ctx, a);
    }
    if a.name.is_some() || a.encrypt_identity {
        bail!(
            "--name and --encrypt-identity go with an invite (`clone INVITE`) into a new data dir"
        );
    }
    let texts: Vec<String> = std::iter::once(a.addr.clone())
        .chain(a.peers.iter().cloned())
        .collect();
    let addrs = parse_peer_addrs(&texts)?;
    let selection = Selection {
        skip_config: a.skip_config,
        skip_applets: a.skip_applets,
        only: a.only,
    };
    let store = super::open(ctx)?;
    // The source named in ADDR (pinned by its PeerId) may also be the host
    // of the backup the clone starts from.
    let source = match addrs[0].iter().last() {
        Some(bbsync_node::AddrProtocol::P2p(p)) => bbsync_node::instance_of(&p),
        _ => None,
    };
    let from_backup =
        super::backup::restore_for_clone(ctx, &store, a.from_backup, &selection, source)?;
    let opts = CloneOptions {
        jobs: a.jobs.max(1),
        selection,
        progress: std::sync::Arc::new(Bar::new(ctx.progress)),
        ..Default::default()
    };
    let report = runtime()?.block_on(async move {
        let node = start_node(ctx, &store, &addrs, false)?;
        let h = node.handle();
        // The first address is the source; the others only help.
        let peers = dial_all(&h, addrs, true).await?;
        let r = clone_from(&h, store, &peers, &opts).await;
        node.stop();
        anyhow::Ok(r?)
    })?;
    finish_clone(ctx, report, from_backup.as_ref(), None)
}

/// Prints a clone's report and decides its exit status.
fn finish_clone(
    ctx: &Ctx,
    report: bbsync_node::CloneReport,
    from_backup: Option<&bbsync_store::backup::restore::RestoreReport>,
    redeemed: Option<bbsync_protocol::Role>,
) -> anyhow::Result<ExitCode> {
    if ctx.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(role) = redeemed {
            v["invite_role"] = serde_json::json!(role.to_string());
        }
        output::json(ctx, &v)?;
    } else if !ctx.quiet || !report.complete {
        for (obj, why) in report.rejected_manifests.iter().take(output::MAX_LISTED) {
            errln!(ctx, "rejected: {obj}: {why}");
        }
        outln!(
            ctx,
            "clone: {} objects recorded ({} already here), {} chunks fetched ({}), {} reused, {} rejected, {} unavailable, in {} ({}); {}",
            report.objects,
            report.already,
            report.chunks_fetched,
            output::size(report.bytes),
            report.chunks_reused,
            report.chunks_rejected,
            report.chunks_unavailable,
            output::secs(report.elapsed),
            output::rate(report.bytes, report.elapsed),
            if report.partial {
                format!(
                    "partial ({} left out by the selection): {}",
                    report.skipped,
                    if report.complete {
                        "every selected object is complete"
                    } else {
                        "INCOMPLETE"
                    }
                )
            } else if report.complete {
                format!(
                    "complete: root matches the source's checkpoint of {} objects",
                    report.checkpoint_count
                )
            } else {
                format!(
                    "INCOMPLETE: the root does not match the source's checkpoint ({} of its objects missing or incomplete here)",
                    report.lacking
                )
            }
        );
    }
    super::backup::print_hybrid(ctx, from_backup, report.chunks_fetched);
    if !report.rejected_manifests.is_empty() {
        bail!(
            "{} manifest(s) were rejected",
            report.rejected_manifests.len()
        );
    }
    if !report.complete {
        bail!("the clone is incomplete (run it again to resume)");
    }
    Ok(ExitCode::SUCCESS)
}
