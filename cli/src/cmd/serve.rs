//! `serve`, `promote` and `demote`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bbsync_node::{
    Multiaddr,
    dial::{parse_addr, parse_peer_addrs},
    onion,
};
use bbsync_protocol::{Invite, invite::is_invite_text};
use bbsync_store::{
    Store, StoreError,
    backup::{
        RepoLocation,
        schedule::{self, Scheduled},
    },
    live::{self, LiveTree},
};

use super::net::{check_as_made, invite_multiaddrs, runtime, start_node};
use crate::{Ctx, config::CliConfig, output};

/// The addresses the `serve` of this process listens on (without
/// `/p2p/`), onion first, loopback last: what `invite create` puts in an
/// invite when it runs inside `serve` (through the control socket).
static SERVING: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The addresses this process serves on (empty unless it runs `serve`).
pub fn serving_addresses() -> Vec<String> {
    SERVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Orders listen addresses for an invite: onion, then others, loopback
/// last (a loopback address only helps a node on the same host).
fn invite_order(addrs: &[Multiaddr]) -> Vec<String> {
    use bbsync_node::AddrProtocol as P;
    let rank = |a: &Multiaddr| match a.iter().next() {
        Some(P::Onion3(_)) => 0,
        Some(P::Ip4(ip)) if ip.is_loopback() => 2,
        Some(P::Ip6(ip)) if ip.is_loopback() => 2,
        _ => 1,
    };
    let mut v: Vec<&Multiaddr> = addrs.iter().collect();
    v.sort_by_key(|a| rank(a));
    v.into_iter()
        .map(ToString::to_string)
        .take(bbsync_protocol::invite::MAX_INVITE_ADDRESSES)
        .collect()
}

/// An upstream given to `--follow` (or `follow` in config.toml): an
/// address ending in /p2p/<PeerId>, or an invite string.
enum FollowTarget {
    Addr(Multiaddr),
    Invite(Invite),
}

fn parse_follow(texts: &[String]) -> anyhow::Result<Vec<FollowTarget>> {
    texts
        .iter()
        .map(|t| {
            if is_invite_text(t) {
                Invite::parse(t)
                    .map(FollowTarget::Invite)
                    .map_err(|e| anyhow!("--follow: {e}"))
            } else {
                Ok(FollowTarget::Addr(
                    parse_peer_addrs(std::slice::from_ref(t))?.remove(0),
                ))
            }
        })
        .collect()
}

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
    /// followed (`status` says why). An invite string (`bbsync invite
    /// create` on the upstream) works too: it is redeemed before the first
    /// follow, so the upstream trusts this node; later starts with the
    /// same string do not redeem it again.
    #[arg(long = "follow", value_name = "ADDR|INVITE")]
    follow: Vec<String>,
    /// With --follow INVITE and a missing or empty data dir: initialize it
    /// with this instance name [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Watch this BBS tree (the primary's; also `watch` in config.toml):
    /// import each change as it happens, a file once it is completely
    /// written, and scan it whole at start-up so nothing written while the
    /// node was down is missed.
    #[arg(long, value_name = "DIR")]
    watch: Option<PathBuf>,
    /// With --follow: keep this BBS tree equal to the upstream's (a hot
    /// standby; also `tree` in config.toml): each applied change is written
    /// atomically, deletions applied; files bbsync did not write are never
    /// replaced or deleted (a conflict in `status` and the log). After
    /// `bbsync promote` the node watches it instead.
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// The layout of the tree of --watch or --tree: a built-in one (`axon`;
    /// `bbsync` is bbsync's own tree) or a layout file [env: BBSYNC_LAYOUT;
    /// config.toml: layout; default: bbsync's own tree].
    #[arg(long, value_name = "NAME|FILE")]
    layout: Option<String>,
    /// Also serve the admin HTTP API, the web dashboard and /metrics on
    /// this address (e.g. 127.0.0.1:8080; port 0 picks a free one) [config
    /// `http_listen`; default: no HTTP]. Tokens: `bbsync http token`;
    /// dashboard login: `bbsync ui`.
    #[arg(long = "http", value_name = "ADDR")]
    http: Option<String>,
    /// Allow --http on an address other than loopback (the API is then
    /// reachable from the network, behind its token only; plain HTTP: put
    /// a TLS proxy in front) [config `http_allow_remote`].
    #[arg(long)]
    http_allow_remote: bool,
}

