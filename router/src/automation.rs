//! The failover worker: starts a [`Failover`] for every region the router
//! declares down, runs its state machine each check interval, does what it
//! asks (moves ownership, asks regions what they still have to ship), and
//! sends each changed row to a region's collector (`POST
//! /v1/admin/failovers`), keeping rows that could not be sent for later.

use std::collections::BTreeMap;
use std::time::Duration;

use parallax_core::api::{FailoverRecords, MoveOwnership};
use parallax_core::config::{Ownership, Rollout, SYSTEM_CLASS_PREFIX};
use parallax_core::telemetry::FailoverEvent;
use parallax_core::worker::Worker;
use tokio::time::MissedTickBehavior;

use crate::Router;
use crate::failover::{Action, Failover, Outcome, Phase, Seen};
use crate::health::State;

/// Rows kept for a collector that cannot be reached, at most.
const MAX_PENDING_ROWS: usize = 10_000;

/// Runs failovers until told to stop.
pub(crate) async fn failover_loop(router: Router, mut w: Worker) {
    let cfg = &router.inner.config.router;
    let mut every = tokio::time::interval(Duration::from_millis(cfg.check_interval_ms));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pending: Vec<FailoverEvent> = Vec::new();
    while w.next_tick(&mut every).await {
        w.busy();
        for region in router.inner.config.regions.keys() {
            if let Some(row) = step(&router, region).await {
                pending.push(row);
            }
        }
        if !pending.is_empty() {
            let sent = send(&router, &pending).await;
            w.ran(sent.as_ref().map(|_| ()));
            if sent.is_ok() {
                pending.clear();
            } else if pending.len() > MAX_PENDING_ROWS {
                let excess = pending.len() - MAX_PENDING_ROWS;
                pending.drain(..excess);
                tracing::warn!(
                    dropped = excess,
                    "Failover rows dropped: no region took them."
                );
            }
        }
        w.idle();
    }
}

/// Whether moving a region's keys changes anything: some class is owned
/// by region, or writes some of its operations at the primary only.
fn anything_to_move(router: &Router) -> bool {
    router
        .inner
        .config
        .classes
        .iter()
        .filter(|(name, _)| !name.starts_with(SYSTEM_CLASS_PREFIX))
        .any(|(_, c)| c.ownership != Ownership::Global || c.rollout != Rollout::ActiveActive)
}

/// One tick of `region`'s failover, if it has one (or needs one); returns
/// its row when the row changed.
async fn step(router: &Router, region: &str) -> Option<FailoverEvent> {
    let inner = &router.inner;
    let health = inner
        .health
        .read()
        .expect("health lock")
        .get(region)
        .cloned()?;
    let mut failover = {
        let mut active = inner.failovers.lock().expect("failovers lock");
        match active.remove(region) {
            Some(f) => f,
            None if health.state == State::Down => {
                let f = Failover::new(
                    &inner.location,
                    region,
                    health.last_ok_ms,
                    health.first_failed_ms.unwrap_or_default(),
                    health.down_since_ms.unwrap_or_default(),
                    router.last_answer_ms(region),
                );
                let rerouted = f.rerouted_ms(u64::from(inner.config.router.ttl_s) * 1_000);
                inner.metrics.failover(region, rerouted as f64 / 1_000.0);
                let row = row(router, &f);
                active.insert(region.to_owned(), f);
                return Some(row);
            }
            None => return None,
        }
    };
    let seen = seen(router, region, &failover, health.state == State::Up).await;
    let grace = inner.config.router.failover_grace_ms;
    let (action, mut changed) = failover.on_tick(&seen, grace);
    match action {
        Action::Move {
            delegate,
            expect_epoch,
        } if inner.config.router.automatic_failover && anything_to_move(router) => {
            let outcome = move_keys(
                router,
                &delegate,
                region,
                &delegate,
                expect_epoch,
                Some(grace),
            )
            .await;
            let now = inner.clock.now_ms();
            changed |= failover.on_moved(&delegate, &outcome, now);
            if let Outcome::Done(_) = outcome {
                let took = now.saturating_sub(failover.first_failed_ms);
                inner.metrics.ownership_moved(region, took as f64 / 1_000.0);
                tracing::warn!(router = %inner.location, %region, %delegate, took_ms = took, "Ownership moved.");
            }
        }
        Action::HandBack { from, expect_epoch } => {
            let outcome = move_keys(router, &from, region, region, expect_epoch, None).await;
            changed |= failover.on_handed_back(&outcome, inner.clock.now_ms());
            if let Outcome::Done(_) = outcome {
                tracing::warn!(router = %inner.location, %region, "Ownership handed back.");
            }
        }
        Action::Move { .. } | Action::CheckCaughtUp | Action::Wait => {}
    }
    let out = changed.then(|| row(router, &failover));
    if failover.phase != Phase::Done {
        inner
            .failovers
            .lock()
            .expect("failovers lock")
            .insert(region.to_owned(), failover);
    } else {
        let mut done = inner.finished.lock().expect("finished lock");
        done.push_back(failover);
        while done.len() > 50 {
            done.pop_front();
        }
    }
    out
}

