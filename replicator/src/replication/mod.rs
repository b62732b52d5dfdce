//! Replication, sending and receiving.
//!
//! Each region ships its log (the write-ahead log, see [`crate::wal`]) to
//! every peer, and applies the peers' logs through the writer. The
//! decisions are plain state machines without I/O, driven by thin loops:
//!
//! - [`shipper`]: the sending side's decisions — window, pipelining,
//!   heartbeats, backlog cap, truncated log, answers, backoff with jitter —
//!   and [`ship`], its driver (one task per peer: log reads, calls,
//!   timeouts, counters, clock-offset telemetry, shutdown);
//! - [`receive`]: the receiving side's checks of a batch — its origin, the
//!   clock guard, order, idempotence — and its driver, which hands the
//!   entries to the writer and answers with the watermarks;
//! - [`lag`]: replication lag measured at the destination, and its sampler.
//!
//! [`Replication`] is the state they share with the writer and the request
//! handlers, in cohesive parts: the head, the per-origin watermarks
//! ([`watermarks`]), the per-peer shipping state ([`peers`]), the log as the
//! shippers read it ([`log`]), counters and `/v1/stats` ([`stats`]), and,
//! for the node, the Merkle trees, the ownership view and anti-entropy
//! progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use parallax_core::config::{ClassConfig, Rollout};
use parallax_core::merkle::{Digest, MerkleTree};
use parallax_core::rollout::RolloutView;
use parallax_core::routing::OwnershipView;
use parallax_core::stats::AntiEntropyStats;
use tokio::sync::watch;

use crate::store::Meta;

mod lag;
mod lease;
mod log;
mod pace;
mod peers;
mod receive;
mod ship;
mod shipper;
mod stats;
mod watermarks;

#[cfg(test)]
mod model_tests;

pub(crate) use lag::LagSampler;
pub(crate) use lease::LeaseState;
pub(crate) use peers::PeerState;
pub(crate) use receive::{Fresh, Receiver, fresh};
pub(crate) use ship::Shipper;

/// The latest local write, as published by the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// Sequence of the latest committed local write.
    pub(crate) seq: u64,
    /// Wall time (ms) just after that commit.
    pub(crate) committed_ms: u64,
}

/// Replication bookkeeping shared across the node.
#[derive(Debug)]
pub(crate) struct Replication {
    head: watch::Sender<Head>,
    watermarks: watermarks::Watermarks,
    peers: BTreeMap<String, PeerState>,
    /// Changes whenever a peer acknowledges something.
    acks: watch::Sender<u64>,
    /// Highest sequence a quorum write waits for peers to hold durably.
    durable_wanted: AtomicU64,
    log: log::ShipLog,
    counters: stats::Counters,
    arrivals: Mutex<BTreeMap<String, lag::Arrivals>>,
    started_ms: u64,
    ownership: RwLock<OwnershipView>,
    rollout: RwLock<RolloutView>,
    trees: Mutex<BTreeMap<String, MerkleTree>>,
    ae: Mutex<AntiEntropyStats>,
    /// The change feed's newest position (readers wait on it).
    feed: watch::Sender<u64>,
    lease: Mutex<lease::Lease>,
}

