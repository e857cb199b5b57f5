//! `completions SHELL` (clap_complete) and `man [DIR]` (clap_mangen): both
//! generated from the same clap definitions as the parser, so they cannot
//! drift from it.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::Cli;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write bbsync.1 and one page per command (bbsync-clone.1,
    /// bbsync-invite-create.1, ...) into this directory (created if
    /// missing); without it, print bbsync(1) on stdout.
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `bbsync completions SHELL`.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "bbsync", &mut out);
    let mut o = std::io::stdout().lock();
    o.write_all(&out)?;
    o.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `bbsync man [DIR]`.
pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match a.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            let mut o = std::io::stdout().lock();
            o.write_all(&out)?;
            o.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
