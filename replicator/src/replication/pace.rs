//! The catch-up pace: a token bucket of log entries per second that the
//! shipper spends only while its peer is more than one batch behind
//! (`replication.catchup_max_ops_per_sec`), so draining a backlog after an
//! outage leaves both regions room for live traffic.

use std::time::Duration;

/// Entries per second, and the entries in hand (negative: owed).
#[derive(Debug)]
pub(super) struct Pace {
    per_sec: f64,
    tokens: f64,
    /// Most entries in hand: a tenth of a second's worth.
    burst: f64,
    /// When the tokens were last topped up (time since the shipper started).
    at: Duration,
}

impl Pace {
    /// A pace of `per_sec` entries per second; 0 never holds back.
    pub(super) fn new(per_sec: u64) -> Pace {
        let per_sec = per_sec as f64;
        Pace {
            per_sec,
            tokens: per_sec / 10.0,
            burst: per_sec / 10.0,
            at: Duration::ZERO,
        }
    }

    fn top_up(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
    }

    /// Until when (time since the shipper started) the next catch-up batch
    /// must wait; `None`: it may go now.
    pub(super) fn wait_until(&mut self, now: Duration) -> Option<Duration> {
        if self.per_sec <= 0.0 {
            return None;
        }
        self.top_up(now);
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.per_sec))
    }

    /// Spends `entries` on a catch-up batch sent at `now`.
    pub(super) fn spend(&mut self, now: Duration, entries: u64) {
        if self.per_sec <= 0.0 {
            return;
        }
        self.top_up(now);
        self.tokens -= entries as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_batches_go_at_the_pace_on_average() {
        let mut pace = Pace::new(2_000);
        let (mut now, mut sent) = (Duration::ZERO, 0u64);
        // A shipper sending 500-entry batches as soon as it may, for 10 s.
        while now < Duration::from_secs(10) {
            match pace.wait_until(now) {
                Some(t) => {
                    assert!(t > now);
                    now = t;
                }
                None => {
                    pace.spend(now, 500);
                    sent += 500;
                }
            }
        }
        // 2,000 a second, plus the burst and the batch that overdraws it.
        assert!((20_000..=20_700).contains(&sent), "{sent}");
        let mut free = Pace::new(0);
        free.spend(Duration::ZERO, 1_000_000);
        assert_eq!(free.wait_until(Duration::ZERO), None);
    }
}
