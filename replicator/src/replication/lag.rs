//! Replication lag, measured at the destination: per origin, how old the
//! newest write or heartbeat applied here is, sampled every heartbeat
//! interval whether or not anything arrived, so lag keeps growing while a
//! region is frozen or cut off; and, for a peer that has stopped
//! answering, how far it trails this region since its last answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parallax_core::clock::Clock;
use parallax_core::telemetry::{
    DRAIN_WINDOW_MS, Event, ReplicationEvent, Telemetry, drain_estimate,
};
use parallax_core::worker::Worker;

use super::Replication;

/// Replication from one origin into this region: what the lag sampler
/// reads, and what arrived since its previous sample.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Arrivals {
    /// Origin wall time (ms) of the newest write or heartbeat applied.
    fresh_ms: u64,
    batches: u64,
    heartbeats: u64,
    applied_ops: u64,
    backlog_ops: u64,
    backlog_bytes: u64,
}

impl Replication {
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
        let closed = self.closed_from(origin);
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
        Some(parallax_core::clock::lag_ms(
            now_ms,
            fresh,
            self.offset_ms(origin),
        ))
    }

    /// Estimated clock offset of `peer` (its clock minus ours, ms).
    pub(crate) fn offset_ms(&self, peer: &str) -> i64 {
        self.peers
            .get(peer)
            .and_then(|p| p.best_offset())
            .map_or(0, |(_, off_us)| off_us / 1_000)
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
        let avg = self.avg_entry_bytes();
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
                ..ReplicationEvent::default()
            });
            let last_ok_ms = self.last_ok_or_start_us(state) / 1_000;
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
}

/// Samples, every heartbeat interval, how far this region trails each
/// peer and how far each silent peer trails it, and emits the samples as
/// `replication_lag` rows, whether or not anything arrived.
pub(crate) struct LagSampler {
    pub(crate) me: String,
    pub(crate) repl: Arc<Replication>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) telemetry: Telemetry,
    pub(crate) every: Duration,
}

impl LagSampler {
    /// Samples until the worker is told to stop; each sample is a run.
    pub(crate) async fn run(self, mut w: Worker) {
        let silent_after_ms = 3 * self.every.as_millis() as u64;
        let mut tick = tokio::time::interval(self.every);
        // Per origin, the backlog it reported at each sample: its drain.
        let mut backlogs: BTreeMap<String, VecDeque<(u64, u64)>> = BTreeMap::new();
        while w.next_tick(&mut tick).await {
            let (now_ms, now_us) = (self.clock.now_ms(), self.clock.now_us());
            for mut e in self
                .repl
                .sample_lag(&self.me, now_ms, now_us, silent_after_ms)
            {
                if e.dst == self.me {
                    let seen = backlogs.entry(e.src.clone()).or_default();
                    seen.push_back((now_ms, e.backlog_ops));
                    while seen
                        .front()
                        .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > DRAIN_WINDOW_MS)
                    {
                        seen.pop_front();
                    }
                    if let Some((rate, eta)) = drain_estimate(seen.make_contiguous()) {
                        e.drain_ops_per_s = Some(rate);
                        e.eta_ms = Some(eta);
                    }
                }
                self.telemetry.emit(Event::Replication(e));
            }
            w.ran(Ok::<(), String>(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Meta;

    fn lag(samples: &[ReplicationEvent], src: &str, dst: &str) -> Option<u64> {
        samples
            .iter()
            .find(|e| e.src == src && e.dst == dst)
            .map(|e| e.lag_ms)
    }

    #[test]
    fn lag_grows_while_nothing_arrives_and_falls_when_something_does() {
        let peers = ["eu".to_owned()];
        let r = Replication::new(&Meta::default(), &peers, 1_000_000, 4_000);
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
        let r = Replication::new(&Meta::default(), &peers, 1_000_000, 4_000);
        let s = r.sample_lag("us", 1_002_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), None, "not silent long enough yet");
        r.peers["eu"].count_success(1_002_500 * 1_000);
        let s = r.sample_lag("us", 1_005_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), None, "answered 2.5 s ago");
        let s = r.sample_lag("us", 1_006_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), Some(3_500));
        let s = r.sample_lag("us", 1_009_000, 0, 3_000);
        assert_eq!(lag(&s, "us", "eu"), Some(6_500));
    }
}
