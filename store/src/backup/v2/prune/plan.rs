//! Planning a prune (steps 1 to 7 of the module docs' plan): the
//! repository is read and checked, nothing is changed.

use std::collections::{BTreeMap, HashMap, HashSet};

use bbsync_protocol::{ChunkId, Manifest, ManifestId, Unverified};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Copies, Fate, PackInfo, Plan, PruneOptions};
use crate::{
    backup::{
        SnapshotFile, repo_io_err,
        repofile::ManifestFile,
        snapshot_seq,
        v2::{
            format::{IndexEntry, IndexFile, IndexPack, ManifestRef, PackKind, key_name},
            repo::Repo2,
        },
    },
    error::{Result, StoreError},
    packs::PackId,
};

impl Repo2 {
    /// Reads the repository and decides; changes nothing.
    pub(super) fn plan_prune(&self, opts: &PruneOptions) -> Result<Plan> {
        // 1. Snapshots: which go, which stay (every one that stays must
        // read and verify, or its data could go).
        let (snaps, remove, kept) = self.prune_snapshots(opts)?;

        // 2. Index files, each by name (a damaged one refuses: its packs
        // would look unindexed and be deleted).
        let mut ix = self.read_prune_index()?;

        // 3. Which pack files exist.
        let unindexed = self.find_pack_files(&mut ix)?;

        // 4. The live set: the remaining snapshots' manifests, their
        // current files, the chunks they name.
        let mut live_manifests: BTreeMap<ManifestId, String> = BTreeMap::new();
        for s in &snaps {
            for o in &s.objects {
                live_manifests
                    .entry(o.manifest_id)
                    .or_insert_with(|| s.id.clone());
            }
        }
        let live = self.live_set(&ix, &live_manifests)?;

        // 5. Live bytes per pack: each live id counts in one present pack,
        // the one with the highest live share.
        let repack = ix.choose_live(&live, opts.max_unused_percent);

        // 6. Index files: clean ones stay; the others are rewritten.
        let rewrite = ix.rewrite(&live_manifests);

        // 7. Key files.
        let keys = self.stale_keys(&snaps)?;

        Ok(Plan {
            remaining: snaps.len() as u64,
            remove,
            kept,
            packs: ix.packs,
            repack,
            unindexed,
            dirty: rewrite.dirty,
            carry_packs: rewrite.carry_packs,
            carry_refs: rewrite.carry_refs,
            top_seq: ix.top_seq,
            keys,
        })
    }

    /// Step 1: the snapshots that stay (each read and verified), the ids
    /// removed (by `forget` and by the policy), and why the policy keeps
    /// each one it keeps.
    #[allow(clippy::type_complexity)]
    fn prune_snapshots(
        &self,
        opts: &PruneOptions,
    ) -> Result<(
        Vec<SnapshotFile>,
        Vec<String>,
        BTreeMap<String, Vec<&'static str>>,
    )> {
        let loc = self.location();
        let ids = self.snapshot_ids()?;
        for id in &opts.forget {
            if !ids.contains(id) {
                return Err(StoreError::Invalid(format!(
                    "no snapshot {id} in {loc}; nothing was pruned"
                )));
            }
        }
        let mut snaps: Vec<SnapshotFile> = Vec::new();
        for id in ids.iter().filter(|i| !opts.forget.contains(i)) {
            snaps.push(self.load_snapshot(id).map_err(|e| {
                StoreError::Repo(format!(
                    "{e}; repair it or delete it (`bbsync backups delete {id}`) before pruning (nothing was pruned)"
                ))
            })?);
        }
        let mut remove: Vec<String> = ids
            .iter()
            .filter(|i| opts.forget.contains(i))
            .cloned()
            .collect();
        let mut kept = BTreeMap::new();
        if !opts.policy.is_empty() {
            kept = opts.policy.apply(
                &snaps
                    .iter()
                    .map(|s| (s.id.clone(), s.created_ms))
                    .collect::<Vec<_>>(),
            );
            remove.extend(
                snaps
                    .iter()
                    .filter(|s| !kept.contains_key(&s.id))
                    .map(|s| s.id.clone()),
            );
            snaps.retain(|s| kept.contains_key(&s.id));
        }
        remove.sort_by(|a, c| (snapshot_seq(a), a).cmp(&(snapshot_seq(c), c)));
        remove.dedup();
        Ok((snaps, remove, kept))
    }

