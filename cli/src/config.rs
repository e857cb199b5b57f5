//! config.toml (docs/config.md): read here, checked whole (a key no part
//! knows is an error, so typos are caught), and split into the settings
//! each part owns: the store's ([`bbsync_store::Config`]), the node's
//! ([`NodeConfig`]), the backups' ([`BackupConfig`]) and the CLI's own
//! ([`CliConfig`]). Each part parses and checks its own keys, so a bad
//! value keeps the error text of the part that owns it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use bbsync_node::NodeConfig;
use bbsync_store::{StoreError, backup::BackupConfig, config};
use serde::Deserialize;

use crate::Ctx;

/// Every key of config.toml, in the order the error for an unknown key
/// has always named them. The test below checks that each belongs to
/// exactly one part.
const KEYS: &[&str] = &[
    "exclude_owners",
    "compression_level",
    "peers",
    "follow",
    "tor_config",
    "backup_repo",
    "backup",
    "layout",
    "watch",
    "tree",
    "http_listen",
    "http_allow_remote",
    "metrics_without_auth",
    "s3",
];

/// The CLI's own part of config.toml: the BBS tree it imports, exports and
/// keeps live, and where `serve` serves its admin HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CliConfig {
    /// The layout of the BBS directory that `import-bbs` and `export-bbs`
    /// use when given no `--layout`: a built-in name (`axon`; `bbsync` is
    /// bbsync's own tree) or a layout file (relative paths are under the
    /// data dir). Unset: bbsync's own tree (docs/layouts.md).
    #[serde(default)]
    pub layout: Option<String>,
    /// The BBS tree `serve` watches and imports as it changes (as with
    /// `--watch`; relative paths are under the data dir).
    #[serde(default)]
    pub watch: Option<PathBuf>,
    /// The BBS tree `serve --follow` keeps equal to its upstream's (as with
    /// `--tree`; relative paths are under the data dir).
    #[serde(default)]
    pub tree: Option<PathBuf>,
    /// Where `serve` serves the admin HTTP API, dashboard and `/metrics`
    /// (as with `--http`), e.g. `127.0.0.1:8080`. Unset: no HTTP.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Allow `http_listen` (or `--http`) on an address other than loopback
    /// (as with `--http-allow-remote`): the API is then reachable from the
    /// network, behind its token only.
    #[serde(default)]
    pub http_allow_remote: bool,
    /// Serve `/metrics` without a token (for a Prometheus on the same host
    /// that cannot send one). Everything else still needs a token.
    #[serde(default)]
    pub metrics_without_auth: bool,
}

/// config.toml, split into the settings of each part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The store's part (it reads the same keys itself when it opens).
    pub store: bbsync_store::Config,
    /// The node's part: peers, upstreams, Tor.
    pub node: NodeConfig,
    /// The backups' part: default repository, scheduled backups, S3 server.
    pub backup: BackupConfig,
    /// The CLI's own part.
    pub cli: CliConfig,
}

impl Config {
    /// Reads and checks the config file `path`; a missing file gives the
    /// defaults. Errors are [`StoreError::Config`] (`bad config PATH: why`).
    pub fn load(path: &Path) -> Result<Config, StoreError> {
        let Some(text) = config::read_text(path)? else {
            return Ok(Config::default());
        };
        let bad = |reason: String| StoreError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let table: toml::Table = config::parse_part(&text, path)?;
        if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(
                <serde::de::value::Error as serde::de::Error>::unknown_field(key, KEYS).to_string(),
            ));
        }
        Ok(Config {
            store: bbsync_store::Config::from_toml(&text, path)?,
            node: config::parse_part(&text, path)?,
            backup: BackupConfig::from_toml(&text, path)?,
            cli: config::parse_part(&text, path)?,
        })
    }
}

/// The config of the command's data dir: the serving node's for a
/// control-socket client (read when `serve` started), else read now.
pub fn of(ctx: &Ctx) -> anyhow::Result<Arc<Config>> {
    if let Some(c) = &ctx.config {
        return Ok(c.clone());
    }
    let dir = &ctx.data_dir;
    Config::load(&dir.join("config.toml"))
        .map(Arc::new)
        .with_context(|| format!("opening data dir {}", dir.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The keys a part deserializes (serde's list of a struct's fields,
    /// captured from a deserializer that only records it).
    fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::{Error as _, Visitor, value::Error};
        struct Grab<'a>(&'a mut &'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for Grab<'_> {
            type Error = Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
                Err(Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Error> {
                *self.0 = fields;
                Err(Error::custom("captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Grab(&mut fields));
        fields
    }

    #[test]
    fn every_key_belongs_to_exactly_one_part() {
        let mut parts: Vec<&str> = [
            fields_of::<bbsync_store::Config>(),
            fields_of::<NodeConfig>(),
            fields_of::<BackupConfig>(),
            fields_of::<CliConfig>(),
        ]
        .concat();
        let n = parts.len();
        parts.sort_unstable();
        parts.dedup();
        assert_eq!(parts.len(), n, "a key in two parts: {parts:?}");
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(parts, keys);
    }

    #[test]
    fn the_file_is_checked_whole_and_split_into_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        std::fs::write(&path, bbsync_store::config::DEFAULT_CONFIG).unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        std::fs::write(
            &path,
            "exclude_owners = [\"sysop\"]\ncompression_level = 3\npeers = [\"/ip4/192.0.2.1/tcp/1\"]\n\
             backup_repo = \"b\"\nlayout = \"axon\"\nhttp_allow_remote = true\n\
             [[backup]]\ncron = \"30 3 * * *\"\nkeep_daily = 7\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.store.exclude_owners, ["sysop"]);
        assert_eq!(c.store.compression_level, 3);
        assert_eq!(c.node.peers, ["/ip4/192.0.2.1/tcp/1"]);
        assert_eq!(c.backup.backup_repo, Some("b".into()));
        assert_eq!(c.backup.jobs[0].keep_daily, 7);
        assert_eq!(c.cli.layout.as_deref(), Some("axon"));
        assert!(c.cli.http_allow_remote);
        let err = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&path).unwrap_err().to_string()
        };
        let p = path.display();
        assert_eq!(
            err("exclude_ownerz = []\n"),
            format!(
                "bad config {p}: unknown field `exclude_ownerz`, expected one of `exclude_owners`, `compression_level`, `peers`, `follow`, `tor_config`, `backup_repo`, `backup`, `layout`, `watch`, `tree`, `http_listen`, `http_allow_remote`, `metrics_without_auth`, `s3`"
            )
        );
        assert_eq!(
            err("compression_level = 20\n"),
            format!("bad config {p}: compression_level must be 0-19")
        );
        assert_eq!(
            err("[[backup]]\ncron = \"* * * * *\"\nkeep_dayly = 1\n"),
            format!(
                "bad config {p}: unknown field `keep_dayly`, expected one of `cron`, `repo`, `tags`, `keep_last`, `keep_daily`, `keep_weekly`, `keep_monthly`"
            )
        );
        assert_eq!(
            err("peers = 3\n"),
            format!("bad config {p}: invalid type: integer `3`, expected a sequence")
        );
    }
}
