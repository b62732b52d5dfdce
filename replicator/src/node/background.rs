//! The loops a node runs besides requests (each a [`parallax_core::worker`]):
//! the telemetry relay, checkpoints and traffic reports. The shippers and the lag sampler
//! live in [`crate::replication`], anti-entropy in [`super::anti_entropy`].

use std::sync::Arc;
use std::time::Duration;

use parallax_core::clock::Clock;
use parallax_core::telemetry::{Event, Stats, Telemetry, TrafficEvent};
use parallax_core::traffic::growth;
use parallax_core::transport::Transport;
use parallax_core::worker::Worker;
use tokio::sync::mpsc;

use crate::command::Command;

/// Asks the writer for a checkpoint every `every` (it skips it if nothing
/// changed).
pub(super) async fn checkpoints(mut w: Worker, writer: mpsc::Sender<Command>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    while w.next_tick(&mut tick).await {
        if writer.send(Command::Checkpoint(None)).await.is_err() {
            w.ran(Err("the writer has stopped"));
            return;
        }
        w.ran(Ok::<(), String>(()));
    }
}

/// Reports every `every` what this region's calls to its peers carried
/// since the previous report (the `traffic` table), and once more when
/// told to stop, so no window's bytes go unreported.
pub(super) async fn traffic_reports(
    mut w: Worker,
    region: String,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    telemetry: Telemetry,
    every: Duration,
) {
    let mut reported = transport.traffic();
    let report = |reported: &mut Vec<_>| {
        let now = transport.traffic();
        let ts_us = clock.now_us();
        for traffic in growth(reported, &now) {
            telemetry.emit(Event::Traffic(TrafficEvent {
                ts_us,
                region: region.clone(),
                traffic,
            }));
        }
        *reported = now;
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while w.next_tick(&mut tick).await {
        report(&mut reported);
        w.ran(Ok::<(), String>(()));
    }
    report(&mut reported);
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
