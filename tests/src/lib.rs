//! Shared harness for bbsync end-to-end tests.

pub mod tor_net;
