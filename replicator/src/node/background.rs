//! The loops a node runs besides requests (each a [`crate::worker`]):
//! the telemetry relay, checkpoints and the lag sampler. The shippers live
//! in [`crate::replication`], anti-entropy in [`super::anti_entropy`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::replication::Replication;
use crate::telemetry::{Event, Stats, Telemetry};
use crate::worker::Worker;
use crate::command::Command;

/// Samples, every heartbeat interval, how far this region trails each
/// peer and how far each silent peer trails it, and emits the samples as
/// `replication_lag` rows, whether or not anything arrived.
pub(super) struct LagSampler {
    pub(super) me: String,
    pub(super) repl: Arc<Replication>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) telemetry: Telemetry,
    pub(super) every: Duration,
}

impl LagSampler {
    pub(super) async fn run(self, mut w: Worker) {
        let silent_after_ms = 3 * self.every.as_millis() as u64;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            w.idle();
            tokio::select! {
                _ = tick.tick() => {}
                _ = w.stopping() => return,
            }
            w.busy();
            let (now_ms, now_us) = (self.clock.now_ms(), self.clock.now_us());
            for e in self.repl.sample_lag(&self.me, now_ms, now_us, silent_after_ms) {
                self.telemetry.emit(Event::Replication(e));
            }
            w.ran(Ok::<(), String>(()));
        }
    }
}

/// Asks the writer for a checkpoint every `every` (it skips it if nothing
/// changed).
pub(super) async fn checkpoints(mut w: Worker, writer: mpsc::Sender<Command>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        w.idle();
        tokio::select! {
            _ = tick.tick() => {}
            _ = w.stopping() => return,
        }
        w.busy();
        if writer.send(Command::Checkpoint(None)).await.is_err() {
            w.ran(Err("the writer has stopped"));
            return;
        }
        w.ran(Ok::<(), String>(()));
    }
}

/// Counts every telemetry event and forwards it to the subscriber (the
/// collector) without blocking; when told to stop, relays what is queued
/// first.
pub(super) async fn relay_events(
    mut w: Worker,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<Stats>,
    subscriber: Option<mpsc::Sender<Event>>,
    telemetry: Telemetry,
) {
    let mut forward_dropped = 0u64;
    let mut relay = |event: Event| {
        stats.observe(&event);
        if let Some(sub) = &subscriber
            && sub.try_send(event).is_err()
        {
            forward_dropped += 1;
            telemetry.count_drop();
            if forward_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = forward_dropped,
                    "Telemetry subscriber is behind; events dropped."
                );
            }
        }
    };
    w.idle();
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => relay(event),
                None => return,
            },
            _ = w.stopping() => break,
        }
    }
    while let Ok(event) = rx.try_recv() {
        relay(event);
    }
}
