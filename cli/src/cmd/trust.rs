//! `trust add | remove | list`.

use std::process::ExitCode;

use bbsync_protocol::Role;
use serde_json::json;

use crate::{Ctx, output};

/// Trust subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TrustCommand {
    /// Trust an instance by its card string (from `bbsync id` on that instance).
    /// (`bbsync invite create` on this node and `bbsync clone INVITE` on the
    /// other do this without handing cards around.)
    #[command(
        after_help = "Examples:\n  bbsync trust add bbsync1... --role full\n  bbsync trust add \"$(ssh mirror bbsync id)\" --role blind"
    )]
    Add {
        /// The card string (`bbsync1...`).
        card: String,
        /// `full` may receive content keys; `blind` only holds ciphertext.
        #[arg(long, default_value = "full", value_parser = parse_role)]
        role: Role,
    },
    /// Stop trusting an instance (id or unique prefix of at least 8 hex digits).
    #[command(after_help = "Example:\n  bbsync trust remove 3f2a1b2c && bbsync rekey --rotate")]
    Remove {
        /// Instance id.
        id: String,
    },
    /// List trusted instances.
    #[command(after_help = "Examples:\n  bbsync trust list\n  bbsync --json trust list")]
    List,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: bbsync_protocol::Error| e.to_string())
}

/// Runs a trust subcommand.
pub fn run(ctx: &Ctx, t: TrustCommand) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    match t {
        TrustCommand::Add { card, role } => {
            let (card, existed) = store.trust_add(&card, role)?;
            if ctx.json {
                output::json(
                    ctx,
                    &json!({
                        "instance_id": card.instance.to_hex(),
                        "name": card.name,
                        "role": role.to_string(),
                        "updated": existed,
                    }),
                )?;
            } else if !ctx.quiet {
                let verb = if existed { "updated" } else { "trusted" };
                outln!(ctx, "{verb} {} ({}) as {role}", card.name, card.instance);
            }
        }
        TrustCommand::Remove { id } => {
            let id = store.resolve_instance(&id)?;
            store.trust_remove(&id)?;
            if ctx.json {
                output::json(ctx, &json!({ "removed": id.to_hex() }))?;
            } else if !ctx.quiet {
                outln!(ctx, "removed {id}");
            }
        }
        TrustCommand::List => {
            let list = store.trust_list()?;
            if ctx.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(c, r)| {
                        json!({
                            "instance_id": c.instance.to_hex(),
                            "name": c.name,
                            "role": r.role.to_string(),
                            "addresses": c.addresses,
                            "added_at_ms": r.added_at_ms,
                        })
                    })
                    .collect();
                output::json(ctx, &v)?;
            } else if list.is_empty() {
                outln!(ctx, "no trusted instances");
            } else {
                outln!(ctx, "{:<64}  {:<5}  NAME", "INSTANCE", "ROLE");
                for (c, r) in list {
                    outln!(ctx, "{}  {:<5}  {}", c.instance, r.role.to_string(), c.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
