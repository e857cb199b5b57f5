//! `bbsync`: the command-line front end. Each subcommand lives in `cmd/`
//! and calls into the library crates; this file parses flags, sets up
//! logging and turns errors into one line on stderr and an exit code
//! (0 success, 1 failure, 2 usage).

#[macro_use]
mod output;
mod arenas;
mod cmd;
mod config;
mod control;
mod frame;
mod live;
mod passphrase;
mod progress;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use bbsync_store::Store;

use clap::{Parser, Subcommand};

/// Peer-to-peer replication and cloning for BBS operators.
#[derive(Debug, Parser)]
#[command(name = "bbsync", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Data dir of this node [default: the XDG data dir, e.g. ~/.local/share/bbsync].
    #[arg(long, global = true, env = "BBSYNC_DATA", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    no_progress: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output: only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// arti configuration file (arti's TOML format: storage, tor_network,
    /// path_rules, address_filter, override_net_params...) for every command
    /// that uses Tor [env: BBSYNC_TOR_CONFIG; config.toml: tor_config;
    /// default: the public Tor network].
    #[arg(long, global = true, value_name = "FILE")]
    tor_config: Option<PathBuf>,
    /// How long a dial of an onion address retries while the service is not
    /// reachable yet (e.g. its descriptor is not published), in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    tor_dial_budget: u64,
    /// A file holding the passphrase of an encrypted identity.key (and of
    /// identity escrows), on its first line; not readable by every user
    /// [env: BBSYNC_PASSPHRASE_FILE; else BBSYNC_PASSPHRASE, systemd's
    /// $CREDENTIALS_DIRECTORY/passphrase, or a prompt on the terminal].
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this instance's identity and an empty store.
    #[command(
        after_help = "Examples:\n  bbsync init --name alpha\n  bbsync init --name alpha --encrypt-identity   # identity.key sealed with a passphrase"
    )]
    Init(cmd::init::InitArgs),
    /// Print this instance's card (give it to peers for `trust add`).
    #[command(after_help = "Examples:\n  bbsync id\n  bbsync --json id")]
    Id,
    /// Manage the instances this node trusts.
    #[command(
        subcommand,
        after_help = "Examples:\n  bbsync trust add bbsync1... --role blind\n  bbsync trust list"
    )]
    Trust(cmd::trust::TrustCommand),
    /// Make, list and revoke one-time invites (the easy way to add a mirror).
    #[command(
        subcommand,
        after_help = "Examples:\n  bbsync invite create --role full --expires 1h\n  bbsync invite list\n  bbsync invite revoke 3f2a1b"
    )]
    Invite(cmd::invite::InviteCommand),
    /// Encrypt or decrypt identity.key (a passphrase at rest).
    #[command(
        subcommand,
        after_help = "Examples:\n  bbsync identity encrypt\n  bbsync identity decrypt"
    )]
    Identity(cmd::identity::IdentityCommand),
    /// Import a file or directory as one object.
    #[command(
        after_help = "Examples:\n  bbsync import ./motd.ans --kind config --name motd.ans\n  bbsync import ./applets/lord --kind applet --name lord"
    )]
    Import(cmd::import::ImportArgs),
    /// Import a whole BBS tree (config/, applets/, data/, boards/, files/).
    #[command(after_help = "Example:\n  bbsync import-bbs /srv/bbs   # re-run to pick up changes")]
    ImportBbs(cmd::import::ImportBbsArgs),
    /// Write one object to a file or directory.
    #[command(
        after_help = "Examples:\n  bbsync export config:motd.ans ./motd.ans\n  bbsync export 3f2a ./out   # by id prefix"
    )]
    Export(cmd::export::ExportArgs),
    /// Write every object back out as a BBS tree.
    #[command(after_help = "Example:\n  bbsync export-bbs /tmp/restored")]
    ExportBbs(cmd::export::ExportBbsArgs),
    /// List objects.
    #[command(after_help = "Examples:\n  bbsync ls --kind message\n  bbsync --json ls --all")]
    Ls(cmd::ls::LsArgs),
    /// Summarize this node's store.
    #[command(after_help = "Examples:\n  bbsync status\n  bbsync --json status")]
    Status,
    /// Check every manifest, envelope and chunk; exit 1 on any problem.
    #[command(after_help = "Examples:\n  bbsync verify\n  bbsync verify --read-data --json")]
    Verify(cmd::verify::VerifyArgs),
    /// Drop chunks that no manifest references; repack packs that are mostly dead.
    #[command(after_help = "Examples:\n  bbsync gc\n  bbsync gc --drop-restore-pins")]
    Gc(cmd::verify::GcArgs),
    /// Rebuild the chunk index from the pack files alone.
    #[command(after_help = "Example:\n  bbsync repair-index")]
    RepairIndex,
    /// Migrate an older data dir now, with progress (any command migrates it on first open).
    #[command(after_help = "Example:\n  bbsync migrate")]
    Migrate,
    /// Serve this node's content to trusted peers until Ctrl-C or SIGTERM.
    #[command(
        after_help = "Examples:\n  bbsync serve --listen /ip4/0.0.0.0/tcp/4040\n  bbsync serve --onion\n  bbsync serve --follow bbsyncinvite1...        # a standby of the node that made the invite\n  bbsync serve --passphrase-file /etc/bbsync/passphrase\n  bbsync serve --watch /srv/bbs                 # the primary: import each change of the BBS tree\n  bbsync serve --follow ADDR --tree /srv/bbs    # a hot standby with a live BBS tree"
    )]
    Serve(cmd::serve::ServeArgs),
    /// Make this standby the primary: stop writing its tree from the
    /// upstream, watch it instead (kept across restarts).
    #[command(
        after_help = "Examples:\n  bbsync promote                    # inside the running standby (serve --follow ADDR --tree DIR)\n  bbsync promote --tree /srv/bbs    # a stopped node: its next serve watches /srv/bbs"
    )]
    Promote(cmd::serve::PromoteArgs),
    /// Undo `promote`: inside a running `serve --follow ADDR --tree DIR`
    /// the node stops watching DIR and keeps it as a standby again; on a
    /// stopped node its next `serve --follow ADDR --tree DIR` does.
    #[command(
        after_help = "Examples:\n  bbsync demote   # inside the running node: it is a standby of its upstream again\n  bbsync demote   # a stopped node; then: bbsync serve --follow NEW_PRIMARY --tree /srv/bbs"
    )]
    Demote,
    /// Clone everything a peer serves into this node.
    #[command(
        after_help = "Examples:\n  bbsync --data-dir /srv/mirror clone bbsyncinvite1... --name mirror   # a new node, by invite\n  bbsync clone /ip4/192.0.2.7/tcp/4040/p2p/12D3...\n  bbsync clone ADDR --peer ADDR2 --only message:general"
    )]
    Clone(cmd::net::CloneArgs),
    /// Fetch the chunks that local manifests reference and the disk lacks.
    #[command(
        after_help = "Example:\n  bbsync fetch-missing --from /ip4/192.0.2.7/tcp/4040/p2p/12D3..."
    )]
    FetchMissing(cmd::net::FetchMissingArgs),
    /// Add envelope entries for trusted instances, drop those of untrusted ones.
    #[command(
        after_help = "Examples:\n  bbsync rekey --dry-run\n  bbsync trust remove 3f2a1b2c && bbsync rekey --rotate"
    )]
    Rekey(cmd::rekey::RekeyArgs),
    /// Back this store up into a backup repository (a new snapshot).
    #[command(
        after_help = "Examples:\n  bbsync backup --repo /mnt/backup --tag nightly\n  bbsync backup --repo /mnt/backup --include-identity"
    )]
    Backup(cmd::backup::BackupArgs),
    /// Write the backup cache of a selection when a backup would read every
    /// record (run by `backup` for a large store).
    #[command(hide = true)]
    BackupCache(cmd::backup::BackupCacheArgs),
    /// List, show, verify, delete and prune the snapshots of a backup repository.
    #[command(
        subcommand,
        after_help = "Examples:\n  bbsync backups list --repo /mnt/backup\n  bbsync backups prune --repo /mnt/backup --keep-daily 7"
    )]
    Backups(cmd::backup::BackupsCommand),
    /// Restore a snapshot of a backup repository into this store.
    #[command(
        after_help = "Examples:\n  bbsync restore --repo /mnt/backup\n  bbsync restore --repo /mnt/backup latest --to-tree /tmp/old"
    )]
    Restore(cmd::backup::RestoreArgs),
    /// Tokens of the admin HTTP API (`serve --http`).
    #[command(
        subcommand,
        after_help = "Examples:\n  bbsync http token\n  bbsync http token --rotate"
    )]
    Http(cmd::http::HttpCommand),
    /// Print a one-time login URL of the web dashboard of the running `serve --http`.
    #[command(after_help = "Example:\n  bbsync ui   # then open the URL it prints")]
    Ui,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  bbsync completions bash > /etc/bash_completion.d/bbsync\n  bbsync completions zsh > \"${fpath[1]}/_bbsync\"\n  bbsync completions fish > ~/.config/fish/completions/bbsync.fish"
    )]
    Completions(cmd::manual::CompletionsArgs),
    /// Write the manual pages (one per command) into DIR, or print bbsync(1).
    #[command(
        after_help = "Examples:\n  bbsync man /usr/local/share/man/man1\n  bbsync man | man -l -"
    )]
    Man(cmd::manual::ManArgs),
}