/// Arguments of `promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The BBS tree the node watches from now on [default: the --tree of
    /// the running `serve`, else `tree` in config.toml].
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
}

/// A change of role asked of a running `serve` (through the control
/// socket), with where to answer once it is done (or why it failed).
#[derive(Debug)]
struct RoleChange {
    /// `true`: watch the tree (promote); `false`: stop watching it (demote).
    promote: bool,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// What `promote` and `demote` reach inside a running `serve` that keeps a
/// live tree and follows an upstream (a standby, or a promoted one): the
/// tree, and where to ask for the change of role.
static PROMOTER: Mutex<Option<(PathBuf, tokio::sync::mpsc::UnboundedSender<RoleChange>)>> =
    Mutex::new(None);

/// Asks the running `serve` for a change of role and waits until it is done.
fn change_role(
    tx: &tokio::sync::mpsc::UnboundedSender<RoleChange>,
    promote: bool,
    tree: &Path,
) -> anyhow::Result<()> {
    let (done, answer) = tokio::sync::oneshot::channel();
    let stopping = || {
        anyhow!(
            "the serving node is stopping; its next `serve` takes the role recorded now (tree {})",
            tree.display()
        )
    };
    tx.send(RoleChange { promote, done })
        .map_err(|_| stopping())?;
    answer
        .blocking_recv()
        .map_err(|_| stopping())?
        .map_err(|e| anyhow!("{e}"))
}

/// The live tree of `serve` (`--watch`, `--tree`, config.toml, or the
/// promotion recorded in the data dir), and whether this node is its
/// primary (watching it) rather than a standby (writing it).
fn live_tree(
    ctx: &Ctx,
    store: &Store,
    a: &ServeArgs,
    following: bool,
) -> anyhow::Result<Option<(Arc<LiveTree>, bool)>> {
    let config = crate::config::of(ctx)?;
    let cfg = &config.cli;
    let in_data = |p: &Path| ctx.data_dir.join(p);
    let watch = a
        .watch
        .as_ref()
        .map(|p| ctx.path(p))
        .or_else(|| cfg.watch.as_deref().map(in_data));
    let tree = a
        .tree
        .as_ref()
        .map(|p| ctx.path(p))
        .or_else(|| cfg.tree.as_deref().map(in_data));
    let promoted = live::load_promotion(&ctx.data_dir)?;
    let (dir, primary) = match (watch, tree, promoted) {
        (Some(w), Some(t), _) if w != t => bail!(
            "--watch {} and --tree {}: a node keeps one live tree (--watch on the primary, --tree on a standby)",
            w.display(),
            t.display()
        ),
        (Some(w), _, _) => (w, true),
        (None, Some(t), Some(p)) => {
            tracing::warn!(
                "promoted at {} ms: watching {} as the primary (not as a standby's tree)",
                p.since_ms,
                t.display()
            );
            (t, true)
        }
        (None, Some(t), None) => {
            if !following {
                bail!(
                    "--tree {}: a standby's tree is written from its upstream: give --follow ADDR too (a primary watches its tree with --watch DIR)",
                    t.display()
                );
            }
            (t, false)
        }
        (None, None, Some(p)) => (p.tree, true),
        (None, None, None) => return Ok(None),
    };
    if dir.starts_with(&ctx.data_dir) || ctx.data_dir.starts_with(&dir) {
        bail!(
            "{}: the live tree and the data dir {} must not contain one another",
            dir.display(),
            ctx.data_dir.display()
        );
    }
    let layout = super::import::layout(ctx, store, a.layout.as_deref())?;
    let tree = LiveTree::open(&dir, layout)
        .with_context(|| format!("opening the live tree {}", dir.display()))?;
    Ok(Some((Arc::new(tree), primary)))
}

/// A standby's tree before the follower starts: a tree that was a
/// primary's (an old primary rejoining) is imported once, so that what was
/// written into it and never imported is kept.
fn prepare_standby_tree(store: &Store, tree: &LiveTree) -> anyhow::Result<()> {
    if tree.marker()?.is_some_and(|m| m.role == "primary") {
        tracing::warn!(
            "{} was a primary's tree: importing what it holds once before following",
            tree.root().display()
        );
        store.import_live(
            tree,
            &|_| false,
            live::Unrecorded::Keep,
            &bbsync_store::progress::NoProgress,
        )?;
    }
    // The follower brings the tree in line with the store before its
    // first page (retried like a page when it fails).
    live::update_status(|s| {
        s.tree = Some(tree.root().to_path_buf());
        s.role = "standby".into();
    });
    Ok(())
}

/// `bbsync demote`: on a stopped node, forgets the promotion; inside a
/// running `serve` that follows an upstream, also stops watching the tree,
/// which its upstream's changes are written into from then on.
pub fn demote(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    // The data dir must be one (a clear error otherwise).
    let _store = super::open(ctx)?;
    let Some(p) = live::load_promotion(&ctx.data_dir)? else {
        bail!("this node was not promoted (nothing to demote)");
    };
    if ctx.store.is_none() {
        live::remove_promotion(&ctx.data_dir)?;
        outln!(
            ctx,
            "demoted: `serve --follow ADDR --tree {}` keeps the tree as a standby again",
            p.tree.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let running = PROMOTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let Some((tree, tx)) = running else {
        bail!(
            "the serving node follows no upstream: demoted, nothing would write {} any more; stop it, then `bbsync demote` and `bbsync serve --follow ADDR --tree {}`",
            p.tree.display(),
            p.tree.display()
        );
    };
    live::remove_promotion(&ctx.data_dir)?;
    change_role(&tx, false, &tree)?;
    outln!(
        ctx,
        "demoted: this node is a standby again: {} is no longer watched, its upstream's changes are written into it (a restart keeps the role)",
        tree.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bbsync promote`.
pub fn promote(ctx: &Ctx, a: PromoteArgs) -> anyhow::Result<ExitCode> {
    // The data dir must be one (a clear error otherwise).
    let _store = super::open(ctx)?;
    if let Some(p) = live::load_promotion(&ctx.data_dir)? {
        bail!(
            "this node is the primary already (promoted at {} ms, watching {})",
            p.since_ms,
            p.tree.display()
        );
    }
    let running = PROMOTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let given = a.tree.as_ref().map(|p| ctx.path(p));
    let tree = match (&running, given) {
        (Some((t, _)), Some(g)) if std::fs::canonicalize(&g).ok().as_ref() != Some(t) => bail!(
            "--tree {}: the serving node keeps {} (promote that one, or stop it first)",
            g.display(),
            t.display()
        ),
        (Some((t, _)), _) => t.clone(),
        (None, Some(g)) => g,
        (None, None) => match &crate::config::of(ctx)?.cli.tree {
            Some(t) => ctx.data_dir.join(t),
            None => bail!(
                "no tree to watch: give --tree DIR (the standby's BBS tree), or run it while `serve --tree DIR` runs"
            ),
        },
    };
    let watching = live::status()
        .lock()
        .ok()
        .filter(|s| s.role == "primary")
        .and_then(|s| s.tree.clone());
    if let Some(t) = watching {
        bail!(
            "this node is the primary already (it watches {})",
            t.display()
        );
    }
    if ctx.store.is_some() && running.is_none() {
        bail!(
            "the serving node keeps no standby tree (it was started without --tree): nothing to promote"
        );
    }
    live::save_promotion(
        &ctx.data_dir,
        &live::Promotion {
            role: "primary".into(),
            tree: tree.clone(),
            since_ms: bbsync_protocol::now_ms(),
        },
    )?;
    match running {
        Some((_, tx)) => {
            change_role(&tx, true, &tree)?;
            outln!(
                ctx,
                "promoted: this node is the primary now, watching {} (a restart keeps the role)",
                tree.display()
            );
        }
        None => outln!(
            ctx,
            "promoted: `bbsync serve` watches {} as the primary from now on",
            tree.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The HTTP address of `serve`: `--http`, else config `http_listen`;
/// a non-loopback one only when allowed.
fn http_listen(a: &ServeArgs, cfg: &CliConfig) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(text) = a.http.clone().or_else(|| cfg.http_listen.clone()) else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        anyhow!("--http {text}: not an IP address and port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    })?;
    if !bbsync_node::http::is_loopback(&addr) {
        if !(a.http_allow_remote || cfg.http_allow_remote) {
            bail!(
                "--http {addr}: not a loopback address; the admin API would be reachable from the network (pass --http-allow-remote, or http_allow_remote = true in config.toml, to mean it)"
            );
        }
        tracing::warn!(
            "the admin HTTP API listens on {addr}, reachable from the network: plain HTTP behind a token only (put a TLS proxy in front)"
        );
    }
    Ok(Some(addr))
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

/// `bbsync serve`: checks the command line and the config, opens (or, to
/// follow by invite, makes) the store, starts the live tree, the control
/// socket and the backup plan, then runs the node until Ctrl-C or SIGTERM.
pub fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let addrs = serve_listen_addrs(&a)?;
    // The command line's upstreams are checked before anything is made.
    let given = parse_follow(&a.follow)?;
    let store = serve_store(ctx, &a, &given)?;
    let config = crate::config::of(ctx)?;
    let http = http_listen(&a, &config.cli)?;
    let mut follow = a.follow.clone();
    follow.extend(config.node.follow.iter().cloned());
    follow.dedup();
    let follow = parse_follow(&follow)?;
    // Tor is needed when any upstream can be reached only as an onion.
    let mut upstream_addrs = Vec::new();
    for f in &follow {
        match f {
            FollowTarget::Addr(a) => upstream_addrs.push(a.clone()),
            FollowTarget::Invite(i) => upstream_addrs.extend(invite_multiaddrs(i)?),
        }
    }
    let live = live_tree(ctx, &store, &a, !follow.is_empty())?;
    let (watcher, promote_rx) = start_live(&store, live.as_ref(), !follow.is_empty())?;
    let follow_tree = live.as_ref().map(|(t, _)| t.clone());
    // Other commands on this data dir now come through the control socket.
    let _control = crate::control::listen(
        &ctx.data_dir,
        crate::control::Served {
            store: store.clone(),
            config: config.clone(),
        },
    )?;
    let backups = backup_plan(ctx, &config)?;
    runtime()?.block_on(async move {
        let scheduler = bbsync_node::schedule::spawn(store.clone(), backups);
        let node = start_node(ctx, &store, &upstream_addrs, a.onion)?;
        let h = node.handle();
        for addr in addrs {
            h.listen(addr).await?;
        }
        if a.onion {
            h.listen_onion(a.onion_port).await?;
        }
        // Every interface address of a wildcard listener arrives together.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listening = h.listen_addrs().await?;
        *SERVING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = invite_order(&listening);
        let full: Vec<String> = listening
            .into_iter()
            .map(|addr| format!("{addr}/p2p/{}", h.peer_id()))
            .collect();
        let http_server = match http {
            Some(listen) => Some(
                bbsync_node::http::serve(
                    store.clone(),
                    h.clone(),
                    bbsync_node::http::HttpOptions {
                        listen,
                        metrics_without_auth: config.cli.metrics_without_auth,
                        node_addrs: full.clone(),
                        node_config: config.node.clone(),
                        backup_config: config.backup.clone(),
                    },
                )
                .await?,
            ),
            None => None,
        };
        print_serving(ctx, &h, &full, http_server.as_ref())?;
        let followers = start_followers(&h, &store, follow, follow_tree);
        tracing::info!("serving; Ctrl-C or SIGTERM stops");
        let watcher = run_until_stopped(&store, live.as_ref(), watcher, promote_rx).await?;
        drop(watcher);
        drop(scheduler);
        for f in followers {
            f.abort();
        }
        tracing::info!("stopping");
        if let Some(s) = http_server {
            s.stop();
        }
        node.stop();
        Ok(ExitCode::SUCCESS)
    })
}

/// The addresses `serve` listens on (`--listen`, default all interfaces on
/// port 4040 unless `--onion`), checked.
fn serve_listen_addrs(a: &ServeArgs) -> anyhow::Result<Vec<Multiaddr>> {
    let listen = if a.listen.is_empty() && !a.onion {
        vec!["/ip4/0.0.0.0/tcp/4040".to_string()]
    } else {
        a.listen.clone()
    };
    let addrs = listen
        .iter()
        .map(|s| parse_addr(s).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(bad) = addrs.iter().find(|a| onion::is_onion(a)) {
        bail!(
            "cannot --listen on {bad}: use --onion [--onion-port PORT] to serve as an onion service"
        );
    }
    if a.onion && !bbsync_node::TOR_SUPPORTED {
        bail!("this bbsync was built without Tor (cargo feature `tor`): --onion needs it");
    }
    Ok(addrs)
}

/// The store `serve` serves: the data dir's, or, when it follows by invite
/// (`given`) and the data dir is not one yet, a new one.
fn serve_store(ctx: &Ctx, a: &ServeArgs, given: &[FollowTarget]) -> anyhow::Result<Arc<Store>> {
    let by_invite = given.iter().any(|f| matches!(f, FollowTarget::Invite(_)));
    let new_dir = by_invite
        && ctx.store.is_none()
        && matches!(
            Store::identity_sealed(&ctx.data_dir),
            Err(StoreError::NotInitialized(_))
        );
    if !new_dir {
        let store = super::open(ctx)?;
        check_as_made(ctx, &store, a.name.as_deref(), false)?;
        return Ok(store);
    }
    let name = super::init::new_name(a.name.clone());
    let store = Store::init(&ctx.data_dir, &name)
        .with_context(|| format!("initializing {}", ctx.data_dir.display()))?;
    tracing::warn!(
        "initialized {}: instance {} ({name}), to follow by invite",
        ctx.data_dir.display(),
        store.instance_id()
    );
    Ok(Arc::new(store))
}

/// Where `promote` and `demote` send a change of role to a running `serve`.
type RoleChanges = tokio::sync::mpsc::UnboundedReceiver<RoleChange>;

/// Starts the live tree of `serve`, if any: a primary's is watched, a
/// standby's prepared for its follower. A node that keeps a tree and
/// follows an upstream (`following`) can change its role while it runs
/// (`promote`, `demote`): then the receiver of those changes.
fn start_live(
    store: &Arc<Store>,
    live: Option<&(Arc<LiveTree>, bool)>,
    following: bool,
) -> anyhow::Result<(Option<crate::live::Watcher>, Option<RoleChanges>)> {
    let Some((tree, primary)) = live else {
        return Ok((None, None));
    };
    let mut watcher = None;
    if *primary {
        watcher = Some(crate::live::start(store.clone(), tree.clone())?);
        if following {
            tracing::warn!(
                "primary with upstreams: their changes are still applied (and written into the tree), so that what an old primary wrote and never sent arrives when it comes back"
            );
        }
    } else {
        prepare_standby_tree(store, tree)?;
    }
    let mut promote_rx = None;
    if !primary || following {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *PROMOTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((tree.root().to_path_buf(), tx));
        promote_rx = Some(rx);
    }
    Ok((watcher, promote_rx))
}

/// Prints where `serve` is reachable (its full addresses, the HTTP URL).
fn print_serving(
    ctx: &Ctx,
    h: &bbsync_node::NodeHandle,
    full: &[String],
    http_server: Option<&bbsync_node::http::HttpServer>,
) -> anyhow::Result<()> {
    if ctx.json {
        let onion: Option<&String> = full.iter().find(|a| a.starts_with("/onion3/"));
        let mut v = serde_json::json!({
            "peer_id": h.peer_id().to_string(),
            "addresses": full,
            "onion": onion,
        });
        if let Some(s) = http_server {
            v["http"] = serde_json::json!(format!("http://{}/", s.addr));
        }
        output::json(ctx, &v)?;
    } else {
        for addr in full {
            outln!(ctx, "{addr}");
        }
        if let Some(s) = http_server {
            outln!(ctx, "http: http://{}/", s.addr);
        }
    }
    Ok(())
}

/// One follower task per upstream (writing into `tree` when the node keeps
/// a standby's tree).
fn start_followers(
    h: &bbsync_node::NodeHandle,
    store: &Arc<Store>,
    follow: Vec<FollowTarget>,
    tree: Option<Arc<LiveTree>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let opts = || bbsync_node::FollowOptions {
        tree: tree.clone(),
        ..Default::default()
    };
    follow
        .into_iter()
        .map(|up| match up {
            FollowTarget::Addr(addr) => {
                tokio::spawn(bbsync_node::follow(h.clone(), store.clone(), addr, opts()))
            }
            FollowTarget::Invite(invite) => tokio::spawn(bbsync_node::follow_invite(
                h.clone(),
                store.clone(),
                invite,
                opts(),
            )),
        })
        .collect()
}

/// Serves until Ctrl-C or SIGTERM, carrying out the changes of role that
/// `promote` and `demote` send; returns the tree's watcher of the moment.
async fn run_until_stopped(
    store: &Arc<Store>,
    live: Option<&(Arc<LiveTree>, bool)>,
    mut watcher: Option<crate::live::Watcher>,
    mut promote_rx: Option<RoleChanges>,
) -> anyhow::Result<Option<crate::live::Watcher>> {
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let promoted = async {
            match promote_rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return Ok(watcher),
            Some(change) = promoted => {
                let Some((tree, _)) = live else { continue };
                let result = change_role_now(store, tree, change.promote, &mut watcher).await?;
                let _ = change.done.send(result);
            }
        }
    }
}

/// Carries out one change of role inside `serve`: promote watches `tree`,
/// demote stops watching it. The error is the line `promote`/`demote`
/// print.
async fn change_role_now(
    store: &Arc<Store>,
    tree: &Arc<LiveTree>,
    promote: bool,
    watcher: &mut Option<crate::live::Watcher>,
) -> anyhow::Result<Result<(), String>> {
    let (store, tree) = (store.clone(), tree.clone());
    if promote {
        tracing::warn!(
            "promoted: watching {} as the primary",
            tree.root().display()
        );
        return Ok(
            match tokio::task::spawn_blocking(move || crate::live::start(store, tree)).await? {
                Ok(w) => {
                    *watcher = Some(w);
                    Ok(())
                }
                Err(e) => {
                    let e = format!(
                        "promoted, but watching the tree failed: {}",
                        crate::one_line(&e)
                    );
                    tracing::error!("{e}");
                    Err(e)
                }
            },
        );
    }
    tracing::warn!(
        "demoted: {} is a standby's tree again (no longer watched)",
        tree.root().display()
    );
    let stopping = watcher.take();
    Ok(
        tokio::task::spawn_blocking(move || crate::live::stop(&store, &tree, stopping))
            .await?
            .map_err(|e| crate::one_line(&e)),
    )
}

/// The scheduled backups of config.toml (`[[backup]]`) that `serve` runs:
/// an entry without `repo` backs up into `BBSYNC_REPO`, else the config's
/// `backup_repo`, else `<data>/backup`. A bad entry stops `serve` here,
/// before it starts.
fn backup_plan(ctx: &Ctx, config: &crate::config::Config) -> anyhow::Result<Vec<Scheduled>> {
    let default = RepoLocation::resolve(
        ctx.env("BBSYNC_REPO"),
        &ctx.cwd,
        || Ok(config.backup.clone()),
        &ctx.data_dir,
    )?;
    Ok(schedule::plan(&config.backup, &default, &ctx.data_dir)?)
}
