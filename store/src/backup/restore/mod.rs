//! `bbsync restore`: a snapshot back into the store.
//!
//! A backup repository is not a trust root: whoever can write its directory
//! can add or change files. So a restore first decides whether to believe
//! the snapshot at all ([`Store::accept_snapshot`]): its host's signature
//! must verify, and the host must be this instance, an instance this store
//! trusts `full`, or one the operator names with `--trust-host` (an
//! explicit act, like naming a clone's source). Only a snapshot of this
//! instance's own, signed, restored into a store with an empty trust table
//! (disaster recovery) brings its trust table along; a foreign trust table
//! is never imported. An unsigned (format-1) snapshot needs `--trust-host`.
//!
//! Then everything read is checked before anything is written: manifest
//! ids, signatures and authors (this instance, `full`, or the accepted
//! host), every envelope entry (only those whose signatures verify are
//! kept, and so covered by the record MAC), this instance's key against the
//! manifest's key commitment, chunk presence and sizes; chunk contents are
//! hashed as they are copied, and a mismatch undoes the chunks copied so
//! far. The chunks' dirty marker stays until the records are committed, so
//! a crash in between leaves nothing the next open does not collect.

mod copy;
mod host;
pub mod pins;
mod plan;
mod tree;

use std::time::{Duration, Instant};

use bbsync_protocol::{InstanceCard, InstanceId, ObjectId, Role, Signed, card_from_str};
use serde::Serialize;

use self::copy::ChunkCopy;
use self::host::is_full;
pub use self::host::{AcceptedHost, escrow_of, open_escrow, precheck_snapshot, snapshot_trust};
use self::plan::Plan;
pub use self::tree::TreeReport;
use super::{Repo, SnapshotFile, create::BackupOptions};
use crate::{
    Store,
    backup_api::{RecordError, RestoreRecords},
    error::{Result, StoreError},
    progress::{NoProgress, Progress},
    rekey::RekeyReport,
    sync::Selection,
};

/// What to restore and how.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot id, unique prefix or `latest` (`None`: the snapshot of
    /// this repository whose restore stopped, if its pins are still held,
    /// else the latest).
    pub snapshot: Option<String>,
    /// Which objects (default: all).
    pub selection: Selection,
    /// Replace objects the store holds at the same or a newer version.
    pub overwrite: bool,
    /// Add envelope entries for the current trusted `full` instances.
    pub rekey: bool,
    /// Restore manifests only (chunks come later from peers).
    pub skip_chunks: bool,
    /// Back the current store up into the repository first (unless empty).
    pub safety_snapshot: bool,
    /// `--trust-host CARD`: the operator vouches for the snapshot's host,
    /// which must be the instance of this card; it is trusted `full`.
    pub trust_host: Option<String>,
    /// `clone ADDR --from-backup REPO`: the clone's source, pinned by the
    /// `/p2p/<PeerId>` of ADDR (the operator's explicit act, DESIGN §2). A
    /// snapshot whose verified signature is by this instance is accepted
    /// as if its card were given with `--trust-host` (the clone trusts the
    /// source as `full` anyway); an unsigned one is not.
    pub clone_source: Option<InstanceId>,
}

/// What a restore did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreReport {
    /// The repository.
    pub repo: String,
    /// The snapshot restored.
    pub snapshot: String,
    /// A restore of this snapshot from this repository had stopped, and
    /// this one went on from its pinned chunks (`chunks_present` counts
    /// them).
    pub resumed: bool,
    /// Its host (short id) and how it was accepted: `this instance`,
    /// `trusted full`, or `--trust-host`.
    pub host: String,
    /// Why the host was believed.
    pub host_accepted: String,
    /// The safety snapshot taken first, if any.
    pub safety_snapshot: Option<String>,
    /// Objects in the snapshot.
    pub snapshot_objects: u64,
    /// Objects restored (new or replaced).
    pub restored: u64,
    /// Of those, replacing a version held here.
    pub replaced: u64,
    /// Held here at the same or a newer version: left as they are.
    pub skipped_existing: u64,
    /// Left out by `--only`.
    pub skipped_selection: u64,
    /// Objects without an envelope entry this instance can open (not restored).
    pub undecryptable: Vec<String>,
    /// Objects not restored for another reason (`kind:name`, why): an author
    /// this store does not trust, a name another live object holds here.
    pub refused: Vec<(String, String)>,
    /// Envelope entries left out because their signatures do not verify
    /// (or their wrapper is not trusted, or they are for another version).
    pub entries_dropped: u64,
    /// Chunks copied from the repository.
    pub chunks_copied: u64,
    /// Chunks the store already had.
    pub chunks_present: u64,
    /// Sealed bytes copied.
    pub bytes_copied: u64,
    /// Restored objects still lacking chunks (`--skip-chunks`).
    pub incomplete: u64,
    /// Instances added to the trust table (short ids): the host named by
    /// `--trust-host`, or the trust table of this instance's own snapshot.
    pub trusted: Vec<String>,
    /// What happened to the snapshot's trust table.
    pub trust_table: TrustTableFate,
    /// What `--rekey` changed.
    pub rekey: Option<RekeyReport>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// What a restore did with the snapshot's trust table (in reports and
