//! The shipper's driver: one task per peer that does what its
//! [`ShipperMachine`] decides — reads the log, calls the peer with a
//! timeout, waits for answers, timers and new heads, backs off — and
//! publishes the outcome: the peer's watermarks, its counters, its clock
//! offset (as telemetry), and an anti-entropy mark for the writer to keep.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use parallax_core::clock::Clock;
use parallax_core::config::Config;
use parallax_core::protocol::LogEntry;
use parallax_core::protocol::{PeerReply, PeerRequest, PeerResponse, ReplicateBatch};
use parallax_core::telemetry::{ClockEvent, Event, Telemetry};
use parallax_core::transport::Transport;
use parallax_core::worker::Worker;
use tokio::sync::watch;
use tokio::time::Instant;

use super::pace::Pace;
use super::peers::PeerState;
use super::shipper::{Action, Limits, Reply, Shipment, ShipperMachine, Span, View};
use super::{Head, Replication};
use crate::command::Command;

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

/// What one shipment came back with.
struct Shipped {
    /// First and last sequence of the batch (`last < first` for a heartbeat).
    first: u64,
    last: u64,
    t0_us: u64,
    t1_us: u64,
    result: Result<PeerReply, String>,
}

impl Shipper {
    /// Ships until the worker is told to stop: keeps up to
    /// `max_inflight_batches` batches in flight (the peer applies them in
    /// order), a heartbeat when idle, and on any failure starts again from
    /// the peer's watermark after a backoff. Each answer is a run of the
    /// worker (a failure its error); it is idle while nothing is in flight.
    pub(crate) async fn run(self, worker: Worker) {
        let mut shutdown = worker.stop_signal();
        let cfg = &self.config.replication;
        let timeout = Duration::from_millis(cfg.peer_timeout_ms);
        let state = self
            .repl
            .peer(&self.peer)
            .expect("shipper for a known peer");
        let mut machine =
            ShipperMachine::new(Limits::new(cfg), state.acked(), state.durable(), self.seed)
                .with_hole(state.needs_anti_entropy());
        let mut head_rx = self.repl.subscribe_head();
        let start = Instant::now();
        let mut inflight: FuturesUnordered<BoxFuture<'static, Shipped>> = FuturesUnordered::new();
        let mut last_clock_event_ms = 0u64;
        let mut pace = Pace::new(cfg.catchup_max_ops_per_sec);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let view = self.view(&mut head_rx, state);
            // Catching up (more than a batch behind): at the catch-up pace.
            let behind = view.head.saturating_sub(machine.acked());
            let catching_up = behind > cfg.batch_max_ops as u64;
            let held = catching_up
                .then(|| pace.wait_until(start.elapsed()))
                .flatten();
            let (until, on_new_head) = match held {
                Some(until) => (Some(until), false),
                None => {
                    let mut entries = Vec::new();
                    let action = machine.on_tick(start.elapsed(), &view, |from, upto| {
                        entries = self.read_log(from, upto);
                        span_of(&entries)
                    });
                    state.publish(machine.acked(), machine.durable());
                    match action {
                        Action::DropBacklog { backlog } => {
                            tracing::warn!(region = %self.me, peer = %self.peer, backlog, "Peer is past the backlog cap; dropping its log and marking it for anti-entropy.");
                            self.mark_anti_entropy(state).await;
                            continue;
                        }
                        Action::Send(shipment) => {
                            if let Some((from, to)) = shipment.missing {
                                tracing::warn!(region = %self.me, peer = %self.peer, from, to, "Log entries the peer needs were already removed; marking it for anti-entropy.");
                                self.mark_anti_entropy(state).await;
                            }
                            if catching_up {
                                pace.spend(start.elapsed(), entries.len() as u64);
                            }
                            inflight.push(self.ship(shipment, entries, timeout));
                            continue;
                        }
                        Action::Wait { until, on_new_head } => (until, on_new_head),
                    }
                }
            };
            if inflight.is_empty() {
                worker.idle();
            } else {
                worker.busy();
            }
            let wake = until.map(|u| start + u);
            let shipped = tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => done,
                _ = head_rx.changed(), if on_new_head => continue,
                _ = tokio::time::sleep_until(wake.unwrap_or(start)), if wake.is_some() => continue,
                _ = shutdown.changed() => break,
            };
            let Shipped {
                first,
                last,
                t0_us,
                t1_us,
                result,
            } = shipped;
            let outcome = result.and_then(|reply| {
                self.repl.answered(&self.peer, t0_us, reply.lease, t1_us);
                let rtt_us = t1_us.saturating_sub(t0_us);
                let offset_us = (reply.wall_ms * 1_000) as i64 - ((t0_us + t1_us) / 2) as i64;
                state.add_offset_sample(rtt_us, offset_us);
                match reply.result {
                    Ok(PeerResponse::Replicated(ack)) => Ok(ack),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.error.detail),
                }
            });
            let reply = match &outcome {
                Ok(ack) => Reply::Acked {
                    acked: ack.acked,
                    durable: ack.durable,
                },
                Err(_) => Reply::Failed,
            };
            worker.ran(outcome.as_ref().map(|_| ()));
            let back_off = machine.on_reply(start.elapsed(), first, last, reply);
            state.publish(machine.acked(), machine.durable());
            match outcome {
                Ok(ack) => {
                    self.repl.learn_applied(&self.peer, &ack.applied);
                    self.repl.notify_acked();
                    state.count_shipped(first, last);
                    state.count_success(t1_us);
                    let now_ms = t1_us / 1_000;
                    if now_ms.saturating_sub(last_clock_event_ms) >= 1_000 {
                        last_clock_event_ms = now_ms;
                        self.emit_clock_offset(state, t1_us);
                    }
                }
                Err(why) => {
                    let streak = state.count_failure(why.clone());
                    if streak == 1 || streak.is_multiple_of(100) {
                        tracing::warn!(region = %self.me, peer = %self.peer, failures = streak, error = %why, "Shipping to peer failed; retrying with backoff.");
                    }
                }
            }
            if let Some(off) = back_off {
                // Let what is in flight finish, then start again from what
                // the peer has acknowledged.
                let pause = tokio::time::sleep_until(start + off.until);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        _ = shutdown.changed() => break,
                        Some(_) = inflight.next(), if !inflight.is_empty() => {}
                    }
                }
                inflight.clear();
            }
        }
    }

    /// The node as the machine sees it. The wall time is read before the
    /// head: everything acknowledged before it is at or below that head.
    fn view(&self, head_rx: &mut watch::Receiver<Head>, state: &PeerState) -> View {
        let closed_ms = self.clock.now_ms();
        let head = head_rx.borrow_and_update().seq;
        View {
            head,
            closed_ms,
            durable_wanted: self.repl.durable_wanted(),
            marked: state.needs_anti_entropy(),
        }
    }

    fn read_log(&self, from: u64, upto: u64) -> Vec<LogEntry> {
        let cfg = &self.config.replication;
        match self
            .repl
            .read_log(from, upto, cfg.batch_max_ops, cfg.batch_max_bytes)
        {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(region = %self.me, error = %e, "Cannot read the replication log.");
                Vec::new()
            }
        }
    }

    fn emit_clock_offset(&self, state: &PeerState, ts_us: u64) {
        if let Some((rtt_us, off_us)) = state.best_offset() {
            self.telemetry.emit(Event::Clock(ClockEvent {
                ts_us,
                region: self.me.clone(),
                peer: self.peer.clone(),
                offset_ms: off_us / 1_000,
                rtt_ms: rtt_us / 1_000,
            }));
        }
    }

    async fn mark_anti_entropy(&self, state: &PeerState) {
        state.set_needs_anti_entropy(true);
        let _ = self
            .writer
            .send(Command::MarkAntiEntropy(self.peer.clone(), true))
            .await;
    }

    /// Sends a batch; the future ends with its answer or its failure.
    fn ship(
        &self,
        s: Shipment,
        entries: Vec<LogEntry>,
        timeout: Duration,
    ) -> BoxFuture<'static, Shipped> {
        let batch = ReplicateBatch {
            durable_now: s.durable_now,
            origin: self.me.clone(),
            head: s.head,
            closed_ms: s.closed_ms,
            entries,
            gap_acknowledged: s.gap_acknowledged,
            applied: self.repl.applied_vector(&self.me),
            backlog_bytes: s.backlog_ops() * self.repl.avg_entry_bytes(),
        };
        let call = self
            .transport
            .call(&self.peer, PeerRequest::Replicate(batch));
        let clock = Arc::clone(&self.clock);
        let (first, last) = (s.first, s.last);
        Box::pin(async move {
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
        })
    }
}

/// The span of the entries read, if any.
fn span_of(entries: &[LogEntry]) -> Option<Span> {
    Some(Span {
        first: entries.first()?.seq,
        last: entries.last()?.seq,
        last_wall_ms: entries.last()?.wall_ms,
    })
}
