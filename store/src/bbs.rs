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
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use bbsync_protocol::Shape;
use sha2::{Digest, Sha256};

use crate::{
    archive::{self, Anchor, Child, TreeDir, check_rel_path},
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
    /// Where it is, for messages, when that is not where `anchor` opens
    /// (a database's snapshot); see [`Source::path`].
    pub shown_path: Option<PathBuf>,
    /// How to open it: below a directory descriptor of the tree, never
    /// through a symlink, and only if it is still what the walk saw.
    pub anchor: Anchor,
    /// File or directory.
    pub shape: Shape,
    /// Permission bits (`archive::MODE_BITS`) of the file, or of the
    /// directory of a directory object.
    pub mode: u32,
    /// The walk, for directories (boxed: most sources are files, and a
    /// large import holds every source until it is sealed).
    pub walk: Option<Box<archive::Walk>>,
    /// Plaintext length (file size, or archive length).
    pub len: u64,
    /// Digest of the source's file metadata.
    pub stat_digest: [u8; 32],
    /// Bytes of file content (for progress and rates).
    pub content_bytes: u64,
}

impl Source {
    /// Where it is, for messages.
    pub fn path(&self) -> PathBuf {
        self.shown_path
            .clone()
            .unwrap_or_else(|| self.anchor.path())
    }
}

/// The paths (relative to a tree's root, `/`-separated) that one batch of
/// a watched tree looks at. A scan with a focus lists no directory but
/// those on the way to these paths (it looks their next component up
/// directly) and those at or below them (listed whole), so that a batch
/// costs what it names, not the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Focus {
    paths: BTreeSet<String>,
}

impl Focus {
    /// A focus on `paths` (empty components and `.`/`..` are not expected:
    /// they come from the watcher, relative to the root).
    pub fn new(paths: impl IntoIterator<Item = String>) -> Focus {
        Focus {
            paths: paths.into_iter().collect(),
        }
    }

    /// The paths.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }

