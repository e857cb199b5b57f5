//! The store side of replication (DESIGN §6), independent of any transport:
//! what a serving node answers, and how a cloning node records what it
//! receives. The node crate carries these calls over libp2p; the tests call
//! them directly between two stores.
//!
//! Serving never writes: [`Store::serve_manifests`] re-keys just in time,
//! wrapping each content key for the requester in a fresh wrap session and
//! returning only that entry. Receiving records manifests first as
//! incomplete objects ([`Store::accept_manifests`]), then chunks, each
//! checked against its id before it touches the disk
//! ([`Store::accept_chunks`]), and marks an object complete only once every
//! chunk of it is durably on disk ([`Store::complete_ready`]).

use std::collections::HashSet;

use bbsync_protocol::{
    Checkpoint, ChunkId, EnvelopeEntry, InstanceCard, InstanceId, Manifest, ObjectId, Role,
    RootBuilder, Signed, SignedBody, Unverified, WrapSession, chunk::check_chunk_id,
    encoding::FORMAT_V1, signed::VERIFY_BATCH, verify_many,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    Store,
    db::{ObjectRecord, ObjectState, ObjectWrite},
    error::{Context, Result, StoreError},
};

/// One entry of a change page, and a manifest as served to one peer: the
/// wire types of `/bbsync/sync/1`, used as they are.
pub use bbsync_protocol::wire::{WireChange as Change, WireManifest as Served};

/// [`verify_many`] on all cores: the items in groups of its batch size,
/// the groups in parallel, the results in the items' order (`trusted`
/// gets each item's index in `items`).
pub(crate) fn verify_par<T>(
    items: Vec<Unverified<T>>,
    trusted: impl Fn(usize, &InstanceId) -> bool + Sync,
) -> Vec<bbsync_protocol::Result<Signed<T>>>
where
    T: SignedBody + Send,
{
    let mut groups: Vec<Vec<Unverified<T>>> = Vec::new();
    let mut it = items.into_iter();
    loop {
        let g: Vec<_> = it.by_ref().take(VERIFY_BATCH).collect();
        if g.is_empty() {
            break;
        }
        groups.push(g);
    }
    let results: Vec<Vec<_>> = groups
        .into_par_iter()
        .enumerate()
        .map(|(g, items)| verify_many(items, |i, s| trusted(g * VERIFY_BATCH + i, s)))
        .collect();
    results.into_iter().flatten().collect()
}

/// [`verify_par`] over the items that are there: `items[i]` is `None` where
/// nothing is to be verified (decided before, or undecodable), and its
/// result is then `None` too; every other result is at its item's place.
/// `trusted` gets each item's index in `items`. The one batch-verify-then-
/// scatter that receiving, `verify` and the backup check share.
pub fn verify_slots<T>(
    items: Vec<Option<Unverified<T>>>,
    trusted: impl Fn(usize, &InstanceId) -> bool + Sync,
) -> Vec<Option<bbsync_protocol::Result<Signed<T>>>>
where
    T: SignedBody + Send,
{
    let mut out: Vec<Option<_>> = Vec::with_capacity(items.len());
    let mut slots = Vec::new();
    let mut batch = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        out.push(None);
        if let Some(u) = item {
            slots.push(i);
            batch.push(u);
        }
    }
    let verified = verify_par(batch, |j, w| trusted(slots[j], w));
    for (i, r) in slots.iter().zip(verified) {
        out[*i] = Some(r);
    }
    out
}

/// A page of served manifests with their signatures and entries checked
/// ([`Store::check_served`]), for [`Store::accept_checked`].
#[derive(Debug)]
pub struct CheckedPage {
    /// Manifests that did not decode: ("manifest", why).
    undecodable: Vec<(String, String)>,
    items: Vec<CheckedItem>,
}

#[derive(Debug)]
struct CheckedItem {
    manifest: std::result::Result<Signed<Manifest>, String>,
    entry: EntryCheck,
}

