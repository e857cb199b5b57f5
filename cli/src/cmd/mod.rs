//! One module per subcommand group.

pub mod export;
pub mod import;
pub mod init;
pub mod ls;
pub mod net;
pub mod trust;
pub mod verify;

use anyhow::Context as _;
use bbsync_store::Store;

use crate::Ctx;

/// Opens the store of the data dir.
pub fn open(ctx: &Ctx) -> anyhow::Result<Store> {
    Store::open(&ctx.data_dir)
        .with_context(|| format!("opening data dir {}", ctx.data_dir.display()))
}
