//! Where a backup repository is: a local directory or
//! `s3://bucket/prefix` (strictly parsed), and opening it into a
//! [`Backend`] and a [`Repo`]. S3 settings come from the standard `AWS_*`
//! environment variables, else `[s3]` of config.toml (docs/backup.md
//! "S3"). Every place that opens a repository (the CLI's commands, the
//! admin API's jobs and reads, the scheduled backups of `serve`) goes
//! through [`RepoLocation::resolve`] and [`RepoLocation::storage`].

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::BackupConfig;
use super::{Backend, LocalDir, Repo, repo_io_err, s3::S3Backend, v2::tar::TarBackend};
use crate::{
    config::{S3Config, Secret},
    error::{Result, StoreError},
};

/// A backup repository's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A local directory.
    Dir(PathBuf),
    /// `s3://bucket/prefix` (format 2 only).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix of the repository's objects, without leading or
        /// trailing `/` (empty: the bucket's root).
        prefix: String,
    },
}

impl fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoLocation::Dir(p) => write!(f, "{}", p.display()),
            RepoLocation::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RepoLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

fn bad(text: &str, why: &str) -> StoreError {
    StoreError::Invalid(format!("bad repository location {text:?}: {why}"))
}

/// Checks an S3 bucket name (AWS's rules for new buckets, which MinIO,
/// Ceph and Garage share).
fn check_bucket(b: &str) -> std::result::Result<(), &'static str> {
    if b.is_empty() {
        return Err("no bucket name (expected s3://bucket/prefix)");
    }
    let chars_ok = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ends_ok = b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&b.len()) || !chars_ok || !ends_ok || b.contains("..") {
        return Err(
            "a bucket name is 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
        );
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("a bucket name cannot be an IP address");
    }
    Ok(())
}

/// Checks a key prefix: `/`-separated segments, none empty, `.` or `..`,
/// printable, at most 512 bytes.
fn check_prefix(p: &str) -> std::result::Result<(), &'static str> {
    if p.len() > 512 {
        return Err("the prefix is longer than 512 bytes");
    }
    for seg in p.split('/') {
        if seg.is_empty() {
            return Err("the prefix has an empty segment ('//', or a leading '/')");
        }
        if seg == "." || seg == ".." {
            return Err("the prefix has a '.' or '..' segment");
        }
        if seg
            .chars()
            .any(|c| c.is_control() || matches!(c, '\\' | '?' | '#'))
        {
            return Err("the prefix has a control character, '\\', '?' or '#'");
        }
    }
    Ok(())
}

