//! `http token` and `ui`: the credentials of the admin HTTP API
//! (`serve --http`, see `bbsync_node::http`).

use std::process::ExitCode;

use anyhow::bail;
use bbsync_node::http;
use serde_json::json;

use crate::{Ctx, output};

/// `http` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HttpCommand {
    /// Print the admin API token (created on first use in <data>/http.token, owner-only).
    #[command(
        after_help = "Examples:\n  curl -H \"Authorization: Bearer $(bbsync http token)\" http://127.0.0.1:8080/api/v1/status\n  bbsync http token --read-only   # for Prometheus\n  bbsync http token --rotate      # the old tokens stop working at once"
    )]
    Token {
        /// Replace both tokens (admin and read-only) with new ones.
        #[arg(long)]
        rotate: bool,
        /// Print the read-only token (reads and /metrics only) instead.
        #[arg(long)]
        read_only: bool,
    },
}

/// `bbsync http ...`.
pub fn run(ctx: &Ctx, c: HttpCommand) -> anyhow::Result<ExitCode> {
    let HttpCommand::Token { rotate, read_only } = c;
    // The data dir must be a bbsync data dir (no token file elsewhere).
    let store = super::open(ctx)?;
    let tokens = if rotate {
        let t = http::auth::rotate(store.dir())?;
        http::reload_tokens(store.dir())?;
        t
    } else {
        http::auth::load_or_create(store.dir())?
    };
    if ctx.json {
        output::json(
            ctx,
            &json!({
                "admin": tokens.admin.as_str(),
                "read": tokens.read.as_str(),
                "file": http::auth::token_path(store.dir()),
                "rotated": rotate,
            }),
        )?;
    } else if read_only {
        outln!(ctx, "{}", tokens.read.as_str());
    } else {
        outln!(ctx, "{}", tokens.admin.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync ui`: a one-time login URL of the running `serve --http`.
pub fn ui(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if ctx.store.is_none() {
        bail!(
            "no node is serving {} (start `bbsync serve --http 127.0.0.1:8080`, or set http_listen in config.toml)",
            ctx.data_dir.display()
        );
    }
    let store = super::open(ctx)?;
    let url = http::login_url(store.dir())?;
    if ctx.json {
        output::json(ctx, &json!({ "url": url.as_str() }))?;
    } else {
        outln!(ctx, "{}", url.as_str());
        if !ctx.quiet {
            errln!(
                ctx,
                "open this URL in a browser on this host within 10 minutes; it works once"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