/// What became of a served manifest's envelope entry.
#[derive(Debug)]
enum EntryCheck {
    /// None sent, or none to look at (a tombstone, a manifest that failed).
    Absent,
    /// Sent, not decodable (why).
    Undecodable(String),
    /// Decoded: verified and fitting, or why not.
    Checked(std::result::Result<Signed<EnvelopeEntry>, String>),
}

/// Which objects a partial clone takes (`--skip-config`, `--skip-applets`,
/// `--only KIND[:NAME]`). The default takes everything.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Leave out `config` objects.
    pub skip_config: bool,
    /// Leave out `applet` objects (their `applet-data` still comes).
    pub skip_applets: bool,
    /// If not empty, only objects matching one of these: a kind, and
    /// optionally a name, matched exactly or as a path prefix (`general`
    /// matches `general/1.json`).
    pub only: Vec<(String, Option<String>)>,
}

impl Selection {
    /// The selection of `--only` values (`KIND` or `KIND:NAME` each; none:
    /// everything), as the CLI and the admin API take them.
    pub fn from_only(specs: &[String]) -> Result<Selection> {
        Ok(Selection {
            only: specs
                .iter()
                .map(|s| Selection::parse_only(s))
                .collect::<Result<_>>()?,
            ..Default::default()
        })
    }

    /// Parses one `--only` value: `KIND` or `KIND:NAME`.
    pub fn parse_only(spec: &str) -> Result<(String, Option<String>)> {
        let (kind, name) = match spec.split_once(':') {
            Some((k, n)) => (k, Some(n.trim_end_matches('/'))),
            None => (spec, None),
        };
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(StoreError::Invalid(format!(
                "--only {spec:?}: KIND must be a lower-case word, e.g. message or config:main"
            )));
        }
        if name.is_some_and(str::is_empty) {
            return Err(StoreError::Invalid(format!(
                "--only {spec:?}: the name after ':' is empty"
            )));
        }
        Ok((kind.to_string(), name.map(str::to_string)))
    }

    /// Whether everything is selected.
    pub fn is_all(&self) -> bool {
        !self.skip_config && !self.skip_applets && self.only.is_empty()
    }

    /// Whether the object `kind:name` is selected.
    pub fn matches(&self, kind: &str, name: &str) -> bool {
        if (self.skip_config && kind == "config") || (self.skip_applets && kind == "applet") {
            return false;
        }
        self.only.is_empty()
            || self.only.iter().any(|(k, n)| {
                k == kind
                    && n.as_ref().is_none_or(|n| {
                        name == n
                            || (name.len() > n.len()
                                && name.starts_with(n.as_str())
                                && name.as_bytes()[n.len()] == b'/')
                    })
            })
    }
}

/// What [`Store::accept_manifests`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Accepted {
    /// Objects recorded (new or newer version), still incomplete.
    pub recorded: Vec<ObjectId>,
    /// When each recorded version was written by its author (ms since the
    /// epoch), in the order of `recorded`.
    pub created_at_ms: Vec<u64>,
    /// Manifests this store already holds (same or newer version).
    pub already: u64,
    /// Manifests left out by the selection.
    pub skipped: u64,
    /// Recorded versions that replace one held here (their old chunks may
    /// now be unreferenced: [`Store::gc`] once the new ones are complete).
    pub replaced: u64,
    /// Manifests refused, with the reason (bad signature, untrusted author,
    /// bad entry, ...).
    pub rejected: Vec<(String, String)>,
}

/// What [`Store::serve_manifests_within`] answers.
#[derive(Debug, Default, Clone)]
pub struct ServedPage {
    /// The manifests served, each with its entry for the peer.
    pub items: Vec<Served>,
    /// Ids not looked at because the answer reached its size bound: ask
    /// for them again.
    pub deferred: Vec<ObjectId>,
}

/// What [`Store::stage_chunks`] did.
#[derive(Debug, Default)]
pub struct StagedChunks {
    /// Chunks written to temp files, waiting for [`Store::publish_chunks`].
    pub staged: Vec<crate::packs::Staged>,
    /// Bytes staged.
    pub bytes: u64,
    /// Chunks that were already on disk.
    pub present: u64,
    /// Chunks whose bytes do not hash to their id (not written).
    pub rejected: Vec<ChunkId>,
}

