//! The shipper's and the receiver's state machines against a model of the
//! log, the way Vector tests its disk buffer against a model: an origin
//! whose log grows over time, a receiver that applies batches through the
//! real checks ([`receive::admit`], [`receive::fresh`]), checkpoints and
//! may crash back to its checkpoint, and a network that drops, reorders and
//! duplicates batches and answers and fails calls, over many seeds. The
//! harness does what the driver ([`super::ship`]) does: ticks the machine
//! on a new head, at the time it asked for and after every answer, sends
//! what it decides, and drops every call in flight when it backs off.

use std::time::Duration;

use parallax_core::protocol::LogEntry;
use parallax_core::protocol::ReplicateBatch;
use proptest::prelude::*;

use super::receive::{self, Admit, Fresh, Here};
use super::shipper::{Action, Limits, Reply, Shipment, ShipperMachine, Span, View};

/// One thing that happens to the model.
#[derive(Clone, Debug)]
enum Op {
    /// The origin commits this many writes.
    Append(u64),
    /// This much time passes (ms).
    Advance(u64),
    /// The network hands a request to the receiver, twice if `twice`; the
    /// answer that travels back is the second one if `later`.
    Deliver {
        pick: usize,
        twice: bool,
        later: bool,
    },
    /// A call ends: with the receiver's answer, or failed if the receiver
    /// never had the request or `lose` (its answer was lost).
    Complete { pick: usize, lose: bool },
    /// The network loses a request.
    Lose { pick: usize },
    /// The receiver checkpoints.
    Checkpoint,
    /// The receiver crashes and comes back at its checkpoint.
    Crash,
    /// A quorum write asks for the head to be held durably.
    WantDurable,
}

/// What a run may do beyond dropping, reordering and duplicating.
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    /// The receiver may crash back to its checkpoint.
    crashes: bool,
    /// Every call is delivered and answered at once, in order.
    perfect: bool,
    /// Entries `1..=truncated` are gone from the origin's log.
    truncated: u64,
    /// The origin starts with this many entries.
    head: u64,
}

/// A request on the wire.
#[derive(Debug)]
struct Call {
    shipment: Shipment,
    entries: Vec<LogEntry>,
    /// The receiver's answer, once it handled the request.
    answer: Option<(u64, u64)>,
    lost: bool,
}

/// The receiving region.
#[derive(Debug, Default)]
struct ModelReceiver {
    /// Sequences applied, in the order applied (lost again by a crash).
    applied: Vec<u64>,
    watermark: u64,
    durable: u64,
    /// The highest watermark it ever had.
    highest: u64,
}

impl ModelReceiver {
    /// Handles a batch the way the receiving driver and the writer do;
    /// returns the answer (applied, durable).
    fn handle(&mut self, call: &Call, now_ms: u64) -> (u64, u64) {
        let s = &call.shipment;
        let batch = ReplicateBatch {
            origin: "eu".into(),
            head: s.head,
            closed_ms: s.closed_ms,
            entries: call.entries.clone(),
            gap_acknowledged: s.gap_acknowledged,
            applied: Default::default(),
            backlog_bytes: 0,
            durable_now: s.durable_now,
        };
        let here = Here {
            region: "us",
            sender_known: true,
            now_ms,
            max_offset_ms: 0,
            applied: self.watermark,
            durable: self.durable,
        };
        match receive::admit("eu", &batch, &here).expect("stamps are never ahead") {
            Admit::Heartbeat { checkpoint } => {
                if checkpoint {
                    self.durable = self.watermark;
                }
            }
            Admit::Apply { .. } => {
                if let Fresh::Apply(fresh) =
                    receive::fresh(self.watermark, batch.entries, batch.gap_acknowledged)
                {
                    for e in fresh {
                        assert!(
                            e.seq > self.watermark,
                            "{} applied again or out of order",
                            e.seq
                        );
                        self.applied.push(e.seq);
                        self.watermark = e.seq;
                    }
                }
                if batch.durable_now {
                    self.durable = self.watermark;
                }
            }
        }
        self.highest = self.highest.max(self.watermark);
        (self.watermark, self.durable)
    }

    fn crash(&mut self) {
        self.applied.retain(|s| *s <= self.durable);
        self.watermark = self.durable;
    }
}

/// The origin, its shipper as the driver runs it, the network and the receiver.
#[derive(Debug)]
struct World {
    mode: Mode,
    limits: Limits,
    now: Duration,
    head: u64,
    /// Origin wall time (ms) of each entry, by sequence - 1.
    walls: Vec<u64>,
    head_seen: u64,
    durable_wanted: u64,
    marked: bool,
    machine: ShipperMachine,
    /// The machine's last `Wait`: (until, on_new_head).
    wait: (Option<Duration>, bool),
    /// The driver sleeps (backoff) until then.
    paused_until: Option<Duration>,
    /// Calls in flight, oldest first.
    live: Vec<Call>,
    /// Requests still on the wire whose answers nobody waits for.
    zombies: Vec<Call>,
    rx: ModelReceiver,
    sends: Vec<(Duration, Shipment)>,
    /// Backlog caps hit: (backlog, head).
    drops: Vec<(u64, u64)>,
}

