//! Deterministic network simulation of three regions.
//!
//! Each seed runs the real nodes (store, writer, shippers, merges) on one
//! thread with paused tokio time, connected by an in-process network that
//! injects latency, partitions, one-way partitions and crashes. A seed
//! replays exactly; a failure prints it. Set `PARALLAX_SIM_SEEDS=N` for more
//! seeds and `PARALLAX_SIM_SEED=S` to replay one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parallax_core::Error;
use parallax_core::api::MoveOwnership;
use parallax_core::clock::{Clock, Hlc, SkewedClock, TokioClock};
use parallax_core::config::Config;
use parallax_core::entity::{Entity, Op, State};
use parallax_core::protocol::{ReadConsistency, WriteConsistency};
use parallax_core::transport::{PeerHandler, SimNet};
use parallax_core::version::{Causality, VersionVector};
use parallax_replicator::{Node, NodeOptions, ReadRequest, WriteRequest, WriterMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "us-west"];

const CONFIG: &str = r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"
primary = "us-east"
max_clock_offset_ms = 500

[regions.us-east]
listen = "127.0.0.1:1"
location = { lat = 38.9, lon = -77.4 }
[regions.us-west]
listen = "127.0.0.1:2"
location = { lat = 45.6, lon = -121.2 }
[regions.eu-west]
listen = "127.0.0.1:3"
location = { lat = 53.3, lon = -6.3 }

[replication]
heartbeat_interval_ms = 1000
retry_max_ms = 2000

[classes.likes]
conflict = "gcounter"
[classes.stock]
conflict = "pncounter"
[classes.carts]
conflict = "orset"
[classes.profiles]
conflict = "merge"
fields = { visits = "sum", best = "max", tags = "union" }
[classes.settings]
conflict = "lww"
[classes.tickets]
conflict = "manual"
[classes.balances]
conflict = "lww"
ownership = "home"
home_prefixes = { "eu-" = "eu-west", "us-" = "us-east" }
default_home = "us-west"
[classes.flags]
conflict = "lww"
rollout = "read-local"
[classes.ledger]
conflict = "lww"
rollout = "active-passive"
"#;

type SimResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// One acknowledged LWW write.
#[derive(Clone, Debug)]
struct Acked {
    hlc: Hlc,
    version: VersionVector,
}

