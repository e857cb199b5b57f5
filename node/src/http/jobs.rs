//! Jobs started through the API: clone, fetch-missing, backup, verify (of
//! the store or of a backup repository), restore and prune. Each runs the
//! same library function the CLI command runs (`clone_from`,
//! `fetch_missing`, `Store::backup`, `Store::verify`, `Repo::verify`,
//! `Store::restore`, `Repo::prune`), with a [`Progress`] that records its
//! phase and counts, keeps a log tail and sends events.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use bbsync_store::{
    backup::{
        RepoLocation, RepoStorage, create::BackupOptions, restore::RestoreOptions,
        retention::Policy,
    },
    progress::Progress,
    sync::Selection,
};
use serde::{Deserialize, Serialize};

use super::{HttpError, Shared, events::now_ms};
use crate::{CloneOptions, NodeHandle, clone_from, dial, fetch_missing};

/// Lines of log kept per job.
const LOG_TAIL: usize = 200;
/// Finished jobs kept in the list (the oldest are forgotten first).
const KEEP_FINISHED: usize = 100;
/// Progress events of one job at most this often.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

fn default_jobs() -> usize {
    16
}

fn default_true() -> bool {
    true
}

/// What a job does (the body of `POST /api/v1/jobs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobSpec {
    /// `bbsync clone ADDR [--peer ADDR]...`, on the serving node.
    Clone {
        /// The source's full address (ending in /p2p/<PeerId>); or leave it
        /// out and name `instance`.
        #[serde(default)]
        addr: Option<String>,
        /// A trusted instance (id or unique prefix): its card's addresses.
        #[serde(default)]
        instance: Option<String>,
        /// More sources of chunks.
        #[serde(default)]
        peers: Vec<String>,
        /// `KIND[:NAME]` selections (as `--only`).
        #[serde(default)]
        only: Vec<String>,
        /// As `--skip-config`.
        #[serde(default)]
        skip_config: bool,
        /// As `--skip-applets`.
        #[serde(default)]
        skip_applets: bool,
        /// Chunk requests in flight.
        #[serde(default = "default_jobs")]
        jobs: usize,
    },
    /// `bbsync fetch-missing [--from ADDR]...`.
    FetchMissing {
        /// Peers to fetch from [default: config `peers`].
        #[serde(default)]
        from: Vec<String>,
        /// Chunk requests in flight.
        #[serde(default = "default_jobs")]
        jobs: usize,
    },
    /// `bbsync backup`.
    Backup {
        /// Repository: a directory (relative: under the data dir) or
        /// `s3://bucket/prefix` [default: config `backup_repo`, else
        /// <data>/backup].
        #[serde(default)]
        repo: Option<String>,
        /// As `--only`.
        #[serde(default)]
        only: Vec<String>,
        /// Free text.
        #[serde(default)]
        description: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// `bbsync verify [--read-data]`.
    Verify {
        /// Re-hash every chunk.
        #[serde(default)]
        read_data: bool,
    },
    /// `bbsync backups verify [ID] [--read-data]`.
    BackupVerify {
        /// Repository (as for `backup`).
        #[serde(default)]
        repo: Option<String>,
        /// Only this snapshot.
        #[serde(default)]
        snapshot: Option<String>,
        /// Re-hash every chunk.
        #[serde(default)]
        read_data: bool,
    },
    /// `bbsync restore [SNAPSHOT]`.
    Restore {
        /// Repository (as for `backup`).
        #[serde(default)]
        repo: Option<String>,
        /// Snapshot id, unique prefix or `latest` [default: latest].
        #[serde(default)]
        snapshot: Option<String>,
        /// As `--only`.
        #[serde(default)]
        only: Vec<String>,
        /// As `--overwrite`.
        #[serde(default)]
        overwrite: bool,
        /// As `--rekey`.
        #[serde(default)]
        rekey: bool,
        /// As `--skip-chunks`.
        #[serde(default)]
        skip_chunks: bool,
        /// Back the store up first (`--no-safety-snapshot` sets it false).
        #[serde(default = "default_true")]
        safety_snapshot: bool,
        /// As `--trust-host CARD`.
        #[serde(default)]
        trust_host: Option<String>,
    },
    /// `bbsync backups prune`.
    Prune {
        /// Repository (as for `backup`).
        #[serde(default)]
        repo: Option<String>,
        /// As `--keep-last`.
        #[serde(default)]
        keep_last: u32,
        /// As `--keep-daily`.
        #[serde(default)]
        keep_daily: u32,
        /// As `--keep-weekly`.
        #[serde(default)]
        keep_weekly: u32,
        /// As `--keep-monthly`.
        #[serde(default)]
        keep_monthly: u32,
        /// Report only.
        #[serde(default)]
        dry_run: bool,
    },
}

