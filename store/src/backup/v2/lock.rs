//! Repository locks (docs/format.md §17.7): who is writing, and whether a
//! lock found in `locks/` stops this writer. Pure decisions; taking and
//! refreshing a lock through a backend comes with the write path.

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use bbsync_protocol::text::escape_hidden;
use serde::{Deserialize, Serialize};

use super::repo::Repo2;
use crate::{
    backup::{Backend, now_ms, repo_io_err},
    error::{Result, StoreError},
};

/// A lock not refreshed for this long is stale (its holder is gone).
pub const STALE_AFTER_MS: u64 = 30 * 60 * 1000;
/// How often a holder refreshes its lock.
pub const REFRESH_EVERY_MS: u64 = 5 * 60 * 1000;
/// Largest lock file read.
pub const MAX_LOCK_FILE: usize = 4096;

/// `locks/<32 hex>` (JSON, unknown keys refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    /// The writing instance (hex).
    pub host: String,
    /// The machine's host name (with `pid`, tells whether the holder runs
    /// on this machine and is alive).
    pub hostname: String,
    /// The holder's process id.
    pub pid: u32,
    /// Exclusive (prune, delete, migrate) or shared (backup, restore).
    pub exclusive: bool,
    /// What the holder does, for messages (`backup`, `prune`, ...).
    pub operation: String,
    /// When it was taken (ms since the epoch).
    pub created_ms: u64,
    /// When it was last refreshed.
    pub refreshed_ms: u64,
}

impl LockRecord {
    /// Decodes a lock file read from `path`.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_LOCK_FILE {
            return Err(format!("{path}: a lock file of {} bytes", bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("{path} is not a valid lock file: {e}"))
    }

    /// JSON with a final newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Whether the lock is stale at `now_ms`: not refreshed for
    /// [`STALE_AFTER_MS`], or held by a process of this machine
    /// (`hostname`) that `alive` says is not running. A lock from the
    /// future (another machine's clock) counts as fresh.
    pub fn is_stale(&self, now_ms: u64, hostname: &str, alive: impl Fn(u32) -> bool) -> bool {
        now_ms.saturating_sub(self.refreshed_ms) > STALE_AFTER_MS
            || (self.hostname == hostname && !alive(self.pid))
    }

    /// Whether this lock and one wanted with `exclusive` exclude each other.
    pub fn conflicts_with(&self, exclusive: bool) -> bool {
        self.exclusive || exclusive
    }

    /// The refusal an operator sees, for `repo` and the refused operation.
    pub fn refusal(&self, repo: &str, path: &str, refused: &str) -> String {
        // (A holder without a store, `backups verify` for one, names no instance.)
        let instance = if self.host.is_empty() {
            String::new()
        } else {
            let first: String = self.host.chars().take(16).collect();
            format!("instance {}, ", escape_hidden(&first))
        };
        format!(
            "backup repository {repo} is locked by {} ({instance}pid {}, since {}) for a {}; nothing was {refused} (retry later, or remove {path} if that process is gone)",
            escape_hidden(&self.hostname),
            self.pid,
            super::super::rfc3339(self.created_ms),
            escape_hidden(&self.operation),
        )
    }
}

/// This machine's host name (for the dead-process rule).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether a process of this machine runs.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A lock held on a repository: refreshed by a thread, removed on drop.
#[must_use = "the lock is released when this is dropped"]
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    path: String,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
    /// Stale locks of dead writers removed while taking this one.
    pub removed_stale: Vec<String>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path)
            .finish()
    }
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Err(e) = self.backend.remove(&self.path) {
            tracing::warn!(path = %self.path, error = %e, "could not remove a repository lock");
        }
    }
}

