//! Automated failover as one router runs it, a state machine without I/O.
//!
//! When the router declares a region down, a failover starts. After the
//! grace, the region's keys (everything it owns: home- and hash-owned keys,
//! its primary role) move to the healthy region nearest to it, under a new
//! ownership epoch, conditional on the epoch the router saw: if another
//! router moved them first, the move is refused and this router records
//! the other's. Once the region is up again and every other region has
//! shipped it what it missed, its keys are handed back, again conditional
//! on the epoch. Every step is timed; each changes a row of `failovers`.

use serde::{Deserialize, Serialize};

/// Where a failover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Declared down; waiting out the grace before moving its keys.
    Grace,
    /// Its keys are with the delegate; waiting for the region to come back.
    Moved,
    /// Back up; waiting for its peers' backlog to it to drain.
    Back,
    /// Over: handed back, or back before anything moved.
    Done,
}

impl Phase {
    /// The name written to `failovers.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Grace => "down",
            Phase::Moved => "moved",
            Phase::Back => "back",
            Phase::Done => "done",
        }
    }
}

/// One failover of one region, as one router saw and ran it. Times are ms
/// since the epoch on the router's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// `<router>/<region>/<first failed check>`: the same for every row of it.
    pub id: String,
    /// The region that failed.
    pub region: String,
    /// Where it is.
    pub phase: Phase,
    /// The last good check before the failure (the fault came after it).
    pub last_ok_ms: Option<u64>,
    /// The start of the first failed check.
    pub first_failed_ms: u64,
    /// When the router declared the region down.
    pub down_ms: u64,
    /// The last answer of this router that named the region.
    pub last_answer_ms: Option<u64>,
    /// The region its keys moved to.
    pub delegate: Option<String>,
    /// The ownership epoch of that move.
    pub epoch: Option<u64>,
    /// When the move was made (or, if another router made it, seen).
    pub moved_ms: Option<u64>,
    /// Who moved them: `this router`, `another router`, or why not.
    pub moved_by: Option<String>,
    /// When the router declared the region up again.
    pub up_ms: Option<u64>,
    /// When its keys were handed back.
    pub handed_back_ms: Option<u64>,
}

impl Failover {
    /// A failover of `region` the router just declared down.
    pub fn new(
        router: &str,
        region: &str,
        last_ok_ms: Option<u64>,
        first_failed_ms: u64,
        down_ms: u64,
        last_answer_ms: Option<u64>,
    ) -> Failover {
        Failover {
            id: format!("{router}/{region}/{first_failed_ms}"),
            region: region.to_owned(),
            phase: Phase::Grace,
            last_ok_ms,
            first_failed_ms,
            down_ms,
            last_answer_ms,
            delegate: None,
            epoch: None,
            moved_ms: None,
            moved_by: None,
            up_ms: None,
            handed_back_ms: None,
        }
    }

    /// From the first failed check to the region declared down (ms).
    pub fn detected_ms(&self) -> u64 {
        self.down_ms.saturating_sub(self.first_failed_ms)
    }

    /// From the first failed check until no client of this router can
    /// still hold an answer naming the region: the later of its
    /// declaration and the last such answer's expiry (ms).
    pub fn rerouted_ms(&self, ttl_ms: u64) -> u64 {
        let cleared = self
            .last_answer_ms
            .map_or(self.down_ms, |a| self.down_ms.max(a + ttl_ms));
        cleared.saturating_sub(self.first_failed_ms)
    }
}

/// What the world looks like to the router at one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// Now (ms since epoch).
    pub now_ms: u64,
    /// The region is up (declared so by the router's checks).
    pub up: bool,
    /// The region's keys are delegated now: (delegate, epoch); `None` when
    /// the region owns them itself, with the epoch of the last move (0 if none).
    pub delegated: Result<(String, u64), u64>,
    /// The healthy region nearest to the failed one, if any.
    pub nearest_up: Option<String>,
    /// The region has caught up: it trails every other region that is up
    /// by less than the catch-up bound (its own heartbeat-measured lag);
    /// `None` when not known yet. Under load a peer's backlog to it is
    /// never exactly empty, so "nothing left to ship" would never come.
    pub caught_up: Option<bool>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Move the region's keys to `delegate` if the epoch is still `expect_epoch`.
    Move {
        /// The region taking them.
        delegate: String,
        /// The epoch the router saw.
        expect_epoch: u64,
    },
    /// Hand the keys back to the region if the epoch is still
    /// `expect_epoch`, asking `from`, the delegate holding them: it stops
    /// taking their writes the moment it records the move, and the move
    /// reaches the region in `from`'s log after every write `from` took
    /// for them, so the region owns them again only once it has those.
    HandBack {
        /// The delegate holding the keys.
        from: String,
        /// The epoch the router saw.
        expect_epoch: u64,
    },
    /// Ask the region how far it trails the others.
    CheckCaughtUp,
    /// Nothing this tick.
    Wait,
}