/// What every subcommand gets. A command writes only through `out`/`err`
/// (`outln!`/`errln!`), resolves relative paths with [`Ctx::path`] and reads
/// environment variables with [`Ctx::env`], so that it behaves the same when
/// it runs inside `serve` on behalf of a control-socket client.
pub struct Ctx {
    /// Data dir.
    pub data_dir: PathBuf,
    /// JSON output.
    pub json: bool,
    /// Draw progress bars.
    pub progress: bool,
    /// Quiet.
    pub quiet: bool,
    /// The invoking process's working directory.
    pub cwd: PathBuf,
    /// The invoking process's `BBSYNC_*` environment variables.
    pub env: BTreeMap<String, String>,
    /// Standard output of the invoking process.
    pub out: output::Sink,
    /// Standard error of the invoking process.
    pub err: output::Sink,
    /// The running node's store, when the command came through the control socket.
    pub store: Option<Arc<Store>>,
    /// The running node's config.toml (read when it started), when the
    /// command came through the control socket.
    pub config: Option<Arc<config::Config>>,
    /// `--tor-config` as given (not yet resolved against `cwd`).
    pub tor_config: Option<PathBuf>,
    /// `--tor-dial-budget` in seconds.
    pub tor_dial_budget: u64,
    /// `--passphrase-file` as given (not yet resolved against `cwd`).
    pub passphrase_file: Option<PathBuf>,
}

