//! What this region knows about shipping to one peer: the watermarks its
//! shipper publishes, the counters `/v1/stats` shows, and the peer's clock
//! offset estimated from request/response stamps.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shipping to one peer. The watermarks are written by its shipper only
/// and read by the writer (log truncation, cursors) and the request
/// handlers (quorum writes, session reads).
#[derive(Debug, Default)]
pub(crate) struct PeerState {
    acked: AtomicU64,
    durable: AtomicU64,
    pub(super) batches_sent: AtomicU64,
    pub(super) entries_sent: AtomicU64,
    pub(super) heartbeats_sent: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) consecutive_failures: AtomicU64,
    last_ok_us: AtomicU64,
    /// When this region last handled a request from the peer (µs).
    heard_us: AtomicU64,
    /// This region's answers do not count toward the peer's owner lease
    /// before this (µs): it promised a conditional move the peer's silence.
    withheld_until_us: AtomicU64,
    needs_anti_entropy: AtomicBool,
    pub(super) last_error: Mutex<Option<String>>,
    offset: Mutex<OffsetEstimator>,
}

impl PeerState {
    /// A peer as the last checkpoint left it.
    pub(super) fn new(acked: u64, needs_anti_entropy: bool) -> PeerState {
        let state = PeerState::default();
        state.acked.store(acked, Ordering::Relaxed);
        state
            .needs_anti_entropy
            .store(needs_anti_entropy, Ordering::Relaxed);
        state
    }

    /// Last sequence the peer acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Last sequence the peer holds durably (checkpointed).
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Publishes the shipper's watermarks.
    pub(super) fn publish(&self, acked: u64, durable: u64) {
        self.acked.store(acked, Ordering::Release);
        self.durable.store(durable, Ordering::Release);
    }

    /// The peer's log was dropped or lacks entries: anti-entropy must repair it.
    pub(super) fn needs_anti_entropy(&self) -> bool {
        self.needs_anti_entropy.load(Ordering::Relaxed)
    }

    pub(super) fn set_needs_anti_entropy(&self, needed: bool) {
        self.needs_anti_entropy.store(needed, Ordering::Relaxed);
    }

    /// Counts a batch (`first..=last`) or, with `last < first`, a
    /// heartbeat the peer answered.
    pub(super) fn count_shipped(&self, first: u64, last: u64) {
        if last >= first {
            self.batches_sent.fetch_add(1, Ordering::Relaxed);
            self.entries_sent
                .fetch_add(last + 1 - first, Ordering::Relaxed);
        } else {
            self.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a successful exchange that ended at `us` (wall clock, µs).
    pub(super) fn count_success(&self, us: u64) {
        self.last_ok_us.store(us, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Wall time (µs) of the last successful exchange, 0 if none yet.
    pub(super) fn last_ok_us(&self) -> u64 {
        self.last_ok_us.load(Ordering::Relaxed)
    }

    /// Records that the peer sent this region a request at `us`.
    pub(crate) fn heard(&self, us: u64) {
        self.heard_us.fetch_max(us, Ordering::Relaxed);
    }

    /// When this region last handled a request from the peer (µs), 0 if never.
    pub(crate) fn heard_us(&self) -> u64 {
        self.heard_us.load(Ordering::Relaxed)
    }

    /// Withholds this region's answers from the peer's lease until `us`.
    pub(crate) fn withhold_lease(&self, until_us: u64) {
        self.withheld_until_us
            .fetch_max(until_us, Ordering::Relaxed);
    }

    /// Whether this region's answers count toward the peer's lease at `now_us`.
    pub(crate) fn grants_lease(&self, now_us: u64) -> bool {
        now_us >= self.withheld_until_us.load(Ordering::Relaxed)
    }

    /// Records a failed shipment; returns how many failed in a row.
    pub(super) fn count_failure(&self, why: String) -> u64 {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("error lock") = Some(why);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a clock offset sample: the round trip and the peer's clock
    /// minus ours at its middle (µs).
    pub(super) fn add_offset_sample(&self, rtt_us: u64, offset_us: i64) {
        self.offset
            .lock()
            .expect("offset lock")
            .add(rtt_us, offset_us);
    }

    /// The best offset sample: (round trip, offset), µs.
    pub(super) fn best_offset(&self) -> Option<(u64, i64)> {
        self.offset.lock().expect("offset lock").best()
    }
}

/// Estimates a peer's clock offset from request/response stamps, keeping
/// the sample with the smallest round trip among the recent ones (the one
/// least distorted by queueing, as NTP does).
#[derive(Debug, Default)]
struct OffsetEstimator {
    samples: VecDeque<(u64, i64)>,
}

impl OffsetEstimator {
    fn add(&mut self, rtt_us: u64, offset_us: i64) {
        if self.samples.len() == 16 {
            self.samples.pop_front();
        }
        self.samples.push_back((rtt_us, offset_us));
    }

    fn best(&self) -> Option<(u64, i64)> {
        self.samples.iter().min_by_key(|(rtt, _)| *rtt).copied()
    }
}
