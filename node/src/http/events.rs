//! The event log of a running node: every job start, progress step and
//! end, every trust change and every backup change made through the API,
//! numbered with monotonic ids. `GET /api/v1/events` streams it as
//! server-sent events; a client that reconnects with `Last-Event-ID` gets
//! what it missed from the ring kept here, or a `gap` event naming the
//! first id still kept when the ring has moved past it.

use std::{collections::VecDeque, sync::Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for clients that reconnect (and for `GET /api/v1/log`).
pub const RING: usize = 2048;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Monotonic id (1, 2, ...), never reused while the node runs.
    pub id: u64,
    /// When (Unix ms).
    pub time_ms: u64,
    /// What happened: `job.started`, `job.progress`, `job.log`,
    /// `job.finished`, `trust.added`, `trust.removed`, `rekey`,
    /// `backup.deleted`, `login`.
    pub kind: String,
    /// Details (the job, the instance, ...).
    pub data: serde_json::Value,
}

/// The event log and its subscribers.
#[derive(Debug)]
pub struct Events {
    inner: Mutex<(u64, VecDeque<Event>)>,
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            inner: Mutex::new((0, VecDeque::with_capacity(RING))),
            tx: broadcast::channel(1024).0,
        }
    }
}

/// Unix time in ms (the protocol crate's clock, re-exported for the API's
/// modules).
pub use bbsync_protocol::now_ms;

impl Events {
    /// Records an event and sends it to the subscribers.
    pub fn emit(&self, kind: &str, data: serde_json::Value) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0 += 1;
        let ev = Event {
            id: g.0,
            time_ms: now_ms(),
            kind: kind.to_string(),
            data,
        };
        if g.1.len() == RING {
            g.1.pop_front();
        }
        g.1.push_back(ev.clone());
        // Sent under the lock: subscribers see ids in order.
        let _ = self.tx.send(ev);
    }

    /// Subscribes, and returns what is kept after `after` (all when
    /// `None`) and the first id kept if events after `after` were dropped
    /// from the ring already. Subscribing and reading happen under one
    /// lock, so nothing falls between the two.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<Event>, Vec<Event>, Option<u64>) {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.tx.subscribe();
        let Some(after) = after else {
            return (rx, Vec::new(), None);
        };
        let first = g.1.front().map_or(g.0 + 1, |e| e.id);
        let gap = (after + 1 < first).then_some(first);
        let replay = g.1.iter().filter(|e| e.id > after).cloned().collect();
        (rx, replay, gap)
    }

    /// The last `n` events (oldest first), optionally only those after `after`.
    pub fn tail(&self, n: usize, after: Option<u64>) -> Vec<Event> {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let v: Vec<Event> =
            g.1.iter()
                .filter(|e| after.is_none_or(|a| e.id > a))
                .cloned()
                .collect();
        v[v.len().saturating_sub(n)..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_replays_what_followed_and_names_a_gap() {
        let ev = Events::default();
        for i in 0..(RING as u64 + 10) {
            ev.emit("job.log", serde_json::json!({ "n": i }));
        }
        // Ids are 1..=RING+10; the ring keeps the last RING (11..).
        let (_, replay, gap) = ev.subscribe(Some(RING as u64 + 5));
        assert_eq!(gap, None);
        let ids: Vec<u64> = replay.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            (RING as u64 + 6..=RING as u64 + 10).collect::<Vec<_>>()
        );
        // A client that saw id 3 missed 4..=10: the gap names 11.
        let (_, replay, gap) = ev.subscribe(Some(3));
        assert_eq!(gap, Some(11));
        assert_eq!(replay.first().map(|e| e.id), Some(11));
        assert_eq!(replay.len(), RING);
        // New subscribers without an id get nothing old.
        let (mut rx, replay, gap) = ev.subscribe(None);
        assert!(replay.is_empty() && gap.is_none());
        ev.emit("login", serde_json::json!({}));
        assert_eq!(rx.try_recv().map(|e| e.id).ok(), Some(RING as u64 + 11));
        assert_eq!(ev.tail(2, None).len(), 2);
    }
}
