//! The change log as code outside the store reads it: its last sequence
//! number, a watch that wakes on every change, and the follow cursors
//! (how far this instance has applied each upstream's change log) kept
//! beside it.

use bbsync_protocol::InstanceId;

use crate::{Result, Store};

impl Store {
    /// The sequence number of the newest change-log entry (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        self.db().last_seq()
    }

    /// A receiver woken by every later change the store announces (records,
    /// trust, invites; `changed().await`, any async runtime). Create it
    /// before looking at the state it guards, so that no change is missed.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db().watch_changes()
    }

    /// How far this instance has applied `upstream`'s change log, if it
    /// follows it.
    pub fn follow_cursor(&self, upstream: &InstanceId) -> Result<Option<u64>> {
        self.db().cursor(upstream)
    }

    /// Every upstream this instance follows, with its cursor.
    pub fn follow_cursors(&self) -> Result<Vec<(InstanceId, u64)>> {
        self.db().cursors()
    }

    /// Records (durably) that `upstream`'s change log is applied up to `seq`.
    pub fn set_follow_cursor(&self, upstream: &InstanceId, seq: u64) -> Result<()> {
        self.db().set_cursor(upstream, seq)
    }
}