impl Store {
    /// The state of an object at a manifest this store holds whole and
    /// checked (received from a peer or a backup repository, or signed here
    /// by an import), with the envelope it keeps: the one place an
    /// [`ObjectState`] is built from a manifest. The local-only fields
    /// (`fingerprint`, `stat_digest`) are left empty for an import to set.
    pub(crate) fn received_state(
        &self,
        m: &Signed<Manifest>,
        complete: bool,
        envelope: &[Vec<u8>],
    ) -> ObjectState {
        ObjectState {
            version: m.version,
            manifest_id: m.id(),
            seq: 0,
            complete,
            kind: m.kind.clone(),
            name: m.name.clone(),
            owner: m.owner.clone(),
            deleted: m.deleted,
            plaintext_len: m.plaintext_len,
            stored_len: m.chunks.iter().map(|c| u64::from(c.len)).sum(),
            chunks: m.chunks.len() as u32,
            fingerprint: None,
            stat_digest: None,
            checked_mac: Some(self.record_mac(m.bytes(), envelope)),
        }
    }

    /// Whether an object may be served to peers: complete, and not owned by
    /// an owner in `exclude_owners`.
    pub(crate) fn servable(&self, st: &ObjectState) -> bool {
        st.complete
            && !st
                .owner
                .as_ref()
                .is_some_and(|o| self.config().exclude_owners.contains(o))
    }

    /// Root over every servable object (see [`RootBuilder`]): what a clone
    /// recomputes to prove it is complete.
    pub fn root(&self) -> Result<(u64, [u8; 32])> {
        let mut b = RootBuilder::new();
        for r in self.db().objects() {
            let (id, st) = r?;
            if self.servable(&st) {
                b.push(id, st.version, st.manifest_id);
            }
        }
        Ok((b.count(), b.finish()))
    }

    /// Root over what this store holds complete of `ids` (the objects a
    /// source listed in its change pages): equal to the source's
    /// checkpoint root exactly when this store holds the same version of
    /// every one of them, whatever else it holds. Also returns how many of
    /// `ids` are missing or incomplete here.
    pub fn root_of(&self, ids: &HashSet<ObjectId>) -> Result<(u64, [u8; 32], u64)> {
        let mut b = RootBuilder::new();
        let mut lacking = 0;
        for id in ids {
            match self.db().object(id)? {
                Some(st) if st.complete => b.push(*id, st.version, st.manifest_id),
                _ => lacking += 1,
            }
        }
        Ok((b.count(), b.finish(), lacking))
    }

    /// A signed checkpoint of what this store serves, as of its last change.
    pub fn checkpoint(&self) -> Result<Signed<Checkpoint>> {
        let seq = self.db().last_seq()?;
        let (count, root) = self.root()?;
        Signed::sign(
            self.identity(),
            Checkpoint {
                format: FORMAT_V1,
                instance: self.instance_id(),
                seq,
                count,
                root,
                created_at_ms: bbsync_protocol::now_ms(),
            },
        )
        .ctx(|| "signing the checkpoint".to_string())
    }

    /// Up to `limit` changes after `since`, servable objects only, and the
    /// cursor to continue from (the last change-log number looked at).
    pub fn changes_page(&self, since: u64, limit: usize) -> Result<(Vec<Change>, u64)> {
        let mut out = Vec::new();
        let mut cursor = since;
        // Skipped (unservable) entries still move the cursor, so read more
        // than `limit` when some are skipped.
        while out.len() < limit {
            let page = self.db().changes_since(cursor, limit - out.len())?;
            if page.is_empty() {
                break;
            }
            for (seq, id) in page {
                cursor = seq;
                if let Some(st) = self.db().object(&id)?
                    && self.servable(&st)
                {
                    out.push(Change {
                        seq,
                        object_id: id,
                        version: st.version,
                        manifest_id: st.manifest_id,
                        deleted: st.deleted,
                    });
                }
            }
        }
        Ok((out, cursor))
    }