/// How a move or hand-back went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done, under this epoch.
    Done(u64),
    /// Refused: the epoch changed (another router moved first) or the
    /// delegate still hears from the region; the reason.
    Refused(String),
    /// Failed (timeout, region unreachable): try again next tick.
    Failed(String),
}

impl Failover {
    /// The next step at `seen`, with `grace_ms` to wait before moving.
    /// Returns whether the row changed (and so should be written again).
    pub fn on_tick(&mut self, seen: &Seen, grace_ms: u64) -> (Action, bool) {
        match self.phase {
            Phase::Grace if seen.up => {
                self.up_ms = Some(seen.now_ms);
                self.phase = Phase::Done;
                (Action::Wait, true)
            }
            Phase::Grace => {
                if let Ok((delegate, epoch)) = &seen.delegated {
                    // Someone moved them already (another router, a person).
                    self.record_move(delegate, *epoch, seen.now_ms, "another router");
                    return (Action::Wait, true);
                }
                if seen.now_ms < self.down_ms + grace_ms {
                    return (Action::Wait, false);
                }
                match (&seen.nearest_up, &seen.delegated) {
                    (Some(delegate), Err(epoch)) => (
                        Action::Move {
                            delegate: delegate.clone(),
                            expect_epoch: *epoch,
                        },
                        false,
                    ),
                    _ => (Action::Wait, false),
                }
            }
            Phase::Moved if seen.up => {
                self.up_ms = Some(seen.now_ms);
                self.phase = Phase::Back;
                (Action::CheckCaughtUp, true)
            }
            Phase::Moved => (Action::Wait, false),
            Phase::Back => match (&seen.delegated, seen.caught_up) {
                // Handed back by someone else.
                (Err(_), _) => {
                    self.handed_back_ms = Some(seen.now_ms);
                    self.phase = Phase::Done;
                    (Action::Wait, true)
                }
                (Ok((from, epoch)), Some(true)) if seen.up => (
                    Action::HandBack {
                        from: from.clone(),
                        expect_epoch: *epoch,
                    },
                    false,
                ),
                _ => (Action::CheckCaughtUp, false),
            },
            Phase::Done => (Action::Wait, false),
        }
    }

    /// Takes the outcome of a [`Action::Move`] to `delegate`; returns
    /// whether the row changed.
    pub fn on_moved(&mut self, delegate: &str, outcome: &Outcome, now_ms: u64) -> bool {
        match outcome {
            Outcome::Done(epoch) => {
                self.record_move(delegate, *epoch, now_ms, "this router");
                true
            }
            Outcome::Refused(why) | Outcome::Failed(why) => {
                let changed = self.moved_by.as_deref() != Some(why.as_str());
                // Not moved (yet): say why on the row; the next tick retries
                // or sees the other router's move.
                self.moved_by = Some(why.clone());
                changed
            }
        }
    }

    /// Takes the outcome of a [`Action::HandBack`]; returns whether the
    /// row changed.
    pub fn on_handed_back(&mut self, outcome: &Outcome, now_ms: u64) -> bool {
        match outcome {
            Outcome::Done(_) => {
                self.handed_back_ms = Some(now_ms);
                self.phase = Phase::Done;
                true
            }
            Outcome::Refused(_) | Outcome::Failed(_) => false,
        }
    }

