//! `rekey`.

use std::process::ExitCode;

use crate::{Ctx, output, progress::Bar};

/// Arguments of `rekey`.
#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    /// Objects to rekey (`kind:name` or an id prefix) [default: all].
    objects: Vec<String>,
    /// Only report what would change.
    #[arg(long)]
    dry_run: bool,
    /// Give objects that an instance no longer trusted could read a fresh
    /// content key (a new version, sealed again), so their future versions
    /// are unreadable to it.
    #[arg(long)]
    rotate: bool,
}

/// `bbsync rekey`.
pub fn run(ctx: &Ctx, a: RekeyArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let ids = a
        .objects
        .iter()
        .map(|o| store.resolve(o))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = Bar::new(ctx.progress);
    let r = store.rekey(
        &ids,
        bbsync_store::rekey::RekeyOptions {
            dry_run: a.dry_run,
            rotate: a.rotate,
        },
        &bar,
    )?;
    if ctx.json {
        output::json(ctx, &r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if ctx.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if r.dry_run { "would change" } else { "changed" };
    for c in r.changed.iter().take(output::MAX_LISTED) {
        let mut parts = Vec::new();
        if !c.added.is_empty() {
            parts.push(format!("+{}", c.added.join(" +")));
        }
        if !c.dropped.is_empty() {
            parts.push(format!("-{}", c.dropped.join(" -")));
        }
        outln!(ctx, "{verb}: {} ({})", c.object, parts.join(" "));
    }
    if r.changed.len() > output::MAX_LISTED {
        outln!(
            ctx,
            "... and {} more (--json lists them all)",
            r.changed.len() - output::MAX_LISTED
        );
    }
    for (obj, v) in r.rotated.iter().take(output::MAX_LISTED) {
        let what = if r.dry_run { "would rotate" } else { "rotated" };
        outln!(ctx, "{what}: {obj} -> version {v} under a fresh key");
    }
    for e in r.exposed.iter().take(output::MAX_LISTED) {
        outln!(
            ctx,
            "still readable by {} up to version {}: {}",
            e.readers.join(", "),
            e.up_to_version,
            e.object
        );
    }
    if r.exposed.len() > output::MAX_LISTED {
        outln!(
            ctx,
            "... and {} more readable from before (--json lists them all)",
            r.exposed.len() - output::MAX_LISTED
        );
    }
    outln!(
        ctx,
        "rekey{}: {} objects, {} envelopes {verb} ({} entries added, {} dropped), {} rotated, {} readable by instances no longer trusted, {} not openable here",
        if r.dry_run { " (dry run)" } else { "" },
        r.objects,
        r.changed.len(),
        r.entries_added,
        r.entries_dropped,
        r.rotated.len(),
        r.exposed.len(),
        r.unreadable.len(),
    );
    Ok(ExitCode::SUCCESS)
}
