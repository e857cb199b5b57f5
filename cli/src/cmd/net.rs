//! `serve` and `clone`.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use bbsync_node::{CloneOptions, Multiaddr, Node, clone_from};

use crate::{Ctx, output};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4040; port 0
    /// picks a free port.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "/ip4/0.0.0.0/tcp/4040"
    )]
    listen: Vec<String>,
}

/// Arguments of `clone`.
#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The source's full address, ending in /p2p/<PeerId> (as `serve` prints it).
    addr: String,
    /// Another source to fetch chunks from (repeatable); its card must prove
    /// its peer id too. A chunk one source fails to deliver is asked of another.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
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

fn parse_addr(s: &str) -> anyhow::Result<Multiaddr> {
    s.parse::<Multiaddr>()
        .map_err(|e| anyhow!("malformed address {s:?}: {e}"))
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
    let addrs = a
        .listen
        .iter()
        .map(|s| parse_addr(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = super::open(ctx)?;
    // Other commands on this data dir now come through the control socket.
    let _control = crate::control::listen(&ctx.data_dir, store.clone())?;
    runtime()?.block_on(async move {
        let node = Node::start(store)?;
        let h = node.handle();
        for addr in addrs {
            h.listen(addr).await?;
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
            output::json(
                ctx,
                &serde_json::json!({ "peer_id": h.peer_id().to_string(), "addresses": full }),
            )?;
        } else {
            for addr in &full {
                outln!(ctx, "{addr}");
            }
        }
        tracing::info!("serving; Ctrl-C or SIGTERM stops");
        shutdown_signal().await;
        tracing::info!("stopping");
        node.stop();
        Ok(ExitCode::SUCCESS)
    })
}

/// `bbsync clone`.
pub fn clone(ctx: &Ctx, a: CloneArgs) -> anyhow::Result<ExitCode> {
    let mut addrs = vec![parse_addr(&a.addr)?];
    for p in &a.peers {
        addrs.push(parse_addr(p)?);
    }
    for (addr, text) in addrs.iter().zip(std::iter::once(&a.addr).chain(&a.peers)) {
        if !matches!(addr.iter().last(), Some(bbsync_node::AddrProtocol::P2p(_))) {
            bail!("address {text} must end in /p2p/<PeerId> (the form `bbsync serve` prints)");
        }
    }
    let store = super::open(ctx)?;
    let opts = CloneOptions {
        jobs: a.jobs.max(1),
        ..Default::default()
    };
    let report = runtime()?.block_on(async move {
        let node = Node::start(store.clone())?;
        let h = node.handle();
        let mut peers = Vec::new();
        for (i, addr) in addrs.into_iter().enumerate() {
            let dialed = tokio::time::timeout(Duration::from_secs(30), h.dial(addr.clone()))
                .await
                .map_err(|_| anyhow!("cannot reach {addr}: no answer within 30 s"))
                .and_then(|r| r.map_err(anyhow::Error::from));
            match dialed {
                Ok(p) => peers.push(p),
                // The first address is the source; the others only help.
                Err(e) if i == 0 => return Err(e),
                Err(e) => tracing::warn!("not used as a source: {e:#}"),
            }
        }
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
            if report.complete {
                format!(
                    "complete: root matches the source's checkpoint of {} objects",
                    report.checkpoint_count
                )
            } else {
                "INCOMPLETE: the root does not match the source's checkpoint".to_string()
            }
        );
    }
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