impl Ctx {
    /// `p` resolved against the invoking process's working directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.join(p)
        }
    }

    /// An environment variable of the invoking process (only `BBSYNC_*`).
    #[allow(dead_code)] // used by commands that read secrets from the environment
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Whether this command runs inside `serve` for a control-socket client.
    pub fn remote(&self) -> bool {
        self.store.is_some()
    }
}

/// The `BBSYNC_*` variables of this process's environment.
pub fn bbsync_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("BBSYNC_"))
        .collect()
}

/// A store database (`<data dir>/db/db`) over this size, about 120,000
/// objects, makes `backup` limit glibc's arenas too (see
/// [`Command::grows_with_store`]).
const LARGE_DB_BYTES: u64 = 256 << 20;

/// Whether this is a `backup` of a store large enough that its memory
/// matters more than the 3-4 ms of executing again: a full backup of
/// 200,000 objects peaked at 248-293 MB of RSS with glibc's default
/// arenas and at 230 MB with two, while an incremental one of 25,000
/// objects takes 35-45 ms in all. Only the file's size is looked at.
fn large_backup(cli: &Cli) -> bool {
    matches!(cli.command, Command::Backup(_))
        && cli
            .data_dir
            .clone()
            .or_else(|| default_data_dir().ok())
            .is_some_and(|d| large_store(&d))
}

