//! The CLI's integration tests, as one test binary: one link step, one copy
//! of the shared helpers (`../common`), and the tests of every file run in
//! parallel with each other. `tor.rs` stays a binary of its own: it owns
//! the private Tor network of the run. Run one file's tests with e.g.
//! `cargo test -p bbsync --test integration net::`.

#[path = "../common/mod.rs"]
mod common;

mod backup;
mod backup_crash;
mod backup_s3;
mod backup_v2;
mod bad_input;
mod bbs;
mod browser;
mod cli;
mod control;
mod crash;
mod crash_matrix;
mod follow;
mod http;
mod http_s3;
mod identity;
mod import_swap;
mod invite;
mod live;
mod manual;
mod net;
mod objects;
mod packs;
mod service;
mod sqlite;
mod trust_boundaries;
mod verify;
