//! Backup repository format 2 (issue 13, docs/format.md §17): packs, index
//! files, manifest packs, raw signed snapshots, one escrow per key file, and
//! locks, on a local directory or S3-compatible object storage.
//!
//! Being built across two sessions. What exists: [`format`], the pure
//! encodings of every format-2 file (no I/O), with their checks; [`lock`],
//! the lock records and the staleness rule; [`repo`], opening a repository,
//! its snapshots and merged index, reading manifests and chunks through it;
//! [`create`], the backup write path, and [`check`], `backups verify`
//! (neither reachable from a command yet); [`tar`], the export file and a
//! read-only backend over it, and [`export`], writing one; [`prune`],
//! `forget` and `prune` (deleting and repacking packs, rewriting index
//! files) under the exclusive lock. The commands on format 2 (with the export
//! and restore), the S3 backend and taking locks come next
//! (docs/dev-notes.md "Backup repository v2 (issue 13)").

pub mod check;
pub mod create;
pub mod export;
pub mod format;
pub mod ixcache;
pub mod lock;
pub mod prune;
pub mod repo;
mod table;
pub mod tar;

pub use repo::Repo2;
