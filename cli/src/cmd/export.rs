//! `export` and `export-bbs`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use bbsync_store::sqlite::dump::DumpFormat;

use crate::{Ctx, output, progress::Bar};

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The object: `kind:name`, or its id (or a unique prefix of 4+ hex digits).
    object: String,
    /// Destination file, or directory (new or empty) for directory objects;
    /// with `--as`, a new file or `-` for stdout (`--as csv` without
    /// `--table`: a new or empty directory, one CSV file per table).
    dest: PathBuf,
    /// Write a SQLite database object's content as SQL (like sqlite3's
    /// `.dump`), JSON lines (one row per line) or CSV, read from the stored
    /// snapshot.
    #[arg(long = "as", value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// With `--as`: only this table.
    #[arg(long, requires = "format", value_name = "T")]
    table: Option<String>,
}

/// Dump formats of `export --as`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// SQL statements that recreate the database.
    Sql,
    /// One JSON object per row and line.
    Json,
    /// CSV with a header row, one table per file.
    Csv,
}

/// Arguments of `export-bbs`.
#[derive(Debug, clap::Args)]
pub struct ExportBbsArgs {
    /// Destination directory (new or empty).
    dir: PathBuf,
    /// Write the tree in this layout: a built-in one (`axon`; `bbsync` is
    /// bbsync's own tree) or a layout file [env: BBSYNC_LAYOUT; config.toml:
    /// layout; default: bbsync's own tree]. See docs/layouts.md.
    #[arg(long, value_name = "NAME|FILE")]
    layout: Option<String>,
}

/// Streams a dump to the command's stdout sink.
struct SinkWriter<'a>(&'a output::Sink);

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.bytes(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `bbsync export --as FORMAT`.
fn run_dump(ctx: &Ctx, a: &ExportArgs, format: Format) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let store = super::open(ctx)?;
    let id = store.resolve(&a.object)?;
    let f = match format {
        Format::Sql => DumpFormat::Sql,
        Format::Json => DumpFormat::Json,
        Format::Csv => DumpFormat::Csv,
    };
    let what = || format!("exporting {} as {f:?}", a.object).to_lowercase();
    let to_stdout = a.dest.as_os_str() == "-";
    let dest = ctx.path(&a.dest);
    let s = if to_stdout {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, SinkWriter(&ctx.out));
        let r = store
            .dump_database(&id, f, a.table.as_deref(), &mut w)
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok(w.flush().map(|()| s)?));
        match r {
            // A reader that stopped early (`| head`) is not a failure.
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                }) =>
            {
                return Ok(ExitCode::SUCCESS);
            }
            r => r.with_context(what)?,
        }
    } else if matches!(f, DumpFormat::Csv) && a.table.is_none() {
        store
            .dump_database_csv_dir(&id, &dest)
            .with_context(|| format!("exporting {} as csv into {}", a.object, a.dest.display()))?
    } else {
        if dest.exists() {
            anyhow::bail!(
                "exporting {}: destination {} exists",
                a.object,
                a.dest.display()
            );
        }
        let tmp = dest.with_file_name(format!(
            ".{}.bbsync-tmp",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let r = (|| -> anyhow::Result<_> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
            let s = store.dump_database(&id, f, a.table.as_deref(), &mut w)?;
            w.flush()
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("renaming into {}", dest.display()))?;
            Ok(s)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.with_context(|| format!("exporting {} to {}", a.object, a.dest.display()))?
    };
    if to_stdout {
        return Ok(ExitCode::SUCCESS);
    }
    if ctx.json {
        output::json(ctx, &s)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "export: {} as {} ({} tables, {} rows) -> {}",
            a.object,
            format!("{f:?}").to_lowercase(),
            s.tables,
            s.rows,
            a.dest.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync export`.
pub fn run(ctx: &Ctx, a: ExportArgs) -> anyhow::Result<ExitCode> {
    if let Some(format) = a.format {
        return run_dump(ctx, &a, format);
    }
    let store = super::open(ctx)?;
    let id = store.resolve(&a.object)?;
    let s = store
        .export_object(&id, &ctx.path(&a.dest))
        .with_context(|| format!("exporting {} to {}", a.object, a.dest.display()))?;
    if ctx.json {
        output::json(ctx, &s)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "export: {} ({} files, {}) -> {} in {}",
            a.object,
            s.files,
            output::size(s.bytes),
            a.dest.display(),
            output::secs(s.elapsed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bbsync export-bbs`.
pub fn run_bbs(ctx: &Ctx, a: ExportBbsArgs) -> anyhow::Result<ExitCode> {
    let store = super::open(ctx)?;
    let bar = Bar::new(ctx.progress);
    let layout = super::import::layout(ctx, &store, a.layout.as_deref())?;
    let s = match &layout {
        None => store.export_bbs(&ctx.path(&a.dir), &bar),
        Some(l) => store.export_layout(&ctx.path(&a.dir), l, &bar),
    }
    .with_context(|| format!("exporting to {}", a.dir.display()))?;
    if ctx.json {
        output::json(ctx, &s)?;
    } else if !ctx.quiet {
        outln!(
            ctx,
            "export-bbs: {} objects, {} files, {} in {} ({}) -> {}",
            s.objects,
            s.files,
            output::size(s.bytes),
            output::secs(s.elapsed),
            output::rate(s.bytes, s.elapsed),
            a.dir.display()
        );
    }
    if s.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !ctx.json {
            for (obj, why) in s.failed.iter().take(output::MAX_LISTED) {
                errln!(ctx, "not exported: {obj}: {why}");
            }
            if s.failed.len() > output::MAX_LISTED {
                errln!(
                    ctx,
                    "... and {} more (--json lists them all)",
                    s.failed.len() - output::MAX_LISTED
                );
            }
        }
        anyhow::bail!("{} object(s) could not be exported", s.failed.len())
    }
}
