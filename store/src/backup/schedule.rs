//! Scheduled backups: `[[backup]]` entries of config.toml, each with a
//! 5-field cron expression (UTC), a repository (a directory or
//! `s3://bucket/prefix`) and a retention policy applied after each backup.
//! This module parses and runs one entry; `serve` owns the timer (the
//! node's `schedule`), where a failed run is logged and tried again at its
//! next time and never stops the node.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use super::{
    BackupConfig, Repo, RepoLocation, RepoStorage, create::BackupOptions, retention::Policy,
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

/// A parsed cron expression: 5 fields, `minute hour day-of-month month
/// day-of-week`, in UTC. The fields take what docs/backup.md promises
/// (`*`, numbers, ranges `a-b`, steps `*/n`, `a/n` and `a-b/n`, lists
/// `a,b`; day of week 0-7, 0 and 7 both Sunday); when both day fields are
/// restricted either one matching is enough (Vixie cron). The matching and
/// the calendar are croner's; the syntax is checked here first, so that
/// croner's extensions (names, `L`, `W`, `#`, seconds, `@daily`) are not
/// accepted and each error names the field.
#[derive(Debug, Clone)]
pub struct Cron(croner::Cron);

/// Checks one field of a cron expression (`lo`-`hi` its values).
fn check_field(text: &str, lo: u32, hi: u32, what: &str) -> std::result::Result<(), String> {
    for part in text.split(',') {
        let range = match part.split_once('/') {
            Some((r, s)) => {
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {s:?} in the {what} field"))?;
                r
            }
            None => part,
        };
        let num = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| format!("{s:?} is not a {what} ({lo}-{hi})"))
        };
        if range == "*" {
            continue;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                if num(a)? > num(b)? {
                    return Err(format!("range {range:?} of the {what} field is backwards"));
                }
            }
            None => {
                num(range)?;
            }
        }
    }
    Ok(())
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
        for (text, (lo, hi, what)) in parts.iter().zip([
            (0, 59, "minute"),
            (0, 23, "hour"),
            (1, 31, "day-of-month"),
            (1, 12, "month"),
            (0, 7, "day-of-week"),
        ]) {
            check_field(text, lo, hi, what).map_err(err)?;
        }
        // `a/n` (from a to the field's end) is croner's "sloppy" range.
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .sloppy_ranges(true)
            .build()
            .parse(&parts.join(" "))
            .map(Cron)
            .map_err(|e| err(e.to_string()))
    }
}

impl Cron {
    /// The first matching minute strictly after `after_ms` (ms since the
    /// epoch), or `None` when it never matches (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = chrono::DateTime::from_timestamp_millis(i64::try_from(after_ms).ok()?)?;
        let next = self.0.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
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
        match repo.prune(&job.policy(), super::retention::Removal::Apply) {
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

/// One `[[backup]]` entry, ready to run: its cron expression parsed and
/// its repository's storage resolved.
#[derive(Debug)]
pub struct Scheduled {
    /// The entry.
    pub job: BackupJob,
    /// When it runs.
    pub cron: Cron,
    /// Where it backs up.
    pub repo: RepoStorage,
}

/// The `[[backup]]` entries of `config`, ready to run; `default_repo` is
/// the repository of an entry that names none, `data_dir` the base of a
/// relative one. A bad cron expression, a bad repository location, or an
/// S3 repository without usable S3 settings (this process's `AWS_*`
/// variables, else `[s3]` of config.toml) is an error here, so that
/// `serve` stops before it starts. `serve` runs them (the node's
/// scheduler).
pub fn plan(
    config: &BackupConfig,
    default_repo: &RepoLocation,
    data_dir: &Path,
) -> Result<Vec<Scheduled>> {
    config
        .jobs
        .iter()
        .map(|j| {
            let cron: Cron = j.cron.parse()?;
            let repo = job_location(j, default_repo, data_dir)
                .and_then(|l| l.storage_with(config.s3.as_ref()))
                .map_err(|e| {
                    StoreError::Invalid(format!("[[backup]] with cron {:?}: {e}", j.cron))
                })?;
            Ok(Scheduled {
                job: j.clone(),
                cron,
                repo,
            })
        })
        .collect()
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
    fn the_dialect_is_the_documented_one_and_no_more() {
        let next = |c: &str, from: u64| {
            c.parse::<Cron>()
                .unwrap_or_else(|e| panic!("{e}"))
                .next_after(from)
        };
        // `a/n` runs from a to the field's end; `a-b/n`, lists.
        assert_eq!(
            next("5/20 * * * *", at(2026, 1, 1, 0, 6)),
            Some(at(2026, 1, 1, 0, 25))
        );
        assert_eq!(
            next("0 1-5/2,22 * * *", at(2026, 1, 1, 3, 0)),
            Some(at(2026, 1, 1, 5, 0))
        );
        assert_eq!(
            next("0 1-5/2,22 * * *", at(2026, 1, 1, 5, 0)),
            Some(at(2026, 1, 1, 22, 0))
        );
        // A month restricts the days (2026-12-01 is a Tuesday).
        assert_eq!(
            next("0 0 * 12 2", at(2026, 11, 26, 0, 0)),
            Some(at(2026, 12, 1, 0, 0))
        );
        // croner's extensions are not part of it; each error names its field.
        for bad in [
            "0 0 * * MON",
            "0 0 * JAN *",
            "0 0 L * *",
            "0 0 * * 1#2",
            "@daily",
            "0 0 0 * * *",
            "/5 * * * *",
            "0 0 * * 8",
        ] {
            assert!(bad.parse::<Cron>().is_err(), "{bad}");
        }
        assert_eq!(
            "61 * * * *"
                .parse::<Cron>()
                .expect_err("61 is no minute")
                .to_string(),
            "cron expression \"61 * * * *\": \"61\" is not a minute (0-59)"
        );
        assert_eq!(
            "0 0 * * 5-1"
                .parse::<Cron>()
                .expect_err("backwards")
                .to_string(),
            "cron expression \"0 0 * * 5-1\": range \"5-1\" of the day-of-week field is backwards"
        );
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
