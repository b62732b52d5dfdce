//! Replication state shared by the writer, the shippers and the request
//! handlers, and the shipper: one worker per peer that sends the local log
//! in batches (or a heartbeat when idle), retries with backoff, and advances
//! the peer's cursor on its acknowledgement.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::merkle::{Digest, MerkleTree};
use crate::protocol::{PeerRequest, PeerResponse, ReplicateBatch};
use crate::routing::OwnershipView;
use crate::store::Meta;
use crate::wal::LogEntry;
use crate::telemetry::{ClockEvent, Event, ReplicationEvent, Telemetry};
use crate::transport::Transport;
use crate::wal::WalReader;
use crate::command::Command;

/// The latest local write, as published by the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// Sequence of the latest committed local write.
    pub(crate) seq: u64,
    /// Wall time (ms) just after that commit.
    pub(crate) committed_ms: u64,
}

/// What this region knows about shipping to one peer.
#[derive(Debug, Default)]
pub(crate) struct PeerState {
    acked: AtomicU64,
    durable: AtomicU64,
    batches_sent: AtomicU64,
    entries_sent: AtomicU64,
    heartbeats_sent: AtomicU64,
    errors: AtomicU64,
    consecutive_failures: AtomicU64,
    last_ok_us: AtomicU64,
    needs_anti_entropy: AtomicBool,
    last_error: Mutex<Option<String>>,
    offset: Mutex<OffsetEstimator>,
}

impl PeerState {
    /// Last sequence the peer acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Last sequence the peer holds durably (checkpointed).
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
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

/// Replication bookkeeping shared across the node.
#[derive(Debug)]
pub(crate) struct Replication {
    head: watch::Sender<Head>,
    applied: RwLock<BTreeMap<String, u64>>,
    applied_changed: watch::Sender<u64>,
    peers: BTreeMap<String, PeerState>,
    known_applied: RwLock<BTreeMap<String, BTreeMap<String, u64>>>,
    closed: RwLock<BTreeMap<String, u64>>,
    acks: watch::Sender<u64>,
    truncated: AtomicU64,
    avg_entry_bytes: AtomicU64,
    refused_stamps: AtomicU64,
    commits: AtomicU64,
    committed_commands: AtomicU64,
    commit_us: AtomicU64,
    durable_applied: RwLock<BTreeMap<String, u64>>,
    recent: Mutex<RecentLog>,
    wal_reader: RwLock<Arc<WalReader>>,
    quorum_wanted: AtomicU64,
    replayed: AtomicU64,
    ownership: RwLock<OwnershipView>,
    trees: Mutex<BTreeMap<String, MerkleTree>>,
    ae: Mutex<AntiEntropyStats>,
    arrivals: Mutex<BTreeMap<String, Arrivals>>,
    started_ms: u64,
}

/// Replication from one origin into this region: what the lag sampler
/// reads, and what arrived since its previous sample.
#[derive(Clone, Copy, Debug, Default)]
struct Arrivals {
    /// Origin wall time (ms) of the newest write or heartbeat applied.
    fresh_ms: u64,
    batches: u64,
    heartbeats: u64,
    applied_ops: u64,
    backlog_ops: u64,
    backlog_bytes: u64,
}

/// Anti-entropy as served by `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AntiEntropyStats {
    /// The pass under way ("peer" while it runs).
    pub running: Option<String>,
    /// Passes finished.
    pub passes: u64,
    /// The last pass with each peer.
    pub last: BTreeMap<String, crate::sync::AntiEntropyReport>,
}

