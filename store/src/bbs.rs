//! The BBS tree layout (DESIGN §3): how a directory maps to objects and back.
//!
//! ```text
//! config/<path>              -> `config`      object per file (name = relative path)
//! applets/<name>/            -> `applet`      object per directory (name)
//! data/<applet>/<user>/      -> `applet-data` object per directory (name = applet/user, owner = user)
//! boards/<board>/<id>.json   -> `message`     object per file (name = board/id)
//! files/<path>               -> `file`        object per file (name = relative path)
//! ```
//! Anything else in the tree is refused with the path named, so that no
//! content is silently left out of a clone.

use std::{
    fs,
    path::{Path, PathBuf},
};

use bbsync_protocol::Shape;
use sha2::{Digest, Sha256};

use crate::{
    archive::{self, check_rel_path, sorted_children},
    error::{Result, StoreError},
};

/// The kinds that `import-bbs` manages (and tombstones when they disappear).
pub const BBS_KINDS: [&str; 5] = ["config", "applet", "applet-data", "message", "file"];

/// Something to import as one object.
#[derive(Debug)]
pub struct Source {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: Option<String>,
    /// Where it is.
    pub path: PathBuf,
    /// File or directory.
    pub shape: Shape,
    /// The walk, for directories.
    pub walk: Option<archive::Walk>,
    /// Plaintext length (file size, or archive length).
    pub len: u64,
    /// Digest of the source's file metadata.
    pub stat_digest: [u8; 32],
    /// Bytes of file content (for progress and rates).
    pub content_bytes: u64,
}

fn bad(path: &Path, reason: &str) -> StoreError {
    StoreError::BadTree {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A source for one file or directory given on the command line.
pub fn source_for_path(
    path: &Path,
    kind: &str,
    name: &str,
    owner: Option<String>,
) -> Result<Source> {
    let md = fs::symlink_metadata(path).map_err(|e| StoreError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if md.is_dir() {
        // Fail early on an unreadable directory.
        let walk = archive::walk(path)?;
        let len = archive::archive_len(&walk);
        Ok(Source {
            kind: kind.into(),
            name: name.into(),
            owner,
            path: path.to_path_buf(),
            shape: Shape::Dir,
            stat_digest: walk.stat_digest,
            content_bytes: walk.file_bytes,
            len,
            walk: Some(walk),
        })
    } else if md.is_file() {
        fs::File::open(path).map_err(|e| StoreError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut h = Sha256::new();
        archive::stat_hash(&mut h, "", &md);
        Ok(Source {
            kind: kind.into(),
            name: name.into(),
            owner,
            path: path.to_path_buf(),
            shape: Shape::File,
            walk: None,
            len: md.len(),
            stat_digest: h.finalize().into(),
            content_bytes: md.len(),
        })
    } else {
        Err(bad(path, "not a regular file or directory"))
    }
}

/// A file found under `config/` or `files/`: relative path, path, and the
/// metadata of its `-wal`/`-journal` companions when it is a database.
type Found = (String, PathBuf, Vec<(String, fs::Metadata)>);

/// [`source_for_path`] for a file whose `-wal`/`-journal` companions (of
/// a database) count in its change detection.
pub fn source_with_companions(
    path: &Path,
    kind: &str,
    name: &str,
    owner: Option<String>,
    companions: &[(String, fs::Metadata)],
) -> Result<Source> {
    let mut src = source_for_path(path, kind, name, owner)?;
    src.stat_digest = crate::sqlite::digest_with_companions(src.stat_digest, companions);
    Ok(src)
}

fn files_under(dir: &Path, prefix: &str, out: &mut Vec<Found>) -> Result<()> {
    // A database's -wal/-shm/-journal files are part of it (src/sqlite).
    let (kids, mut companions) = crate::sqlite::split_companions(sorted_children(dir)?);
    if kids.is_empty() && !prefix.is_empty() {
        tracing::warn!(path = %dir.display(), "empty directory is not kept (only files are objects here)");
    }
    for (name, path, md) in kids {
        let comp = companions.remove(&name).unwrap_or_default();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        check_rel_path(&rel).map_err(|r| bad(&path, &r))?;
        if md.is_dir() {
            files_under(&path, &rel, out)?;
        } else if md.is_file() {
            out.push((rel, path, comp));
        } else {
            return Err(bad(&path, "symlinks and special files are not supported"));
        }
    }
    Ok(())
}

fn dirs_only(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (name, path, md) in sorted_children(dir)? {
        if !md.is_dir() {
            return Err(bad(&path, "expected only directories here"));
        }
        out.push((name, path));
    }
    Ok(out)
}

/// Walks a BBS tree into import sources, refusing anything outside the layout.
pub fn scan(root: &Path) -> Result<Vec<Source>> {
    let md = fs::metadata(root).map_err(|e| StoreError::Unreadable {
        path: root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !md.is_dir() {
        return Err(bad(root, "a BBS tree must be a directory"));
    }
    let mut out = Vec::new();
    for (top, path, md) in sorted_children(root)? {
        if !md.is_dir() {
            return Err(bad(
                &path,
                "unexpected file at the top of the BBS tree (expected config/, applets/, data/, boards/, files/)",
            ));
        }
        match top.as_str() {
            "config" | "files" => {
                let kind = if top == "config" { "config" } else { "file" };
                let mut files = Vec::new();
                files_under(&path, "", &mut files)?;
                for (rel, p, comp) in files {
                    out.push(source_with_companions(&p, kind, &rel, None, &comp)?);
                }
            }
            "applets" => {
                for (name, p) in dirs_only(&path)? {
                    out.push(source_for_path(&p, "applet", &name, None)?);
                }
            }
            "data" => {
                for (applet, p) in dirs_only(&path)? {
                    for (user, up) in dirs_only(&p)? {
                        out.push(source_for_path(
                            &up,
                            "applet-data",
                            &format!("{applet}/{user}"),
                            Some(user),
                        )?);
                    }
                }
            }
            "boards" => {
                for (board, p) in dirs_only(&path)? {
                    for (fname, fp, fmd) in sorted_children(&p)? {
                        let id = fname
                            .strip_suffix(".json")
                            .filter(|id| !id.is_empty() && fmd.is_file());
                        match id {
                            Some(id) => out.push(source_for_path(
                                &fp,
                                "message",
                                &format!("{board}/{id}"),
                                None,
                            )?),
                            None => {
                                return Err(bad(
                                    &fp,
                                    "expected only <id>.json message files in a board",
                                ));
                            }
                        }
                    }
                }
            }
            _ => {
                return Err(bad(
                    &path,
                    "unexpected directory at the top of the BBS tree (expected config/, applets/, data/, boards/, files/)",
                ));
            }
        }
    }
    Ok(out)
}

/// Where an object lives in a BBS tree, relative to its root.
pub fn tree_path(kind: &str, name: &str) -> Option<PathBuf> {
    check_rel_path(name).ok()?;
    let (top, rel) = match kind {
        "config" => ("config", name.to_string()),
        "applet" if !name.contains('/') => ("applets", name.to_string()),
        "applet-data" if name.split('/').count() == 2 => ("data", name.to_string()),
        "message" if name.split('/').count() == 2 => ("boards", format!("{name}.json")),
        "file" => ("files", name.to_string()),
        _ => return None,
    };
    Some(Path::new(top).join(rel))
}
