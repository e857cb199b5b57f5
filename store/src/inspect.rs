//! A look at a data dir that changes nothing: no recovery, no migration,
//! no index rebuild (tests and diagnostics; `Store::open` would repair
//! what this shows).

use std::path::{Path, PathBuf};

use bbsync_protocol::ChunkId;

use crate::{
    PACKS_DIR,
    db::Db,
    error::{Result, StoreError},
    packs::{Location, PackId, Packs},
};

/// What a data dir holds, as found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The schema recorded.
    pub schema: u32,
    /// Whether the chunk index is complete.
    pub index_complete: bool,
    /// Every index record that decodes.
    pub index: Vec<(ChunkId, Location)>,
    /// The open packs and their committed lengths.
    pub open_packs: Vec<(PackId, u64)>,
    /// Whether the collect marker is set (chunks may be unreferenced).
    pub collect: bool,
    /// Packs a repack left to delete.
    pub doomed: Vec<PackId>,
    /// Pack files with their lengths; other files as `Err(path)`.
    pub pack_files: Vec<std::result::Result<(PackId, u64), PathBuf>>,
}

/// Inspects the data dir `dir` (its database must not be open elsewhere).
pub fn inspect(dir: &Path) -> Result<Inspection> {
    if !dir.join("db").is_dir() {
        return Err(StoreError::NotInitialized(dir.to_path_buf()));
    }
    let db = Db::open_any_schema(&dir.join("db"), dir)?;
    let index = db
        .index_iter_lenient()
        .filter_map(|r| match r {
            Ok((id, Some(loc))) => Some(Ok((id, loc))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>>>()?;
    let pack_files = if dir.join(PACKS_DIR).is_dir() {
        Packs::list_files(&dir.join(PACKS_DIR))?
    } else {
        Vec::new()
    };
    Ok(Inspection {
        schema: db.schema_version()?,
        index_complete: db.index_complete()?,
        index,
        open_packs: db.open_packs()?,
        collect: db.collect_pending()?,
        doomed: db.doomed_packs()?,
        pack_files,
    })
}
