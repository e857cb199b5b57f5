//! `bbsync backups verify`: every snapshot file, every manifest they
//! reference, and every chunk those reference; with `read_data` each chunk
//! is re-hashed. Each problem is named, pg_verifybackup style: one line,
//! the path, what is wrong.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkId, EnvelopeEntry, Manifest, ManifestId, Unverified, chunk::check_chunk_id,
};
use rayon::prelude::*;
use serde::Serialize;

pub use super::problem::RepoProblemClass;
use super::{Repo, SnapshotFile, chunk_path, list_chunks, manifest_path, repo_io_err};
use crate::{error::Result, progress::Progress};

/// Adds the chunks of a checked manifest to `refs` (chunk -> its length
/// and who references it: the first reference of each is kept).
pub(crate) fn add_chunk_refs(
    refs: &mut HashMap<ChunkId, (u32, String)>,
    c: &CheckedManifest,
    snap: &str,
) {
    let label = format!("{}:{}", c.manifest.kind, c.manifest.name);
    for ch in &c.manifest.chunks {
        refs.entry(ch.id)
            .or_insert_with(|| (ch.len, format!("{label} in snapshot {snap}")));
    }
}

/// Every file under `keys/` is an identity escrow whose name `fits` it
/// (format 1: `identity.<instance>`; format 2: `<instance>-<seq>`).
pub(crate) fn check_key_files(
    b: &dyn super::Backend,
    loc: &str,
    fits: impl Fn(&str, &super::repofile::KeyFile) -> bool,
    problems: &mut Vec<RepoProblem>,
) -> Result<()> {
    for name in b
        .list("keys")
        .map_err(repo_io_err(format!("listing {loc}/keys")))?
    {
        let path = format!("keys/{name}");
        let ok = b
            .read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<super::repofile::KeyFile>(&bytes).ok())
            .is_some_and(|k| fits(&name, &k));
        if !ok {
            problems.push(problem(
                RepoProblemClass::BadKeyFile,
                path,
                "not a valid identity escrow".into(),
            ));
        }
    }
    Ok(())
}

/// One problem found in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoProblem {
    /// What kind of problem.
    pub class: RepoProblemClass,
    /// The file, relative to the repository.
    pub path: String,
    /// What is wrong.
    pub detail: String,
}

/// What `backups verify` found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepoCheck {
    /// The repository.
    pub repo: String,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Manifests checked.
    pub manifests: u64,
    /// Of those, the ones whose file a verified format-3 snapshot signed
    /// for: decoded and checked, their own signature not verified again.
    pub manifests_vouched: u64,
    /// Chunks checked.
    pub chunks: u64,
    /// Whether chunk data was re-hashed.
    pub read_data: bool,
    /// Bytes re-hashed.
    pub bytes_read: u64,
    /// Problems, sorted.
    pub problems: Vec<RepoProblem>,
    /// Problems by class.
    pub counts: BTreeMap<RepoProblemClass, u64>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