/// Whether the store database of `data_dir` is over [`LARGE_DB_BYTES`]
/// (or over `BBSYNC_LARGE_STORE_BYTES`, when set: for tests, and for an
/// operator who wants to move the line).
pub fn large_store(data_dir: &Path) -> bool {
    let limit = std::env::var("BBSYNC_LARGE_STORE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LARGE_DB_BYTES);
    std::fs::metadata(data_dir.join("db").join("db")).is_ok_and(|m| m.len() > limit)
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir().map(|d| d.join("bbsync")).ok_or_else(|| {
        anyhow::anyhow!("no default data dir on this system; pass --data-dir or set BBSYNC_DATA")
    })
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    // arti logs much at `warn` that is routine for a client (relays it
    // cannot use, preemptive circuits it cannot build): one level quieter
    // than ours, unless -vv or BBSYNC_LOG asks.
    let arti = match verbose {
        0 | 1 if !quiet => ",arti_client=error,tor_=error",
        _ => "",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BBSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default}{arti}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .try_init();
}

/// Formats an error chain on one line, without repeating a cause that the
/// message before it already includes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        if line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    // One line, and nothing in it (a name quoted from a peer or a backup)
    // can act on the terminal.
    output::clean(&line.replace('\n', " ")).into_owned()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The manual needs no data dir.
    match cli.command {
        Command::Completions(a) => return cmd::manual::completions(a),
        Command::Man(a) => return cmd::manual::man(a),
        _ => {}
    }
    let data_dir = match cli.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    // A node serving this data dir owns it: hand the command over to it.
    if !matches!(cli.command, Command::Init(_))
        && let Some(code) = control::forward(&data_dir)?
    {
        return Ok(code);
    }
    let ctx = Ctx {
        data_dir,
        json: cli.json,
        progress: !cli.no_progress && !cli.json && !cli.quiet,
        quiet: cli.quiet,
        cwd: std::env::current_dir().unwrap_or_default(),
        env: bbsync_env(),
        out: output::Sink::Stdout,
        err: output::Sink::Stderr,
        store: None,
        config: None,
        tor_config: cli.tor_config,
        tor_dial_budget: cli.tor_dial_budget,
        passphrase_file: cli.passphrase_file,
    };
    dispatch(&ctx, cli.command)
}