impl JobSpec {
    /// The kind's name (`clone`, `fetch-missing`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Clone { .. } => "clone",
            JobSpec::FetchMissing { .. } => "fetch-missing",
            JobSpec::Backup { .. } => "backup",
            JobSpec::Verify { .. } => "verify",
            JobSpec::BackupVerify { .. } => "backup-verify",
            JobSpec::Restore { .. } => "restore",
            JobSpec::Prune { .. } => "prune",
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Serialize)]
pub struct JobState {
    /// The job's id.
    pub id: u64,
    /// Its kind.
    pub kind: &'static str,
    /// What it was asked to do.
    pub spec: JobSpec,
    /// `running`, `succeeded` or `failed`.
    pub status: &'static str,
    /// The phase now (`manifests`, `chunks`, `backup`, ...).
    pub phase: String,
    /// Items of the phase done, and its total (0: unknown).
    pub items_done: u64,
    /// See `items_done`.
    pub items_total: u64,
    /// Bytes of the phase done, and its total (0: unknown).
    pub bytes_done: u64,
    /// See `bytes_done`.
    pub bytes_total: u64,
    /// Start (Unix ms).
    pub started_ms: u64,
    /// End (Unix ms), when over.
    pub finished_ms: Option<u64>,
    /// The report of the library function (as the CLI's `--json` prints it).
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The last lines of its log.
    pub log: VecDeque<String>,
}

/// A job: its state and where it sends events.
pub struct Job {
    state: Mutex<JobState>,
    shared: Arc<Shared>,
    last_event: Mutex<Instant>,
}

impl Job {
    fn with<R>(&self, f: impl FnOnce(&mut JobState) -> R) -> R {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A copy of its state.
    pub fn snapshot(&self) -> JobState {
        self.with(|s| s.clone())
    }

    fn progress_json(s: &JobState) -> serde_json::Value {
        serde_json::json!({
            "id": s.id, "kind": s.kind, "status": s.status, "phase": s.phase,
            "items_done": s.items_done, "items_total": s.items_total,
            "bytes_done": s.bytes_done, "bytes_total": s.bytes_total,
        })
    }

    /// Appends a log line (and sends it as a `job.log` event).
    pub fn log(&self, line: String) {
        let id = self.with(|s| {
            if s.log.len() == LOG_TAIL {
                s.log.pop_front();
            }
            s.log.push_back(line.clone());
            s.id
        });
        self.shared
            .events
            .emit("job.log", serde_json::json!({ "id": id, "line": line }));
    }
}

impl Progress for Job {
    fn start(&self, phase: &str, items: u64, bytes: u64) {
        let v = self.with(|s| {
            s.phase = phase.to_string();
            s.items_done = 0;
            s.bytes_done = 0;
            s.items_total = items;
            s.bytes_total = bytes;
            Self::progress_json(s)
        });
        self.log(format!("{phase}: started ({items} items, {bytes} bytes)"));
        self.shared.events.emit("job.progress", v);
    }

    fn advance(&self, items: u64, bytes: u64) {
        let v = self.with(|s| {
            s.items_done += items;
            s.bytes_done += bytes;
            Self::progress_json(s)
        });
        let mut last = self
            .last_event
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= PROGRESS_EVERY {
            *last = Instant::now();
            drop(last);
            self.shared.events.emit("job.progress", v);
        }
    }

    fn finish(&self) {
        let (v, line) = self.with(|s| {
            (
                Self::progress_json(s),
                format!(
                    "{}: done ({} items, {} bytes)",
                    s.phase, s.items_done, s.bytes_done
                ),
            )
        });
        self.log(line);
        self.shared.events.emit("job.progress", v);
    }
}

/// The jobs of a running server.
#[derive(Default)]
pub struct Jobs {
    next: Mutex<u64>,
    list: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<JobState> {
        let l = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.values().rev().map(|j| j.snapshot()).collect()
    }

    /// One job.
    pub fn get(&self, id: u64) -> Option<JobState> {
        let l = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.get(&id).map(|j| j.snapshot())
    }