    /// Whether nothing is in focus.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether `rel` is in focus itself (at or below a path of it).
    pub fn covers(&self, rel: &str) -> bool {
        self.paths.iter().any(|p| {
            p.is_empty()
                || rel == p
                || rel
                    .strip_prefix(p.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// The children of `dir` (which is `rel_dir` below the root) that a scan
/// with `focus` looks at, sorted by name, and whether that is all of them:
/// without a focus, or when `rel_dir` is in focus itself, every child;
/// otherwise the next component of each focused path below it (and the
/// database and companion names next to it, so that a database and its
/// `-wal` are seen together), those that exist.
pub(crate) fn children_in(
    focus: Option<&Focus>,
    dir: &TreeDir,
    rel_dir: &str,
) -> Result<(Vec<Child>, bool)> {
    let Some(f) = focus.filter(|f| !f.covers(rel_dir)) else {
        return Ok((dir.children()?, true));
    };
    let mut names = BTreeSet::new();
    for p in f.paths() {
        let rest = if rel_dir.is_empty() {
            Some(p)
        } else {
            p.strip_prefix(rel_dir).and_then(|r| r.strip_prefix('/'))
        };
        if let Some(name) = rest.and_then(|r| r.split('/').next()) {
            names.insert(name.to_string());
        }
    }
    for n in names.clone() {
        for s in ["-wal", "-shm", "-journal"] {
            if let Some(base) = n.strip_suffix(s) {
                names.insert(base.to_string());
            }
            names.insert(format!("{n}{s}"));
        }
    }
    let mut kids = Vec::new();
    for n in names {
        if let Some(c) = dir.child_if_exists(&n)? {
            kids.push(c);
        }
    }
    kids.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok((kids, false))
}

fn bad(path: &Path, reason: &str) -> StoreError {
    StoreError::BadTree {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A source for one file or directory given on the command line (the path
/// up to its parent is followed as given; the file itself must not be a
/// symlink).
pub fn source_for_path(
    path: &Path,
    kind: &str,
    name: &str,
    owner: Option<String>,
) -> Result<Source> {
    let unreadable = |reason: String| StoreError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let leaf = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| unreadable("not a file or directory name (or not UTF-8)".into()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = TreeDir::open(parent)?;
    let kids = dir.children()?;
    let child = kids
        .iter()
        .find(|c| c.name == leaf)
        .cloned()
        .ok_or_else(|| unreadable("No such file or directory (os error 2)".into()))?;
    // A database's -wal/-journal count in its change detection.
    let (_, mut companions) = crate::sqlite::split_companions(&dir, kids);
    let mut src = source_at(&dir, &dir, "", &child, kind, name, owner)?;
    src.shown_path = Some(path.to_path_buf());
    if let Some(comp) = companions.remove(leaf) {
        src.stat_digest = crate::sqlite::digest_with_companions(src.stat_digest, &comp);
    }
    if src.shape == Shape::File {
        // Fail early on an unreadable file.
        src.anchor
            .open_file()
            .map_err(|e| unreadable(e.to_string()))?;
    }
    Ok(src)
}

/// A source for the child `c` of `dir`, where `dir` is `rel_dir` below
/// `root` (the directory whose descriptor the source keeps).
pub(crate) fn source_at(
    root: &TreeDir,
    dir: &TreeDir,
    rel_dir: &str,
    c: &Child,
    kind: &str,
    name: &str,
    owner: Option<String>,
) -> Result<Source> {
    let rel = if rel_dir.is_empty() {
        c.name.clone()
    } else {
        format!("{rel_dir}/{}", c.name)
    };
    let anchor = root.anchor(&rel, c.meta);
    if c.meta.is_dir() {
        // Fail early on an unreadable directory.
        let walk = archive::walk(&dir.subdir(c)?)?;
        let len = archive::archive_len(&walk);
        Ok(Source {
            kind: kind.into(),
            name: name.into(),
            owner,
            shown_path: None,
            anchor,
            shape: Shape::Dir,
            mode: c.meta.perm(),
            stat_digest: walk.stat_digest,
            content_bytes: walk.file_bytes,
            len,
            walk: Some(Box::new(walk)),
        })
    } else if c.meta.is_file() {
        let mut h = Sha256::new();
        archive::stat_hash(&mut h, "", &c.meta);
        Ok(Source {
            kind: kind.into(),
            name: name.into(),
            owner,
            shown_path: None,
            anchor,
            shape: Shape::File,
            mode: c.meta.perm(),
            walk: None,
            len: c.meta.size,
            stat_digest: h.finalize().into(),
            content_bytes: c.meta.size,
        })
    } else {
        Err(bad(&c.path, "not a regular file or directory"))
    }
}

/// The files below `dir` (which is `rel_dir` below `root`), with their
/// names relative to `dir`, as sources.
#[allow(clippy::too_many_arguments)]
fn files_under(
    root: &TreeDir,
    dir: &TreeDir,
    rel_dir: &str,
    prefix: &str,
    kind: &str,
    focus: Option<&Focus>,
    out: &mut Vec<Source>,
) -> Result<()> {
    // A database's -wal/-shm/-journal files are part of it (src/sqlite).
    let (listed, all) = children_in(focus, dir, rel_dir)?;
    let (kids, mut companions) = crate::sqlite::split_companions(dir, listed);
    if all && kids.is_empty() && !prefix.is_empty() {
        tracing::warn!(path = %dir.path().display(), "empty directory is not kept (only files are objects here)");
    }
    for c in kids {
        let rel = if prefix.is_empty() {
            c.name.clone()
        } else {
            format!("{prefix}/{}", c.name)
        };
        check_rel_path(&rel).map_err(|r| bad(&c.path, &r))?;
        if c.meta.is_dir() {
            let sub = dir.subdir(&c)?;
            files_under(
                root,
                &sub,
                &format!("{rel_dir}/{}", c.name),
                &rel,
                kind,
                focus,
                out,
            )?;
        } else if c.meta.is_file() {
            let mut src = source_at(root, dir, rel_dir, &c, kind, &rel, None)?;
            if let Some(comp) = companions.remove(&c.name) {
                src.stat_digest = crate::sqlite::digest_with_companions(src.stat_digest, &comp);
            }
            out.push(src);
        } else {
            return Err(bad(&c.path, "symlinks and special files are not supported"));
        }
    }
    Ok(())
}

fn dirs_only(focus: Option<&Focus>, dir: &TreeDir, rel_dir: &str) -> Result<Vec<Child>> {
    let (kids, _) = children_in(focus, dir, rel_dir)?;
    if let Some(c) = kids.iter().find(|c| !c.meta.is_dir()) {
        return Err(bad(&c.path, "expected only directories here"));
    }
    Ok(kids)
}

/// Walks a BBS tree into import sources, refusing anything outside the
/// layout. The walk goes through directory descriptors and never follows a
/// symlink; each source keeps the tree's root descriptor and its path below
/// it, so that it is opened the same way when it is read (see [`Anchor`]).
pub fn scan(root: &Path) -> Result<Vec<Source>> {
    scan_in(root, None)
}

/// Like [`scan`], looking only at what `focus` names (the whole tree
/// without one): what a batch of the watcher imports.
pub fn scan_in(root: &Path, focus: Option<&Focus>) -> Result<Vec<Source>> {
    let tree = open_tree(root)?;
    let mut out = Vec::new();
    for c in children_in(focus, &tree, "")?.0 {
        if c.name == crate::live::STATE_DIR {
            // A live tree's marker and temp files (crate::live).
            continue;
        }
        if !c.meta.is_dir() {
            return Err(bad(
                &c.path,
                "unexpected file at the top of the BBS tree (expected config/, applets/, data/, boards/, files/)",
            ));
        }
        let top = tree.subdir(&c)?;
        match c.name.as_str() {
            "config" | "files" => {
                let kind = if c.name == "config" { "config" } else { "file" };
                files_under(&tree, &top, &c.name, "", kind, focus, &mut out)?;
            }
            "applets" => {
                for a in dirs_only(focus, &top, "applets")? {
                    out.push(source_at(
                        &tree, &top, "applets", &a, "applet", &a.name, None,
                    )?);
                }
            }
            "data" => {
                for applet in dirs_only(focus, &top, "data")? {
                    let ad = top.subdir(&applet)?;
                    let rel_dir = format!("data/{}", applet.name);
                    for user in dirs_only(focus, &ad, &rel_dir)? {
                        out.push(source_at(
                            &tree,
                            &ad,
                            &rel_dir,
                            &user,
                            "applet-data",
                            &format!("{}/{}", applet.name, user.name),
                            Some(user.name.clone()),
                        )?);
                    }
                }
            }
            "boards" => {
                for board in dirs_only(focus, &top, "boards")? {
                    let bd = top.subdir(&board)?;
                    let rel_dir = format!("boards/{}", board.name);
                    for f in children_in(focus, &bd, &rel_dir)?.0 {
                        let id = f
                            .name
                            .strip_suffix(".json")
                            .filter(|id| !id.is_empty() && f.meta.is_file());
                        match id {
                            Some(id) => out.push(source_at(
                                &tree,
                                &bd,
                                &rel_dir,
                                &f,
                                "message",
                                &format!("{}/{id}", board.name),
                                None,
                            )?),
                            None => {
                                return Err(bad(
                                    &f.path,
                                    "expected only <id>.json message files in a board",
                                ));
                            }
                        }
                    }
                }
            }
            _ => {
                return Err(bad(
                    &c.path,
                    "unexpected directory at the top of the BBS tree (expected config/, applets/, data/, boards/, files/)",
                ));
            }
        }
    }
    // Held until every source is sealed: not a third more than needed.
    out.shrink_to_fit();
    Ok(out)
}

/// Opens the root of a BBS tree (the path is followed as the operator gave
/// it); a file there is refused as not being a tree.
pub(crate) fn open_tree(root: &Path) -> Result<TreeDir> {
    TreeDir::open_io(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotADirectory {
            bad(root, "a BBS tree must be a directory")
        } else {
            StoreError::Unreadable {
                path: root.to_path_buf(),
                reason: e.to_string(),
            }
        }
    })
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
