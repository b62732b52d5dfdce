//! Alert rules: evaluated on an interval over the collector's tables, each
//! condition (a label set) going pending → firing → resolved like a
//! Prometheus alert, with a `for` duration, silences, and notices sent once
//! per transition (deduplicated by fingerprint).
//!
//! Built-in rules: `lag` (a region pair's worst lag over the last minute
//! above `threshold_ms`), `divergence` (a key of a critical class whose
//! latest audit record in the last hour says `divergent` and that no later
//! audit of its class has cleared), `unreachable` (a
//! region no probe reached in the last 30 s), `burn_rate` (an SLO's
//! workbook burn-rate condition, severity page or ticket). `sql` rules fire
//! one alert per row the query returns, its columns becoming labels.

use parallax_core::worker::{Worker, WorkerStatus};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parallax_core::clock::Clock;
use parallax_core::config::{AlertRuleConfig, Config, RuleKind};
use serde::Serialize;
use serde_json::Value;

use crate::metrics::AlertMetrics;
use crate::notify::{Delivery, DeliveryLog, Notice, deliver};
use crate::sql::{SqlEngine, SqlError};
use crate::time::rfc3339;

/// A stable fingerprint of a label set, the one Alertmanager computes: 16
/// hex digits of 64-bit FNV-1a over the labels sorted by name, each name and
/// value followed by the byte 0xff.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One active alert.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// `pending` or `firing` (`resolved` in the recent list).
    pub state: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The figure that tripped it, when there is one.
    pub value: Option<f64>,
    /// When the condition started to hold (RFC 3339).
    pub active_since: String,
    /// When it fired (RFC 3339).
    pub fired_at: Option<String>,
    /// When it resolved (RFC 3339).
    pub resolved_at: Option<String>,
    /// Fingerprint.
    pub fingerprint: String,
    /// Whether a silence holds it back from the notifiers.
    pub silenced: bool,
    #[serde(skip)]
    since_us: i64,
    #[serde(skip)]
    notified: bool,
    #[serde(skip)]
    last_push_us: i64,
}

/// A rule and how its last evaluation went.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RuleState {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// `for` (ms).
    pub for_ms: u64,
    /// Notifiers.
    pub notify: Vec<String>,
    /// `inactive`, `pending` or `firing` (the worst of its alerts).
    pub state: String,
    /// When it was last evaluated (RFC 3339).
    pub evaluated_at: Option<String>,
    /// The last evaluation's error.
    pub error: Option<String>,
}

/// A silence: alerts whose labels include all of `matchers` are not notified until `until`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Silence {
    /// Id.
    pub id: u64,
    /// Label equalities.
    pub matchers: BTreeMap<String, String>,
    /// End (epoch µs).
    pub until_us: i64,
    /// End (RFC 3339).
    pub until: String,
    /// Why.
    pub comment: String,
}

/// Everything the alerts page shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlertsView {
    /// Rules.
    pub rules: Vec<RuleState>,
    /// Pending and firing alerts.
    pub active: Vec<Alert>,
    /// Recently resolved alerts, newest first.
    pub resolved: Vec<Alert>,
    /// Silences in force.
    pub silences: Vec<Silence>,
    /// Deliveries, newest first.
    pub deliveries: Vec<Delivery>,
    /// The evaluator's worker: running or idle, evaluations done, the last
    /// one's time and error.
    pub evaluator: Option<WorkerStatus>,
}

#[derive(Debug, Default)]
struct State {
    rules: BTreeMap<String, RuleState>,
    active: BTreeMap<String, Alert>,
    resolved: Vec<Alert>,
    silences: Vec<Silence>,
    next_silence: u64,
}

