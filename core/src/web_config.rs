//! The web app's part of the configuration file: `[web]`, `[slos.<name>]`,
//! `[alerts.<name>]` and `[notifiers.<name>]`.
//!
//! Plain data, parsed with the rest of the file (same strictness, same line
//! numbers in errors) and checked by [`validate`]; the `web` crate acts on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[web]`: the dashboard server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address the web app listens on (`parallax web --listen` overrides).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL users reach the app at, used in alert links (`generatorURL`,
    /// `externalURL`). Defaults to `http://<listen>`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Alert rules are evaluated this often (ms).
    #[serde(default = "default_eval_interval_ms")]
    pub eval_interval_ms: u64,
    /// Pages reload themselves this often (s); 0 turns it off.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u32,
    /// Memory one SQL query may hold (MiB).
    #[serde(default = "default_sql_memory_mb")]
    pub sql_memory_mb: usize,
    /// Time one SQL query may run (ms).
    #[serde(default = "default_sql_timeout_ms")]
    pub sql_timeout_ms: u64,
    /// Rows one SQL query returns at most.
    #[serde(default = "default_sql_max_rows")]
    pub sql_max_rows: usize,
    /// User SQL queries (console, `POST /api/v1/sql`) running at once at
    /// most; one more waits a second for a slot, then is answered 503.
    #[serde(default = "default_sql_max_concurrent")]
    pub sql_max_concurrent: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: default_listen(),
            external_url: None,
            eval_interval_ms: default_eval_interval_ms(),
            refresh_s: default_refresh_s(),
            sql_memory_mb: default_sql_memory_mb(),
            sql_timeout_ms: default_sql_timeout_ms(),
            sql_max_rows: default_sql_max_rows(),
            sql_max_concurrent: default_sql_max_concurrent(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_eval_interval_ms() -> u64 {
    15_000
}
fn default_refresh_s() -> u32 {
    30
}
fn default_sql_memory_mb() -> usize {
    256
}
fn default_sql_timeout_ms() -> u64 {
    30_000
}
fn default_sql_max_rows() -> usize {
    100_000
}
fn default_sql_max_concurrent() -> usize {
    4
}

/// What an SLO measures.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SloKind {
    /// Share of requests not answered with a 5xx.
    Availability,
    /// Share of requests answered under `threshold_ms`.
    Latency,
    /// Share of time the replication lag into the region is under `threshold_ms`.
    Freshness,
    /// Share of audits that found no divergent entity in a critical class.
    Integrity,
}

impl SloKind {
    /// The kind's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            SloKind::Availability => "availability",
            SloKind::Latency => "latency",
            SloKind::Freshness => "freshness",
            SloKind::Integrity => "integrity",
        }
    }
}

/// `[slos.<name>]`: a service level objective, evaluated per region.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// What is measured.
    pub kind: SloKind,
    /// The target, in percent of good events (e.g. 99.9).
    pub objective: f64,
    /// The window the error budget is counted over (days).
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Latency and freshness: the bound a good event is under (ms).
    #[serde(default)]
    pub threshold_ms: Option<u64>,
    /// Regions it applies to; empty means every region.
    #[serde(default)]
    pub regions: Vec<String>,
}

fn default_window_days() -> u32 {
    30
}

/// What an alert rule watches.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Replication lag of a region pair over `threshold_ms`.
    Lag,
    /// A divergent entity in a critical class.
    Divergence,
    /// A region that no probe reached.
    Unreachable,
    /// A region pair cut apart: one region's probes of the other all fail
    /// while another region's probes of it succeed (partial connectivity).
    Partition,
    /// An SLO burning its error budget (multi-window, multi-burn-rate).
    BurnRate,
    /// A SQL query: every row it returns is one firing alert.
    Sql,
}

/// `[alerts.<name>]`: an alert rule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// What the rule watches.
    pub kind: RuleKind,
    /// `lag`: the lag that is too much (ms).
    #[serde(default)]
    pub threshold_ms: Option<u64>,
    /// `burn_rate`: the SLO (a name under `[slos]`).
    #[serde(default)]
    pub slo: Option<String>,
    /// `sql`: the query; each row fires one alert, its columns become labels.
    #[serde(default)]
    pub sql: Option<String>,
    /// How long the condition must hold before the alert fires (ms); pending until then.
    #[serde(default)]
    pub for_ms: u64,
    /// The `severity` label (e.g. page, ticket). `burn_rate` rules set it
    /// from the burn rate that fired.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// The `summary` annotation.
    #[serde(default)]
    pub summary: Option<String>,
    /// Notifiers (names under `[notifiers]`) that receive this rule's alerts.
    #[serde(default)]
    pub notify: Vec<String>,
}

fn default_severity() -> String {
    "page".into()
}

/// How a notifier delivers.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotifierKind {
    /// POST of the Alertmanager version 4 webhook payload.
    Webhook,
    /// A Slack incoming webhook (`text` and `blocks`).
    Slack,
    /// An Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
}

/// `[notifiers.<name>]`: where alerts go.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// How it delivers.
    pub kind: NotifierKind,
    /// The URL called: the webhook, the Slack incoming webhook, or the
    /// Alertmanager's base URL (`http://host:9093`).
    pub url: String,
    /// `webhook`: when set, each request carries
    /// `X-Parallax-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// One attempt's time limit (ms).
    #[serde(default = "default_notify_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before a delivery is logged as failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// `https://` URLs: a PEM file of CA certificates trusted besides the
    /// system's (an internal CA, or a receiver's self-signed certificate).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_notify_timeout_ms() -> u64 {
    5_000
}
fn default_max_attempts() -> u32 {
    5
}