/// JSON, the sentence [`std::fmt::Display`] gives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrustTableFate {
    /// The snapshot has none, or an empty one.
    #[default]
    Empty,
    /// Restored: the snapshot is this instance's own and the store had no
    /// trust table.
    Restored,
    /// Not restored: this store has a trust table of its own.
    KeptOwn,
    /// Not restored: the snapshot is another host's.
    OtherHost,
}

impl TrustTableFate {
    /// Whether the snapshot had a trust table that was left out.
    pub fn refused(self) -> bool {
        matches!(self, TrustTableFate::KeptOwn | TrustTableFate::OtherHost)
    }
}

impl std::fmt::Display for TrustTableFate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustTableFate::Empty => "empty",
            TrustTableFate::Restored => "restored (this instance's own snapshot)",
            TrustTableFate::KeptOwn => {
                "not restored: this store has a trust table of its own (trust changes only by `bbsync trust`)"
            }
            TrustTableFate::OtherHost => {
                "not restored: a snapshot's trust table is restored only into its own host"
            }
        })
    }
}

impl Serialize for TrustTableFate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The error of a restore that found damage in the repository.
fn damaged(repo: &Repo, path: &str, detail: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {} is damaged: {path}: {detail}; nothing was restored",
        repo.location()
    ))
}

