//! The scheduled backups of `serve` (config.toml `[[backup]]`).

use std::sync::Arc;

use bbsync_store::{Store, backup::RepoLocation};

use super::config;
use crate::Ctx;

/// Starts the scheduled backups of config.toml (`[[backup]]`) for `serve`.
pub fn start_scheduler(
    ctx: &Ctx,
    store: &Arc<Store>,
) -> anyhow::Result<Option<bbsync_store::backup::schedule::Scheduler>> {
    let default = RepoLocation::resolve(
        ctx.env("BBSYNC_REPO"),
        &ctx.cwd,
        || config(ctx),
        &ctx.data_dir,
    )?;
    Ok(bbsync_store::backup::schedule::spawn(
        store.clone(),
        default,
    )?)
}
