//! Reading manifests and chunks out of a repository of either format:
//! format 1 reads one file per manifest and per chunk; format 2 reads
//! through the index loaded once ([`super::Repo::reader`]), with positioned
//! reads of packs (ranged requests on object storage). Nothing read is
//! trusted: a manifest file is checked against the hash the index names
//! (format 2) and then by its signature; a chunk against its id.

use std::{collections::HashMap, sync::Mutex};

use bbsync_protocol::{ChunkId, ManifestId};
use sha2::{Digest, Sha256};

use super::{
    Repo,
    check::{ReadManifest, decode_manifest_file},
    chunk_path, manifest_path, repo_io_err,
    v2::format::{Index, PackKind},
};
use crate::{error::Result, packs::PackId};

/// A reader of one repository (see the module docs).
pub struct RepoReader<'a> {
    pub(super) repo: &'a Repo,
    pub(super) index: Option<Index>,
    /// Format 2: each pack's size, looked up once.
    pub(super) pack_sizes: Mutex<HashMap<PackId, Option<u64>>>,
}

impl std::fmt::Debug for RepoReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoReader")
            .field("repo", &self.repo.location())
            .finish()
    }
}

impl RepoReader<'_> {
    /// The repository.
    pub fn repo(&self) -> &Repo {
        self.repo
    }

    /// The merged index (format 2).
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Where a manifest's file is, for messages: format 1 its file, format
    /// 2 the manifest pack that holds it (or `manifest <hex>` when no index
    /// file names it).
    pub fn manifest_path(&self, mid: &ManifestId) -> String {
        match &self.index {
            None => manifest_path(mid),
            Some(ix) => ix.manifest(mid).map_or_else(
                || format!("manifest {}", mid.to_hex()),
                |(_, at)| PackKind::Manifests.path(&at.pack),
            ),
        }
    }

    /// Where a chunk is, for messages: format 1 its file, format 2 the data
    /// pack that holds it (or `chunk <hex>` when no index file names it).
    pub fn chunk_path(&self, id: &ChunkId) -> String {
        match &self.index {
            None => chunk_path(id),
            Some(ix) => ix.chunks.get(id).map_or_else(
                || format!("chunk {}", id.to_hex()),
                |at| PackKind::Data.path(&at.pack),
            ),
        }
    }

    /// Reads and decodes one manifest file (its signature not yet
    /// checked); a failure is (problem class, detail) as `backups verify`
    /// names it.
    pub(crate) fn read_manifest_file(
        &self,
        mid: &ManifestId,
    ) -> std::result::Result<ReadManifest, (&'static str, String)> {
        let b = self.repo.backend();
        let Some(ix) = &self.index else {
            let path = manifest_path(mid);
            let bytes = match b.read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(("missing-manifest", "missing".into()));
                }
                Err(e) => return Err(("bad-manifest", format!("unreadable: {e}"))),
            };
            return decode_manifest_file(&bytes);
        };
        let Some((file, at)) = ix.manifest(mid) else {
            return Err((
                "missing-manifest",
                "in no index file (an index file is missing or damaged)".into(),
            ));
        };
        let path = PackKind::Manifests.path(&at.pack);
        let bytes = b
            .read_range(&path, u64::from(at.offset), u64::from(at.len))
            .map_err(|e| ("missing-manifest", format!("{path}: unreadable: {e}")))?;
        if Sha256::digest(&bytes).as_slice() != file {
            return Err((
                "corrupt-manifest",
                format!("{path}: its file does not hash to its name"),
            ));
        }
        decode_manifest_file(&bytes)
    }

    /// Whether a chunk of `len` bytes is in the repository (present, of
    /// its size; format 2: indexed at that length, its pack present and
    /// long enough). `Ok(Err(detail))` says what is wrong, naming `label`
    /// (who references it).
    pub fn check_chunk(
        &self,
        id: &ChunkId,
        len: u32,
        label: &str,
    ) -> Result<std::result::Result<(), String>> {
        let b = self.repo.backend();
        let loc = self.repo.location();
        let Some(ix) = &self.index else {
            let path = chunk_path(id);
            return Ok(
                match b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?
                {
                    Some(n) if n == u64::from(len) => Ok(()),
                    Some(n) => Err(format!("has {n} bytes, the manifest of {label} says {len}")),
                    None => Err(format!("missing, referenced by {label}")),
                },
            );
        };
        let Some(at) = ix.chunks.get(id) else {
            return Ok(Err(format!(
                "in no index file (an index file is missing or damaged), referenced by {label}"
            )));
        };
        if at.len != len {
            return Ok(Err(format!(
                "the index says chunk {} has {} bytes, the manifest of {label} says {len}",
                id.short(),
                at.len
            )));
        }
        let path = PackKind::Data.path(&at.pack);
        let cached = self
            .pack_sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&at.pack)
            .copied();
        let size = match cached {
            Some(s) => s,
            None => {
                let s = b
                    .size(&path)
                    .map_err(repo_io_err(format!("reading {loc}/{path}")))?;
                self.pack_sizes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(at.pack, s);
                s
            }
        };
        let end = u64::from(at.offset) + u64::from(at.len);
        Ok(match size {
            None => Err(format!("missing, holds chunk {} of {label}", id.short())),
            Some(n) if n < end => Err(format!(
                "has {n} bytes, chunk {} of {label} ends at {end}",
                id.short()
            )),
            Some(_) => Ok(()),
        })
    }

    /// What a chunk that does not hash to its id is called in messages.
    pub fn bad_chunk(&self, id: &ChunkId) -> String {
        match &self.index {
            None => "content does not hash to its name".into(),
            Some(_) => format!("chunk {}: content does not hash to its id", id.short()),
        }
    }

    /// Reads a chunk's stored bytes (not yet checked against its id).
    pub fn read_chunk(&self, id: &ChunkId, len: u32) -> std::io::Result<Vec<u8>> {
        let b = self.repo.backend();
        match &self.index {
            None => b.read(&chunk_path(id)),
            Some(ix) => {
                let at = ix.chunks.get(id).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("chunk {} is in no index file", id.short()),
                    )
                })?;
                b.read_range(
                    &PackKind::Data.path(&at.pack),
                    u64::from(at.offset),
                    u64::from(len.min(at.len)),
                )
            }
        }
    }
}