impl Replication {
    pub(crate) fn new(meta: &Meta, peers: &[String], now_ms: u64, lease_ms: u64) -> Replication {
        let regions = peers.len() + 1;
        let peers = peers
            .iter()
            .map(|p| {
                let state = PeerState::new(
                    meta.cursors.get(p).copied().unwrap_or(0),
                    meta.needs_anti_entropy.get(p).copied().unwrap_or(false),
                );
                (p.clone(), state)
            })
            .collect();
        Replication {
            head: watch::Sender::new(Head {
                seq: meta.checkpoint,
                committed_ms: now_ms,
            }),
            watermarks: watermarks::Watermarks::new(&meta.applied),
            peers,
            acks: watch::Sender::new(0),
            durable_wanted: AtomicU64::new(0),
            log: log::ShipLog::default(),
            counters: stats::Counters::default(),
            arrivals: Mutex::new(BTreeMap::new()),
            started_ms: now_ms,
            ownership: RwLock::new(OwnershipView::default()),
            rollout: RwLock::new(RolloutView::default()),
            trees: Mutex::new(BTreeMap::new()),
            ae: Mutex::new(AntiEntropyStats::default()),
            feed: watch::Sender::new(0),
            lease: Mutex::new(lease::Lease::new(lease_ms, regions)),
        }
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = (&String, &PeerState)> {
        self.peers.iter()
    }

    pub(crate) fn peer(&self, name: &str) -> Option<&PeerState> {
        self.peers.get(name)
    }

    pub(crate) fn head(&self) -> Head {
        *self.head.borrow()
    }

    pub(crate) fn subscribe_head(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    /// Watch of the change feed's newest committed position.
    pub(crate) fn subscribe_feed(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }

    pub(crate) fn publish_feed_head(&self, position: u64) {
        self.feed.send_replace(position);
    }

    pub(crate) fn publish_head(&self, seq: u64, committed_ms: u64) {
        self.head.send_replace(Head { seq, committed_ms });
    }

    /// Asks shippers to have peers checkpoint entries up to `seq` at once.
    pub(crate) fn want_durable(&self, seq: u64) {
        self.durable_wanted.fetch_max(seq, Ordering::Relaxed);
    }

    /// Highest sequence a quorum write waits for peers to hold durably.
    pub(crate) fn durable_wanted(&self) -> u64 {
        self.durable_wanted.load(Ordering::Relaxed)
    }

    /// Watch that changes whenever a peer acknowledges something.
    pub(crate) fn subscribe_acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// Tells quorum writes waiting on acknowledgements to look again.
    pub(crate) fn notify_acked(&self) {
        self.acks.send_modify(|v| *v += 1);
    }

    /// Peers marked for anti-entropy.
    pub(crate) fn peers_needing_anti_entropy(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.needs_anti_entropy())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) fn clear_anti_entropy(&self, peer: &str) {
        if let Some(p) = self.peers.get(peer) {
            p.set_needs_anti_entropy(false);
        }
    }

    pub(crate) fn set_trees(&self, trees: BTreeMap<String, MerkleTree>) {
        *self.trees.lock().expect("trees lock") = trees;
    }

    /// Applies entry changes (class, bucket, old hash, new hash) to the trees.
    pub(crate) fn update_trees(
        &self,
        deltas: impl Iterator<Item = (String, u32, Option<Digest>, Option<Digest>)>,
    ) {
        let mut trees = self.trees.lock().expect("trees lock");
        for (class, bucket, old, new) in deltas {
            trees
                .entry(class)
                .or_default()
                .update(bucket, old.as_ref(), new.as_ref());
        }
    }

    /// Runs `f` on a class's tree (an empty one if the class has no entity).
    pub(crate) fn with_tree<T>(&self, class: &str, f: impl FnOnce(&mut MerkleTree) -> T) -> T {
        let mut trees = self.trees.lock().expect("trees lock");
        f(trees.entry(class.to_owned()).or_default())
    }

    /// When `p` last answered (µs); this region's start if it never did.
    fn last_ok_or_start_us(&self, p: &PeerState) -> u64 {
        match p.last_ok_us() {
            0 => self.started_ms * 1_000,
            us => us,
        }
    }

    /// `peer` answered a request this region sent at `sent_us`; `granted`:
    /// the answer counts toward the owner lease.
    pub(crate) fn answered(&self, peer: &str, sent_us: u64, granted: bool, now_us: u64) {
        if granted {
            self.lease
                .lock()
                .expect("lease lock")
                .answered(peer, sent_us, now_us);
        }
    }

    /// Whether this region holds its owner lease at `now_us`.
    pub(crate) fn lease(&self, now_us: u64) -> LeaseState {
        self.lease.lock().expect("lease lock").check(now_us)
    }

    /// The delegations were read from a majority at `now_us`.
    pub(crate) fn lease_reread(&self, now_us: u64) {
        self.lease.lock().expect("lease lock").reread(now_us);
    }

    /// How long (ms) since this region last heard from `peer`; since its
    /// start if never.
    pub(crate) fn silent_ms(&self, peer: &str, now_us: u64) -> u64 {
        let heard = self.peers.get(peer).map_or(0, PeerState::heard_us);
        let since = if heard == 0 {
            self.started_ms * 1_000
        } else {
            heard
        };
        now_us.saturating_sub(since) / 1_000
    }

    /// How many of this region's log entries `peer` has not acknowledged.
    pub(crate) fn behind(&self, peer: &str) -> u64 {
        let head = self.head().seq;
        self.peers
            .get(peer)
            .map_or(0, |p| head.saturating_sub(p.acked()))
    }

    /// Peers more than `batch` entries behind whose last exchange with this
    /// region succeeded, within the last `within_ms`: catching up after an
    /// outage (not going into one).
    pub(crate) fn catching_up(&self, now_us: u64, batch: u64, within_ms: u64) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(name, p)| {
                let last = p.last_ok_us();
                last > 0
                    && p.consecutive_failures
                        .load(std::sync::atomic::Ordering::Relaxed)
                        == 0
                    && now_us.saturating_sub(last) <= within_ms * 1_000
                    && self.behind(name) > batch
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Peers this region has not reached (a shipment or heartbeat
    /// acknowledged) for at least `ms`; a peer never reached counts from
    /// this region's start.
    pub(crate) fn unreached_for(&self, now_us: u64, ms: u64) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| now_us.saturating_sub(self.last_ok_or_start_us(p)) >= ms * 1_000)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The ownership delegations in force.
    pub(crate) fn ownership(&self) -> OwnershipView {
        self.ownership.read().expect("ownership lock").clone()
    }

    pub(crate) fn set_ownership(&self, view: OwnershipView) {
        *self.ownership.write().expect("ownership lock") = view;
    }

    /// The rollout stages set at runtime.
    pub(crate) fn rollout(&self) -> RolloutView {
        self.rollout.read().expect("rollout lock").clone()
    }

    /// The stage `name` is in now (the one set at runtime, else its config's).
    pub(crate) fn stage(&self, name: &str, class: &ClassConfig) -> Rollout {
        self.rollout
            .read()
            .expect("rollout lock")
            .stage(name, class)
    }

    pub(crate) fn set_rollout(&self, view: RolloutView) {
        *self.rollout.write().expect("rollout lock") = view;
    }
}
