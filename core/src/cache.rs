//! A read cache that the region's change feed keeps fresh.
//!
//! [`FeedCache`] answers reads of one region from memory. It subscribes to
//! the region's change stream and drops an entry as soon as the feed
//! delivers a version of its key that the cached one does not contain, so
//! once the feed has delivered a version no read from the cache serves an
//! older one. An entry is served only while the feed has been heard from
//! within `max_staleness` (the region sends a heartbeat every second) and
//! is younger than `ttl`; otherwise reads go to the region (`bypassed`).
//! A stream that breaks is reopened from the last position read; when the
//! feed no longer holds that position, every entry is dropped.
//!
//! Staleness is measured, not assumed: a read served from the cache is
//! *stale* when the region had already applied a newer version of the key
//! when the read was served; the feed tells when it applied it, so each
//! served read is settled once the feed has passed the moment it was
//! served: stale by how long the newer version had been applied, or fresh.
//! Times compare the client's clock with the region's (one machine here;
//! elsewhere, synchronised clocks).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{CacheReport, Change, FeedHeartbeat};
use crate::client::{ClientError, FeedItem, ReadOptions, RegionClient};
use crate::clock::{Clock, SystemClock};
use crate::links::Links;
use crate::protocol::ReadOutcome;
use crate::version::{Causality, VersionVector};

/// How a [`FeedCache`] behaves.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// The longest an entry is served, however quiet the feed.
    pub ttl: Duration,
    /// Entries are served only while the feed was heard from this recently.
    pub max_staleness: Duration,
    /// The most entries kept (the oldest filled goes first).
    pub capacity: usize,
    /// Drills in one process (`parallax demo --chaos`): the links a drill
    /// cuts, and the name of the site the cache stands at. While the link
    /// from the site to the region is cut, the feed's stream carries
    /// nothing (what the region sends waits, as a partition holds TCP
    /// segments) and no stream opens; mended, it all arrives.
    pub links: Option<(Arc<Links>, String)>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(60),
            max_staleness: Duration::from_secs(3),
            capacity: 100_000,
            links: None,
        }
    }
}

type Key = (String, String);

struct Entry {
    outcome: ReadOutcome,
    filled: Instant,
}

/// A read served from the cache, waiting for the feed to pass it.
struct Served {
    key: Key,
    version: VersionVector,
    at_us: u64,
    stale_us: u64,
}

/// Counters of one reporting window.
#[derive(Debug)]
struct Window {
    started: Instant,
    reads: u64,
    hits: u64,
    misses: u64,
    bypassed: u64,
    invalidations: u64,
    stale_hits: u64,
    staleness_us: Histogram<u64>,
}

impl Window {
    fn new() -> Window {
        Window {
            started: Instant::now(),
            reads: 0,
            hits: 0,
            misses: 0,
            bypassed: 0,
            invalidations: 0,
            stale_hits: 0,
            staleness_us: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("histogram bounds"),
        }
    }
}

struct State {
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Key, Instant)>,
    /// Versions the feed delivered lately, to refuse fills that raced them.
    recent: HashMap<Key, (Change, Instant)>,
    served: VecDeque<Served>,
    /// The feed's position, and the region's time it vouches for.
    position: Option<u64>,
    fed_through_us: u64,
    heard: Option<Instant>,
    connected: bool,
    window: Window,
    totals: Totals,
}

/// What the cache did since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Reads asked of the cache.
    pub reads: u64,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that filled an entry from the region.
    pub misses: u64,
    /// Reads sent to the region because the feed was not current.
    pub bypassed: u64,
    /// Entries dropped because the feed delivered a newer version.
    pub invalidations: u64,
    /// Settled cache reads that served an older version than the region held.
    pub stale_hits: u64,
    /// Cache reads settled (fresh or stale).
    pub settled: u64,
    /// Times the whole cache was dropped (the feed lost the position).
    pub resets: u64,
    /// The largest staleness of a settled read (µs).
    pub max_stale_us: u64,
}