/// The alert evaluator.
#[derive(Clone, Debug)]
pub struct Alerter {
    config: Arc<Config>,
    engine: Arc<SqlEngine>,
    clock: Arc<dyn Clock>,
    /// One client per notifier (each trusts its own `ca_file`).
    clients: BTreeMap<String, reqwest::Client>,
    external_url: String,
    state: Arc<Mutex<State>>,
    log: DeliveryLog,
    metrics: AlertMetrics,
    deliveries: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Each notifier's latest delivery: the next one waits for it, so a
    /// receiver hears an alert fire before it hears it resolve.
    chain: Arc<Mutex<BTreeMap<String, Shared<BoxFuture<'static, ()>>>>>,
}

/// A condition a rule found: labels and a figure.
type Condition = (BTreeMap<String, String>, Option<f64>, String);

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Alerter {
    /// An evaluator for the rules of `config`.
    pub fn new(config: Arc<Config>, engine: Arc<SqlEngine>, clock: Arc<dyn Clock>) -> Alerter {
        let external_url = config
            .web
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.web.listen))
            .trim_end_matches('/')
            .to_owned();
        let clients = config
            .notifiers
            .iter()
            .map(|(name, n)| {
                let c = crate::notify::client(n).unwrap_or_else(|e| {
                    // The config check read the same file; if it changed
                    // since, this notifier trusts the system's CAs only,
                    // and a receiver that needed the file fails its
                    // deliveries (logged) instead of the server not starting.
                    tracing::error!("notifier {name}: {e}");
                    reqwest::Client::new()
                });
                (name.clone(), c)
            })
            .collect();
        let metrics = AlertMetrics::default();
        let mut state = State::default();
        for (name, r) in &config.alerts {
            state.rules.insert(
                name.clone(),
                RuleState {
                    name: name.clone(),
                    kind: format!("{:?}", r.kind).to_lowercase(),
                    for_ms: r.for_ms,
                    notify: r.notify.clone(),
                    state: "inactive".into(),
                    evaluated_at: None,
                    error: None,
                },
            );
        }
        Alerter {
            config,
            engine,
            clock,
            clients,
            external_url,
            state: Arc::new(Mutex::new(state)),
            log: DeliveryLog::counting(metrics.notifications.clone()),
            metrics,
            deliveries: Arc::new(Mutex::new(Vec::new())),
            chain: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counts of evaluations, alerts and deliveries.
    pub fn metrics(&self) -> &AlertMetrics {
        &self.metrics
    }

    /// What the alerts page shows.
    pub fn view(&self) -> AlertsView {
        let now = self.clock.now_us() as i64;
        let st = self.lock();
        AlertsView {
            rules: st.rules.values().cloned().collect(),
            active: st.active.values().cloned().collect(),
            resolved: st.resolved.iter().rev().cloned().collect(),
            silences: st
                .silences
                .iter()
                .filter(|s| s.until_us > now)
                .cloned()
                .collect(),
            deliveries: self.log.entries(),
            evaluator: None,
        }
    }

    /// Silences alerts whose labels include `matchers` for `minutes`.
    pub fn silence(
        &self,
        matchers: BTreeMap<String, String>,
        minutes: u64,
        comment: String,
    ) -> Silence {
        let until_us = self.clock.now_us() as i64 + minutes as i64 * 60_000_000;
        let mut st = self.lock();
        st.next_silence += 1;
        let s = Silence {
            id: st.next_silence,
            matchers,
            until_us,
            until: rfc3339(until_us),
            comment,
        };
        st.silences.push(s.clone());
        s
    }

    /// Ends a silence; false when there is none with that id.
    pub fn unsilence(&self, id: u64) -> bool {
        let mut st = self.lock();
        let before = st.silences.len();
        st.silences.retain(|s| s.id != id);
        st.silences.len() < before
    }

    /// Waits for the deliveries started so far (tests, shutdown).
    pub async fn flush(&self) {
        let handles: Vec<_> = std::mem::take(
            &mut *self
                .deliveries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for h in handles {
            let _ = h.await;
        }
    }

    /// Evaluates every rule every `web.eval_interval_ms` until the worker
    /// is told to stop; each evaluation is a run.
    pub async fn run(self, mut w: Worker) {
        let every = Duration::from_millis(self.config.web.eval_interval_ms);
        let mut tick = tokio::time::interval(every);
        while w.next_tick(&mut tick).await {
            let now = self.clock.now_us() as i64;
            self.evaluate_at(now).await;
            w.ran(Ok::<(), String>(()));
        }
    }

    async fn conditions(
        &self,
        rule: &AlertRuleConfig,
        now: i64,
    ) -> Result<Vec<Condition>, SqlError> {
        let e = &self.engine;
        let since = |secs: i64| {
            format!(
                "ts >= to_timestamp_micros({}) AND ts <= to_timestamp_micros({now})",
                now - secs * 1_000_000
            )
        };
        let rows = |sql: String| async move { e.query(&sql).await.map(|r| r.json_rows()) };
        let labels = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        Ok(match rule.kind {
            RuleKind::Lag => {
                let t = rule.threshold_ms.unwrap_or(0);
                rows(format!(
                    "SELECT src, dst, max(lag_ms) FROM replication_lag WHERE {} GROUP BY src, dst HAVING max(lag_ms) > {t}",
                    since(60)
                ))
                .await?
                .into_iter()
                .map(|r| {
                    let v = r[2].as_f64();
                    let text = format!("Replication {} → {} lags {} ms (over {t} ms)", s(&r[0]), s(&r[1]), s(&r[2]));
                    (labels(&[("src", s(&r[0])), ("dst", s(&r[1]))]), v, text)
                })
                .collect()
            }
            RuleKind::Divergence => {
                let critical: Vec<String> = self
                    .config
                    .classes
                    .iter()
                    .filter(|(_, c)| c.critical)
                    .map(|(n, _)| format!("'{n}'"))
                    .collect();
                if critical.is_empty() {
                    Vec::new()
                } else {
                    let (window, classes) = (since(3_600), critical.join(", "));
                    rows(format!(
                        "WITH d AS (SELECT class, key, state, reason, age_ms, ts, row_number() OVER (PARTITION BY class, key ORDER BY ts DESC) AS n \
                         FROM divergence WHERE {window} AND class IN ({classes})), \
                         a AS (SELECT class, max(ts) AS audited FROM audits WHERE {window} AND class IN ({classes}) GROUP BY class) \
                         SELECT d.class, d.key, d.age_ms, d.reason FROM d LEFT JOIN a ON a.class = d.class \
                         WHERE d.n = 1 AND {} = 'divergent'",
                        crate::dash::CURRENT_STATE
                    ))
                    .await?
                    .into_iter()
                    .map(|r| {
                        let text = format!("{}/{} diverges between regions: {} (for {} ms)", s(&r[0]), s(&r[1]), s(&r[3]), s(&r[2]));
                        (labels(&[("class", s(&r[0])), ("key", s(&r[1]))]), r[2].as_f64(), text)
                    })
                    .collect()
                }
            }
            RuleKind::Unreachable => rows(format!(
                "SELECT target, count(*) FROM probes WHERE {} GROUP BY target HAVING count(*) FILTER (WHERE ok) = 0",
                since(30)
            ))
            .await?
            .into_iter()
            .map(|r| {
                let text = format!("No probe reached {} in the last 30 s ({} tried)", s(&r[0]), s(&r[1]));
                (labels(&[("region", s(&r[0]))]), r[1].as_f64(), text)
            })
            .collect(),
            RuleKind::Partition => rows(format!(
                "WITH p AS (SELECT vantage, target, count(*) AS tried, count(*) FILTER (WHERE ok) AS good \
                 FROM probes WHERE {} AND vantage <> target GROUP BY vantage, target) \
                 SELECT a.vantage, a.target, a.tried, min(b.vantage) FROM p a JOIN p b \
                 ON b.target = a.target AND b.vantage <> a.vantage AND b.good > 0 \
                 WHERE a.good = 0 GROUP BY a.vantage, a.target, a.tried",
                since(30)
            ))
            .await?
            .into_iter()
            .map(|r| {
                let text = format!(
                    "{} has not reached {} in the last 30 s ({} probes) while {} does: the link between them is cut",
                    s(&r[0]), s(&r[1]), s(&r[2]), s(&r[3])
                );
                (labels(&[("vantage", s(&r[0])), ("target", s(&r[1]))]), r[2].as_f64(), text)
            })
            .collect(),
            RuleKind::BurnRate => {
                let name = rule.slo.clone().unwrap_or_default();
                let slos = crate::slo::evaluate_one(e, &self.config, now, &name).await?;
                slos.slos
                    .into_iter()
                    .filter_map(|x| {
                        let sev = x.severity.clone()?;
                        let text = format!(
                            "SLO {} in {} burns its error budget ({}); {} left",
                            x.name,
                            x.region,
                            x.alerting.clone().unwrap_or_default(),
                            x.budget_remaining_pct.map_or("–".into(), |b| format!("{b:.1}%"))
                        );
                        Some((labels(&[("slo", x.name.clone()), ("region", x.region.clone()), ("severity", sev)]), x.budget_remaining_pct, text))
                    })
                    .collect()
            }
            RuleKind::Sql => {
                let r = e.query(rule.sql.as_deref().unwrap_or_default()).await?;
                let cols = r.columns();
                r.json_rows()
                    .into_iter()
                    .map(|row| {
                        let mut l: BTreeMap<String, String> = cols.iter().cloned().zip(row.iter().map(s)).collect();
                        let value = cols.iter().position(|c| c == "value").and_then(|i| row[i].as_f64());
                        let text = l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                        // The figure is no label: an alert whose count changes
                        // between evaluations stays the same alert.
                        l.remove("value");
                        (l, value, text)
                    })
                    .collect()
            }
        })
    }

    /// Evaluates every rule once at `now` (µs) and sends the notices due.
    pub async fn evaluate_at(&self, now: i64) {
        let started = Instant::now();
        let mut notices: BTreeMap<(String, String), Vec<Notice>> = BTreeMap::new();
        for (name, rule) in &self.config.alerts {
            let found = self.conditions(rule, now).await;
            let mut st = self.lock();
            let st = &mut *st;
            let rs = st.rules.get_mut(name).expect("every rule has a state");
            rs.evaluated_at = Some(rfc3339(now));
            self.metrics.evaluated(name, found.is_ok());
            let found = match found {
                Ok(f) => {
                    rs.error = None;
                    f
                }
                Err(e) => {
                    // Keep the alerts as they are: a failed query proves nothing.
                    rs.error = Some(e.to_string());
                    continue;
                }
            };
            let mut seen = Vec::new();
            for (mut labels, value, text) in found {
                labels.insert("alertname".into(), name.clone());
                labels
                    .entry("severity".into())
                    .or_insert_with(|| rule.severity.clone());
                let fp = fingerprint(&labels);
                seen.push(fp.clone());
                let mut annotations = BTreeMap::from([("description".to_owned(), text.clone())]);
                annotations.insert("summary".into(), rule.summary.clone().unwrap_or(text));
                let a = st.active.entry(fp.clone()).or_insert_with(|| Alert {
                    rule: name.clone(),
                    state: "pending".into(),
                    labels: labels.clone(),
                    annotations: annotations.clone(),
                    value,
                    active_since: rfc3339(now),
                    fired_at: None,
                    resolved_at: None,
                    fingerprint: fp.clone(),
                    silenced: false,
                    since_us: now,
                    notified: false,
                    last_push_us: 0,
                });
                a.value = value;
                a.annotations = annotations;
                if a.state == "pending" && now - a.since_us >= rule.for_ms as i64 * 1_000 {
                    a.state = "firing".into();
                    a.fired_at = Some(rfc3339(now));
                }
            }
            // Conditions that no longer hold: firing ones resolve, pending ones vanish.
            let gone: Vec<String> = st
                .active
                .iter()
                .filter(|(fp, a)| a.rule == *name && !seen.contains(fp))
                .map(|(fp, _)| fp.clone())
                .collect();
            for fp in gone {
                let Some(mut a) = st.active.remove(&fp) else {
                    continue;
                };
                if a.state != "firing" {
                    continue;
                }
                a.state = "resolved".into();
                a.resolved_at = Some(rfc3339(now));
                if a.notified {
                    for n in &rule.notify {
                        notices
                            .entry((n.clone(), "resolved".into()))
                            .or_default()
                            .push(self.notice(&a, now));
                    }
                }
                st.resolved.push(a);
                if st.resolved.len() > 200 {
                    st.resolved.remove(0);
                }
            }
            let silences: Vec<Silence> = st
                .silences
                .iter()
                .filter(|s| s.until_us > now)
                .cloned()
                .collect();
            let mut worst = "inactive";
            for a in st.active.values_mut().filter(|a| a.rule == *name) {
                a.silenced = silences
                    .iter()
                    .any(|s| s.matchers.iter().all(|(k, v)| a.labels.get(k) == Some(v)));
                if a.state == "firing" {
                    worst = "firing";
                } else if worst == "inactive" {
                    worst = "pending";
                }
                if a.state != "firing" || a.silenced {
                    continue;
                }
                for n in &rule.notify {
                    let kind = self.config.notifiers.get(n).map(|c| c.kind);
                    // Alertmanager expires alerts not re-sent: push firing ones every minute.
                    let repeat = kind == Some(parallax_core::config::NotifierKind::Alertmanager)
                        && now - a.last_push_us >= 60_000_000;
                    if !a.notified || repeat {
                        notices
                            .entry((n.clone(), "firing".into()))
                            .or_default()
                            .push(self.notice(a, now));
                    }
                }
                a.notified = true;
                a.last_push_us = now;
            }
            if let Some(rs) = st.rules.get_mut(name) {
                rs.state = worst.into();
            }
        }
        self.count_alerts(started, now);
        for ((notifier, _), group) in notices {
            let Some(n) = self.config.notifiers.get(&notifier).cloned() else {
                continue;
            };
            let clock = Arc::clone(&self.clock);
            let mut chain = self
                .chain
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = chain.remove(&notifier);
            let http = self.clients.get(&notifier).cloned().unwrap_or_default();
            let send = deliver(
                http,
                notifier.clone(),
                n,
                self.external_url.clone(),
                group,
                self.log.clone(),
                move || rfc3339(clock.now_us() as i64),
            );
            let next = async move {
                if let Some(before) = before {
                    before.await;
                }
                send.await;
            }
            .boxed()
            .shared();
            chain.insert(notifier, next.clone());
            drop(chain);
            let h = tokio::spawn(next);
            let mut running = self
                .deliveries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Only unfinished ones are kept for `flush`: a server that runs
            // for months does not keep every handle it ever spawned.
            running.retain(|h| !h.is_finished());
            running.push(h);
        }
    }

    /// Ends a round in the metrics: each rule's pending and firing alerts.
    fn count_alerts(&self, started: Instant, now: i64) {
        let st = self.lock();
        let counts = self.config.alerts.keys().map(|rule| {
            let of_rule = || st.active.values().filter(move |a| a.rule == *rule);
            let firing = of_rule().filter(|a| a.state == "firing").count();
            (rule.clone(), of_rule().count() - firing, firing)
        });
        self.metrics.round(started, now, counts);
    }

    fn notice(&self, a: &Alert, now: i64) -> Notice {
        Notice {
            status: if a.state == "resolved" {
                "resolved"
            } else {
                "firing"
            }
            .into(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: a.fired_at.clone().unwrap_or_else(|| rfc3339(now)),
            ends_at: a
                .resolved_at
                .clone()
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            generator_url: format!("{}/alerts#{}", self.external_url, a.fingerprint),
            fingerprint: a.fingerprint.clone(),
        }
    }
}
