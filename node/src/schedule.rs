//! The scheduled backups of `serve` (`[[backup]]` in config.toml): one
//! task on the node's runtime that sleeps until the next entry is due and
//! runs it on the blocking pool (backup, then retention; see
//! `bbsync_store::backup::schedule`). Entries run one at a time; a failed
//! run is logged and tried again at its next time, and never stops the
//! node.

use std::{sync::Arc, time::Duration};

use bbsync_protocol::now_ms;
use bbsync_store::{
    Store,
    backup::schedule::{Scheduled, run_job},
};

/// The longest sleep between two looks at the wall clock, so that a clock
/// that was set (or a host that slept) is noticed within a minute.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The running scheduler of a serving node; dropping it stops it (a
/// backup already running finishes on the blocking pool).
#[derive(Debug)]
pub struct Scheduler {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts running `jobs` (made by `bbsync_store::backup::schedule::plan`)
/// on the current tokio runtime; `None` when there are none.
pub fn spawn(store: Arc<Store>, jobs: Vec<Scheduled>) -> Option<Scheduler> {
    if jobs.is_empty() {
        return None;
    }
    let jobs: Vec<Arc<Scheduled>> = jobs.into_iter().map(Arc::new).collect();
    Some(Scheduler {
        task: tokio::spawn(run(store, jobs)),
    })
}

async fn run(store: Arc<Store>, jobs: Vec<Arc<Scheduled>>) {
    let mut next: Vec<Option<u64>> = jobs.iter().map(|j| j.cron.next_after(now_ms())).collect();
    loop {
        for (job, next) in jobs.iter().zip(next.iter_mut()) {
            if !next.is_some_and(|t| t <= now_ms()) {
                continue;
            }
            let (store, running) = (store.clone(), job.clone());
            let ran =
                tokio::task::spawn_blocking(move || run_job(&store, &running.job, &running.repo))
                    .await;
            match ran {
                Ok(Ok(line)) => tracing::info!("{line}"),
                Ok(Err(e)) => tracing::warn!(
                    "scheduled backup into {} failed (tried again at the next tick): {e}",
                    job.repo
                ),
                Err(e) => tracing::error!("scheduled backup: the run did not finish: {e}"),
            }
            // The next time counts from when this run ended (a run that
            // outlasts its period is not repeated at once).
            *next = job.cron.next_after(now_ms());
        }
        let Some(due) = next.iter().flatten().min() else {
            return; // nothing matches ever again
        };
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        tokio::time::sleep(wait.min(MAX_SLEEP)).await;
    }
}
