//! `invite create | list | revoke`: one-time invites that a new node
//! redeems with `clone INVITE` or `serve --follow INVITE`.

use std::{process::ExitCode, time::Duration};

use anyhow::bail;
use bbsync_node::{AddrProtocol, Multiaddr};
use bbsync_protocol::{Role, invite::MAX_INVITE_ADDRESSES, now_ms};
use bbsync_store::{
    Store,
    backup::rfc3339,
    invite::{InviteOptions, InviteRecord},
};
use serde_json::json;

use crate::{Ctx, output};

/// Invite subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum InviteCommand {
    /// Make an invite: prints one string (the last line) that a new node
    /// redeems once with `bbsync clone INVITE` or `bbsync serve --follow
    /// INVITE`.
    ///
    /// The string carries this node's PeerId, the addresses it can be
    /// dialed at (those of the running `serve`, onion address included, or
    /// --address), an invite id and a 32-byte secret. The role, expiry and
    /// number of uses stay here: nothing in the string can be edited to get
    /// more. The string is a secret: give it over a channel you trust.
    #[command(after_help = "Examples:\n  \
        bbsync invite create                           # one full peer, within an hour\n  \
        bbsync invite create --role blind --expires 2d --uses 3 --name offsite-mirrors\n  \
        bbsync invite create --address /dns4/bbs.example.org/tcp/4040")]
    Create(CreateArgs),
    /// List the invites made here: role, uses spent, expiry, state and who redeemed them.
    #[command(after_help = "Examples:\n  bbsync invite list\n  bbsync --json invite list")]
    List,
    /// Revoke an invite (it cannot be redeemed any more; the trust it
    /// granted stays: `trust remove` takes that back).
    #[command(after_help = "Example:\n  bbsync invite revoke 3f2a1b2c")]
    Revoke {
        /// The invite's id, or a unique prefix of at least 6 hex digits (`invite list`).
        id: String,
    },
}

/// Arguments of `invite create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The role the redeemer is trusted with: `full` may receive content
    /// keys; `blind` only holds ciphertext.
    #[arg(long, default_value = "full", value_parser = parse_role)]
    role: Role,
    /// How long the invite can be redeemed: a number and a unit (s, m, h,
    /// d, w), 1 s to 30 days.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    expires: Duration,
    /// How many nodes may redeem it.
    #[arg(long, default_value_t = 1, value_name = "N")]
    uses: u32,
    /// A label for `invite list`.
    #[arg(long, value_name = "LABEL")]
    name: Option<String>,
    /// An address to put in the invite instead of the running node's
    /// (repeatable, in order of preference), e.g. the public address of a
    /// node behind NAT; without `serve` running, at least one is needed.
    #[arg(long = "address", value_name = "ADDR")]
    addresses: Vec<String>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: bbsync_protocol::Error| e.to_string())
}