    /// Step 2: every index file, and what prune needs of them.
    fn read_prune_index(&self) -> Result<PruneIndex> {
        let b = self.backend();
        let loc = self.location();
        let names = b
            .list("index")
            .map_err(repo_io_err(format!("listing {loc}/index")))?;
        let files: Vec<(String, IndexFile)> = names
            .par_iter()
            .map(|n| -> Result<(String, IndexFile)> {
                let path = format!("index/{n}");
                let bytes = b
                    .read(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                let f = IndexFile::decode(&path, &bytes)
                    .map_err(|e| refuse(format!("backup repository {loc} is damaged: {e}")))?;
                Ok((path, f))
            })
            .collect::<Result<_>>()?;
        Ok(PruneIndex::new(files))
    }

    /// Step 3: marks the packs whose files exist; returns the present pack
    /// files no index file names, with their sizes.
    fn find_pack_files(&self, ix: &mut PruneIndex) -> Result<Vec<(String, u64)>> {
        let b = self.backend();
        let loc = self.location();
        let mut unindexed = Vec::new();
        for kind in [PackKind::Data, PackKind::Manifests] {
            for (dir, name) in self.pack_dir_files(kind, |_| true)? {
                let path = format!("{dir}/{name}");
                let Some(id) = PackId::from_file_name(&name) else {
                    continue;
                };
                match ix.pack_at.get(&(kind, id)) {
                    Some(&i) if ix.packs[i].path() == path => ix.packs[i].present = true,
                    Some(_) => {}
                    None => {
                        let size = b
                            .size(&path)
                            .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                            .unwrap_or(0);
                        unindexed.push((path, size));
                    }
                }
            }
        }
        Ok(unindexed)
    }

    /// Step 4: the live ids: the current files of `live_manifests` and the
    /// chunks they name (each must be in a present pack).
    fn live_set(
        &self,
        ix: &PruneIndex,
        live_manifests: &BTreeMap<ManifestId, String>,
    ) -> Result<HashSet<(PackKind, [u8; 32])>> {
        let b = self.backend();
        let read_file = |file: &[u8; 32]| -> std::result::Result<Vec<u8>, String> {
            let mut why = "in no index file".to_string();
            for (i, e) in ix
                .copies
                .get(&(PackKind::Manifests, *file))
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let path = ix.packs[*i].path();
                match b.read_range(&path, u64::from(e.offset), u64::from(e.len)) {
                    Ok(bytes) if Sha256::digest(&bytes).as_slice() == file => return Ok(bytes),
                    Ok(_) => why = format!("{path}: does not hash to its name"),
                    Err(e) => why = format!("{path}: unreadable: {e}"),
                }
            }
            Err(why)
        };
        let chunk_lists: Vec<Vec<ChunkId>> = live_manifests
            .par_iter()
            .map(|(mid, snap)| -> Result<Vec<ChunkId>> {
                let what = format!("manifest {} of snapshot {snap}", mid.short());
                let (_, file) = ix
                    .winners
                    .get(mid)
                    .ok_or_else(|| refuse(format!("{what} is in no index file")))?;
                let bytes = read_file(file).map_err(|e| refuse(format!("{what}: {e}")))?;
                let f = ManifestFile::decode(&bytes)
                    .map_err(|e| refuse(format!("{what} is damaged: {e}")))?;
                let m = Unverified::<Manifest>::decode(&f.manifest)
                    .map_err(|e| refuse(format!("{what} is damaged: {e}")))?
                    .dangerously_assume_verified();
                Ok(m.chunks.iter().map(|c| c.id).collect())
            })
            .collect::<Result<_>>()?;
        let mut live: HashSet<(PackKind, [u8; 32])> = HashSet::new();
        for mid in live_manifests.keys() {
            if let Some((_, file)) = ix.winners.get(mid) {
                live.insert((PackKind::Manifests, *file));
            }
        }
        for (list, (mid, snap)) in chunk_lists.iter().zip(live_manifests) {
            for c in list {
                if live.insert((PackKind::Data, c.0)) {
                    let any = ix
                        .copies
                        .get(&(PackKind::Data, c.0))
                        .is_some_and(|v| v.iter().any(|(i, _)| ix.packs[*i].present));
                    if !any {
                        return Err(refuse(format!(
                            "chunk {} of manifest {} (snapshot {snap}) is in no pack of the repository",
                            c.short(),
                            mid.short()
                        )));
                    }
                }
            }
        }
        Ok(live)
    }