    fn add(&self, spec: JobSpec, shared: Arc<Shared>) -> Arc<Job> {
        let id = {
            let mut n = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *n += 1;
            *n
        };
        let job = Arc::new(Job {
            state: Mutex::new(JobState {
                id,
                kind: spec.kind(),
                spec,
                status: "running",
                phase: "starting".into(),
                items_done: 0,
                items_total: 0,
                bytes_done: 0,
                bytes_total: 0,
                started_ms: now_ms(),
                finished_ms: None,
                result: None,
                error: None,
                log: VecDeque::new(),
            }),
            shared,
            last_event: Mutex::new(Instant::now()),
        });
        let mut l = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.insert(id, job.clone());
        // Forget the oldest finished jobs beyond the limit.
        let finished: Vec<u64> = l
            .iter()
            .filter(|(_, j)| j.with(|s| s.finished_ms.is_some()))
            .map(|(id, _)| *id)
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            l.remove(id);
        }
        job
    }
}

/// The repository of a job or of a read: `repo` (a directory, relative:
/// under the data dir; or `s3://bucket/prefix`), unset: the config's
/// default (`backup_repo`, else `<data>/backup`). An S3 location is opened
/// with the node's S3 settings (its own `AWS_*` variables, else `[s3]` of
/// config.toml; a request never carries keys). A bad location or missing
/// S3 settings is 400; nothing is sent yet.
pub fn repo_storage(shared: &Shared, repo: Option<&str>) -> Result<RepoStorage, HttpError> {
    let config = &shared.opts.backup_config;
    let dir = shared.store.dir();
    let loc = RepoLocation::resolve(repo, dir, || Ok(config.clone()), dir)?;
    Ok(loc.storage_with(config.s3.as_ref())?)
}

fn selection(only: &[String]) -> Result<Selection, HttpError> {
    Ok(Selection::from_only(only)?)
}

/// The addresses of a trusted instance (its card's, each ending in
/// /p2p/<its PeerId>).
fn instance_addrs(shared: &Shared, spec: &str) -> Result<Vec<String>, HttpError> {
    let store = &shared.store;
    let id = store.resolve_instance(spec)?;
    let peer = crate::peer_id_of(&id)
        .ok_or_else(|| HttpError::BadRequest(format!("instance {id} has no valid key")))?;
    let card = store
        .trust_list()?
        .into_iter()
        .find(|(c, _)| c.instance == id)
        .map(|(c, _)| c)
        .ok_or_else(|| HttpError::NotFound(format!("instance {id} is not trusted")))?;
    let mut addrs: Vec<String> = card
        .addresses
        .iter()
        .map(|a| {
            if a.contains("/p2p/") {
                a.clone()
            } else {
                format!("{a}/p2p/{peer}")
            }
        })
        .collect();
    // Cards often name no address: then the addresses config.toml knows
    // for that peer (`peers`, `follow`), pinned by its peer id.
    let suffix = format!("/p2p/{peer}");
    addrs.extend(shared.opts.node_config.addrs_of(&suffix).cloned());
    addrs.dedup();
    if addrs.is_empty() {
        return Err(HttpError::BadRequest(format!(
            "no address is known for instance {id} (its card names none, nor do `peers` and `follow` in config.toml); pass `addr`"
        )));
    }
    Ok(addrs)
}

/// Checks a job's arguments (so that bad input is a 400 before anything
/// starts), then starts it. Returns the job's state as it starts.
pub fn start(shared: &Arc<Shared>, spec: JobSpec) -> Result<JobState, HttpError> {
    // Everything that can be checked before the job runs is.
    let prepared = prepare(shared, &spec)?;
    let job = shared.jobs.add(spec, shared.clone());
    let state = job.snapshot();
    shared.events.emit(
        "job.started",
        serde_json::json!({ "id": state.id, "kind": state.kind }),
    );
    let shared2 = shared.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let kind = job.with(|s| s.kind);
        let out = run(&shared2, &job, prepared).await;
        let secs = started.elapsed().as_secs_f64();
        shared2.metrics.job_finished(kind, secs, out.is_ok());
        let v = job.with(|s| {
            s.finished_ms = Some(now_ms());
            match out {
                Ok(result) => {
                    s.status = "succeeded";
                    s.result = Some(result);
                }
                Err(e) => {
                    s.status = "failed";
                    s.error = Some(e);
                }
            }
            serde_json::json!({
                "id": s.id, "kind": s.kind, "status": s.status,
                "error": s.error, "result": s.result, "seconds": secs,
            })
        });
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            job.log(format!("failed: {e}"));
        } else {
            job.log(format!("finished in {secs:.2} s"));
        }
        shared2.events.emit("job.finished", v);
    });
    Ok(state)
}

