//! The shipper's decisions for one peer, without I/O: which batch goes out
//! next, when a heartbeat is due, how many batches may be in flight, what a
//! peer's answer means, and how long to back off after a failure.
//!
//! [`ShipperMachine`] takes events — a tick (a timer, a new head, an answer
//! handled: "anything changed, act if you can"), the span of log entries
//! read for it, the answer to a batch — and returns [`Action`]s. Time is a
//! monotonic [`Duration`] passed in, the head and the quorum wish come in a
//! [`View`], and the jitter comes from a seeded RNG it owns, so the model
//! tests drive it over many seeds without sockets or sleeps. The driver
//! ([`super::ship`]) reads the log, calls the peer, publishes the
//! watermarks and counts.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use parallax_core::config::ReplicationConfig;

/// How long a batch waits for its answer before the shipper sends the next
/// one anyway.
pub(crate) const PIPELINE_AFTER: Duration = Duration::from_millis(5);

/// The `[replication]` settings the shipper decides by.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// A heartbeat goes out when nothing was sent for this long.
    pub(crate) heartbeat: Duration,
    /// Most entries in one batch.
    pub(crate) batch_max_ops: usize,
    /// Most batches in flight.
    pub(crate) window: usize,
    /// A peer further behind than this loses its log.
    pub(crate) max_backlog_ops: u64,
    /// First backoff after a failure (ms).
    pub(crate) retry_initial_ms: u64,
    /// Longest backoff before jitter (ms).
    pub(crate) retry_max_ms: u64,
}

impl Limits {
    pub(crate) fn new(cfg: &ReplicationConfig) -> Limits {
        Limits {
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            batch_max_ops: cfg.batch_max_ops,
            window: cfg.max_inflight_batches.max(1),
            max_backlog_ops: cfg.max_backlog_ops,
            retry_initial_ms: cfg.retry_initial_ms,
            retry_max_ms: cfg.retry_max_ms,
        }
    }
}

/// What the shipper is told about the rest of the node when it acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Sequence of the latest local write.
    pub(crate) head: u64,
    /// Wall time (ms) read just before `head`: every write acknowledged
    /// before it is at or below `head`.
    pub(crate) closed_ms: u64,
    /// A quorum write waits for the peer to hold this sequence durably.
    pub(crate) durable_wanted: u64,
    /// The peer is already marked for anti-entropy.
    pub(crate) marked: bool,
}

/// The log entries read for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// Sequence of the first entry.
    pub(crate) first: u64,
    /// Sequence of the last entry.
    pub(crate) last: u64,
    /// Origin wall time (ms) of the last entry.
    pub(crate) last_wall_ms: u64,
}

/// A batch to send: the entries `first..=last` just read, or none
/// (`last < first`) for a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shipment {
    /// First sequence (the one after `last` for a heartbeat).
    pub(crate) first: u64,
    /// Last sequence.
    pub(crate) last: u64,
    /// The head when it was read.
    pub(crate) head: u64,
    /// The batch's closed timestamp (see [`parallax_core::protocol::ReplicateBatch`]).
    pub(crate) closed_ms: u64,
    /// The peer should apply it even though what precedes it is missing.
    pub(crate) gap_acknowledged: bool,
    /// The peer should checkpoint at once (a quorum write waits).
    pub(crate) durable_now: bool,
    /// Entries the peer needs that are gone from the log (`from..=to`):
    /// mark the peer for anti-entropy before sending.
    pub(crate) missing: Option<(u64, u64)>,
}

impl Shipment {
    /// No entries: a heartbeat.
    #[cfg(test)]
    pub(crate) fn is_heartbeat(&self) -> bool {
        self.last < self.first
    }

    /// Entries still to ship after this one.
    pub(crate) fn backlog_ops(&self) -> u64 {
        self.head.saturating_sub(self.last)
    }
}