    /// Step 7: key files no remaining snapshot names, older than the newest
    /// snapshot, with a newer key file of the same instance.
    fn stale_keys(&self, snaps: &[SnapshotFile]) -> Result<Vec<String>> {
        let named: HashSet<&str> = snaps
            .iter()
            .filter_map(|s| s.identity_escrow.as_deref())
            .collect();
        let newest_snap = snaps.iter().map(|s| snapshot_seq(&s.id)).max().unwrap_or(0);
        let key_names = self
            .backend()
            .list("keys")
            .map_err(repo_io_err(format!("listing {}/keys", self.location())))?;
        let mut newest_key: HashMap<&str, u64> = HashMap::new();
        let parsed: Vec<(&String, Option<(&str, u64)>)> =
            key_names.iter().map(|n| (n, key_name(n))).collect();
        for (inst, seq) in parsed.iter().filter_map(|(_, p)| *p) {
            let e = newest_key.entry(inst).or_insert(seq);
            *e = (*e).max(seq);
        }
        Ok(parsed
            .iter()
            .filter_map(|(n, p)| {
                let (inst, seq) = (*p)?;
                let path = format!("keys/{n}");
                (!named.contains(path.as_str())
                    && seq < newest_snap
                    && newest_key.get(inst).is_some_and(|m| *m > seq))
                .then_some(path)
            })
            .collect())
    }
}

/// A refusal of prune: the repository is not as it must be to prune it.
fn refuse(e: String) -> StoreError {
    StoreError::Repo(format!(
        "{e}; run `bbsync backups verify --read-data` (nothing was pruned)"
    ))
}

/// The index as prune reads it (step 2).
struct PruneIndex {
    /// Every index file: (path, content).
    files: Vec<(String, IndexFile)>,
    /// The highest sequence of any index file.
    top_seq: u64,
    /// Current manifest file of every manifest: the highest seq wins.
    winners: HashMap<ManifestId, (u64, [u8; 32])>,
    /// Packs (a pack named twice: the first naming counts).
    packs: Vec<PackInfo>,
    /// Where each pack is in `packs`.
    pack_at: HashMap<(PackKind, PackId), usize>,
    /// Where each id is: (pack index, entry).
    copies: Copies,
}

/// What step 6 decided about the index files.
struct IndexRewrite {
    dirty: Vec<(String, u64)>,
    carry_packs: Vec<IndexPack>,
    carry_refs: BTreeMap<u64, Vec<ManifestRef>>,
}

impl PruneIndex {
    fn new(files: Vec<(String, IndexFile)>) -> Self {
        let top_seq = files.iter().map(|(_, f)| f.seq).max().unwrap_or(0);
        let mut winners: HashMap<ManifestId, (u64, [u8; 32])> = HashMap::new();
        for (_, f) in &files {
            for m in &f.manifests {
                let slot = winners
                    .entry(ManifestId(m.manifest))
                    .or_insert((f.seq, m.file));
                if f.seq > slot.0 {
                    *slot = (f.seq, m.file);
                }
            }
        }
        let mut packs: Vec<PackInfo> = Vec::new();
        let mut pack_at: HashMap<(PackKind, PackId), usize> = HashMap::new();
        for (_, f) in &files {
            for p in &f.packs {
                let key = (p.kind, PackId(p.pack));
                if pack_at.contains_key(&key) {
                    continue;
                }
                pack_at.insert(key, packs.len());
                packs.push(PackInfo {
                    kind: p.kind,
                    id: PackId(p.pack),
                    len: p.pack_len,
                    total: p.entries.iter().map(|e| u64::from(e.len)).sum(),
                    entries: p.entries.clone(),
                    present: false,
                    potential: 0,
                    live: 0,
                    fate: Fate::Keep,
                });
            }
        }
        let mut copies: Copies = HashMap::new();
        for (i, p) in packs.iter().enumerate() {
            for e in &p.entries {
                copies.entry((p.kind, e.id)).or_default().push((i, *e));
            }
        }
        PruneIndex {
            files,
            top_seq,
            winners,
            packs,
            pack_at,
            copies,
        }
    }

