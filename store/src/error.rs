//! The error type of the store crate.

use std::path::PathBuf;

/// Broad classes of [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Operating-system I/O failed.
    Io,
    /// The operator asked for something that cannot be done as asked.
    Usage,
    /// The data dir or its content is damaged or from an unsupported version.
    Corrupt,
    /// A signature, trust or key problem.
    Security,
    /// The data dir is locked by another process.
    Busy,
}

/// Why a snapshot file was refused ([`StoreError::BadSnapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFault {
    /// Its host's signature does not verify: the file was changed after
    /// it was signed.
    BadSignature,
    /// A format-1 (unsigned) file whose object list does not hash to the
    /// checksum it states.
    ChecksumMismatch,
}

/// Errors of the store crate. Messages name paths and ids, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A format or crypto check failed.
    #[error("{context}: {source}")]
    Protocol {
        /// What was being checked.
        context: String,
        /// The protocol error.
        #[source]
        source: bbsync_protocol::Error,
    },
    /// The metadata database failed.
    #[error("database error: {0}")]
    Db(String),
    /// No bbsync store at this path.
    #[error("{0} is not a bbsync data dir (run `bbsync init` first)")]
    NotInitialized(PathBuf),
    /// `init` on an existing store.
    #[error("{0} already holds a bbsync store")]
    AlreadyInitialized(PathBuf),
    /// The data dir path is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Another process holds the store.
    #[error("data dir {0} is in use by another bbsync process")]
    InUse(PathBuf),
    /// The store was written by a newer bbsync.
    #[error(
        "data dir was written by a newer bbsync (schema {found}, this version supports up to {supported}); upgrade bbsync"
    )]
    NewerSchema {
        /// Schema found.
        found: u32,
        /// Newest schema this build reads.
        supported: u32,
    },
    /// No object matches.
    #[error("unknown object {0}")]
    UnknownObject(String),
    /// More than one object matches a prefix.
    #[error("object {0} is ambiguous ({1} matches); give more of the id or kind:name")]
    AmbiguousObject(String, usize),
    /// A path to read does not exist or cannot be read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The BBS tree breaks the layout rules.
    #[error("bad BBS tree at {path}: {reason}")]
    BadTree {
        /// The offending path.
        path: PathBuf,
        /// The rule.
        reason: String,
    },
    /// A destination that must be empty is not.
    #[error("destination {0} exists and is not empty")]
    DestinationNotEmpty(PathBuf),
    /// This instance holds no usable key for an object.
    #[error("object {0} is undecryptable here (no envelope entry for this instance)")]
    Undecryptable(String),
    /// An object is not complete on disk.
    #[error("object {0} is incomplete (chunks missing)")]
    Incomplete(String),
    /// A file changed while it was being read.
    #[error("{0} changed while it was being imported; run the import again")]
    ChangedDuringImport(PathBuf),
    /// A path of the tree is no longer what the scan saw (a symlink, another
    /// file, a directory, or gone): it is neither followed nor read.
    #[error(
        "{path} {what} after the tree was scanned; not followed and not read (the import changed nothing)"
    )]
    ReplacedDuringImport {
        /// The path.
        path: PathBuf,
        /// What happened to it ("was replaced by a symlink", ...).
        what: String,
    },
    /// A trust-table operation was refused.
    #[error("{0}")]
    Trust(String),
    /// config.toml is invalid.
    #[error("bad config {path}: {reason}")]
    Config {
        /// config.toml path.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// Stored data is damaged.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// A backup repository is missing, damaged or of an unsupported format.
    #[error("{0}")]
    Repo(String),
    /// A snapshot file of a backup repository fails a check that `verify`
    /// reports in a class of its own.
    #[error("{message}")]
    BadSnapshot {
        /// Which check failed.
        fault: SnapshotFault,
        /// What to show (names the snapshot and the file).
        message: String,
    },
    /// A passphrase does not open what it should.
    #[error("{0}")]
    Passphrase(String),
    /// SQLite could not read or write a database (see `src/sqlite`).
    #[error("{what}: {reason}")]
    Database {
        /// The database (its path, or the object and path).
        what: String,
        /// SQLite's error.
        reason: String,
    },
    /// A database failed `PRAGMA integrity_check` or is not a database.
    #[error("{what} failed SQLite's integrity check: {problems}")]
    DatabaseDamaged {
        /// The database (its path, or the object and path).
        what: String,
        /// The first problems SQLite reported.
        problems: String,
    },
    /// A BBS layout file is invalid, or names no known layout.
    #[error("layout {what}: {reason}")]
    Layout {
        /// The layout (name or file) and the rule.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// `identity.key` is sealed with a passphrase and none was given.
    #[error("{} is encrypted with a passphrase, and none was given", .0.display())]
    IdentityLocked(PathBuf),
    /// An invite operation was refused (unknown id, bad arguments).
    #[error("{0}")]
    Invite(String),
}

impl StoreError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use StoreError::*;
        match self {
            Io { .. } | Unreadable { .. } | Database { .. } => ErrorKind::Io,
            Protocol { source, .. } => match source.kind() {
                bbsync_protocol::ErrorKind::Malformed
                | bbsync_protocol::ErrorKind::UnsupportedFormat
                | bbsync_protocol::ErrorKind::HashMismatch => ErrorKind::Corrupt,
                _ => ErrorKind::Security,
            },
            Db(_)
            | NewerSchema { .. }
            | Corrupt(_)
            | Incomplete(_)
            | Repo(_)
            | BadSnapshot { .. }
            | DatabaseDamaged { .. } => ErrorKind::Corrupt,
            InUse(_) => ErrorKind::Busy,
            Undecryptable(_) | Passphrase(_) | IdentityLocked(_) | ReplacedDuringImport { .. } => {
                ErrorKind::Security
            }
            NotInitialized(_)
            | AlreadyInitialized(_)
            | NotADirectory(_)
            | UnknownObject(_)
            | AmbiguousObject(..)
            | BadTree { .. }
            | DestinationNotEmpty(_)
            | ChangedDuringImport(_)
            | Trust(_)
            | Config { .. }
            | Layout { .. }
            | Invite(_)
            | Invalid(_) => ErrorKind::Usage,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds context to I/O and protocol errors.
pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, bbsync_protocol::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Protocol {
            context: context(),
            source,
        })
    }
}
