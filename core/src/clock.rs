//! Time: the injected wall clock and the hybrid logical clock (HLC).
//!
//! Logic never reads the system clock itself: it is handed a [`Clock`], so
//! tests and simulations decide what time it is (and can skew one region).
//! [`HlcClock`] is a pure state machine over wall-clock readings.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering as AtomicOrdering};

use serde::{Deserialize, Serialize};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Microseconds since the Unix epoch, UTC.
    fn now_us(&self) -> u64;

    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one place that reads the system clock"
    )]
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A clock that runs `offset_ms` ahead of (or behind, if negative) another.
/// Used to inject clock skew into one region in tests and drills.
#[derive(Debug)]
pub struct SkewedClock {
    inner: Arc<dyn Clock>,
    offset_us: AtomicI64,
}

impl SkewedClock {
    /// A clock `offset_ms` off `inner`.
    pub fn new(inner: Arc<dyn Clock>, offset_ms: i64) -> SkewedClock {
        SkewedClock {
            inner,
            offset_us: AtomicI64::new(offset_ms * 1_000),
        }
    }

    /// Changes the offset.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_us
            .store(offset_ms * 1_000, AtomicOrdering::Relaxed);
    }
}

impl Clock for SkewedClock {
    fn now_us(&self) -> u64 {
        let base = self.inner.now_us() as i64;
        (base + self.offset_us.load(AtomicOrdering::Relaxed)).max(0) as u64
    }
}

/// A clock that only moves when told to. For unit tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    us: AtomicU64,
}

impl ManualClock {
    /// A clock reading `ms` milliseconds.
    pub fn new(ms: u64) -> ManualClock {
        ManualClock {
            us: AtomicU64::new(ms * 1_000),
        }
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.us.fetch_add(ms * 1_000, AtomicOrdering::Relaxed);
    }

    /// Sets the clock.
    pub fn set_ms(&self, ms: u64) {
        self.us.store(ms * 1_000, AtomicOrdering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.us.load(AtomicOrdering::Relaxed)
    }
}

/// A clock driven by tokio's (possibly paused, simulated) time, starting at a
/// fixed epoch. Simulations use it so that time is deterministic.
#[derive(Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
    epoch_us: u64,
}

impl TokioClock {
    /// A clock that reads `epoch_ms` now and advances with tokio time.
    pub fn new(epoch_ms: u64) -> TokioClock {
        TokioClock {
            start: tokio::time::Instant::now(),
            epoch_us: epoch_ms * 1_000,
        }
    }
}

impl Clock for TokioClock {
    fn now_us(&self) -> u64 {
        self.epoch_us + self.start.elapsed().as_micros() as u64
    }
}

/// A hybrid logical clock stamp: wall milliseconds, a logical counter for
/// events in the same millisecond, and the region that made it (which breaks
/// ties, so two different writes never carry equal stamps).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Wall-clock part, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter within `wall_ms`.
    pub logical: u32,
    /// Region that issued the stamp.
    pub region: String,
}

impl Hlc {
    /// The smallest stamp, before any write.
    pub fn zero() -> Hlc {
        Hlc {
            wall_ms: 0,
            logical: 0,
            region: String::new(),
        }
    }
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall_ms, self.logical, &self.region).cmp(&(
            other.wall_ms,
            other.logical,
            &other.region,
        ))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.logical, self.region)
    }
}

/// Refusal of a remote stamp that is too far ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFarAhead {
    /// How far ahead of local wall time the stamp was (milliseconds).
    pub ahead_ms: u64,
}

/// The hybrid logical clock of one region: a pure state machine over wall
/// readings. Stamps it issues strictly increase, never run behind any stamp
/// it has observed, and stay close to wall time.
#[derive(Clone, Debug)]
pub struct HlcClock {
    region: String,
    wall_ms: u64,
    logical: u32,
    max_offset_ms: u64,
}

impl HlcClock {
    /// A clock for `region`, refusing remote stamps more than `max_offset_ms` ahead.
    pub fn new(region: impl Into<String>, max_offset_ms: u64) -> HlcClock {
        HlcClock {
            region: region.into(),
            wall_ms: 0,
            logical: 0,
            max_offset_ms,
        }
    }

    /// The last stamp issued or observed.
    pub fn last(&self) -> Hlc {
        Hlc {
            wall_ms: self.wall_ms,
            logical: self.logical,
            region: self.region.clone(),
        }
    }

