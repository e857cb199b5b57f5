//! One module per subcommand group.

pub mod backup;
pub mod export;
pub mod import;
pub mod init;
pub mod ls;
pub mod net;
pub mod rekey;
pub mod trust;
pub mod verify;

use std::sync::Arc;

use anyhow::Context as _;
use bbsync_store::Store;

use crate::Ctx;

/// The store of the data dir: the running node's when the command came
/// through the control socket, else opened here.
pub fn open(ctx: &Ctx) -> anyhow::Result<Arc<Store>> {
    if let Some(store) = &ctx.store {
        return Ok(store.clone());
    }
    Store::open(&ctx.data_dir)
        .map(Arc::new)
        .with_context(|| format!("opening data dir {}", ctx.data_dir.display()))
}