impl World {
    fn new(mode: Mode, limits: Limits, seed: u64) -> World {
        World {
            machine: ShipperMachine::new(limits.clone(), 0, 0, seed),
            mode,
            limits,
            now: Duration::ZERO,
            head: mode.head,
            walls: vec![0; mode.head as usize],
            head_seen: 0,
            durable_wanted: 0,
            marked: false,
            wait: (Some(Duration::ZERO), true),
            paused_until: None,
            live: Vec::new(),
            zombies: Vec::new(),
            rx: ModelReceiver::default(),
            sends: Vec::new(),
            drops: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.now.as_millis() as u64
    }

    /// Ticks the machine until it waits, sending what it decides.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let view = View {
                head: self.head,
                closed_ms: self.now_ms(),
                durable_wanted: self.durable_wanted,
                marked: self.marked,
            };
            self.head_seen = self.head;
            let (truncated, max_ops, walls) = (
                self.mode.truncated,
                self.limits.batch_max_ops as u64,
                &self.walls,
            );
            let action = self.machine.on_tick(self.now, &view, |from, upto| {
                let first = from.max(truncated + 1);
                let last = upto.min(first + max_ops - 1);
                (first <= last).then(|| Span {
                    first,
                    last,
                    last_wall_ms: walls[last as usize - 1],
                })
            });
            match action {
                Action::DropBacklog { backlog } => {
                    assert!(backlog > self.limits.max_backlog_ops);
                    self.marked = true;
                    self.drops.push((backlog, self.head));
                }
                Action::Send(s) => {
                    if s.missing.is_some() {
                        self.marked = true;
                    }
                    let entries = (s.first..=s.last)
                        .map(|seq| LogEntry {
                            seq,
                            class: "likes".into(),
                            key: format!("k{seq}"),
                            wall_ms: self.walls[seq as usize - 1],
                            entity: Vec::new(),
                        })
                        .collect();
                    self.sends.push((self.now, s.clone()));
                    self.live.push(Call {
                        shipment: s,
                        entries,
                        answer: None,
                        lost: false,
                    });
                    assert!(
                        self.live.len() <= self.limits.window,
                        "{} batches in flight, window {}",
                        self.live.len(),
                        self.limits.window
                    );
                }
                Action::Wait { until, on_new_head } => {
                    self.wait = (until, on_new_head);
                    return;
                }
            }
        }
        panic!("the shipper never settled");
    }

    /// Runs the driver until it waits for something from outside.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if let Some(until) = self.paused_until {
                if self.now < until {
                    return;
                }
                self.paused_until = None;
            }
            self.pump();
            if self.mode.perfect && !self.live.is_empty() {
                while !self.live.is_empty() {
                    self.deliver(0, false, false);
                    self.complete(0, false);
                }
                continue;
            }
            let due = self.wait.0.is_some_and(|t| t <= self.now);
            let new_head = self.wait.1 && self.head != self.head_seen;
            if !due && !new_head {
                return;
            }
        }
        panic!("the driver never settled");
    }

    fn deliver(&mut self, pick: usize, twice: bool, later: bool) {
        let now_ms = self.now_ms();
        let n = self.live.len() + self.zombies.len();
        if n == 0 {
            return;
        }
        let pick = pick % n;
        if pick >= self.live.len() {
            let call = self.zombies.remove(pick - self.live.len());
            self.rx.handle(&call, now_ms);
            return;
        }
        let call = &mut self.live[pick];
        if call.lost {
            return;
        }
        let first = self.rx.handle(call, now_ms);
        let second = twice.then(|| self.rx.handle(call, now_ms));
        call.answer = Some(if later {
            second.unwrap_or(first)
        } else {
            first
        });
    }

    /// Ends a call in flight; the driver hands its outcome to the machine.
    fn complete(&mut self, pick: usize, lose: bool) {
        if self.live.is_empty() || self.paused_until.is_some() {
            return;
        }
        let call = self.live.remove(pick % self.live.len());
        let reply = match call.answer {
            Some((acked, durable)) if !lose && !call.lost => Reply::Acked { acked, durable },
            _ => Reply::Failed,
        };
        let s = &call.shipment;
        if let Some(off) = self.machine.on_reply(self.now, s.first, s.last, reply) {
            let (lo, hi) = (
                self.limits.retry_initial_ms,
                self.limits.retry_max_ms * 3 / 2,
            );
            let pause = off.pause.as_millis() as u64;
            assert!(
                (lo..=hi).contains(&pause),
                "backoff {pause} ms outside [{lo}, {hi}]"
            );
            assert_eq!(off.until, self.now + off.pause);
            // The driver drops what is in flight; the requests may still
            // reach the receiver.
            self.zombies.extend(self.live.drain(..).filter(|c| !c.lost));
            self.paused_until = Some(off.until);
        }
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now + Duration::from_millis(ms);
        while self.now < target {
            let wake = self.paused_until.or(self.wait.0).filter(|t| *t > self.now);
            // A perfect network's driver is never late: it wakes when asked.
            self.now = match wake {
                Some(t) if self.mode.perfect => t.min(target),
                _ => target,
            };
            self.settle();
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Append(n) => {
                let wall = self.now_ms();
                self.walls.extend((0..n).map(|_| wall));
                self.head += n;
                if self.paused_until.is_none() && self.wait.1 {
                    self.settle();
                }
            }
            Op::Advance(ms) => self.advance(ms),
            Op::Deliver { pick, twice, later } => self.deliver(pick, twice, later),
            Op::Complete { pick, lose } => {
                self.complete(pick, lose);
                self.settle();
            }
            Op::Lose { pick } => {
                if !self.zombies.is_empty() {
                    self.zombies.remove(pick % self.zombies.len());
                } else if !self.live.is_empty() {
                    let n = self.live.len();
                    let call = &mut self.live[pick % n];
                    if call.answer.is_none() {
                        call.lost = true;
                    }
                }
            }
            Op::Checkpoint => self.rx.durable = self.rx.watermark,
            Op::Crash if self.mode.crashes => self.rx.crash(),
            Op::Crash => {}
            // The shipper sees it at its next tick.
            Op::WantDurable => self.durable_wanted = self.head,
        }
        self.check();
    }

    /// What must hold after every step.
    fn check(&self) {
        let applied = &self.rx.applied;
        assert!(
            applied.windows(2).all(|w| w[0] < w[1]),
            "applied out of order or twice: {applied:?}"
        );
        assert_eq!(self.machine.in_flight(), self.live.len());
        if self.drops.is_empty() {
            // Every entry once, in order, from the first one still logged.
            let first = self.mode.truncated + 1;
            let expected: Vec<u64> = (first..=self.rx.watermark).collect();
            assert_eq!(applied, &expected, "the receiver skipped entries");
            if self.mode.crashes {
                assert!(self.machine.acked() <= self.rx.highest);
                assert!(self.machine.durable() <= self.rx.durable);
            } else {
                assert!(
                    self.machine.acked() <= self.rx.watermark,
                    "acked {} but the receiver applied up to {}",
                    self.machine.acked(),
                    self.rx.watermark
                );
            }
        }
    }

    /// Everything is acknowledged, and applied unless the peer's log was
    /// dropped at the head (then anti-entropy repairs what it lacks).
    fn delivered(&self) -> bool {
        let dropped_at_head = self.drops.last().is_some_and(|(_, at)| *at == self.head);
        self.machine.acked() == self.head && (self.rx.watermark == self.head || dropped_at_head)
    }

    /// The network heals and the origin stops writing: everything must
    /// arrive within a bounded number of rounds.
    fn heal(&mut self) {
        self.mode.perfect = true;
        for _ in 0..1_000 {
            if self.delivered() {
                return;
            }
            let late = std::mem::take(&mut self.zombies);
            let now_ms = self.now_ms();
            for call in &late {
                self.rx.handle(call, now_ms);
            }
            if let Some(until) = self.paused_until {
                self.now = self.now.max(until);
                self.settle();
            } else if !self.live.is_empty() {
                self.deliver(0, false, false);
                self.complete(0, false);
                self.settle();
            } else {
                let until = self
                    .wait
                    .0
                    .expect("an idle shipper wakes up for a heartbeat");
                self.now = self.now.max(until);
                self.settle();
            }
            self.check();
        }
        panic!(
            "not delivered after the network healed: head {}, acked {}, receiver at {}",
            self.head,
            self.machine.acked(),
            self.rx.watermark
        );
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..12u64).prop_map(Op::Append),
        3 => (0..400u64).prop_map(Op::Advance),
        4 => (any::<usize>(), prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(pick, twice, later)| Op::Deliver { pick, twice, later }),
        4 => (any::<usize>(), prop::bool::weighted(0.15))
            .prop_map(|(pick, lose)| Op::Complete { pick, lose }),
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Crash),
        1 => Just(Op::WantDurable),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (1..5usize, 1..10usize, 5..60u64, 60..400u64).prop_map(
        |(window, batch_max_ops, retry_initial_ms, retry_max_ms)| Limits {
            heartbeat: Duration::from_millis(1_000),
            batch_max_ops,
            window,
            max_backlog_ops: u64::MAX,
            retry_initial_ms,
            retry_max_ms,
        },
    )
}

