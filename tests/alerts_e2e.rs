//! End to end: every alert kind on real processes. Three `parallax region`
//! processes write telemetry to their collectors' tables, `parallax web`
//! evaluates its rules over those tables, and a webhook receiver in the test
//! records every Alertmanager-format notice with its arrival time.
//!
//! Each test makes its rule's condition true for real (a corrupted entity
//! found by `parallax audit`, a stopped region, a burst of 503s, a stalled
//! replication source), awaits the firing notice naming the right labels,
//! cures the condition and awaits the resolved notice. Every wait is bounded
//! by the rule's own timing as the config sets it (collector flush, rule
//! evaluation, `for`, the rule's window) plus [`SLACK`]; the time from cause
//! to firing and from cure to resolved is printed (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, Notice, REGIONS, Receiver, TOKEN, Web, alerts_of, run};
use parallax_core::config::Config;
use serde_json::{Value, json};

/// Beyond the config's timings: processes sharing two cores, a DataFusion
/// query in a debug build, one delivery.
const SLACK: Duration = Duration::from_secs(10);
/// `unreachable` looks at the probes of the last 30 s (web/src/alerts.rs).
const UNREACHABLE_WINDOW: Duration = Duration::from_secs(30);
/// `lag` looks at the worst lag of the last minute (web/src/alerts.rs).
const LAG_WINDOW: Duration = Duration::from_secs(60);
/// Starting the processes and the first telemetry reaching the tables.
const STARTUP: Duration = Duration::from_secs(60);

/// Telemetry reaches the tables within 0.5 s, rules are evaluated every
/// 0.25 s, every region probes every region every 0.5 s.
const FAST: &str = "[collector]\nflush_interval_ms = 500\nprobe_interval_ms = 500\nprobe_timeout_ms = 250\n\n\
                    [web]\neval_interval_ms = 250\n\n";

/// The tests run one at a time: the times they print are of one cluster on
/// the machine, not of four sharing it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls `check` until it holds; fails naming `what` after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(ms(50)).await;
    }
}

/// A cluster, the web app over its tables, and the receiver its one rule
/// notifies. Dropped in field order: the web app, the regions, the receiver.
struct Rig {
    web: Web,
    cluster: Cluster,
    hook: Receiver,
    config: Config,
    http: reqwest::Client,
}

impl Rig {
    /// Three regions and `parallax web` on `sections` (classes, SLOs and one
    /// alert rule notifying `hook`) with [`FAST`] timings.
    async fn start(replication: &str, sections: &str, region_args: &[&str]) -> Rig {
        let hook = Receiver::start().await;
        let sections = format!(
            "{FAST}{sections}\n[notifiers.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url
        );
        let cluster = Cluster::with_replication(replication, &sections, region_args);
        for i in 0..REGIONS.len() {
            cluster.wait_ready(i).await;
        }
        let config = Config::load(&cluster.config).unwrap();
        let web = Web::start(&cluster.config, &cluster.data_dir());
        Rig {
            web,
            cluster,
            hook,
            config,
            http: reqwest::Client::new(),
        }
    }

    /// Telemetry's way to a rule: a collector flush, then an evaluation.
    fn pipeline(&self) -> Duration {
        ms(self.config.collector.flush_interval_ms) + ms(self.config.web.eval_interval_ms)
    }

    fn for_of(&self, rule: &str) -> Duration {
        ms(self.config.alerts[rule].for_ms)
    }

