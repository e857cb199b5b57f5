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

use std::{
    collections::{BTreeSet, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, ContentKey, EnvelopeEntry, Identity, InstanceCard, InstanceId, Manifest, ObjectId,
    Role, Signed, Unverified, card_from_str, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

use super::{
    Repo, SnapshotFile, SnapshotSignature, check::check_manifests, create::BackupOptions, escrow,
    repofile::KeyFile,
};
use crate::{
    Store,
    db::{ObjectState, ObjectWrite, TrustRecord},
    error::{Result, StoreError},
    progress::{NoProgress, Progress},
    rekey::RekeyReport,
    sync::Selection,
};

/// What to restore and how.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot id, unique prefix or `latest` (`None`: the latest).
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
    pub trust_table: String,
    /// What `--rekey` changed.
    pub rekey: Option<RekeyReport>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// What `restore --to-tree` wrote.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TreeReport {
    /// The snapshot.
    pub snapshot: String,
    /// Objects written.
    pub objects: u64,
    /// Files written.
    pub files: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Objects not written, with the reason.
    pub failed: Vec<(String, String)>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// One object of `--to-tree`: its label, and (files, bytes) or the error.
type ObjectOutcome = (String, Result<(u64, u64)>);

fn damaged_tree(repo: &Repo, path: &str, detail: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {} is damaged: {path}: {detail}",
        repo.location()
    ))
}

/// Chunk bytes staged per publish (two syncfs each).
const GROUP_BYTES: u64 = 128 * 1024 * 1024;
/// Chunk bytes read at once within a group (held until staged).
const READ_BYTES: u64 = 32 * 1024 * 1024;

