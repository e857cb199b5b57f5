//! A private Tor network on 127.0.0.1 for tests: runs
//! `scripts/tor-testnet.py up` (3 directory authorities, 4 relays, free
//! ports) and `down` when dropped. Every tor is owned by this process
//! (`__OwningControllerProcess`), so it exits with the test binary even
//! when no destructor runs (a network in a `static` is never dropped).
//!
//! [`shared`] brings one network up per test binary. When `tor` is not
//! installed, tests skip with a message, unless `BBSYNC_REQUIRE_TOR=1`
//! (CI), which turns a missing `tor` into a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// A running private Tor network.
#[derive(Debug)]
pub struct TorNet {
    dir: tempfile::TempDir,
    arti_toml: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tor-testnet.py")
}

/// Whether `prog` is a file in a directory of the `PATH`.
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

/// Whether Debian's `tor` and `tor-gencert` are installed.
pub fn tor_installed() -> bool {
    on_path("tor") && on_path("tor-gencert")
}

/// Whether the environment demands the Tor tests (`BBSYNC_REQUIRE_TOR=1`).
pub fn tor_required() -> bool {
    std::env::var("BBSYNC_REQUIRE_TOR").is_ok_and(|v| v == "1")
}

/// Removes network directories left by test processes that are gone.
fn remove_stale(tmp: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("bbsync-tornet-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl TorNet {
    /// Brings a network up (about 15-50 s) and waits for its consensus.
    pub fn start() -> anyhow::Result<TorNet> {
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let dir = tempfile::Builder::new()
            .prefix(&format!("bbsync-tornet-{}-", std::process::id()))
            .tempdir_in(&tmp)?;
        let started = Instant::now();
        let out = Command::new("python3")
            .arg(script())
            .arg("up")
            .arg(dir.path().join("net"))
            .arg("--owner")
            .arg(std::process::id().to_string())
            .output()
            .context("running scripts/tor-testnet.py")?;
        if !out.status.success() {
            bail!(
                "scripts/tor-testnet.py up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let arti_toml = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !arti_toml.is_file() {
            bail!("scripts/tor-testnet.py up wrote no arti config");
        }
        eprintln!(
            "private Tor network up in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            dir.path().display()
        );
        Ok(TorNet { dir, arti_toml })
    }

    /// The arti configuration file for this network (`--tor-config`).
    pub fn arti_toml(&self) -> &Path {
        &self.arti_toml
    }

    /// The network's directory (tor logs under `net/<node>/notice.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .arg(script())
            .arg("down")
            .arg(self.dir.path().join("net"))
            .status();
    }
}

static SHARED: OnceLock<Result<Option<TorNet>, String>> = OnceLock::new();

/// The network shared by every test of this process, started on first
/// use. `None`: `tor` is not installed and not required, skip the test
/// (a message says so). Panics when `tor` is required but missing, or
/// when the network does not come up.
pub fn shared() -> Option<&'static TorNet> {
    let net = SHARED.get_or_init(|| {
        if !tor_installed() {
            if tor_required() {
                return Err(
                    "BBSYNC_REQUIRE_TOR=1 but `tor`/`tor-gencert` are not installed (apt-get install tor)"
                        .into(),
                );
            }
            return Ok(None);
        }
        TorNet::start().map(Some).map_err(|e| format!("{e:#}"))
    });
    match net {
        Ok(Some(n)) => Some(n),
        Ok(None) => {
            eprintln!(
                "SKIPPED: `tor` is not installed (apt-get install tor); set BBSYNC_REQUIRE_TOR=1 to make this a failure"
            );
            None
        }
        Err(e) => panic!("private Tor network: {e}"),
    }
}
