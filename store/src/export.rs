//! Export of objects and of the whole BBS tree.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bbsync_protocol::{
    ChunkCipher, ChunkRef, ContentKey, Manifest, ObjectId, ObjectMeta, Shape, Signed,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    ObjectState, Store,
    archive::Extractor,
    bbs::{BBS_KINDS, tree_path},
    error::{Context, Result, StoreError},
    progress::Progress,
    sqlite::{FileOut, WriteMode},
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
    #[serde(serialize_with = "crate::serialize_secs")]
    pub elapsed: Duration,
}

/// Objects read per round of `export-bbs` (written in parallel, then the next).
const EXPORT_ROUND: usize = 4096;

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

/// Where an object's sealed chunks come from: this store's packs (export,
/// the live tree, database dumps) or a backup repository (`restore
/// --to-tree`). Each source says in its own words what a missing or damaged
/// chunk means.
pub trait ChunkSource: Sync {
    /// The sealed bytes of chunk `c` of `object`.
    fn sealed(&self, object: &ObjectId, c: &ChunkRef) -> Result<Vec<u8>>;
}

/// This store's packs.
impl ChunkSource for Store {
    fn sealed(&self, object: &ObjectId, c: &ChunkRef) -> Result<Vec<u8>> {
        match self.packs().read(&c.id) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Incomplete(
                format!("{} (chunk {} missing)", object.to_hex(), c.id.short()),
            )),
            Err(e) => Err(e).ctx(|| format!("reading chunk {}", c.id.short())),
        }
    }
}

/// An object's content key at work: the cipher of its chunks, and the
/// shape and mode its sealed meta gives. Made once per object, however the
/// object is then read or written.
pub struct ContentReader {
    cipher: ChunkCipher,
    /// File or directory.
    pub shape: Shape,
    /// The permission bits of the file (or of the directory of a directory
    /// object); `None` for an object written before modes were kept (it is
    /// written with the umask).
    pub mode: Option<u32>,
}

impl ContentReader {
    /// Opens the sealed meta of `m` (whose key `key` is, already checked
    /// against the manifest's commitment); `label` names the object in errors.
    pub fn new(m: &Manifest, key: &ContentKey, label: &str) -> Result<Self> {
        let cipher = ChunkCipher::new(key);
        let (shape, mode) = match &m.meta {
            Some(meta) => {
                let plain = cipher.open_meta(meta).ctx(|| format!("meta of {label}"))?;
                let meta = ObjectMeta::decode(&plain).ctx(|| format!("meta of {label}"))?;
                (meta.shape, meta.mode)
            }
            None => (Shape::File, None),
        };
        Ok(ContentReader {
            cipher,
            shape,
            mode,
        })
    }

    /// Reads the chunks of `m` from `src`, decrypts them and passes the
    /// plaintext, chunk by chunk, to `sink`. Returns the length, which
    /// must be the manifest's.
    pub fn read(
        &self,
        m: &Manifest,
        label: &str,
        src: &dyn ChunkSource,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let mut total = 0u64;
        for c in &m.chunks {
            let stored = src.sealed(&m.object_id, c)?;
            let plain = self
                .cipher
                .open(&c.id, &stored)
                .ctx(|| format!("chunk {} of {label}", c.id.short()))?;
            total += plain.len() as u64;
            sink(&plain)?;
        }
        if total != m.plaintext_len {
            return Err(StoreError::Corrupt(format!(
                "{label} decrypted to {total} bytes, its manifest says {}",
                m.plaintext_len
            )));
        }
        Ok(total)
    }

