//! `/metrics`: Prometheus text (format 0.0.4) through the official
//! `prometheus-client` crate. What lives in the node (requests, chunks,
//! jobs, backups) is counted as it happens; what lives in the store
//! (objects and bytes by kind, the last verify) and in the followers (lag,
//! applied changes) is read at scrape time.

use std::sync::atomic::Ordering;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
    registry::Registry,
};

use crate::{NodeStats, UpstreamStatus};
use bbsync_store::summary::StoreSummary;

type Labels = Vec<(String, String)>;

fn job_buckets() -> Histogram {
    Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0])
}

/// What the node counts as it runs (kept across scrapes).
#[derive(Debug)]
pub struct Metrics {
    job_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    backup_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    backup_last_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            job_seconds: Family::new_with_constructor(job_buckets),
            backup_last_success: Family::default(),
            backup_last_seconds: Family::default(),
        }
    }
}

impl Metrics {
    /// A job ended after `secs`.
    pub fn job_finished(&self, kind: &str, secs: f64, ok: bool) {
        self.job_seconds
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                (
                    "outcome".into(),
                    if ok { "success" } else { "failure" }.into(),
                ),
            ])
            .observe(secs);
    }

    /// A backup into `repo` succeeded after `secs`.
    pub fn backup_succeeded(&self, repo: &str, secs: f64) {
        let l = vec![("repository".to_string(), repo.to_string())];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.backup_last_success.get_or_create(&l).set(now);
        self.backup_last_seconds.get_or_create(&l).set(secs);
    }
}

/// Values read at scrape time.
#[derive(Debug)]
pub struct Scrape {
    /// The store's counts.
    pub summary: StoreSummary,
    /// Peers connected now.
    pub peers: u64,
    /// The followers.
    pub upstreams: Vec<UpstreamStatus>,
    /// The node's counters.
    pub stats: NodeStatsCopy,
    /// The last verify of the store (by the CLI or the API, kept in the
    /// store across restarts).
    pub last_verify: Option<bbsync_store::verify::LastVerify>,
}

/// A copy of [`NodeStats`].
#[derive(Debug, Default)]
pub struct NodeStatsCopy {
    requests_served: u64,
    requests_denied: u64,
    chunks_sent: u64,
    bytes_sent: u64,
    chunks_received: u64,
    bytes_received: u64,
}

impl NodeStatsCopy {
    /// Reads the counters.
    pub fn of(s: &NodeStats) -> Self {
        NodeStatsCopy {
            requests_served: s.requests_served.load(Ordering::Relaxed),
            requests_denied: s.requests_denied.load(Ordering::Relaxed),
            chunks_sent: s.chunks_sent.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            chunks_received: s.chunks_received.load(Ordering::Relaxed),
            bytes_received: s.bytes_received.load(Ordering::Relaxed),
        }
    }
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<T>(v: T) -> std::iter::Once<(Labels, T)> {
    std::iter::once((Vec::new(), v))
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.summary;
        let kind = |k: &String| vec![("kind".to_string(), k.clone())];
        gauge_family(
            &mut e,
            "bbsync_objects",
            "Live objects in the store, by kind",
            s.objects_by_kind.iter().map(|(k, v)| (kind(k), *v as f64)),
        )?;
        gauge_family(
            &mut e,
            "bbsync_object_bytes",
            "Plaintext bytes of the live objects, by kind",
            s.bytes_by_kind.iter().map(|(k, v)| (kind(k), *v as f64)),
        )?;
        gauge_family(
            &mut e,
            "bbsync_chunks",
            "Chunks in the chunk index",
            one(s.chunks as f64),
        )?;
        gauge_family(
            &mut e,
            "bbsync_chunk_bytes",
            "Stored bytes of the indexed chunks",
            one(s.chunk_bytes as f64),
        )?;
        gauge_family(
            &mut e,
            "bbsync_pack_files",
            "Pack files on disk",
            one(s.packs as f64),
        )?;
        gauge_family(
            &mut e,
            "bbsync_pack_bytes",
            "Bytes of the pack files on disk",
            one(s.pack_bytes as f64),
        )?;
        gauge_family(
            &mut e,
            "bbsync_trusted_instances",
            "Instances in the trust table",
            one(s.trusted as f64),
        )?;
        gauge_family(
            &mut e,
            "bbsync_peers_connected",
            "Peers connected now",
            one(self.peers as f64),
        )?;
        let st = &self.stats;
        counter(
            &mut e,
            "bbsync_requests_served",
            "Requests of peers answered",
            one(st.requests_served),
        )?;
        counter(
            &mut e,
            "bbsync_requests_denied",
            "Requests of peers answered Denied (not trusted)",
            one(st.requests_denied),
        )?;
        let dir = |d: &str| vec![("direction".to_string(), d.to_string())];
        counter(
            &mut e,
            "bbsync_chunks",
            "Chunks sent to and received from peers",
            [
                (dir("sent"), st.chunks_sent),
                (dir("received"), st.chunks_received),
            ]
            .into_iter(),
        )?;
        counter(
            &mut e,
            "bbsync_chunk_bytes_transferred",
            "Stored bytes of the chunks sent to and received from peers",
            [
                (dir("sent"), st.bytes_sent),
                (dir("received"), st.bytes_received),
            ]
            .into_iter(),
        )?;
        let up = |u: &UpstreamStatus| {
            vec![
                ("upstream".to_string(), u.instance.clone()),
                ("addr".to_string(), u.addr.clone()),
            ]
        };
        gauge_family(
            &mut e,
            "bbsync_follow_lag_seconds",
            "For how long this standby has been behind its upstream (0: caught up)",
            self.upstreams.iter().map(|u| (up(u), u.lag_secs)),
        )?;
        gauge_family(
            &mut e,
            "bbsync_follow_lag_changes",
            "Changes of the upstream not applied here yet",
            self.upstreams.iter().map(|u| (up(u), u.lag_changes as f64)),
        )?;
        counter(
            &mut e,
            "bbsync_follow_applied_changes",
            "Objects applied from the upstream since the node started",
            self.upstreams.iter().map(|u| (up(u), u.applied)),
        )?;
        if let Some(v) = &self.last_verify {
            gauge_family(
                &mut e,
                "bbsync_verify_last_timestamp_seconds",
                "When the last verify of the store ended (Unix time)",
                std::iter::once((Vec::new(), v.time_ms as f64 / 1000.0)),
            )?;
            gauge_family(
                &mut e,
                "bbsync_verify_last_problems",
                "Problems the last verify of the store found",
                std::iter::once((Vec::new(), v.problems as f64)),
            )?;
            gauge_family(
                &mut e,
                "bbsync_verify_problems",
                "Problems the last verify of the store found, by class",
                v.counts
                    .iter()
                    .map(|(c, n)| (vec![("class".to_string(), c.clone())], *n as f64)),
            )?;
        }
        Ok(())
    }
}

/// The text of `/metrics`.
pub fn render(metrics: &Metrics, scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    r.register(
        "bbsync_build",
        "This bbsync's version",
        Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );
    r.register(
        "bbsync_job_duration_seconds",
        "Duration of the jobs started through the admin API, by kind and outcome",
        metrics.job_seconds.clone(),
    );
    r.register(
        "bbsync_backup_last_success_timestamp_seconds",
        "When the last backup into the repository succeeded (Unix time)",
        metrics.backup_last_success.clone(),
    );
    r.register(
        "bbsync_backup_last_duration_seconds",
        "How long the last successful backup into the repository took",
        metrics.backup_last_seconds.clone(),
    );
    r.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)?;
    Ok(out)
}
