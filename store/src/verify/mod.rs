//! `verify`: checks every object, envelope and chunk, and classifies each
//! problem found (DESIGN §5).

mod packs;
mod records;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    time::{Duration, Instant},
};

use bbsync_protocol::{ChunkId, ObjectId};
use serde::Serialize;

use self::packs::PackScan;
use crate::{Store, StoreError, error::Result, packs::Location, progress::Progress};

/// The classes of problems `verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemClass {
    /// A manifest references a chunk that is not on disk.
    MissingChunk,
    /// A chunk file's bytes do not hash to its id (or have the wrong length).
    CorruptChunk,
    /// A chunk file no manifest references.
    OrphanChunk,
    /// A manifest whose signature fails or whose author is not trusted.
    BadManifestSignature,
    /// An envelope entry for this instance that fails to verify or unwrap.
    BadEnvelope,
    /// No envelope entry for this instance.
    Undecryptable,
    /// The object is recorded as not yet complete.
    IncompleteObject,
    /// A pack file is shorter than what its trailer, the index or the
    /// database says it holds (cut short).
    TruncatedPack,
    /// A pack's header or trailer does not match its content, or the index
    /// points at a place its trailer does not list.
    PackTrailerMismatch,
}

impl fmt::Display for ProblemClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemClass::MissingChunk => "missing-chunk",
            ProblemClass::CorruptChunk => "corrupt-chunk",
            ProblemClass::OrphanChunk => "orphan-chunk",
            ProblemClass::BadManifestSignature => "bad-manifest-signature",
            ProblemClass::BadEnvelope => "bad-envelope",
            ProblemClass::Undecryptable => "undecryptable",
            ProblemClass::IncompleteObject => "incomplete-object",
            ProblemClass::TruncatedPack => "truncated-pack",
            ProblemClass::PackTrailerMismatch => "pack-trailer-mismatch",
        })
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Its class.
    pub class: ProblemClass,
    /// The object concerned (`kind:name`), if any.
    pub object: Option<String>,
    /// The object id, if any.
    pub object_id: Option<String>,
    /// The chunk concerned, if any.
    pub chunk: Option<String>,
    /// The pack concerned, if any (its id).
    pub pack: Option<String>,
    /// What exactly is wrong.
    pub detail: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Objects checked (tombstones included).
    pub objects: u64,
    /// Chunk references checked.
    pub chunks: u64,
    /// Bytes of pack files read and re-hashed (with `read_data`).
    pub bytes_read: u64,
    /// Pack files checked.
    pub packs: u64,
    /// Whether chunk contents were re-hashed.
    pub read_data: bool,
    /// Everything found, sorted by class.
    pub problems: Vec<Problem>,
    /// Count per class.
    pub counts: HashMap<String, u64>,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}
/// A chunk reference to check: the chunk, its length per the manifest, the
/// object, and the chunk's location once the index was read.
struct ChunkRef {
    id: ChunkId,
    len: u32,
    object: ObjectId,
    loc: Option<Location>,
}

impl Store {
    /// After steps A and B: the index merged with the references (both in
    /// chunk-id order: what is referenced and missing, what is indexed and
    /// referenced by nothing), then each referenced chunk that has a
    /// location against what the packs held. Returns the problems (the
    /// packs' own first).
    fn chunk_problems(
        &self,
        refs: &mut [ChunkRef],
        incomplete: &HashSet<ObjectId>,
        scan: PackScan,
    ) -> Result<Vec<Problem>> {
        let PackScan {
            index,
            mut problems,
            bad,
            on_disk,
            ..
        } = scan;
        let mut labels: HashMap<ObjectId, String> = HashMap::new();
        let mut label = |id: &ObjectId| -> String {
            labels
                .entry(*id)
                .or_insert_with(|| match self.db().object(id) {
                    Ok(Some(st)) => format!("{}:{}", st.kind, st.name),
                    _ => id.to_hex(),
                })
                .clone()
        };
        let chunk_problem = |class, r: &ChunkRef, label: String, detail: String| Problem {
            class,
            object: Some(label),
            object_id: Some(r.object.to_hex()),
            chunk: Some(r.id.to_hex()),
            pack: None,
            detail,
        };
        // The copies of a restore that stopped, pinned for its rerun (a day
        // at most): not orphans.
        let pinned: HashSet<ChunkId> = self
            .held_restore_pins()?
            .map(|p| p.ids.into_iter().collect())
            .unwrap_or_default();
        // 1. The index, merged with the references (both in chunk-id order).
        refs.sort_unstable_by_key(|a| a.id);
        let mut next = 0;
        let mut missing = |r: &ChunkRef, problems: &mut Vec<Problem>, detail: &str| {
            // An object marked incomplete is expected to lack chunks.
            if !incomplete.contains(&r.object) {
                let l = label(&r.object);
                problems.push(chunk_problem(
                    ProblemClass::MissingChunk,
                    r,
                    l,
                    detail.into(),
                ));
            }
        };
        for (id, loc) in index {
            while next < refs.len() && refs[next].id < id {
                missing(&refs[next], &mut problems, "not in the chunk index");
                next += 1;
            }
            let mut referenced = false;
            while next < refs.len() && refs[next].id == id {
                referenced = true;
                match loc {
                    Some(l) => refs[next].loc = Some(l),
                    None => missing(
                        &refs[next],
                        &mut problems,
                        "its index record is damaged (run `bbsync repair-index`)",
                    ),
                }
                next += 1;
            }
            match loc {
                Some(_) if !referenced && !pinned.contains(&id) => problems.push(Problem {
                    class: ProblemClass::OrphanChunk,
                    object: None,
                    object_id: None,
                    chunk: Some(id.to_hex()),
                    pack: None,
                    detail: "no manifest references this chunk".into(),
                }),
                None if !referenced => problems.push(Problem {
                    class: ProblemClass::MissingChunk,
                    object: None,
                    object_id: None,
                    chunk: Some(id.to_hex()),
                    pack: None,
                    detail: "its index record is damaged (run `bbsync repair-index`)".into(),
                }),
                _ => {}
            }
        }
        for r in &refs[next..] {
            missing(r, &mut problems, "not in the chunk index");
        }
        // 3. Each referenced chunk that has a location.
        for r in refs.iter() {
            let Some(loc) = r.loc else { continue };
            let p = if !on_disk.contains(&loc.pack) {
                if incomplete.contains(&r.object) {
                    None
                } else {
                    Some((
                        ProblemClass::MissingChunk,
                        format!(
                            "its pack {} is missing",
                            self.packs().path(&loc.pack).display()
                        ),
                    ))
                }
            } else if loc.len != r.len {
                Some((
                    ProblemClass::CorruptChunk,
                    format!("length {} (expected {})", loc.len, r.len),
                ))
            } else {
                bad.get(&r.id).cloned()
            };
            if let Some((class, detail)) = p {
                let l = label(&r.object);
                problems.push(chunk_problem(class, r, l, detail));
            }
        }
        Ok(problems)
    }

