//! Replication watermarks by origin: what this region applied of every
//! other region's log, what of it a checkpoint made durable, what other
//! regions are known to have applied (gossip), and up to when each
//! origin's writes are all here (closed timestamps).

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::watch;

use super::Replication;

/// Per-origin watermarks.
#[derive(Debug)]
pub(super) struct Watermarks {
    applied: RwLock<BTreeMap<String, u64>>,
    applied_changed: watch::Sender<u64>,
    durable: RwLock<BTreeMap<String, u64>>,
    known: RwLock<BTreeMap<String, BTreeMap<String, u64>>>,
    closed: RwLock<BTreeMap<String, u64>>,
}

impl Watermarks {
    /// Watermarks as the last checkpoint left them (applied = durable).
    pub(super) fn new(applied: &BTreeMap<String, u64>) -> Watermarks {
        Watermarks {
            applied: RwLock::new(applied.clone()),
            applied_changed: watch::Sender::new(0),
            durable: RwLock::new(applied.clone()),
            known: RwLock::new(BTreeMap::new()),
            closed: RwLock::new(BTreeMap::new()),
        }
    }
}

/// Raises each slot of `into` to the matching watermark of `from`.
fn raise(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (origin, wm) in from {
        let slot = into.entry(origin.clone()).or_insert(0);
        *slot = (*slot).max(*wm);
    }
}

impl Replication {
    pub(crate) fn publish_applied(&self, changed: &BTreeMap<String, u64>) {
        raise(
            &mut self.watermarks.applied.write().expect("applied lock"),
            changed,
        );
        self.watermarks.applied_changed.send_modify(|v| *v += 1);
    }

    /// Waits (at most `limit`) until `origin`'s log is applied up to `seq`;
    /// returns whether it is.
    pub(crate) async fn wait_applied(&self, origin: &str, seq: u64, limit: Duration) -> bool {
        let mut changes = self.watermarks.applied_changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.applied_from(origin) >= seq {
                return true;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return self.applied_from(origin) >= seq,
            }
        }
    }

    /// Per origin, the last sequence applied here (own writes: the head).
    pub(crate) fn applied_vector(&self, me: &str) -> BTreeMap<String, u64> {
        let mut v = self
            .watermarks
            .applied
            .read()
            .expect("applied lock")
            .clone();
        v.insert(me.to_owned(), self.head().seq);
        v
    }

    pub(crate) fn applied_from(&self, origin: &str) -> u64 {
        get(
            &self.watermarks.applied.read().expect("applied lock"),
            origin,
        )
    }

    /// Publishes the per-origin watermarks that the last checkpoint made durable.
    pub(crate) fn publish_durable(&self, durable: &BTreeMap<String, u64>) {
        *self.watermarks.durable.write().expect("durable lock") = durable.clone();
    }

    /// Last sequence of `origin`'s log held durably here.
    pub(crate) fn durable_from(&self, origin: &str) -> u64 {
        get(
            &self.watermarks.durable.read().expect("durable lock"),
            origin,
        )
    }

    /// What region `region` is known to have applied of `origin`'s log.
    pub(crate) fn known_applied(&self, region: &str, origin: &str) -> u64 {
        self.watermarks
            .known
            .read()
            .expect("known lock")
            .get(region)
            .map_or(0, |v| get(v, origin))
    }

    pub(crate) fn learn_applied(&self, region: &str, vector: &BTreeMap<String, u64>) {
        let mut known = self.watermarks.known.write().expect("known lock");
        raise(known.entry(region.to_owned()).or_default(), vector);
    }

    /// Records that every write `origin` acknowledged before `closed_ms`
    /// (origin clock) has been applied here.
    pub(crate) fn advance_closed(&self, origin: &str, closed_ms: u64) {
        let mut closed = self.watermarks.closed.write().expect("closed lock");
        let slot = closed.entry(origin.to_owned()).or_insert(0);
        *slot = (*slot).max(closed_ms);
    }

    /// `origin`'s closed timestamp here, if it ever sent one.
    pub(super) fn closed_from(&self, origin: &str) -> Option<u64> {
        self.watermarks
            .closed
            .read()
            .expect("closed lock")
            .get(origin)
            .copied()
    }
}

fn get(v: &BTreeMap<String, u64>, origin: &str) -> u64 {
    v.get(origin).copied().unwrap_or(0)
}
