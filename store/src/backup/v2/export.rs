//! `bbsync backups export SNAPSHOT FILE` (docs/format.md §17.9): one
//! self-contained file, a ustar archive of a format-2 repository holding
//! exactly what one snapshot needs: `config`, the data and manifest packs
//! its chunks and manifests are in, one index file for those packs, its
//! escrow if it has one, and the snapshot last. Written to a temp file,
//! synced, then renamed: the file appears complete or not at all.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use bbsync_protocol::{Manifest, Unverified};
use serde::Serialize;

use super::{
    format::{
        INDEX_FORMAT, IndexEntry, IndexFile, IndexPack, ManifestRef, PackKind, index_path,
        snapshot_path,
    },
    repo::Repo2,
    tar::TarWriter,
};
use crate::{
    backup::{now_ms, repo_io_err},
    error::{Result, StoreError},
    packs::PackId,
};

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The file written.
    pub file: String,
    /// The snapshot exported.
    pub snapshot: String,
    /// Data packs in it.
    pub data_packs: u64,
    /// Manifest packs in it.
    pub manifest_packs: u64,
    /// Whether the snapshot's escrow is in it.
    pub identity_escrow: bool,
    /// The file's length.
    pub bytes: u64,
    /// Wall time.
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

impl Repo2 {
    /// Resolves a snapshot given in full, as a unique prefix, by its random
    /// suffix, or `latest` (the highest sequence, then creation time).
    pub fn resolve_snapshot(&self, spec: &str) -> Result<String> {
        let ids = self.snapshot_ids()?;
        if spec == "latest" {
            let mut best: Option<(u64, u64, String)> = None;
            let top = ids
                .last()
                .map(|l| crate::backup::snapshot_seq(l))
                .ok_or_else(|| {
                    StoreError::Invalid(format!("no snapshot in {} yet", self.location()))
                })?;
            for id in ids.iter().filter(|i| crate::backup::snapshot_seq(i) == top) {
                let s = self.load_snapshot(id)?;
                let key = (top, s.created_ms, id.clone());
                if best.as_ref().is_none_or(|b| key > *b) {
                    best = Some(key);
                }
            }
            return best.map(|(_, _, id)| id).ok_or_else(|| {
                StoreError::Invalid(format!("no snapshot in {} yet", self.location()))
            });
        }
        crate::backup::match_snapshot_id(&ids, spec, &self.location())
    }