struct Sim {
    seed: u64,
    net: Arc<SimNet>,
    config: Arc<Config>,
    dir: tempfile::TempDir,
    base: Arc<dyn Clock>,
    nodes: BTreeMap<String, Node>,
    handlers: BTreeMap<String, Arc<dyn PeerHandler>>,
    skew_ms: BTreeMap<String, i64>,
    rng: SmallRng,
    increments: BTreeMap<(String, String), i64>,
    lww: BTreeMap<String, Vec<Acked>>,
    unknown_outcome: BTreeSet<String>,
    acked_writes: u64,
    refused_writes: u64,
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        Sim::with_config(seed, CONFIG).await
    }

    async fn with_config(seed: u64, text: &str) -> Sim {
        let config = Arc::new(Config::from_toml(text, "sim.toml").expect("sim config"));
        let mut sim = Sim {
            seed,
            net: SimNet::new(seed, 5, 40, 0.0),
            config,
            dir: tempfile::tempdir().expect("tempdir"),
            base: Arc::new(TokioClock::new(1_800_000_000_000)),
            nodes: BTreeMap::new(),
            handlers: BTreeMap::new(),
            skew_ms: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed ^ 0xA5A5),
            increments: BTreeMap::new(),
            lww: BTreeMap::new(),
            unknown_outcome: BTreeSet::new(),
            acked_writes: 0,
            refused_writes: 0,
        };
        for r in REGIONS {
            sim.start(r).await;
        }
        sim
    }

    async fn start(&mut self, region: &str) {
        let skew = self.skew_ms.get(region).copied().unwrap_or(0);
        let clock: Arc<dyn Clock> = Arc::new(SkewedClock::new(Arc::clone(&self.base), skew));
        let mut attempts = 0;
        let node = loop {
            let mut opts = NodeOptions::new(
                Arc::clone(&self.config),
                region,
                self.dir.path().to_owned(),
                self.net.transport(region),
            );
            opts.clock = Arc::clone(&clock);
            opts.writer_mode = WriterMode::Task;
            opts.seed = self.seed ^ region.len() as u64;
            match Node::start(opts).await {
                Ok(n) => break n,
                // The crashed instance's last references are still being
                // dropped by tasks finishing their current step.
                Err(e) if attempts < 200 => {
                    attempts += 1;
                    if attempts == 200 {
                        panic!("seed {}: cannot restart {region}: {e}", self.seed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("seed {}: cannot start {region}: {e}", self.seed),
            }
        };
        let handler = node.peer_handler();
        self.net.register(region, Arc::downgrade(&handler));
        self.handlers.insert(region.to_owned(), handler);
        self.nodes.insert(region.to_owned(), node);
    }

    fn crash(&mut self, region: &str) {
        self.net.unregister(region);
        self.handlers.remove(region);
        if let Some(node) = self.nodes.remove(region) {
            node.crash();
        }
    }

    fn up(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// One random client operation at a random live region.
    async fn random_op(&mut self) {
        let up = self.up();
        let region = up[self.rng.random_range(0..up.len())].clone();
        let node = self.nodes[&region].clone();
        let kind = self.rng.random_range(0..7);
        let key = format!("k{}", self.rng.random_range(0..6));
        let (class, op) = match kind {
            0 => ("likes", Op::Incr(self.rng.random_range(1..5))),
            1 => ("stock", Op::Incr(self.rng.random_range(-4..5))),
            2 => {
                let m = json!(format!("item{}", self.rng.random_range(0..4)));
                (
                    "carts",
                    if self.rng.random_bool(0.3) {
                        Op::Remove(m)
                    } else {
                        Op::Add(m)
                    },
                )
            }
            3 => (
                "profiles",
                Op::Put(json!({
                    "visits": self.rng.random_range(0..50),
                    "best": self.rng.random_range(0..1000),
                    "tags": [format!("t{}", self.rng.random_range(0..5))],
                    "name": format!("{region}-{}", self.acked_writes),
                })),
            ),
            4 => (
                "settings",
                Op::Put(json!({ "by": region, "n": self.acked_writes })),
            ),
            5 => (
                "tickets",
                Op::Put(json!({ "by": region, "n": self.acked_writes })),
            ),
            _ => {
                let prefix = ["eu-", "us-", "xx-"][self.rng.random_range(0..3)];
                let key = format!("{prefix}{}", self.rng.random_range(0..4));
                let cents = self.acked_writes;
                return self
                    .write(&node, "balances", &key, Op::Put(json!({ "cents": cents })))
                    .await;
            }
        };
        self.write(&node, class, &key, op).await;
    }

    async fn write(&mut self, node: &Node, class: &str, key: &str, op: Op) {
        let req = WriteRequest {
            class: class.to_owned(),
            key: key.to_owned(),
            op: op.clone(),
            consistency: WriteConsistency::Async,
            session: None,
            home: None,
        };
        match node.write(req, None).await {
            Ok(out) => {
                self.acked_writes += 1;
                if let Op::Incr(by) = op {
                    *self
                        .increments
                        .entry((class.to_owned(), key.to_owned()))
                        .or_insert(0) += by;
                }
                if class == "settings" || class == "balances" {
                    self.lww
                        .entry(format!("{class}/{key}"))
                        .or_default()
                        .push(Acked {
                            hlc: out.hlc,
                            version: out.version,
                        });
                }
            }
            // A forwarded write whose answer was lost may have been applied.
            Err(Error::Unavailable(_)) => {
                self.refused_writes += 1;
                self.unknown_outcome.insert(format!("{class}/{key}"));
            }
            // An owner cut off from the majority refuses its keys' writes
            // (the owner lease); nothing was applied.
            Err(
                Error::Conflicted { .. }
                | Error::LeaseLapsed(_)
                | Error::NotFound { .. }
                | Error::ShuttingDown(_)
                | Error::Remote(_),
            ) => self.refused_writes += 1,
            Err(e) => panic!("seed {}: unexpected write error: {e}", self.seed),
        }
    }

    /// Runs `ops` random operations spread over `over` of simulated time.
    async fn load(&mut self, ops: usize, over: Duration) {
        let step = over / ops.max(1) as u32;
        for _ in 0..ops {
            self.random_op().await;
            let jitter = self.rng.random_range(0..=step.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    }

    /// Waits (simulated time) until every live region has shipped
    /// everything to every other and they all hold the same entities.
    async fn converge(&self, limit: Duration) -> SimResult {
        let start = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let drained = self.nodes.values().all(|n| {
                let s = n.stats();
                s.replication.peers.values().all(|p| p.backlog_ops == 0)
            });
            if drained && self.differences().is_empty() {
                return Ok(());
            }
            if start.elapsed() > limit {
                let diffs = self.differences();
                return Err(format!(
                    "no convergence after {limit:?} (drained: {drained}); {} differing entities, e.g. {:?}",
                    diffs.len(),
                    &diffs[..diffs.len().min(3)]
                ));
            }
        }
    }

    fn snapshot(&self, region: &str) -> BTreeMap<String, Entity> {
        let node = &self.nodes[region];
        let mut all = BTreeMap::new();
        for class in self.config.classes.keys() {
            for (key, e) in node.scan(class, None, usize::MAX).expect("scan") {
                all.insert(format!("{class}/{key}"), e);
            }
        }
        all
    }

    fn differences(&self) -> Vec<String> {
        let views: Vec<BTreeMap<String, Entity>> =
            self.nodes.keys().map(|r| self.snapshot(r)).collect();
        let keys: BTreeSet<&String> = views.iter().flat_map(|v| v.keys()).collect();
        keys.into_iter()
            .filter(|k| views.iter().any(|v| v.get(*k) != views[0].get(*k)))
            .cloned()
            .collect()
    }

    /// The invariants that must hold once the regions converged.
    fn check_invariants(&self) -> SimResult {
        let region = REGIONS[0];
        let state = self.snapshot(region);
        // Counters equal the sum of acknowledged increments, exactly.
        for ((class, key), sum) in &self.increments {
            let got = state.get(&format!("{class}/{key}")).and_then(Entity::value);
            ensure!(
                got == Some(json!(sum)) || (*sum == 0 && got.is_none()),
                "{class}/{key}: counter is {got:?}, acknowledged increments sum to {sum}"
            );
        }
        // Every acknowledged LWW write is the final value, a recorded
        // loser of a counted conflict, or was overwritten by a write that had seen it.
        let mut losers: BTreeSet<(String, Hlc)> = BTreeSet::new();
        for node in self.nodes.values() {
            for r in node.conflict_log(0, usize::MAX).expect("conflict log") {
                if let Some(l) = r.loser {
                    losers.insert((format!("{}/{}", r.class, r.key), l));
                }
            }
        }
        for (key, writes) in &self.lww {
            let Some(entity) = state.get(key) else {
                return Err(format!("{key}: acknowledged writes but no entity"));
            };
            let State::Lww(lww) = &entity.state else {
                return Err(format!("{key}: not an LWW entity"));
            };
            for w in writes {
                let is_final = lww.stamp == w.hlc;
                let is_loser = losers.contains(&(key.clone(), w.hlc.clone()));
                // Overwritten by an acknowledged write that had seen it, or
                // (where a forwarded write's outcome is unknown) by some later write.
                let superseded = writes
                    .iter()
                    .any(|o| o.version.compare(&w.version) == Causality::After)
                    || (self.unknown_outcome.contains(key)
                        && entity.version.compare(&w.version) == Causality::After);
                ensure!(
                    is_final || is_loser || superseded,
                    "{key}: acknowledged write {} was silently lost (final {})",
                    w.hlc,
                    lww.stamp
                );
            }
        }
        // Conflicted manual entities are in every region's reconciliation queue, and only they.
        for (region, node) in &self.nodes {
            let queued: BTreeSet<String> = node
                .queue(None, usize::MAX)
                .expect("queue")
                .into_iter()
                .map(|q| format!("{}/{}", q.class, q.key))
                .collect();
            let conflicted: BTreeSet<String> = self
                .snapshot(region)
                .into_iter()
                .filter(|(_, e)| e.is_conflicted())
                .map(|(k, _)| k)
                .collect();
            ensure!(
                queued == conflicted,
                "{region}: queue {queued:?} but conflicted {conflicted:?}"
            );
        }
        Ok(())
    }

    /// Reads every region's value of one key at every consistency level
    /// that needs no other region; checks they agree after convergence.
    async fn reads_agree(&self) -> SimResult {
        let mut values = Vec::new();
        for node in self.nodes.values() {
            let req = ReadRequest {
                class: "likes".into(),
                key: "k0".into(),
                consistency: ReadConsistency::Local,
                session: None,
            };
            values.push(node.read(req, None).await.ok().map(|o| o.value));
        }
        ensure!(
            values.windows(2).all(|w| w[0] == w[1]),
            "local reads differ after convergence: {values:?}"
        );
        Ok(())
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("PARALLAX_SIM_SEED") {
        return vec![s.parse().expect("PARALLAX_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("PARALLAX_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    (1..=n).collect()
}

/// Runs a scenario over every seed, each on a fresh single-threaded runtime
/// with paused time; panics naming the first failing seed.
fn run_seeds<F>(name: &str, scenario: F)
where
    F: Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = SimResult>>>,
{
    for seed in seeds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let result = rt.block_on(scenario(seed));
        if let Err(e) = result {
            panic!(
                "{name} failed with seed {seed} (replay: PARALLAX_SIM_SEED={seed} cargo test -p parallax-replicator --test simulation {name}): {e}"
            );
        }
    }
}

#[test]
fn partition_one_region_then_heal_converges_and_loses_nothing() {
    run_seeds(
        "partition_one_region_then_heal_converges_and_loses_nothing",
        |seed| {
            Box::pin(async move {
                let mut sim = Sim::new(seed).await;
                sim.load(60, Duration::from_secs(6)).await;
                let isolated = REGIONS[(seed % 3) as usize];
                for other in REGIONS.iter().filter(|r| **r != isolated) {
                    sim.net.partition(isolated, other);
                }
                sim.load(150, Duration::from_secs(20)).await;
                ensure!(
                    !sim.differences().is_empty() || sim.acked_writes < 10,
                    "a partitioned region cannot be identical"
                );
                sim.net.heal();
                sim.load(30, Duration::from_secs(3)).await;
                sim.converge(Duration::from_secs(120)).await?;
                sim.check_invariants()?;
                sim.reads_agree().await?;
                ensure!(
                    sim.acked_writes > 100,
                    "too few acknowledged writes ({})",
                    sim.acked_writes
                );
                Ok(())
            })
        },
    );
}

#[test]
fn one_way_partition_converges_after_heal() {
    run_seeds("one_way_partition_converges_after_heal", |seed| {
        Box::pin(async move {
            let mut sim = Sim::new(seed).await;
            sim.load(40, Duration::from_secs(4)).await;
            let a = REGIONS[(seed % 3) as usize];
            let b = REGIONS[((seed + 1) % 3) as usize];
            // a's messages to b are lost; b's requests reach a but a's answers are lost.
            sim.net.partition_oneway(a, b);
            sim.load(120, Duration::from_secs(15)).await;
            let stats = sim.nodes[b].stats();
            ensure!(
                stats.replication.peers[a].errors > 0,
                "{b} shipping to {a} should time out while {a}'s answers are lost"
            );
            sim.net.heal();
            sim.converge(Duration::from_secs(120)).await?;
            sim.check_invariants()?;
            Ok(())
        })
    });
}

#[test]
fn crash_mid_stream_and_restart_loses_no_acknowledged_write() {
    run_seeds(
        "crash_mid_stream_and_restart_loses_no_acknowledged_write",
        |seed| {
            Box::pin(async move {
                let mut sim = Sim::new(seed).await;
                sim.load(80, Duration::from_secs(5)).await;
                let victim = REGIONS[(seed % 3) as usize];
                // Crash while writes and shipments are in flight.
                sim.crash(victim);
                sim.load(80, Duration::from_secs(8)).await;
                sim.start(victim).await;
                let restarted = sim.nodes[victim].stats();
                ensure!(
                    restarted.replication.head > 0,
                    "{victim} lost its log head on restart"
                );
                let resumed: Vec<u64> = restarted
                    .replication
                    .peers
                    .values()
                    .map(|p| p.acked)
                    .collect();
                ensure!(
                    resumed.iter().any(|&c| c > 0),
                    "{victim} restarted without its durable cursors: {resumed:?}"
                );
                ensure!(
                    restarted
                        .replication
                        .peers
                        .values()
                        .any(|p| p.applied_from > 0),
                    "{victim} restarted without its applied watermarks"
                );
                sim.load(60, Duration::from_secs(5)).await;
                sim.converge(Duration::from_secs(120)).await?;
                sim.check_invariants()?;
                Ok(())
            })
        },
    );
}

#[test]
fn clock_skew_beyond_the_guard_is_refused_and_counted() {
    run_seeds(
        "clock_skew_beyond_the_guard_is_refused_and_counted",
        |seed| {
            Box::pin(async move {
                let mut sim = Sim::new(seed).await;
                let fast = REGIONS[(seed % 3) as usize];
                sim.crash(fast);
                sim.skew_ms.insert(fast.to_owned(), 2_000);
                sim.start(fast).await;
                sim.load(60, Duration::from_secs(6)).await;
                let others: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != fast).collect();
                let refused: u64 = others
                    .iter()
                    .map(|r| sim.nodes[*r].stats().replication.refused_stamps)
                    .sum();
                ensure!(
                    refused > 0,
                    "stamps 2 s ahead must be refused by a 500 ms guard"
                );
                // Within the guard, replication flows and converges.
                sim.crash(fast);
                sim.skew_ms.insert(fast.to_owned(), 300);
                sim.start(fast).await;
                sim.load(30, Duration::from_secs(4)).await;
                sim.converge(Duration::from_secs(120)).await?;
                sim.check_invariants()?;
                Ok(())
            })
        },
    );
}

fn write_req(class: &str, key: &str, op: Op, consistency: WriteConsistency) -> WriteRequest {
    WriteRequest {
        class: class.into(),
        key: key.into(),
        op,
        consistency,
        session: None,
        home: None,
    }
}

fn read_req(class: &str, key: &str, consistency: ReadConsistency) -> ReadRequest {
    ReadRequest {
        class: class.into(),
        key: key.into(),
        consistency,
        session: None,
    }
}

#[test]
fn failover_moves_ownership_and_fences_the_old_owner() {
    run_seeds(
        "failover_moves_ownership_and_fences_the_old_owner",
        |seed| {
            Box::pin(async move {
                let mut sim = Sim::new(seed).await;
                let (eu, us) = ("eu-west", "us-east");
                let first = sim.nodes[us]
                    .write(
                        write_req(
                            "balances",
                            "eu-1",
                            Op::Put(json!("v1")),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await;
                ensure!(
                    first.as_ref().is_ok_and(|w| w.served_by == eu),
                    "a write to eu-1 is forwarded to its home: {first:?}"
                );
                sim.converge(Duration::from_secs(30)).await?;
                // eu-west is cut off; the operator moves its keys to us-east.
                sim.net.partition(eu, us);
                sim.net.partition(eu, "us-west");
                let view = sim.nodes[us]
                    .move_ownership(eu, us)
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    view.effective(eu) == (us.to_owned(), 1),
                    "delegation: {view:?}"
                );
                let new_owner = sim.nodes[us]
                    .write(
                        write_req(
                            "balances",
                            "eu-1",
                            Op::Put(json!("from the new owner")),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    new_owner.served_by == us,
                    "us-east takes eu-1 after the failover"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                // The isolated old owner still believes it owns eu-1 and takes a
                // later write (a higher clock) from a client that reaches it.
                let stale = sim.nodes[eu]
                    .write(
                        write_req(
                            "balances",
                            "eu-1",
                            Op::Put(json!("from the old owner")),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    stale.hlc > new_owner.hlc,
                    "the stale write has the later stamp"
                );
                sim.lww.entry("balances/eu-1".into()).or_default().extend([
                    Acked {
                        hlc: new_owner.hlc.clone(),
                        version: new_owner.version.clone(),
                    },
                    Acked {
                        hlc: stale.hlc.clone(),
                        version: stale.version.clone(),
                    },
                ]);
                sim.net.heal();
                sim.converge(Duration::from_secs(60)).await?;
                for (region, node) in &sim.nodes {
                    let v = node
                        .read(read_req("balances", "eu-1", ReadConsistency::Local), None)
                        .await
                        .map_err(|e| e.to_string())?;
                    ensure!(
                        v.value == json!("from the new owner"),
                        "{region}: the newer epoch must win, got {}",
                        v.value
                    );
                }
                let fenced = sim
                    .nodes
                    .values()
                    .flat_map(|n| n.conflict_log(0, usize::MAX).unwrap())
                    .any(|r| r.outcome == "fenced" && r.loser.as_ref() == Some(&stale.hlc));
                ensure!(fenced, "the old owner's write is recorded as fenced");
                sim.check_invariants()?;
                // eu-west learned the delegation: its writes to eu- keys now go to us-east.
                let after = sim.nodes[eu]
                    .write(
                        write_req(
                            "balances",
                            "eu-2",
                            Op::Put(json!(1)),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(after.served_by == us, "served by {}", after.served_by);
                // Failing back hands the keys to eu-west under a newer epoch.
                let view = sim.nodes[eu]
                    .move_ownership(eu, eu)
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(view.effective(eu) == (eu.to_owned(), 2), "{view:?}");
                Ok(())
            })
        },
    );
}

#[test]
fn conditional_moves_are_made_once_whichever_region_is_asked() {
    run_seeds(
        "conditional_moves_are_made_once_whichever_region_is_asked",
        |seed| {
            Box::pin(async move {
                let sim = Sim::new(seed).await;
                let (eu, us, west) = ("eu-west", "us-east", "us-west");
                sim.converge(Duration::from_secs(30)).await?;
                sim.net.partition(eu, us);
                sim.net.partition(eu, west);
                let m = |delegate: &str, expect: u64, unreachable: Option<u64>| MoveOwnership {
                    region: eu.into(),
                    delegate: delegate.into(),
                    expect_epoch: Some(expect),
                    unreachable_for_ms: unreachable,
                };
                // us-east reached eu-west moments ago: not down from there.
                let e = sim.nodes[us]
                    .move_ownership_if(&m(us, 0, Some(3_600_000)))
                    .await
                    .unwrap_err();
                ensure!(
                    matches!(e, Error::Precondition(_))
                        && e.to_string().contains("not down from here"),
                    "{e}"
                );
                // A stale epoch is refused.
                let e = sim.nodes[us]
                    .move_ownership_if(&m(us, 7, None))
                    .await
                    .unwrap_err();
                ensure!(e.status() == 409 && e.to_string().contains("not 7"), "{e}");
                let view = sim.nodes[us]
                    .move_ownership_if(&m(us, 0, None))
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(view.effective(eu) == (us.to_owned(), 1), "{view:?}");
                // A second router that saw epoch 0 asks another region at
                // once: its quorum read sees the move, and it refuses.
                let e = sim.nodes[west]
                    .move_ownership_if(&m(west, 0, None))
                    .await
                    .unwrap_err();
                ensure!(
                    matches!(e, Error::Precondition(_))
                        && e.to_string().contains("epoch 1 (owned by `us-east`)"),
                    "{e}"
                );
                ensure!(
                    sim.nodes[west].ownership().effective(eu) == (us.to_owned(), 1),
                    "the refusing region learned the move"
                );
                Ok(())
            })
        },
    );
}

/// Moves eu-west's keys to us-east as a router does after its grace
/// (every 250 ms until a move is made); returns how long that took.
async fn move_as_a_router(sim: &Sim, eu: &str, us: &str) -> Result<u64, String> {
    let m = MoveOwnership {
        region: eu.into(),
        delegate: us.into(),
        expect_epoch: Some(0),
        unreachable_for_ms: Some(1_000),
    };
    let from = sim.base.now_ms();
    loop {
        match sim.nodes[us].move_ownership_if(&m).await {
            Ok(_) => return Ok(sim.base.now_ms() - from),
            Err(e) if e.status() == 409 => {}
            Err(e) => return Err(format!("the move failed: {e}")),
        }
        ensure!(
            sim.base.now_ms() - from < 30_000,
            "no move within 30 s of trying"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn a_cut_off_owner_stops_taking_writes_before_its_keys_can_move() {
    run_seeds(
        "a_cut_off_owner_stops_taking_writes_before_its_keys_can_move",
        |seed| {
            Box::pin(async move {
                let sim = Sim::new(seed).await;
                let (eu, us, west) = ("eu-west", "us-east", "us-west");
                let put = |v: &str| {
                    write_req(
                        "balances",
                        "eu-lease",
                        Op::Put(json!(v)),
                        WriteConsistency::Async,
                    )
                };
                sim.converge(Duration::from_secs(30)).await?;
                let before = sim.nodes[eu].write(put("before"), None).await;
                ensure!(
                    before.as_ref().is_ok_and(|w| w.served_by == eu),
                    "eu-west takes its own key while it hears from the others: {before:?}"
                );
                sim.net.partition(eu, us);
                sim.net.partition(eu, west);
                let cut = sim.base.now_ms();
                let took = move_as_a_router(&sim, eu, us).await?;
                let c = &sim.config.cluster;
                ensure!(
                    took >= c.lease_ms + c.max_clock_offset_ms,
                    "the keys moved {took} ms after the cut, before eu-west's lease ({} ms) had surely lapsed",
                    c.lease_ms
                );
                // A client still holding the old answer reaches eu-west: refused.
                let stale = sim.nodes[eu].write(put("stale"), None).await;
                ensure!(
                    matches!(stale, Err(Error::LeaseLapsed(_))),
                    "the old owner, cut off {} ms, must refuse: {stale:?}",
                    sim.base.now_ms() - cut
                );
                let new_owner = sim.nodes[us]
                    .write(put("new owner"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(new_owner.served_by == us, "us-east takes eu-lease");
                // Healed: once its lease is back, eu-west has read the move
                // and forwards (it never takes the key itself again).
                sim.net.heal();
                let mut after = None;
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match sim.nodes[eu].write(put("after heal"), None).await {
                        Ok(w) => {
                            after = Some(w);
                            break;
                        }
                        Err(Error::LeaseLapsed(_)) => {}
                        Err(e) => return Err(format!("after the heal: {e}")),
                    }
                }
                let after = after.ok_or("eu-west's lease never came back")?;
                ensure!(
                    after.served_by == us,
                    "eu-west forwards to the new owner: {after:?}"
                );
                sim.converge(Duration::from_secs(60)).await?;
                for (region, node) in &sim.nodes {
                    let v = node
                        .read(
                            read_req("balances", "eu-lease", ReadConsistency::Local),
                            None,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    ensure!(v.value == json!("after heal"), "{region}: {}", v.value);
                }
                Ok(())
            })
        },
    );
}

#[test]
fn a_move_waits_while_a_majority_still_hears_from_the_owner() {
    run_seeds(
        "a_move_waits_while_a_majority_still_hears_from_the_owner",
        |seed| {
            Box::pin(async move {
                let sim = Sim::new(seed).await;
                let (eu, us) = ("eu-west", "us-east");
                sim.converge(Duration::from_secs(30)).await?;
                // Only the eu-west/us-east link is cut: us-west still hears
                // eu-west, which keeps its lease through it.
                sim.net.partition(eu, us);
                tokio::time::sleep(Duration::from_secs(10)).await;
                let m = MoveOwnership {
                    region: eu.into(),
                    delegate: us.into(),
                    expect_epoch: Some(0),
                    unreachable_for_ms: Some(1_000),
                };
                let e = sim.nodes[us].move_ownership_if(&m).await.unwrap_err();
                ensure!(
                    e.status() == 409 && e.to_string().contains("`us-west` heard from it"),
                    "{e}"
                );
                let w = sim.nodes[eu]
                    .write(
                        write_req(
                            "balances",
                            "eu-kept",
                            Op::Put(json!(1)),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(w.served_by == eu, "eu-west still owns its keys");
                Ok(())
            })
        },
    );
}

#[test]
fn consistency_levels_behave_as_documented() {
    run_seeds("consistency_levels_behave_as_documented", |seed| {
        Box::pin(async move {
            let mut sim = Sim::new(seed).await;
            let (a, b, c) = ("us-east", "us-west", "eu-west");
            sim.load(20, Duration::from_secs(2)).await;
            sim.converge(Duration::from_secs(30)).await?;

            // Session: read-your-writes from another region, at once.
            let w = sim.nodes[a]
                .write(
                    write_req(
                        "settings",
                        "s1",
                        Op::Put(json!("mine")),
                        WriteConsistency::Async,
                    ),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut r = read_req("settings", "s1", ReadConsistency::Session);
            r.session = Some(w.token.parse().map_err(|e: Error| e.to_string())?);
            let got = sim.nodes[b]
                .read(r, None)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                got.value == json!("mine"),
                "session read at {b} returned {}",
                got.value
            );

            // Quorum write: a majority holds it durably when acknowledged.
            let q = sim.nodes[a]
                .write(
                    write_req(
                        "settings",
                        "q1",
                        Op::Put(json!(1)),
                        WriteConsistency::Quorum,
                    ),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                q.applied_in.len() >= 2,
                "quorum write applied in {:?}",
                q.applied_in
            );

            // Strong read of a home-owned key from a region that is not its home.
            sim.nodes[c]
                .write(
                    write_req(
                        "balances",
                        "eu-7",
                        Op::Put(json!(70)),
                        WriteConsistency::Async,
                    ),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let strong = sim.nodes[b]
                .read(read_req("balances", "eu-7", ReadConsistency::Strong), None)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                strong.value == json!(70) && strong.served_by == c,
                "strong read: {strong:?}"
            );

            // Rollout: read-local classes write at the primary, read anywhere.
            let flag = sim.nodes[b]
                .write(
                    write_req("flags", "f", Op::Put(json!(true)), WriteConsistency::Async),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                flag.served_by == a,
                "read-local writes go to the primary, got {}",
                flag.served_by
            );
            sim.nodes[a]
                .write(
                    write_req("ledger", "l", Op::Put(json!(5)), WriteConsistency::Async),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let ledger = sim.nodes[c]
                .read(read_req("ledger", "l", ReadConsistency::Local), None)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                ledger.served_by == a,
                "active-passive reads are served by the primary, got {}",
                ledger.served_by
            );

            // b is cut off from a; c still reaches both.
            sim.net.partition(a, b);
            sim.nodes[a]
                .write(
                    write_req(
                        "settings",
                        "b1",
                        Op::Put(json!("fresh")),
                        WriteConsistency::Async,
                    ),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let local = sim.nodes[b]
                .read(read_req("settings", "b1", ReadConsistency::Local), None)
                .await;
            ensure!(
                matches!(local, Err(Error::NotFound { .. })),
                "b has not seen it locally: {local:?}"
            );
            let bounded = sim.nodes[b]
                .read(
                    read_req("settings", "b1", ReadConsistency::Bounded(1_000)),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                bounded.value == json!("fresh"),
                "a bounded read over the bound must not be stale: {bounded:?}"
            );
            let quorum = sim.nodes[b]
                .read(read_req("settings", "b1", ReadConsistency::Quorum), None)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(quorum.value == json!("fresh"), "quorum read: {quorum:?}");
            // Read repair brought the value to b.
            let repaired = sim.nodes[b]
                .read(read_req("settings", "b1", ReadConsistency::Local), None)
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                repaired.value == json!("fresh"),
                "read repair: {repaired:?}"
            );

            // a alone cannot reach a majority: a quorum write times out but is durable at a.
            sim.net.partition(a, c);
            let lonely = sim.nodes[a]
                .write(
                    write_req(
                        "settings",
                        "lonely",
                        Op::Put(json!(1)),
                        WriteConsistency::Quorum,
                    ),
                    None,
                )
                .await;
            ensure!(
                matches!(lonely, Err(Error::QuorumTimeout { .. })),
                "quorum write without a majority: {lonely:?}"
            );
            let here = sim.nodes[a]
                .read(read_req("settings", "lonely", ReadConsistency::Local), None)
                .await;
            ensure!(
                here.is_ok(),
                "the timed-out quorum write is durable where it was taken"
            );
            sim.net.heal();
            sim.converge(Duration::from_secs(60)).await?;
            let there = sim.nodes[c]
                .read(read_req("settings", "lonely", ReadConsistency::Local), None)
                .await;
            ensure!(there.is_ok(), "and it replicates after the partition heals");
            sim.check_invariants()?;
            Ok(())
        })
    });
}

#[test]
fn a_peer_past_the_backlog_cap_is_marked_for_anti_entropy_and_replication_resumes() {
    run_seeds(
        "a_peer_past_the_backlog_cap_is_marked_for_anti_entropy_and_replication_resumes",
        |seed| {
            Box::pin(async move {
                // The detour through us-west is off: it would bring the
                // dropped entries over before the marking is seen.
                let text = CONFIG.replace(
                    "retry_max_ms = 2000",
                    "retry_max_ms = 2000\nmax_backlog_ops = 40",
                ) + "\n[anti_entropy]\ndetour_after_ms = 0\n";
                let mut sim = Sim::with_config(seed, &text).await;
                let (a, b) = ("us-east", "eu-west");
                sim.net.partition(a, b);
                for i in 0..100 {
                    sim.nodes[a]
                        .write(
                            write_req(
                                "settings",
                                &format!("k{i}"),
                                Op::Put(json!(i)),
                                WriteConsistency::Async,
                            ),
                            None,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    // Paced so that a peer that is up keeps within the cap.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                let stats = sim.nodes[a].stats();
                ensure!(
                    stats.replication.peers[b].needs_anti_entropy,
                    "{b} is 100 entries behind a cap of 40: {stats:?}"
                );
                ensure!(
                    !stats.replication.peers["us-west"].needs_anti_entropy,
                    "us-west kept up"
                );
                sim.net.heal();
                // New writes flow again; the dropped ones wait for anti-entropy.
                sim.nodes[a]
                    .write(
                        write_req(
                            "settings",
                            "after",
                            Op::Put(json!("heal")),
                            WriteConsistency::Async,
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    if sim.nodes[b]
                        .read(read_req("settings", "after", ReadConsistency::Local), None)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    ensure!(
                        tokio::time::Instant::now() < deadline,
                        "replication to {b} did not resume"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let missing = (0..100)
                    .filter(|i| {
                        sim.nodes[b]
                            .stored("settings", &format!("k{i}"))
                            .unwrap()
                            .is_none()
                    })
                    .count();
                ensure!(missing > 0, "entries past the cap were dropped for {b}");
                // The mark survives a restart.
                sim.crash(a);
                sim.start(a).await;
                ensure!(
                    sim.nodes[a].stats().replication.peers[b].needs_anti_entropy,
                    "the mark is durable"
                );
                Ok(())
            })
        },
    );
}

fn audit_targets(sim: &Sim) -> Vec<Box<dyn parallax_auditor::Target>> {
    sim.nodes
        .values()
        .map(|n| {
            Box::new(parallax_auditor::NodeRegion(n.clone())) as Box<dyn parallax_auditor::Target>
        })
        .collect()
}

fn audit_options(classes: &[&str]) -> parallax_auditor::AuditOptions {
    parallax_auditor::AuditOptions {
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        lag_bound_ms: 2_000,
        recheck: true,
        progress: false,
    }
}

#[test]
fn entries_lost_from_the_log_are_divergent_until_anti_entropy_repairs_them() {
    run_seeds(
        "entries_lost_from_the_log_are_divergent_until_anti_entropy_repairs_them",
        |seed| {
            Box::pin(async move {
                // The detour through us-west is off: it would bring the
                // dropped entries over before the marking is seen.
                let text = CONFIG.replace(
                    "retry_max_ms = 2000",
                    "retry_max_ms = 2000\nmax_backlog_ops = 40",
                ) + "\n[anti_entropy]\ndetour_after_ms = 0\n";
                let sim = Sim::with_config(seed, &text).await;
                let (a, b) = ("us-east", "eu-west");
                // Only a and b are cut apart; us-west reaches both but relays nothing
                // (no detour).
                sim.net.partition(a, b);
                for i in 0..100 {
                    sim.nodes[a]
                        .write(
                            write_req(
                                "settings",
                                &format!("k{i}"),
                                Op::Put(json!(i)),
                                WriteConsistency::Async,
                            ),
                            None,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                ensure!(
                    sim.nodes[a].stats().replication.peers[b].needs_anti_entropy,
                    "{a} dropped its log for {b}"
                );
                let lacking: BTreeSet<String> = (0..100)
                    .map(|i| format!("k{i}"))
                    .filter(|k| sim.nodes[b].stored("settings", k).unwrap().is_none())
                    .collect();
                ensure!(!lacking.is_empty(), "{b} lacks the entries");
                // The auditor reaches every region (it is not partitioned).
                let targets = audit_targets(&sim);
                let report = parallax_auditor::audit(
                    &targets,
                    &audit_options(&["settings"]),
                    sim.base.as_ref(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let divergent: BTreeSet<String> =
                    report.divergent.iter().map(|f| f.key.clone()).collect();
                ensure!(
                    divergent == lacking,
                    "divergent {divergent:?}, lacking {lacking:?}"
                );
                ensure!(
                    report
                        .divergent
                        .iter()
                        .all(|f| f.regions == vec![b.to_owned()]),
                    "{:?}",
                    report.divergent
                );
                // Heal; anti-entropy (run here at once; the worker would within seconds) repairs it.
                sim.net.heal();
                let reports = sim.nodes[a]
                    .run_anti_entropy(Some(b))
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    reports[0].error.is_none(),
                    "anti-entropy failed: {:?}",
                    reports[0].error
                );
                let pushed: u64 = reports[0].classes.iter().map(|c| c.pushed).sum();
                ensure!(
                    pushed >= lacking.len() as u64,
                    "pushed {pushed} for {} lacking",
                    lacking.len()
                );
                ensure!(
                    !sim.nodes[a].stats().replication.peers[b].needs_anti_entropy,
                    "the mark is cleared"
                );
                let report = parallax_auditor::audit(
                    &targets,
                    &audit_options(&["settings"]),
                    sim.base.as_ref(),
                )
                .await
                .map_err(|e| e.to_string())?;
                ensure!(
                    report.divergent.is_empty() && report.in_flight.is_empty(),
                    "after repair: {report:?}"
                );
                Ok(())
            })
        },
    );
}

#[test]
fn steady_load_without_faults_is_never_reported_divergent() {
    run_seeds(
        "steady_load_without_faults_is_never_reported_divergent",
        |seed| {
            Box::pin(async move {
                let mut sim = Sim::new(seed).await;
                let targets = audit_targets(&sim);
                let classes = [
                    "likes", "stock", "carts", "profiles", "settings", "tickets", "balances",
                ];
                let opts = audit_options(&classes);
                let base = Arc::clone(&sim.base);
                // A simulated minute of writes with an audit running every ten seconds.
                for _ in 0..6 {
                    let (_, report) = tokio::join!(
                        sim.load(60, Duration::from_secs(10)),
                        parallax_auditor::audit(&targets, &opts, base.as_ref())
                    );
                    let report = report.map_err(|e| e.to_string())?;
                    ensure!(
                        report.divergent.is_empty(),
                        "no fault, yet divergent: {:?}",
                        report.divergent
                    );
                }
                sim.converge(Duration::from_secs(60)).await?;
                let report = parallax_auditor::audit(&targets, &opts, base.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    report.divergent.is_empty() && report.in_flight.is_empty(),
                    "converged, yet {report:?}"
                );
                Ok(())
            })
        },
    );
}
