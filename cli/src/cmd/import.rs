//! `import` and `import-bbs`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use bbsync_store::{import::ImportStats, layout::Layout};

use crate::{Ctx, output, progress::Bar};

/// Arguments of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// File or directory to import.
    path: PathBuf,
    /// Object kind: config, applet, applet-data, message, file, or another lower-case word.
    #[arg(long)]
    kind: String,
    /// Object name within the kind.
    #[arg(long)]
    name: String,
    /// Owning user.
    #[arg(long)]
    owner: Option<String>,
}

/// Arguments of `import-bbs`.
#[derive(Debug, clap::Args)]
pub struct ImportBbsArgs {
    /// Root of the BBS tree.
    dir: PathBuf,
    /// The BBS's directory layout: a built-in one (`axon`; `bbsync` is
    /// bbsync's own tree) or a layout file [env: BBSYNC_LAYOUT; config.toml:
    /// layout; default: bbsync's own tree]. See docs/layouts.md.
    #[arg(long, value_name = "NAME|FILE")]
    layout: Option<String>,
}

/// The layout `import-bbs` / `export-bbs` use: `--layout`, else the
/// invoking process's `BBSYNC_LAYOUT`, else `layout` in config.toml, else
/// bbsync's own tree (`None`).
pub fn layout(
    ctx: &Ctx,
    store: &bbsync_store::Store,
    flag: Option<&str>,
) -> anyhow::Result<Option<Layout>> {
    let (spec, base) = match flag.or_else(|| ctx.env("BBSYNC_LAYOUT")) {
        Some(f) => (f.to_string(), ctx.cwd.clone()),
        None => match &crate::config::of(ctx)?.cli.layout {
            Some(l) => (l.clone(), store.dir().to_path_buf()),
            None => return Ok(None),
        },
    };
    if spec == bbsync_store::layout::NATIVE {
        return Ok(None);
    }
    Ok(Some(Layout::load(&spec, &base)?))
}

fn summary(ctx: &Ctx, what: &str, s: &ImportStats) -> anyhow::Result<()> {
    if ctx.json {
        output::json(ctx, s)?;
        return stuck(s);
    }
    for (o, why) in s.stuck.iter().skip(1).take(output::MAX_LISTED) {
        errln!(ctx, "not imported: {o}: {why}");
    }
    if ctx.quiet {
        return stuck(s);
    }
    outln!(
        ctx,
        "{what}: {} new, {} changed, {} unchanged, {} deleted; {} chunks written ({}), {} reused; {} scanned in {} ({}); seq {}",
        s.new,
        s.changed,
        s.unchanged,
        s.deleted,
        s.chunks_written,
        output::size(s.bytes_written),
        s.chunks_reused,
        output::size(s.bytes_scanned),
        output::secs(s.elapsed),
        output::rate(s.bytes_scanned, s.elapsed),
        s.seq,
    );
    if s.databases > 0 {
        outln!(
            ctx,
            "{what}: {} SQLite database(s) read through consistent snapshots ({})",
            s.databases,
            output::secs(s.snapshot_time),
        );
    }
    stuck(s)
}

/// An import that left objects behind (at the highest version) fails,
/// after everything else was imported.
fn stuck(s: &ImportStats) -> anyhow::Result<()> {
    match s.stuck.first() {
        None => Ok(()),
        Some((o, why)) => anyhow::bail!(
            "{o}: {why}; {} object(s) not imported, everything else was",
            s.stuck.len()
        ),
    }
}

/// `bbsync import`.
pub fn run(ctx: &Ctx, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let s = store
        .import_path(&ctx.path(&a.path), &a.kind, &a.name, a.owner, &bar)
        .with_context(|| format!("importing {}", a.path.display()))?;
    summary(ctx, "import", &s)?;
    Ok(ExitCode::SUCCESS)
}

/// `bbsync import-bbs`.
pub fn run_bbs(ctx: &Ctx, a: ImportBbsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let layout = layout(ctx, &store, a.layout.as_deref())?;
    let s = match &layout {
        None => store.import_bbs(&ctx.path(&a.dir), &bar),
        Some(l) => store.import_layout(&ctx.path(&a.dir), l, &bar),
    }
    .with_context(|| format!("importing BBS tree {}", a.dir.display()))?;
    summary(ctx, "import-bbs", &s)?;
    Ok(ExitCode::SUCCESS)
}
