//! Shared harness for bbsync end-to-end tests.
