//! The owner lease on the node: checked before a write to an owned key,
//! renewed by asking the peers when it has lapsed, and the silence a
//! conditional ownership move must find at a majority (see
//! [`crate::replication::LeaseState`] for the rule and why it holds).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use parallax_core::config::OWNERSHIP_CLASS;
use parallax_core::error::{Error, LeaseLapsed, Result};
use parallax_core::protocol::{PeerRequest, PeerResponse};

use super::Node;
use crate::replication::LeaseState;

/// How long a write waits for a lease renewal it started before it is
/// refused (the renewal goes on).
const RENEWAL_WAIT: Duration = Duration::from_millis(250);

impl Node {
    /// The silence (ms) a conditional move needs: the lease plus the
    /// clock error between regions, and at least what the caller asked.
    pub(super) fn move_silence_ms(&self, asked_ms: u64) -> u64 {
        let c = &self.inner.config.cluster;
        asked_ms.max(c.lease_ms + c.max_clock_offset_ms)
    }

    /// Before a write to a key this region owns: Ok while it holds its
    /// lease. A lapsed lease is renewed by asking every peer at once; after
    /// a lapse the delegations are read from a majority first, so a move
    /// made meanwhile is seen (the write is then forwarded or refused by
    /// the caller, which routes again).
    pub(super) async fn check_lease(&self, class: &str, key: &str) -> Result<bool> {
        let now = self.inner.clock.now_us();
        match self.inner.repl.lease(now) {
            LeaseState::Held => return Ok(false),
            LeaseState::HeldAfterLapse | LeaseState::Lapsed { .. } => {}
        }
        // One renewal at a time. A write that finds a renewal of a lapsed
        // lease in flight is refused at once rather than queued behind it:
        // while cut off each renewal waits out its timeout (half a lease),
        // and a client would time out before its 421 came. After a lapse
        // with the lease held again, it waits for the delegations' read.
        let mut last_try_ms = match self.inner.lease_lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                let state = self.inner.repl.lease(self.inner.clock.now_us());
                if let LeaseState::Lapsed { .. } = state {
                    return Err(self.lapsed(class, key, state));
                }
                self.inner.lease_lock.lock().await
            }
        };
        let mut state = self.inner.repl.lease(self.inner.clock.now_us());
        let now_ms = self.inner.clock.now_ms();
        // While cut off, one renewal per half heartbeat interval is enough,
        // and none while one is asking. It runs in the background: this
        // write waits for it only a moment (peers that are up answer in
        // milliseconds) and is refused past that, rather than waiting out
        // the renewal's timeout while its client gives up.
        let again_ms = self.inner.config.replication.heartbeat_interval_ms / 2;
        if matches!(state, LeaseState::Lapsed { .. })
            && now_ms.saturating_sub(*last_try_ms) >= again_ms
            && !self.inner.lease_renewing.swap(true, Ordering::AcqRel)
        {
            *last_try_ms = now_ms;
            let node = self.clone();
            let renewal = tokio::spawn(async move {
                node.ping_peers().await;
                node.inner.lease_renewing.store(false, Ordering::Release);
            });
            let _ = tokio::time::timeout(RENEWAL_WAIT, renewal).await;
            state = self.inner.repl.lease(self.inner.clock.now_us());
        }
        match state {
            LeaseState::Held => Ok(false),
            LeaseState::HeldAfterLapse => {
                let read_at = self.inner.clock.now_us();
                for region in self.inner.config.regions.keys() {
                    self.read_control(
                        OWNERSHIP_CLASS,
                        region,
                        "after its owner lease lapsed, a region reads the delegations",
                    )
                    .await?;
                }
                self.inner.repl.lease_reread(read_at);
                tracing::info!(region = %self.inner.region, "Owner lease held again; ownership delegations read from a majority.");
                Ok(true)
            }
            LeaseState::Lapsed { .. } => Err(self.lapsed(class, key, state)),
        }
    }

    /// The 421 of a write to `class`/`key` refused in lease state `state`.
    fn lapsed(&self, class: &str, key: &str, state: LeaseState) -> Error {
        let LeaseState::Lapsed {
            answered,
            needed,
            newest_ms_ago,
        } = state
        else {
            return Error::Unavailable(format!(
                "the owner lease of {} is being renewed; retry",
                self.inner.region
            ));
        };
        Error::LeaseLapsed(Box::new(LeaseLapsed {
            region: self.inner.region.clone(),
            class: class.to_owned(),
            key: key.to_owned(),
            answered,
            needed,
            lease_ms: self.inner.config.cluster.lease_ms,
            last: newest_ms_ago
                .map(|ms| format!(" (the last answer was to a request sent {ms} ms ago)"))
                .unwrap_or_default(),
        }))
    }

    /// Asks every peer at once for nothing but an answer (each answer
    /// counts toward the lease), within half a lease.
    async fn ping_peers(&self) {
        let me = &self.inner.region;
        let timeout = Duration::from_millis(
            (self.inner.config.cluster.lease_ms / 2)
                .min(self.inner.config.replication.peer_timeout_ms),
        );
        let calls = self.inner.repl.peers().map(|(peer, _)| {
            let req = PeerRequest::Silent {
                region: me.clone(),
                for_ms: u64::MAX,
            };
            self.call_within(peer, req, timeout)
        });
        join_all(calls).await;
    }

    /// Answers [`PeerRequest::Silent`]: how long since this region heard
    /// from `region`; if at least `for_ms`, its answers stop counting
    /// toward `region`'s lease for `for_ms`.
    pub(super) fn silent(&self, region: &str, for_ms: u64) -> PeerResponse {
        let now = self.inner.clock.now_us();
        let silent_ms = self.inner.repl.silent_ms(region, now);
        let confirmed = silent_ms >= for_ms && region != self.inner.region;
        if confirmed && let Some(p) = self.inner.repl.peer(region) {
            p.withhold_lease(now.saturating_add(for_ms.saturating_mul(1_000)));
        }
        PeerResponse::Silent {
            silent_ms,
            confirmed,
        }
    }

    /// Before a conditional move takes `region`'s keys: a majority of the
    /// regions other than `region` (this one first) has not heard from it
    /// for `silence_ms`, and each withholds its answers from `region`'s
    /// lease as long; so `region`'s lease has lapsed and cannot come back
    /// before it learns of the move. A 409 names who still hears from it.
    pub(super) async fn confirm_silence(&self, region: &str, silence_ms: u64) -> Result<()> {
        let needed = self.inner.config.regions.len() / 2 + 1;
        let PeerResponse::Silent {
            silent_ms,
            confirmed,
        } = self.silent(region, silence_ms)
        else {
            unreachable!("silent answers Silent");
        };
        if !confirmed {
            return Err(Error::Precondition(format!(
                "`{}` heard from `{region}` {silent_ms} ms ago; its keys move only after {silence_ms} ms of silence \
                 (cluster.lease_ms + max_clock_offset_ms), when its owner lease has surely lapsed. \
                 Fix: wait (a router retries by itself)",
                self.inner.region
            )));
        }
        let timeout = Duration::from_millis(self.inner.config.replication.peer_timeout_ms);
        let others: Vec<String> = self
            .inner
            .repl
            .peers()
            .map(|(p, _)| p.clone())
            .filter(|p| p != region)
            .collect();
        let answers = join_all(others.iter().map(|p| {
            let req = PeerRequest::Silent {
                region: region.to_owned(),
                for_ms: silence_ms,
            };
            self.call_within(p, req, timeout)
        }))
        .await;
        let mut agree = 1;
        let mut hearing = Vec::new();
        for (peer, answer) in others.iter().zip(answers) {
            match answer {
                Ok(PeerResponse::Silent {
                    confirmed: true, ..
                }) => agree += 1,
                Ok(PeerResponse::Silent { silent_ms, .. }) => {
                    hearing.push(format!("`{peer}` heard from it {silent_ms} ms ago"));
                }
                Ok(other) => hearing.push(format!("`{peer}` answered {other:?}")),
                Err(e) => hearing.push(format!("`{peer}` did not answer ({e})")),
            }
        }
        if agree >= needed {
            return Ok(());
        }
        Err(Error::Precondition(format!(
            "only {agree} of the {needed} regions needed have not heard from `{region}` for {silence_ms} ms: {}. \
             While a majority still hears from it, it may hold its owner lease and take writes, so its keys stay. \
             Fix: wait; or, if it must, move them by hand with `parallax failover` (its writes meanwhile are then fenced by epoch)",
            hearing.join("; ")
        )))
    }
}