    /// The latest manifests of `ids` for a trusted peer. A `full` peer gets,
    /// for each live object, an entry wrapping the content key for its
    /// x25519 key, made now in one wrap session and signed by this instance;
    /// a `blind` peer gets none. Unknown and unservable objects are left out,
    /// and an id given more than once is answered once. Nothing is written
    /// to the store.
    pub fn serve_manifests(
        &self,
        ids: &[ObjectId],
        peer: &InstanceCard,
        role: Role,
    ) -> Result<Vec<Served>> {
        Ok(self
            .serve_manifests_within(ids, peer, role, usize::MAX)?
            .items)
    }

    /// [`Store::serve_manifests`] within about `max_bytes` of manifests and
    /// entries: once the next manifest would take the answer past it, that
    /// id and the rest are returned as `deferred` (not looked at, nothing
    /// re-keyed for them), for the peer to ask again. The first manifest is
    /// always served, so every answer makes progress.
    pub fn serve_manifests_within(
        &self,
        ids: &[ObjectId],
        peer: &InstanceCard,
        role: Role,
        max_bytes: usize,
    ) -> Result<ServedPage> {
        // What an entry and the framing of one item add to its manifest.
        const ITEM_ALLOWANCE: usize = 256;
        let session = WrapSession::new(self.identity());
        let mut page = ServedPage::default();
        let mut seen = HashSet::with_capacity(ids.len());
        let mut bytes = 0usize;
        // The page first (sizes only), in the ids' order...
        let mut picked = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if !seen.insert(*id) {
                continue;
            }
            // One read of the record serves the check, the manifest and the key.
            let Some(rec) = self.db().record(id)? else {
                continue;
            };
            if !self.servable(&rec.state) {
                continue;
            }
            let size = rec.manifest.len() + ITEM_ALLOWANCE;
            if !picked.is_empty() && bytes.saturating_add(size) > max_bytes {
                page.deferred.push(*id);
                page.deferred
                    .extend(ids[i + 1..].iter().filter(|x| seen.insert(**x)));
                break;
            }
            bytes = bytes.saturating_add(size);
            picked.push((*id, rec));
        }
        // ...then one check and one signature per live object, on all cores.
        let served: Vec<Result<Served>> = picked
            .into_par_iter()
            .map(|(id, rec)| {
                let l = self.loaded(rec);
                let m = self.manifest_in(&id, &l)?;
                let entry = if role == Role::Full && !m.deleted {
                    let (_, key) = self.key_in(&m, &l)?;
                    let e = session
                        .wrap(id, m.version, peer.instance, &peer.x25519, &key)
                        .ctx(|| {
                            format!("re-keying {} for {}", id.short(), peer.instance.short())
                        })?;
                    Some(serde_bytes::ByteBuf::from(e.bytes().to_vec()))
                } else {
                    None
                };
                Ok(Served {
                    manifest: m.bytes().to_vec(),
                    entry,
                })
            })
            .collect();
        page.items.reserve(served.len());
        for s in served {
            page.items.push(s?);
        }
        Ok(page)
    }

    /// Whether this node may follow `upstream` (its card verified, pinned
    /// by the address the operator gave), and records that it follows it.
    /// Trust changes only by an operator's explicit act (DESIGN §2): the
    /// first `serve --follow` of an upstream that is in no trust record
    /// trusts it as `full` (returns `true`); after that, a reconnect needs a
    /// `full` record. An upstream removed from the trust table after it was
    /// first followed, or trusted as `blind`, is refused
    /// ([`StoreError::Trust`], saying how to follow it again) and its trust
    /// is not changed.
    pub fn admit_upstream(&self, upstream: &Signed<InstanceCard>) -> Result<bool> {
        let id = upstream.instance;
        let followed = self.db().cursor(&id)?.is_some();
        let added = match self.role_of(&id)? {
            Some(Role::Full) => false,
            None if !followed => {
                self.trust_card(upstream, Role::Full)?;
                true
            }
            _ => return Err(self.refused_upstream(&id)?),
        };
        if !followed {
            // From now on this upstream counts as followed: its trust record
            // is never added again by a reconnect or a restart.
            self.db().set_cursor(&id, 0)?;
        }
        Ok(added)
    }

    /// Checks that `upstream` is still trusted as `full` (a follower asks
    /// before it applies each page); [`StoreError::Trust`] if not.
    pub fn check_upstream(&self, upstream: &InstanceId) -> Result<()> {
        match self.role_of(upstream)? {
            Some(Role::Full) => Ok(()),
            _ => Err(self.refused_upstream(upstream)?),
        }
    }

    fn refused_upstream(&self, id: &InstanceId) -> Result<StoreError> {
        let how = "to follow it again: `bbsync trust add CARD --role full` with its card \
                   (`bbsync id` on it), then restart `bbsync serve`";
        Ok(StoreError::Trust(match self.role_of(id)? {
            Some(Role::Blind) => format!(
                "upstream {} is trusted here as blind, and a standby follows only a full \
                 upstream (a reconnect never raises a role): not following it; {how}",
                id.short()
            ),
            _ => format!(
                "upstream {} is not in the trust table (removed after it was first \
                 followed; a reconnect does not trust it again): not following it; {how}",
                id.short()
            ),
        }))
    }

    /// A chunk's stored bytes, for a peer.
    pub fn serve_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        // Not hashed here: the receiver checks every chunk against its id
        // before storing it (and asks another source for a damaged one);
        // hashing on both sides cost the source a tenth of its CPU time.
        // Damage on this disk is `verify --read-data`'s to find.
        self.packs()
            .read(id)
            .ctx(|| format!("reading chunk {}", id.short()))
    }

    /// Records manifests received from `source` (which this store trusts):
    /// each must verify, its author must be this instance, `source`, or a
    /// trusted `full` instance, and its entry (if any) must be addressed to
    /// this instance, for that object version, wrapped by `source` or the
    /// author, and unwrap. An older or equal version than the one held is
    /// skipped; at equal versions the larger ManifestId wins. Accepted
    /// objects are recorded as incomplete until their chunks arrive.
    pub fn accept_manifests(&self, source: &InstanceId, items: Vec<Served>) -> Result<Accepted> {
        self.accept_selected(source, items, &Selection::default())
    }

    /// [`Store::accept_manifests`] for the objects `selection` takes; the
    /// others are counted as skipped and not recorded.
    pub(crate) fn accept_selected(
        &self,
        source: &InstanceId,
        items: Vec<Served>,
        selection: &Selection,
    ) -> Result<Accepted> {
        let page = self.check_served(source, items);
        self.accept_checked(source, page, selection)
    }

    /// The first half of [`Store::accept_selected`], which reads nothing of
    /// the objects held here (so that a clone checks the next page while
    /// the previous one is committed): every manifest's signature, then
    /// every live manifest's entry (decoded, its signature checked with the
    /// wrapper the source, the manifest's author or a trusted `full`
    /// instance, addressed to this instance for that version, unwrapping to
    /// the key the manifest commits to), in ed25519 batches on all cores.
    pub fn check_served(&self, source: &InstanceId, items: Vec<Served>) -> CheckedPage {
        let me = self.instance_id();
        let mut undecodable = Vec::new();
        let mut decoded = Vec::with_capacity(items.len());
        for item in items {
            match Unverified::<Manifest>::decode(&item.manifest) {
                Ok(u) => decoded.push((u, item.entry)),
                Err(e) => undecodable.push(("manifest".into(), e.to_string())),
            }
        }
        let (unverified, entries): (Vec<_>, Vec<_>) = decoded.into_iter().unzip();
        let manifests = verify_par(unverified, |_, a| {
            *a == me || a == source || self.is_full(a)
        });
        // Entries of the live manifests that verified (a tombstone's entry
        // is ignored, as before).
        let mut raws = Vec::with_capacity(manifests.len());
        let mut slots = Vec::with_capacity(manifests.len());
        for (m, raw) in manifests.iter().zip(entries) {
            let raw = match m {
                Ok(m) if !m.deleted => raw,
                _ => None,
            };
            slots.push(
                match raw.as_ref().map(|b| Unverified::<EnvelopeEntry>::decode(b)) {
                    Some(Ok(u)) => Some(u),
                    _ => None,
                },
            );
            raws.push(raw);
        }
        let authors: Vec<Option<InstanceId>> = manifests
            .iter()
            .map(|m| m.as_ref().ok().map(|m| m.author))
            .collect();
        let verified = verify_slots(slots, |i, w| {
            w == source || Some(*w) == authors[i] || self.is_full(w)
        });
        let items = manifests
            .into_iter()
            .zip(raws)
            .zip(verified)
            .map(|((m, raw), verified)| {
                let entry = match (&m, raw) {
                    (Err(_), _) | (Ok(_), None) => EntryCheck::Absent,
                    (Ok(m), Some(raw)) => match verified {
                        // Not decodable: the same error again, for the report.
                        None => EntryCheck::Undecodable(
                            Unverified::<EnvelopeEntry>::decode(&raw)
                                .err()
                                .map_or_else(|| "undecodable".to_string(), |e| e.to_string()),
                        ),
                        Some(v) => EntryCheck::Checked(
                            v.ctx(|| format!("envelope entry of {}", m.object_id.short()))
                                .and_then(|e| self.check_entry_fits(m, e))
                                .map_err(|e| e.to_string()),
                        ),
                    },
                };
                CheckedItem {
                    manifest: m.map_err(|e| e.to_string()),
                    entry,
                }
            })
            .collect();
        CheckedPage { undecodable, items }
    }

    /// The second half of [`Store::accept_selected`]: against the objects
    /// held here, which manifests are new, which names are free; then the
    /// commit.
    pub fn accept_checked(
        &self,
        _source: &InstanceId,
        page: CheckedPage,
        selection: &Selection,
    ) -> Result<Accepted> {
        let _g = self.lock();
        let mut report = Accepted {
            rejected: page.undecodable,
            ..Default::default()
        };
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        let mut kept = Vec::new();
        for item in page.items {
            let m = match item.manifest {
                Ok(m) => m,
                Err(e) => {
                    report.rejected.push(("manifest".into(), e));
                    continue;
                }
            };
            if !selection.matches(&m.kind, &m.name) {
                report.skipped += 1;
                continue;
            }
            let label = format!("{}:{}", m.kind, m.name);
            if !seen.insert(m.object_id) {
                report.rejected.push((label, "sent twice".into()));
                continue;
            }
            let previous = self.db().object(&m.object_id)?;
            if let Some(prev) = &previous {
                let newer = m.version > prev.version
                    || (m.version == prev.version && m.id() > prev.manifest_id);
                if !newer {
                    report.already += 1;
                    continue;
                }
            }
            if let Err(why) = self.check_name_free(&m, &mut names) {
                report.rejected.push((label, why));
                continue;
            }
            kept.push((m, previous, item.entry, label));
        }
        // Undecodable entries are reported first, then the rest in order
        // (as when both were checked here).
        for (m, _, entry, label) in &kept {
            if let EntryCheck::Undecodable(e) = entry {
                report.rejected.push((
                    label.clone(),
                    format!("envelope entry of {}: {e}", m.object_id.short()),
                ));
            }
        }
        for (m, previous, entry, label) in kept {
            let entry = match entry {
                EntryCheck::Absent => None,
                EntryCheck::Undecodable(_) => continue, // rejected above
                EntryCheck::Checked(Ok(e)) => Some(e),
                EntryCheck::Checked(Err(e)) => {
                    report.rejected.push((label, e));
                    continue;
                }
            };
            let envelope: Vec<Vec<u8>> = entry.iter().map(|e| e.bytes().to_vec()).collect();
            let state = self.received_state(&m, m.chunks.is_empty(), &envelope);
            report.recorded.push(m.object_id);
            report.created_at_ms.push(m.created_at_ms);
            report.replaced += u64::from(previous.is_some());
            writes.push(ObjectWrite {
                object_id: m.object_id,
                state,
                manifest: m.bytes().to_vec(),
                envelope: envelope
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                previous,
            });
        }
        if writes.iter().any(|w| w.previous.is_some()) {
            // The replaced versions' chunks become unreferenced.
            self.packs().expect_garbage()?;
        }
        if !writes.is_empty() {
            self.db().commit(writes)?;
        }
        Ok(report)
    }

    /// The rest of an entry's checks once its signature verified: it is
    /// addressed to this instance, for this object version, and unwraps to
    /// the key the manifest commits to.
    fn check_entry_fits(
        &self,
        m: &Manifest,
        e: Signed<EnvelopeEntry>,
    ) -> Result<Signed<EnvelopeEntry>> {
        Ok(self.usable_entry(m, e)?.0)
    }

    /// The object that holds `kind:name` here, if it is live and not `m`'s
    /// object: a live object whose name another live object holds is
    /// refused (two live `file:readme.txt` would leave the name index to
    /// whichever came last, and differ from node to node). `names` collects
    /// the names taken within one batch of received manifests.
    pub(crate) fn check_name_free(
        &self,
        m: &Manifest,
        names: &mut HashSet<(String, String)>,
    ) -> std::result::Result<(), String> {
        if m.deleted {
            return Ok(());
        }
        if !names.insert((m.kind.clone(), m.name.clone())) {
            return Err(name_taken(&m.kind, &m.name));
        }
        self.name_held_here(m)
    }

    /// Why `m` may not take its name here: another live object of this
    /// store holds it (`Ok` for a deletion or a free name).
    pub(crate) fn name_held_here(&self, m: &Manifest) -> std::result::Result<(), String> {
        if m.deleted {
            return Ok(());
        }
        match self.db().lookup(&m.kind, &m.name) {
            Ok(Some(holder)) if holder != m.object_id => match self.db().object(&holder) {
                Ok(Some(st)) if !st.deleted => Err(format!(
                    "{} (object {}); the name stays with it",
                    name_taken(&m.kind, &m.name),
                    holder.short()
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Live objects recorded but not complete (their chunks are not all here).
    pub fn incomplete_count(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.db().objects() {
            let (_, st) = r?;
            n += u64::from(!st.complete && !st.deleted);
        }
        Ok(n)
    }

    /// Chunks that recorded manifests reference and the disk lacks, with
    /// their stored length, each once.
    pub fn missing_chunks(&self) -> Result<Vec<(ChunkId, u32)>> {
        self.missing_chunks_where(|st| !st.complete)
    }

    /// Chunks that the live objects `keep` takes reference and the disk
    /// lacks (complete objects included: a chunk file can go missing).
    pub fn missing_chunks_where(
        &self,
        keep: impl Fn(&ObjectState) -> bool,
    ) -> Result<Vec<(ChunkId, u32)>> {
        self.missing_chunks_among(self.db().objects(), keep)
    }

    /// The objects among `ids` this store holds, with their state, in
    /// order (an id it does not hold is left out).
    fn states_of<'a>(
        &'a self,
        ids: &'a [ObjectId],
    ) -> impl Iterator<Item = Result<(ObjectId, ObjectState)>> + 'a {
        self.db()
            .records_of(ids)
            .map(|r| r.map(|(id, rec)| (id, rec.state)))
    }

    /// Chunks that the live objects among `objects` that `keep` takes
    /// reference and the disk lacks, each once.
    fn missing_chunks_among(
        &self,
        objects: impl Iterator<Item = Result<(ObjectId, ObjectState)>>,
        keep: impl Fn(&ObjectState) -> bool,
    ) -> Result<Vec<(ChunkId, u32)>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in objects {
            let (id, st) = r?;
            if st.deleted || !keep(&st) {
                continue;
            }
            for c in self.dangerously_manifest_unverified(&id)?.chunks {
                if seen.insert(c.id) && !self.packs().contains(&c.id) {
                    out.push((c.id, c.len));
                }
            }
        }
        Ok(out)
    }

    /// Checks received chunks against their ids and stages the good ones
    /// (not yet durable, not yet visible): returns the staged chunks with
    /// their bytes, how many were already present, and the rejected ids.
    /// Publish the staged ones with [`Store::publish_chunks`], in as large
    /// groups as memory and resumability allow (each publish costs two
    /// `syncfs` calls).
    pub fn stage_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<StagedChunks> {
        let mut out = StagedChunks::default();
        for (id, bytes) in chunks {
            if check_chunk_id(&id, &bytes).is_err() {
                out.rejected.push(id);
                continue;
            }
            if self.packs().contains(&id) {
                out.present += 1;
                continue;
            }
            match self.packs().stage(id, &bytes) {
                Ok(s) => {
                    out.bytes += bytes.len() as u64;
                    out.staged.push(s);
                }
                Err(e) => {
                    self.packs().discard(std::mem::take(&mut out.staged));
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Makes staged chunks durable and visible. Returns how many.
    pub fn publish_chunks(&self, staged: Vec<crate::packs::Staged>) -> Result<u64> {
        let n = staged.len() as u64;
        let published = self.packs().publish(staged)?;
        // Nothing to record: a chunk file is its own record. An object
        // becomes complete in `complete_ready`, after this returned.
        self.packs().recorded(published);
        Ok(n)
    }

    /// Checks, stages and publishes received chunks in one go (a chunk that
    /// fails its id check is never written). Returns (stored, already
    /// present, rejected ids).
    pub fn accept_chunks(
        &self,
        chunks: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<(u64, u64, Vec<ChunkId>)> {
        let s = self.stage_chunks(chunks)?;
        let stored = self.publish_chunks(s.staged)?;
        Ok((stored, s.present, s.rejected))
    }

    /// Chunks that the live objects among `ids` reference and the disk lacks.
    pub fn missing_chunks_of(&self, ids: &[ObjectId]) -> Result<Vec<(ChunkId, u32)>> {
        self.missing_chunks_among(self.states_of(ids), |_| true)
    }

    /// [`Store::complete_ready`] among `ids` only (no scan of the store).
    pub fn complete_ready_of(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>> {
        let _g = self.lock();
        self.complete_ready_among(self.db().records_of(ids))
    }

    /// Marks complete every incomplete object whose chunks are all on disk
    /// (published, so durable). Returns them.
    pub fn complete_ready(&self) -> Result<Vec<ObjectId>> {
        let _g = self.lock();
        self.complete_ready_among(self.db().records())
    }

    /// [`Store::complete_ready`] among `records` (the caller holds the
    /// store's lock): each record is read once, its manifest decoded from
    /// it, and rewritten by [`Db::mark_complete`] as it was read.
    ///
    /// [`Db::mark_complete`]: crate::db::Db::mark_complete
    fn complete_ready_among(
        &self,
        records: impl Iterator<Item = Result<(ObjectId, ObjectRecord)>>,
    ) -> Result<Vec<ObjectId>> {
        let ready = records.filter_map(|r| {
            let (id, rec) = match r {
                Ok((_, rec)) if rec.state.complete => return None,
                Ok(found) => found,
                Err(e) => return Some(Err(e)),
            };
            let m = match crate::records::manifest_as_stored(&id, &rec.manifest) {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            m.chunks
                .iter()
                .all(|c| self.packs().size(&c.id) == Some(u64::from(c.len)))
                .then_some(Ok((id, rec)))
        });
        // Each gets a new change-log number: it can be served from now on,
        // and those following this store must see it.
        self.db().mark_complete(ready)
    }
}

/// Why an object may not take the name `kind:name`: another has it.
pub(crate) fn name_taken(kind: &str, name: &str) -> String {
    format!("another object already has the name {kind}:{name} here")
}