/// `items` cut into consecutive slices of about `max` bytes each (at least
/// one item per slice).
fn byte_batches(items: &[(ChunkId, u32)], max: u64) -> impl Iterator<Item = &[(ChunkId, u32)]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut acc = 0u64;
        let mut n = 0;
        while n < rest.len() && (n == 0 || acc + u64::from(rest[n].1) <= max) {
            acc += u64::from(rest[n].1);
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

fn damaged(repo: &Repo, path: &str, detail: &str) -> StoreError {
    StoreError::Repo(format!(
        "backup repository {} is damaged: {path}: {detail}; nothing was restored",
        repo.location()
    ))
}

/// The identity escrow of a snapshot's host, if the repository holds one.
/// (Opening it with the passphrase is what proves it; the file's argon2
/// parameters are bounded before any work, see `escrow::open`.)
/// Format 1: `keys/identity.<host>`. Format 2: the key file the snapshot
/// names when it is one of its host's (`keys/<host>-<seq>`), else the
/// newest of its host's key files written no later than the snapshot, else
/// the newest of them (a migrated repository's).
pub fn escrow_of(repo: &Repo, snap: &SnapshotFile) -> Result<Option<(String, KeyFile)>> {
    let host = card_from_str(&snap.host)
        .map_err(|e| StoreError::Repo(format!("snapshot {}: bad host card: {e}", snap.id)))?;
    let path = if repo.v2().is_some() {
        let prefix = format!("{}-", host.instance.to_hex());
        let names = repo
            .backend()
            .list("keys")
            .map_err(super::repo_io_err(format!(
                "listing {}/keys",
                repo.location()
            )))?;
        let seq_of = |n: &str| {
            n.strip_prefix(&prefix)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let mut keys: Vec<(u64, &String)> = names
            .iter()
            .filter_map(|n| seq_of(n).map(|q| (q, n)))
            .collect();
        keys.sort();
        let named = snap
            .identity_escrow
            .as_deref()
            .and_then(|p| p.strip_prefix("keys/"))
            .filter(|n| keys.iter().any(|(_, k)| k.as_str() == *n));
        let snap_seq = super::snapshot_seq(&snap.id);
        let chosen = named.map(str::to_string).or_else(|| {
            keys.iter()
                .rev()
                .find(|(q, _)| *q <= snap_seq)
                .or_else(|| keys.last())
                .map(|(_, n)| (*n).clone())
        });
        match chosen {
            Some(n) => format!("keys/{n}"),
            None => return Ok(None),
        }
    } else {
        format!("keys/identity.{}", host.instance.to_hex())
    };
    match repo.backend().size(&path) {
        Ok(Some(n)) if n > escrow::MAX_KEY_FILE as u64 => {
            return Err(StoreError::Repo(format!(
                "{path} is damaged: {n} bytes (an escrow has at most {})",
                escrow::MAX_KEY_FILE
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(super::repo_io_err(format!("reading {path}"))(e)),
    }
    match repo.backend().read(&path) {
        Ok(bytes) => {
            let k: KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Repo(format!("{path} is damaged: {e}")))?;
            Ok(Some((path, k)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::repo_io_err(format!("reading {path}"))(e)),
    }
}

/// Opens an escrowed identity with a passphrase.
pub fn open_escrow(path: &str, k: &KeyFile, pass: &str) -> Result<Identity> {
    escrow::open(k, path, pass)
}

/// Why a store believes a snapshot's host (see [`Store::accept_snapshot`]).
#[derive(Debug, Clone)]
pub struct AcceptedHost {
    /// The host.
    pub card: Signed<InstanceCard>,
    /// How it was accepted: `this instance`, `trusted full`, `--trust-host`.
    pub why: &'static str,
    /// The operator named it with `--trust-host` and it is not `full` here
    /// yet: a restore that writes anything trusts it `full`.
    pub to_trust: bool,
    /// The snapshot's trust table, when it may be used: this instance's own
    /// signed snapshot.
    pub own_table: Option<Vec<(Signed<InstanceCard>, Role)>>,
}

/// One object to restore, fully checked.
struct Planned {
    manifest: Signed<Manifest>,
    envelope: Vec<Vec<u8>>,
    previous: Option<ObjectState>,
}

/// What the checks of one snapshot object found (restore, step 2).
enum Looked {
    /// Its manifest file is damaged: (where, what).
    Damaged(String, String),
    /// Outside the selection.
    NotSelected,
    /// Refused: (label, why).
    Refused(String, String),
    /// The store has this version or a later one.
    Existing,
    /// To restore, once its name is free.
    Candidate {
        label: String,
        /// Envelope entries left out.
        dropped: usize,
        /// A key unwraps for this instance (or it is a deletion).
        has_key: bool,
        planned: Box<Planned>,
    },
}

/// The checks on a snapshot's host that need no store: its card is valid,
/// a `--trust-host` card names that very instance, and an unsigned snapshot
/// is not restored without one. Done before anything is created (a disaster
/// recovery checks this before it opens the escrow).
pub fn precheck_snapshot(snap: &SnapshotFile, trust_host: Option<&str>) -> Result<()> {
    let host = card_from_str(&snap.host).map_err(|e| {
        StoreError::Repo(format!(
            "snapshot {}: bad host card: {e}; nothing was restored",
            snap.id
        ))
    })?;
    let who = host_label(&host);
    match trust_host {
        Some(text) => {
            let named =
                card_from_str(text).map_err(|e| StoreError::Trust(format!("--trust-host: {e}")))?;
            if named.instance != host.instance {
                return Err(StoreError::Trust(format!(
                    "--trust-host names {}, but snapshot {} was written by {who}; nothing was restored",
                    host_label(&named),
                    snap.id
                )));
            }
        }
        None if snap.signature != SnapshotSignature::Verified => {
            return Err(StoreError::Trust(format!(
                "snapshot {} is unsigned (written before bbsync signed snapshots): who wrote it and its trust table cannot be checked; nothing was restored. If you expect its host to be {who}, compare that fingerprint out of band and run again with --trust-host {} (its trust table is not restored)",
                snap.id, snap.host
            )));
        }
        None => {}
    }
    Ok(())
}

/// `name (instance <64 hex>)`, the name escaped for a terminal.
fn host_label(card: &InstanceCard) -> String {
    format!(
        "{} (instance {})",
        bbsync_protocol::text::escape_hidden(&card.name),
        card.instance.to_hex()
    )
}

impl Store {
    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.db().object_count() == 0
    }

    /// Decides whether to believe a snapshot's host (see the module docs):
    /// its signature verified when the snapshot was loaded; its host must be
    /// this instance, trusted `full`, or the instance of `trust_host`.
    /// Otherwise the error names the host's card and fingerprint and says
    /// how to proceed. Nothing is written.
    pub fn accept_snapshot(
        &self,
        snap: &SnapshotFile,
        trust_host: Option<&str>,
    ) -> Result<AcceptedHost> {
        precheck_snapshot(snap, trust_host)?;
        let host = card_from_str(&snap.host)
            .map_err(|e| StoreError::Repo(format!("snapshot {}: bad host card: {e}", snap.id)))?;
        let me = self.instance_id();
        if trust_host.is_some() {
            let own = host.instance == me;
            return Ok(AcceptedHost {
                to_trust: !own && !self.is_full(&host.instance),
                own_table: None,
                card: host,
                why: "--trust-host",
            });
        }
        if host.instance == me {
            let table = snap
                .trust
                .iter()
                .map(|t| {
                    let card = card_from_str(&t.card)
                        .map_err(|e| StoreError::Repo(format!("snapshot {}: {e}", snap.id)))?;
                    let role = t
                        .role
                        .parse::<Role>()
                        .map_err(|e| StoreError::Repo(format!("snapshot {}: {e}", snap.id)))?;
                    Ok((card, role))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(AcceptedHost {
                card: host,
                why: "this instance",
                to_trust: false,
                own_table: Some(table),
            });
        }
        if self.is_full(&host.instance) {
            return Ok(AcceptedHost {
                card: host,
                why: "trusted full",
                to_trust: false,
                own_table: None,
            });
        }
        Err(StoreError::Trust(format!(
            "snapshot {} was written by {}, which this node does not trust as full; nothing was restored. If that is the instance you expect, compare its fingerprint out of band and run again with --trust-host {}",
            snap.id,
            host_label(&host),
            snap.host
        )))
    }

    /// Restores a snapshot (see the module docs).
    pub fn restore(
        &self,
        repo: &Repo,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let start = Instant::now();
        let _lock = repo.lock(&self.instance_id().to_hex(), false, "restore", "restored")?;
        let snap_id = repo.resolve_snapshot(opts.snapshot.as_deref().unwrap_or("latest"))?;
        let snap = repo.load_snapshot(&snap_id)?;
        let me = self.instance_id();
        let reader = repo.reader()?;

        // 1. Whether to believe the snapshot at all, and whose trust table
        // (if any) comes with it.
        let source_card = opts
            .clone_source
            .filter(|_| snap.signature == super::SnapshotSignature::Verified)
            .filter(|src| card_from_str(&snap.host).is_ok_and(|c| c.instance == *src))
            .map(|_| snap.host.clone());
        let host =
            self.accept_snapshot(&snap, opts.trust_host.as_deref().or(source_card.as_deref()))?;
        let mut report = RestoreReport {
            repo: repo.location(),
            snapshot: snap_id.clone(),
            host: host.card.instance.short(),
            host_accepted: host.why.to_string(),
            snapshot_objects: snap.objects.len() as u64,
            ..Default::default()
        };
        let mut new_trust: Vec<(Signed<InstanceCard>, Role)> = Vec::new();
        if host.to_trust {
            new_trust.push((host.card.clone(), Role::Full));
        }
        match &host.own_table {
            Some(table) if self.db().trusted()?.is_empty() => {
                report.trust_table = "restored (this instance's own snapshot)".into();
                for (card, role) in table {
                    if card.instance != me {
                        new_trust.push((card.clone(), *role));
                    }
                }
            }
            Some(table) if !table.is_empty() => {
                report.trust_table =
                    "not restored: this store has a trust table of its own (trust changes only by `bbsync trust`)".into();
            }
            Some(_) => report.trust_table = "empty".into(),
            None if snap.trust.is_empty() => report.trust_table = "empty".into(),
            None => {
                report.trust_table =
                    "not restored: a snapshot's trust table is restored only into its own host"
                        .into();
            }
        }
        let pending_full: HashSet<InstanceId> = new_trust
            .iter()
            .filter(|(_, r)| *r == Role::Full)
            .map(|(c, _)| c.instance)
            .collect();
        let host_id = host.card.instance;
        let full = |a: &InstanceId| {
            *a == me || *a == host_id || self.is_full(a) || pending_full.contains(a)
        };

        // 2. Every manifest: read and checked before anything is written.
        let refs: Vec<&super::repofile::SnapObject> = snap.objects.iter().collect();
        let checked: Vec<_> = snap
            .objects
            .iter()
            .zip(check_manifests(&reader, &refs))
            .collect();
        // The per-object checks (the store's record, each envelope entry's
        // signature, whether a key unwraps) on all cores; what they decide
        // is then applied in the snapshot's order, as one pass would.
        let looked: Vec<Looked> = checked
            .into_par_iter()
            .map(|(o, c)| -> Result<Looked> {
                let c = match c {
                    Ok(c) => c,
                    Err((_, detail)) => {
                        return Ok(Looked::Damaged(
                            reader.manifest_path(&o.manifest_id),
                            detail,
                        ));
                    }
                };
                let m = c.manifest;
                if !opts.selection.matches(&m.kind, &m.name) {
                    return Ok(Looked::NotSelected);
                }
                let label = format!("{}:{}", m.kind, m.name);
                if !full(&m.author) {
                    let why = format!(
                        "written by instance {}, which this node does not trust",
                        m.author.short()
                    );
                    return Ok(Looked::Refused(label, why));
                }
                let previous = self.db().object(&m.object_id)?;
                if let Some(p) = &previous
                    && !opts.overwrite
                    && p.version >= m.version
                {
                    return Ok(Looked::Existing);
                }
                // Only entries whose signatures verify are kept (and MAC'd).
                let (envelope, values, dropped) =
                    self.verified_entry_values(&m, &c.envelope, &full);
                // A key of this instance's that unwraps and matches (what
                // `key_of` looks for, on entries verified just above).
                let has_key = m.deleted
                    || values
                        .into_iter()
                        .filter(|e| e.recipient == me)
                        .any(|e| self.usable_entry(&m, e).is_ok());
                Ok(Looked::Candidate {
                    label,
                    dropped,
                    has_key,
                    planned: Box::new(Planned {
                        manifest: m,
                        envelope,
                        previous,
                    }),
                })
            })
            .collect::<Result<_>>()?;
        let mut plan: Vec<Planned> = Vec::new();
        let mut names = HashSet::new();
        for l in looked {
            match l {
                Looked::Damaged(path, detail) => return Err(damaged(repo, &path, &detail)),
                Looked::NotSelected => report.skipped_selection += 1,
                Looked::Refused(label, why) => report.refused.push((label, why)),
                Looked::Existing => report.skipped_existing += 1,
                Looked::Candidate {
                    label,
                    dropped,
                    has_key,
                    planned,
                } => {
                    if let Err(why) = self.check_name_free(&planned.manifest, &mut names) {
                        report.refused.push((label, why));
                        continue;
                    }
                    if dropped > 0 {
                        tracing::warn!(
                            "{label}: {dropped} envelope entries left out (their signatures do not verify, or their wrapper is not trusted)"
                        );
                        report.entries_dropped += dropped as u64;
                    }
                    if !has_key {
                        report.undecryptable.push(label);
                        continue;
                    }
                    plan.push(*planned);
                }
            }
        }
        report.undecryptable.sort();
        report.refused.sort();

        // 3. Chunks the store lacks: present in the repository at their size.
        let mut needed: Vec<(ChunkId, u32)> = Vec::new();
        if !opts.skip_chunks {
            let mut seen = HashSet::new();
            for p in &plan {
                if p.manifest.deleted {
                    continue;
                }
                for c in &p.manifest.chunks {
                    if !seen.insert(c.id) {
                        continue;
                    }
                    if self.packs().size(&c.id) == Some(u64::from(c.len)) {
                        report.chunks_present += 1;
                        continue;
                    }
                    let label = format!("{}:{}", p.manifest.kind, p.manifest.name);
                    if let Err(detail) = reader.check_chunk(&c.id, c.len, &label)? {
                        return Err(damaged(repo, &reader.chunk_path(&c.id), &detail));
                    }
                    needed.push((c.id, c.len));
                }
            }
        }

        // Read in the order of the repository's packs (format 2).
        reader.sort_by_location(&mut needed);

        // 4. The safety snapshot of what the store holds now.
        if opts.safety_snapshot && !plan.is_empty() && !self.is_empty() {
            let r = self.backup(
                repo,
                &BackupOptions {
                    description: format!("safety snapshot before restoring {snap_id}"),
                    tags: vec!["safety".into()],
                    ..Default::default()
                },
                &NoProgress,
            )?;
            report.safety_snapshot = Some(r.snapshot);
        }

        // 5. Chunks, hashed as they are read, in groups made durable by
        // publish; any damage undoes what this restore published. The dirty
        // marker stays until the records are committed (the `Published`
        // tokens are handed back only then), so a crash in between leaves
        // chunks the next open collects, not orphans.
        progress.start(
            "restore",
            needed.len() as u64,
            needed.iter().map(|n| u64::from(n.1)).sum(),
        );
        // The chunks of every planned object are pinned (durably, before
        // the first is copied): a restore that fails on a read or a write
        // (disk full, a repository that stops answering) records what it
        // copied as pinned, and the next run finds those chunks present and
        // does not copy them again; every collection keeps them until a
        // restore finishes. Damage found in the repository undoes the
        // copies instead (nothing was restored). A restore that is killed
        // leaves the marker: the next open drops the pins and collects its
        // copies, as before (no orphan survives a crash).
        let pins = self.dir().join(crate::RESTORE_PINS);
        if !needed.is_empty() {
            let mut ids = Vec::new();
            let mut seen = HashSet::new();
            for p in &plan {
                for c in &p.manifest.chunks {
                    if seen.insert(c.id) {
                        ids.extend_from_slice(&c.id.0);
                    }
                }
            }
            crate::write_file_atomic(&pins, &ids, 0o600)?;
        }
        let clear_pins = || {
            if let Err(e) = std::fs::remove_file(&pins)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing {}: {e}", pins.display());
            }
        };
        let mut published: Vec<ChunkId> = Vec::new();
        let mut tokens = Vec::new();
        let undo = |e: &StoreError, published: &[ChunkId], tokens: Vec<crate::packs::Published>| {
            if matches!(e, StoreError::Io { .. }) {
                // Kept for the rerun: recorded as pinned (the pins file is
                // durable already), so no collection takes them.
                for t in tokens {
                    self.packs().recorded(t);
                }
                tracing::info!(
                    "restore stopped: the {} chunks it copied stay for the next restore (pinned in {})",
                    published.len(),
                    self.dir().join(crate::RESTORE_PINS).display()
                );
                return;
            }
            let _ = self.packs().remove_many(published);
            for t in tokens {
                self.packs().recorded(t);
            }
            clear_pins();
        };
        let mut i = 0;
        while i < needed.len() {
            let mut acc = 0u64;
            let mut j = i;
            while j < needed.len() && acc < GROUP_BYTES {
                acc += u64::from(needed[j].1);
                j += 1;
            }
            let group = &needed[i..j];
            let staged = Mutex::new(Vec::new());
            // Read a slice at a time (runs of a pack in one request, several
            // at once), then hashed and staged on all cores; the next slice
            // is read meanwhile (on object storage the reads are round
            // trips, on a directory they overlap the hashing).
            let batches: Vec<&[(ChunkId, u32)]> = byte_batches(group, READ_BYTES).collect();
            let reader = &reader;
            let r: Result<()> = std::thread::scope(|sc| {
                let read_ahead = |k: usize| {
                    batches
                        .get(k)
                        .copied()
                        .map(|b| sc.spawn(move || reader.read_chunks(b)))
                };
                let mut next = read_ahead(0);
                for (k, batch) in batches.iter().enumerate() {
                    let read = match next.take().map(std::thread::ScopedJoinHandle::join) {
                        Some(Ok(read)) => read,
                        // (a reader thread that panicked: read here instead)
                        _ => reader.read_chunks(batch),
                    };
                    next = read_ahead(k + 1);
                    batch
                        .par_iter()
                        .zip(read)
                        .try_for_each(|((id, len), bytes)| {
                            let bytes = bytes.map_err(super::repo_io_err(format!(
                                "reading {}/{}",
                                repo.location(),
                                reader.chunk_path(id)
                            )))?;
                            if check_chunk_id(id, &bytes).is_err() {
                                return Err(damaged(
                                    repo,
                                    &reader.chunk_path(id),
                                    &reader.bad_chunk(id),
                                ));
                            }
                            let s = self.packs().stage(*id, &bytes)?;
                            staged
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(s);
                            progress.advance(1, u64::from(*len));
                            Ok(())
                        })?;
                }
                Ok(())
            });
            let staged = staged
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = r {
                self.packs().discard(staged);
                undo(&e, &published, tokens);
                progress.finish();
                return Err(e);
            }
            let ids: Vec<ChunkId> = staged.iter().map(|s| s.id).collect();
            match self.packs().publish(staged) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    undo(&e, &published, tokens);
                    progress.finish();
                    return Err(e);
                }
            }
            published.extend(ids);
            report.chunks_copied += group.len() as u64;
            report.bytes_copied += acc;
            i = j;
        }
        progress.finish();

        // 6. Trust, then the records, in one commit; then the chunks are
        // recorded (the dirty marker may go).
        // Once the records' commit has begun, some may be written (a flush
        // that failed does not undo them): the chunks stay, and so does the
        // dirty marker, so the next open collects what no record names.
        let writing = std::cell::Cell::new(false);
        let committed = (|| -> Result<Vec<ObjectId>> {
            crate::failpoint::hit("restore.commit").map_err(|source| StoreError::Io {
                context: "committing the restored records".into(),
                source,
            })?;
            let _g = self.lock();
            if plan.is_empty() {
                new_trust.clear();
            }
            for (card, role) in &new_trust {
                self.db().put_trust(
                    &card.instance,
                    &TrustRecord {
                        role: *role,
                        card: card.bytes().to_vec(),
                        added_at_ms: bbsync_protocol::now_ms(),
                    },
                )?;
                report.trusted.push(card.instance.short());
            }
            let mut writes = Vec::with_capacity(plan.len());
            let mut restored: Vec<ObjectId> = Vec::new();
            for p in std::mem::take(&mut plan) {
                let m = &p.manifest;
                let complete = m
                    .chunks
                    .iter()
                    .all(|c| self.packs().size(&c.id) == Some(u64::from(c.len)));
                report.incomplete += u64::from(!complete && !m.deleted);
                report.replaced += u64::from(p.previous.is_some());
                let state = self.received_state(m, complete || m.deleted, &p.envelope);
                restored.push(m.object_id);
                writes.push(ObjectWrite {
                    object_id: m.object_id,
                    state,
                    manifest: m.bytes().to_vec(),
                    envelope: p
                        .envelope
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                    previous: p.previous,
                });
            }
            report.restored = writes.len() as u64;
            if writes.iter().any(|w| w.previous.is_some()) {
                self.packs().expect_garbage()?;
            }
            writing.set(true);
            if !writes.is_empty() {
                self.db().commit(writes)?;
            } else {
                self.db().flush()?;
            }
            Ok(restored)
        })();
        let restored = match committed {
            Ok(r) => {
                for t in tokens {
                    self.packs().recorded(t);
                }
                clear_pins();
                r
            }
            Err(e) if writing.get() => {
                drop(tokens);
                return Err(e);
            }
            Err(e) => {
                undo(&e, &published, tokens);
                return Err(e);
            }
        };
        if report.replaced > 0 {
            // Chunks of the replaced versions; a failure is only logged
            // (the store's next open collects them).
            if let Err(e) = self.gc() {
                tracing::warn!("restore done, but removing unreferenced chunks failed: {e}");
            }
        }
        if opts.rekey && !restored.is_empty() {
            crate::failpoint::check("restore.rekey", || "rekeying restored objects".into())?;
            report.rekey = Some(self.rekey(&restored, Default::default(), &NoProgress)?);
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// The content key from the first entry for this instance that
    /// verifies (wrapped by the author or an instance `full` accepts), fits
    /// this object version, unwraps, and matches the manifest's key
    /// commitment.
    fn key_of(
        &self,
        m: &Manifest,
        envelope: &[Vec<u8>],
        full: &dyn Fn(&InstanceId) -> bool,
    ) -> Option<ContentKey> {
        let me = self.instance_id();
        envelope.iter().find_map(|raw| {
            let u = Unverified::<EnvelopeEntry>::decode(raw).ok()?;
            if u.claimed().recipient != me {
                return None;
            }
            let author = m.author;
            let e = u.verify(|w| *w == author || full(w)).ok()?;
            self.usable_entry(m, e).ok().map(|(_, k)| k)
        })
    }

    /// Writes the plaintext BBS tree of a snapshot into a new or empty
    /// `dir`, reading and checking everything from the repository; the
    /// store gives only this instance's keys and trust, and is not written.
    pub fn restore_to_tree(
        &self,
        repo: &Repo,
        snapshot: Option<&str>,
        selection: &Selection,
        dir: &std::path::Path,
        trust_host: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<TreeReport> {
        let start = Instant::now();
        let _lock = repo.lock(&self.instance_id().to_hex(), false, "restore", "restored")?;
        let snap_id = repo.resolve_snapshot(snapshot.unwrap_or("latest"))?;
        let snap = repo.load_snapshot(&snap_id)?;
        let reader = repo.reader()?;
        // The same host rules as a restore (nothing is trusted here: a
        // `--trust-host` only vouches for this one command).
        let host = self.accept_snapshot(&snap, trust_host)?;
        crate::export::prepare_empty_dir(dir)?;
        let me = self.instance_id();
        let mut host_full: HashSet<InstanceId> = HashSet::new();
        host_full.insert(host.card.instance);
        for (c, role) in host.own_table.iter().flatten() {
            if *role == Role::Full {
                host_full.insert(c.instance);
            }
        }
        let full = |a: &InstanceId| *a == me || self.is_full(a) || host_full.contains(a);
        progress.start("restore --to-tree", snap.objects.len() as u64, 0);
        let refs: Vec<&super::repofile::SnapObject> = snap.objects.iter().collect();
        let checks = check_manifests(&reader, &refs);
        let results: Vec<Option<ObjectOutcome>> = snap
            .objects
            .par_iter()
            .zip(checks)
            .map(|(o, c)| {
                let r = (|| -> Result<Option<(String, (u64, u64))>> {
                    let c = c.map_err(|(_, d)| {
                        damaged_tree(repo, &reader.manifest_path(&o.manifest_id), &d)
                    })?;
                    let m = c.manifest;
                    let label = format!("{}:{}", m.kind, m.name);
                    if m.deleted
                        || !crate::bbs::BBS_KINDS.contains(&m.kind.as_str())
                        || !selection.matches(&m.kind, &m.name)
                    {
                        return Ok(None);
                    }
                    if !full(&m.author) {
                        return Err(StoreError::Invalid(format!(
                            "{label}: signed by {}, which is not trusted",
                            m.author.short()
                        )));
                    }
                    let Some(path) = crate::bbs::tree_path(&m.kind, &m.name) else {
                        return Err(StoreError::Invalid(format!(
                            "{label}: name does not fit the BBS tree layout"
                        )));
                    };
                    let key = self
                        .key_of(&m, &c.envelope, &full)
                        .ok_or_else(|| StoreError::Undecryptable(label.clone()))?;
                    let cipher = bbsync_protocol::ChunkCipher::new(&key);
                    let (shape, mode) = match &m.meta {
                        Some(meta) => {
                            let plain = cipher.open_meta(meta).map_err(|e| {
                                StoreError::Invalid(format!("meta of {label}: {e}"))
                            })?;
                            let meta =
                                bbsync_protocol::ObjectMeta::decode(&plain).map_err(|e| {
                                    StoreError::Invalid(format!("meta of {label}: {e}"))
                                })?;
                            (meta.shape, meta.mode)
                        }
                        None => (bbsync_protocol::Shape::File, None),
                    };
                    let target = dir.join(path);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                            context: format!("creating {}", parent.display()),
                            source: e,
                        })?;
                    }
                    let feed = |sink: &mut dyn FnMut(&[u8]) -> Result<()>| -> Result<u64> {
                        let mut total = 0u64;
                        for ch in &m.chunks {
                            let path = reader.chunk_path(&ch.id);
                            let stored = reader.read_chunk(&ch.id, ch.len).map_err(|e| {
                                damaged_tree(repo, &path, &format!("unreadable: {e}"))
                            })?;
                            check_chunk_id(&ch.id, &stored).map_err(|_| {
                                damaged_tree(repo, &path, &reader.bad_chunk(&ch.id))
                            })?;
                            let plain = cipher.open(&ch.id, &stored).map_err(|e| {
                                StoreError::Invalid(format!(
                                    "chunk {} of {label}: {e}",
                                    ch.id.short()
                                ))
                            })?;
                            total += plain.len() as u64;
                            sink(&plain)?;
                        }
                        if total != m.plaintext_len {
                            return Err(StoreError::Invalid(format!(
                                "{label} decrypted to {total} bytes, its manifest says {}",
                                m.plaintext_len
                            )));
                        }
                        Ok(total)
                    };
                    let counts = match shape {
                        bbsync_protocol::Shape::File => {
                            // A SQLite database goes through a temp file and
                            // must pass its integrity check (src/sqlite).
                            let mut w = crate::sqlite::FileOut::new(
                                &target,
                                crate::sqlite::WriteMode::InPlace,
                                m.plaintext_len,
                            )
                            .with_mode(mode);
                            let n = feed(&mut |d: &[u8]| w.write(d))?;
                            w.finish(&label)?;
                            (1, n)
                        }
                        bbsync_protocol::Shape::Dir => {
                            std::fs::create_dir(&target).map_err(|e| StoreError::Io {
                                context: format!("creating {}", target.display()),
                                source: e,
                            })?;
                            let mut ex = crate::archive::Extractor::new(&target);
                            let n = feed(&mut |d: &[u8]| ex.feed(d))?;
                            let (files, _) = ex.finish()?;
                            if let Some(mode) = mode {
                                crate::archive::set_dir_mode(&target, mode)?;
                            }
                            crate::sqlite::check_tree(&target, &label).inspect_err(|_| {
                                let _ = std::fs::remove_dir_all(&target);
                            })?;
                            (files, n)
                        }
                    };
                    Ok(Some((label, counts)))
                })();
                progress.advance(1, 0);
                match r {
                    Ok(None) => None,
                    Ok(Some((label, c))) => Some((label, Ok(c))),
                    Err(e) => Some((o.object_id.short(), Err(e))),
                }
            })
            .collect();
        progress.finish();
        let mut report = TreeReport {
            snapshot: snap_id,
            ..Default::default()
        };
        for (label, r) in results.into_iter().flatten() {
            match r {
                Ok((files, bytes)) => {
                    report.objects += 1;
                    report.files += files;
                    report.bytes += bytes;
                }
                Err(e) => report.failed.push((label, e.to_string())),
            }
        }
        report.failed.sort();
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// Which trusted instances a snapshot names (for `backups show`).
pub fn snapshot_trust(snap: &SnapshotFile) -> BTreeSet<String> {
    snap.trust
        .iter()
        .filter_map(|t| card_from_str(&t.card).ok())
        .map(|c| c.instance.short())
        .collect()
}