    /// Writes the object into a tree being filled at `path` (its parent
    /// created, `path` not there yet): a file object directly, a directory
    /// object extracted into a new directory, removed again if anything
    /// fails. A SQLite database must pass its integrity check
    /// ([`crate::sqlite::FileOut`], [`crate::sqlite::check_tree`]).
    /// Returns (files, bytes).
    pub fn write_in_tree(
        &self,
        m: &Manifest,
        label: &str,
        src: &dyn ChunkSource,
        path: &Path,
    ) -> Result<(u64, u64)> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        match self.shape {
            Shape::File => Ok((1, self.write_file(m, label, src, path, WriteMode::InPlace)?)),
            Shape::Dir => {
                fs::create_dir(path).ctx(|| format!("creating {}", path.display()))?;
                self.extract_dir(m, label, src, path).inspect_err(|_| {
                    // Nothing half-written stays in the tree.
                    let _ = fs::remove_dir_all(path);
                })
            }
        }
    }

    /// Writes a file object to `target`, which must not exist:
    /// [`WriteMode::Atomic`] through a temp file and a rename,
    /// [`WriteMode::InPlace`] directly (into a fresh tree), removing the
    /// partial file on failure. A SQLite database is always written
    /// through a temp file, fsynced and checked with `PRAGMA
    /// integrity_check` before the rename ([`crate::sqlite::FileOut`]).
    fn write_file(
        &self,
        m: &Manifest,
        label: &str,
        src: &dyn ChunkSource,
        target: &Path,
        how: WriteMode,
    ) -> Result<u64> {
        if target.exists() {
            return Err(StoreError::DestinationNotEmpty(target.to_path_buf()));
        }
        let mut out = FileOut::new(target, how, m.plaintext_len).with_mode(self.mode);
        let n = self.read(m, label, src, &mut |data| out.write(data))?;
        out.finish(label)?;
        Ok(n)
    }

    /// Extracts a directory object into `dest` (existing, empty) and gives
    /// `dest` the object's mode (if it has one); the SQLite databases in it
    /// must pass `PRAGMA integrity_check`.
    fn extract_dir(
        &self,
        m: &Manifest,
        label: &str,
        src: &dyn ChunkSource,
        dest: &Path,
    ) -> Result<(u64, u64)> {
        let mut ex = Extractor::new(dest);
        let bytes = self.read(m, label, src, &mut |data| ex.feed(data))?;
        let (files, _) = ex.finish()?;
        if let Some(mode) = self.mode {
            crate::archive::set_dir_mode(dest, mode)?;
        }
        crate::sqlite::check_tree(dest, label)?;
        Ok((files, bytes))
    }
}

/// An object of this store opened for reading: its state, its verified
/// manifest and its content reader, so that each is checked once however
/// the object is then written.
pub struct OpenObject {
    /// The object's state.
    pub state: ObjectState,
    /// Its verified manifest.
    pub manifest: Signed<Manifest>,
    /// Its cipher, shape and mode.
    pub content: ContentReader,
}

impl OpenObject {
    /// `kind:name`, as errors name it.
    fn label(&self) -> String {
        format!("{}:{}", self.state.kind, self.state.name)
    }
}

impl std::fmt::Debug for OpenObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenObject")
            .field("object", &self.manifest.object_id)
            .field("shape", &self.content.shape)
            .finish()
    }
}

impl Store {
    /// Opens an object for reading: verifies its manifest and envelope entry
    /// once and reads its shape. Deleted and incomplete objects are refused.
    pub(crate) fn open_object(&self, id: &ObjectId) -> Result<OpenObject> {
        let state = self.state(id)?;
        if state.deleted {
            return Err(StoreError::UnknownObject(format!(
                "{}:{} (deleted)",
                state.kind, state.name
            )));
        }
        if !state.complete {
            return Err(StoreError::Incomplete(id.to_hex()));
        }
        let (manifest, key) = self.manifest_and_key(id)?;
        let label = format!("{}:{}", state.kind, state.name);
        let content = ContentReader::new(&manifest, &key, &label)?;
        Ok(OpenObject {
            state,
            manifest,
            content,
        })
    }

    /// Decrypts an opened object from this store's packs and passes its
    /// plaintext, chunk by chunk, to `sink`. Returns the length.
    pub(crate) fn read_open(
        &self,
        o: &OpenObject,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        o.content.read(&o.manifest, &o.label(), self, &mut sink)
    }

    /// Whether an object is a file or a directory (needs its key).
    pub(crate) fn shape_of(&self, id: &ObjectId) -> Result<Shape> {
        Ok(self.open_object(id)?.content.shape)
    }

