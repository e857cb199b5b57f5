//! The node crate's integration tests, as one test binary: each test binary
//! links libp2p and arti (one link step instead of three), and the tests of
//! every file run in parallel with each other.

mod follow;
mod hostile;
mod invite;
mod multi_source;