/// What the shipper wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The peer is past the backlog cap: its log is dropped (everything up
    /// to the head counts as acknowledged). Mark it for anti-entropy.
    DropBacklog {
        /// How far behind it was.
        backlog: u64,
    },
    /// Send this batch.
    Send(Shipment),
    /// Nothing to do now: tick again on an answer, on a new head if
    /// `on_new_head`, or at `until`.
    Wait {
        until: Option<Duration>,
        on_new_head: bool,
    },
}

/// A peer's answer to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// It applied its log up to `acked` and holds up to `durable` durably.
    Acked { acked: u64, durable: u64 },
    /// The call failed: unreachable, timed out, or refused.
    Failed,
}

/// After a failure: drop every answer still in flight and tick again at
/// `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackOff {
    /// When to start again.
    pub(crate) until: Duration,
    /// The pause chosen (backoff plus jitter).
    pub(crate) pause: Duration,
}

/// Shipping to one peer, as a state machine.
#[derive(Debug)]
pub(crate) struct ShipperMachine {
    limits: Limits,
    /// Last sequence the peer acknowledged.
    acked: u64,
    /// Last sequence the peer holds durably.
    durable: u64,
    /// Last sequence sent (in flight or acknowledged).
    sent: u64,
    /// The peer's watermark is below entries dropped at the backlog cap;
    /// batches tell it to accept the hole until one is acknowledged whole.
    hole: bool,
    /// When each batch in flight was sent, oldest first.
    in_flight: VecDeque<Duration>,
    last_sent: Option<Duration>,
    backoff_ms: u64,
    paused_until: Option<Duration>,
    rng: SmallRng,
}