/// `30s`, `10m`, `1h`, `2d`, `1w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit: s, m, h, d or w (e.g. 1h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a number and a unit (e.g. 1h)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (s, m, h, d or w)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The addresses to put in an invite, checked: multiaddrs, without a
/// `/p2p/` part (or with this node's own), at most [`MAX_INVITE_ADDRESSES`].
fn checked_addresses(store: &Store, texts: &[String]) -> anyhow::Result<Vec<String>> {
    let me = bbsync_node::peer_id_of(&store.instance_id());
    let mut out = Vec::new();
    for t in texts {
        bbsync_node::onion::check_text(t).map_err(|e| anyhow::anyhow!("address {t}: {e}"))?;
        let mut addr: Multiaddr = t
            .parse()
            .map_err(|e| anyhow::anyhow!("malformed address {t:?}: {e}"))?;
        if let Some(AddrProtocol::P2p(p)) = addr.iter().last() {
            if Some(p) != me {
                bail!("address {t} names another peer ({p}), not this node");
            }
            addr.pop();
        }
        if addr.iter().next().is_none() {
            bail!("address {t} names no host and port");
        }
        let s = addr.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.len() > MAX_INVITE_ADDRESSES {
        bail!(
            "{} addresses; an invite holds at most {MAX_INVITE_ADDRESSES}",
            out.len()
        );
    }
    Ok(out)
}

/// What `invite list` shows of one invite.
fn row(r: &InviteRecord, now: u64) -> serde_json::Value {
    json!({
        "id": r.id.to_hex(),
        "role": r.role.to_string(),
        "name": r.label,
        "uses": r.uses,
        "used": r.used,
        "state": r.state(now),
        "created": rfc3339(r.created_at_ms),
        "expires": rfc3339(r.expires_at_ms),
        "expires_at_ms": r.expires_at_ms,
        "revoked": r.revoked_at_ms.map(rfc3339),
        "redeemed_by": r.redeemed.iter().map(|x| json!({
            "instance_id": x.instance.to_hex(),
            "name": x.name,
            "at": rfc3339(x.at_ms),
        })).collect::<Vec<_>>(),
    })
}

/// "in 59m", "2h ago".
fn relative(ms: u64, now: u64) -> String {
    let fmt = |d: u64| {
        let s = d / 1000;
        if s >= 2 * 86_400 {
            format!("{}d", s / 86_400)
        } else if s >= 2 * 3600 {
            format!("{}h", s / 3600)
        } else if s >= 120 {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    };
    if ms >= now {
        format!("in {}", fmt(ms - now))
    } else {
        format!("{} ago", fmt(now - ms))
    }
}

/// Runs an invite subcommand.
pub fn run(ctx: &Ctx, c: InviteCommand) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let now = now_ms();
    match c {
        InviteCommand::Create(a) => {
            let texts = if !a.addresses.is_empty() {
                a.addresses.clone()
            } else if ctx.remote() {
                super::serve::serving_addresses()
            } else {
                Vec::new()
            };
            if texts.is_empty() {
                bail!(
                    "no address to put in the invite: run `bbsync serve` (the invite then carries the addresses it listens on, its onion address included) or give --address ADDR"
                );
            }
            let addresses = checked_addresses(&store, &texts)?;
            let opts = InviteOptions {
                role: a.role,
                expires: a.expires,
                uses: a.uses,
                label: a.name,
            };
            let (rec, invite) = store.invite_create(&opts, addresses)?;
            let text = invite.to_text();
            if ctx.json {
                let mut v = row(&rec, now);
                v["addresses"] = json!(invite.addresses);
                v["invite"] = json!(text.as_str());
                output::json(ctx, &v)?;
            } else {
                if !ctx.quiet {
                    outln!(
                        ctx,
                        "invite {} for {} {} peer{}, valid until {} ({}), at {}",
                        rec.id,
                        rec.uses,
                        rec.role,
                        if rec.uses == 1 { "" } else { "s" },
                        rfc3339(rec.expires_at_ms),
                        relative(rec.expires_at_ms, now),
                        invite.addresses.join(", ")
                    );
                    outln!(
                        ctx,
                        "on the new node: bbsync clone INVITE   (or: bbsync serve --follow INVITE)"
                    );
                }
                // Written as it is (no formatted copy of the secret).
                ctx.out.line(&text);
            }
        }
        InviteCommand::List => {
            let all = store.invites()?;
            if ctx.json {
                let v: Vec<_> = all.iter().map(|r| row(r, now)).collect();
                output::json(ctx, &v)?;
            } else if all.is_empty() {
                outln!(ctx, "no invites");
            } else {
                outln!(
                    ctx,
                    "{:<32}  {:<5}  {:<6}  {:<8}  {:<10}  {:<20}  REDEEMED BY",
                    "ID",
                    "ROLE",
                    "USED",
                    "STATE",
                    "EXPIRES",
                    "NAME"
                );
                for r in &all {
                    let by: Vec<String> = r
                        .redeemed
                        .iter()
                        .map(|x| format!("{} ({})", x.name, x.instance.short()))
                        .collect();
                    outln!(
                        ctx,
                        "{}  {:<5}  {:<6}  {:<8}  {:<10}  {:<20}  {}",
                        r.id,
                        r.role.to_string(),
                        format!("{}/{}", r.used, r.uses),
                        r.state(now).to_string(),
                        relative(r.expires_at_ms, now),
                        r.label.as_deref().unwrap_or("-"),
                        if by.is_empty() {
                            "-".to_string()
                        } else {
                            by.join(", ")
                        }
                    );
                }
            }
        }
        InviteCommand::Revoke { id } => {
            let id = store.resolve_invite(&id)?;
            let (rec, before) = store.invite_revoke(&id)?;
            if ctx.json {
                output::json(
                    ctx,
                    &json!({ "revoked": rec.id.to_hex(), "already": before }),
                )?;
            } else if !ctx.quiet {
                if before {
                    outln!(ctx, "invite {} was revoked already", rec.id);
                } else {
                    outln!(
                        ctx,
                        "revoked invite {} ({} of {} uses spent; the trust it granted stays)",
                        rec.id,
                        rec.used,
                        rec.uses
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "1", "h", "1y", "-1h", "1.5h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(relative(5_000, 0), "in 5s");
        assert_eq!(relative(0, 7_200_000), "2h ago");
    }
}
