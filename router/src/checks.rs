//! The router's workers: one per region checking its `/readyz`, and one
//! re-reading the ownership delegations in force.

use std::time::{Duration, Instant};

use parallax_core::routing::OwnershipView;
use parallax_core::worker::Worker;
use tokio::time::MissedTickBehavior;

use crate::Router;
use crate::health::{State, Transition};

/// Checks `region` every `check_interval_ms` until told to stop; a check
/// that has not answered within `check_timeout_ms` failed.
pub(crate) async fn check_loop(router: Router, region: String, mut w: Worker) {
    let cfg = &router.inner.config.router;
    let timeout = Duration::from_millis(cfg.check_timeout_ms);
    let Some(client) = router.region_client(&region) else {
        return;
    };
    let client = client.with_timeout(timeout);
    let mut every = tokio::time::interval(Duration::from_millis(cfg.check_interval_ms));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while w.next_tick(&mut every).await {
        w.busy();
        let started_ms = router.inner.clock.now_ms();
        let started = Instant::now();
        // The client's own timeout covers connecting and answering; this
        // one also bounds a stalled name lookup.
        let result = match router.cross(&region, timeout).await {
            Err(dropped) => Err(dropped),
            Ok(()) => match tokio::time::timeout(timeout, client.readyz()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            },
        };
        let seconds = started.elapsed().as_secs_f64();
        let now_ms = router.inner.clock.now_ms();
        router.inner.metrics.check(&region, result.is_ok(), seconds);
        let transition = {
            let mut health = router.inner.health.write().expect("health lock");
            let h = health.entry(region.clone()).or_default();
            let why = result.as_ref().err().cloned();
            let t = h.on_check(result, started_ms, now_ms, router.thresholds());
            (t, why)
        };
        match transition {
            (
                Some(Transition::Down {
                    first_failed_ms, ..
                }),
                why,
            ) => {
                let detection = now_ms.saturating_sub(first_failed_ms);
                router.inner.metrics.transition(
                    &region,
                    State::Down,
                    Some(detection as f64 / 1_000.0),
                );
                tracing::warn!(
                    router = %router.inner.location, %region, detection_ms = detection,
                    error = why.as_deref().unwrap_or(""),
                    "Region declared down: no longer named in answers."
                );
            }
            (Some(Transition::Up { down_since_ms }), _) => {
                router.inner.metrics.transition(&region, State::Up, None);
                match down_since_ms {
                    Some(since) => tracing::warn!(
                        router = %router.inner.location, %region,
                        down_ms = now_ms.saturating_sub(since),
                        "Region declared up again."
                    ),
                    None => tracing::info!(router = %router.inner.location, %region, "Region up."),
                }
            }
            (None, _) => {}
        }
        w.idle();
    }
}

/// Re-reads the delegations in force and the rollout stages set at
/// runtime from the nearest region that is up, every
/// `ownership_refresh_ms`; a delegation never goes back to a lower epoch,
/// nor a stage to an older move.
pub(crate) async fn ownership_loop(router: Router, mut w: Worker) {
    let cfg = &router.inner.config.router;
    let timeout = Duration::from_millis(cfg.check_timeout_ms.max(1_000));
    let mut every = tokio::time::interval(Duration::from_millis(cfg.ownership_refresh_ms));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while w.next_tick(&mut every).await {
        w.busy();
        let Some(client) = router.up_nearest_first().into_iter().next() else {
            w.idle();
            continue;
        };
        let client = client.with_timeout(timeout);
        let (ownership, stages) = tokio::join!(client.ownership(), client.rollouts());
        let result = ownership.and_then(|o| Ok((o, stages?)));
        w.ran(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Ok((ownership, stages)) = result {
            let read = OwnershipView {
                delegations: ownership.delegations,
            };
            router.inner.view.write().expect("view lock").join(&read);
            router
                .inner
                .stages
                .write()
                .expect("stages lock")
                .join(&stages.view);
        }
        w.idle();
    }
}
