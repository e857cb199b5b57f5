//! `serve` and `clone`.

use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use bbsync_node::{
    CloneOptions, Multiaddr, Node, NodeHandle, NodeOptions, PeerId, TorOptions, clone_from,
    fetch_missing, onion,
};
use bbsync_store::Store;
use bbsync_store::sync::Selection;

use crate::{Ctx, output, progress::Bar};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4040; port 0
    /// picks a free port [default: /ip4/0.0.0.0/tcp/4040, or none with
    /// --onion: then the node is reachable only as an onion service].
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Also (or, without --listen, only) serve as a Tor onion service: waits
    /// until the service is published, then prints
    /// /onion3/<address>:<port>/p2p/<PeerId>. The address is stable across
    /// restarts (keys under <data>/tor/).
    #[arg(long)]
    onion: bool,
    /// The onion service's virtual port.
    #[arg(long, value_name = "PORT", default_value_t = 4040, requires = "onion",
          value_parser = clap::value_parser!(u16).range(1..))]
    onion_port: u16,
    /// Follow this upstream as a standby (repeatable; also `follow` in
    /// config.toml): apply its changes as they happen. It is pinned by the
    /// PeerId its address ends in. The first follow of an upstream in no
    /// trust record trusts it as `full`; after that it must stay `full` in
    /// the trust table (a reconnect never adds trust back), or it is not
    /// followed (`status` says why).
    #[arg(long = "follow", value_name = "ADDR")]
    follow: Vec<String>,
}

/// Arguments of `clone`.
#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The source's full address, ending in /p2p/<PeerId> (as `serve` prints it).
    addr: String,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_only(s: &str) -> Result<(String, Option<String>), String> {
    Selection::parse_only(s).map_err(|e| e.to_string())
}

fn parse_addr(s: &str) -> anyhow::Result<Multiaddr> {
    onion::check_text(s).map_err(|e| anyhow!("malformed address {s:?}: {e}"))?;
    s.parse::<Multiaddr>()
        .map_err(|e| anyhow!("malformed address {s:?}: {e}"))
}

/// Tor settings for a node that needs Tor (`needed`), from
/// `--tor-config`, `BBSYNC_TOR_CONFIG` or config.toml's `tor_config`.
fn tor_options(ctx: &Ctx, store: &Store, needed: bool) -> anyhow::Result<Option<TorOptions>> {
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
        _ => store
            .config()
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
fn start_node(
    ctx: &Ctx,
    store: &Arc<Store>,
    addrs: &[Multiaddr],
    force_tor: bool,
) -> anyhow::Result<Node> {
    let needed = force_tor || addrs.iter().any(onion::is_onion);
    let opts = NodeOptions {
        tor: tor_options(ctx, store, needed)?,
        ..Default::default()
    };
    Ok(Node::start_with(store.clone(), opts)?)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `bbsync serve`.
pub fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let listen = if a.listen.is_empty() && !a.onion {
        vec!["/ip4/0.0.0.0/tcp/4040".to_string()]
    } else {
        a.listen.clone()
    };
    let addrs = listen
        .iter()
        .map(|s| parse_addr(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(bad) = addrs.iter().find(|a| onion::is_onion(a)) {
        bail!(
            "cannot --listen on {bad}: use --onion [--onion-port PORT] to serve as an onion service"
        );
    }
    if a.onion && !bbsync_node::TOR_SUPPORTED {
        bail!("this bbsync was built without Tor (cargo feature `tor`): --onion needs it");
    }
    let store = super::open(ctx)?;
    let mut follow = a.follow.clone();
    follow.extend(store.config().follow.iter().cloned());
    follow.dedup();
    let follow = parse_peer_addrs(&follow)?;
    // Other commands on this data dir now come through the control socket.
    let _control = crate::control::listen(&ctx.data_dir, store.clone())?;
    let _backups = super::backup::start_scheduler(ctx, &store)?;
    runtime()?.block_on(async move {
        let node = start_node(ctx, &store, &follow, a.onion)?;
        let h = node.handle();
        for addr in addrs {
            h.listen(addr).await?;
        }
        if a.onion {
            h.listen_onion(a.onion_port).await?;
        }
        // Every interface address of a wildcard listener arrives together.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let full: Vec<String> = h
            .listen_addrs()
            .await?
            .into_iter()
            .map(|addr| format!("{addr}/p2p/{}", h.peer_id()))
            .collect();
        if ctx.json {
            let onion: Option<&String> = full.iter().find(|a| a.starts_with("/onion3/"));
            output::json(
                ctx,
                &serde_json::json!({
                    "peer_id": h.peer_id().to_string(),
                    "addresses": full,
                    "onion": onion,
                }),
            )?;
        } else {
            for addr in &full {
                outln!(ctx, "{addr}");
            }
        }
        let followers: Vec<_> = follow
            .into_iter()
            .map(|up| {
                tokio::spawn(bbsync_node::follow(
                    h.clone(),
                    store.clone(),
                    up,
                    bbsync_node::FollowOptions::default(),
                ))
            })
            .collect();
        tracing::info!("serving; Ctrl-C or SIGTERM stops");
        shutdown_signal().await;
        for f in followers {
            f.abort();
        }
        tracing::info!("stopping");
        node.stop();
        Ok(ExitCode::SUCCESS)
    })
}

/// Parses full peer addresses (each must end in /p2p/<PeerId>).
fn parse_peer_addrs(texts: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    texts
        .iter()
        .map(|text| {
            let addr = parse_addr(text)?;
            if !matches!(addr.iter().last(), Some(bbsync_node::AddrProtocol::P2p(_))) {
                bail!("address {text} must end in /p2p/<PeerId> (the form `bbsync serve` prints)");
            }
            Ok(addr)
        })
        .collect()
}

/// Dials every address (30 s each). With `first_required`, failing to reach
/// the first one fails; the others (and all, without it) are skipped with a
/// warning. Errors when none answers.
async fn dial_all(
    h: &NodeHandle,
    addrs: Vec<Multiaddr>,
    first_required: bool,
) -> anyhow::Result<Vec<PeerId>> {
    let n = addrs.len();
    let mut peers = Vec::new();
    let mut last = None;
    for (i, addr) in addrs.into_iter().enumerate() {
        let limit = h.dial_timeout(&addr);
        let dialed = tokio::time::timeout(limit, h.dial(addr.clone()))
            .await
            .map_err(|_| {
                anyhow!(
                    "cannot reach {addr}: no answer within {} s",
                    limit.as_secs()
                )
            })
            .and_then(|r| r.map_err(anyhow::Error::from));
        match dialed {
            Ok(p) => peers.push(p),
            Err(e) if (i == 0 && first_required) || n == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("not used as a source: {e:#}");
                last = Some(e);
            }
        }
    }
    match (peers.is_empty(), last) {
        (true, Some(e)) => Err(e.context("none of the sources could be reached")),
        _ => Ok(peers),
    }
}

/// `bbsync fetch-missing`.
pub fn fetch_missing_cmd(ctx: &Ctx, a: FetchMissingArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let texts = if a.from.is_empty() {
        store.config().peers.clone()
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

/// `bbsync clone`.
pub fn clone(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<ExitCode> {
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
    if ctx.json {
        output::json(ctx, &report)?;
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
    super::backup::print_hybrid(ctx, from_backup.as_ref(), report.chunks_fetched);
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
