//! A region's health as one router sees it: a state machine without I/O
//! that takes the result of each check and says when the region is
//! declared down or up.

use serde::{Deserialize, Serialize};

/// What the router makes of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No check has answered yet (at start): not routed to while any
    /// region is up.
    Unknown,
    /// Routed to.
    Up,
    /// Declared down: never named in an answer.
    Down,
}

impl State {
    /// The name served in answers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// When a region changes state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Declared down.
    Down {
        /// When the first check of the failing streak started (ms since epoch).
        first_failed_ms: u64,
        /// When the last good check answered, if one ever did.
        last_ok_ms: Option<u64>,
    },
    /// Declared up (again, or for the first time).
    Up {
        /// Since when it had been down, if it had.
        down_since_ms: Option<u64>,
    },
}

/// How many checks in a row decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Failed checks in a row that declare a region down.
    pub down_after: u32,
    /// Good checks in a row that declare a down region up.
    pub up_after: u32,
}

/// One region's health from this router's vantage point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Up, down or not known yet.
    pub state: State,
    /// Failed checks in a row.
    pub failures_in_row: u32,
    /// Good checks in a row.
    pub successes_in_row: u32,
    /// When the current failing streak's first check started (ms since epoch).
    pub first_failed_ms: Option<u64>,
    /// When the last good check answered (ms since epoch).
    pub last_ok_ms: Option<u64>,
    /// Since when the region is down (ms since epoch).
    pub down_since_ms: Option<u64>,
    /// Round trip of the last good check (ms).
    pub rtt_ms: Option<f64>,
    /// Why the last failed check failed.
    pub last_error: Option<String>,
    /// Checks so far.
    pub checks: u64,
    /// Failed checks so far.
    pub failures: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: State::Unknown,
            failures_in_row: 0,
            successes_in_row: 0,
            first_failed_ms: None,
            last_ok_ms: None,
            down_since_ms: None,
            rtt_ms: None,
            last_error: None,
            checks: 0,
            failures: 0,
        }
    }
}

impl Health {
    /// Takes the result of a check that started at `started_ms` and ended
    /// at `now_ms` (`Ok(())`, or why it failed); returns the transition it
    /// causes, if any.
    pub fn on_check(
        &mut self,
        result: Result<(), String>,
        started_ms: u64,
        now_ms: u64,
        t: Thresholds,
    ) -> Option<Transition> {
        self.checks += 1;
        match result {
            Ok(()) => {
                self.failures_in_row = 0;
                self.first_failed_ms = None;
                self.successes_in_row = self.successes_in_row.saturating_add(1);
                self.last_ok_ms = Some(now_ms);
                self.rtt_ms = Some(now_ms.saturating_sub(started_ms) as f64);
                let up = match self.state {
                    // The first answer says the region serves.
                    State::Unknown => true,
                    State::Down => self.successes_in_row >= t.up_after,
                    State::Up => false,
                };
                up.then(|| {
                    self.state = State::Up;
                    Transition::Up {
                        down_since_ms: self.down_since_ms.take(),
                    }
                })
            }
            Err(why) => {
                self.failures += 1;
                self.successes_in_row = 0;
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                self.last_error = Some(why);
                let first = *self.first_failed_ms.get_or_insert(started_ms);
                let down = self.state != State::Down && self.failures_in_row >= t.down_after;
                down.then(|| {
                    self.state = State::Down;
                    self.down_since_ms = Some(now_ms);
                    Transition::Down {
                        first_failed_ms: first,
                        last_ok_ms: self.last_ok_ms,
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: Thresholds = Thresholds {
        down_after: 3,
        up_after: 2,
    };

    fn fail() -> Result<(), String> {
        Err("timed out".into())
    }

    #[test]
    fn down_after_k_failures_in_a_row_and_up_after_m_successes() {
        let mut h = Health::default();
        assert_eq!(
            h.on_check(Ok(()), 0, 5, T),
            Some(Transition::Up {
                down_since_ms: None
            })
        );
        assert_eq!(h.on_check(fail(), 100, 400, T), None);
        assert_eq!(h.on_check(fail(), 400, 700, T), None);
        assert_eq!(
            h.on_check(fail(), 700, 1_000, T),
            Some(Transition::Down {
                first_failed_ms: 100,
                last_ok_ms: Some(5)
            })
        );
        assert_eq!(h.state, State::Down);
        // Further failures do not declare it down again.
        assert_eq!(h.on_check(fail(), 1_000, 1_300, T), None);
        assert_eq!(h.on_check(Ok(()), 1_300, 1_310, T), None);
        assert_eq!(h.state, State::Down);
        assert_eq!(
            h.on_check(Ok(()), 1_550, 1_560, T),
            Some(Transition::Up {
                down_since_ms: Some(1_000)
            })
        );
        assert_eq!((h.checks, h.failures), (7, 4));
    }

    #[test]
    fn a_success_breaks_a_failing_streak() {
        let mut h = Health::default();
        h.on_check(Ok(()), 0, 1, T);
        h.on_check(fail(), 10, 20, T);
        h.on_check(fail(), 20, 30, T);
        h.on_check(Ok(()), 30, 31, T);
        assert_eq!(h.on_check(fail(), 40, 50, T), None);
        assert_eq!(h.on_check(fail(), 50, 60, T), None);
        assert_eq!(h.state, State::Up);
        assert_eq!(h.first_failed_ms, Some(40));
    }

    proptest! {
        /// Over any sequence of results: the region is down exactly when
        /// the last `down_after` checks failed, or it was down and has not
        /// since had `up_after` good checks in a row; every transition
        /// changes the state.
        #[test]
        fn the_state_follows_the_streaks(results in proptest::collection::vec(any::<bool>(), 0..200),
                                         down_after in 1u32..5, up_after in 1u32..5) {
            let t = Thresholds { down_after, up_after };
            let mut h = Health::default();
            let mut model = State::Unknown;
            for (i, ok) in results.iter().enumerate() {
                let before = h.state;
                let tr = h.on_check(if *ok { Ok(()) } else { fail() }, i as u64, i as u64, t);
                let tail_fails = results[..=i].iter().rev().take_while(|r| !**r).count() as u32;
                let tail_oks = results[..=i].iter().rev().take_while(|r| **r).count() as u32;
                model = match model {
                    State::Unknown if *ok => State::Up,
                    State::Down if tail_oks >= up_after => State::Up,
                    s if s != State::Down && tail_fails >= down_after => State::Down,
                    s => s,
                };
                prop_assert_eq!(h.state, model);
                prop_assert_eq!(tr.is_some(), before != h.state);
            }
        }
    }
}
