//! Telemetry: what happens in a region, as plain events on a bounded channel,
//! and the live counters built from them (served at `GET /v1/stats`).
//!
//! Emitting never blocks: when the channel is full the event is dropped and
//! counted. The collector subscribes to the same events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

mod cache;

pub use cache::{CacheEvent, CacheReport};

/// Something that happened in a region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A client request was answered.
    Request(RequestEvent),
    /// A batch (or heartbeat) from another region was applied here.
    Replication(ReplicationEvent),
    /// A conflict was detected or resolved here.
    Conflict(ConflictEvent),
    /// A clock offset to another region was estimated.
    Clock(ClockEvent),
    /// Ownership moved, or a region failed over.
    Failover(FailoverEvent),
    /// A health probe of a region answered (or did not).
    Probe(ProbeEvent),
    /// An audit of a class finished.
    Audit(AuditEvent),
    /// An audit found a key divergent or in flight.
    Divergence(DivergenceEvent),
    /// A class moved to another rollout stage.
    Rollout(RolloutEvent),
    /// A client's feed-kept cache reported a window of its reads.
    Cache(CacheEvent),
    /// What this region's calls to a peer carried of a class since the
    /// previous report.
    Traffic(TrafficEvent),
}

/// Bytes a region's calls to a peer carried of one kind and class in a
/// window ending at `ts_us` (a row of the `traffic` table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficEvent {
    /// The end of the window (µs since epoch, UTC).
    pub ts_us: u64,
    /// The calling region.
    pub region: String,
    /// The window's growth of the counts.
    pub traffic: crate::traffic::PeerTraffic,
}

/// A class moved to another rollout stage (recorded by the region that
/// took the move).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that took the move.
    pub region: String,
    /// The class.
    pub class: String,
    /// The stage it was in.
    pub from_stage: String,
    /// The stage it is in now.
    pub to_stage: String,
    /// Whether a skipped stage was forced.
    pub forced: bool,
}

/// A failover: ownership moved by hand, or a step of a failover a router
/// ran and measured (one row per step, all with the same `id`; the last row
/// of an id holds every time measured so far).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that recorded it.
    pub region: String,
    /// What happened, e.g. `ownership eu-west -> us-east (epoch 3)`.
    pub event: String,
    /// From the first failed check to the region declared down (ms).
    pub detected_ms: Option<u64>,
    /// From the first failed check until no answer naming the region could
    /// still be cached by a client (ms).
    pub rerouted_ms: Option<u64>,
    /// The failover (`<router>/<region>/<first failed check ms>`); none for
    /// a move by hand.
    #[serde(default)]
    pub id: Option<String>,
    /// The location of the router that measured it.
    #[serde(default)]
    pub router: Option<String>,
    /// The region that failed.
    #[serde(default)]
    pub failed: Option<String>,
    /// `down`, `moved`, `back` or `done`.
    #[serde(default)]
    pub phase: Option<String>,
    /// The region its keys moved to.
    #[serde(default)]
    pub delegate: Option<String>,
    /// The ownership epoch of the move.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Who moved them (`this router`, `another router`), or why not yet.
    #[serde(default)]
    pub moved_by: Option<String>,
    /// The last good check before the failure (µs since epoch).
    #[serde(default)]
    pub last_ok_us: Option<u64>,
    /// The start of the first failed check (µs since epoch).
    #[serde(default)]
    pub first_failed_us: Option<u64>,
    /// When the region was declared down (µs since epoch).
    #[serde(default)]
    pub down_us: Option<u64>,
    /// The router's last answer naming the region (µs since epoch).
    #[serde(default)]
    pub last_answer_us: Option<u64>,
    /// When its keys moved (µs since epoch).
    #[serde(default)]
    pub moved_us: Option<u64>,
    /// When it was declared up again (µs since epoch).
    #[serde(default)]
    pub up_us: Option<u64>,
    /// When its keys were handed back (µs since epoch).
    #[serde(default)]
    pub handed_back_us: Option<u64>,
}

/// One health probe of a region's `/healthz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that probed.
    pub vantage: String,
    /// Region probed.
    pub target: String,
    /// Time to the answer (ms); the timeout when it did not answer.
    pub latency_ms: f64,
    /// Whether it answered 200.
    pub ok: bool,
}

/// The audit of one class (a row of the `audits` table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the audit finished (µs since epoch, UTC).
    pub ts_us: u64,
    /// The audit run.
    pub audit_id: String,
    /// Class.
    pub class: String,
    /// Regions compared.
    pub regions: Vec<String>,
    /// Entities in the largest copy.
    pub entities: u64,
    /// Keys whose copies differ.
    pub differing: u64,
    /// Of those, explained by replication in flight.
    pub in_flight: u64,
    /// Of those, divergent.
    pub divergent: u64,
    /// Round trips of the tree comparisons.
    pub round_trips: u32,
    /// Bytes exchanged with the regions.
    pub bytes: u64,
    /// Time taken (ms).
    pub duration_ms: u64,
}