/// The locks in `locks/` other than `own`: (path, record). A file that is
/// not a lock record is an error naming it.
fn others(b: &dyn Backend, own: &str) -> Result<Vec<(String, LockRecord)>> {
    let loc = b.location();
    let mut out = Vec::new();
    for name in b
        .list("locks")
        .map_err(repo_io_err(format!("listing {loc}/locks")))?
    {
        let path = format!("locks/{name}");
        if path == own {
            continue;
        }
        let bytes = match b.read(&path) {
            Ok(v) => v,
            // Released meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(repo_io_err(format!("reading {loc}/{path}"))(e)),
        };
        let rec = LockRecord::decode(&path, &bytes).map_err(|e| {
            StoreError::Repo(format!(
                "backup repository {loc}: {e}; remove it if no bbsync uses the repository"
            ))
        })?;
        out.push((path, rec));
    }
    Ok(out)
}

impl Repo2 {
    /// Takes a lock: `exclusive` for prune and delete, shared for backup
    /// and restore (docs/format.md §17.7). Stale locks are removed; a
    /// conflicting live one refuses with [`LockRecord::refusal`] (`refused`
    /// says what was not done: "pruned", "backed up", ...).
    pub fn lock(
        &self,
        host: &str,
        exclusive: bool,
        operation: &str,
        refused: &str,
    ) -> Result<LockGuard> {
        self.try_lock(host, exclusive, operation, refused)?
            .map_err(StoreError::Repo)
    }

