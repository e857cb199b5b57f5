//! The arti client of a node.

use std::{
    path::Path,
    sync::{Arc, Once},
};

use arti_client::TorClient;
use tor_rtcompat::PreferredRuntime;

use super::{TorError, config::client_config};

/// Installs rustls' process-wide crypto provider (ring), which arti's TLS
/// needs before the first client; later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Creates an arti client (not yet bootstrapped: it connects on first use)
/// from `config_file` (arti TOML) or the public network's defaults, with
/// its state under `dir` unless the file says otherwise. Must be called
/// inside a tokio runtime.
pub fn create(
    config_file: Option<&Path>,
    dir: &Path,
) -> Result<Arc<TorClient<PreferredRuntime>>, TorError> {
    install_crypto_provider();
    let config = client_config(config_file, dir)?;
    TorClient::builder()
        .config(config)
        .create_unbootstrapped()
        .map_err(|e| TorError::Bootstrap(e.to_string()))
}
