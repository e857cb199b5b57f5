//! Repository locks (docs/format.md §17.7): who is writing, and whether a
//! lock found in `locks/` stops this writer; taking one (check, conditional
//! create, check again), waiting for one (bounded), refreshing it, and
//! noticing when it was lost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

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
    /// Which run of `pid` holds it: `<boot id>/<start time in clock
    /// ticks>` of the process (Linux `/proc`), so that a pid reused by
    /// another process after the holder died, or a reboot, is not taken
    /// for the holder. Absent where `/proc` is not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
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

    /// Whether the holder of this lock, written on this machine, still
    /// runs: its pid runs and, when the record says which run of the pid
    /// it was ([`LockRecord::process`]), the process with that pid now is
    /// that run.
    pub fn holder_alive(&self) -> bool {
        pid_alive(self.pid)
            && self
                .process
                .as_deref()
                .is_none_or(|p| process_stamp(self.pid).is_none_or(|now| now == p))
    }

    /// Whether this record, found on a machine named like this one, was
    /// written by this machine in this boot: only then can its pid be
    /// checked here. A record of a machine that merely has the same host
    /// name (another container, a cloned VM) or of an earlier boot says
    /// nothing about processes here; the time rule alone decides for it.
    pub fn from_this_boot(&self) -> bool {
        match (&self.process, boot_id()) {
            (Some(p), Some(b)) => p.split('/').next() == Some(b.as_str()),
            // No stamp: the pid rule of the host name alone (as written
            // before stamps existed, or without /proc).
            _ => true,
        }
    }

    /// The refusal an operator sees, for `repo` and the refused operation.
    pub fn refusal(&self, repo: &str, path: &str, refused: &str) -> String {
        // (A holder without a store, `backups verify` for one, names no
        // instance: "instance unknown".)
        format!(
            "backup repository {repo} is locked by {} (instance {}, pid {}, since {}) for a {}; nothing was {refused} (retry later, or remove {path} if that process is gone)",
            one_line(&self.hostname, 255),
            // Read from a file anyone with write access to the repository
            // may have written: by characters, never a byte slice that
            // could split one, and on one line.
            if self.host.is_empty() {
                "unknown".to_string()
            } else {
                one_line(&self.host, 16)
            },
            self.pid,
            super::super::rfc3339(self.created_ms),
            one_line(&self.operation, 64),
        )
    }
}

/// At most `max` characters of `s`, control characters shown escaped.
fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
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

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `<boot id>/<start time>` of a running process (see
/// [`LockRecord::process`]); `None` when it does not run or `/proc` does
/// not say.
pub fn process_stamp(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // the fields after the last ')' start at field 3 (state); start time
    // is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{}/{start}", boot_id()?))
}

/// Who takes a lock, and how long to wait for a conflicting one to go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// The instance taking it (hex), for the record and messages.
    pub host: String,
    /// How long to wait for a conflicting lock (`--lock-wait`; zero:
    /// refuse at once).
    pub wait: Duration,
}

/// A lock held on a repository: refreshed by a thread, removed on drop.
#[must_use = "the lock is released when this is dropped"]
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    path: String,
    /// Set by the refresh thread when the lock file was found removed (by
    /// another writer that took it for stale) or could not be refreshed
    /// for so long that others may take it for stale.
    lost: Arc<AtomicBool>,
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

    /// Checks that the lock is still held: its file is there and the
    /// refresh thread has not lost it. A writer calls this before each
    /// step that others must not see half-done (prune before it removes
    /// anything; a backup before its snapshot): a lock removed as stale
    /// by another writer no longer excludes anyone.
    pub fn ensure_held(&self) -> Result<()> {
        let loc = self.backend.location();
        let present = self
            .backend
            .size(&self.path)
            .map_err(repo_io_err(format!("reading {loc}/{}", self.path)))?
            .is_some();
        if !present || self.lost.load(Ordering::SeqCst) {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::Repo(format!(
                "the lock {loc}/{} was lost (removed by another writer that took it for stale, or not refreshed for {} minutes); stopped before changing more",
                self.path,
                STALE_AFTER_MS / 60_000
            )));
        }
        Ok(())
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

/// Why a lock was not taken.
enum NotTaken {
    /// A conflicting live lock (the refusal text).
    Conflict(String),
    /// Anything else (storage errors).
    Failed(StoreError),
}

/// What a lock is taken for: shared or exclusive, and the words of its
/// messages (the operation a holder is named doing, and what a refused
/// command did not do: "pruned", "backed up", ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockFor {
    /// Exclusive (prune, delete, migration) or shared (everything else).
    pub exclusive: bool,
    /// What the holder does, as a lock record says it.
    pub operation: &'static str,
    /// What a refused command did not do.
    pub refused: &'static str,
}

