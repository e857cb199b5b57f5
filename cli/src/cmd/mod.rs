//! One module per subcommand group.

pub mod backup;
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
pub mod trust;
pub mod verify;

use std::sync::Arc;

use anyhow::Context as _;
use bbsync_store::Store;

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
