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
    /// Seal identity.key with a passphrase (argon2id + AES-256-GCM): from
    /// --passphrase-file, BBSYNC_PASSPHRASE, or asked twice on the terminal.
    /// Every later command that opens the data dir asks for it (`serve`
    /// once, at start).
    #[arg(long)]
    encrypt_identity: bool,
}

/// The name of a new instance: `name`, else the host name.
pub fn new_name(name: Option<String>) -> String {
    name.unwrap_or_else(host_name)
}

/// The passphrase for a new sealed identity in `ctx.data_dir`.
pub fn new_passphrase(ctx: &Ctx) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let what = ctx.data_dir.join("identity.key").display().to_string();
    crate::passphrase::get(ctx, &what, true)
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
    let name = new_name(a.name);
    let pass = if a.encrypt_identity {
        Some(new_passphrase(ctx)?)
    } else {
        None
    };
    let store = Store::init_sealed(&ctx.data_dir, &name, pass.as_deref().map(String::as_str))
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
                "identity_encrypted": a.encrypt_identity,
            }),
        )?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "initialized {}: instance {} ({name})",
            ctx.data_dir.display(),
            store.instance_id()
        );
        if a.encrypt_identity {
            outln!(ctx, "identity.key is sealed with the passphrase");
        }
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
