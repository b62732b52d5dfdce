//! The demo's users: a population at each router location, reaching the
//! cluster through its router as a real application does, with an
//! operation mix over every conflict policy.
//!
//! Each population asks its location's router where a request goes
//! ([`RoutedClient`]: the nearest region up; the owner, for a write to a
//! home-owned key), follows the answer for its TTL, and moves to the next
//! region when one is silent. A user's profile edits carry the session
//! token of the user's last write, so the user reads them back wherever the
//! read lands (read-your-writes). What the regions answered is counted:
//! acknowledged, expected refusals, fenced, indeterminate, failed; and how
//! many writes were acknowledged while still replicating (`applied_in`
//! naming fewer regions than the cluster has).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parallax_core::api::{EntityOp, Resolution};
use parallax_core::config::Config;
use parallax_core::protocol::WriteOutcome;
use parallax_core::{ClientError, ReadOptions, RegionClient, RoutedClient, WriteOptions};
use serde_json::json;

use crate::process::RunningRouter;
use rand_like::Rng;

/// A tiny RNG so the load is reproducible from its seed (xorshift*).
mod rand_like {
    #[derive(Debug)]
    pub(super) struct Rng(u64);
    impl Rng {
        pub(super) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
        }
    }
}

/// The users at one location.
#[derive(Debug)]
struct Population {
    location: String,
    client: RoutedClient,
    /// Per user, the session token of the user's last acknowledged write.
    sessions: Mutex<HashMap<String, String>>,
}

/// The load's populations, its seeded choices and what it counted.
#[derive(Debug)]
pub struct Load {
    populations: Vec<Population>,
    regions: BTreeMap<String, RegionClient>,
    classes: Vec<String>,
    rng: Mutex<Rng>,
    /// Requests answered 2xx.
    pub ok: AtomicU64,
    /// Requests answered 404 or 409, as the load expects some to be.
    pub refused: AtomicU64,
    /// Writes a region refused because it may not take them (421: it does
    /// not own the key, or its owner lease lapsed); nothing was applied.
    pub fenced: AtomicU64,
    /// Increments whose region took them and did not answer: maybe applied.
    pub indeterminate: AtomicU64,
    /// Requests that failed otherwise.
    pub failed: AtomicU64,
    /// Those, by class.
    pub failed_by_class: Mutex<BTreeMap<String, u64>>,
    /// Writes acknowledged.
    pub writes: AtomicU64,
    /// Writes acknowledged while still replicating: `applied_in` named
    /// fewer regions than the cluster has.
    pub replicating: AtomicU64,
    /// Reads sent with a user's session token.
    pub session_reads: AtomicU64,
    /// Increments of `likes` acknowledged.
    pub likes: AtomicI64,
    /// Increments of `likes` whose outcome is unknown (maybe applied).
    pub likes_unknown: AtomicI64,
    /// Acknowledged writes (counters, sets, values): when each was
    /// answered and how long it took, the newest [`LATENCIES_KEPT`].
    latencies: Mutex<VecDeque<(Instant, Duration)>>,
}

/// How many write latencies the load keeps.
const LATENCIES_KEPT: usize = 500_000;

impl Load {
    /// A population at each of `routers`' locations, on `config`'s cluster,
    /// its choices drawn from `seed`.
    pub fn new(config: &Config, routers: &[RunningRouter], seed: u64) -> Arc<Load> {
        let (client_token, admin_token) = (
            config.cluster.client_token.as_str(),
            config.cluster.admin_token.as_str(),
        );
        let http = reqwest::Client::new();
        Arc::new(Load {
            populations: routers
                .iter()
                .map(|r| Population {
                    location: r.router.location().to_owned(),
                    client: RoutedClient::new(vec![format!("http://{}", r.addr)], None)
                        .with_tokens(client_token, admin_token)
                        .with_timeout(Duration::from_secs(2)),
                    sessions: Mutex::new(HashMap::new()),
                })
                .collect(),
            regions: config
                .regions
                .keys()
                .filter_map(|name| {
                    let url = config.region_url(name)?;
                    let client = RegionClient::over(name, &url, http.clone())
                        .with_tokens(client_token, admin_token);
                    Some((name.clone(), client))
                })
                .collect(),
            classes: config.classes.keys().cloned().collect(),
            rng: Mutex::new(Rng::new(seed)),
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            indeterminate: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_by_class: Mutex::new(BTreeMap::new()),
            writes: AtomicU64::new(0),
            replicating: AtomicU64::new(0),
            session_reads: AtomicU64::new(0),
            likes: AtomicI64::new(0),
            likes_unknown: AtomicI64::new(0),
            latencies: Mutex::new(VecDeque::new()),
        })
    }

