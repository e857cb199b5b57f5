//! Scheduled backups in `serve`: `[[backup]]` entries of config.toml, each
//! with a 5-field cron expression (UTC), a repository (a directory or
//! `s3://bucket/prefix`) and a retention policy applied after each backup.
//! A failed run is logged and tried again at the next tick; it never stops
//! the node.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    BackupConfig, Repo, RepoLocation, RepoStorage, create::BackupOptions, now_ms, retention::Policy,
};
use crate::{
    Store,
    error::{Result, StoreError},
    progress::NoProgress,
};

/// One `[[backup]]` entry of config.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupJob {
    /// When, as `minute hour day-of-month month day-of-week` (UTC).
    pub cron: String,
    /// The repository: a directory (relative: under the data dir) or
    /// `s3://bucket/prefix` [default: the config's `backup_repo`, else
    /// `<data>/backup`].
    #[serde(default)]
    pub repo: Option<PathBuf>,
    /// Tags of each snapshot.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Retention applied after each backup (none set: keep everything).
    #[serde(default)]
    pub keep_last: u32,
    /// See [`Policy`].
    #[serde(default)]
    pub keep_daily: u32,
    /// See [`Policy`].
    #[serde(default)]
    pub keep_weekly: u32,
    /// See [`Policy`].
    #[serde(default)]
    pub keep_monthly: u32,
}

impl BackupJob {
    /// The retention policy of this job.
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }
}

/// A parsed cron expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

fn field(text: &str, lo: u32, hi: u32, what: &str) -> std::result::Result<(u64, bool), String> {
    let mut bits = 0u64;
    let any = text == "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {s:?} in the {what} field"))?,
            ),
            None => (part, 1),
        };
        let num = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| format!("{s:?} is not a {what} ({lo}-{hi})"))
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let a = num(range)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a > b {
            return Err(format!("range {range:?} of the {what} field is backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

impl std::str::FromStr for Cron {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let err = |m: String| StoreError::Invalid(format!("cron expression {s:?}: {m}"));
        if parts.len() != 5 {
            return Err(err(
                "needs 5 fields: minute hour day-of-month month day-of-week".into(),
            ));
        }
        let (minutes, _) = field(parts[0], 0, 59, "minute").map_err(err)?;
        let (hours, _) = field(parts[1], 0, 23, "hour").map_err(err)?;
        let (days, days_any) = field(parts[2], 1, 31, "day-of-month").map_err(err)?;
        let (months, _) = field(parts[3], 1, 12, "month").map_err(err)?;
        let (mut weekdays, weekdays_any) = field(parts[4], 0, 7, "day-of-week").map_err(err)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            days_any,
            weekdays_any,
        })
    }
}

impl Cron {
    fn day_matches(&self, day: i64) -> bool {
        let (_, m, d) = super::civil_from_days(day);
        if self.months & (1 << m) == 0 {
            return false;
        }
        let wd = (day + 4).rem_euclid(7) as u32; // 0 = Sunday; 1970-01-01 was a Thursday
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << wd) != 0;
        // Vixie cron: when both are restricted, either one matching is enough.
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first matching minute strictly after `after_ms` (ms since the
    /// epoch), or `None` when nothing matches within five years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let mut minute = (after_ms / 60_000) as i64 + 1;
        let limit = minute + 5 * 366 * 24 * 60;
        while minute < limit {
            let day = minute.div_euclid(24 * 60);
            if !self.day_matches(day) {
                minute = (day + 1) * 24 * 60;
                continue;
            }
            let h = (minute.rem_euclid(24 * 60) / 60) as u32;
            if self.hours & (1 << h) == 0 {
                minute = (minute / 60 + 1) * 60;
                continue;
            }
            let m = minute.rem_euclid(60) as u32;
            if self.minutes & (1 << m) != 0 {
                return Some(minute as u64 * 60_000);
            }
            minute += 1;
        }
        None
    }
}

