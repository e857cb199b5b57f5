//! The node's part of config.toml: whom it talks to (`peers`, `follow`)
//! and how it reaches Tor (`tor_config`). The CLI reads config.toml and
//! hands this part to `serve`, `clone`, `fetch-missing` and the admin API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The node's part of config.toml (docs/config.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
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
    pub tor_config: Option<PathBuf>,
}

impl NodeConfig {
    /// The addresses of `peers` and `follow` that name the peer whose
    /// `/p2p/` suffix is `suffix` (e.g. `/p2p/12D3...`), in that order.
    pub fn addrs_of(&self, suffix: &str) -> impl Iterator<Item = &String> {
        self.peers
            .iter()
            .chain(&self.follow)
            .filter(move |a| a.ends_with(suffix))
    }
}