/// One divergent or in-flight key (a row of the `divergence` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// The audit run.
    pub audit_id: String,
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// Regions involved.
    pub regions: Vec<String>,
    /// One word: `divergent`, `in_flight` or `repaired` (the web app
    /// also derives `cleared` for a key a later audit no longer found).
    pub state: String,
    /// Why, in words: what the auditor saw, or what the repair did.
    #[serde(default)]
    pub reason: String,
    /// When the newest version involved was written (µs since epoch).
    pub first_seen_us: u64,
    /// Its age when classified (ms).
    pub age_ms: u64,
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// When it finished (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that took it.
    pub region: String,
    /// Operation: get, put, delete, incr, add, remove, resolve.
    pub op: String,
    /// Entity class (empty when unknown).
    pub class: String,
    /// HTTP status answered.
    pub status: u16,
    /// Time to answer (µs).
    pub latency_us: u64,
    /// Consistency level asked for.
    pub consistency: String,
    /// Region that served it, when forwarded.
    pub served_by: String,
    /// Where the client is, as the `x-parallax-client-geo` header (set by a
    /// router or the client) says; empty when not given.
    pub client_geo: String,
}

/// A lag sample of replication from `src` into `dst`, taken every
/// heartbeat interval whether or not anything arrived (as pt-heartbeat and
/// `Seconds_Behind_Source` do), so a frozen region or a cut link shows as
/// lag growing second by second.
///
/// Normally `dst` samples: the age of the newest write or heartbeat it has
/// applied from `src`. While `dst` has not answered `src` for three
/// heartbeat intervals, `src` samples too, as the time since `dst` last
/// acknowledged (a frozen `dst` cannot measure itself).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationEvent {
    /// When it was sampled (µs since epoch, UTC).
    pub ts_us: u64,
    /// Origin region of the log.
    pub src: String,
    /// Region that applies it.
    pub dst: String,
    /// How far `dst` trails `src` (ms), corrected for the estimated clock
    /// offset between them.
    pub lag_ms: u64,
    /// Entries the origin still had to ship to `dst` (as of its last batch).
    pub backlog_ops: u64,
    /// Their approximate size (bytes).
    pub backlog_bytes: u64,
    /// Entries applied since the previous sample.
    pub applied_ops: u64,
    /// Batches applied since the previous sample.
    #[serde(default)]
    pub batches: u64,
    /// Heartbeats received since the previous sample.
    #[serde(default)]
    pub heartbeats: u64,
    /// While a backlog drains: entries per second it shrinks by, since its
    /// peak in the last [`DRAIN_WINDOW_MS`].
    #[serde(default)]
    pub drain_ops_per_s: Option<u64>,
    /// While a backlog drains: when it will be empty at that rate (ms).
    #[serde(default)]
    pub eta_ms: Option<u64>,
}

/// How far back a drain rate looks for the backlog's peak (ms).
pub const DRAIN_WINDOW_MS: u64 = 10_000;

/// The drain rate (entries/s) and time to empty (ms) of a backlog, from its
/// samples `(ms, entries)`, oldest first: the fall from its peak within the
/// last [`DRAIN_WINDOW_MS`] to the newest sample, over the time between.
/// `None` unless it has fallen since the peak and is not empty yet.
pub fn drain_estimate(samples: &[(u64, u64)]) -> Option<(u64, u64)> {
    let &(t1, b1) = samples.last()?;
    let &(t0, b0) = samples
        .iter()
        .filter(|(t, _)| t1.saturating_sub(*t) <= DRAIN_WINDOW_MS)
        .max_by_key(|(t, b)| (*b, std::cmp::Reverse(*t)))?;
    if b1 == 0 || b0 <= b1 || t1 <= t0 {
        return None;
    }
    let per_ms = (b0 - b1) as f64 / (t1 - t0) as f64;
    Some((
        (per_ms * 1_000.0).round() as u64,
        (b1 as f64 / per_ms).round() as u64,
    ))
}

/// A conflict detected or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that saw it.
    pub region: String,
    /// Entity class.
    pub class: String,
    /// Entity key.
    pub key: String,
    /// Conflict policy.
    pub policy: String,
    /// `lww_winner`, `fenced`, `merged`, `queued` or `resolved`.
    pub outcome: String,
    /// From the conflict's start to its resolution here (ms); for `queued`, 0.
    pub resolution_ms: u64,
}