    /// [`Repo2::lock`], waiting up to `wait` for conflicting holders to go
    /// (looking again every second); then the refusal of the last holder.
    pub fn lock_waiting(
        &self,
        host: &str,
        exclusive: bool,
        operation: &str,
        refused: &str,
        wait: Duration,
    ) -> Result<LockGuard> {
        let deadline = std::time::Instant::now() + wait;
        let mut said = false;
        loop {
            match self.try_lock(host, exclusive, operation, refused)? {
                Ok(g) => return Ok(g),
                Err(refusal) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(StoreError::Repo(refusal));
                    }
                    if !said {
                        tracing::warn!(
                            "waiting up to {}s (--lock-wait) for the lock: {refusal}",
                            wait.as_secs()
                        );
                        said = true;
                    }
                    std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
                }
            }
        }
    }

    /// One attempt: the guard, `Ok(Err(refusal))` when a live conflicting
    /// lock holds the repository, or an error reading or writing.
    fn try_lock(
        &self,
        host: &str,
        exclusive: bool,
        operation: &str,
        refused: &str,
    ) -> Result<std::result::Result<LockGuard, String>> {
        let b = self.backend_arc();
        let loc = b.location();
        let me = hostname();
        let now = now_ms();
        let rec = LockRecord {
            host: host.to_string(),
            hostname: me.clone(),
            pid: std::process::id(),
            exclusive,
            operation: operation.to_string(),
            created_ms: now,
            refreshed_ms: now,
        };
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let path = format!("locks/{}", hex::encode(id));
        let mut removed_stale = Vec::new();
        let check = |removed: &mut Vec<String>| -> Result<Option<String>> {
            for (p, other) in others(&*b, &path)? {
                if other.is_stale(now_ms(), &me, pid_alive) {
                    b.remove(&p)
                        .map_err(repo_io_err(format!("removing the stale lock {loc}/{p}")))?;
                    tracing::warn!(lock = %p, holder = %other.hostname, pid = other.pid, "removed a stale repository lock");
                    removed.push(p);
                } else if other.conflicts_with(exclusive) {
                    return Ok(Some(other.refusal(&loc, &p, refused)));
                }
            }
            Ok(None)
        };
        if let Some(refusal) = check(&mut removed_stale)? {
            return Ok(Err(refusal));
        }
        if !b
            .write_new(&path, &rec.encode())
            .map_err(repo_io_err(format!("writing {loc}/{path}")))?
        {
            return Err(StoreError::Repo(format!(
                "{loc}/{path} exists already (a random name drawn twice?); try again"
            )));
        }
        // Another writer may have written its lock between the check and
        // ours: look again, and back out if so (both may back out; neither
        // proceeds against the other).
        match check(&mut removed_stale) {
            Ok(None) => {}
            Ok(Some(refusal)) => {
                let _ = b.remove(&path);
                return Ok(Err(refusal));
            }
            Err(e) => {
                let _ = b.remove(&path);
                return Err(e);
            }
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let rb = b.clone();
        let rpath = path.clone();
        let refresher = std::thread::Builder::new()
            .name("bbsync-repo-lock".into())
            .spawn(move || {
                let mut rec = rec;
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(REFRESH_EVERY_MS))
                {
                    rec.refreshed_ms = now_ms();
                    if let Err(e) = rb.write(&rpath, &rec.encode()) {
                        tracing::warn!(path = %rpath, error = %e, "could not refresh a repository lock");
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                context: "starting the lock refresh thread".into(),
                source: e,
            })?;
        Ok(Ok(LockGuard {
            backend: b,
            path,
            stop: Some(stop),
            refresher: Some(refresher),
            removed_stale,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(exclusive: bool, refreshed_ms: u64) -> LockRecord {
        LockRecord {
            host: "ab".repeat(32),
            hostname: "bbs1".into(),
            pid: 42,
            exclusive,
            operation: "backup".into(),
            created_ms: 1_764_489_600_000,
            refreshed_ms,
        }
    }

    #[test]
    fn staleness() {
        let now = 1_764_489_600_000 + STALE_AFTER_MS;
        let l = rec(false, 1_764_489_600_000);
        assert!(
            !l.is_stale(now, "other", |_| false),
            "exactly the timeout is fresh"
        );
        assert!(l.is_stale(now + 1, "other", |_| true));
        assert!(l.is_stale(now, "bbs1", |_| false), "dead local holder");
        assert!(!l.is_stale(now, "bbs1", |p| p == 42));
        assert!(!rec(false, now + 60_000).is_stale(now, "other", |_| false));
    }

    #[test]
    fn conflicts_and_round_trip() {
        assert!(!rec(false, 0).conflicts_with(false));
        assert!(rec(false, 0).conflicts_with(true));
        assert!(rec(true, 0).conflicts_with(false));
        let l = rec(true, 5);
        assert_eq!(LockRecord::decode("locks/x", &l.encode()).unwrap(), l);
        assert!(LockRecord::decode("locks/x", b"{\"host\":1}").is_err());
        assert_eq!(
            rec(false, 0).refusal("/srv/r", "locks/ab", "pruned"),
            "backup repository /srv/r is locked by bbs1 (instance abababababababab, pid 42, since 2025-11-30T08:00:00Z) for a backup; nothing was pruned (retry later, or remove locks/ab if that process is gone)"
        );
    }

    #[test]
    fn shared_locks_coexist_an_exclusive_one_is_refused_stale_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(crate::backup::LocalDir::new(tmp.path()));
        let repo = Repo2::create(backend.clone()).unwrap();
        let host = "cd".repeat(32);
        let a = repo.lock(&host, false, "backup", "backed up").unwrap();
        let b = repo.lock(&host, false, "restore", "restored").unwrap();
        let e = repo
            .lock(&host, true, "prune", "pruned")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is locked by") && e.contains("nothing was pruned"),
            "{e}"
        );
        drop(a);
        drop(b);
        let p = repo.lock(&host, true, "prune", "pruned").unwrap();
        let e = repo
            .lock(&host, false, "backup", "backed up")
            .unwrap_err()
            .to_string();
        assert!(e.contains("for a prune; nothing was backed up"), "{e}");
        let held = p.path().to_string();
        drop(p);
        assert!(
            backend.size(&held).unwrap().is_none(),
            "a dropped lock is removed"
        );
        // A lock of a dead process of this machine is stale: removed.
        let dead = LockRecord {
            host: host.clone(),
            hostname: hostname(),
            pid: u32::MAX - 1,
            exclusive: true,
            operation: "prune".into(),
            created_ms: now_ms(),
            refreshed_ms: now_ms(),
        };
        assert!(backend.write_new("locks/0123", &dead.encode()).unwrap());
        assert!(!backend.write_new("locks/0123", b"x").unwrap());
        let l = repo.lock(&host, false, "backup", "backed up").unwrap();
        assert_eq!(l.removed_stale, vec!["locks/0123".to_string()]);
    }
}
