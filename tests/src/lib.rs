//! Shared harness for bbsync end-to-end tests.

pub mod s3;
pub mod scratch;
pub mod tor_net;

pub use scratch::tempdir;