impl RepoLocation {
    /// Parses what `--repo` (or `backup_repo`) says: `s3://bucket[/prefix]`,
    /// or a local directory. Any other `scheme://` is refused, as are
    /// malformed S3 locations, with one line saying why (a location
    /// holding `@`, which may carry credentials, is not repeated).
    pub fn parse(text: &str) -> Result<RepoLocation> {
        if text.is_empty() {
            return Err(StoreError::Invalid(
                "bad repository location: it is empty".into(),
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(RepoLocation::Dir(PathBuf::from(text)));
        };
        if scheme != "s3" {
            let shown: String = scheme.chars().take(20).collect();
            return Err(if text.contains('@') {
                StoreError::Invalid(format!(
                    "bad repository location: unsupported scheme {shown:?}; give a directory or s3://bucket/prefix"
                ))
            } else {
                bad(
                    text,
                    "unsupported scheme; give a directory or s3://bucket/prefix",
                )
            });
        }
        if rest.contains('@') {
            return Err(StoreError::Invalid(
                "bad repository location: an s3:// location holds no user or keys (it has '@'); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [s3] in config.toml"
                    .into(),
            ));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|why| bad(text, why))?;
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            check_prefix(prefix).map_err(|why| bad(text, why))?;
        }
        Ok(RepoLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// Whether this is an object-store location.
    pub fn is_s3(&self) -> bool {
        matches!(self, RepoLocation::S3 { .. })
    }

    /// This location relative to `base` when it is a relative directory.
    #[must_use]
    pub fn under(self, base: &Path) -> RepoLocation {
        match self {
            RepoLocation::Dir(p) if p.is_relative() => RepoLocation::Dir(base.join(p)),
            other => other,
        }
    }

    /// The repository a command or job names: `given` (a directory
    /// relative to `base`, or `s3://bucket/prefix`), else the config's
    /// default ([`BackupConfig::backup_repo_location`]: `backup_repo`, else
    /// `<data>/backup`); `config` is asked for only when `given` is `None`.
    pub fn resolve(
        given: Option<&str>,
        base: &Path,
        config: impl FnOnce() -> Result<BackupConfig>,
        data_dir: &Path,
    ) -> Result<RepoLocation> {
        match given {
            Some(text) => Ok(RepoLocation::parse(text)?.under(base)),
            None => config()?.backup_repo_location(data_dir),
        }
    }

    /// The storage of this location: a directory, an export file (a
    /// regular file where a directory was named; read only), or an object
    /// store with the S3 settings `s3` gives (asked for only for an S3
    /// location; nothing is sent yet). An export file is not opened yet.
    pub fn storage(&self, s3: impl FnOnce() -> Result<S3Settings>) -> Result<RepoStorage> {
        Ok(match self {
            RepoLocation::Dir(p) if p.is_file() => RepoStorage::Export(p.clone()),
            RepoLocation::Dir(p) => RepoStorage::Dir(p.clone()),
            RepoLocation::S3 { .. } => RepoStorage::Remote {
                location: self.clone(),
                backend: self.open(s3)?,
            },
        })
    }

    /// [`RepoLocation::storage`] with the S3 settings of this process's
    /// environment and `config` (`[s3]` of config.toml): what the CLI, the
    /// admin API and the scheduled backups of `serve` all use. Inside a
    /// serving node, that is the node's own environment: a control-socket
    /// client's `AWS_*` variables never travel.
    pub fn storage_with(&self, config: Option<&S3Config>) -> Result<RepoStorage> {
        self.storage(|| S3Settings::resolve(config, |k| std::env::var(k).ok()))
    }

    /// Opens the location (nothing is sent or created yet); `s3` gives the
    /// S3 settings, asked for only for an S3 location.
    pub fn open(&self, s3: impl FnOnce() -> Result<S3Settings>) -> Result<Arc<dyn Backend>> {
        match self {
            RepoLocation::Dir(p) => Ok(Arc::new(LocalDir::new(p))),
            RepoLocation::S3 { bucket, prefix } => {
                let settings = s3()?;
                let b = S3Backend::open(bucket, prefix, &settings).map_err(|e| StoreError::Io {
                    context: format!("opening {self}"),
                    source: e,
                })?;
                Ok(Arc::new(b))
            }
        }
    }
}

/// A repository location opened into storage ([`RepoLocation::storage`]).
pub enum RepoStorage {
    /// A local directory (it may not exist yet).
    Dir(PathBuf),
    /// An export file (`backups export`), read in place (read only).
    Export(PathBuf),
    /// An object store (S3), its backend opened (nothing sent yet).
    Remote {
        /// Where it is (`s3://bucket/prefix`).
        location: RepoLocation,
        /// Its storage.
        backend: Arc<dyn Backend>,
    },
}

impl fmt::Debug for RepoStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoStorage::Dir(p) => f.debug_tuple("Dir").field(p).finish(),
            RepoStorage::Export(p) => f.debug_tuple("Export").field(p).finish(),
            RepoStorage::Remote { location, .. } => f
                .debug_tuple("Remote")
                .field(&location.to_string())
                .finish(),
        }
    }
}

impl fmt::Display for RepoStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoStorage::Dir(p) | RepoStorage::Export(p) => write!(f, "{}", p.display()),
            RepoStorage::Remote { location, .. } => write!(f, "{location}"),
        }
    }
}

impl RepoStorage {
    /// Whether this is an export file.
    pub fn is_export(&self) -> bool {
        matches!(self, RepoStorage::Export(_))
    }

