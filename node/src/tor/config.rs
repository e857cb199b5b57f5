//! The arti configuration of a node: arti's own TOML format, loaded with
//! arti's configuration machinery (`tor_config`), with the storage
//! directories moved under the node's `<data>/tor/` unless the file sets
//! them. Without a file: the public Tor network.

use std::path::Path;

use arti_client::config::TorClientConfig;
use tor_config::{ConfigurationSource, ConfigurationSources, sources::MustRead};

use super::TorError;

/// Builds the arti client configuration: `file` (arti TOML) if given, the
/// state and cache directories under `dir` unless the file names them.
pub fn client_config(file: Option<&Path>, dir: &Path) -> Result<TorClientConfig, TorError> {
    let what = match file {
        Some(f) => f.display().to_string(),
        None => "(built-in defaults)".to_string(),
    };
    let bad = |e: &dyn std::fmt::Display| TorError::Config(what.clone(), e.to_string());
    let mut sources = ConfigurationSources::new_empty();
    if let Some(f) = file {
        if !f.is_file() {
            return Err(TorError::Config(what, "no such file".into()));
        }
        sources.push_source(ConfigurationSource::from_path(f), MustRead::MustRead);
    }
    let mut tree = sources.load().map_err(|e| bad(&e))?;
    let mut storage = toml::Table::new();
    for (key, sub) in [("state_dir", "state"), ("cache_dir", "cache")] {
        let set: Option<toml::Value> = tree
            .get_serde_value(&format!("storage.{key}"))
            .map_err(|e| bad(&e))?;
        if set.is_none() {
            let path = dir.join(sub);
            let path = path
                .to_str()
                .ok_or_else(|| bad(&format!("data dir {} is not UTF-8", dir.display())))?;
            // A literal path: arti would expand `$` and `~` in a plain string.
            let mut literal = toml::Table::new();
            literal.insert("literal".into(), toml::Value::String(path.into()));
            storage.insert(key.into(), toml::Value::Table(literal));
        }
    }
    if !storage.is_empty() {
        let mut top = toml::Table::new();
        top.insert("storage".into(), toml::Value::Table(storage));
        tree.merge_from(&top).map_err(|e| bad(&e))?;
    }
    tor_config::resolve::<TorClientConfig>(&tree).map_err(|e| bad(&e))
}