/// What the failover of `region` needs to know this tick.
async fn seen(router: &Router, region: &str, f: &Failover, up: bool) -> Seen {
    let inner = &router.inner;
    let view = router.ownership();
    let (owner, epoch) = view.effective(region);
    let states = router.states();
    let nearest_up = inner
        .config
        .regions
        .keys()
        .filter(|r| r.as_str() != region && states.get(*r) == Some(&State::Up))
        .min_by_key(|r| (inner.config.latency_between(region, r), (*r).clone()))
        .cloned();
    let caught_up = if f.phase == Phase::Back && up {
        Some(caught_up(router, region, &states).await)
    } else {
        None
    };
    Seen {
        now_ms: inner.clock.now_ms(),
        up,
        delegated: if owner != region {
            Ok((owner, epoch))
        } else {
            Err(epoch)
        },
        nearest_up,
        caught_up,
    }
}

/// Whether `region` trails every other region that is up by less than
/// twice the heartbeat interval (at least a second), by its own measure.
async fn caught_up(router: &Router, region: &str, states: &BTreeMap<String, State>) -> bool {
    let config = &router.inner.config;
    let timeout = Duration::from_millis(config.router.check_timeout_ms.max(1_000));
    let bound = (2 * config.replication.heartbeat_interval_ms).max(1_000);
    let Some(client) = router.region_client(region) else {
        return false;
    };
    if router.cross(region, timeout).await.is_err() {
        return false;
    }
    let Ok(stats) = client.with_timeout(timeout).stats().await else {
        return false;
    };
    states
        .iter()
        .filter(|(other, state)| other.as_str() != region && **state == State::Up)
        .all(|(other, _)| {
            stats
                .replication
                .peers
                .get(other)
                .and_then(|p| p.lag_from_ms)
                .is_some_and(|lag| lag < bound)
        })
}

/// Asks region `at` to move `region`'s keys to `delegate` (`region`
/// itself: a hand-back), on the epoch the router saw. A move is asked of
/// the delegate taking the keys; a hand-back of the delegate holding them.
async fn move_keys(
    router: &Router,
    at: &str,
    region: &str,
    delegate: &str,
    expect_epoch: u64,
    unreachable_for_ms: Option<u64>,
) -> Outcome {
    let config = &router.inner.config;
    let Some(client) = router.region_client(at) else {
        return Outcome::Failed(format!("region `{at}` is not in the config"));
    };
    let timeout = Duration::from_millis(config.replication.quorum_timeout_ms.max(1_000));
    let m = MoveOwnership {
        region: region.to_owned(),
        delegate: delegate.to_owned(),
        expect_epoch: Some(expect_epoch),
        unreachable_for_ms,
    };
    if let Err(dropped) = router.cross(at, timeout).await {
        return Outcome::Failed(dropped);
    }
    match client.with_timeout(timeout).move_ownership_if(&m).await {
        Ok(answer) => {
            let epoch = answer
                .delegations
                .get(region)
                .map_or(expect_epoch + 1, |d| d.epoch);
            let view = parallax_core::routing::OwnershipView {
                delegations: answer.delegations,
            };
            router.inner.view.write().expect("view lock").join(&view);
            Outcome::Done(epoch)
        }
        Err(e) if e.status() == Some(409) => Outcome::Refused(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The row of `f` as it stands.
fn row(router: &Router, f: &Failover) -> FailoverEvent {
    let us = |ms: Option<u64>| ms.map(|v| v * 1_000);
    let ttl_ms = u64::from(router.inner.config.router.ttl_s) * 1_000;
    let event = match (f.phase, &f.delegate, f.epoch) {
        (Phase::Grace, _, _) => format!("{} down as seen from {}", f.region, router.inner.location),
        (Phase::Moved, Some(d), Some(e)) => format!("{} moved to {d} (epoch {e})", f.region),
        (Phase::Back, _, _) => format!("{} back up", f.region),
        (Phase::Done, _, _) if f.handed_back_ms.is_some() => format!("{} handed back", f.region),
        (Phase::Done, _, _) => format!("{} back up, nothing moved", f.region),
        (Phase::Moved, _, _) => format!("{} moved", f.region),
    };
    FailoverEvent {
        ts_us: router.inner.clock.now_us(),
        region: String::new(),
        event,
        detected_ms: Some(f.detected_ms()),
        rerouted_ms: Some(f.rerouted_ms(ttl_ms)),
        id: Some(f.id.clone()),
        router: Some(router.inner.location.clone()),
        failed: Some(f.region.clone()),
        phase: Some(f.phase.as_str().to_owned()),
        delegate: f.delegate.clone(),
        epoch: f.epoch,
        moved_by: f.moved_by.clone(),
        last_ok_us: us(f.last_ok_ms),
        first_failed_us: us(Some(f.first_failed_ms)),
        down_us: us(Some(f.down_ms)),
        last_answer_us: us(f.last_answer_ms),
        moved_us: us(f.moved_ms),
        up_us: us(f.up_ms),
        handed_back_us: us(f.handed_back_ms),
    }
}

/// Sends rows to the nearest region that is up.
async fn send(router: &Router, rows: &[FailoverEvent]) -> Result<(), String> {
    let records = FailoverRecords {
        failovers: rows.to_vec(),
    };
    let mut last = "no region is up".to_owned();
    for client in router.up_nearest_first() {
        match client
            .with_timeout(Duration::from_secs(2))
            .failover_records(&records)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("failover rows not sent yet: {last}"))
}