/// The newest log entries, in memory, so shippers rarely read the files.
#[derive(Debug, Default)]
struct RecentLog {
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

/// Most bytes of log entries kept in memory for shippers.
const RECENT_LOG_BYTES: usize = 64 << 20;

impl Replication {
    pub(crate) fn new(meta: &Meta, peers: &[String], now_ms: u64) -> Replication {
        let peers = peers
            .iter()
            .map(|p| {
                let state = PeerState::default();
                state
                    .acked
                    .store(meta.cursors.get(p).copied().unwrap_or(0), Ordering::Relaxed);
                state.needs_anti_entropy.store(
                    meta.needs_anti_entropy.get(p).copied().unwrap_or(false),
                    Ordering::Relaxed,
                );
                (p.clone(), state)
            })
            .collect();
        Replication {
            head: watch::Sender::new(Head {
                seq: meta.checkpoint,
                committed_ms: now_ms,
            }),
            applied: RwLock::new(meta.applied.clone()),
            applied_changed: watch::Sender::new(0),
            peers,
            known_applied: RwLock::new(BTreeMap::new()),
            closed: RwLock::new(BTreeMap::new()),
            acks: watch::Sender::new(0),
            truncated: AtomicU64::new(0),
            avg_entry_bytes: AtomicU64::new(256),
            refused_stamps: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed_commands: AtomicU64::new(0),
            commit_us: AtomicU64::new(0),
            durable_applied: RwLock::new(meta.applied.clone()),
            recent: Mutex::new(RecentLog::default()),
            wal_reader: RwLock::new(Arc::new(WalReader::empty())),
            quorum_wanted: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            ownership: RwLock::new(OwnershipView::default()),
            trees: Mutex::new(BTreeMap::new()),
            ae: Mutex::new(AntiEntropyStats::default()),
            arrivals: Mutex::new(BTreeMap::new()),
            started_ms: now_ms,
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

    pub(crate) fn publish_head(&self, seq: u64, committed_ms: u64) {
        self.head.send_replace(Head { seq, committed_ms });
    }

    pub(crate) fn publish_applied(&self, changed: &BTreeMap<String, u64>) {
        {
            let mut applied = self.applied.write().expect("applied lock");
            for (origin, wm) in changed {
                let slot = applied.entry(origin.clone()).or_insert(0);
                *slot = (*slot).max(*wm);
            }
        }
        self.applied_changed.send_modify(|v| *v += 1);
    }

    /// Waits (at most `limit`) until `origin`'s log is applied up to `seq`;
    /// returns whether it is.
    pub(crate) async fn wait_applied(&self, origin: &str, seq: u64, limit: Duration) -> bool {
        let mut changes = self.applied_changed.subscribe();
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
        let mut v = self.applied.read().expect("applied lock").clone();
        v.insert(me.to_owned(), self.head().seq);
        v
    }

    pub(crate) fn applied_from(&self, origin: &str) -> u64 {
        self.applied
            .read()
            .expect("applied lock")
            .get(origin)
            .copied()
            .unwrap_or(0)
    }

    /// Publishes the per-origin watermarks that the last checkpoint made durable.
    pub(crate) fn publish_durable(&self, durable: &BTreeMap<String, u64>) {
        *self.durable_applied.write().expect("durable lock") = durable.clone();
    }

    /// Last sequence of `origin`'s log held durably here.
    pub(crate) fn durable_from(&self, origin: &str) -> u64 {
        self.durable_applied
            .read()
            .expect("durable lock")
            .get(origin)
            .copied()
            .unwrap_or(0)
    }

    /// Keeps newly logged entries in memory for the shippers.
    pub(crate) fn remember(&self, entries: Vec<LogEntry>) {
        let mut recent = self.recent.lock().expect("recent lock");
        for e in entries {
            recent.bytes += e.size();
            recent.entries.push_back(e);
        }
        while recent.bytes > RECENT_LOG_BYTES {
            match recent.entries.pop_front() {
                Some(e) => recent.bytes -= e.size(),
                None => break,
            }
        }
    }

    pub(crate) fn set_wal_reader(&self, reader: WalReader) {
        *self.wal_reader.write().expect("reader lock") = Arc::new(reader);
    }

    /// Log entries with sequence in `from..=upto`, from memory when they are
    /// recent, else from the write-ahead log files.
    pub(crate) fn read_log(
        &self,
        from: u64,
        upto: u64,
        max_ops: usize,
        max_bytes: usize,
    ) -> crate::Result<Vec<LogEntry>> {
        {
            let recent = self.recent.lock().expect("recent lock");
            if let Some(front) = recent.entries.front()
                && front.seq <= from
            {
                let skip = (from - front.seq) as usize;
                let mut out = Vec::new();
                let mut bytes = 0;
                for e in recent
                    .entries
                    .iter()
                    .skip(skip)
                    .take_while(|e| e.seq <= upto)
                {
                    bytes += e.size();
                    out.push(e.clone());
                    if out.len() >= max_ops || bytes >= max_bytes {
                        break;
                    }
                }
                return Ok(out);
            }
        }
        let reader = Arc::clone(&self.wal_reader.read().expect("reader lock"));
        reader.read(from, upto, max_ops, max_bytes)
    }

    pub(crate) fn ae_running(&self, what: Option<String>) {
        self.ae.lock().expect("ae lock").running = what;
    }

    pub(crate) fn ae_done(&self, report: crate::sync::AntiEntropyReport) {
        let mut ae = self.ae.lock().expect("ae lock");
        ae.passes += 1;
        ae.last.insert(report.peer.clone(), report);
    }

    pub(crate) fn ae_stats(&self) -> AntiEntropyStats {
        self.ae.lock().expect("ae lock").clone()
    }

    /// Peers marked for anti-entropy.
    pub(crate) fn peers_needing_anti_entropy(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.needs_anti_entropy.load(Ordering::Relaxed))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) fn clear_anti_entropy(&self, peer: &str) {
        if let Some(p) = self.peers.get(peer) {
            p.needs_anti_entropy.store(false, Ordering::Relaxed);
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

    /// The ownership delegations in force.
    pub(crate) fn ownership(&self) -> OwnershipView {
        self.ownership.read().expect("ownership lock").clone()
    }

    pub(crate) fn set_ownership(&self, view: OwnershipView) {
        *self.ownership.write().expect("ownership lock") = view;
    }

    /// Records how many log entries were replayed at start-up.
    pub(crate) fn set_replayed(&self, n: u64) {
        self.replayed.store(n, Ordering::Relaxed);
    }

    /// Asks shippers to have peers checkpoint entries up to `seq` at once.
    pub(crate) fn want_durable(&self, seq: u64) {
        self.quorum_wanted.fetch_max(seq, Ordering::Relaxed);
    }

    pub(crate) fn set_truncated(&self, upto: u64) {
        self.truncated.store(upto, Ordering::Relaxed);
    }

    pub(crate) fn note_entry_size(&self, bytes: u64) {
        let old = self.avg_entry_bytes.load(Ordering::Relaxed);
        self.avg_entry_bytes
            .store((old * 7 + bytes) / 8, Ordering::Relaxed);
    }

    /// What region `region` is known to have applied of `origin`'s log.
    pub(crate) fn known_applied(&self, region: &str, origin: &str) -> u64 {
        self.known_applied
            .read()
            .expect("known lock")
            .get(region)
            .and_then(|v| v.get(origin))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn learn_applied(&self, region: &str, vector: &BTreeMap<String, u64>) {
        let mut known = self.known_applied.write().expect("known lock");
        let row = known.entry(region.to_owned()).or_default();
        for (origin, wm) in vector {
            let slot = row.entry(origin.clone()).or_insert(0);
            *slot = (*slot).max(*wm);
        }
    }

    /// Records that every write `origin` acknowledged before `closed_ms`
    /// (origin clock) has been applied here.
    pub(crate) fn advance_closed(&self, origin: &str, closed_ms: u64) {
        let mut closed = self.closed.write().expect("closed lock");
        let slot = closed.entry(origin.to_owned()).or_insert(0);
        *slot = (*slot).max(closed_ms);
    }

    /// Records a batch (or, with no entries, a heartbeat) from `origin`
    /// applied here: `newest_ms` is the origin wall time of the newest
    /// entry it applied, the backlog what the origin said it had left.
    pub(crate) fn note_arrival(
        &self,
        origin: &str,
        newest_ms: Option<u64>,
        applied_ops: u64,
        backlog_ops: u64,
        backlog_bytes: u64,
    ) {
        let mut arrivals = self.arrivals.lock().expect("arrivals lock");
        let a = arrivals.entry(origin.to_owned()).or_default();
        if applied_ops == 0 {
            a.heartbeats += 1;
        } else {
            a.batches += 1;
            a.applied_ops += applied_ops;
        }
        a.fresh_ms = a.fresh_ms.max(newest_ms.unwrap_or(0));
        a.backlog_ops = backlog_ops;
        a.backlog_bytes = backlog_bytes;
    }

    /// Origin wall time (ms) of the newest write or heartbeat from `origin`
    /// applied here: its closed timestamp (everything before it applied),
    /// or the newest entry applied, whichever is later.
    fn fresh_ms(&self, origin: &str) -> Option<u64> {
        let closed = self
            .closed
            .read()
            .expect("closed lock")
            .get(origin)
            .copied();
        let newest = self
            .arrivals
            .lock()
            .expect("arrivals lock")
            .get(origin)
            .map(|a| a.fresh_ms)
            .filter(|&ms| ms > 0);
        closed.max(newest)
    }

    /// How far this region trails `origin` now (ms): the age of the newest
    /// write or heartbeat applied from it, corrected for clock offset;
    /// `None` if nothing was ever heard from it.
    pub(crate) fn lag_from(&self, origin: &str, now_ms: u64) -> Option<u64> {
        let fresh = self.fresh_ms(origin)?;
        Some(crate::clock::lag_ms(now_ms, fresh, self.offset_ms(origin)))
    }

    /// One lag sample per peer, taken whether or not anything arrived:
    /// how far this region (`me`) trails each peer — from its start while
    /// nothing was ever heard — and how far each peer that has not
    /// answered for `silent_after_ms` trails this region, since its last
    /// answer (it cannot sample itself while frozen or cut off).
    pub(crate) fn sample_lag(
        &self,
        me: &str,
        now_ms: u64,
        ts_us: u64,
        silent_after_ms: u64,
    ) -> Vec<ReplicationEvent> {
        let mut out = Vec::new();
        let head = self.head().seq;
        let avg = self.avg_entry_bytes.load(Ordering::Relaxed);
        for (peer, state) in &self.peers {
            let lag_ms = self
                .lag_from(peer, now_ms)
                .unwrap_or_else(|| now_ms.saturating_sub(self.started_ms));
            let a = {
                let mut arrivals = self.arrivals.lock().expect("arrivals lock");
                let a = arrivals.entry(peer.clone()).or_default();
                // The counts start again; the backlog is the origin's
                // figure and stands until it says otherwise.
                Arrivals {
                    batches: std::mem::take(&mut a.batches),
                    heartbeats: std::mem::take(&mut a.heartbeats),
                    applied_ops: std::mem::take(&mut a.applied_ops),
                    ..*a
                }
            };
            out.push(ReplicationEvent {
                ts_us,
                src: peer.clone(),
                dst: me.to_owned(),
                lag_ms,
                backlog_ops: a.backlog_ops,
                backlog_bytes: a.backlog_bytes,
                applied_ops: a.applied_ops,
                batches: a.batches,
                heartbeats: a.heartbeats,
            });
            let last_ok_ms = match state.last_ok_us.load(Ordering::Relaxed) {
                0 => self.started_ms,
                us => us / 1_000,
            };
            let silent_ms = now_ms.saturating_sub(last_ok_ms);
            if silent_ms >= silent_after_ms {
                let backlog = head.saturating_sub(state.acked());
                out.push(ReplicationEvent {
                    ts_us,
                    src: me.to_owned(),
                    dst: peer.clone(),
                    lag_ms: silent_ms,
                    backlog_ops: backlog,
                    backlog_bytes: backlog * avg,
                    ..ReplicationEvent::default()
                });
            }
        }
        out
    }

    /// Estimated clock offset of `peer` (its clock minus ours, ms).
    pub(crate) fn offset_ms(&self, peer: &str) -> i64 {
        self.peers
            .get(peer)
            .and_then(|p| p.offset.lock().expect("offset lock").best())
            .map_or(0, |(_, off_us)| off_us / 1_000)
    }

    /// Counts one group commit of `commands` commands that took `us`.
    pub(crate) fn count_commit(&self, commands: u64, us: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_commands
            .fetch_add(commands, Ordering::Relaxed);
        self.commit_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn count_refused_stamp(&self) {
        self.refused_stamps.fetch_add(1, Ordering::Relaxed);
    }

    /// Watch that changes whenever a peer acknowledges something.
    pub(crate) fn subscribe_acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// A snapshot for `/v1/stats`.
    pub(crate) fn snapshot(&self, me: &str, now_ms: u64) -> ReplicationStats {
        let head = self.head().seq;
        let avg = self.avg_entry_bytes.load(Ordering::Relaxed);
        let peers = self
            .peers
            .iter()
            .map(|(name, p)| {
                let acked = p.acked();
                let backlog = head.saturating_sub(acked);
                let (rtt_us, offset_us) = p
                    .offset
                    .lock()
                    .expect("offset lock")
                    .best()
                    .unwrap_or((0, 0));
                (
                    name.clone(),
                    PeerStats {
                        acked,
                        backlog_ops: backlog,
                        backlog_bytes: backlog * avg,
                        batches_sent: p.batches_sent.load(Ordering::Relaxed),
                        entries_sent: p.entries_sent.load(Ordering::Relaxed),
                        heartbeats_sent: p.heartbeats_sent.load(Ordering::Relaxed),
                        errors: p.errors.load(Ordering::Relaxed),
                        consecutive_failures: p.consecutive_failures.load(Ordering::Relaxed),
                        last_ok_ms_ago: match p.last_ok_us.load(Ordering::Relaxed) {
                            0 => None,
                            us => Some(now_ms.saturating_sub(us / 1_000)),
                        },
                        last_error: p.last_error.lock().expect("error lock").clone(),
                        needs_anti_entropy: p.needs_anti_entropy.load(Ordering::Relaxed),
                        clock_offset_ms: offset_us / 1_000,
                        rtt_ms: rtt_us as f64 / 1_000.0,
                        lag_from_ms: self.lag_from(name, now_ms),
                        applied_from: self.applied_from(name),
                    },
                )
            })
            .collect();
        ReplicationStats {
            region: me.to_owned(),
            head,
            truncated: self.truncated.load(Ordering::Relaxed),
            refused_stamps: self.refused_stamps.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            committed_commands: self.committed_commands.load(Ordering::Relaxed),
            commit_us_total: self.commit_us.load(Ordering::Relaxed),
            replayed_at_start: self.replayed.load(Ordering::Relaxed),
            peers,
        }
    }
}

/// Replication as served by `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicationStats {
    /// This region.
    pub region: String,
    /// Sequence of the latest local write.
    pub head: u64,
    /// Log entries up to here were removed (every peer had them).
    pub truncated: u64,
    /// Remote clock stamps refused by the offset guard.
    pub refused_stamps: u64,
    /// Group commits (transactions) so far.
    pub commits: u64,
    /// Commands (local writes, replicated batches, repairs) in those commits.
    pub committed_commands: u64,
    /// Time spent in those commits, fsync included (µs).
    pub commit_us_total: u64,
    /// Write-ahead log entries replayed at start-up (after an unclean stop).
    pub replayed_at_start: u64,
    /// Per peer.
    pub peers: BTreeMap<String, PeerStats>,
}

/// Replication with one peer, both directions.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerStats {
    /// Last sequence of our log the peer acknowledged.
    pub acked: u64,
    /// Our entries the peer still lacks.
    pub backlog_ops: u64,
    /// Their approximate size (bytes).
    pub backlog_bytes: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Entries sent.
    pub entries_sent: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Failed shipments.
    pub errors: u64,
    /// Failed shipments since the last success.
    pub consecutive_failures: u64,
    /// Time since the last successful shipment (ms).
    pub last_ok_ms_ago: Option<u64>,
    /// The last shipment error.
    pub last_error: Option<String>,
    /// The peer's log was dropped (backlog cap); it needs anti-entropy.
    pub needs_anti_entropy: bool,
    /// The peer's clock minus ours (ms).
    pub clock_offset_ms: i64,
    /// Round trip of the best offset sample (ms).
    pub rtt_ms: f64,
    /// How far we trail the peer's writes now (ms); none if never heard from.
    pub lag_from_ms: Option<u64>,
    /// Last sequence of the peer's log applied here.
    pub applied_from: u64,
}

/// Everything a shipper needs.
pub(crate) struct Shipper {
    pub(crate) me: String,
    pub(crate) peer: String,
    pub(crate) config: Arc<Config>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) repl: Arc<Replication>,
    pub(crate) writer: tokio::sync::mpsc::Sender<Command>,
    pub(crate) telemetry: Telemetry,
    pub(crate) seed: u64,
}

/// How long a batch waits for its answer before the shipper sends the next
/// one anyway.
const PIPELINE_AFTER: Duration = Duration::from_millis(5);

/// What one shipment came back with.
struct Shipped {
    /// First and last sequence of the batch (`last < first` for a heartbeat).
    first: u64,
    last: u64,
    t0_us: u64,
    t1_us: u64,
    result: Result<crate::protocol::PeerReply, String>,
}

impl Shipper {
    /// Ships until `shutdown` turns true: keeps up to `max_inflight_batches`
    /// batches in flight (the peer applies them in order), a heartbeat when
    /// idle, and on any failure starts again from the peer's watermark after
    /// a backoff.
    pub(crate) async fn run(self, worker: crate::worker::Worker) {
        let mut shutdown = worker.stop_signal();
        let cfg = &self.config.replication;
        let heartbeat = Duration::from_millis(cfg.heartbeat_interval_ms);
        let timeout = Duration::from_millis(cfg.peer_timeout_ms);
        let window = cfg.max_inflight_batches.max(1);
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut backoff_ms = cfg.retry_initial_ms;
        let mut head_rx = self.repl.subscribe_head();
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut last_clock_event_ms = 0u64;
        let state = self
            .repl
            .peer(&self.peer)
            .expect("shipper for a known peer");
        let mut sent = state.acked();
        let mut inflight: FuturesUnordered<BoxFuture<'static, Shipped>> = FuturesUnordered::new();
        let mut sent_times: VecDeque<tokio::time::Instant> = VecDeque::new();
        let mut hole = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Fill the window.
            while inflight.len() < window {
                // Everything acknowledged before `closed` is committed, so it
                // is in the log at or below the head read next.
                let closed = self.clock.now_ms();
                let head = *head_rx.borrow_and_update();
                let acked = state.acked();
                if head.seq.saturating_sub(acked) > cfg.max_backlog_ops {
                    tracing::warn!(region = %self.me, peer = %self.peer, backlog = head.seq - acked, "Peer is past the backlog cap; dropping its log and marking it for anti-entropy.");
                    state.acked.store(head.seq, Ordering::Release);
                    state.durable.store(head.seq, Ordering::Release);
                    state.needs_anti_entropy.store(true, Ordering::Relaxed);
                    let _ = self
                        .writer
                        .send(Command::MarkAntiEntropy(self.peer.clone(), true))
                        .await;
                    sent = head.seq;
                    // The peer's watermark is below the dropped entries: the
                    // next batch tells it to accept the hole.
                    hole = true;
                }
                sent = sent.max(state.acked());
                // A second batch goes out only when the first has been
                // waiting a while (a long round trip to hide) or enough has
                // piled up; on a fast link one batch at a time batches better.
                let pending = head.seq.saturating_sub(sent);
                if !inflight.is_empty()
                    && pending < (cfg.batch_max_ops as u64 / 4).max(1)
                    && sent_times
                        .front()
                        .is_some_and(|t: &tokio::time::Instant| t.elapsed() < PIPELINE_AFTER)
                {
                    break;
                }
                let entries = if sent < head.seq {
                    match self.repl.read_log(
                        sent + 1,
                        head.seq,
                        cfg.batch_max_ops,
                        cfg.batch_max_bytes,
                    ) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(region = %self.me, error = %e, "Cannot read the replication log.");
                            Vec::new()
                        }
                    }
                } else {
                    Vec::new()
                };
                let durable_wanted = self.repl.quorum_wanted.load(Ordering::Relaxed)
                    > state.durable()
                    && state.acked() > state.durable();
                let heartbeat_due = last_sent.is_none_or(|t| t.elapsed() >= heartbeat);
                if entries.is_empty() && !(inflight.is_empty() && (heartbeat_due || durable_wanted))
                {
                    break;
                }
                let truncated = entries.first().is_some_and(|e| e.seq > sent + 1);
                let gap = truncated || hole;
                if truncated && !state.needs_anti_entropy.load(Ordering::Relaxed) {
                    tracing::warn!(region = %self.me, peer = %self.peer, from = sent + 1, to = entries[0].seq - 1, "Log entries the peer needs were already removed; marking it for anti-entropy.");
                    state.needs_anti_entropy.store(true, Ordering::Relaxed);
                    let _ = self
                        .writer
                        .send(Command::MarkAntiEntropy(self.peer.clone(), true))
                        .await;
                }
                let first = entries.first().map_or(sent + 1, |e| e.seq);
                let last = entries.last().map_or(sent, |e| e.seq);
                let closed_ms = if last >= head.seq {
                    closed
                } else {
                    entries.last().map_or(0, |e| e.wall_ms)
                };
                let backlog_after = head.seq.saturating_sub(last);
                let batch = ReplicateBatch {
                    durable_now: self.repl.quorum_wanted.load(Ordering::Relaxed) > state.durable(),
                    origin: self.me.clone(),
                    head: head.seq,
                    closed_ms,
                    entries,
                    gap_acknowledged: gap,
                    applied: self.repl.applied_vector(&self.me),
                    backlog_bytes: backlog_after
                        * self.repl.avg_entry_bytes.load(Ordering::Relaxed),
                };
                sent = last;
                last_sent = Some(tokio::time::Instant::now());
                sent_times.push_back(tokio::time::Instant::now());
                let call = self
                    .transport
                    .call(&self.peer, PeerRequest::Replicate(batch));
                let clock = Arc::clone(&self.clock);
                inflight.push(Box::pin(async move {
                    let t0_us = clock.now_us();
                    let result = match tokio::time::timeout(timeout, call).await {
                        Err(_) => Err("no answer within peer_timeout_ms".to_owned()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(reply)) => Ok(reply),
                    };
                    Shipped {
                        first,
                        last,
                        t0_us,
                        t1_us: clock.now_us(),
                        result,
                    }
                }));
                if last < first {
                    break;
                }
            }
            let wake = last_sent.map_or_else(tokio::time::Instant::now, |t| t + heartbeat);
            let pipeline_at = sent_times.front().map(|t| *t + PIPELINE_AFTER);
            let more_waiting = head_rx.borrow().seq > sent;
            let shipped = tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => done,
                _ = head_rx.changed(), if inflight.len() < window => continue,
                _ = tokio::time::sleep_until(wake), if inflight.is_empty() => continue,
                _ = tokio::time::sleep_until(pipeline_at.unwrap_or(wake)),
                    if more_waiting && inflight.len() < window && pipeline_at.is_some() => continue,
                _ = shutdown.changed() => break,
            };
            sent_times.pop_front();
            let failure = match shipped.result {
                Err(e) => Some(e),
                Ok(reply) => {
                    let rtt = shipped.t1_us.saturating_sub(shipped.t0_us);
                    let offset_us = (reply.wall_ms * 1_000) as i64
                        - ((shipped.t0_us + shipped.t1_us) / 2) as i64;
                    state
                        .offset
                        .lock()
                        .expect("offset lock")
                        .add(rtt, offset_us);
                    match reply.result {
                        Ok(PeerResponse::Replicated(ack)) => {
                            if shipped.last >= shipped.first && ack.acked >= shipped.last {
                                hole = false;
                            }
                            if ack.acked + 1 < shipped.first && !hole {
                                // The peer lacks what precedes this batch (it
                                // restarted from a checkpoint): start over from there.
                                state.acked.store(ack.acked, Ordering::Release);
                            } else {
                                // Answers to batches in flight can arrive in any order.
                                state.acked.fetch_max(ack.acked, Ordering::AcqRel);
                            }
                            if !hole {
                                state
                                    .durable
                                    .store(ack.durable.min(state.acked()), Ordering::Release);
                            }
                            self.repl.learn_applied(&self.peer, &ack.applied);
                            self.repl.acks.send_modify(|v| *v += 1);
                            if shipped.last >= shipped.first {
                                state.batches_sent.fetch_add(1, Ordering::Relaxed);
                                state
                                    .entries_sent
                                    .fetch_add(shipped.last + 1 - shipped.first, Ordering::Relaxed);
                            } else {
                                state.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                            }
                            if ack.acked < shipped.last && !hole {
                                // The peer did not take (all of) it: resend from its watermark.
                                sent = sent.min(ack.acked);
                            }
                            None
                        }
                        Ok(other) => Some(format!("unexpected answer {other:?}")),
                        Err(e) => Some(e.error.detail),
                    }
                }
            };
            match failure {
                None => {
                    state.last_ok_us.store(shipped.t1_us, Ordering::Relaxed);
                    state.consecutive_failures.store(0, Ordering::Relaxed);
                    backoff_ms = cfg.retry_initial_ms;
                    let now_ms = shipped.t1_us / 1_000;
                    if now_ms.saturating_sub(last_clock_event_ms) >= 1_000 {
                        last_clock_event_ms = now_ms;
                        if let Some((rtt_us, off_us)) =
                            state.offset.lock().expect("offset lock").best()
                        {
                            self.telemetry.emit(Event::Clock(ClockEvent {
                                ts_us: shipped.t1_us,
                                region: self.me.clone(),
                                peer: self.peer.clone(),
                                offset_ms: off_us / 1_000,
                                rtt_ms: rtt_us / 1_000,
                            }));
                        }
                    }
                }
                Some(why) => {
                    state.errors.fetch_add(1, Ordering::Relaxed);
                    let streak = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if streak == 1 || streak.is_multiple_of(100) {
                        tracing::warn!(region = %self.me, peer = %self.peer, failures = streak, error = %why, "Shipping to peer failed; retrying with backoff.");
                    }
                    *state.last_error.lock().expect("error lock") = Some(why);
                    // Let what is in flight finish, then start again from
                    // what the peer has acknowledged.
                    let jitter = rng.random_range(0..=backoff_ms / 2);
                    let pause = tokio::time::sleep(Duration::from_millis(backoff_ms + jitter));
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            _ = shutdown.changed() => break,
                            Some(_) = inflight.next(), if !inflight.is_empty() => {}
                        }
                    }
                    inflight.clear();
                    sent_times.clear();
                    sent = state.acked();
                    backoff_ms = (backoff_ms * 2).min(cfg.retry_max_ms);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(samples: &[ReplicationEvent], src: &str, dst: &str) -> Option<u64> {
        samples
            .iter()
            .find(|e| e.src == src && e.dst == dst)
            .map(|e| e.lag_ms)
    }

