//! `parallax bench failover`: three region processes, a router at each
//! region's location, clients at a steady rate through the routers; a
//! region is killed with SIGKILL, restarted once its keys moved, and handed
//! its keys back, several times. Reports detection, reroute (until no
//! client's cached answer names the killed region: the TTL included) and
//! ownership-move times, the share of requests that failed or were
//! indeterminate, the longest time a client saw only failures, and checks
//! that nothing acknowledged was lost — beside the anchor of a DNS
//! failover with Route 53's default health check (every 30 s, 3 failures)
//! and a 60 s TTL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use parallax_core::api::EntityOp;
use parallax_core::{ClientError, ReadOptions, RegionClient, RoutedClient, WriteOptions};
use serde_json::json;

use super::{REGIONS, free_port};

/// Arguments of `parallax bench failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Failovers (each kills a region, restarts it and waits for the hand-back).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Clients per router location.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Requests per second of each client.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The region killed in each round.
    #[arg(long, default_value = "eu-west")]
    pub victim: String,
}

const TOKEN: &str = "bench-client";
const ADMIN: &str = "bench-admin";

fn config(ports: &[u16; 6]) -> String {
    let locations = [(38.9, -77.4), (45.6, -121.2), (53.3, -6.3)];
    let mut toml = format!(
        "[cluster]\nclient_token = \"{TOKEN}\"\nadmin_token = \"{ADMIN}\"\npeer_secret = \"bench-peer\"\n\n"
    );
    for (i, r) in REGIONS.iter().enumerate() {
        toml.push_str(&format!(
            "[regions.{r}]\nlisten = \"127.0.0.1:{}\"\nlocation = {{ lat = {}, lon = {} }}\n\n[routers.{r}]\nlisten = \"127.0.0.1:{}\"\n\n",
            ports[i],
            locations[i].0,
            locations[i].1,
            ports[3 + i]
        ));
    }
    toml.push_str(
        "[latency_ms.us-east]\nus-west = 32\neu-west = 38\n\n[latency_ms.us-west]\neu-west = 66\n\n\
         [classes.profiles]\nconflict = \"merge\"\nfields = { n = \"max\" }\n\n\
         [classes.likes]\nconflict = \"gcounter\"\n\n\
         [classes.balances]\nconflict = \"manual\"\nownership = \"home\"\n\
         home_prefixes = { \"us-\" = \"us-east\", \"usw-\" = \"us-west\", \"eu-\" = \"eu-west\" }\n",
    );
    toml
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// (sent at, first choice) of every request.
    choices: Vec<(Instant, String)>,
    /// (at, ok / failed / indeterminate) of every request.
    outcomes: Vec<(Instant, Outcome)>,
    /// Highest `n` acknowledged per profile key.
    acked_n: BTreeMap<String, u64>,
    /// Increments acknowledged, and indeterminate.
    incr_acked: u64,
    incr_indeterminate: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Indeterminate,
}

fn spawn(exe: &Path, args: &[&str], config: &Path, data: &Path) -> Result<tokio::process::Child> {
    tokio::process::Command::new(exe)
        .args(args)
        .arg("--config")
        .arg(config)
        .args(if args[0] == "region" {
            vec!["--data-dir".to_owned(), data.display().to_string()]
        } else {
            vec![]
        })
        .env("PARALLAX_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a process")
}