/// Checks the web sections against each other and the regions.
pub fn validate(
    regions: &[String],
    web: &WebConfig,
    slos: &BTreeMap<String, SloConfig>,
    alerts: &BTreeMap<String, AlertRuleConfig>,
    notifiers: &BTreeMap<String, NotifierConfig>,
) -> Result<(), (String, String)> {
    let fail = |field: String, msg: &str| Err((field, msg.to_owned()));
    if web.eval_interval_ms < 100 {
        return fail(
            "web.eval_interval_ms".into(),
            "is under 100. Fix: e.g. 15000",
        );
    }
    if web.sql_memory_mb == 0
        || web.sql_timeout_ms == 0
        || web.sql_max_rows == 0
        || web.sql_max_concurrent == 0
    {
        return fail(
            "web.sql_*".into(),
            "a SQL limit is 0. Fix: remove it for the default or give a positive value",
        );
    }
    if let Some(url) = &web.external_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return fail(
            "web.external_url".into(),
            "is not an http(s) URL. Fix: e.g. \"https://parallax.example.com\"",
        );
    }
    for (name, slo) in slos {
        let f = |k: &str| format!("slos.{name}.{k}");
        if !(slo.objective > 0.0 && slo.objective < 100.0) {
            return fail(
                f("objective"),
                "must be a percentage between 0 and 100 (exclusive). Fix: e.g. 99.9",
            );
        }
        if slo.window_days == 0 || slo.window_days > 366 {
            return fail(f("window_days"), "must be 1..=366. Fix: e.g. 30");
        }
        let needs_threshold = matches!(slo.kind, SloKind::Latency | SloKind::Freshness);
        if needs_threshold && slo.threshold_ms.is_none() {
            return fail(
                f("threshold_ms"),
                "is missing. Fix: latency and freshness SLOs need the bound a good event is under, e.g. threshold_ms = 250",
            );
        }
        if !needs_threshold && slo.threshold_ms.is_some() {
            return fail(
                f("threshold_ms"),
                "only applies to latency and freshness SLOs. Fix: remove it",
            );
        }
        for r in &slo.regions {
            if !regions.contains(r) {
                return fail(
                    f("regions"),
                    &format!(
                        "names region `{r}`, which is not declared. Fix: use one of {}",
                        regions.join(", ")
                    ),
                );
            }
        }
    }
    for (name, n) in notifiers {
        let f = |k: &str| format!("notifiers.{name}.{k}");
        if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
            return fail(
                f("url"),
                "is not an http(s) URL. Fix: e.g. \"http://127.0.0.1:9093\"",
            );
        }
        if let Some(path) = &n.ca_file {
            let pem = std::fs::read_to_string(path).unwrap_or_default();
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return fail(
                    f("ca_file"),
                    &format!(
                        "`{}` is not a readable PEM file of certificates. Fix: name a file \
                         holding -----BEGIN CERTIFICATE----- blocks, or remove ca_file",
                        path.display()
                    ),
                );
            }
        }
        if n.hmac_secret.is_some() && n.kind != NotifierKind::Webhook {
            return fail(
                f("hmac_secret"),
                "only applies to kind = \"webhook\". Fix: remove it",
            );
        }
        if n.max_attempts == 0 || n.timeout_ms == 0 {
            return fail(
                f("max_attempts"),
                "max_attempts and timeout_ms must be positive. Fix: e.g. 5 and 5000",
            );
        }
    }
    for (name, rule) in alerts {
        let f = |k: &str| format!("alerts.{name}.{k}");
        let only = |field: &str, set: bool, kinds: &str| -> Result<(), (String, String)> {
            if set {
                Err((
                    f(field),
                    format!("only applies to kind = {kinds}. Fix: remove it"),
                ))
            } else {
                Ok(())
            }
        };
        match rule.kind {
            RuleKind::Lag => {
                if rule.threshold_ms.is_none() {
                    return fail(
                        f("threshold_ms"),
                        "is missing. Fix: a lag rule needs the lag that is too much, e.g. threshold_ms = 5000",
                    );
                }
            }
            RuleKind::BurnRate => match &rule.slo {
                None => {
                    return fail(
                        f("slo"),
                        "is missing. Fix: name the SLO whose budget to watch, e.g. slo = \"availability\"",
                    );
                }
                Some(s) if !slos.contains_key(s) => {
                    let known: Vec<&str> = slos.keys().map(String::as_str).collect();
                    return fail(
                        f("slo"),
                        &format!(
                            "names SLO `{s}`, which is not declared (declared: {}). Fix: add [slos.{s}] or use one of those",
                            known.join(", ")
                        ),
                    );
                }
                Some(_) => {}
            },
            RuleKind::Sql => match &rule.sql {
                Some(q) if !q.trim().is_empty() => {}
                _ => {
                    return fail(
                        f("sql"),
                        "is missing. Fix: give the query whose rows fire, e.g. sql = \"SELECT src, dst FROM replication_lag WHERE lag_ms > 5000\"",
                    );
                }
            },
            RuleKind::Divergence | RuleKind::Unreachable | RuleKind::Partition => {}
        }
        only(
            "threshold_ms",
            rule.kind != RuleKind::Lag && rule.threshold_ms.is_some(),
            "\"lag\"",
        )?;
        only(
            "slo",
            rule.kind != RuleKind::BurnRate && rule.slo.is_some(),
            "\"burn_rate\"",
        )?;
        only(
            "sql",
            rule.kind != RuleKind::Sql && rule.sql.is_some(),
            "\"sql\"",
        )?;
        for n in &rule.notify {
            if !notifiers.contains_key(n) {
                return fail(
                    f("notify"),
                    &format!(
                        "names notifier `{n}`, which is not declared. Fix: add [notifiers.{n}] or remove it"
                    ),
                );
            }
        }
    }
    Ok(())
}
