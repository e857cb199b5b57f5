//! `<data>/config.toml`: operator settings.

use std::{fmt, os::unix::fs::MetadataExt, path::Path};

use bbsync_protocol::Compression;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// A secret setting (an S3 secret key): zeroized when dropped, redacted in
/// `Debug`, never part of an error message.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it (the request signer).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `[s3]` of config.toml: how to reach the S3 server of `s3://` backup
/// repositories. The standard `AWS_*` environment variables win over
/// each of these (docs/backup.md "S3").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The server's URL, `https://host[:port]` (as `AWS_ENDPOINT_URL`);
    /// unset: AWS's endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (as `AWS_REGION`) [default: us-east-1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The access key id (as `AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The secret access key (as `AWS_SECRET_ACCESS_KEY`); config.toml must
    /// then be readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// Path-style requests (`https://host/bucket/key`, what MinIO, Ceph
    /// and Garage expect) rather than virtual-host style
    /// (`https://bucket.host/key`) [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Parallel uploads (1-64) [default: 6].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uploads: Option<usize>,
    /// Retries of a request that failed transiently (0-20) [default: 6].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<usize>,
}

/// Operator settings. Unknown keys are an error, so typos are caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Owners whose objects are never served to peers nor cloned (e.g. the sysop).
    #[serde(default)]
    pub exclude_owners: Vec<String>,
    /// zstd level for chunk compression (1-19), or 0 to store uncompressed.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// Peers to fetch missing chunks from when `fetch-missing` gets no
    /// `--from` (full multiaddrs ending in `/p2p/<PeerId>`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Upstreams `serve` follows (as with `--follow`).
    #[serde(default)]
    pub follow: Vec<String>,
    /// arti configuration file (arti's TOML format) for Tor, as with
    /// `--tor-config`; a relative path is relative to the data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor_config: Option<std::path::PathBuf>,
    /// The default backup repository of `backup`, `backups` and `restore`
    /// [default: `<data>/backup`]; relative paths are under the data dir.
    #[serde(default)]
    pub backup_repo: Option<std::path::PathBuf>,
    /// Scheduled backups that `serve` runs (`[[backup]]` entries).
    #[serde(default)]
    pub backup: Vec<crate::backup::schedule::BackupJob>,
    /// The layout of the BBS directory that `import-bbs` and `export-bbs`
    /// use when given no `--layout`: a built-in name (`axon`; `bbsync` is
    /// bbsync's own tree) or a layout file (relative paths are under the
    /// data dir). Unset: bbsync's own tree (docs/layouts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The BBS tree `serve` watches and imports as it changes (as with
    /// `--watch`; relative paths are under the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<std::path::PathBuf>,
    /// The BBS tree `serve --follow` keeps equal to its upstream's (as with
    /// `--tree`; relative paths are under the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<std::path::PathBuf>,
    /// Where `serve` serves the admin HTTP API, dashboard and `/metrics`
    /// (as with `--http`), e.g. `127.0.0.1:8080`. Unset: no HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Allow `http_listen` (or `--http`) on an address other than loopback
    /// (as with `--http-allow-remote`): the API is then reachable from the
    /// network, behind its token only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http_allow_remote: bool,
    /// Serve `/metrics` without a token (for a Prometheus on the same host
    /// that cannot send one). Everything else still needs a token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_without_auth: bool,
    /// How to reach the S3 server of `s3://` backup repositories (`[s3]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
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
            peers: Vec::new(),
            follow: Vec::new(),
            tor_config: None,
            backup_repo: None,
            http_listen: None,
            http_allow_remote: false,
            metrics_without_auth: false,
            backup: Vec::new(),
            layout: None,
            watch: None,
            tree: None,
            s3: None,
        }
    }
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
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => {
                return Err(StoreError::Config {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        let c: Config = toml::from_str(&text).map_err(|e| StoreError::Config {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        if let Some(s3) = &c.s3 {
            if s3.secret_access_key.is_some() {
                let mode = std::fs::metadata(path)
                    .map_err(|e| StoreError::Config {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(StoreError::Config {
                        path: path.to_path_buf(),
                        reason: format!(
                            "it holds [s3] secret_access_key but other users may read it (mode {:o}); run: chmod 600 {}",
                            mode & 0o777,
                            path.display()
                        ),
                    });
                }
            }
            if s3.max_uploads.is_some_and(|n| !(1..=64).contains(&n)) {
                return Err(StoreError::Config {
                    path: path.to_path_buf(),
                    reason: "[s3] max_uploads must be 1-64".into(),
                });
            }
            if s3.max_retries.is_some_and(|n| n > 20) {
                return Err(StoreError::Config {
                    path: path.to_path_buf(),
                    reason: "[s3] max_retries must be 0-20".into(),
                });
            }
        }
        if !(0..=19).contains(&c.compression_level) {
            return Err(StoreError::Config {
                path: path.to_path_buf(),
                reason: "compression_level must be 0-19".into(),
            });
        }
        Ok(c)
    }

    /// The default backup repository for a node whose data dir is
    /// `data_dir`: `backup_repo` (relative: under the data dir), else
    /// `<data>/backup`.
    pub fn backup_repo_dir(&self, data_dir: &Path) -> std::path::PathBuf {
        match &self.backup_repo {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => data_dir.join(p),
            None => data_dir.join("backup"),
        }
    }

    /// The default backup repository, as a location: `backup_repo` when it
    /// is an `s3://` URL, else [`Config::backup_repo_dir`].
    pub fn backup_repo_location(
        &self,
        data_dir: &Path,
    ) -> Result<crate::backup::location::RepoLocation> {
        match self.backup_repo.as_deref().and_then(Path::to_str) {
            Some(s) if s.contains("://") => crate::backup::location::RepoLocation::parse(s),
            _ => Ok(crate::backup::location::RepoLocation::Dir(
                self.backup_repo_dir(data_dir),
            )),
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_config_holding_an_s3_secret_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[s3]\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"id\"\nsecret_access_key = \"hunter2\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "bad config {p}: it holds [s3] secret_access_key but other users may read it (mode 644); run: chmod 600 {p}",
                p = path.display()
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&path).unwrap();
        let s3 = c.s3.as_ref().unwrap();
        assert_eq!(s3.secret_access_key.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        // Without a secret, the mode does not matter.
        std::fs::write(&path, "[s3]\nregion = \"garage\"\nmax_uploads = 65\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "bad config {}: [s3] max_uploads must be 1-64",
                path.display()
            )
        );
        // An s3:// backup_repo is a location, not a directory.
        std::fs::write(&path, "backup_repo = \"s3://bbs-backups/axon\"\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.backup_repo_location(dir.path()).unwrap().to_string(),
            "s3://bbs-backups/axon"
        );
    }
}