    /// Waits until `ready` (SQL returning one boolean) holds over the tables
    /// and `rule`'s evaluations since (stamped to the second) span three
    /// seconds, without error, ending with nothing pending or firing: the
    /// cluster is healthy before the test breaks it.
    async fn settled(&self, rule: &str, ready: &str) {
        let (http, sql) = (&self.http, &format!("{}/api/v1/sql", self.web.url));
        until(
            &format!("the tables to show `{ready}`"),
            STARTUP,
            move || async move {
                let Ok(answer) = http.post(sql).json(&json!({ "sql": ready })).send().await else {
                    return false;
                };
                let r: Value = answer.json().await.unwrap_or(Value::Null);
                r["rows"][0][0] == json!(true)
            },
        )
        .await;
        let deadline = Instant::now() + STARTUP;
        let mut evaluations = Vec::new();
        loop {
            let alerts = alerts_of(&self.web).await;
            let state = alerts["rules"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["name"] == rule))
                .cloned()
                .unwrap_or(Value::Null);
            assert!(state["error"].is_null(), "rule {rule} fails: {state}");
            if !state["evaluated_at"].is_null() && !evaluations.contains(&state["evaluated_at"]) {
                evaluations.push(state["evaluated_at"].clone());
            }
            if evaluations.len() > 2 && state["state"] == "inactive" {
                let evaluator = &alerts["evaluator"];
                assert_eq!(evaluator["name"], "alerts", "{alerts}");
                // A run publishes its rules' states before it counts itself.
                assert!(evaluator["runs"].as_u64() >= Some(2), "{evaluator}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rule {rule} was not evaluated as inactive within {STARTUP:?}: {alerts}"
            );
            tokio::time::sleep(ms(50)).await;
        }
    }
}