/// A clock offset estimate between two regions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockEvent {
    /// When (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region that measured.
    pub region: String,
    /// The other region.
    pub peer: String,
    /// Peer clock minus local clock (ms).
    pub offset_ms: i64,
    /// Round trip of the best sample (ms).
    pub rtt_ms: u64,
}

/// The sending side of the telemetry channel.
#[derive(Clone, Debug)]
pub struct Telemetry {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl Telemetry {
    /// A channel holding at most `capacity` events.
    pub fn channel(capacity: usize) -> (Telemetry, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Telemetry {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Sends an event, or drops and counts it if the channel is full.
    pub fn emit(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an event dropped further down (a subscriber that was behind).
    pub fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Percentiles of a histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// A latency histogram (values in any unit, up to one hour in µs).
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"))
    }
}

impl Hist {
    /// Records a value.
    pub fn record(&mut self, v: u64) {
        self.0.saturating_record(v.max(1));
    }

    /// Percentiles.
    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50: self.0.value_at_quantile(0.50),
            p90: self.0.value_at_quantile(0.90),
            p99: self.0.value_at_quantile(0.99),
            max: self.0.max(),
        }
    }
}

/// Live counters of a region, built from its events.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
    /// The region whose stats these are: its own samples of a silent
    /// peer's lag behind it are not replication into it.
    region: String,
}

#[derive(Debug, Default)]
struct StatsInner {
    requests: BTreeMap<(String, u16), u64>,
    request_latency_us: BTreeMap<String, Hist>,
    incoming: BTreeMap<String, Incoming>,
    conflicts: BTreeMap<(String, String, String), u64>,
    resolution_ms: BTreeMap<String, Hist>,
    clock: BTreeMap<String, ClockEvent>,
    events_seen: u64,
}

#[derive(Debug, Default)]
struct Incoming {
    batches: u64,
    heartbeats: u64,
    applied_ops: u64,
    last_lag_ms: u64,
    backlog_ops: u64,
    drain_ops_per_s: Option<u64>,
    eta_ms: Option<u64>,
    entry_lag_ms: Hist,
}

/// Replication from one origin into this region, as served by `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IncomingStats {
    /// Batches applied.
    pub batches: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Entries applied.
    pub applied_ops: u64,
    /// Lag at the last sample (ms).
    pub last_lag_ms: u64,
    /// Backlog at the origin when it last sent (entries).
    pub backlog_ops: u64,
    /// While that backlog drains: entries per second it shrinks by.
    #[serde(default)]
    pub drain_ops_per_s: Option<u64>,
    /// While that backlog drains: when it will be empty at that rate (ms).
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// Per-entry lag, write at origin to apply here (ms).
    pub entry_lag_ms: Summary,
}

/// Counts of conflicts by class, policy and outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConflictCount {
    /// Entity class.
    pub class: String,
    /// Conflict policy.
    pub policy: String,
    /// Outcome.
    pub outcome: String,
    /// How many.
    pub count: u64,
}

/// Counts of requests by operation and status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestCount {
    /// Operation.
    pub op: String,
    /// HTTP status.
    pub status: u16,
    /// How many.
    pub count: u64,
}

/// What the event stream has shown so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventStats {
    /// Requests by operation and status.
    pub requests: Vec<RequestCount>,
    /// Request latency by operation (µs).
    pub request_latency_us: BTreeMap<String, Summary>,
    /// Replication into this region, by origin.
    pub incoming: BTreeMap<String, IncomingStats>,
    /// Conflicts by class, policy and outcome.
    pub conflicts: Vec<ConflictCount>,
    /// Conflict resolution time by class (ms).
    pub resolution_ms: BTreeMap<String, Summary>,
    /// Latest clock offset estimate by peer.
    pub clock: BTreeMap<String, ClockEvent>,
    /// Events consumed.
    pub events_seen: u64,
}

impl Stats {
    /// The counters of region `region`.
    pub fn new(region: &str) -> Stats {
        Stats {
            region: region.to_owned(),
            ..Stats::default()
        }
    }