    fn record_move(&mut self, delegate: &str, epoch: u64, now_ms: u64, by: &str) {
        self.delegate = Some(delegate.to_owned());
        self.epoch = Some(epoch);
        self.moved_ms = Some(now_ms);
        self.moved_by = Some(by.to_owned());
        self.phase = Phase::Moved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(now_ms: u64, up: bool, delegated: Result<(&str, u64), u64>) -> Seen {
        Seen {
            now_ms,
            up,
            delegated: delegated.map(|(d, e)| (d.to_owned(), e)),
            nearest_up: Some("us-east".into()),
            caught_up: None,
        }
    }

    #[test]
    fn a_failover_moves_after_the_grace_and_hands_back_once_caught_up() {
        let mut f = Failover::new("paris", "eu-west", Some(900), 1_000, 2_000, Some(1_500));
        assert_eq!(f.detected_ms(), 1_000);
        assert_eq!(
            f.rerouted_ms(1_000),
            1_500,
            "the last answer expired at 2.5 s"
        );
        assert_eq!(
            f.on_tick(&seen(2_500, false, Err(0)), 1_000),
            (Action::Wait, false)
        );
        let (a, _) = f.on_tick(&seen(3_000, false, Err(0)), 1_000);
        assert_eq!(
            a,
            Action::Move {
                delegate: "us-east".into(),
                expect_epoch: 0
            }
        );
        assert!(f.on_moved("us-east", &Outcome::Done(1), 3_010));
        assert_eq!(
            (f.phase, f.epoch, f.moved_ms),
            (Phase::Moved, Some(1), Some(3_010))
        );
        assert_eq!(
            f.on_tick(&seen(4_000, false, Ok(("us-east", 1))), 1_000).0,
            Action::Wait
        );
        // Back up: it must catch up before the delegate hands back.
        let (a, changed) = f.on_tick(&seen(9_000, true, Ok(("us-east", 1))), 1_000);
        assert_eq!(
            (a, changed, f.phase),
            (Action::CheckCaughtUp, true, Phase::Back)
        );
        let mut s = seen(9_250, true, Ok(("us-east", 1)));
        s.caught_up = Some(false);
        assert_eq!(f.on_tick(&s, 1_000).0, Action::CheckCaughtUp);
        s.caught_up = Some(true);
        assert_eq!(
            f.on_tick(&s, 1_000).0,
            Action::HandBack {
                from: "us-east".into(),
                expect_epoch: 1
            }
        );
        assert!(f.on_handed_back(&Outcome::Done(2), 9_300));
        assert_eq!((f.phase, f.handed_back_ms), (Phase::Done, Some(9_300)));
    }

    #[test]
    fn another_routers_move_is_recorded_not_repeated() {
        let mut f = Failover::new("us-west", "eu-west", None, 1_000, 2_000, None);
        let (a, _) = f.on_tick(&seen(3_000, false, Err(0)), 1_000);
        assert!(matches!(a, Action::Move { .. }));
        // The move was refused: the epoch changed under us.
        assert!(f.on_moved("us-east", &Outcome::Refused("epoch 1 now".into()), 3_005));
        assert_eq!(f.phase, Phase::Grace);
        // The next tick sees the other router's move and does not move again.
        let (a, changed) = f.on_tick(&seen(3_250, false, Ok(("us-east", 1))), 1_000);
        assert_eq!((a, changed), (Action::Wait, true));
        assert_eq!(f.moved_by.as_deref(), Some("another router"));
        // And someone else's hand-back ends it too.
        f.on_tick(&seen(8_000, true, Ok(("us-east", 1))), 1_000);
        let (a, changed) = f.on_tick(&seen(8_500, true, Err(2)), 1_000);
        assert_eq!((a, changed, f.phase), (Action::Wait, true, Phase::Done));
    }

    #[test]
    fn a_region_back_within_the_grace_moves_nothing() {
        let mut f = Failover::new("paris", "eu-west", Some(0), 1_000, 2_000, None);
        let (a, changed) = f.on_tick(&seen(2_400, true, Err(0)), 1_000);
        assert_eq!((a, changed, f.phase), (Action::Wait, true, Phase::Done));
        assert_eq!((f.up_ms, f.moved_ms), (Some(2_400), None));
        // Nowhere to move (no region up): wait.
        let mut g = Failover::new("paris", "eu-west", Some(0), 1_000, 2_000, None);
        let mut s = seen(5_000, false, Err(0));
        s.nearest_up = None;
        assert_eq!(g.on_tick(&s, 1_000).0, Action::Wait);
    }
}