async fn wait_http(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(
        reqwest::get(url).await.map(|r| r.status().is_success()),
        Ok(true)
    ) {
        if Instant::now() > deadline {
            bail!("{url} did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn p50_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// `parallax bench failover`.
pub(super) async fn run(a: FailoverArgs) -> Result<ExitCode> {
    let Some(victim_idx) = REGIONS.iter().position(|r| *r == a.victim) else {
        bail!(
            "--victim `{}` is not one of {REGIONS:?}. Fix: name one of those",
            a.victim
        );
    };
    if a.rounds == 0 || a.clients == 0 || a.rate <= 0.0 {
        bail!("--rounds, --clients and --rate must be positive");
    }
    let dir = tempfile::tempdir()?;
    let mut ports = [0u16; 6];
    for p in &mut ports {
        *p = free_port()?;
    }
    let config_path = dir.path().join("bench.toml");
    let text = config(&ports);
    std::fs::write(&config_path, &text)?;
    let cfg = parallax_core::config::Config::from_toml(&text, "bench.toml")?;
    let exe = std::env::current_exe()?;
    let data = dir.path().join("data");
    let mut regions = Vec::new();
    for r in REGIONS {
        regions.push(spawn(
            &exe,
            &["region", "--region", r],
            &config_path,
            &data,
        )?);
    }
    let mut routers = Vec::new();
    for r in REGIONS {
        routers.push(spawn(
            &exe,
            &["router", "--location", r],
            &config_path,
            &data,
        )?);
    }
    let region_urls: Vec<String> = REGIONS
        .iter()
        .map(|r| cfg.region_url(r).unwrap_or_default())
        .collect();
    let router_urls: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", ports[3 + i]))
        .collect();
    for u in &region_urls {
        wait_http(&format!("{u}/readyz")).await?;
    }
    for u in &router_urls {
        wait_http(&format!("{u}/healthz")).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Clients: each at its location's router, writing its own profile key
    // (idempotent PUTs of a growing n) and incrementing a counter.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (li, router) in router_urls.iter().enumerate() {
        for c in 0..a.clients {
            let client = RoutedClient::new(vec![router.clone()], None)
                .with_tokens(TOKEN, ADMIN)
                .with_timeout(Duration::from_millis(500));
            let stop = Arc::clone(&stop);
            let key = format!("{}-{c}", REGIONS[li]);
            let every = Duration::from_secs_f64(1.0 / a.rate);
            tasks.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut next = Instant::now();
                let mut n = 0u64;
                let opts = WriteOptions::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    next += every;
                    tokio::time::sleep_until(next.into()).await;
                    n += 1;
                    let incr = n.is_multiple_of(4);
                    let now = Instant::now();
                    if let Ok(first) = client
                        .region_for(if incr { "likes" } else { "profiles" }, &key, "write")
                        .await
                    {
                        seen.choices.push((now, first));
                    }
                    let result = if incr {
                        client
                            .op("likes", &key, &EntityOp::Incr { by: 1 }, &opts)
                            .await
                    } else {
                        client
                            .put("profiles", &key, &json!({ "n": n }), &opts)
                            .await
                    };
                    let outcome = match result {
                        Ok(_) => {
                            if incr {
                                seen.incr_acked += 1;
                            } else {
                                seen.acked_n.insert(key.clone(), n);
                            }
                            Outcome::Ok
                        }
                        Err(ClientError::Indeterminate { .. }) => {
                            seen.incr_indeterminate += 1;
                            Outcome::Indeterminate
                        }
                        Err(_) => Outcome::Failed,
                    };
                    seen.outcomes.push((Instant::now(), outcome));
                }
                (key, seen)
            }));
        }
    }

    let survivor = RegionClient::new(
        REGIONS[(victim_idx + 1) % 3],
        &region_urls[(victim_idx + 1) % 3],
    )
    .with_tokens(TOKEN, ADMIN)
    .with_timeout(Duration::from_secs(2));
    let mut kills = Vec::new();
    let mut restarts = Vec::new();
    let mut detection = Vec::new();
    let mut moved = Vec::new();
    let poll = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..a.rounds {
        let killed = Instant::now();
        regions[victim_idx].start_kill()?;
        let _ = regions[victim_idx].wait().await;
        kills.push(killed);
        // Detection: every router declares it down.
        let mut detected = [None; 3];
        let mut move_at = None;
        while detected.iter().any(Option::is_none) || move_at.is_none() {
            for (i, u) in router_urls.iter().enumerate() {
                if detected[i].is_none()
                    && let Ok(r) = poll.get(format!("{u}/v1/regions")).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && v["regions"][&a.victim]["state"] == "down"
                {
                    detected[i] = Some(killed.elapsed());
                }
            }
            if move_at.is_none()
                && let Ok(o) = survivor.ownership().await
                && o.delegations
                    .get(&a.victim)
                    .is_some_and(|d| d.delegate != a.victim)
            {
                move_at = Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("round {round}: no detection or move within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        detection.push(detected.iter().flatten().max().copied().unwrap_or_default());
        moved.push(move_at.unwrap_or_default());
        // Restart it and wait for the hand-back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        restarts.push(Instant::now());
        regions[victim_idx] = spawn(
            &exe,
            &["region", "--region", a.victim.as_str()],
            &config_path,
            &data,
        )?;
        let back = Instant::now();
        loop {
            if let Ok(o) = survivor.ownership().await
                && o.delegations
                    .get(&a.victim)
                    .is_some_and(|d| d.delegate == a.victim)
            {
                break;
            }
            if back.elapsed() > Duration::from_secs(120) {
                bail!("round {round}: the keys were not handed back within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "round {}: detected {:?}, keys moved {:?} after the kill",
            round + 1,
            detection[round],
            moved[round]
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await?);
    }

    // Reroute: the last request between a kill and the restart whose
    // first choice was the killed region; failures and indeterminate ones
    // in the 10 s after the kill.
    let mut reroute = Vec::new();
    let mut failed_share = Vec::new();
    let mut longest_failing = Duration::ZERO;
    for (k, restart) in kills.iter().zip(&restarts) {
        let down = *k..*restart;
        let window = *k..(*k + Duration::from_secs(10));
        let last = all
            .iter()
            .flat_map(|(_, s)| s.choices.iter())
            .filter(|(t, r)| down.contains(t) && *r == a.victim)
            .map(|(t, _)| t.duration_since(*k))
            .max()
            .unwrap_or_default();
        reroute.push(last);
        let (mut n, mut bad) = (0u64, 0u64);
        for (_, s) in &all {
            for (_, o) in s.outcomes.iter().filter(|(t, _)| window.contains(t)) {
                n += 1;
                if *o != Outcome::Ok {
                    bad += 1;
                }
            }
        }
        failed_share.push(if n == 0 {
            0.0
        } else {
            bad as f64 / n as f64 * 100.0
        });
    }
    for (_, s) in &all {
        let mut since: Option<Instant> = None;
        for (t, o) in &s.outcomes {
            match (o, since) {
                (Outcome::Ok, Some(start)) => {
                    longest_failing = longest_failing.max(t.duration_since(start));
                    since = None;
                }
                (Outcome::Ok, None) => {}
                (_, None) => since = Some(*t),
                _ => {}
            }
        }
    }

    // Nothing acknowledged lost: every region holds at least the last
    // acknowledged n of every key, and every acknowledged increment.
    let mut lost = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, url) in region_urls.iter().enumerate() {
        let c = RegionClient::new(REGIONS[i], url)
            .with_tokens(TOKEN, ADMIN)
            .with_timeout(Duration::from_secs(5));
        for (key, s) in &all {
            let want = s.acked_n.get(key).copied().unwrap_or(0);
            loop {
                let got = c
                    .get("profiles", key, &ReadOptions::default())
                    .await
                    .ok()
                    .and_then(|r| r.value["n"].as_u64())
                    .unwrap_or(0);
                let likes = c
                    .get("likes", key, &ReadOptions::default())
                    .await
                    .ok()
                    .and_then(|r| r.value.as_u64())
                    .unwrap_or(0);
                let ok = got >= want
                    && likes >= s.incr_acked
                    && likes <= s.incr_acked + s.incr_indeterminate;
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    lost += 1;
                    eprintln!(
                        "{}: {key}: n {got} < {want} or likes {likes} not in [{}, {}]",
                        REGIONS[i],
                        s.incr_acked,
                        s.incr_acked + s.incr_indeterminate
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for mut c in routers.into_iter().chain(regions) {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }

    let ms = |v: &[Duration]| p50_max(v.iter().map(|d| d.as_secs_f64() * 1_000.0).collect());
    let (d50, dmax) = ms(&detection);
    let (r50, rmax) = ms(&reroute);
    let (m50, mmax) = ms(&moved);
    let (f50, fmax) = p50_max(failed_share);
    // Route 53: a check every 30 s, unhealthy after 3 failures (up to 90 s),
    // then clients keep the old answer up to the 60 s TTL.
    let anchor_detect_ms = 90_000.0;
    let anchor_reroute_ms = 150_000.0;
    println!(
        "parallax bench failover: {} rounds, kill -9 {}, {} clients per router at {} req/s each",
        a.rounds, a.victim, a.clients, a.rate
    );
    println!(
        "  detected by every router   p50 {d50:>7.0} ms   max {dmax:>7.0} ms   (Route 53 default: up to {anchor_detect_ms:.0} ms; ratio {:.3})",
        dmax / anchor_detect_ms
    );
    println!(
        "  every client rerouted      p50 {r50:>7.0} ms   max {rmax:>7.0} ms   (Route 53 + 60 s TTL: up to {anchor_reroute_ms:.0} ms; ratio {:.3})",
        rmax / anchor_reroute_ms
    );
    println!("  keys moved                 p50 {m50:>7.0} ms   max {mmax:>7.0} ms");
    println!(
        "  requests failed or indeterminate in the 10 s after a kill: p50 {f50:.1} %, max {fmax:.1} %"
    );
    println!(
        "  longest run of failures seen by one client: {:.0} ms",
        longest_failing.as_secs_f64() * 1_000.0
    );
    let indeterminate: u64 = all.iter().map(|(_, s)| s.incr_indeterminate).sum();
    println!(
        "  increments reported indeterminate: {indeterminate}; acknowledged writes lost: {lost}"
    );
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