/// A job's arguments, checked.
enum Prepared {
    /// Source addresses (the first that answers), other sources, selection, jobs.
    Clone(
        Vec<libp2p::Multiaddr>,
        Vec<libp2p::Multiaddr>,
        Selection,
        usize,
    ),
    Fetch(Vec<libp2p::Multiaddr>, usize),
    Backup(RepoStorage, Selection, Vec<String>, String, Vec<String>),
    Verify(bool),
    BackupVerify(RepoStorage, Option<String>, bool),
    Restore(RepoStorage, RestoreOptions),
    Prune(RepoStorage, Policy, bool),
}

fn prepare(shared: &Shared, spec: &JobSpec) -> Result<Prepared, HttpError> {
    Ok(match spec.clone() {
        JobSpec::Clone {
            addr,
            instance,
            peers,
            only,
            skip_config,
            skip_applets,
            jobs,
        } => {
            let texts = match (addr, instance) {
                (Some(a), None) => vec![a],
                (None, Some(i)) => instance_addrs(shared, &i)?,
                _ => {
                    return Err(HttpError::BadRequest(
                        "a clone needs exactly one of `addr` and `instance`".into(),
                    ));
                }
            };
            let source = dial::parse_peer_addrs(&texts)?;
            let extra = dial::parse_peer_addrs(&peers)?;
            let mut sel = selection(&only)?;
            sel.skip_config = skip_config;
            sel.skip_applets = skip_applets;
            Prepared::Clone(source, extra, sel, jobs.clamp(1, 256))
        }
        JobSpec::FetchMissing { from, jobs } => {
            let texts = if from.is_empty() {
                shared.opts.node_config.peers.clone()
            } else {
                from
            };
            if texts.is_empty() {
                return Err(HttpError::BadRequest(
                    "no peer to fetch from: pass `from` or set `peers` in config.toml".into(),
                ));
            }
            Prepared::Fetch(dial::parse_peer_addrs(&texts)?, jobs.clamp(1, 256))
        }
        JobSpec::Backup {
            repo,
            only,
            description,
            tags,
        } => Prepared::Backup(
            repo_storage(shared, repo.as_deref())?,
            selection(&only)?,
            only,
            description,
            tags,
        ),
        JobSpec::Verify { read_data } => Prepared::Verify(read_data),
        JobSpec::BackupVerify {
            repo,
            snapshot,
            read_data,
        } => Prepared::BackupVerify(repo_storage(shared, repo.as_deref())?, snapshot, read_data),
        JobSpec::Restore {
            repo,
            snapshot,
            only,
            overwrite,
            rekey,
            skip_chunks,
            safety_snapshot,
            trust_host,
        } => Prepared::Restore(
            repo_storage(shared, repo.as_deref())?,
            RestoreOptions {
                snapshot,
                selection: selection(&only)?,
                overwrite,
                rekey,
                skip_chunks,
                safety_snapshot,
                trust_host,
                clone_source: None,
            },
        ),
        JobSpec::Prune {
            repo,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
        } => Prepared::Prune(
            repo_storage(shared, repo.as_deref())?,
            Policy {
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
            },
            dry_run,
        ),
    })
}

fn json<T: Serialize>(v: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Runs blocking store work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the job's task failed: {e}"))?
}

async fn run(
    shared: &Arc<Shared>,
    job: &Arc<Job>,
    p: Prepared,
) -> Result<serde_json::Value, String> {
    let store = shared.store.clone();
    let h = shared.node.clone();
    match p {
        Prepared::Clone(source, extra, selection, jobs) => {
            run_clone(&h, store, job, &source, extra, selection, jobs).await
        }
        Prepared::Fetch(addrs, jobs) => run_fetch(&h, store, job, addrs, jobs).await,
        Prepared::Backup(storage, selection, only, description, tags) => {
            let job = job.clone();
            let metrics = shared.metrics.clone();
            let opts = BackupOptions {
                selection,
                only,
                description,
                tags,
                identity_passphrase: None,
                copy: false,
            };
            blocking(move || run_backup(&store, &job, &metrics, &storage, &opts)).await
        }
        Prepared::Verify(read_data) => {
            let job = job.clone();
            blocking(move || {
                let r = store
                    .verify(read_data, job.as_ref())
                    .map_err(|e| e.to_string())?;
                let v = json(&r)?;
                if !r.is_ok() {
                    return Err(format!("verify found {} problem(s)", r.problems.len()));
                }
                Ok(v)
            })
            .await
        }
        Prepared::BackupVerify(storage, snapshot, read_data) => {
            let job = job.clone();
            blocking(move || {
                let repo = storage.open().map_err(|e| e.to_string())?;
                let r = repo
                    .verify(snapshot.as_deref(), read_data, job.as_ref())
                    .map_err(|e| e.to_string())?;
                let v = json(&r)?;
                if !r.is_ok() {
                    return Err(format!(
                        "backups verify found {} problem(s)",
                        r.problems.len()
                    ));
                }
                Ok(v)
            })
            .await
        }
        Prepared::Restore(storage, opts) => {
            let job = job.clone();
            let data_dir = store.dir().to_path_buf();
            blocking(move || {
                let r = storage
                    .open()
                    .and_then(|repo| store.restore(&repo, &opts, job.as_ref()));
                bbsync_store::backup::history::record(
                    &data_dir,
                    std::path::Path::new(&storage.to_string()),
                    opts.snapshot.as_deref(),
                    &r,
                );
                let r = r.map_err(|e| e.to_string())?;
                json(&r)
            })
            .await
        }
        Prepared::Prune(storage, policy, dry_run) => {
            blocking(move || {
                let repo = storage.open().map_err(|e| e.to_string())?;
                let r = repo
                    .prune(
                        &policy,
                        bbsync_store::backup::retention::Removal::dry_run_if(dry_run),
                    )
                    .map_err(|e| e.to_string())?;
                json(&r)
            })
            .await
        }
    }
}