impl RepoCheck {
    /// Takes the problems found (sorted by class and path, counted by
    /// class) and the wall time since `start`.
    pub(crate) fn finish(&mut self, mut problems: Vec<RepoProblem>, start: std::time::Instant) {
        problems.sort_by(|a, b| (&a.class, &a.path).cmp(&(&b.class, &b.path)));
        for p in &problems {
            *self.counts.entry(p.class).or_default() += 1;
        }
        self.problems = problems;
        self.elapsed = start.elapsed();
    }

    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(crate) fn problem(class: RepoProblemClass, path: String, detail: String) -> RepoProblem {
    RepoProblem {
        class,
        path,
        detail,
    }
}

/// A manifest check's outcome: the checked file, or (problem class, detail).
pub(crate) type ManifestCheck = std::result::Result<CheckedManifest, (RepoProblemClass, String)>;

/// What one manifest file holds, once checked.
pub(crate) struct CheckedManifest {
    /// The verified manifest.
    pub manifest: bbsync_protocol::Signed<Manifest>,
    /// Envelope entry bytes.
    pub envelope: Vec<Vec<u8>>,
}

/// A decoded manifest file: the manifest, not yet verified, and its entries.
pub(crate) type ReadManifest = (Unverified<Manifest>, Vec<Vec<u8>>);

/// Decodes the bytes of one manifest file (signature not yet checked).
pub(crate) fn decode_manifest_file(
    bytes: &[u8],
) -> std::result::Result<ReadManifest, (RepoProblemClass, String)> {
    let f = super::repofile::ManifestFile::decode(bytes)
        .map_err(|e| (RepoProblemClass::BadManifest, format!("undecodable: {e}")))?;
    let u = Unverified::<Manifest>::decode(&f.manifest)
        .map_err(|e| (RepoProblemClass::BadManifest, format!("bad manifest: {e}")))?;
    for e in &f.envelope {
        Unverified::<EnvelopeEntry>::decode(e).map_err(|e| {
            (
                RepoProblemClass::BadManifest,
                format!("bad envelope entry: {e}"),
            )
        })?;
    }
    Ok((u, f.envelope.into_iter().map(|b| b.into_vec()).collect()))
}

/// Reads and checks manifest files against the object versions a snapshot
/// lists: each file decodes, its signature verifies under its author's key
/// (ed25519 batches, on all cores), its id is the hash of the signed body,
/// and it is that object and version. Results in the order of `items`.
pub(crate) fn check_manifests(
    reader: &super::RepoReader<'_>,
    items: &[&super::repofile::SnapObject],
) -> Vec<ManifestCheck> {
    check_manifests_with(
        items,
        |mid| reader.manifest_place(mid),
        |_| false,
        |mids| reader.read_manifest_files(mids),
    )
}

/// [`check_manifests`] with the files read by `read`, a group at a time
/// (format 1: one file per manifest; format 2: through the index, runs of
/// a pack in one read), results in the order asked. The groups are made
/// in the order of `place` (format 2: pack and offset, from the index), so
/// that each group reads one stretch of a pack: in the order asked
/// (manifest ids, random places), every group of 512 spanned nearly every
/// manifest pack, and a verify read the manifest packs once per group.
/// A manifest `vouched` says a verified snapshot signature covers (its
/// file's hash is in a format-3 snapshot's digest, see
/// `vouches_for_its_files` in `v2/check.rs`) is decoded and checked like the others but
/// its own signature is not verified again.
pub(crate) fn check_manifests_with(
    items: &[&super::repofile::SnapObject],
    place: impl Fn(&ManifestId) -> Option<([u8; 16], u32)>,
    vouched: impl Fn(&ManifestId) -> bool + Sync,
    read: impl Fn(&[ManifestId]) -> Vec<std::result::Result<ReadManifest, (RepoProblemClass, String)>>
    + Sync,
) -> Vec<ManifestCheck> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_cached_key(|&i| place(&items[i].manifest_id));
    check_in_order(items, order, vouched, read)
}

/// Manifests checked at once where a command checks many in groups: what
/// their decoded forms hold at a time.
pub(crate) const MANIFESTS_PER_GROUP: usize = 8192;

/// The manifests of `objects` checked through `reader` in groups of
/// [`MANIFESTS_PER_GROUP`], in the order of their places in the packs
/// (each part of a manifest pack read once, and one group's decoded
/// manifests held at a time rather than all of them: 150-400 MB at 200,000
/// objects). `f` gets each group, as indexes into `objects` in the order
/// checked, with their checks in the same order.
pub(crate) fn check_manifests_grouped(
    reader: &super::RepoReader<'_>,
    objects: &[super::repofile::SnapObject],
    mut f: impl FnMut(&[u32], Vec<ManifestCheck>) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<u32> = (0..objects.len() as u32).collect();
    order.sort_by_cached_key(|&i| reader.manifest_place(&objects[i as usize].manifest_id));
    for group in order.chunks(MANIFESTS_PER_GROUP) {
        let refs: Vec<&super::repofile::SnapObject> =
            group.iter().map(|&i| &objects[i as usize]).collect();
        let checks =
            check_manifests_placed(&refs, |_| false, |mids| reader.read_manifest_files(mids));
        f(group, checks)?;
    }
    Ok(())
}