/// Runs one parsed command.
fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(a) => cmd::init::run(ctx, a),
        Command::Id => cmd::init::id(ctx),
        Command::Trust(t) => cmd::trust::run(ctx, t),
        Command::Invite(c) => cmd::invite::run(ctx, c),
        Command::Identity(c) => cmd::identity::run(ctx, c),
        Command::Import(a) => cmd::import::run(ctx, a),
        Command::ImportBbs(a) => cmd::import::run_bbs(ctx, a),
        Command::Export(a) => cmd::export::run(ctx, a),
        Command::ExportBbs(a) => cmd::export::run_bbs(ctx, a),
        Command::Ls(a) => cmd::ls::run(ctx, a),
        Command::Status => cmd::ls::status(ctx),
        Command::Verify(a) => cmd::verify::run(ctx, a),
        Command::Gc(a) => cmd::verify::gc(ctx, a),
        Command::RepairIndex => cmd::verify::repair_index(ctx),
        Command::Migrate => cmd::verify::migrate(ctx),
        Command::Http(c) => cmd::http::run(ctx, c),
        Command::Ui => cmd::http::ui(ctx),
        Command::Serve(a) => cmd::serve::serve(ctx, a),
        Command::Promote(a) => cmd::serve::promote(ctx, a),
        Command::Demote => cmd::serve::demote(ctx),
        Command::Clone(a) => cmd::net::clone(ctx, a),
        Command::FetchMissing(a) => cmd::net::fetch_missing_cmd(ctx, a),
        Command::Rekey(a) => cmd::rekey::run(ctx, a),
        Command::Backup(a) => cmd::backup::backup(ctx, a),
        Command::BackupCache(a) => cmd::backup::backup_cache(ctx, a),
        Command::Backups(c) => cmd::backup::backups(ctx, c),
        Command::Restore(a) => cmd::backup::restore(ctx, a),
        Command::Completions(a) => cmd::manual::completions(a),
        Command::Man(a) => cmd::manual::man(a),
    }
}

impl Command {
    /// Whether the command's memory grows with the store (it moves, checks
    /// or serves the store's contents): these run with glibc's arenas
    /// limited (see `arenas`).
    fn grows_with_store(&self) -> bool {
        match self {
            Command::Import(_)
            | Command::ImportBbs(_)
            | Command::Export(_)
            | Command::ExportBbs(_)
            | Command::Verify(_)
            | Command::Gc(_)
            | Command::RepairIndex
            | Command::Migrate
            | Command::Serve(_)
            | Command::Clone(_)
            | Command::FetchMissing(_)
            | Command::Rekey(_)
            | Command::Restore(_)
            | Command::BackupCache(_) => true,
            // Not `backup` (but of a large store, see `large_backup`): an
            // incremental one takes 30-45 ms, and executing again costs
            // about 4 ms of it. `backups` reads one pack per thread.
            Command::Backup(_) | Command::Backups(_) => false,
            Command::Init(_)
            | Command::Id
            | Command::Trust(_)
            | Command::Invite(_)
            | Command::Identity(_)
            | Command::Ls(_)
            | Command::Status
            | Command::Http(_)
            | Command::Ui
            | Command::Promote(_)
            | Command::Demote
            | Command::Completions(_)
            | Command::Man(_) => false,
        }
    }
}

fn main() -> ExitCode {
    bbsync_store::failpoint::setup_from_env();
    let cli = Cli::parse();
    // Before any thread starts (this may replace the process).
    let not_limited = if cli.command.grows_with_store() || large_backup(&cli) {
        arenas::limit(std::env::args_os().collect())
    } else {
        None
    };
    init_logging(cli.verbose, cli.quiet);
    if let Some(e) = not_limited {
        tracing::debug!("running with glibc's default malloc arenas: re-executing failed: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `backup` limits the arenas of a store whose database is large, and
    /// only `backup` asks (the others decide by their command alone).
    #[test]
    fn a_backup_of_a_large_store_limits_the_arenas() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let db = tmp.path().join("db");
        std::fs::create_dir_all(&db)?;
        let file = std::fs::File::create(db.join("db"))?;
        let dir = tmp.path().to_str().unwrap_or_default();
        let parse =
            |cmd: &[&str]| Cli::try_parse_from(["bbsync", "--data-dir", dir].iter().chain(cmd));
        let backup = parse(&["backup", "--repo", "/nowhere"])?;
        let status = parse(&["status"])?;
        // (sparse: nothing is written)
        file.set_len(LARGE_DB_BYTES)?;
        assert!(!large_backup(&backup));
        file.set_len(LARGE_DB_BYTES + 1)?;
        assert!(large_backup(&backup));
        assert!(!large_backup(&status));
        assert!(!status.command.grows_with_store());
        Ok(())
    }
}
