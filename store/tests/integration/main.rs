//! The store's integration tests, as one test binary: every test binary
//! links the whole store (sled, SQLite, the S3 client), and nine of them
//! cost the CI's test build about as many links. (`backup_v2_prune.rs`
//! stays a binary of its own: its crash test arms process-wide `prune2.*`
//! failpoints that a prune of another test would hit.)

mod common;

mod backup_cache;
mod backup_s3;
mod backup_v2;
mod live_batch;
mod modes;
mod rekey;
mod store;
mod sync;
mod trust;