    /// Step 5: each live id counts in one present pack, the one with the
    /// highest live share; sets every pack's live bytes and fate, and
    /// returns the live entries chosen in each pack to repack.
    fn choose_live(
        &mut self,
        live: &HashSet<(PackKind, [u8; 32])>,
        max_unused_percent: u8,
    ) -> Vec<(usize, Vec<IndexEntry>)> {
        let packs = &mut self.packs;
        for ((kind, id), v) in &self.copies {
            if live.contains(&(*kind, *id)) {
                for (i, e) in v {
                    if packs[*i].present {
                        packs[*i].potential += u64::from(e.len);
                    }
                }
            }
        }
        let mut chosen: HashSet<(usize, [u8; 32])> = HashSet::new();
        for key in live {
            let Some(v) = self.copies.get(key) else {
                continue;
            };
            let best = v
                .iter()
                .filter(|(i, _)| packs[*i].present)
                .max_by(|(a, _), (c, _)| {
                    let (pa, pc) = (&packs[*a], &packs[*c]);
                    // potential/total, compared without division.
                    (u128::from(pa.potential) * u128::from(pc.total.max(1)))
                        .cmp(&(u128::from(pc.potential) * u128::from(pa.total.max(1))))
                        .then(pa.potential.cmp(&pc.potential))
                        .then(pc.id.cmp(&pa.id))
                });
            if let Some((i, e)) = best
                && chosen.insert((*i, e.id))
            {
                packs[*i].live += u64::from(e.len);
            }
        }
        let mut repack = Vec::new();
        for (i, p) in packs.iter_mut().enumerate() {
            let dead = p.total - p.live.min(p.total);
            p.fate = if p.live == 0 {
                Fate::Delete
            } else if !p.present {
                // Unreachable: a live copy is only chosen in a present pack.
                Fate::Keep
            } else if u128::from(dead) * 100 > u128::from(p.total) * u128::from(max_unused_percent)
            {
                let entries: Vec<IndexEntry> = p
                    .entries
                    .iter()
                    .filter(|e| chosen.contains(&(i, e.id)))
                    .copied()
                    .collect();
                repack.push((i, entries));
                Fate::Repack
            } else {
                Fate::Keep
            };
        }
        repack
    }

    /// Step 6: index files that name only kept packs and current live
    /// manifest files stay; the others are rewritten, carrying the kept
    /// packs and live manifest files only they name.
    fn rewrite(&self, live_manifests: &BTreeMap<ManifestId, String>) -> IndexRewrite {
        let fate_of = |kind: PackKind, id: [u8; 16]| {
            self.pack_at
                .get(&(kind, PackId(id)))
                .map_or(Fate::Delete, |i| self.packs[*i].fate)
        };
        let ref_live = |m: &ManifestRef| {
            let mid = ManifestId(m.manifest);
            live_manifests.contains_key(&mid) && self.winners.get(&mid).map(|w| w.1) == Some(m.file)
        };
        let is_clean = |f: &IndexFile| {
            f.packs
                .iter()
                .all(|p| fate_of(p.kind, p.pack) == Fate::Keep)
                && f.manifests.iter().all(ref_live)
        };
        let mut dirty = Vec::new();
        let mut clean_packs: HashSet<(PackKind, [u8; 16])> = HashSet::new();
        let mut clean_refs: HashSet<(u64, [u8; 32], [u8; 32])> = HashSet::new();
        for (path, f) in &self.files {
            if is_clean(f) {
                clean_packs.extend(f.packs.iter().map(|p| (p.kind, p.pack)));
                clean_refs.extend(f.manifests.iter().map(|m| (f.seq, m.manifest, m.file)));
            } else {
                dirty.push((path.clone(), f.seq));
            }
        }
        dirty.sort_by(|a, c| (a.1, &a.0).cmp(&(c.1, &c.0)));
        let mut carry_packs = Vec::new();
        let mut carried: HashSet<(PackKind, [u8; 16])> = HashSet::new();
        for (path, f) in &self.files {
            if !dirty.iter().any(|(d, _)| d == path) {
                continue;
            }
            for p in &f.packs {
                let key = (p.kind, p.pack);
                if fate_of(p.kind, p.pack) == Fate::Keep
                    && !clean_packs.contains(&key)
                    && carried.insert(key)
                {
                    carry_packs.push(p.clone());
                }
            }
        }
        let mut carry_refs: BTreeMap<u64, Vec<ManifestRef>> = BTreeMap::new();
        for mid in live_manifests.keys() {
            if let Some((seq, file)) = self.winners.get(mid)
                && !clean_refs.contains(&(*seq, mid.0, *file))
            {
                carry_refs.entry(*seq).or_default().push(ManifestRef {
                    manifest: mid.0,
                    file: *file,
                });
            }
        }
        IndexRewrite {
            dirty,
            carry_packs,
            carry_refs,
        }
    }
}