impl LockFor {
    const fn shared(operation: &'static str, refused: &'static str) -> LockFor {
        LockFor {
            exclusive: false,
            operation,
            refused,
        }
    }

    const fn exclusive(operation: &'static str, refused: &'static str) -> LockFor {
        LockFor {
            exclusive: true,
            operation,
            refused,
        }
    }

    /// `backup` (shared).
    pub const BACKUP: LockFor = LockFor::shared("backup", "backed up");
    /// `restore` (shared).
    pub const RESTORE: LockFor = LockFor::shared("restore", "restored");
    /// `backups export` (shared).
    pub const EXPORT: LockFor = LockFor::shared("export", "exported");
    /// `backups stats` (shared).
    pub const STATS: LockFor = LockFor::shared("stats", "counted");
    /// `backups verify` (shared).
    pub const VERIFY: LockFor = LockFor::shared("verify", "verified");
    /// `backups prune` (exclusive).
    pub const PRUNE: LockFor = LockFor::exclusive("prune", "pruned");
    /// `backups delete` (exclusive).
    pub const FORGET: LockFor = LockFor::exclusive("forget", "forgotten");
    /// `backups migrate` (exclusive).
    pub const MIGRATION: LockFor = LockFor::exclusive("migration", "migrated");
}

impl Repo2 {
    /// Takes a lock for `what` (docs/format.md §17.7). Stale locks are
    /// removed; a conflicting live one refuses with
    /// [`LockRecord::refusal`]. Does not wait: [`Repo2::lock_with`] does.
    pub fn lock(&self, host: &str, what: LockFor) -> Result<LockGuard> {
        let opts = LockOptions {
            host: host.to_string(),
            wait: Duration::ZERO,
        };
        self.lock_with(&opts, what)
    }

