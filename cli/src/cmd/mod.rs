//! One module per subcommand group.

pub mod backups;
/// (the name `net.rs` and `main.rs` use for [`backups`])
pub use backups as backup;
pub mod export;
pub mod http;
pub mod identity;
pub mod import;
pub mod init;
pub mod invite;
pub mod ls;
pub mod manual;
pub mod net;
pub mod rekey;
pub mod serve;
pub mod trust;
pub mod verify;

use std::sync::Arc;

use anyhow::Context as _;
use bbsync_store::{Store, sync::Selection};

use crate::Ctx;

/// The store of the data dir: the running node's when the command came
/// through the control socket, else opened here (asking for the
/// passphrase of a sealed `identity.key`, see [`crate::passphrase`]).
/// A bad config.toml stops every command here, before the store opens.
pub fn open(ctx: &Ctx) -> anyhow::Result<Arc<Store>> {
    if let Some(store) = &ctx.store {
        return Ok(store.clone());
    }
    let dir = &ctx.data_dir;
    let context = || format!("opening data dir {}", dir.display());
    let pass = passphrase(ctx)?;
    crate::config::of(ctx)?;
    Store::open_with_passphrase(dir, pass.as_deref().map(String::as_str))
        .map(Arc::new)
        .with_context(context)
}

/// Ends a command's use of the store that [`open`] opened for it, when
/// the process exits right after the command (see
/// [`Store::close_at_exit`]): flushed, and not torn down. A store that is
/// not this process's alone (a node's, or one still shared) is left as
/// it is.
pub fn close_at_exit(ctx: &Ctx, store: Arc<Store>) -> anyhow::Result<()> {
    if ctx.store.is_some() {
        return Ok(());
    }
    if let Ok(store) = Arc::try_unwrap(store) {
        store
            .close_at_exit()
            .with_context(|| format!("closing data dir {}", ctx.data_dir.display()))?;
    }
    Ok(())
}

/// The passphrase of the data dir's `identity.key` when it is sealed
/// (asked for as [`crate::passphrase`] says), else `None`.
pub fn passphrase(ctx: &Ctx) -> anyhow::Result<Option<zeroize::Zeroizing<String>>> {
    let dir = &ctx.data_dir;
    let context = || format!("opening data dir {}", dir.display());
    if !Store::identity_sealed(dir).with_context(context)? {
        return Ok(None);
    }
    let what = dir.join("identity.key").display().to_string();
    Ok(Some(
        crate::passphrase::get(ctx, &what, false).with_context(context)?,
    ))
}

/// `--only KIND[:NAME]` (repeatable), as `backup` and `restore` take it:
/// parsed by clap with [`Selection::parse_only`], so a bad value is a
/// usage error before anything runs, as for `clone --only`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OnlyArgs {
    /// Only objects of this kind (and name or name prefix), repeatable.
    #[arg(long = "only", value_name = "KIND[:NAME]", value_parser = parse_only)]
    only: Vec<OnlySpec>,
}

/// One `--only` value: as given, and the kind and name it selects.
#[derive(Debug, Clone)]
pub struct OnlySpec {
    text: String,
    kind: String,
    name: Option<String>,
}

/// The clap value parser of `--only` ([`Selection::parse_only`]).
pub fn parse_only(s: &str) -> Result<OnlySpec, String> {
    let (kind, name) = Selection::parse_only(s).map_err(|e| e.to_string())?;
    Ok(OnlySpec {
        text: s.to_string(),
        kind,
        name,
    })
}

impl OnlyArgs {
    /// The selection the values make (none: everything).
    pub fn selection(&self) -> Selection {
        Selection {
            only: self
                .only
                .iter()
                .map(|o| (o.kind.clone(), o.name.clone()))
                .collect(),
            ..Default::default()
        }
    }

    /// The values as given (a snapshot records them).
    pub fn texts(&self) -> Vec<String> {
        self.only.iter().map(|o| o.text.clone()).collect()
    }
}
