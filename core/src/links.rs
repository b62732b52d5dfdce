//! Links cut by a drill inside one process.
//!
//! `parallax demo --chaos` runs every region, collector and router in one
//! process on loopback, where no packet can be dropped. The parts that
//! cross a network there ask a shared [`Links`] before each call: the
//! region-to-region transport, each collector's probes and each router's
//! checks. A call over a cut link waits out its timeout and fails with no
//! answer, as a partition that drops packets makes it do; a call already
//! in flight when the link is cut is not stopped (its connection was up).
//!
//! Endpoints are names: regions, and router locations. A router named
//! after a region stands at that region's site and shares its cuts: cutting
//! `us-east`–`eu-west` also cuts the us-east router from the eu-west region
//! and the reverse. Clients are not endpoints: they keep reaching every
//! region, as a client that still resolves an old answer does.
//!
//! The network-namespace harness (`parallax_lab::netns`) cuts real links
//! between real hosts instead; the drills on it are the tests of record.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Duration;

/// The links cut now, each both ways.
#[derive(Debug, Default)]
pub struct Links {
    cut: RwLock<BTreeSet<(String, String)>>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Links {
    /// No link cut.
    pub fn new() -> Links {
        Links::default()
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        self.cut.write().expect("links lock").insert(pair(a, b));
    }

    /// Mends the link between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.cut.write().expect("links lock").remove(&pair(a, b));
    }

    /// Mends every link.
    pub fn heal_all(&self) {
        self.cut.write().expect("links lock").clear();
    }

    /// Whether traffic between `a` and `b` is dropped.
    pub fn is_cut(&self, a: &str, b: &str) -> bool {
        a != b && self.cut.read().expect("links lock").contains(&pair(a, b))
    }

    /// What a call from `from` to `to` meets: nothing if the link is up;
    /// if it is cut, `timeout` of silence and then [`Dropped`].
    pub async fn cross(&self, from: &str, to: &str, timeout: Duration) -> Result<(), Dropped> {
        if !self.is_cut(from, to) {
            return Ok(());
        }
        tokio::time::sleep(timeout).await;
        Err(Dropped {
            from: from.to_owned(),
            to: to.to_owned(),
            waited: timeout,
        })
    }
}

/// A call over a cut link: no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no answer from {to} within {} ms (the link {from}-{to} is cut by a drill)", waited.as_millis())]
pub struct Dropped {
    /// The caller.
    pub from: String,
    /// Whom it called.
    pub to: String,
    /// How long it waited.
    pub waited: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_is_both_ways_and_only_between_its_pair() {
        let links = Links::new();
        links.cut("us-east", "eu-west");
        assert!(links.is_cut("eu-west", "us-east"));
        assert!(links.is_cut("us-east", "eu-west"));
        assert!(!links.is_cut("us-east", "us-west"));
        assert!(!links.is_cut("us-east", "us-east"));
        links.heal("eu-west", "us-east");
        assert!(!links.is_cut("us-east", "eu-west"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_over_a_cut_link_waits_out_its_timeout() {
        let links = Links::new();
        let timeout = Duration::from_millis(300);
        assert_eq!(links.cross("a", "b", timeout).await, Ok(()));
        links.cut("a", "b");
        let started = tokio::time::Instant::now();
        let dropped = links.cross("a", "b", timeout).await.unwrap_err();
        assert_eq!(started.elapsed(), timeout);
        assert!(dropped.to_string().contains("cut by a drill"), "{dropped}");
    }
}