/// Prints how long a notice took to arrive after `from`.
fn took(kind: &str, what: &str, from: Instant, notice: &Notice) {
    println!(
        "{kind}: {what} {:.2} s",
        notice.at.duration_since(from).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergence_fires_on_a_corrupted_critical_entity_and_resolves_after_repair() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = Rig::start(
        "",
        "[classes.accounts]\nconflict = \"lww\"\ncritical = true\n\n\
         [alerts.divergence]\nkind = \"divergence\"\nfor_ms = 1000\nnotify = [\"hook\"]\n",
        &["--allow-fault-injection"],
    )
    .await;
    let put = r
        .http
        .put(format!("{}/v1/entities/accounts/acct-7", r.cluster.url(0)))
        .bearer_auth(TOKEN)
        .json(&json!({ "balance": 70 }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    for (i, region) in REGIONS.iter().enumerate() {
        let (http, url) = (
            &r.http,
            &format!("{}/v1/entities/accounts/acct-7", r.cluster.url(i)),
        );
        until(
            &format!("acct-7 to reach {region}"),
            SLACK,
            move || async move {
                let got = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
                got.status().is_success()
            },
        )
        .await;
    }
    r.settled("divergence", "SELECT TRUE").await;
    let cfg = r.cluster.config.to_str().unwrap().to_owned();
    let audit = |extra: &[&str]| {
        let mut args = vec!["audit", "--config", cfg.as_str(), "--lag-bound-ms", "1000"];
        args.extend(extra);
        run(&args, r.cluster.dir.path())
    };

    // Cause: us-west's copy changes without replicating; an audit finds it.
    let cause = Instant::now();
    let fault = r
        .http
        .post(format!("{}/v1/admin/fault", r.cluster.url(1)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "class": "accounts", "key": "acct-7", "action": "corrupt" }))
        .send()
        .await
        .unwrap();
    assert!(
        fault.status().is_success(),
        "{}",
        fault.text().await.unwrap()
    );
    let (code, out, err) = audit(&[]);
    assert_eq!(code, 1, "the audit finds the corruption: {out}\n{err}");
    assert!(out.contains("accounts/acct-7"), "{out}");
    let labels = [
        ("alertname", "divergence"),
        ("class", "accounts"),
        ("key", "acct-7"),
    ];
    let within = r.pipeline() + r.for_of("divergence") + SLACK;
    let fired = r
        .hook
        .expect(&r.web, "firing", &labels, cause, within)
        .await;
    took("divergence", "cause -> firing", cause, &fired);

    // Cure: repair, then a clean audit.
    let cure = Instant::now();
    let (code, out, err) = audit(&["--repair"]);
    assert_eq!(code, 0, "--repair leaves the cluster clean: {out}\n{err}");
    let (code, out, err) = audit(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no divergence"), "{out}");
    let resolved = r
        .hook
        .expect(&r.web, "resolved", &labels, cure, r.pipeline() + SLACK)
        .await;
    took("divergence", "cure -> resolved", cure, &resolved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_fires_while_a_region_is_stopped_and_resolves_when_it_runs_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = Rig::start(
        "",
        "[classes.likes]\nconflict = \"gcounter\"\n\n\
         [alerts.unreachable]\nkind = \"unreachable\"\nfor_ms = 1000\nnotify = [\"hook\"]\n",
        &[],
    )
    .await;
    r.settled(
        "unreachable",
        "SELECT count(DISTINCT target) = 3 FROM probes WHERE ok",
    )
    .await;
    let c = &r.config.collector;
    let probe_round = ms(c.probe_interval_ms) + ms(c.probe_timeout_ms);

    let cause = Instant::now();
    let frozen = r.cluster.freeze(1);
    let labels = [("alertname", "unreachable"), ("region", "us-west")];
    let within = UNREACHABLE_WINDOW + probe_round + r.pipeline() + r.for_of("unreachable") + SLACK;
    let fired = r
        .hook
        .expect(&r.web, "firing", &labels, cause, within)
        .await;
    took("unreachable", "cause -> firing", cause, &fired);

    let cure = Instant::now();
    frozen.thaw();
    let within = probe_round + r.pipeline() + SLACK;
    let resolved = r
        .hook
        .expect(&r.web, "resolved", &labels, cure, within)
        .await;
    took("unreachable", "cure -> resolved", cure, &resolved);
}

/// Connections writing `orders` through us-east (which forwards them to
/// eu-west, the class's primary) until stopped, counting 2xx and 503 answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    unavailable: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(r: &Rig, writers: usize, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let writers = (0..writers)
            .map(|_| {
                let (http, url, prefix) = (r.http.clone(), r.cluster.url(0), prefix.to_owned());
                let (stop, ok, unavailable, next) = (
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&unavailable),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}-{}", next.fetch_add(1, Ordering::Relaxed));
                        let answer = http
                            .put(format!("{url}/v1/entities/orders/{key}"))
                            .bearer_auth(TOKEN)
                            .json(&json!({ "key": key }))
                            .send()
                            .await
                            .unwrap();
                        match answer.status().as_u16() {
                            200..=299 => ok.fetch_add(1, Ordering::Relaxed),
                            503 => unavailable.fetch_add(1, Ordering::Relaxed),
                            s => panic!("{key}: HTTP {s}: {}", answer.text().await.unwrap()),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            unavailable,
            writers,
        }
    }

    /// (2xx, 503) answers so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
        )
    }

    /// Stops the writers; (2xx, 503) answers in all.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            w.await
                .expect("a writer got an answer other than 2xx or 503");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burn_rate_pages_on_a_burst_of_503s_and_resolves_under_normal_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    // us-east forwards every `orders` write to eu-west; with eu-west stopped
    // it answers 503 once peer_timeout_ms has passed.
    let r = Rig::start(
        "peer_timeout_ms = 500",
        "[classes.orders]\nconflict = \"lww\"\nrollout = \"active-passive\"\nprimary = \"eu-west\"\n\n\
         [slos.availability]\nkind = \"availability\"\nobjective = 99.0\nwindow_days = 1\nregions = [\"us-east\"]\n\n\
         [alerts.burn]\nkind = \"burn_rate\"\nslo = \"availability\"\nfor_ms = 1000\nnotify = [\"hook\"]\n",
        &[],
    )
    .await;
    // 100 orders written, seen in the tables, and the SLO healthy. The
    // baseline is kept small: the 503s must outweigh its share of the
    // longer page window (14.4% of it) within the first few of them.
    let baseline = Load::start(&r, 4, "baseline");
    until("100 orders written", SLACK, || {
        let (ok, _) = baseline.counts();
        async move { ok >= 100 }
    })
    .await;
    assert_eq!(baseline.stop().await.1, 0, "no 503 before eu-west stops");
    r.settled(
        "burn",
        "SELECT count(*) FILTER (WHERE status < 300) >= 100 FROM requests WHERE region = 'us-east'",
    )
    .await;
    let peer_timeout = ms(r.config.replication.peer_timeout_ms);
    let slo = &r.config.slos["availability"];
    // A page resolves once neither page condition holds; each stops holding
    // at the latest when its short window holds no 503 (the windows scale
    // with window_days / 30).
    let window = |name: &str| {
        let (_, s) = parallax_web::slo::WINDOWS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a workbook window");
        Duration::from_secs_f64((*s as f64 * f64::from(slo.window_days) / 30.0).round())
    };
    let short_page_window = parallax_web::slo::ALERTS
        .iter()
        .filter(|a| a.3 == "page")
        .map(|a| window(a.1))
        .max()
        .expect("page conditions");

    // Cause: eu-west stops; 16 connections' writes get 503s from us-east.
    let cause = Instant::now();
    let frozen = r.cluster.freeze(2);
    let load = Load::start(&r, 16, "order");
    let labels = [
        ("alertname", "burn"),
        ("slo", "availability"),
        ("region", "us-east"),
        ("severity", "page"),
    ];
    let within = peer_timeout + r.pipeline() + r.for_of("burn") + SLACK;
    let fired = r
        .hook
        .expect(&r.web, "firing", &labels, cause, within)
        .await;
    took("burn_rate", "cause -> firing", cause, &fired);
    let (_, failed) = load.counts();
    assert!(failed > 0, "us-east answered 503 while eu-west was stopped");

    // Cure: eu-west runs again; the same load is answered 2xx.
    let cure = Instant::now();
    frozen.thaw();
    let within = short_page_window + peer_timeout + r.pipeline() + SLACK;
    let resolved = r
        .hook
        .expect(&r.web, "resolved", &labels, cure, within)
        .await;
    let (ok, unavailable) = load.stop().await;
    println!(
        "burn_rate: {failed} writes answered 503 until it fired; {unavailable} answered 503 in all, {ok} 2xx"
    );
    took("burn_rate", "cure -> resolved", cure, &resolved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_fires_while_a_source_region_is_stopped_and_resolves_when_it_runs_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = Rig::start(
        "",
        "[classes.likes]\nconflict = \"gcounter\"\n\n\
         [alerts.lag]\nkind = \"lag\"\nthreshold_ms = 1000\nfor_ms = 1000\nnotify = [\"hook\"]\n",
        &[],
    )
    .await;
    r.settled(
        "lag",
        "SELECT count(DISTINCT concat(src, '>', dst)) = 6 FROM replication_lag",
    )
    .await;
    let threshold = ms(r.config.alerts["lag"].threshold_ms.unwrap());
    let heartbeat = ms(r.config.replication.heartbeat_interval_ms);

    // Cause: us-east stops; the other regions see its newest heartbeat age.
    let cause = Instant::now();
    let frozen = r.cluster.freeze(0);
    let within = threshold + heartbeat + r.pipeline() + r.for_of("lag") + SLACK;
    let fired = r
        .hook
        .expect(
            &r.web,
            "firing",
            &[("alertname", "lag"), ("src", "us-east")],
            cause,
            within,
        )
        .await;
    took("lag", "cause -> firing", cause, &fired);
    let dst = fired.labels["dst"].clone();
    assert!(
        ["us-west", "eu-west"].contains(&dst.as_str()),
        "{:?}",
        fired.labels
    );

    let cure = Instant::now();
    frozen.thaw();
    let labels = [
        ("alertname", "lag"),
        ("src", "us-east"),
        ("dst", dst.as_str()),
    ];
    let within = LAG_WINDOW + heartbeat + r.pipeline() + SLACK;
    let resolved = r
        .hook
        .expect(&r.web, "resolved", &labels, cure, within)
        .await;
    took("lag", "cure -> resolved", cure, &resolved);
}

/// The promise of the example config (deploy/examples/three-regions.toml)
/// as an operator would run it, changed only in ports, tokens and each
/// rule notifying the test's receiver: a region frozen with SIGSTOP while
/// the others take writes is named by an alert within 45 s, and every alert
/// that named it resolves once it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_rules_name_a_region_frozen_under_load_within_45_s() {
    const PROMISED: Duration = Duration::from_secs(45);
    let _one = ONE_AT_A_TIME.lock().await;
    let hook = Receiver::start().await;
    let example = include_str!("../deploy/examples/three-regions.toml");
    let mut rules = 0;
    let example: String = example
        .lines()
        .map(|line| {
            if line.starts_with("[alerts.") {
                rules += 1;
                format!("{line}\nnotify = [\"hook\"]\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(rules >= 2, "the example has no alert rules");
    let cluster = Cluster::from_example(
        &example,
        &format!(
            "\n[notifiers.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url
        ),
    );
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let config = Config::load(&cluster.config).unwrap();
    let web = Web::start(&cluster.config, &cluster.data_dir());
    let r = Rig {
        web,
        cluster,
        hook,
        config,
        http: reqwest::Client::new(),
    };
    let frozen_region = REGIONS[1];
    for (rule, ready) in [
        (
            "region_unreachable",
            "SELECT count(DISTINCT target) = 3 FROM probes WHERE ok",
        ),
        (
            "replication_lag",
            "SELECT count(DISTINCT concat(src, '>', dst)) = 6 FROM replication_lag",
        ),
    ] {
        r.settled(rule, ready).await;
    }

    // Load: writers on the two regions that stay up, all through the test.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = [0, 2]
        .into_iter()
        .flat_map(|i| [i, i])
        .enumerate()
        .map(|(n, i)| {
            let url = format!("{}/v1/entities/likes/post-{n}/ops", r.cluster.url(i));
            let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(ms(2_000))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let sent = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&json!({ "op": "incr", "by": 1 }))
                        .send()
                        .await;
                    if sent.is_ok_and(|a| a.status().is_success()) {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(ms(20)).await;
                }
            })
        })
        .collect();
    let names_frozen =
        |n: &Notice| n.labels.values().any(|v| v == frozen_region) && n.status == "firing";

    let cause = Instant::now();
    let frozen = r.cluster.freeze(1);
    let before = written.load(Ordering::Relaxed);
    until(
        &format!("an alert naming {frozen_region} (the example promises 45 s)"),
        PROMISED,
        || async {
            r.hook
                .notices()
                .iter()
                .any(|n| n.at >= cause && names_frozen(n))
        },
    )
    .await;
    let fired: Vec<Notice> = r
        .hook
        .notices()
        .into_iter()
        .filter(|n| n.at >= cause && names_frozen(n))
        .collect();
    took(
        &fired[0].labels["alertname"],
        &format!("{frozen_region} frozen -> firing"),
        cause,
        &fired[0],
    );
    assert!(
        written.load(Ordering::Relaxed) > before,
        "the load stopped while {frozen_region} was frozen"
    );

    // Every alert that named the frozen region resolves once it runs again:
    // within the longest window a rule looks back over (lag: a minute),
    // a heartbeat, the pipeline and the slack.
    let cure = Instant::now();
    frozen.thaw();
    let within = LAG_WINDOW + ms(r.config.replication.heartbeat_interval_ms) + r.pipeline() + SLACK;
    let mut named: Vec<BTreeMap<String, String>> = Vec::new();
    for n in &fired {
        if !named.contains(&n.labels) {
            named.push(n.labels.clone());
        }
    }
    for labels in &named {
        let want: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let resolved = r.hook.expect(&r.web, "resolved", &want, cure, within).await;
        took(
            &labels["alertname"],
            &format!("{frozen_region} running -> resolved"),
            cure,
            &resolved,
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
}
