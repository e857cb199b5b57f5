//! The backups' part of config.toml: the default repository
//! (`backup_repo`), the scheduled backups of `serve` (`[[backup]]`) and the
//! S3 server of `s3://` repositories (`[s3]`). The CLI reads config.toml
//! and hands this part to the commands, the admin API and the scheduler.

use std::{fmt, os::unix::fs::MetadataExt, path::Path, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{location::RepoLocation, schedule::BackupJob};
use crate::{
    config::{load_part, parse_part},
    error::{Result, StoreError},
};

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

/// The backups' part of config.toml (docs/config.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupConfig {
    /// The default backup repository of `backup`, `backups` and `restore`
    /// [default: `<data>/backup`]; relative paths are under the data dir.
    #[serde(default)]
    pub backup_repo: Option<PathBuf>,
    /// Scheduled backups that `serve` runs (`[[backup]]` entries).
    #[serde(default, rename = "backup")]
    pub jobs: Vec<BackupJob>,
    /// How to reach the S3 server of `s3://` backup repositories (`[s3]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

impl BackupConfig {
    /// Reads the backups' keys of the config file `path`; a missing file
    /// gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        load_part(path, BackupConfig::from_toml)
    }

    /// The backups' keys of `text`, the config file `path`, checked: an
    /// `[s3]` secret key needs a file its owner only can read, and the S3
    /// limits their ranges.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let c: BackupConfig = parse_part(text, path)?;
        let bad = |reason: String| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(s3) = &c.s3 {
            if s3.secret_access_key.is_some() {
                let mode = std::fs::metadata(path)
                    .map_err(|e| bad(e.to_string()))?
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "it holds [s3] secret_access_key but other users may read it (mode {:o}); run: chmod 600 {}",
                        mode & 0o777,
                        path.display()
                    )));
                }
            }
            if s3.max_uploads.is_some_and(|n| !(1..=64).contains(&n)) {
                return Err(bad("[s3] max_uploads must be 1-64".into()));
            }
            if s3.max_retries.is_some_and(|n| n > 20) {
                return Err(bad("[s3] max_retries must be 0-20".into()));
            }
        }
        Ok(c)
    }

    /// The default backup repository for a node whose data dir is
    /// `data_dir`: `backup_repo` (relative: under the data dir), else
    /// `<data>/backup`.
    pub fn backup_repo_dir(&self, data_dir: &Path) -> PathBuf {
        match &self.backup_repo {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => data_dir.join(p),
            None => data_dir.join("backup"),
        }
    }

    /// The default backup repository, as a location: `backup_repo` when it
    /// is an `s3://` URL, else [`BackupConfig::backup_repo_dir`].
    pub fn backup_repo_location(&self, data_dir: &Path) -> Result<RepoLocation> {
        match self.backup_repo.as_deref().and_then(Path::to_str) {
            Some(s) if s.contains("://") => RepoLocation::parse(s),
            _ => Ok(RepoLocation::Dir(self.backup_repo_dir(data_dir))),
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
        let e = BackupConfig::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "bad config {p}: it holds [s3] secret_access_key but other users may read it (mode 644); run: chmod 600 {p}",
                p = path.display()
            )
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = BackupConfig::load(&path).unwrap();
        let s3 = c.s3.as_ref().unwrap();
        assert_eq!(s3.secret_access_key.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        // Without a secret, the mode does not matter.
        std::fs::write(&path, "[s3]\nregion = \"garage\"\nmax_uploads = 65\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            BackupConfig::load(&path).unwrap_err().to_string(),
            format!(
                "bad config {}: [s3] max_uploads must be 1-64",
                path.display()
            )
        );
        // An s3:// backup_repo is a location, not a directory.
        std::fs::write(&path, "backup_repo = \"s3://bbs-backups/axon\"\n").unwrap();
        let c = BackupConfig::load(&path).unwrap();
        assert_eq!(
            c.backup_repo_location(dir.path()).unwrap().to_string(),
            "s3://bbs-backups/axon"
        );
    }
}
