//! `init` and `id`.

use std::process::ExitCode;

use anyhow::Context as _;
use bbsync_protocol::card_to_string;
use bbsync_store::Store;
use serde_json::json;

use crate::{Ctx, output};

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Human name of this instance [default: the host name].
    #[arg(long)]
    name: Option<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bbsync".to_string())
}

/// `bbsync init`.
pub fn run(ctx: &Ctx, a: InitArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.unwrap_or_else(host_name);
    let store = Store::init(&ctx.data_dir, &name)
        .with_context(|| format!("initializing {}", ctx.data_dir.display()))?;
    let card = card_to_string(&store.card()?);
    if ctx.json {
        output::json(
            ctx,
            &json!({
                "data_dir": ctx.data_dir,
                "instance_id": store.instance_id().to_hex(),
                "name": name,
                "card": card,
            }),
        )?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "initialized {}: instance {} ({name})",
            ctx.data_dir.display(),
            store.instance_id()
        );
        outln!(ctx, "card: {card}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync id`.
pub fn id(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let card = store.card()?;
    let s = card_to_string(&card);
    if ctx.json {
        output::json(
            ctx,
            &json!({
                "instance_id": store.instance_id().to_hex(),
                "name": card.name,
                "x25519": hex_encode(&card.x25519),
                "card": s,
            }),
        )?;
    } else {
        outln!(ctx, "{s}");
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
