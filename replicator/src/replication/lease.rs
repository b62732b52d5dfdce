//! The owner lease: whether this region may take writes for the keys it
//! owns. Plain state, no I/O: the shippers and the node's peer calls tell
//! it when a request they sent was answered; a write asks it.
//!
//! A region holds the lease while a majority of regions, itself counted,
//! answered a request it sent within `lease_ms` (counted from when the
//! request was sent, so the answer may have been slow but never makes the
//! lease outlive what the peer saw). A conditional ownership move takes a
//! region's keys only once a majority of the *other* regions has not heard
//! from it for `lease_ms` plus the clock error, and those regions withhold
//! their answers from the lease for as long: the two majorities share a
//! region, so the old owner's lease has lapsed before the move commits.
//!
//! After a lapse (and at start) the region must read the ownership
//! delegations from a majority before it takes owned writes again, so it
//! learns of a move made meanwhile; [`Lease::check`] says so.

use std::collections::BTreeMap;

/// What [`Lease::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Held, continuously since the delegations were last read.
    Held,
    /// Held, but it lapsed (or was never held) since the delegations were
    /// last read: read them from a majority, then [`Lease::reread`].
    HeldAfterLapse,
    /// Not held: `answered` peers answered within the lease, `needed` must.
    Lapsed {
        /// Peers whose answer to a request sent within `lease_ms` counts.
        answered: usize,
        /// Peers needed (a majority of the regions, less this one).
        needed: usize,
        /// How long ago the newest counted request was sent (ms), if any.
        newest_ms_ago: Option<u64>,
    },
}

/// The lease of one region.
#[derive(Debug)]
pub(crate) struct Lease {
    lease_us: u64,
    needed: usize,
    /// Per peer: when the newest request it answered (for the lease) was sent (µs).
    sent_us: BTreeMap<String, u64>,
    /// When the lease, as last computed, ends (µs).
    until_us: u64,
    /// The lease lapsed since the delegations were last read.
    lapsed: bool,
}

impl Lease {
    /// A lease of `lease_ms` among `regions` regions, not yet held (a
    /// region that starts reads the delegations first).
    pub(crate) fn new(lease_ms: u64, regions: usize) -> Lease {
        let mut lease = Lease {
            lease_us: lease_ms.saturating_mul(1_000),
            needed: regions / 2,
            sent_us: BTreeMap::new(),
            until_us: 0,
            lapsed: true,
        };
        lease.until_us = lease.expiry();
        lease
    }

    /// `peer` answered, for the lease, a request sent at `sent_us`; it is `now_us`.
    pub(crate) fn answered(&mut self, peer: &str, sent_us: u64, now_us: u64) {
        self.observe(now_us);
        let at = self.sent_us.entry(peer.to_owned()).or_default();
        *at = (*at).max(sent_us);
        self.until_us = self.expiry();
    }

    /// Whether the lease is held at `now_us`.
    pub(crate) fn check(&mut self, now_us: u64) -> LeaseState {
        self.observe(now_us);
        if now_us < self.until_us {
            if self.lapsed {
                LeaseState::HeldAfterLapse
            } else {
                LeaseState::Held
            }
        } else {
            let fresh: Vec<u64> = self
                .sent_us
                .values()
                .copied()
                .filter(|s| now_us.saturating_sub(*s) < self.lease_us)
                .collect();
            LeaseState::Lapsed {
                answered: fresh.len(),
                needed: self.needed,
                newest_ms_ago: self
                    .sent_us
                    .values()
                    .max()
                    .map(|s| now_us.saturating_sub(*s) / 1_000),
            }
        }
    }

    /// The delegations were read from a majority while the lease was held.
    pub(crate) fn reread(&mut self, now_us: u64) {
        if now_us < self.until_us {
            self.lapsed = false;
        }
    }

    /// Notes a lapse: the lease computed before has ended by `now_us`.
    fn observe(&mut self, now_us: u64) {
        if now_us >= self.until_us {
            self.lapsed = true;
        }
    }

    /// When the lease ends given the answers so far: the `needed`-th
    /// newest answered request plus the lease.
    fn expiry(&self) -> u64 {
        if self.needed == 0 {
            return u64::MAX;
        }
        let mut sent: Vec<u64> = self.sent_us.values().copied().collect();
        sent.sort_unstable_by(|a, b| b.cmp(a));
        sent.get(self.needed - 1)
            .map_or(0, |s| s.saturating_add(self.lease_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    #[test]
    fn a_majority_of_answers_within_the_lease_holds_it() {
        let mut l = Lease::new(4_000, 3);
        assert!(matches!(l.check(0), LeaseState::Lapsed { needed: 1, .. }));
        l.answered("b", 100 * MS, 120 * MS);
        // Never read the delegations yet: held, but read them first.
        assert_eq!(l.check(200 * MS), LeaseState::HeldAfterLapse);
        l.reread(200 * MS);
        assert_eq!(l.check(200 * MS), LeaseState::Held);
        // Counted from when the request was sent, not answered.
        assert_eq!(l.check(4_099 * MS), LeaseState::Held);
        assert!(matches!(
            l.check(4_100 * MS),
            LeaseState::Lapsed {
                answered: 0,
                newest_ms_ago: Some(4_000),
                ..
            }
        ));
    }

    #[test]
    fn a_lapse_unseen_by_any_write_still_asks_for_a_reread() {
        let mut l = Lease::new(4_000, 3);
        l.answered("b", 0, MS);
        l.reread(MS);
        // Nothing for 10 s, then an answer again: the lease came back, but
        // a move may have been made meanwhile.
        l.answered("c", 10_000 * MS, 10_001 * MS);
        assert_eq!(l.check(10_002 * MS), LeaseState::HeldAfterLapse);
    }

    #[test]
    fn five_regions_need_two_peers_and_the_older_one_bounds_the_lease() {
        let mut l = Lease::new(4_000, 5);
        l.answered("b", 1_000 * MS, 1_000 * MS);
        assert!(matches!(
            l.check(1_001 * MS),
            LeaseState::Lapsed {
                answered: 1,
                needed: 2,
                ..
            }
        ));
        l.answered("c", 2_000 * MS, 2_000 * MS);
        l.reread(2_001 * MS);
        assert_eq!(l.check(4_999 * MS), LeaseState::Held);
        assert!(matches!(l.check(5_000 * MS), LeaseState::Lapsed { .. }));
    }

    #[test]
    fn a_lone_region_always_holds_it() {
        let mut l = Lease::new(4_000, 1);
        assert_eq!(l.check(1), LeaseState::HeldAfterLapse);
        l.reread(1);
        assert_eq!(l.check(u64::MAX / 2), LeaseState::Held);
    }
}