/// [`check_manifests_with`] for `items` already in the order of their
/// places (a caller that sorted them once for its own grouping): results
/// in the same order.
pub(crate) fn check_manifests_placed(
    items: &[&super::repofile::SnapObject],
    vouched: impl Fn(&ManifestId) -> bool + Sync,
    read: impl Fn(&[ManifestId]) -> Vec<std::result::Result<ReadManifest, (RepoProblemClass, String)>>
    + Sync,
) -> Vec<ManifestCheck> {
    check_in_order(items, (0..items.len()).collect(), vouched, read)
}

/// The checks of [`check_manifests_with`], its groups taken in `order`
/// (a permutation of the items' indexes); results in the items' order.
fn check_in_order(
    items: &[&super::repofile::SnapObject],
    order: Vec<usize>,
    vouched: impl Fn(&ManifestId) -> bool + Sync,
    read: impl Fn(&[ManifestId]) -> Vec<std::result::Result<ReadManifest, (RepoProblemClass, String)>>
    + Sync,
) -> Vec<ManifestCheck> {
    const GROUP: usize = 512;
    let placed: Vec<(usize, &super::repofile::SnapObject)> =
        order.into_iter().map(|i| (i, items[i])).collect();
    let checked: Vec<(usize, ManifestCheck)> = placed
        .par_chunks(GROUP)
        .flat_map_iter(|group| {
            // Each file read: its manifest to verify in the batch, and the
            // rest (its envelope, or why it could not be read).
            let mids: Vec<ManifestId> = group.iter().map(|(_, o)| o.manifest_id).collect();
            let (batch, rest): (Vec<_>, Vec<_>) = read(&mids)
                .into_iter()
                .map(|r| match r {
                    Ok((u, envelope)) => (Some(u), Ok(envelope)),
                    Err(e) => (None, Err(e)),
                })
                .unzip();
            // Vouched ones decided here, the others verified in the batch.
            let mut decided = Vec::with_capacity(batch.len());
            let batch: Vec<_> = batch
                .into_iter()
                .zip(&mids)
                .map(|(u, mid)| match u {
                    Some(u) if vouched(mid) => {
                        decided.push(Some(u.dangerously_vouched_for(|_| true)));
                        None
                    }
                    u => {
                        decided.push(None);
                        u
                    }
                })
                .collect();
            let verified: Vec<_> = crate::sync::verify_slots(batch, |_, _| true)
                .into_iter()
                .zip(decided)
                .map(|(v, d)| d.or(v))
                .collect();
            group
                .iter()
                .zip(verified.into_iter().zip(rest))
                .map(|((i, o), (r, rest))| {
                    let c = match (r, rest) {
                        (Some(r), Ok(envelope)) => finish(o, r, envelope),
                        (_, Err(e)) => Err(e),
                        // (every manifest read was verified)
                        (None, Ok(_)) => Err((
                            RepoProblemClass::BadManifest,
                            "bad manifest: not verified".into(),
                        )),
                    };
                    (*i, c)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out: Vec<Option<ManifestCheck>> = Vec::new();
    out.resize_with(items.len(), || None);
    for (i, c) in checked {
        out[i] = Some(c);
    }
    // (`order` is a permutation: every place is filled)
    out.into_iter()
        .map(|c| c.unwrap_or_else(|| Err((RepoProblemClass::MissingManifest, "not read".into()))))
        .collect()
}

fn finish(
    object: &super::repofile::SnapObject,
    r: bbsync_protocol::Result<bbsync_protocol::Signed<Manifest>>,
    envelope: Vec<Vec<u8>>,
) -> ManifestCheck {
    let m = r.map_err(|e| (RepoProblemClass::BadManifest, format!("bad manifest: {e}")))?;
    if m.id() != object.manifest_id {
        return Err((
            RepoProblemClass::BadManifest,
            format!("holds manifest {}, not the one named", m.id().to_hex()),
        ));
    }
    if m.object_id != object.object_id || m.version != object.version {
        return Err((
            RepoProblemClass::BadManifest,
            format!(
                "is object {} version {}, the snapshot lists object {} version {}",
                m.object_id.to_hex(),
                m.version,
                object.object_id.to_hex(),
                object.version
            ),
        ));
    }
    Ok(CheckedManifest {
        manifest: m,
        envelope,
    })
}

/// Reads a snapshot and sorts a failure into a problem class.
pub(crate) fn snapshot_problem(
    repo: &Repo,
    id: &str,
) -> Result<std::result::Result<SnapshotFile, RepoProblem>> {
    match repo.load_snapshot(id) {
        Ok(s) => Ok(Ok(s)),
        Err(crate::StoreError::BadSnapshot { fault, message }) => Ok(Err(problem(
            fault.into(),
            super::snapshot_path(id),
            message,
        ))),
        Err(crate::StoreError::Repo(msg)) => Ok(Err(problem(
            RepoProblemClass::BadSnapshot,
            super::snapshot_path(id),
            msg,
        ))),
        Err(e) => Err(e),
    }
}

impl Repo {
    /// Checks one snapshot (`Some(id)`) or the whole repository (`None`:
    /// also unreferenced files and key files). Format 2 under a shared
    /// lock ([`super::v2::Repo2::verify_snapshots`]).
    pub fn verify(
        &self,
        only: Option<&str>,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<RepoCheck> {
        if let Some(r) = self.v2() {
            let _lock = self.lock("", crate::backup::LockFor::VERIFY)?;
            let only = only.map(|s| self.resolve_snapshot(s)).transpose()?;
            return r.verify_snapshots(only.as_deref(), read_data, progress);
        }
        let start = Instant::now();
        let b = self.backend();
        let mut r = RepoCheck {
            repo: self.location(),
            read_data,
            ..Default::default()
        };
        let ids = match only {
            Some(spec) => vec![self.resolve_snapshot(spec)?],
            None => self.snapshot_ids()?,
        };
        let mut problems = Vec::new();
        // 1. Snapshots, then the manifests they name (each once).
        let refs = self.v1_references(&ids, &mut r, &mut problems)?;
        // 2. Chunks: present with the right length; with read_data, re-hashed.
        let (have, strays) = list_chunks(b)?;
        r.chunks = refs.chunks.len() as u64;
        let to_read = self.v1_chunk_sizes(&refs.chunks, &have, &mut problems)?;
        if read_data {
            progress.start(
                "verify",
                to_read.len() as u64,
                to_read.iter().map(|t| u64::from(t.1)).sum(),
            );
            let (bytes, found) = read_v1_chunks(b, &to_read, progress);
            progress.finish();
            r.bytes_read = bytes;
            problems.extend(found);
        }
        // 3. The whole repository: what nothing references, and key files.
        if only.is_none() {
            self.v1_unreferenced(&refs, &have, strays, &mut problems)?;
        }
        r.finish(problems, start);
        Ok(r)
    }

    /// Format 1, step 1: the snapshots `ids`, then the manifests they name
    /// (each once), and the chunks those reference.
    fn v1_references(
        &self,
        ids: &[String],
        r: &mut RepoCheck,
        problems: &mut Vec<RepoProblem>,
    ) -> Result<V1References> {
        let mut wanted: BTreeMap<ManifestId, (super::repofile::SnapObject, String)> =
            BTreeMap::new();
        // What an unreadable snapshot or manifest references is unknown:
        // then nothing is called unreferenced.
        let mut complete = true;
        let mut snapshots_ok = true;
        for id in ids {
            r.snapshots += 1;
            match snapshot_problem(self, id)? {
                Ok(s) => {
                    if s.signature == super::SnapshotSignature::Unsigned {
                        // Readable, but nothing vouches for it: a restore
                        // refuses it without --trust-host.
                        problems.push(problem(
                            RepoProblemClass::UnsignedSnapshot,
                            super::snapshot_path(id),
                            "written before snapshots were signed: anyone who can write the repository could have changed it; restore needs --trust-host (take a new backup, then delete it)".into(),
                        ));
                    }
                    for o in s.objects {
                        wanted
                            .entry(o.manifest_id)
                            .or_insert_with(|| (o, id.clone()));
                    }
                }
                Err(p) => {
                    complete = false;
                    snapshots_ok = false;
                    problems.push(p);
                }
            }
        }
        r.manifests = wanted.len() as u64;
        let objects: Vec<&super::repofile::SnapObject> = wanted.values().map(|(o, _)| o).collect();
        let checked: Vec<(ManifestId, ManifestCheck, String)> = wanted
            .iter()
            .zip(check_manifests(&self.reader()?, &objects))
            .map(|((mid, (_, snap)), c)| (*mid, c, snap.clone()))
            .collect();
        // chunk -> (expected length, who references it)
        let mut chunks: HashMap<ChunkId, (u32, String)> = HashMap::new();
        for (mid, c, snap) in checked {
            match c {
                Ok(c) => add_chunk_refs(&mut chunks, &c, &snap),
                Err((class, detail)) => {
                    complete = false;
                    problems.push(problem(
                        class,
                        manifest_path(&mid),
                        format!("{detail} (snapshot {snap})"),
                    ));
                }
            }
        }
        Ok(V1References {
            manifests: wanted.keys().map(|m| m.to_hex()).collect(),
            chunks,
            complete,
            snapshots_ok,
        })
    }

    /// Format 1, step 2: each referenced chunk is present at the length
    /// its manifest says; returns those to re-hash: (id, length, who
    /// references it, path).
    fn v1_chunk_sizes(
        &self,
        refs: &HashMap<ChunkId, (u32, String)>,
        have: &HashSet<ChunkId>,
        problems: &mut Vec<RepoProblem>,
    ) -> Result<Vec<(ChunkId, u32, String, String)>> {
        let b = self.backend();
        let mut to_read = Vec::new();
        for (id, (len, label)) in refs {
            let path = chunk_path(id);
            if !have.contains(id) {
                problems.push(problem(
                    RepoProblemClass::MissingChunk,
                    path,
                    format!("missing, referenced by {label}"),
                ));
                continue;
            }
            let size = b
                .size(&path)
                .map_err(repo_io_err(format!("reading {}/{path}", self.location())))?
                .unwrap_or(0);
            if size != u64::from(*len) {
                let class = if size < u64::from(*len) {
                    RepoProblemClass::TruncatedChunk
                } else {
                    RepoProblemClass::WrongSizeChunk
                };
                problems.push(problem(
                    class,
                    path,
                    format!("has {size} bytes, the manifest says {len} ({label})"),
                ));
                continue;
            }
            to_read.push((*id, *len, label.clone(), path));
        }
        Ok(to_read)
    }

    /// Format 1, step 3 (the whole repository): chunks and manifests no
    /// snapshot references, files that are not chunks, key files.
    fn v1_unreferenced(
        &self,
        refs: &V1References,
        have: &HashSet<ChunkId>,
        strays: Vec<String>,
        problems: &mut Vec<RepoProblem>,
    ) -> Result<()> {
        let b = self.backend();
        if refs.complete {
            for id in have {
                if !refs.chunks.contains_key(id) {
                    problems.push(problem(
                        RepoProblemClass::OrphanChunk,
                        chunk_path(id),
                        "referenced by no snapshot (`bbsync backups prune` removes it)".into(),
                    ));
                }
            }
        }
        for s in strays {
            problems.push(problem(
                RepoProblemClass::StrayFile,
                s,
                "not a chunk file name".into(),
            ));
        }
        for name in b.list("manifests").map_err(repo_io_err(format!(
            "listing {}/manifests",
            self.location()
        )))? {
            if refs.snapshots_ok && !refs.manifests.contains(&name) {
                problems.push(problem(
                    RepoProblemClass::OrphanManifest,
                    format!("manifests/{name}"),
                    "referenced by no snapshot (`bbsync backups prune` removes it)".into(),
                ));
            }
        }
        check_key_files(
            b,
            &self.location(),
            |name, k| name == format!("identity.{}", k.instance),
            problems,
        )
    }
}

/// What the snapshots of a format-1 verify reference (step 1).
struct V1References {
    /// The manifests named (hex).
    manifests: HashSet<String>,
    /// chunk -> (expected length, who references it).
    chunks: HashMap<ChunkId, (u32, String)>,
    /// Every snapshot and manifest was read (else nothing is called
    /// unreferenced).
    complete: bool,
    /// Every snapshot was read (else no manifest is called unreferenced).
    snapshots_ok: bool,
}

/// Format 1, step 2 with `read_data`: the chunks re-hashed on all cores;
/// returns the bytes read and the problems found.
fn read_v1_chunks(
    b: &dyn super::Backend,
    to_read: &[(ChunkId, u32, String, String)],
    progress: &dyn Progress,
) -> (u64, Vec<RepoProblem>) {
    let found = Mutex::new(Vec::new());
    let bytes: u64 = to_read
        .par_iter()
        .map(|(id, len, label, path)| {
            let detail = match b.read(path) {
                Ok(data) => match check_chunk_id(id, &data) {
                    Ok(()) => None,
                    Err(_) => Some(format!(
                        "content does not hash to its name, referenced by {label}"
                    )),
                },
                Err(e) => Some(format!("unreadable: {e}")),
            };
            if let Some(d) = detail {
                found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(problem(RepoProblemClass::CorruptChunk, path.clone(), d));
            }
            progress.advance(1, u64::from(*len));
            u64::from(*len)
        })
        .sum();
    let found = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (bytes, found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bbsync_protocol::ObjectId;

    #[test]
    fn manifests_are_read_in_the_order_they_lie_and_reported_in_the_order_asked() {
        // 1,100 objects whose manifests lie in reverse order of the list.
        let objects: Vec<super::super::repofile::SnapObject> = (0..1100u32)
            .map(|i| {
                let mut oid = [0u8; 16];
                oid[..4].copy_from_slice(&i.to_be_bytes());
                let mut mid = [0u8; 32];
                mid[..4].copy_from_slice(&i.to_be_bytes());
                super::super::repofile::SnapObject {
                    object_id: ObjectId(oid),
                    version: 1,
                    manifest_id: ManifestId(mid),
                }
            })
            .collect();
        let items: Vec<&super::super::repofile::SnapObject> = objects.iter().collect();
        let number = |m: &ManifestId| u32::from_be_bytes([m.0[0], m.0[1], m.0[2], m.0[3]]);
        let groups = Mutex::new(Vec::new());
        let checked = check_manifests_with(
            &items,
            |m| Some(([7; 16], 5000 - number(m))),
            |_| false,
            |mids| {
                groups
                    .lock()
                    .expect("the lock is not poisoned")
                    .push(mids.iter().map(number).collect::<Vec<_>>());
                mids.iter()
                    .map(|m| Err((RepoProblemClass::MissingManifest, number(m).to_string())))
                    .collect()
            },
        );
        // Reported in the order asked, each for its own manifest.
        let got: Vec<String> = checked
            .into_iter()
            .map(|c| c.err().expect("every read failed").1)
            .collect();
        let want: Vec<String> = (0..1100).map(|i: u32| i.to_string()).collect();
        assert_eq!(got, want);
        // Read in groups of neighbours: each group a run of places.
        let mut groups = groups.into_inner().expect("the lock is not poisoned");
        groups.sort_by_key(|g| std::cmp::Reverse(g[0]));
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0], (588..1100).rev().collect::<Vec<_>>());
        assert_eq!(groups[1], (76..588).rev().collect::<Vec<_>>());
        assert_eq!(groups[2], (0..76).rev().collect::<Vec<_>>());
    }
}