    /// Checks the whole store. With `read_data`, every chunk referenced is
    /// re-hashed (in parallel on all cores); otherwise only presence and length.
    pub fn verify(&self, read_data: bool, progress: &dyn Progress) -> Result<VerifyReport> {
        let start = Instant::now();
        let _g = self.lock();
        if read_data {
            // Read from disk while the manifests are checked.
            self.packs().prefetch_all();
        }
        // A. The chunk index and the packs (with read_data every chunk
        // re-hashed), beside B. the records: their manifests and envelopes
        // checked and the chunks they reference listed. Both use every
        // core; neither needs the other until the two are compared.
        let (scan, records) = rayon::join(
            || self.scan_packs(read_data, progress),
            || self.check_records(),
        );
        let (mut problems, mut refs, objects, incomplete) = records?;
        let scan = scan?;
        let (bytes_read, packs) = (scan.bytes_read, scan.packs);
        let chunks = refs.len() as u64;
        let chunk_problems = self.chunk_problems(&mut refs, &incomplete, scan)?;
        drop(refs);
        let mut seen = HashSet::new();
        for p in chunk_problems {
            if seen.insert((
                p.class,
                p.chunk.clone(),
                p.object_id.clone(),
                p.detail.clone(),
            )) {
                problems.push(p);
            }
        }
        problems
            .sort_by(|a, b| (a.class, &a.object, &a.chunk).cmp(&(b.class, &b.object, &b.chunk)));
        let mut counts = HashMap::new();
        for p in &problems {
            *counts.entry(p.class.to_string()).or_insert(0) += 1;
        }
        let report = VerifyReport {
            objects,
            chunks,
            bytes_read,
            packs,
            read_data,
            problems,
            counts,
            elapsed: start.elapsed(),
        };
        let last = LastVerify {
            time_ms: crate::backup::now_ms(),
            read_data,
            problems: report.problems.len() as u64,
            counts: report.counts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        // A record for monitoring (`/metrics`, `status`): a verify whose
        // record cannot be written still reports what it found.
        if let Err(e) = serde_json::to_vec(&last)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
            .and_then(|v| self.db().set_last_verify(&v))
        {
            tracing::warn!("could not record the outcome of this verify: {e}");
        }
        Ok(report)
    }

    /// The outcome of the last `verify` of this store, by the CLI or the
    /// admin API (`None` before the first one, or when the record does not
    /// parse).
    pub fn last_verify(&self) -> Result<Option<LastVerify>> {
        Ok(self
            .db()
            .last_verify()?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

/// What the last `verify` of a store found, kept in the store for
/// monitoring.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LastVerify {
    /// When it ended (Unix ms).
    pub time_ms: u64,
    /// Whether chunk contents were re-hashed.
    pub read_data: bool,
    /// Problems found.
    pub problems: u64,
    /// Problems by class.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// Makes sure a failing verify maps to an error the CLI can exit on.
pub fn report_error(r: &VerifyReport) -> Option<StoreError> {
    if r.is_ok() {
        None
    } else {
        Some(StoreError::Corrupt(format!(
            "verify found {} problem(s)",
            r.problems.len()
        )))
    }
}
