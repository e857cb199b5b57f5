//! The snapshot's host: whether a store believes it (a restore, `--to-tree`
//! and a disaster recovery all ask), its identity escrow, its trust table.

use std::collections::BTreeSet;

use bbsync_protocol::{Identity, InstanceCard, InstanceId, Role, Signed, card_from_str};

use crate::{
    Store,
    backup::{Repo, SnapshotFile, SnapshotSignature, escrow, repofile::KeyFile},
    error::{Result, StoreError},
};

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
            .map_err(crate::backup::repo_io_err(format!(
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
        let snap_seq = crate::backup::snapshot_seq(&snap.id);
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
        Err(e) => return Err(crate::backup::repo_io_err(format!("reading {path}"))(e)),
    }
    match repo.backend().read(&path) {
        Ok(bytes) => {
            let k: KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Repo(format!("{path} is damaged: {e}")))?;
            Ok(Some((path, k)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::backup::repo_io_err(format!("reading {path}"))(e)),
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
    /// Decides whether to believe a snapshot's host (see the module docs):
    /// its signature verified when the snapshot was loaded; its host must be
    /// this instance, trusted `full`, or the instance of `trust_host`.
    /// Otherwise the error names the host's card and fingerprint and says
    /// how to proceed. Nothing is written.
    pub(crate) fn accept_snapshot(
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
                to_trust: !own && !is_full(self, &host.instance),
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
                    Ok((card, t.role))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(AcceptedHost {
                card: host,
                why: "this instance",
                to_trust: false,
                own_table: Some(table),
            });
        }
        if is_full(self, &host.instance) {
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
}

/// Whether `id` is this instance or trusted `full` here.
pub(super) fn is_full(store: &Store, id: &InstanceId) -> bool {
    matches!(store.role_of(id), Ok(Some(Role::Full)))
}

/// Which trusted instances a snapshot names (for `backups show`).
pub fn snapshot_trust(snap: &SnapshotFile) -> BTreeSet<String> {
    snap.trust
        .iter()
        .filter_map(|t| card_from_str(&t.card).ok())
        .map(|c| c.instance.short())
        .collect()
}