    #[test]
    fn lag_grows_while_nothing_arrives_and_falls_when_something_does() {
        let peers = ["eu".to_owned()];
        let r = Replication::new(&Meta::default(), &peers, 1_000_000);
        // Never heard from: counted from the start, sample after sample.
        let s = r.sample_lag("us", 1_002_000, 0, 3_000);
        assert_eq!(lag(&s, "eu", "us"), Some(2_000));
        // A batch whose newest entry was written at 1_002_500.
        r.note_arrival("eu", Some(1_002_500), 3, 7, 700);
        let s = r.sample_lag("us", 1_003_000, 0, 3_000);
        assert_eq!(lag(&s, "eu", "us"), Some(500));
        let into_us = s.iter().find(|e| e.dst == "us").unwrap();
        assert_eq!(
            (
                into_us.applied_ops,
                into_us.batches,
                into_us.backlog_ops,
                into_us.backlog_bytes
            ),
            (3, 1, 7, 700)
        );
        // Then silence: no arrival, yet every sample is a second older.
        for t in 1..=5 {
            let s = r.sample_lag("us", 1_003_000 + t * 1_000, 0, 60_000);
            assert_eq!(lag(&s, "eu", "us"), Some(500 + t * 1_000));
            let into_us = s.iter().find(|e| e.dst == "us").unwrap();
            assert_eq!((into_us.applied_ops, into_us.batches), (0, 0));
            assert_eq!(into_us.backlog_ops, 7, "the origin's backlog stands");
        }
        // A heartbeat closes everything up to its timestamp.
        r.note_arrival("eu", None, 0, 0, 0);
        r.advance_closed("eu", 1_009_900);
        let s = r.sample_lag("us", 1_010_000, 0, 60_000);
        assert_eq!(lag(&s, "eu", "us"), Some(100));
        assert_eq!(s.iter().find(|e| e.dst == "us").unwrap().heartbeats, 1);
    }

    #[test]
    fn a_peer_silent_for_three_heartbeats_is_sampled_by_its_source() {
        let peers = ["eu".to_owned()];
        let r = Replication::new(&Meta::default(), &peers, 1_000_000);
        let s = r.sample_lag("us", 1_002_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), None, "not silent long enough yet");
        r.peers["eu"]
            .last_ok_us
            .store(1_002_500 * 1_000, Ordering::Relaxed);
        let s = r.sample_lag("us", 1_005_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), None, "answered 2.5 s ago");
        let s = r.sample_lag("us", 1_006_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), Some(3_500));
        let s = r.sample_lag("us", 1_009_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), Some(6_500));
    }
}