    /// A new stamp for a local event at wall time `now_ms`.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.logical = 0;
        } else {
            self.tick();
        }
        self.last()
    }

    /// Takes in a remote stamp seen at local wall time `now_ms`. A stamp more
    /// than the configured offset ahead is refused and leaves the clock as it was.
    pub fn observe(&mut self, remote: &Hlc, now_ms: u64) -> Result<(), TooFarAhead> {
        self.check(remote, now_ms)?;
        let wall = self.wall_ms.max(remote.wall_ms).max(now_ms);
        let logical = if wall == self.wall_ms && wall == remote.wall_ms {
            self.logical.max(remote.logical)
        } else if wall == self.wall_ms {
            self.logical
        } else if wall == remote.wall_ms {
            remote.logical
        } else {
            self.wall_ms = wall;
            self.logical = 0;
            return Ok(());
        };
        self.wall_ms = wall;
        self.logical = logical;
        self.tick();
        Ok(())
    }

    /// Whether a remote stamp seen at `now_ms` is within the offset guard.
    pub fn check(&self, remote: &Hlc, now_ms: u64) -> Result<(), TooFarAhead> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_offset_ms {
            Err(TooFarAhead { ahead_ms })
        } else {
            Ok(())
        }
    }

    /// Restores the clock from a persisted stamp so it never issues a stamp
    /// at or below one it issued before a restart.
    pub fn restore(&mut self, last: &Hlc) {
        if (last.wall_ms, last.logical) > (self.wall_ms, self.logical) {
            self.wall_ms = last.wall_ms;
            self.logical = last.logical;
        }
    }

    fn tick(&mut self) {
        if self.logical == u32::MAX {
            self.wall_ms += 1;
            self.logical = 0;
        } else {
            self.logical += 1;
        }
    }
}

/// Lag of an entry written at `wall_ms` on a clock `offset_ms` ahead of ours.
pub fn lag_ms(now_ms: u64, wall_ms: u64, offset_ms: i64) -> u64 {
    (now_ms as i64 + offset_ms - wall_ms as i64).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Event {
        Local {
            wall: u64,
        },
        Remote {
            wall: u64,
            remote_wall: u64,
            remote_logical: u32,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..2_000).prop_map(|wall| Event::Local { wall }),
            (0u64..2_000, 0u64..3_000, 0u32..5).prop_map(|(wall, remote_wall, remote_logical)| {
                Event::Remote {
                    wall,
                    remote_wall,
                    remote_logical,
                }
            }),
        ]
    }

    proptest! {
        /// Stamps strictly increase whatever the wall clock does, never fall
        /// behind an accepted remote stamp, and the guard refuses exactly the
        /// stamps more than max_offset ahead.
        #[test]
        fn hlc_is_monotonic_and_respects_the_offset_guard(events in prop::collection::vec(event(), 1..200)) {
            let max_offset = 500;
            let mut clock = HlcClock::new("a", max_offset);
            let mut last = clock.last();
            for e in events {
                match e {
                    Event::Local { wall } => {
                        let stamp = clock.now(wall);
                        prop_assert!(stamp > last, "{stamp} after {last}");
                        prop_assert!(stamp.wall_ms >= wall);
                        last = stamp;
                    }
                    Event::Remote { wall, remote_wall, remote_logical } => {
                        let remote = Hlc { wall_ms: remote_wall, logical: remote_logical, region: "b".into() };
                        let before = clock.last();
                        match clock.observe(&remote, wall) {
                            Ok(()) => {
                                prop_assert!(remote_wall <= wall + max_offset);
                                let next = clock.now(wall);
                                prop_assert!((next.wall_ms, next.logical) > (remote.wall_ms, remote.logical));
                                prop_assert!(next > before);
                                last = next;
                            }
                            Err(TooFarAhead { ahead_ms }) => {
                                prop_assert!(remote_wall > wall + max_offset);
                                prop_assert_eq!(ahead_ms, remote_wall - wall);
                                prop_assert_eq!(clock.last(), before);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn restore_never_goes_back() {
        let mut clock = HlcClock::new("a", 500);
        clock.restore(&Hlc {
            wall_ms: 10_000,
            logical: 7,
            region: "a".into(),
        });
        let next = clock.now(9_000);
        assert_eq!((next.wall_ms, next.logical), (10_000, 8));
    }

    #[test]
    fn skewed_clock_adds_offset() {
        let base = Arc::new(ManualClock::new(1_000_000));
        let skewed = SkewedClock::new(base, 2_000);
        assert_eq!(skewed.now_ms(), 1_002_000);
        skewed.set_offset_ms(-500);
        assert_eq!(skewed.now_ms(), 999_500);
    }
}