impl ShipperMachine {
    /// A shipper starting from the peer's watermarks as stored.
    pub(crate) fn new(limits: Limits, acked: u64, durable: u64, seed: u64) -> ShipperMachine {
        ShipperMachine {
            backoff_ms: limits.retry_initial_ms,
            limits,
            acked,
            durable,
            sent: acked,
            hole: false,
            in_flight: VecDeque::new(),
            last_sent: None,
            paused_until: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Starts with the peer's watermark known to be below entries this
    /// log no longer has (`hole`): the peer is marked for anti-entropy (its
    /// log was dropped at the backlog cap before a restart, or this region
    /// was restored from a backup and its log restarted far past it).
    /// Batches then tell the peer to accept the gap, and its old watermark
    /// does not take the log back (which would drop it at the cap again).
    pub(crate) fn with_hole(mut self, hole: bool) -> ShipperMachine {
        self.hole = hole;
        self
    }

    /// Last sequence the peer acknowledged (or that was dropped for it).
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Last sequence the peer holds durably (or that was dropped for it).
    pub(crate) fn durable(&self) -> u64 {
        self.durable
    }

    /// Batches sent and not answered.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Decides the next step once anything changed: the window has room,
    /// the head moved, a timer fired, an answer was handled. `read` reads
    /// the log `from..=upto` (within the batch limits) and returns the span
    /// it got, `None` if nothing; it is called at most once.
    ///
    /// A second batch goes out only when the first has been waiting
    /// [`PIPELINE_AFTER`] (a long round trip to hide) or enough has piled
    /// up; on a fast link one batch at a time batches better.
    pub(crate) fn on_tick(
        &mut self,
        now: Duration,
        view: &View,
        read: impl FnOnce(u64, u64) -> Option<Span>,
    ) -> Action {
        if let Some(until) = self.paused_until {
            if now < until {
                return Action::Wait {
                    until: Some(until),
                    on_new_head: false,
                };
            }
            self.paused_until = None;
        }
        if self.in_flight.len() >= self.limits.window {
            return self.wait(now, view);
        }
        let backlog = view.head.saturating_sub(self.acked);
        if backlog > self.limits.max_backlog_ops {
            self.acked = view.head;
            self.durable = view.head;
            self.sent = view.head;
            // The peer's watermark is below the dropped entries: the next
            // batches tell it to accept the hole.
            self.hole = true;
            return Action::DropBacklog { backlog };
        }
        self.sent = self.sent.max(self.acked);
        let pending = view.head.saturating_sub(self.sent);
        if pending < (self.limits.batch_max_ops as u64 / 4).max(1)
            && self
                .in_flight
                .front()
                .is_some_and(|t| now.saturating_sub(*t) < PIPELINE_AFTER)
        {
            return self.wait(now, view);
        }
        let span = if self.sent < view.head {
            read(self.sent + 1, view.head)
        } else {
            None
        };
        let durable_wanted = view.durable_wanted > self.durable && self.acked > self.durable;
        let heartbeat_due = self
            .last_sent
            .is_none_or(|t| now.saturating_sub(t) >= self.limits.heartbeat);
        if span.is_none() && !(self.in_flight.is_empty() && (heartbeat_due || durable_wanted)) {
            return self.wait(now, view);
        }
        let truncated = span.is_some_and(|s| s.first > self.sent + 1);
        let (first, last) = span.map_or((self.sent + 1, self.sent), |s| (s.first, s.last));
        let shipment = Shipment {
            first,
            last,
            head: view.head,
            // Everything acknowledged before `closed_ms` is at or below the
            // head: it holds for the batch that reaches the head.
            closed_ms: if last >= view.head {
                view.closed_ms
            } else {
                span.map_or(0, |s| s.last_wall_ms)
            },
            gap_acknowledged: truncated || self.hole,
            durable_now: view.durable_wanted > self.durable,
            missing: (truncated && !view.marked).then(|| (self.sent + 1, first - 1)),
        };
        self.sent = last;
        self.last_sent = Some(now);
        self.in_flight.push_back(now);
        Action::Send(shipment)
    }

    /// What to wait for when nothing goes out now.
    fn wait(&self, now: Duration, view: &View) -> Action {
        let room = self.in_flight.len() < self.limits.window;
        let until = match self.in_flight.front() {
            None => Some(self.last_sent.map_or(now, |t| t + self.limits.heartbeat)),
            Some(oldest) if room && view.head > self.sent => Some(*oldest + PIPELINE_AFTER),
            Some(_) => None,
        };
        Action::Wait {
            until,
            on_new_head: room,
        }
    }

    /// Takes the answer to the batch `first..=last` (answers to batches in
    /// flight can arrive in any order). On a failure, returns how long to
    /// back off; every batch still in flight is then forgotten, and
    /// shipping starts again from what the peer acknowledged.
    pub(crate) fn on_reply(
        &mut self,
        now: Duration,
        first: u64,
        last: u64,
        reply: Reply,
    ) -> Option<BackOff> {
        self.in_flight.pop_front();
        match reply {
            Reply::Acked { acked, durable } => {
                if last >= first && acked >= last {
                    self.hole = false;
                }
                if acked + 1 < first && !self.hole {
                    // The peer lacks what precedes this batch (it
                    // restarted from a checkpoint): start over from there.
                    self.acked = acked;
                } else {
                    self.acked = self.acked.max(acked);
                }
                if !self.hole {
                    self.durable = durable.min(self.acked);
                }
                if acked < last && !self.hole {
                    // The peer did not take (all of) it: resend from its watermark.
                    self.sent = self.sent.min(acked);
                }
                self.backoff_ms = self.limits.retry_initial_ms;
                None
            }
            Reply::Failed => {
                let jitter = self.rng.random_range(0..=self.backoff_ms / 2);
                let pause = Duration::from_millis(self.backoff_ms + jitter);
                self.backoff_ms = (self.backoff_ms * 2).min(self.limits.retry_max_ms);
                self.in_flight.clear();
                self.sent = self.acked;
                self.paused_until = Some(now + pause);
                Some(BackOff {
                    until: now + pause,
                    pause,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            heartbeat: Duration::from_millis(1_000),
            batch_max_ops: 8,
            window: 2,
            max_backlog_ops: 100,
            retry_initial_ms: 10,
            retry_max_ms: 80,
        }
    }

    fn view(head: u64) -> View {
        View {
            head,
            closed_ms: 7,
            ..View::default()
        }
    }

    fn read_all(from: u64, upto: u64) -> Option<Span> {
        Some(Span {
            first: from,
            last: upto.min(from + 7),
            last_wall_ms: 5,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sent(action: Action) -> Shipment {
        match action {
            Action::Send(s) => s,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn an_idle_peer_gets_a_heartbeat_at_once_and_then_every_interval() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 1);
        let hb = sent(m.on_tick(ms(0), &view(0), read_all));
        assert!(hb.is_heartbeat());
        assert_eq!(hb.closed_ms, 7, "a heartbeat closes up to now");
        assert_eq!(
            m.on_reply(
                ms(1),
                hb.first,
                hb.last,
                Reply::Acked {
                    acked: 0,
                    durable: 0
                }
            ),
            None
        );
        assert_eq!(
            m.on_tick(ms(1), &view(0), read_all),
            Action::Wait {
                until: Some(ms(1_000)),
                on_new_head: true
            }
        );
        assert!(sent(m.on_tick(ms(1_000), &view(0), read_all)).is_heartbeat());
    }

    #[test]
    fn a_second_batch_waits_for_the_pipeline_delay_unless_enough_piled_up() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 1);
        let b = sent(m.on_tick(ms(0), &view(1), read_all));
        assert_eq!((b.first, b.last), (1, 1));
        // One more entry: not worth a second batch yet.
        assert_eq!(
            m.on_tick(ms(1), &view(2), read_all),
            Action::Wait {
                until: Some(PIPELINE_AFTER),
                on_new_head: true
            }
        );
        // After the pipeline delay it goes.
        let b = sent(m.on_tick(PIPELINE_AFTER, &view(2), read_all));
        assert_eq!((b.first, b.last), (2, 2));
        // The window (2) is full.
        assert_eq!(
            m.on_tick(ms(20), &view(30), read_all),
            Action::Wait {
                until: None,
                on_new_head: false
            }
        );
    }

    #[test]
    fn a_refused_batch_is_sent_again_from_the_peers_watermark() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 1);
        let b = sent(m.on_tick(ms(0), &view(8), read_all));
        assert_eq!((b.first, b.last), (1, 8));
        m.on_reply(
            ms(1),
            1,
            8,
            Reply::Acked {
                acked: 3,
                durable: 0,
            },
        );
        assert_eq!(m.acked(), 3);
        let b = sent(m.on_tick(ms(1), &view(8), read_all));
        assert_eq!((b.first, b.last), (4, 8));
    }

    #[test]
    fn a_peer_restarted_from_a_checkpoint_is_shipped_from_there() {
        let mut m = ShipperMachine::new(limits(), 20, 20, 1);
        let hb = sent(m.on_tick(ms(0), &view(20), read_all));
        m.on_reply(
            ms(1),
            hb.first,
            hb.last,
            Reply::Acked {
                acked: 12,
                durable: 12,
            },
        );
        assert_eq!((m.acked(), m.durable()), (12, 12));
        let b = sent(m.on_tick(ms(1), &view(20), read_all));
        assert_eq!(b.first, 13);
    }

    #[test]
    fn failures_back_off_doubling_with_jitter_and_reset_on_success() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 9);
        let mut pauses = Vec::new();
        let mut now = ms(0);
        for _ in 0..6 {
            let b = sent(m.on_tick(now, &view(3), read_all));
            let off = m.on_reply(now, b.first, b.last, Reply::Failed).unwrap();
            assert_eq!(m.in_flight(), 0);
            assert_eq!(
                m.on_tick(now, &view(3), read_all),
                Action::Wait {
                    until: Some(off.until),
                    on_new_head: false
                }
            );
            pauses.push(off.pause.as_millis() as u64);
            now = off.until;
        }
        let bases = [10, 20, 40, 80, 80, 80];
        for (p, b) in pauses.iter().zip(bases) {
            assert!((b..=b + b / 2).contains(p), "pause {p} for base {b}");
        }
        let b = sent(m.on_tick(now, &view(3), read_all));
        m.on_reply(
            now,
            b.first,
            b.last,
            Reply::Acked {
                acked: 3,
                durable: 0,
            },
        );
        let b = sent(m.on_tick(now + ms(2_000), &view(4), read_all));
        let off = m.on_reply(now, b.first, b.last, Reply::Failed).unwrap();
        assert!(off.pause <= ms(15), "back to the first delay: {off:?}");
    }

    #[test]
    fn a_peer_past_the_backlog_cap_loses_its_log_and_is_told_of_the_hole() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 1);
        assert_eq!(
            m.on_tick(ms(0), &view(150), read_all),
            Action::DropBacklog { backlog: 150 }
        );
        assert_eq!((m.acked(), m.durable()), (150, 150));
        let b = sent(m.on_tick(ms(0), &view(152), read_all));
        assert_eq!((b.first, b.last, b.gap_acknowledged), (151, 152, true));
        // A low answer does not take the dropped entries back.
        m.on_reply(
            ms(1),
            151,
            152,
            Reply::Acked {
                acked: 3,
                durable: 3,
            },
        );
        assert_eq!(m.acked(), 150);
        let b = sent(m.on_tick(ms(1), &view(153), read_all));
        assert_eq!((b.first, b.gap_acknowledged), (153, true));
        m.on_reply(
            ms(2),
            b.first,
            b.last,
            Reply::Acked {
                acked: 153,
                durable: 0,
            },
        );
        let b = sent(m.on_tick(ms(2), &view(154), read_all));
        assert!(
            !b.gap_acknowledged,
            "the hole closed once a batch was taken whole"
        );
    }