/// The options of a network job: its requests in flight, its progress
/// reported to the job.
fn job_options(job: &Arc<Job>, jobs: usize) -> CloneOptions {
    CloneOptions {
        jobs,
        progress: job.clone(),
        ..Default::default()
    }
}

/// A clone job: as `clone`, the source must answer; other sources only help.
async fn run_clone(
    h: &NodeHandle,
    store: Arc<bbsync_store::Store>,
    job: &Arc<Job>,
    source: &[libp2p::Multiaddr],
    extra: Vec<libp2p::Multiaddr>,
    selection: Selection,
    jobs: usize,
) -> Result<serde_json::Value, String> {
    // As `clone`: the source must answer; other sources only help.
    job.log(format!("dialing {}", source[0]));
    let mut peers = vec![
        dial::dial_first(h, source)
            .await
            .map_err(|e| e.to_string())?,
    ];
    if !extra.is_empty() {
        peers.extend(dial::dial_all(h, extra, false).await.unwrap_or_default());
    }
    let opts = CloneOptions {
        selection,
        ..job_options(job, jobs)
    };
    let r = clone_from(h, store, &peers, &opts)
        .await
        .map_err(|e| e.to_string())?;
    for (obj, why) in &r.rejected_manifests {
        job.log(format!("rejected: {obj}: {why}"));
    }
    let v = json(&r)?;
    if !r.rejected_manifests.is_empty() {
        return Err(format!(
            "{} manifest(s) were rejected",
            r.rejected_manifests.len()
        ));
    }
    if !r.complete {
        return Err("the clone is incomplete (run it again to resume)".into());
    }
    Ok(v)
}

/// A fetch-missing job: every source that answers.
async fn run_fetch(
    h: &NodeHandle,
    store: Arc<bbsync_store::Store>,
    job: &Arc<Job>,
    addrs: Vec<libp2p::Multiaddr>,
    jobs: usize,
) -> Result<serde_json::Value, String> {
    let peers = dial::dial_all(h, addrs, false)
        .await
        .map_err(|e| e.to_string())?;
    let opts = job_options(job, jobs);
    let r = fetch_missing(h, store, &peers, &opts)
        .await
        .map_err(|e| e.to_string())?;
    if r.still_missing > 0 {
        return Err(format!(
            "{} chunk(s) are still missing (no source had them)",
            r.still_missing
        ));
    }
    json(&r)
}

/// A backup job (on the blocking pool): into its repository, created if
/// needed; counted in the metrics.
fn run_backup(
    store: &bbsync_store::Store,
    job: &Arc<Job>,
    metrics: &super::metrics::Metrics,
    storage: &RepoStorage,
    opts: &BackupOptions,
) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    job.log(format!("repository {storage}"));
    let (repo, created) = storage
        .open_or_create(bbsync_store::backup::DEFAULT_REPO_FORMAT)
        .map_err(|e| e.to_string())?;
    let mut r = store
        .backup(&repo, opts, job.as_ref())
        .map_err(|e| e.to_string())?;
    r.repo_created = created;
    metrics.backup_succeeded(&repo.location(), started.elapsed().as_secs_f64());
    job.log(format!("snapshot {} in {}", r.snapshot, r.repo));
    json(&r)
}