    /// The backend of this storage (an export file is opened and its
    /// table of contents checked here).
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            RepoStorage::Dir(d) => Arc::new(LocalDir::new(d)),
            RepoStorage::Export(f) => Arc::new(TarBackend::open(f).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::Repo(e.to_string())
                } else {
                    repo_io_err(format!("reading {}", f.display()))(e)
                }
            })?),
            RepoStorage::Remote { backend, .. } => backend.clone(),
        })
    }

    /// Whether a repository is there: a directory that exists (its
    /// contents are checked by [`RepoStorage::open`]), an export file, or
    /// an object store holding `config` (format 2) or `repo.json`.
    pub fn exists(&self) -> Result<bool> {
        match self {
            RepoStorage::Dir(d) => Ok(d.exists()),
            RepoStorage::Export(_) => Ok(true),
            RepoStorage::Remote { location, backend } => {
                for name in ["config", "repo.json"] {
                    let size = backend
                        .size(name)
                        .map_err(repo_io_err(format!("reading {location}/{name}")))?;
                    if size.is_some() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// Opens the repository there (either format; an export file read in
    /// place).
    pub fn open(&self) -> Result<Repo> {
        Repo::open(self.backend()?)
    }

    /// Refuses an export file as the repository of a backup (it is read
    /// only).
    pub fn check_writable(&self) -> Result<()> {
        match self {
            RepoStorage::Export(f) => Err(StoreError::Invalid(format!(
                "{} is a file (an export file is read only); a backup writes into a repository directory",
                f.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Opens the repository there to write into it, creating it in
    /// `format` when there is none yet (an object store: format 2 only).
    /// An export file is refused ([`RepoStorage::check_writable`]).
    pub fn open_or_create(&self, format: u16) -> Result<(Repo, bool)> {
        self.check_writable()?;
        match self {
            RepoStorage::Remote { backend, .. } => Repo::open_or_create(backend.clone(), format),
            RepoStorage::Dir(d) | RepoStorage::Export(d) => Repo::open_or_create_dir(d, format),
        }
    }
}

/// How to reach an S3 server. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The server's URL; `None`: AWS's endpoint of the region.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// A session token (temporary credentials), from `AWS_SESSION_TOKEN`.
    pub session_token: Option<Secret>,
    /// Path-style requests (else virtual-host style).
    pub path_style: bool,
    /// Parallel uploads of `write_lazy`.
    pub max_uploads: usize,
    /// Retries of a transiently failed request.
    pub max_retries: usize,
    /// The first retry's delay (doubled each time, with jitter, up to 20 s).
    pub retry_min_delay: Duration,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long one request, or one read or write of its body, may take.
    pub request_timeout: Duration,
}

/// Default parallel uploads.
pub const DEFAULT_MAX_UPLOADS: usize = 6;
/// Default retries of a transiently failed request.
pub const DEFAULT_MAX_RETRIES: usize = 6;

impl S3Settings {
    /// Settings with these keys and the defaults for the rest.
    pub fn new(
        endpoint: Option<String>,
        region: &str,
        access_key_id: &str,
        secret_access_key: Secret,
    ) -> S3Settings {
        S3Settings {
            endpoint,
            region: region.to_string(),
            access_key_id: access_key_id.to_string(),
            secret_access_key,
            session_token: None,
            path_style: true,
            max_uploads: DEFAULT_MAX_UPLOADS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_min_delay: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }

    /// The settings from the environment (`env` looks a variable up) and
    /// `[s3]` of config.toml: `AWS_ENDPOINT_URL` and `AWS_REGION` each win
    /// over `endpoint` and `region`; the keys are taken as a pair, from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with
    /// `AWS_SESSION_TOKEN`) when either is set, else from config.toml.
    pub fn resolve(
        config: Option<&S3Config>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Settings> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let empty = S3Config::default();
        let c = config.unwrap_or(&empty);
        let (endpoint, from) = match env("AWS_ENDPOINT_URL") {
            Some(e) => (Some(e), "AWS_ENDPOINT_URL"),
            None => (c.endpoint.clone(), "[s3] endpoint in config.toml"),
        };
        if let Some(e) = &endpoint {
            check_endpoint(e).map_err(|why| {
                StoreError::Invalid(format!("bad S3 endpoint {e:?} (from {from}): {why}"))
            })?;
        }
        let region = env("AWS_REGION")
            .or_else(|| c.region.clone())
            .unwrap_or_else(|| "us-east-1".into());
        let (id, secret, token) = match (
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY").map(Secret::new),
        ) {
            (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN").map(Secret::new)),
            (Some(_), None) => {
                return Err(StoreError::Invalid(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both (or neither, to use [s3] in config.toml)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(StoreError::Invalid(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both (or neither, to use [s3] in config.toml)".into(),
                ));
            }
            (None, None) => match (&c.access_key_id, &c.secret_access_key) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone(), None),
                (None, None) => {
                    return Err(StoreError::Invalid(
                        "no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key under [s3] in config.toml".into(),
                    ));
                }
                (Some(_), None) => {
                    return Err(StoreError::Invalid(
                        "[s3] in config.toml has access_key_id but no secret_access_key".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(StoreError::Invalid(
                        "[s3] in config.toml has secret_access_key but no access_key_id".into(),
                    ));
                }
            },
        };
        let mut s = S3Settings::new(endpoint, &region, &id, secret);
        s.session_token = token;
        s.path_style = c.path_style.unwrap_or(true);
        s.max_uploads = c.max_uploads.unwrap_or(DEFAULT_MAX_UPLOADS);
        s.max_retries = c.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if !(1..=64).contains(&s.max_uploads) {
            return Err(StoreError::Invalid("[s3] max_uploads must be 1-64".into()));
        }
        Ok(s)
    }
}

/// An endpoint is `http(s)://host[:port]` with an optional `/`, nothing
/// else (no user, path or query).
fn check_endpoint(e: &str) -> std::result::Result<(), &'static str> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .ok_or("it must start with https:// or http://")?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err("it names no host");
    }
    if host.contains(['/', '?', '#', '@'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("it must be only a scheme, a host and a port (no user, path or query)");
    }
    if let Some((h, port)) = host.rsplit_once(':')
        && !h.ends_with(']')
        && !h.is_empty()
        && port.parse::<u16>().is_err()
    {
        return Err("its port is not a number 1-65535");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn err(text: &str) -> String {
        RepoLocation::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn locations_parse_strictly() {
        assert_eq!(
            RepoLocation::parse("s3://bbs-backups/axon/nightly/").unwrap(),
            RepoLocation::S3 {
                bucket: "bbs-backups".into(),
                prefix: "axon/nightly".into()
            }
        );
        let root = RepoLocation::parse("s3://bbs.backups").unwrap();
        assert_eq!(root.to_string(), "s3://bbs.backups");
        assert!(root.is_s3());
        assert_eq!(
            RepoLocation::parse("/srv/backups").unwrap(),
            RepoLocation::Dir("/srv/backups".into())
        );
        assert_eq!(
            RepoLocation::parse("rel").unwrap().under(Path::new("/d")),
            RepoLocation::Dir("/d/rel".into())
        );
        assert_eq!(
            err("s3://Bad_Bucket/x"),
            "bad repository location \"s3://Bad_Bucket/x\": a bucket name is 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
        );
        assert_eq!(
            err("s3:///x"),
            "bad repository location \"s3:///x\": no bucket name (expected s3://bucket/prefix)"
        );
        assert_eq!(
            err("s3://bucket//x"),
            "bad repository location \"s3://bucket//x\": the prefix has an empty segment ('//', or a leading '/')"
        );
        assert_eq!(
            err("s3://bucket/a/../b"),
            "bad repository location \"s3://bucket/a/../b\": the prefix has a '.' or '..' segment"
        );
        assert!(err("s3://bucket/a?x=1").contains("'?'"));
        assert!(err("s3://10.0.0.1/x").contains("IP address"));
        assert!(err("s3://ab/x").contains("3-63"));
        assert_eq!(
            err("gs://bucket/x"),
            "bad repository location \"gs://bucket/x\": unsupported scheme; give a directory or s3://bucket/prefix"
        );
        // Credentials in a location are refused without being repeated.
        let e = err("s3://AKIAXX:hunter2@bucket/x");
        assert!(e.contains("holds no user or keys"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(!err("https://u:hunter2@host/x").contains("hunter2"));
        assert_eq!(err(""), "bad repository location: it is empty");
    }

    #[test]
    fn a_repository_argument_resolves_and_opens_into_its_storage() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let config = BackupConfig {
            backup_repo: Some("s3://bbs-backups/site".into()),
            ..BackupConfig::default()
        };
        let resolve = |given: Option<&str>| {
            RepoLocation::resolve(given, base, || Ok(config.clone()), Path::new("/data"))
        };
        // Given: relative to the base; else the config's default.
        assert_eq!(
            resolve(Some("rel")).unwrap(),
            RepoLocation::Dir(base.join("rel"))
        );
        assert_eq!(resolve(None).unwrap().to_string(), "s3://bbs-backups/site");
        assert_eq!(
            RepoLocation::resolve(
                None,
                base,
                || Ok(BackupConfig::default()),
                Path::new("/data")
            )
            .unwrap(),
            RepoLocation::Dir("/data/backup".into())
        );
        // The config is not read when a location is given.
        assert!(
            RepoLocation::resolve(
                Some("/srv/b"),
                base,
                || Err(StoreError::Invalid("unread".into())),
                base
            )
            .is_ok()
        );
        // S3 settings are asked for only for S3; their error is the error.
        let no_keys = || Err(StoreError::Invalid("no S3 keys".into()));
        let d = resolve(Some("repo")).unwrap().storage(no_keys).unwrap();
        assert!(matches!(&d, RepoStorage::Dir(p) if p == &base.join("repo")));
        assert!(!d.exists().unwrap());
        assert!(d.check_writable().is_ok());
        let e = resolve(None).unwrap().storage(no_keys).unwrap_err();
        assert_eq!(e.to_string(), "no S3 keys");
        let s3 = resolve(None)
            .unwrap()
            .storage(|| {
                Ok(S3Settings::new(
                    Some("http://127.0.0.1:9".into()),
                    "us-east-1",
                    "id",
                    Secret::new("hunter2".into()),
                ))
            })
            .unwrap();
        assert_eq!(s3.to_string(), "s3://bbs-backups/site");
        assert!(!format!("{s3:?}").contains("hunter2"));
        // A regular file is an export file: read only.
        let file = base.join("snap.tar");
        std::fs::write(&file, b"not a tar").unwrap();
        let x = resolve(Some("snap.tar")).unwrap().storage(no_keys).unwrap();
        assert!(x.is_export());
        assert_eq!(
            x.open_or_create(2).unwrap_err().to_string(),
            format!(
                "{} is a file (an export file is read only); a backup writes into a repository directory",
                file.display()
            )
        );
        assert!(x.open().is_err());
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn settings_from_env_and_config() {
        let cfg = S3Config {
            endpoint: Some("https://minio.example.org:9000".into()),
            region: Some("garage".into()),
            access_key_id: Some("cfg-id".into()),
            secret_access_key: Some(Secret::new("cfg-secret".into())),
            path_style: Some(false),
            max_uploads: Some(3),
            max_retries: None,
        };
        let s = S3Settings::resolve(Some(&cfg), env(&[])).unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("https://minio.example.org:9000")
        );
        assert_eq!(
            (s.region.as_str(), s.access_key_id.as_str()),
            ("garage", "cfg-id")
        );
        assert_eq!(s.secret_access_key.expose(), "cfg-secret");
        assert!(!s.path_style);
        assert_eq!(s.max_uploads, 3);
        // The environment wins, the keys as a pair.
        let s = S3Settings::resolve(
            Some(&cfg),
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "env-id"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            (s.region.as_str(), s.access_key_id.as_str()),
            ("eu-west-1", "env-id")
        );
        assert_eq!(s.secret_access_key.expose(), "env-secret");
        // Debug never shows a secret.
        let dbg = format!("{s:?} {cfg:?}");
        assert!(
            !dbg.contains("env-secret") && !dbg.contains("cfg-secret"),
            "{dbg}"
        );
        assert!(dbg.contains("[redacted]"));

        let e = |cfg: Option<&S3Config>, vars: &[(&str, &str)]| {
            S3Settings::resolve(cfg, env(vars)).unwrap_err().to_string()
        };
        assert_eq!(
            e(None, &[]),
            "no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key under [s3] in config.toml"
        );
        assert_eq!(
            e(Some(&cfg), &[("AWS_ACCESS_KEY_ID", "env-id")]),
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both (or neither, to use [s3] in config.toml)"
        );
        let half = S3Config {
            secret_access_key: None,
            ..cfg.clone()
        };
        assert_eq!(
            e(Some(&half), &[]),
            "[s3] in config.toml has access_key_id but no secret_access_key"
        );
        let keys = [("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "s")];
        for (ep, why) in [
            ("minio:9000", "it must start with https:// or http://"),
            ("https://", "it names no host"),
            (
                "https://host/bucket",
                "it must be only a scheme, a host and a port (no user, path or query)",
            ),
            ("http://host:99999", "its port is not a number 1-65535"),
        ] {
            let mut vars = keys.to_vec();
            vars.push(("AWS_ENDPOINT_URL", ep));
            assert_eq!(
                e(None, &vars),
                format!("bad S3 endpoint {ep:?} (from AWS_ENDPOINT_URL): {why}")
            );
        }
        assert!(
            S3Settings::resolve(None, env(&keys))
                .unwrap()
                .endpoint
                .is_none()
        );
    }
}