    #[test]
    fn a_peer_marked_at_start_is_told_of_the_hole_instead_of_losing_the_log_again() {
        // A region restored from a backup: its log restarted far past the
        // peer's watermark of it, and the peer is marked for anti-entropy.
        let mut m = ShipperMachine::new(limits(), 1_000_000, 1_000_000, 1).with_hole(true);
        let hb = sent(m.on_tick(ms(0), &view(1_000_000), read_all));
        m.on_reply(
            ms(1),
            hb.first,
            hb.last,
            Reply::Acked {
                acked: 300,
                durable: 300,
            },
        );
        assert_eq!(
            m.acked(),
            1_000_000,
            "an old watermark does not take the log back"
        );
        let b = sent(m.on_tick(ms(2), &view(1_000_002), read_all));
        assert_eq!(
            (b.first, b.last, b.gap_acknowledged),
            (1_000_001, 1_000_002, true)
        );
    }

    #[test]
    fn entries_gone_from_the_log_mark_the_peer_once_and_acknowledge_the_gap() {
        let mut m = ShipperMachine::new(limits(), 0, 0, 1);
        let truncated = |_from: u64, upto: u64| {
            Some(Span {
                first: 5,
                last: upto,
                last_wall_ms: 1,
            })
        };
        let b = sent(m.on_tick(ms(0), &view(6), truncated));
        assert_eq!(
            (b.first, b.gap_acknowledged, b.missing),
            (5, true, Some((1, 4)))
        );
        m.on_reply(ms(1), 5, 6, Reply::Failed);
        let marked = View {
            marked: true,
            ..view(6)
        };
        let b = sent(m.on_tick(ms(1_000), &marked, truncated));
        assert_eq!((b.gap_acknowledged, b.missing), (true, None));
    }

    #[test]
    fn a_quorum_write_asks_for_a_checkpoint_even_when_nothing_is_new() {
        let mut m = ShipperMachine::new(limits(), 5, 0, 1);
        let wanting = View {
            durable_wanted: 5,
            ..view(5)
        };
        let hb = sent(m.on_tick(ms(0), &view(5), read_all));
        m.on_reply(
            ms(1),
            hb.first,
            hb.last,
            Reply::Acked {
                acked: 5,
                durable: 0,
            },
        );
        let b = sent(m.on_tick(ms(2), &wanting, read_all));
        assert!(b.is_heartbeat() && b.durable_now);
    }
}