    /// Writes an object to `dest`: a file object to a new file (or into an
    /// existing directory under its name's last component), a directory
    /// object into a new or empty directory.
    pub fn export_object(&self, id: &ObjectId, dest: &Path) -> Result<ExportStats> {
        let start = Instant::now();
        let o = self.open_object(id)?;
        let mut stats = ExportStats::default();
        match o.content.shape {
            Shape::File => {
                let name = &o.state.name;
                let target = if dest.is_dir() {
                    dest.join(name.rsplit('/').next().unwrap_or(name))
                } else {
                    dest.to_path_buf()
                };
                stats.bytes = o.content.write_file(
                    &o.manifest,
                    &o.label(),
                    self,
                    &target,
                    WriteMode::Atomic,
                )?;
                stats.files = 1;
            }
            Shape::Dir => {
                prepare_empty_dir(dest)?;
                let (files, bytes) = self.extract_dir(&o, dest).inspect_err(|_| {
                    // Leave the directory as empty as it was found.
                    if let Ok(rd) = fs::read_dir(dest) {
                        for e in rd.flatten() {
                            let _ =
                                fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                        }
                    }
                })?;
                stats.files = files;
                stats.bytes = bytes;
            }
        }
        stats.objects = 1;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Extracts a directory object of this store into `dest` (existing,
    /// empty); see [`ContentReader`].
    pub(crate) fn extract_dir(&self, o: &OpenObject, dest: &Path) -> Result<(u64, u64)> {
        o.content.extract_dir(&o.manifest, &o.label(), self, dest)
    }

    /// Writes every live object of the BBS kinds into a new or empty `dir`
    /// in the BBS tree layout, using both cores. Objects that cannot be
    /// exported (undecryptable, incomplete, damaged) are listed in
    /// `failed`; the caller decides whether that is an error.
    pub fn export_bbs(&self, dir: &Path, progress: &dyn Progress) -> Result<ExportStats> {
        self.export_placed(
            dir,
            &BBS_KINDS,
            &|_, st| {
                tree_path(&st.kind, &st.name)
                    .ok_or_else(|| "name does not fit the BBS tree layout".to_string())
            },
            progress,
        )
    }

    /// Like [`Store::export_bbs`], in a BBS's own layout: every live object
    /// of the layout's kinds goes where its rule places it (docs/layouts.md).
    pub fn export_layout(
        &self,
        dir: &Path,
        layout: &crate::layout::Layout,
        progress: &dyn Progress,
    ) -> Result<ExportStats> {
        let kinds = layout.kinds();
        self.export_placed(
            dir,
            &kinds,
            &|id, st| {
                let shape = self.shape_of(id).map_err(|e| e.to_string())?;
                layout
                    .place(&st.kind, &st.name, st.owner.as_deref(), shape)
                    .ok_or_else(|| format!("no rule of layout {} places it", layout.name()))
            },
            progress,
        )
    }

    fn export_placed(
        &self,
        dir: &Path,
        kinds: &[&str],
        place: &(dyn Fn(&ObjectId, &ObjectState) -> std::result::Result<PathBuf, String> + Sync),
        progress: &dyn Progress,
    ) -> Result<ExportStats> {
        let start = Instant::now();
        prepare_empty_dir(dir)?;
        let mut stats = ExportStats::default();
        let mut failed = Vec::new();
        // The objects stream in rounds (memory does not grow with their
        // number); each round is written on all cores, largest first.
        progress.start("export", 0, 0);
        let mut records = self.db().objects();
        loop {
            let mut todo: Vec<(ObjectId, PathBuf, u64, String)> = Vec::new();
            let mut read = 0;
            for r in records.by_ref() {
                let (id, st) = r?;
                read += 1;
                if !st.deleted && kinds.contains(&st.kind.as_str()) {
                    let label = format!("{}:{}", st.kind, st.name);
                    match place(&id, &st) {
                        Ok(p) => todo.push((id, dir.join(p), st.plaintext_len, label)),
                        Err(why) => failed.push((label, why)),
                    }
                }
                if read >= EXPORT_ROUND {
                    break;
                }
            }
            if read == 0 {
                break;
            }
            todo.sort_by_key(|t| std::cmp::Reverse(t.2));
            let results: Vec<(String, Result<(u64, u64)>)> = todo
                .par_iter()
                .map(|(id, path, len, label)| {
                    let r = self
                        .open_object(id)
                        .and_then(|o| o.content.write_in_tree(&o.manifest, label, self, path));
                    progress.advance(1, *len);
                    (label.clone(), r)
                })
                .collect();
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
        }
        progress.finish();
        failed.sort();
        stats.failed = failed;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }
}
