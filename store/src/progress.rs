//! Progress reporting: a trait in the library, drawn by the CLI.

/// Receives progress of long operations. Implementations must be cheap and
/// thread-safe (they are called from worker threads).
pub trait Progress: Sync {
    /// A phase starts, with its totals when known (0 = unknown).
    fn start(&self, _phase: &str, _items: u64, _bytes: u64) {}
    /// Some items and bytes are done.
    fn advance(&self, _items: u64, _bytes: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
