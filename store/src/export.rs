//! Export of objects and of the whole BBS tree.

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bbsync_protocol::{ChunkCipher, ObjectId, ObjectMeta, Shape};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    Store,
    archive::Extractor,
    bbs::{BBS_KINDS, tree_path},
    error::{Context, Result, StoreError},
    progress::Progress,
};

/// What an export did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExportStats {
    /// Objects written.
    pub objects: u64,
    /// Files written.
    pub files: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Objects that could not be exported, with the reason.
    pub failed: Vec<(String, String)>,
    /// Wall time.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Fails unless `dir` does not exist or is an empty directory; creates it.
pub fn prepare_empty_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(StoreError::DestinationNotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))
        }
        Err(e) => Err(e).ctx(|| format!("reading {}", dir.display())),
    }
}

impl Store {
    /// Decrypts an object and passes its plaintext, chunk by chunk, to `sink`.
    /// Every chunk is checked against its id first. Returns the shape.
    pub fn read_object(
        &self,
        id: &ObjectId,
        mut sink: impl FnMut(Shape, &[u8]) -> Result<()>,
    ) -> Result<(Shape, u64)> {
        let st = self.state(id)?;
        if st.deleted {
            return Err(StoreError::UnknownObject(format!(
                "{} (deleted)",
                id.to_hex()
            )));
        }
        if !st.complete {
            return Err(StoreError::Incomplete(id.to_hex()));
        }
        let m = self.manifest(id)?;
        let key = self.content_key(&m)?;
        let cipher = ChunkCipher::new(&key);
        let shape = match &m.meta {
            Some(meta) => {
                ObjectMeta::decode(
                    &cipher
                        .open_meta(meta)
                        .ctx(|| format!("meta of {}", id.short()))?,
                )
                .ctx(|| format!("meta of {}", id.short()))?
                .shape
            }
            None => Shape::File,
        };
        let mut total = 0u64;
        for c in &m.chunks {
            let stored = match self.chunks().read(&c.id) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Incomplete(format!(
                        "{} (chunk {} missing)",
                        id.to_hex(),
                        c.id.short()
                    )));
                }
                Err(e) => return Err(e).ctx(|| format!("reading chunk {}", c.id.short())),
            };
            let plain = cipher
                .open(&c.id, &stored)
                .ctx(|| format!("chunk {} of object {}", c.id.short(), id.short()))?;
            total += plain.len() as u64;
            sink(shape, &plain)?;
        }
        if total != m.plaintext_len {
            return Err(StoreError::Corrupt(format!(
                "object {} decrypted to {total} bytes, manifest says {}",
                id.short(),
                m.plaintext_len
            )));
        }
        Ok((shape, total))
    }

    /// Writes an object to `dest`: a file object to a new file (or into an
    /// existing directory under its name's last component), a directory
    /// object into a new or empty directory.
    pub fn export_object(&self, id: &ObjectId, dest: &Path) -> Result<ExportStats> {
        let start = Instant::now();
        let st = self.state(id)?;
        if st.deleted {
            return Err(StoreError::UnknownObject(format!(
                "{}:{} (deleted)",
                st.kind, st.name
            )));
        }
        let m = self.manifest(id)?;
        let key = self.content_key(&m)?;
        let shape = match &m.meta {
            Some(meta) => {
                let c = ChunkCipher::new(&key);
                ObjectMeta::decode(
                    &c.open_meta(meta)
                        .ctx(|| format!("meta of {}", id.short()))?,
                )
                .ctx(|| format!("meta of {}", id.short()))?
                .shape
            }
            None => Shape::File,
        };
        let mut stats = ExportStats::default();
        match shape {
            Shape::File => {
                let target = if dest.is_dir() {
                    dest.join(st.name.rsplit('/').next().unwrap_or(&st.name))
                } else {
                    dest.to_path_buf()
                };
                stats.bytes = self.export_file(id, &target)?;
                stats.files = 1;
            }
            Shape::Dir => {
                prepare_empty_dir(dest)?;
                let (files, bytes) = self.export_dir(id, dest)?;
                stats.files = files;
                stats.bytes = bytes;
            }
        }
        stats.objects = 1;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    fn export_file(&self, id: &ObjectId, target: &Path) -> Result<u64> {
        let tmp = target.with_file_name(format!(
            ".{}.bbsync-tmp",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        if target.exists() {
            return Err(StoreError::DestinationNotEmpty(target.to_path_buf()));
        }
        let f = fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let r = self.read_object(id, |_, data| {
            w.write_all(data)
                .ctx(|| format!("writing {}", tmp.display()))
        });
        let r = r.and_then(|(_, n)| {
            w.flush().ctx(|| format!("writing {}", tmp.display()))?;
            Ok(n)
        });
        match r {
            Ok(n) => {
                fs::rename(&tmp, target).ctx(|| format!("renaming into {}", target.display()))?;
                Ok(n)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn export_dir(&self, id: &ObjectId, dest: &Path) -> Result<(u64, u64)> {
        let mut ex = Extractor::new(dest);
        let (_, bytes) = self.read_object(id, |_, data| ex.feed(data))?;
        let (files, _) = ex.finish()?;
        Ok((files, bytes))
    }

    /// Writes every live object of the BBS kinds into a new or empty `dir`
    /// in the BBS tree layout, using both cores. Objects that cannot be
    /// exported (undecryptable, incomplete, damaged) are listed in
    /// `failed`; the caller decides whether that is an error.
    pub fn export_bbs(&self, dir: &Path, progress: &dyn Progress) -> Result<ExportStats> {
        let start = Instant::now();
        prepare_empty_dir(dir)?;
        let mut todo: Vec<(ObjectId, PathBuf, u64, String)> = Vec::new();
        let mut failed = Vec::new();
        for r in self.db().objects() {
            let (id, st) = r?;
            if st.deleted || !BBS_KINDS.contains(&st.kind.as_str()) {
                continue;
            }
            let label = format!("{}:{}", st.kind, st.name);
            match tree_path(&st.kind, &st.name) {
                Some(p) => todo.push((id, dir.join(p), st.plaintext_len, label)),
                None => failed.push((label, "name does not fit the BBS tree layout".to_string())),
            }
        }
        todo.sort_by_key(|t| std::cmp::Reverse(t.2));
        progress.start("export", todo.len() as u64, todo.iter().map(|t| t.2).sum());
        let results: Vec<(String, Result<(u64, u64)>)> = todo
            .par_iter()
            .map(|(id, path, len, label)| {
                let r = (|| {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)
                            .ctx(|| format!("creating {}", parent.display()))?;
                    }
                    let shape = self.shape_of(id)?;
                    match shape {
                        Shape::File => Ok((1, self.export_file(id, path)?)),
                        Shape::Dir => {
                            fs::create_dir(path).ctx(|| format!("creating {}", path.display()))?;
                            self.export_dir(id, path)
                        }
                    }
                })();
                progress.advance(1, *len);
                (label.clone(), r)
            })
            .collect();
        progress.finish();
        let mut stats = ExportStats::default();
        for (label, r) in results {
            match r {
                Ok((files, bytes)) => {
                    stats.objects += 1;
                    stats.files += files;
                    stats.bytes += bytes;
                }
                Err(e) => failed.push((label, e.to_string())),
            }
        }
        failed.sort();
        stats.failed = failed;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Whether an object is a file or a directory (needs its key).
    pub fn shape_of(&self, id: &ObjectId) -> Result<Shape> {
        let m = self.manifest(id)?;
        match &m.meta {
            None => Ok(Shape::File),
            Some(meta) => {
                let key = self.content_key(&m)?;
                let c = ChunkCipher::new(&key);
                Ok(ObjectMeta::decode(
                    &c.open_meta(meta)
                        .ctx(|| format!("meta of {}", id.short()))?,
                )
                .ctx(|| format!("meta of {}", id.short()))?
                .shape)
            }
        }
    }
}