    /// Writes snapshot `spec` and everything it needs into `out` (see the
    /// module docs). Refuses a snapshot that does not verify or whose data
    /// the index lacks, before `out` is created.
    pub fn export(&self, spec: &str, out: &Path) -> Result<ExportReport> {
        let start = Instant::now();
        let loc = self.location();
        let b = self.backend();
        let id = self.resolve_snapshot(spec)?;
        let s = self.load_snapshot(&id)?;
        let ix = self.load_index()?;
        let damaged = |what: String| {
            StoreError::Repo(format!(
                "backup repository {loc} is damaged: {what}; nothing was exported"
            ))
        };
        // What the snapshot needs: its manifests' files, their chunks.
        let mut packs: BTreeMap<PackId, PackKind> = BTreeMap::new();
        let mut refs = Vec::with_capacity(s.objects.len());
        for o in &s.objects {
            let (file, at) = ix.manifest(&o.manifest_id).ok_or_else(|| {
                damaged(format!(
                    "manifest {} of snapshot {id} is in no index file",
                    o.manifest_id.short()
                ))
            })?;
            packs.insert(at.pack, PackKind::Manifests);
            refs.push(ManifestRef {
                manifest: o.manifest_id.0,
                file,
            });
            let f = self.read_manifest(&ix, &o.manifest_id)?;
            // Only to know which chunks to take; a restore of the export
            // verifies every manifest.
            let m = Unverified::<Manifest>::decode(&f.manifest)
                .map_err(|e| damaged(format!("manifest {}: {e}", o.manifest_id.short())))?
                .dangerously_assume_verified();
            for c in &m.chunks {
                let at = ix.chunks.get(&c.id).ok_or_else(|| {
                    damaged(format!(
                        "chunk {} of snapshot {id} is in no index file",
                        c.id.short()
                    ))
                })?;
                packs.insert(at.pack, PackKind::Data);
            }
        }
        // One index file for exactly those packs (their entries as indexed).
        let mut entries: BTreeMap<PackId, Vec<IndexEntry>> = BTreeMap::new();
        for (cid, at) in &ix.chunks {
            if packs.get(&at.pack) == Some(&PackKind::Data) {
                entries.entry(at.pack).or_default().push(IndexEntry {
                    id: cid.0,
                    offset: at.offset,
                    len: at.len,
                });
            }
        }
        for (file, at) in &ix.files {
            if packs.get(&at.pack) == Some(&PackKind::Manifests) {
                entries.entry(at.pack).or_default().push(IndexEntry {
                    id: *file,
                    offset: at.offset,
                    len: at.len,
                });
            }
        }
        let mut index = IndexFile {
            format: INDEX_FORMAT,
            seq: crate::backup::snapshot_seq(&id),
            packs: Vec::new(),
            manifests: refs,
        };
        for (pack, kind) in &packs {
            let mut es = entries.remove(pack).unwrap_or_default();
            es.sort_by_key(|e| e.offset);
            let pack_len = ix.packs.get(pack).map_or(0, |(_, l)| *l);
            index.packs.push(IndexPack {
                kind: *kind,
                pack: pack.0,
                pack_len,
                entries: es,
            });
        }
        let index_bytes = index.encode();
        let key = match &s.identity_escrow {
            Some(p) => Some((
                p.clone(),
                b.read(p).map_err(|e| damaged(format!("{p}: {e}")))?,
            )),
            None => None,
        };
        let snap_path = snapshot_path(&id);
        let snap_bytes = b
            .read(&snap_path)
            .map_err(repo_io_err(format!("reading {loc}/{snap_path}")))?;
        let config = self.config.encode();

        // The file: temp, members, sync, rename, sync of the directory.
        let out_io = |e: std::io::Error| StoreError::Io {
            context: format!("writing {}", out.display()),
            source: e,
        };
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = out.with_file_name(format!(".{name}.tmp"));
        let f = File::create(&tmp).map_err(out_io)?;
        let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, f), now_ms() / 1000);
        let written = Members {
            config: &config,
            packs: &packs,
            index: &index_bytes,
            key: key.as_ref(),
            snapshot: (&snap_path, &snap_bytes),
        }
        .write(&mut w, b, out);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (mut bw, len) = w.finish().map_err(out_io)?;
        bw.flush().map_err(out_io)?;
        let f = bw.into_inner().map_err(|e| out_io(e.into_error()))?;
        f.sync_all().map_err(out_io)?;
        drop(f);
        std::fs::rename(&tmp, out).map_err(out_io)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(out_io)?;
        }
        Ok(ExportReport {
            file: out.display().to_string(),
            snapshot: id,
            data_packs: packs.values().filter(|k| **k == PackKind::Data).count() as u64,
            manifest_packs: packs
                .values()
                .filter(|k| **k == PackKind::Manifests)
                .count() as u64,
            identity_escrow: key.is_some(),
            bytes: len,
            elapsed: start.elapsed(),
        })
    }
}

/// The members of an export file, in their order.
struct Members<'a> {
    config: &'a [u8],
    packs: &'a BTreeMap<PackId, PackKind>,
    index: &'a [u8],
    key: Option<&'a (String, Vec<u8>)>,
    snapshot: (&'a str, &'a [u8]),
}

impl Members<'_> {
    fn write(
        &self,
        w: &mut TarWriter<BufWriter<File>>,
        b: &dyn crate::backup::Backend,
        out: &Path,
    ) -> Result<()> {
        let out_io = |e: std::io::Error| StoreError::Io {
            context: format!("writing {}", out.display()),
            source: e,
        };
        w.append("config", self.config).map_err(out_io)?;
        for (pack, kind) in self.packs {
            let path = kind.path(pack);
            let bytes = b.read(&path).map_err(|e| {
                StoreError::Repo(format!(
                    "backup repository {} is damaged: {path}: {e}; nothing was exported",
                    b.location()
                ))
            })?;
            w.append(&path, &bytes).map_err(out_io)?;
        }
        w.append(&index_path(self.index), self.index)
            .map_err(out_io)?;
        if let Some((p, k)) = self.key {
            w.append(p, k).map_err(out_io)?;
        }
        w.append(self.snapshot.0, self.snapshot.1).map_err(out_io)
    }
}