    /// The locations the load comes from.
    pub fn locations(&self) -> Vec<&str> {
        self.populations
            .iter()
            .map(|p| p.location.as_str())
            .collect()
    }

    fn pick(&self, n: u64) -> u64 {
        self.rng.lock().expect("rng lock").below(n)
    }

    /// Counts an answer to a request on `class`; the value if it was a success.
    fn tally<T>(&self, class: &str, r: Result<T, ClientError>) -> Option<T> {
        let e = match r {
            Ok(v) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                return Some(v);
            }
            Err(e) => e,
        };
        let counter = match (&e, e.api_error().map(|a| a.status)) {
            // Reading a profile before its first write (404) and writing a
            // ticket that waits in the reconciliation queue (409) are
            // answers the load expects.
            (_, Some(404 | 409)) => &self.refused,
            (_, Some(421)) => &self.fenced,
            (ClientError::Indeterminate { .. }, _) => &self.indeterminate,
            _ => &self.failed,
        };
        let before = counter.fetch_add(1, Ordering::Relaxed);
        if std::ptr::eq(counter, &self.failed) {
            if before < 3 {
                eprintln!("  request failed: {e}");
            }
            *self
                .failed_by_class
                .lock()
                .expect("failures")
                .entry(class.to_owned())
                .or_default() += 1;
        }
        None
    }

    /// Counts an acknowledged write: was it still replicating?
    fn wrote(&self, w: Option<WriteOutcome>) -> Option<WriteOutcome> {
        if let Some(w) = &w {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if w.applied_in.len() < self.regions.len() {
                self.replicating.fetch_add(1, Ordering::Relaxed);
            }
        }
        w
    }

    async fn op(&self, p: &Population, class: &str, key: &str, op: EntityOp) -> bool {
        let started = Instant::now();
        let r = p.client.op(class, key, &op, &WriteOptions::default()).await;
        self.timed(started, self.wrote(self.tally(class, r)))
    }

    async fn put(&self, p: &Population, class: &str, key: &str, v: serde_json::Value) -> bool {
        let started = Instant::now();
        let r = p.client.put(class, key, &v, &WriteOptions::default()).await;
        self.timed(started, self.wrote(self.tally(class, r)))
    }

    /// Keeps the latency of a write started at `started`, if acknowledged.
    fn timed(&self, started: Instant, w: Option<WriteOutcome>) -> bool {
        if w.is_some() {
            let mut l = self.latencies.lock().expect("latencies");
            if l.len() >= LATENCIES_KEPT {
                l.pop_front();
            }
            l.push_back((Instant::now(), started.elapsed()));
        }
        w.is_some()
    }

    /// The p99 latency of the writes acknowledged between `from` and `to`,
    /// and how many there were (nearest rank).
    pub fn write_p99(&self, from: Instant, to: Instant) -> Option<(Duration, usize)> {
        let mut v: Vec<Duration> = self
            .latencies
            .lock()
            .expect("latencies")
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, d)| *d)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = (v.len() as f64 * 0.99).ceil() as usize;
        Some((v[rank.clamp(1, v.len()) - 1], v.len()))
    }

    /// One user operation on a random class, from a random location.
    pub async fn one(&self) {
        if self.populations.is_empty() {
            return;
        }
        let at = self.pick(self.populations.len() as u64) as usize;
        let p = &self.populations[at];
        let class = self.classes[self.pick(self.classes.len() as u64) as usize].clone();
        match class.as_str() {
            "likes" => {
                let key = format!("post-{}", self.pick(20));
                let before = self.indeterminate.load(Ordering::Relaxed);
                if self.op(p, "likes", &key, EntityOp::Incr { by: 1 }).await {
                    self.likes.fetch_add(1, Ordering::Relaxed);
                } else if self.indeterminate.load(Ordering::Relaxed) > before {
                    self.likes_unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
            "stock" => {
                let by = self.pick(11) as i64 - 5;
                let key = format!("sku-{}", self.pick(10));
                self.op(p, "stock", &key, EntityOp::Incr { by }).await;
            }
            "carts" => {
                let key = format!("cart-{}", self.pick(30));
                let member = json!(format!("item-{}", self.pick(8)));
                let op = if self.pick(3) == 0 {
                    EntityOp::Remove { member }
                } else {
                    EntityOp::Add { member }
                };
                self.op(p, "carts", &key, op).await;
            }
            "profiles" => self.profile(p).await,
            "settings" => {
                let key = format!("flag-{}", self.pick(5));
                let v = json!({"enabled": self.pick(2) == 1});
                self.put(p, "settings", &key, v).await;
            }
            "balances" => {
                // Home-owned: the router sends the write to the key's owner.
                let prefix = ["us-", "usw-", "eu-"][self.pick(3) as usize];
                let key = format!("{prefix}{}", self.pick(10));
                let v = json!({"cents": self.pick(100_000)});
                self.put(p, "balances", &key, v).await;
            }
            "tickets" => self.ticket(at).await,
            other => {
                let key = format!("k-{}", self.pick(10));
                let r = p.client.get(other, &key, &ReadOptions::default()).await;
                self.tally(other, r);
            }
        }
    }

    /// A user reads their profile (with their session token: their own
    /// last write is in what they read) and writes it back, one more login.
    async fn profile(&self, p: &Population) {
        let user = format!("user-{}", self.pick(25));
        let session = p.sessions.lock().expect("sessions").get(&user).cloned();
        if session.is_some() {
            self.session_reads.fetch_add(1, Ordering::Relaxed);
        }
        let read = ReadOptions {
            consistency: session.as_ref().map(|_| "session".to_owned()),
            session: session.clone(),
            ..ReadOptions::default()
        };
        let logins = self
            .tally("profiles", p.client.get("profiles", &user, &read).await)
            .and_then(|r| r.value["logins"].as_i64())
            .unwrap_or(0);
        let now = parallax_core::clock::Clock::now_ms(&parallax_core::clock::SystemClock);
        let body = json!({
            "name": format!("user {} v{}", user, self.pick(100)),
            "last_seen": now, "first_seen": now,
            "tags": [format!("t{}", self.pick(6))],
            "logins": logins + 1,
        });
        let write = WriteOptions {
            session,
            ..WriteOptions::default()
        };
        let r = p.client.put("profiles", &user, &body, &write).await;
        if let Some(w) = self.wrote(self.tally("profiles", r)) {
            p.sessions.lock().expect("sessions").insert(user, w.token);
        }
    }

    /// Users at two locations edit the same ticket at once: a conflict for
    /// the reconciliation queue, which an operator sometimes resolves.
    async fn ticket(&self, at: usize) {
        let key = format!("ticket-{}", self.pick(6));
        let (p, q) = (
            &self.populations[at],
            &self.populations[(at + 1) % self.populations.len()],
        );
        let (open, closed, opts) = (
            json!({"status": "open", "by": p.location}),
            json!({"status": "closed", "by": q.location}),
            WriteOptions::default(),
        );
        let a = p.client.put("tickets", &key, &open, &opts);
        let b = q.client.put("tickets", &key, &closed, &opts);
        let (ra, rb) = tokio::join!(a, b);
        let queued = matches!(&ra, Err(e) if e.api_error().is_some_and(|a| a.status == 409));
        self.wrote(self.tally("tickets", ra));
        self.wrote(self.tally("tickets", rb));
        if queued && self.pick(2) == 0 {
            let Ok(region) = p.client.region_for("tickets", &key, "write").await else {
                return;
            };
            if let Some(c) = self.regions.get(&region) {
                let resolution = Resolution::Value(json!({"status": "reviewed"}));
                let r = c.resolve("tickets", &key, &resolution, None).await;
                self.wrote(self.tally("tickets", r));
            }
        }
    }
}