fn run(mode: Mode, limits: Limits, seed: u64, ops: &[Op]) -> World {
    let mut w = World::new(mode, limits, seed);
    w.settle();
    for op in ops {
        w.step(op);
    }
    w.heal();
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Batches and answers dropped, reordered and duplicated, calls failed:
    /// the receiver applies each entry once and in order, the origin never
    /// counts as acknowledged what was not applied, the window holds, the
    /// backoff stays in bounds, and after the network heals everything
    /// arrives.
    #[test]
    fn a_lossy_network_delivers_every_entry_once_and_in_order(
        limits in limits(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let w = run(Mode::default(), limits, seed, &ops);
        prop_assert_eq!(w.rx.applied.len() as u64, w.head);
    }

    /// The receiver also crashes back to its checkpoint: the origin ships
    /// again from the watermark it restarted at, never counts as durable
    /// what the receiver does not hold durably, and everything arrives.
    #[test]
    fn a_receiver_restarted_from_its_checkpoint_gets_everything_again(
        limits in limits(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mode = Mode { crashes: true, ..Mode::default() };
        let w = run(mode, limits, seed, &ops);
        prop_assert_eq!(w.rx.applied.len() as u64, w.head);
    }

    /// On a perfect network with writes now and then, something goes out
    /// at least every heartbeat interval, and a heartbeat never sooner than
    /// an interval after the previous send.
    #[test]
    fn heartbeats_go_out_at_the_interval_when_idle(
        limits in limits(),
        seed in any::<u64>(),
        ops in prop::collection::vec(
            prop_oneof![1 => (1..5u64).prop_map(Op::Append), 3 => (0..3_000u64).prop_map(Op::Advance)],
            1..60,
        ),
    ) {
        let mode = Mode { perfect: true, ..Mode::default() };
        let w = run(mode, limits.clone(), seed, &ops);
        prop_assert!(w.sends.first().is_some_and(|(t, s)| t.is_zero() && s.is_heartbeat()));
        for pair in w.sends.windows(2) {
            let ((t0, _), (t1, s)) = (&pair[0], &pair[1]);
            prop_assert!(*t1 - *t0 <= limits.heartbeat, "silent from {:?} to {:?}", t0, t1);
            if s.is_heartbeat() {
                prop_assert!(*t1 - *t0 >= limits.heartbeat, "heartbeat at {:?} after a send at {:?}", t1, t0);
            }
        }
        let idle = w.now.saturating_sub(w.sends.last().unwrap().0);
        prop_assert!(idle <= limits.heartbeat);
    }

    /// Entries the peer needs are gone from the log: the origin marks it for
    /// anti-entropy once, tells it to accept the gap, and the receiver
    /// applies everything after the gap once and in order.
    #[test]
    fn entries_gone_from_the_log_mark_the_peer_and_acknowledge_the_gap(
        limits in limits(),
        seed in any::<u64>(),
        head in 2..40u64,
        gone in 1..40u64,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let truncated = gone.min(head - 1);
        let mode = Mode { truncated, head, ..Mode::default() };
        let w = run(mode, limits, seed, &ops);
        prop_assert!(w.marked);
        let with_entries: Vec<&Shipment> =
            w.sends.iter().map(|(_, s)| s).filter(|s| !s.is_heartbeat()).collect();
        let marks: Vec<_> = w.sends.iter().filter_map(|(_, s)| s.missing).collect();
        prop_assert_eq!(marks, vec![(1, truncated)]);
        for s in with_entries.iter().filter(|s| s.first == truncated + 1) {
            prop_assert!(s.gap_acknowledged);
        }
        prop_assert_eq!(w.rx.applied.first().copied(), Some(truncated + 1));
        prop_assert_eq!(w.rx.applied.len() as u64, w.head - truncated);
    }

    /// A peer further behind than the backlog cap loses its log and is
    /// marked for anti-entropy; shipping resumes from the head, the
    /// receiver still applies in order and once, and catches up.
    #[test]
    fn a_peer_past_the_backlog_cap_is_marked_and_catches_up_from_the_head(
        limits in limits(),
        cap in 5..30u64,
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let limits = Limits { max_backlog_ops: cap, ..limits };
        let w = run(Mode::default(), limits, seed, &ops);
        prop_assert_eq!(w.marked, !w.drops.is_empty());
        prop_assert!(w.drops.iter().all(|(backlog, _)| *backlog > cap));
        prop_assert!(w.delivered());
    }
}