/// A cache of one region's reads, kept fresh by its change feed.
pub struct FeedCache {
    client: RegionClient,
    settings: CacheSettings,
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FeedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedCache")
            .field("region", &self.client.region())
            .finish()
    }
}

impl FeedCache {
    /// A cache of `client`'s region; starts following its feed from now.
    pub fn start(client: RegionClient, settings: CacheSettings) -> FeedCache {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let state = Arc::new(Mutex::new(State::new()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(follow(
            client.clone(),
            settings.links.clone(),
            Arc::clone(&state),
            stop_rx,
        ));
        FeedCache {
            client,
            settings,
            state,
            clock,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops following the feed.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().expect("cache task lock").take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Whether the feed is current enough to serve from memory.
    pub fn is_current(&self) -> bool {
        let s = self.state.lock().expect("cache lock");
        s.connected
            && s.heard
                .is_some_and(|h| h.elapsed() <= self.settings.max_staleness)
    }

    /// Reads `class/key`: from memory when the entry is there, young enough
    /// and the feed current; from the region (a local read) otherwise.
    pub async fn get(&self, class: &str, key: &str) -> Result<ReadOutcome, ClientError> {
        let k: Key = (class.to_owned(), key.to_owned());
        let current = self.is_current();
        {
            let mut s = self.state.lock().expect("cache lock");
            s.window.reads += 1;
            s.totals.reads += 1;
            if current {
                let hit = s
                    .entries
                    .get(&k)
                    .filter(|e| e.filled.elapsed() <= self.settings.ttl)
                    .map(|e| e.outcome.clone());
                if let Some(outcome) = hit {
                    s.window.hits += 1;
                    s.totals.hits += 1;
                    let at_us = self.clock.now_us();
                    s.served.push_back(Served {
                        key: k,
                        version: outcome.version.clone(),
                        at_us,
                        stale_us: 0,
                    });
                    return Ok(outcome);
                }
                s.window.misses += 1;
                s.totals.misses += 1;
            } else {
                s.window.bypassed += 1;
                s.totals.bypassed += 1;
            }
        }
        let outcome = self.client.get(class, key, &ReadOptions::default()).await?;
        if current {
            self.fill(k, &outcome);
        }
        Ok(outcome)
    }

    fn fill(&self, k: Key, outcome: &ReadOutcome) {
        let mut s = self.state.lock().expect("cache lock");
        // A newer version delivered while the read was under way: the
        // answer may already be old; do not keep it.
        if let Some((c, _)) = s.recent.get(&k)
            && (c.deleted || newer(&c.version, &outcome.version))
        {
            return;
        }
        let now = Instant::now();
        s.entries.insert(
            k.clone(),
            Entry {
                outcome: outcome.clone(),
                filled: now,
            },
        );
        s.order.push_back((k, now));
        while s.entries.len() > self.settings.capacity {
            let Some((old, at)) = s.order.pop_front() else {
                break;
            };
            if s.entries.get(&old).is_some_and(|e| e.filled == at) {
                s.entries.remove(&old);
            }
        }
        if s.order.len() > 2 * self.settings.capacity.max(16) {
            let entries = &s.entries;
            let kept: VecDeque<(Key, Instant)> = s
                .order
                .iter()
                .filter(|(k, at)| entries.get(k).is_some_and(|e| e.filled == *at))
                .cloned()
                .collect();
            s.order = kept;
        }
    }

    /// What the cache did since it started.
    pub fn totals(&self) -> Totals {
        self.state.lock().expect("cache lock").totals.clone()
    }

    /// The last change of `class/key` the feed delivered lately (within
    /// the last seconds), if any.
    pub fn delivered(&self, class: &str, key: &str) -> Option<Change> {
        let s = self.state.lock().expect("cache lock");
        s.recent
            .get(&(class.to_owned(), key.to_owned()))
            .map(|(c, _)| c.clone())
    }

    /// The feed's position the cache has read to.
    pub fn position(&self) -> Option<u64> {
        self.state.lock().expect("cache lock").position
    }

    /// Ends the reporting window: its counters and settled staleness, for
    /// the region's `cache_reads` table, named `client` at `location`.
    pub fn report(&self, client: &str, location: &str) -> CacheReport {
        let mut s = self.state.lock().expect("cache lock");
        let lag_ms = s
            .heard
            .map(|_| self.clock.now_us().saturating_sub(s.fed_through_us) / 1_000);
        let w = std::mem::replace(&mut s.window, Window::new());
        let q = |p: f64| {
            (!w.staleness_us.is_empty())
                .then(|| w.staleness_us.value_at_quantile(p) as f64 / 1_000.0)
        };
        CacheReport {
            client: client.to_owned(),
            location: location.to_owned(),
            window_ms: w.started.elapsed().as_millis() as u64,
            reads: w.reads,
            hits: w.hits,
            misses: w.misses,
            bypassed: w.bypassed,
            invalidations: w.invalidations,
            settled: w.staleness_us.len(),
            stale_hits: w.stale_hits,
            staleness_p50_ms: q(0.5),
            staleness_p99_ms: q(0.99),
            staleness_max_ms: (!w.staleness_us.is_empty())
                .then(|| w.staleness_us.max() as f64 / 1_000.0),
            feed_lag_ms: lag_ms,
        }
    }
}

/// `a` holds something `b` does not: `b` is older or concurrent.
fn newer(a: &VersionVector, b: &VersionVector) -> bool {
    matches!(a.compare(b), Causality::After | Causality::Concurrent)
}

/// How long a delivered version is remembered against racing fills: longer
/// than any read may take.
const RECENT: Duration = Duration::from_secs(15);

/// A served read is settled once the feed vouches for this long after it:
/// a change is stamped when its group starts and committed a little
/// later, so a heartbeat may come before a change stamped just before it.
const SETTLE_MARGIN_US: u64 = 500_000;

impl State {
    fn new() -> State {
        State {
            entries: HashMap::new(),
            order: VecDeque::new(),
            recent: HashMap::new(),
            served: VecDeque::new(),
            position: None,
            fed_through_us: 0,
            heard: None,
            connected: false,
            window: Window::new(),
            totals: Totals::default(),
        }
    }

    /// The region vouched, at `region_us` by its clock, for everything up
    /// to then; it is `now_us` here. The feed counts as heard from then,
    /// not from when the message arrived: a message held on the way (a
    /// partition, a stalled proxy) vouches only for when it was sent.
    fn vouched(&mut self, region_us: u64, now_us: u64) {
        let age = Duration::from_micros(now_us.saturating_sub(region_us));
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        if self.heard.is_none_or(|h| h < at) {
            self.heard = Some(at);
        }
    }

    fn heartbeat(&mut self, h: &FeedHeartbeat, now_us: u64) {
        self.connected = true;
        self.vouched(h.now_us, now_us);
        self.fed_through_us = self.fed_through_us.max(h.now_us);
        if self.position.is_none_or(|p| p < h.head) {
            self.position = Some(h.head);
        }
    }

    fn apply(&mut self, c: &Change, now_us: u64) {
        let k: Key = (c.class.clone(), c.key.clone());
        if let Some(e) = self.entries.get(&k)
            && (c.deleted || newer(&c.version, &e.outcome.version))
        {
            self.entries.remove(&k);
            self.window.invalidations += 1;
            self.totals.invalidations += 1;
        }
        for s in self.served.iter_mut().filter(|s| s.key == k) {
            if s.at_us > c.ts_us && (c.deleted || newer(&c.version, &s.version)) {
                s.stale_us = s.stale_us.max(s.at_us - c.ts_us);
            }
        }
        let now = Instant::now();
        self.recent.insert(k, (c.clone(), now));
        self.position = Some(c.seq);
        self.fed_through_us = self.fed_through_us.max(c.ts_us);
        self.vouched(c.ts_us, now_us);
    }

    /// Settles the served reads the feed has passed.
    fn settle(&mut self) {
        while self
            .served
            .front()
            .is_some_and(|s| s.at_us + SETTLE_MARGIN_US <= self.fed_through_us)
        {
            let s = self.served.pop_front().expect("front exists");
            self.totals.settled += 1;
            if s.stale_us > 0 {
                self.window.stale_hits += 1;
                self.totals.stale_hits += 1;
                self.totals.max_stale_us = self.totals.max_stale_us.max(s.stale_us);
            }
            let _ = self.window.staleness_us.record(s.stale_us);
        }
        if self.recent.len() > 4096 {
            self.recent.retain(|_, (_, at)| at.elapsed() < RECENT);
        }
    }

    fn reset(&mut self) {
        self.entries.clear();
        self.order.clear();
        // Reads served before the reset cannot be settled any more.
        self.served.clear();
        self.position = None;
        self.totals.resets += 1;
    }
}

/// Follows the feed until stopped: reads the stream, applies each change,
/// reopens the stream from the last position after a failure.
async fn follow(
    client: RegionClient,
    links: Option<(Arc<Links>, String)>,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let cut = || {
        links
            .as_ref()
            .is_some_and(|(l, site)| l.is_cut(site, client.region()))
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        if cut() {
            if wait_or_stop(&mut stop, backoff).await {
                return;
            }
            continue;
        }
        let from = state
            .lock()
            .expect("cache lock")
            .position
            .map_or_else(|| "head".to_owned(), |p| p.to_string());
        let opened = client.stream_changes(Some(&from), None).await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                if e.status() == Some(410) {
                    state.lock().expect("cache lock").reset();
                    continue;
                }
                tracing::debug!(region = client.region(), error = %e, "Cannot open the change stream; retrying.");
                state.lock().expect("cache lock").connected = false;
                if wait_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = stop.changed() => return,
            };
            // Over a cut link the item waits until it is mended.
            while cut() {
                if wait_or_stop(&mut stop, Duration::from_millis(50)).await {
                    return;
                }
            }
            let mut s = state.lock().expect("cache lock");
            match item {
                Ok(Some(FeedItem::Change(c))) => {
                    s.connected = true;
                    s.apply(&c, SystemClock.now_us());
                    s.settle();
                }
                Ok(Some(FeedItem::Heartbeat(h))) => {
                    s.heartbeat(&h, SystemClock.now_us());
                    s.settle();
                }
                Ok(Some(FeedItem::Expired(_))) => {
                    s.connected = false;
                    s.reset();
                    break;
                }
                Ok(None) | Err(_) => {
                    s.connected = false;
                    break;
                }
            }
        }
        if wait_or_stop(&mut stop, backoff).await {
            return;
        }
    }
}

/// Sleeps `d`; true when stopped meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(now_us: u64) -> FeedHeartbeat {
        FeedHeartbeat {
            region: "r".into(),
            head: 7,
            now_us,
        }
    }

    #[test]
    fn a_held_message_vouches_for_when_it_was_sent_not_when_it_arrived() {
        let mut s = State::new();
        let now_us = 1_800_000_000_000_000;
        // A heartbeat sent 10 s ago, arriving now after a partition: the
        // feed is not current on its word.
        s.heartbeat(&heartbeat(now_us - 10_000_000), now_us);
        assert!(s.heard.unwrap().elapsed() >= Duration::from_secs(9));
        assert_eq!(s.position, Some(7));
        // One sent just now is.
        s.heartbeat(&heartbeat(now_us - 100_000), now_us);
        assert!(s.heard.unwrap().elapsed() < Duration::from_secs(1));
        // An older one arriving after it does not move it back.
        s.heartbeat(&heartbeat(now_us - 5_000_000), now_us);
        assert!(s.heard.unwrap().elapsed() < Duration::from_secs(1));
    }
}
