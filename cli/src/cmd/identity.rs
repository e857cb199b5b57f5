//! `identity encrypt | decrypt`: `identity.key` at rest.

use std::process::ExitCode;

use serde_json::json;

use crate::{Ctx, output};

/// Identity subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Seal identity.key with a passphrase (argon2id + AES-256-GCM).
    ///
    /// The passphrase comes from --passphrase-file, BBSYNC_PASSPHRASE, or is
    /// asked twice on the terminal; at least 8 characters. From then on
    /// every command that opens the data dir needs it (`serve` asks once at
    /// start; commands handed to a running `serve` do not).
    #[command(after_help = "Examples:\n  bbsync identity encrypt\n  \
        BBSYNC_PASSPHRASE_FILE=/etc/bbsync/passphrase bbsync identity encrypt")]
    Encrypt,
    /// Write identity.key back without a passphrase (asks for the current one).
    #[command(
        after_help = "Example:\n  bbsync identity decrypt --passphrase-file /etc/bbsync/passphrase"
    )]
    Decrypt,
}

/// Runs an identity subcommand.
pub fn run(ctx: &Ctx, c: IdentityCommand) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let path = ctx.data_dir.join("identity.key");
    let encrypted = match c {
        IdentityCommand::Encrypt => {
            if store.identity_is_sealed()? {
                anyhow::bail!(
                    "{} is encrypted already (run `bbsync identity decrypt` first to change the passphrase)",
                    path.display()
                );
            }
            let pass = super::init::new_passphrase(ctx)?;
            store.encrypt_identity(&pass)?;
            true
        }
        IdentityCommand::Decrypt => {
            store.decrypt_identity()?;
            false
        }
    };
    if ctx.json {
        output::json(
            ctx,
            &json!({ "identity_file": path, "encrypted": encrypted }),
        )?;
    } else if !ctx.quiet {
        if encrypted {
            outln!(ctx, "{} is sealed with the passphrase", path.display());
        } else {
            outln!(ctx, "{} is no longer encrypted", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