/// A scheduled backup that ended, as [`on_finished`] listeners see it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The repository (as `Repo::location` names it).
    pub repo: String,
    /// How long the backup (and its retention) took.
    pub seconds: f64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed (one line; never a key).
    pub error: Option<String>,
}

type Listener = Box<dyn Fn(&Finished) + Send + Sync>;

fn listeners() -> &'static Mutex<Vec<Listener>> {
    static L: Mutex<Vec<Listener>> = Mutex::new(Vec::new());
    &L
}

/// Calls `f` after every scheduled backup of this process (the admin
/// API's metrics and events use it); listeners stay for the process's life.
pub fn on_finished(f: impl Fn(&Finished) + Send + Sync + 'static) {
    listeners()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(f));
}

fn finished(f: &Finished) {
    for l in listeners()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        l(f);
    }
}

/// Runs one scheduled job into `repo` (a directory or an object store,
/// created in format 2 when nothing is there yet): backup, then retention.
/// Returns a summary line.
pub fn run_job(store: &Store, job: &BackupJob, repo: &RepoStorage) -> Result<String> {
    let started = std::time::Instant::now();
    let result = repo
        .open_or_create(super::DEFAULT_REPO_FORMAT)
        .and_then(|(repo, _)| run_job_in(store, job, &repo));
    finished(&Finished {
        // As `Repo::location` names it: a path, or s3://bucket/prefix.
        repo: repo.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    result
}

/// Where a `[[backup]]` entry backs up: its `repo` (a relative directory
/// under `data_dir`), else `default`.
pub fn job_location(
    job: &BackupJob,
    default: &RepoLocation,
    data_dir: &Path,
) -> Result<RepoLocation> {
    match &job.repo {
        Some(p) => {
            let text = p.to_str().ok_or_else(|| {
                StoreError::Invalid(format!(
                    "[[backup]] repo {:?} is not valid UTF-8",
                    p.display()
                ))
            })?;
            Ok(RepoLocation::parse(text)?.under(data_dir))
        }
        None => Ok(default.clone()),
    }
}

fn run_job_in(store: &Store, job: &BackupJob, repo: &Repo) -> Result<String> {
    let r = store.backup(
        repo,
        &BackupOptions {
            description: format!("scheduled ({})", job.cron),
            tags: job.tags.clone(),
            ..Default::default()
        },
        &NoProgress,
    )?;
    let mut line = format!(
        "scheduled backup {} into {}: {} objects, {} new chunks ({} bytes), {} manifests written, in {:.2}s",
        r.snapshot,
        repo.location(),
        r.objects,
        r.chunks_new,
        r.bytes_new,
        r.manifests_new,
        r.elapsed.as_secs_f64()
    );
    if !job.policy().is_empty() {
        // The backup stands whatever retention does: a retention that
        // fails (a damaged snapshot, a lock held, a format-2 repository
        // without the prune library) is logged as an error and said in the
        // summary, and the backup still counts as done.
        match repo.prune(&job.policy(), false) {
            Ok(p) => line.push_str(&format!(
                "; retention removed {} snapshots, {} chunks ({} bytes)",
                p.removed.len(),
                p.chunks_removed,
                p.bytes_removed
            )),
            Err(e) => {
                tracing::error!(
                    "scheduled backup {} into {}: retention failed (the backup stands): {e}",
                    r.snapshot,
                    repo.location()
                );
                line.push_str(&format!("; retention failed: {e}"));
            }
        }
    }
    Ok(line)
}

/// A running scheduler; dropping it stops it (at the next second).
#[derive(Debug)]
pub struct Scheduler {
    stop: Arc<AtomicBool>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the scheduler of the `[[backup]]` entries of `config` in a
/// thread; `default_repo` is the repository of an entry that names none. A bad
/// cron expression, a bad repository location, or an S3 repository
/// without usable S3 settings (this process's `AWS_*` variables, else
/// `[s3]` of config.toml) is an error here, before `serve` starts.
pub fn spawn(
    store: Arc<Store>,
    config: &BackupConfig,
    default_repo: RepoLocation,
) -> Result<Option<Scheduler>> {
    let jobs = config.jobs.clone();
    if jobs.is_empty() {
        return Ok(None);
    }
    let mut parsed = Vec::new();
    for j in jobs {
        let cron: Cron = j.cron.parse()?;
        let repo = job_location(&j, &default_repo, store.dir())
            .and_then(|l| l.storage_with(config.s3.as_ref()))
            .map_err(|e| StoreError::Invalid(format!("[[backup]] with cron {:?}: {e}", j.cron)))?;
        parsed.push((j, cron, repo));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("backup-scheduler".into())
        .spawn(move || {
            let mut next: Vec<Option<u64>> = parsed.iter().map(|(_, c, _)| c.next_after(now_ms())).collect();
            while !flag.load(Ordering::Relaxed) {
                let now = now_ms();
                for (i, (job, cron, repo)) in parsed.iter().enumerate() {
                    if next[i].is_some_and(|t| t <= now) {
                        match run_job(&store, job, repo) {
                            Ok(line) => tracing::info!("{line}"),
                            Err(e) => tracing::warn!(
                                "scheduled backup into {repo} failed (tried again at the next tick): {e}"
                            ),
                        }
                        next[i] = cron.next_after(now_ms());
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .map_err(|e| StoreError::Io {
            context: "starting the backup scheduler".into(),
            source: e,
        })?;
    Ok(Some(Scheduler { stop }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        // days from civil (inverse of civil_from_days), by search.
        let mut day = (y - 1970) * 365;
        while super::super::civil_from_days(day) < (y, mo, d) {
            day += 1;
        }
        while super::super::civil_from_days(day) > (y, mo, d) {
            day -= 1;
        }
        ((day * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60) * 1000) as u64
    }

    #[test]
    fn cron_next() {
        let c: Cron = "30 3 * * *".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.next_after(at(2026, 11, 26, 3, 0)),
            Some(at(2026, 11, 26, 3, 30))
        );
        assert_eq!(
            c.next_after(at(2026, 11, 26, 3, 30)),
            Some(at(2026, 11, 27, 3, 30))
        );
        let c: Cron = "*/15 * * * *".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.next_after(at(2026, 1, 1, 0, 7)),
            Some(at(2026, 1, 1, 0, 15))
        );
        // Sunday (2026-11-29 is a Sunday), 7 and 0 alike.
        let c: Cron = "0 0 * * 7".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.next_after(at(2026, 11, 26, 0, 0)),
            Some(at(2026, 11, 29, 0, 0))
        );
        // Day of month or day of week when both are given.
        let c: Cron = "0 12 1 * 1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.next_after(at(2026, 11, 26, 0, 0)),
            Some(at(2026, 11, 30, 12, 0))
        );
        let c: Cron = "0 0 31 2 *".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.next_after(at(2026, 1, 1, 0, 0)), None);
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(bad.parse::<Cron>().is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_buckets() {
        let p = Policy {
            keep_daily: 2,
            ..Default::default()
        };
        let snaps = vec![
            ("a".to_string(), at(2026, 11, 24, 1, 0)),
            ("b".to_string(), at(2026, 11, 25, 1, 0)),
            ("c".to_string(), at(2026, 11, 25, 2, 0)),
            ("d".to_string(), at(2026, 11, 26, 1, 0)),
        ];
        let keep = p.apply(&snaps);
        assert_eq!(keep.keys().cloned().collect::<Vec<_>>(), vec!["c", "d"]);
        let p = Policy {
            keep_last: 1,
            keep_monthly: 2,
            ..Default::default()
        };
        let snaps = vec![
            ("a".to_string(), at(2026, 9, 24, 1, 0)),
            ("b".to_string(), at(2026, 10, 25, 1, 0)),
            ("c".to_string(), at(2026, 10, 26, 2, 0)),
            ("d".to_string(), at(2026, 11, 26, 1, 0)),
        ];
        let keep = p.apply(&snaps);
        assert_eq!(keep.keys().cloned().collect::<Vec<_>>(), vec!["c", "d"]);
    }
}