    /// Takes one event into the counters.
    pub fn observe(&self, event: &Event) {
        let mut s = self.inner.lock().expect("stats lock");
        s.events_seen += 1;
        match event {
            Event::Request(r) => {
                *s.requests.entry((r.op.clone(), r.status)).or_insert(0) += 1;
                s.request_latency_us
                    .entry(r.op.clone())
                    .or_default()
                    .record(r.latency_us);
            }
            Event::Replication(r) if r.src == self.region => {}
            Event::Replication(r) => {
                let inc = s.incoming.entry(r.src.clone()).or_default();
                inc.heartbeats += r.heartbeats;
                inc.batches += r.batches;
                inc.applied_ops += r.applied_ops;
                inc.last_lag_ms = r.lag_ms;
                inc.backlog_ops = r.backlog_ops;
                inc.drain_ops_per_s = r.drain_ops_per_s;
                inc.eta_ms = r.eta_ms;
            }
            Event::Conflict(c) => {
                *s.conflicts
                    .entry((c.class.clone(), c.policy.clone(), c.outcome.clone()))
                    .or_insert(0) += 1;
                if c.outcome != "queued" {
                    s.resolution_ms
                        .entry(c.class.clone())
                        .or_default()
                        .record(c.resolution_ms);
                }
            }
            Event::Clock(c) => {
                s.clock.insert(c.peer.clone(), c.clone());
            }
            Event::Failover(_)
            | Event::Probe(_)
            | Event::Audit(_)
            | Event::Divergence(_)
            | Event::Rollout(_)
            | Event::Cache(_)
            | Event::Traffic(_) => {}
        }
    }

    /// Records the lag of individual applied entries from `origin` (ms).
    pub fn record_entry_lags(&self, origin: &str, lags_ms: &[u64]) {
        let mut s = self.inner.lock().expect("stats lock");
        let inc = s.incoming.entry(origin.to_owned()).or_default();
        for &lag in lags_ms {
            inc.entry_lag_ms.record(lag);
        }
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> EventStats {
        let s = self.inner.lock().expect("stats lock");
        EventStats {
            requests: s
                .requests
                .iter()
                .map(|((op, status), count)| RequestCount {
                    op: op.clone(),
                    status: *status,
                    count: *count,
                })
                .collect(),
            request_latency_us: s
                .request_latency_us
                .iter()
                .map(|(k, h)| (k.clone(), h.summary()))
                .collect(),
            incoming: s
                .incoming
                .iter()
                .map(|(k, i)| {
                    (
                        k.clone(),
                        IncomingStats {
                            batches: i.batches,
                            heartbeats: i.heartbeats,
                            applied_ops: i.applied_ops,
                            last_lag_ms: i.last_lag_ms,
                            backlog_ops: i.backlog_ops,
                            drain_ops_per_s: i.drain_ops_per_s,
                            eta_ms: i.eta_ms,
                            entry_lag_ms: i.entry_lag_ms.summary(),
                        },
                    )
                })
                .collect(),
            conflicts: s
                .conflicts
                .iter()
                .map(|((class, policy, outcome), count)| ConflictCount {
                    class: class.clone(),
                    policy: policy.clone(),
                    outcome: outcome.clone(),
                    count: *count,
                })
                .collect(),
            resolution_ms: s
                .resolution_ms
                .iter()
                .map(|(k, h)| (k.clone(), h.summary()))
                .collect(),
            clock: s.clock.clone(),
            events_seen: s.events_seen,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_drain_is_measured_from_the_backlogs_peak() {
        // Nothing to drain, never shrinking, or a single sample: no figure.
        assert_eq!(drain_estimate(&[]), None);
        assert_eq!(drain_estimate(&[(0, 0), (1_000, 0)]), None);
        assert_eq!(drain_estimate(&[(0, 500), (1_000, 900)]), None);
        // Empty before the outage, 12,000 when the peer is back, then
        // 2,000 a second less: 6,000 left after 3 s, 3 s to go.
        let s = [
            (0, 0),
            (1_000, 0),
            (2_000, 12_000),
            (3_000, 10_000),
            (5_000, 6_000),
        ];
        assert_eq!(drain_estimate(&s), Some((2_000, 3_000)));
        // The peak is looked for within the window only.
        let s = [
            (0, 90_000),
            (DRAIN_WINDOW_MS + 1_000, 4_000),
            (DRAIN_WINDOW_MS + 2_000, 3_000),
        ];
        assert_eq!(drain_estimate(&s), Some((1_000, 3_000)));
    }

    use super::*;

    #[test]
    fn full_channel_drops_and_counts_without_blocking() {
        let (t, mut rx) = Telemetry::channel(2);
        for i in 0..5 {
            t.emit(Event::Clock(ClockEvent {
                ts_us: i,
                region: "a".into(),
                peer: "b".into(),
                offset_ms: 0,
                rtt_ms: 1,
            }));
        }
        assert_eq!(t.dropped(), 3);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn histogram_summary() {
        let mut h = Hist::default();
        for v in 1..=100 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((49..=51).contains(&s.p50), "{s:?}");
        assert!((98..=100).contains(&s.p99), "{s:?}");
    }
}