    /// [`Repo2::lock`], waiting up to `opts.wait` for conflicting locks to
    /// go (retrying with a growing, jittered pause of 50 ms to 2 s), then
    /// refusing with the holder named.
    pub fn lock_with(&self, opts: &LockOptions, what: LockFor) -> Result<LockGuard> {
        let deadline = Instant::now() + opts.wait;
        let mut pause = Duration::from_millis(50);
        let mut removed_stale = Vec::new();
        let mut said = false;
        loop {
            match self.try_lock(&opts.host, what, &mut removed_stale) {
                Ok(mut g) => {
                    g.removed_stale = removed_stale;
                    return Ok(g);
                }
                Err(NotTaken::Failed(e)) => return Err(e),
                Err(NotTaken::Conflict(msg)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(StoreError::Repo(msg));
                    }
                    if !said {
                        tracing::warn!(
                            "waiting up to {}s (--lock-wait) for the lock: {msg}",
                            opts.wait.as_secs()
                        );
                        said = true;
                    }
                    // Jitter: two writers that backed out of each other's
                    // way do not retry in step.
                    let jitter =
                        rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..=pause.as_millis() as u64);
                    let sleep = (pause / 2 + Duration::from_millis(jitter / 2)).min(deadline - now);
                    std::thread::sleep(sleep);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// [`Repo2::lock_with`] for `host`, waiting up to `wait` (`--lock-wait`).
    pub fn lock_waiting(&self, host: &str, what: LockFor, wait: Duration) -> Result<LockGuard> {
        let opts = LockOptions {
            host: host.to_string(),
            wait,
        };
        self.lock_with(&opts, what)
    }

    fn try_lock(
        &self,
        host: &str,
        what: LockFor,
        removed_stale: &mut Vec<String>,
    ) -> std::result::Result<LockGuard, NotTaken> {
        let LockFor {
            exclusive,
            operation,
            refused,
        } = what;
        let b = self.backend_arc();
        let loc = b.location();
        let me = hostname();
        let now = now_ms();
        let pid = std::process::id();
        let rec = LockRecord {
            host: host.to_string(),
            hostname: me.clone(),
            pid,
            exclusive,
            operation: operation.to_string(),
            created_ms: now,
            refreshed_ms: now,
            process: process_stamp(pid),
        };
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let path = format!("locks/{}", hex::encode(id));
        let check = |removed: &mut Vec<String>| -> std::result::Result<(), NotTaken> {
            for (p, other) in others(&*b, &path).map_err(NotTaken::Failed)? {
                let stale = other.is_stale(now_ms(), &me, |_| {
                    !other.from_this_boot() || other.holder_alive()
                });
                if stale {
                    b.remove(&p)
                        .map_err(repo_io_err(format!("removing the stale lock {loc}/{p}")))
                        .map_err(NotTaken::Failed)?;
                    tracing::warn!(path = %p, holder = %other.hostname, pid = other.pid, "removed a stale repository lock");
                    removed.push(p);
                } else if other.conflicts_with(exclusive) {
                    return Err(NotTaken::Conflict(other.refusal(&loc, &p, refused)));
                }
            }
            Ok(())
        };
        check(removed_stale)?;
        let mut created = b.write_new(&path, &rec.encode());
        if matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            // A local write_new's temp file removed under it by a prune's
            // sweep of temp files (it holds the exclusive lock, and this
            // writer is about to see it): once more.
            created = b.write_new(&path, &rec.encode());
        }
        let created = created
            .map_err(repo_io_err(format!("writing {loc}/{path}")))
            .map_err(NotTaken::Failed)?;
        if !created {
            return Err(NotTaken::Failed(StoreError::Repo(format!(
                "{loc}/{path} exists already (a random name drawn twice?); try again"
            ))));
        }
        // Another writer may have written its lock between the check and
        // ours: look again, and back out if so (both may back out; neither
        // proceeds against the other, and the waiting loop retries with
        // jitter).
        if let Err(e) = check(removed_stale) {
            let _ = b.remove(&path);
            return Err(e);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let rb = b.clone();
        let rpath = path.clone();
        let rlost = lost.clone();
        let refresher = std::thread::Builder::new()
            .name("bbsync-repo-lock".into())
            .spawn(move || refresh(&*rb, &rpath, rec, &rlost, &stopped))
            .map_err(|e| {
                let _ = b.remove(&path);
                NotTaken::Failed(StoreError::Io {
                    context: "starting the lock refresh thread".into(),
                    source: e,
                })
            })?;
        Ok(LockGuard {
            backend: b,
            path,
            lost,
            stop: Some(stop),
            refresher: Some(refresher),
            removed_stale: Vec::new(),
        })
    }
}

/// The refresh loop of a held lock: every [`REFRESH_EVERY_MS`], unless the
/// file is gone (another writer removed it as stale: never recreated, the
/// lock is lost) or refreshing has failed for so long that others may
/// take it for stale (lost too).
fn refresh(
    b: &dyn Backend,
    path: &str,
    mut rec: LockRecord,
    lost: &AtomicBool,
    stopped: &mpsc::Receiver<()>,
) {
    let mut last_ok = rec.refreshed_ms;
    while let Err(mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(Duration::from_millis(REFRESH_EVERY_MS))
    {
        match b.size(path) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(path, "the repository lock was removed by another writer");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(path, error = %e, "could not check a repository lock");
                if now_ms().saturating_sub(last_ok) > STALE_AFTER_MS - REFRESH_EVERY_MS {
                    lost.store(true, Ordering::SeqCst);
                }
                continue;
            }
        }
        rec.refreshed_ms = now_ms();
        match b.write(path, &rec.encode()) {
            Ok(()) => last_ok = rec.refreshed_ms,
            Err(e) => {
                tracing::warn!(path, error = %e, "could not refresh a repository lock");
                if now_ms().saturating_sub(last_ok) > STALE_AFTER_MS - REFRESH_EVERY_MS {
                    lost.store(true, Ordering::SeqCst);
                }
            }
        }
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
            process: None,
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
        let mut odd = rec(false, 0);
        odd.host = "é".repeat(20);
        assert!(
            odd.refusal("/srv/r", "locks/ab", "pruned")
                .contains(&"é".repeat(16))
        );
        odd.hostname = "evil\nerror: forged".into();
        assert!(!odd.refusal("/srv/r", "locks/ab", "pruned").contains('\n'));
        odd.host.clear();
        assert!(
            odd.refusal("/srv/r", "locks/ab", "pruned")
                .contains("(instance unknown, pid 42")
        );
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
        let a = repo.lock(&host, LockFor::BACKUP).unwrap();
        let b = repo.lock(&host, LockFor::RESTORE).unwrap();
        let e = repo.lock(&host, LockFor::PRUNE).unwrap_err().to_string();
        assert!(
            e.contains("is locked by") && e.contains("nothing was pruned"),
            "{e}"
        );
        drop(a);
        drop(b);
        let p = repo.lock(&host, LockFor::PRUNE).unwrap();
        let e = repo.lock(&host, LockFor::BACKUP).unwrap_err().to_string();
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
            process: None,
        };
        assert!(backend.write_new("locks/0123", &dead.encode()).unwrap());
        assert!(!backend.write_new("locks/0123", b"x").unwrap());
        let l = repo.lock(&host, LockFor::BACKUP).unwrap();
        assert_eq!(l.removed_stale, vec!["locks/0123".to_string()]);
    }
}