impl Store {
    /// Restores a snapshot (see the module docs).
    pub fn restore(
        &self,
        repo: &Repo,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let start = Instant::now();
        let _lock = repo.lock(
            &self.instance_id().to_hex(),
            crate::backup::LockFor::RESTORE,
        )?;
        let pins = self.held_restore_pins()?;
        let location = repo.location();
        let snap_id = match (&opts.snapshot, &pins) {
            (Some(s), _) => repo.resolve_snapshot(s)?,
            // The restore that stopped, if its snapshot is still there.
            (None, Some(p)) if p.repo == location && !p.snapshot.is_empty() => {
                match repo.resolve_snapshot(&p.snapshot) {
                    Ok(id) if id == p.snapshot => {
                        tracing::info!(
                            "resuming the restore of snapshot {id} that stopped (give a snapshot id to restore another)"
                        );
                        id
                    }
                    _ => repo.resolve_snapshot("latest")?,
                }
            }
            (None, _) => repo.resolve_snapshot("latest")?,
        };
        let snap = repo.load_snapshot(&snap_id)?;
        let reader = repo.reader()?;

        // 1. Whether to believe the snapshot at all, and whose trust table
        // (if any) comes with it.
        let host = self.restore_host(&snap, opts)?;
        let mut report = RestoreReport {
            repo: location.clone(),
            snapshot: snap_id.clone(),
            resumed: pins.as_ref().is_some_and(|p| p.are_of(&location, &snap_id)),
            host: host.card.instance.short(),
            host_accepted: host.why.to_string(),
            snapshot_objects: snap.objects.len() as u64,
            ..Default::default()
        };
        let trust = self.restore_trust(&snap, &host, &mut report)?;
        let full = |a: &InstanceId| trust.accepted.contains(a) || is_full(self, a);

        // 2. Every manifest: read and checked before anything is written;
        // 3. the chunks the store lacks: present in the repository at
        // their sizes.
        let mut plan = self.plan_restore(repo, &reader, &snap, opts, &full, &mut report)?;
        // Read in the order of the repository's packs (format 2).
        reader.sort_by_location(&mut plan.needed);

        // 4. The safety snapshot of what the store holds now.
        if opts.safety_snapshot && !plan.records.is_empty() && !self.is_empty() {
            report.safety_snapshot = Some(self.safety_snapshot(repo, &snap_id)?);
        }

        // 5. Chunks, hashed as they are read, in groups made durable by
        // publish, after the pins (copy.rs); any damage undoes what this
        // restore published. The dirty marker stays until the records are
        // committed (the `Published` tokens are handed back only then), so
        // a crash in between leaves chunks the next open collects, not
        // orphans.
        let Plan {
            records,
            chunks,
            needed,
        } = plan;
        progress.start(
            "restore",
            needed.len() as u64,
            needed.iter().map(|n| u64::from(n.1)).sum(),
        );
        let mut copy = ChunkCopy::pin(self, (&location, &snap_id), &chunks, &needed)?;
        drop(chunks);
        if let Err(e) = copy.copy(repo, &reader, &needed, progress, &mut report) {
            copy.undo(&e);
            progress.finish();
            return Err(e);
        }
        progress.finish();
        // (What the commit does not need is not held meanwhile: at 200,000
        // objects the repository's index and the snapshot are 60 MB.)
        drop((needed, reader, snap));

        // 6. Trust, then the records, in one commit; then the chunks are
        // recorded (the dirty marker may go).
        let restored = match self.commit_restore(trust.cards, records, &mut report) {
            Ok(r) => {
                copy.finish();
                r
            }
            // Once the records' commit has begun, some may be written (a
            // flush that failed does not undo them): the chunks stay, and
            // so does the dirty marker, so the next open collects what no
            // record names.
            Err(RecordError::Writing(e)) => {
                copy.abandon();
                return Err(e);
            }
            Err(RecordError::Before(e)) => {
                copy.undo(&e);
                return Err(e);
            }
        };
        self.after_restore(&restored, opts, &mut report)?;
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Step 1: the snapshot's host, accepted (see [`Store::accept_snapshot`]);
    /// a clone's source vouches for a snapshot it signed.
    fn restore_host(&self, snap: &SnapshotFile, opts: &RestoreOptions) -> Result<AcceptedHost> {
        let source_card = opts
            .clone_source
            .filter(|_| snap.signature == super::SnapshotSignature::Verified)
            .filter(|src| card_from_str(&snap.host).is_ok_and(|c| c.instance == *src))
            .map(|_| snap.host.clone());
        self.accept_snapshot(snap, opts.trust_host.as_deref().or(source_card.as_deref()))
    }

    /// Step 4: a backup of the store as it is, into the repository the
    /// restore reads; returns its snapshot id.
    fn safety_snapshot(&self, repo: &Repo, snap_id: &str) -> Result<String> {
        let r = self.backup(
            repo,
            &BackupOptions {
                description: format!("safety snapshot before restoring {snap_id}"),
                tags: vec!["safety".into()],
                ..Default::default()
            },
            &NoProgress,
        )?;
        Ok(r.snapshot)
    }

    /// After the commit: the chunks of replaced versions collected, and
    /// with `--rekey` the restored objects rekeyed.
    fn after_restore(
        &self,
        restored: &[ObjectId],
        opts: &RestoreOptions,
        report: &mut RestoreReport,
    ) -> Result<()> {
        if report.replaced > 0 {
            // Chunks of the replaced versions; a failure is only logged
            // (the store's next open collects them).
            if let Err(e) = self.gc() {
                tracing::warn!("restore done, but removing unreferenced chunks failed: {e}");
            }
        }
        if opts.rekey && !restored.is_empty() {
            crate::failpoint::check("restore.rekey", || "rekeying restored objects".into())?;
            report.rekey = Some(self.rekey(restored, Default::default(), &NoProgress)?);
        }
        Ok(())
    }

    /// Step 6: the new trust and the planned records, in one commit (no
    /// trust is added when nothing is restored).
    fn commit_restore(
        &self,
        mut cards: Vec<(Signed<InstanceCard>, Role)>,
        records: RestoreRecords,
        report: &mut RestoreReport,
    ) -> std::result::Result<Vec<ObjectId>, RecordError> {
        crate::failpoint::hit("restore.commit").map_err(|source| {
            RecordError::Before(StoreError::Io {
                context: "committing the restored records".into(),
                source,
            })
        })?;
        if records.is_empty() {
            cards.clear();
        }
        let recorded = self.record_restored(&cards, records)?;
        report
            .trusted
            .extend(cards.iter().map(|(c, _)| c.instance.short()));
        report.incomplete += recorded.incomplete;
        report.replaced += recorded.replaced;
        report.restored = recorded.objects.len() as u64;
        Ok(recorded.objects)
    }
}
