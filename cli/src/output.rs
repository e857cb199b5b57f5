//! Text and JSON output helpers.

use std::time::Duration;

use indicatif::HumanBytes;
use serde::Serialize;

/// How many problems or failures text output lists before summarizing the rest.
pub const MAX_LISTED: usize = 20;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `12.3 MB/s` for `bytes` in `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!("{:.1} MB/s", bytes as f64 / secs / 1e6)
}

/// Human size.
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}
