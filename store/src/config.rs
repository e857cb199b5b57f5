//! `<data>/config.toml`: the store's part of the operator settings, the
//! file `init` writes, and the helpers every part reads the file with.

use std::path::Path;

use bbsync_protocol::Compression;
use serde::{Deserialize, Serialize};

/// The backups' part of config.toml lives with the backups; these are
/// re-exported where they were.
pub use crate::backup::config::{S3Config, Secret};

use crate::error::{Result, StoreError};

/// The store's part of config.toml: the keys the store itself uses. The
/// file's other keys belong to the other parts (the node's peers, follow
/// and Tor settings, the backups' repository, jobs and S3 server, the
/// CLI's own) and are left alone here; the CLI reads the whole file,
/// refuses a key no part knows (typos are caught) and hands each part its
/// settings (docs/config.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Owners whose objects are never served to peers nor cloned (e.g. the sysop).
    #[serde(default)]
    pub exclude_owners: Vec<String>,
    /// zstd level for chunk compression (1-19), or 0 to store uncompressed.
    #[serde(default = "default_level")]
    pub compression_level: i32,
}

fn default_level() -> i32 {
    // Level 1 (what restic's default `auto` uses): on the sample BBS it
    // stores within 0.1% of level 3 and seals 20% faster.
    1
}

impl Default for Config {
    fn default() -> Self {
        Config {
            exclude_owners: Vec::new(),
            compression_level: default_level(),
        }
    }
}

/// The text of the config file `path`, or `None` when there is none (every
/// part then takes its defaults).
pub fn read_text(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// The part `T` of the config file `path`, parsed and checked by `parse`
/// (a part's `from_toml`); a missing file gives `T`'s defaults.
pub fn load_part<T: Default>(path: &Path, parse: fn(&str, &Path) -> Result<T>) -> Result<T> {
    match read_text(path)? {
        Some(text) => parse(&text, path),
        None => Ok(T::default()),
    }
}

/// `text` (the config file `path`) as the part `T` of it: a file that is
/// not TOML, or a key of `T` of the wrong type, is a [`StoreError::Config`].
pub fn parse_part<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| StoreError::Config {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })
}

/// The file written by `init`.
pub const DEFAULT_CONFIG: &str = r#"# bbsync node settings (see docs/config.md)

# Objects owned by these users are never served to peers nor cloned.
exclude_owners = []

# zstd level for chunk compression (1-19); 0 stores chunks uncompressed.
compression_level = 1

# Where `fetch-missing` fetches from when given no --from (full addresses
# ending in /p2p/<PeerId>, as `bbsync serve` prints them).
peers = []

# Upstreams `bbsync serve` follows as a standby (as with --follow).
follow = []

# arti configuration file for Tor (arti's TOML format; as --tor-config;
# relative to this data dir). Unset: the public Tor network.
# tor_config = "arti.toml"

# Default repository of `bbsync backup`, `backups` and `restore`
# (relative paths are under the data dir; default: backup).
# backup_repo = "/srv/bbsync-backups"

# Layout of the BBS directory for import-bbs / export-bbs when given no
# --layout: a built-in layout (axon), or a layout file (relative to this data
# dir); unset: bbsync's own tree. See docs/layouts.md.
# layout = "axon"

# Live mirroring (docs/sync.md): the primary watches its BBS tree and imports
# each change as it happens (as serve --watch); a standby keeps its own BBS
# tree equal to its upstream's (as serve --tree, with follow).
# watch = "/srv/bbs"
# tree = "/srv/bbs"

# Scheduled backups while `bbsync serve` runs: a 5-field cron expression
# (UTC), an optional repository, tags and a retention policy applied after
# each backup.
# [[backup]]
# cron = "30 3 * * *"
# repo = "/srv/bbsync-backups"
# tags = ["nightly"]
# keep_daily = 7
# keep_weekly = 4
# keep_monthly = 6

# The S3 server of s3://bucket/prefix repositories (docs/backup.md "S3"). The
# AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
# variables win over these. With a secret key here, this file must be
# readable by its owner only (chmod 600).
# [s3]
# endpoint = "https://minio.example.org:9000"
# region = "us-east-1"
# access_key_id = "..."
# secret_access_key = "..."
# path_style = true
# max_uploads = 6
"#;

impl Config {
    /// Reads the store's keys of the config file `path`; a missing file
    /// gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        load_part(path, Config::from_toml)
    }

    /// The store's keys of `text`, the config file `path`, checked.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let c: Config = parse_part(text, path)?;
        if !(0..=19).contains(&c.compression_level) {
            return Err(StoreError::Config {
                path: path.to_path_buf(),
                reason: "compression_level must be 0-19".into(),
            });
        }
        Ok(c)
    }

    /// The chunk compression setting.
    pub fn compression(&self) -> Compression {
        if self.compression_level == 0 {
            Compression::None
        } else {
            Compression::Zstd(self.compression_level)
        }
    }
}
