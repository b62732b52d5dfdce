//! `parallax status`: the cluster on one screen. Every region is asked at
//! once (`/readyz`, then `/v1/stats`, a few seconds each): its health,
//! replication lag and backlog by pair, cut links; the collector's tables
//! under the data directory (or the web app's API, `--web`) give each
//! critical class's last audit and every SLO's state. The exit code says
//! whether anything needs a person.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use parallax_core::NodeStats;
use parallax_core::RegionClient;
use parallax_core::client::ClientError;
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::config::Config;
use parallax_web::{SqlEngine, SqlLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::table;

/// How long each region has to answer each question.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the web app has to answer each page (an SLO evaluation reads
/// a window of days).
const WEB_TIMEOUT: Duration = Duration::from_secs(30);
/// How far back the last audit of a class is looked for.
const AUDIT_LOOKBACK_US: i64 = 7 * 24 * 3_600 * 1_000_000;

/// Arguments of `parallax status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The cluster config file: the regions, their addresses, the client token.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// The data directory whose `tables/` hold the audits and the SLOs'
    /// events (the one the web app reads); without tables, those parts say so.
    #[arg(long, env = "PARALLAX_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Read the audits and SLOs from the web app at this URL (its JSON
    /// API) instead of from --data-dir: for an operator away from the tables.
    #[arg(long, env = "PARALLAX_WEB")]
    pub(crate) web: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
}

/// One region as it answered.
#[derive(Debug, Serialize)]
struct RegionStatus {
    region: String,
    url: String,
    /// `ready`, `not ready` (it answers but is starting or stopping) or
    /// `unreachable`.
    state: String,
    /// Why it is not ready or not reached.
    error: Option<String>,
    uptime_s: Option<u64>,
    /// Entities waiting in its reconciliation queue.
    queue: Option<u64>,
    /// Peers it has not reached for `anti_entropy.detour_after_ms` (a cut link).
    cut_from: Vec<String>,
    /// Its workers whose last run failed (`name: error`).
    failing_workers: Vec<String>,
}

/// Replication from one region to another.
#[derive(Debug, Serialize)]
struct PairStatus {
    from: String,
    to: String,
    /// How far `to` trails `from`'s writes now (ms), as `to` measures it.
    lag_ms: Option<u64>,
    /// `from`'s log entries `to` has not acknowledged.
    backlog_ops: Option<u64>,
    /// `from` dropped its log for `to` (backlog cap): anti-entropy must repair.
    needs_anti_entropy: bool,
}

/// An audit of one class; the web app's Divergence page serves them so
/// (its `ts` is `at` here).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AuditStatus {
    class: String,
    /// When it finished (RFC 3339), `None` without one in the last 7 days.
    #[serde(alias = "ts")]
    at: Option<String>,
    entities: i64,
    differing: i64,
    in_flight: i64,
    divergent: i64,
}

/// An SLO's state, as `/api/v1/slos` serves it (the fields shown here).
#[derive(Debug, Serialize, Deserialize)]
struct SloRow {
    name: String,
    region: String,
    objective_pct: f64,
    sli_pct: Option<f64>,
    budget_remaining_pct: Option<f64>,
    /// `page: ...` or `ticket: ...` while a burn-rate alert holds.
    alerting: Option<String>,
}

/// Everything the command prints.
#[derive(Debug, Serialize)]
struct Status {
    regions: Vec<RegionStatus>,
    pairs: Vec<PairStatus>,
    audits: Vec<AuditStatus>,
    slos: Vec<SloRow>,
    /// Why the audits or SLOs could not be read, if they could not.
    tables_error: Option<String>,
    /// What needs a person; empty when all is well.
    problems: Vec<String>,
}

/// `parallax status`: exit 0 when nothing needs a person, 1 when something
/// does (the problems are listed), 2 on error.
pub(crate) async fn run(a: StatusArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let asked =
        futures::future::join_all(config.region_names().into_iter().map(|r| ask(&config, r))).await;
    let mut regions = Vec::new();
    let mut stats = BTreeMap::new();
    for (r, s) in asked {
        if let Some(s) = s {
            stats.insert(r.region.clone(), s);
        }
        regions.push(r);
    }
    let pairs = pairs(&config, &stats);
    let now_us = SystemClock.now_us() as i64;
    let read = match &a.web {
        Some(url) => from_web(&config, url).await,
        None => from_tables(&config, &a.data_dir, now_us).await,
    };
    let (audits, slos, tables_error) = match read {
        Ok((runs, slos)) => (last_audits(&config, &runs), slos, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e)),
    };
    let mut status = Status {
        regions,
        pairs,
        audits,
        slos,
        tables_error,
        problems: Vec::new(),
    };
    status.problems = problems(&status);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(if status.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Asks one region whether it is ready, then for its stats.
async fn ask(config: &Config, region: String) -> (RegionStatus, Option<NodeStats>) {
    let url = config.region_url(&region).unwrap_or_default();
    let http = config
        .tls
        .client_builder()
        .build()
        .expect("HTTP client builds");
    let client = RegionClient::over(&region, &url, http)
        .with_tokens(&config.cluster.client_token, &config.cluster.admin_token)
        .with_timeout(ASK_TIMEOUT);
    let mut status = RegionStatus {
        region,
        url,
        state: "unreachable".into(),
        error: None,
        uptime_s: None,
        queue: None,
        cut_from: Vec::new(),
        failing_workers: Vec::new(),
    };
    match client.readyz().await {
        Ok(_) => status.state = "ready".into(),
        Err(e) => {
            // Any answer but 200 is a region that runs but is not ready.
            if !matches!(e, ClientError::Unreachable { .. }) {
                status.state = "not ready".into();
            }
            status.error = Some(e.to_string());
        }
    }
    if status.state == "unreachable" {
        return (status, None);
    }
    let stats = match client.stats().await {
        Ok(s) => s,
        Err(e) => {
            status.error = Some(format!("stats: {e}"));
            return (status, None);
        }
    };
    status.uptime_s = Some(stats.uptime_ms / 1_000);
    status.queue = Some(stats.reconciliation_queue);
    status.cut_from = stats
        .anti_entropy
        .detour
        .as_ref()
        .map(|d| d.cut.clone())
        .unwrap_or_default();
    status.failing_workers = stats
        .workers
        .iter()
        .filter_map(|w| Some(format!("{}: {}", w.name, w.last_error.as_ref()?)))
        .collect();
    (status, Some(stats))
}

/// Every ordered pair of regions: the lag as the receiver measures it,
/// the backlog as the sender holds it.
fn pairs(config: &Config, stats: &BTreeMap<String, NodeStats>) -> Vec<PairStatus> {
    let names = config.region_names();
    let mut out = Vec::new();
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            let sent = stats.get(from).and_then(|s| s.replication.peers.get(to));
            let received = stats.get(to).and_then(|s| s.replication.peers.get(from));
            out.push(PairStatus {
                from: from.clone(),
                to: to.clone(),
                lag_ms: received.and_then(|p| p.lag_from_ms),
                backlog_ops: sent.map(|p| p.backlog_ops),
                needs_anti_entropy: sent.is_some_and(|p| p.needs_anti_entropy),
            });
        }
    }
    out
}

/// The last audit of each critical class among `runs` (newest first), by
/// class name.
fn last_audits(config: &Config, runs: &[AuditStatus]) -> Vec<AuditStatus> {
    config
        .classes
        .iter()
        .filter(|(n, c)| c.critical && !n.starts_with('_'))
        .map(|(class, _)| {
            runs.iter()
                .find(|r| r.class == *class)
                .cloned()
                .unwrap_or_else(|| AuditStatus {
                    class: class.clone(),
                    ..AuditStatus::default()
                })
        })
        .collect()
}

/// The audits of the last 7 days and every SLO, from the tables.
async fn from_tables(
    config: &Config,
    data_dir: &std::path::Path,
    now_us: i64,
) -> Result<(Vec<AuditStatus>, Vec<SloRow>), String> {
    let (root, bucket) = parallax_collector::bucket::locate(&config.collector, data_dir)
        .map_err(|e| e.to_string())?;
    if bucket.is_none() && !root.is_dir() {
        return Err(format!(
            "no tables under {}. Fix: pass --data-dir with the directory the regions' collectors write (the web app's), or --web with the web app's URL",
            data_dir.display()
        ));
    }
    let engine = SqlEngine::open_at(&root, bucket.as_deref(), SqlLimits::default())
        .await
        .map_err(|e| e.to_string())?;
    let since = now_us - AUDIT_LOOKBACK_US;
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let rows = engine
        .query(&format!(
            "SELECT class, arrow_cast(ts, 'Int64') AS ts_us, entities, differing, in_flight, divergent \
             FROM audits WHERE ts >= to_timestamp_micros({since}) ORDER BY ts DESC"
        ))
        .await
        .map_err(|e| format!("audits: {e}"))?
        .json_rows()
        .iter()
        .map(|r| AuditStatus {
            class: r[0].as_str().unwrap_or_default().to_owned(),
            at: Some(parallax_web::time::rfc3339_micros(int(&r[1]))),
            entities: int(&r[2]),
            differing: int(&r[3]),
            in_flight: int(&r[4]),
            divergent: int(&r[5]),
        })
        .collect();
    let slos = parallax_web::slo::evaluate(&engine, config, now_us, &[])
        .await
        .map_err(|e| format!("SLOs: {e}"))?
        .slos;
    let slos = serde_json::to_value(slos)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("SLOs: {e}"))?;
    Ok((rows, slos))
}

/// The audits of the last 7 days and every SLO, from the web app at `url`
/// (its JSON twins of the Divergence and SLOs pages).
async fn from_web(config: &Config, url: &str) -> Result<(Vec<AuditStatus>, Vec<SloRow>), String> {
    let url = url.trim_end_matches('/');
    let http = (config.tls)
        .client_builder()
        .timeout(WEB_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let get = |path: &str| {
        let page = format!("{url}{path}");
        let http = http.clone();
        async move {
            let answer = http
                .get(&page)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| {
                    format!(
                        "the web app did not answer {page}: {}. Fix: pass --web with its URL, or --data-dir with its tables",
                        parallax_core::transport::error_chain(&e)
                    )
                })?;
            let body: Value = answer
                .json()
                .await
                .map_err(|e| format!("{page} answered no JSON: {e}"))?;
            Ok::<Value, String>(body["data"].clone())
        }
    };
    let runs = serde_json::from_value(get("/api/v1/divergence?range=7d").await?["audits"].clone())
        .map_err(|e| format!("{url}/api/v1/divergence: {e}"))?;
    let slos = serde_json::from_value(get("/api/v1/slos").await?["slos"].clone())
        .map_err(|e| format!("{url}/api/v1/slos: {e}"))?;
    Ok((runs, slos))
}

/// What needs a person.
fn problems(s: &Status) -> Vec<String> {
    let mut out = Vec::new();
    for r in &s.regions {
        if r.state != "ready" {
            out.push(format!(
                "{} is {}: {}",
                r.region,
                r.state,
                r.error.as_deref().unwrap_or("?")
            ));
        }
        for peer in &r.cut_from {
            out.push(format!(
                "{} has not reached {peer} for anti_entropy.detour_after_ms (a cut link?)",
                r.region
            ));
        }
    }
    for p in s.pairs.iter().filter(|p| p.needs_anti_entropy) {
        out.push(format!(
            "{} dropped its log for {} (backlog cap): anti-entropy must repair it",
            p.from, p.to
        ));
    }
    for a in s.audits.iter().filter(|a| a.divergent > 0) {
        out.push(format!(
            "the last audit of {} found {} divergent keys. Fix: parallax audit --repair",
            a.class, a.divergent
        ));
    }
    for slo in &s.slos {
        if let Some(alert) = &slo.alerting {
            out.push(format!("SLO {} in {}: {alert}", slo.name, slo.region));
        }
    }
    out
}

/// The last cause of an error, without its fix: "Connection refused (os
/// error 111)" of the whole chain (the problems list has it all).
fn cause(error: &str) -> String {
    let without_fix = error.split(". Fix:").next().unwrap_or(error);
    without_fix
        .rsplit(": ")
        .next()
        .unwrap_or(without_fix)
        .to_owned()
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn strings(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// The screen.
fn render(s: &Status) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = s
        .regions
        .iter()
        .map(|r| {
            vec![
                r.region.clone(),
                r.state.clone(),
                or_dash(
                    r.uptime_s
                        .map(|u| format!("{}h{:02}m", u / 3_600, u / 60 % 60)),
                ),
                or_dash(r.queue),
                r.url.clone(),
                r.error.as_deref().map(cause).unwrap_or_default(),
            ]
        })
        .collect();
    let headers = strings(&["region", "state", "uptime", "queue", "url", "error"]);
    out.push_str(&table::render(&headers, &rows));
    // Background loops whose last run failed: often a peer being down
    // (already above), else worth a look in the region's log.
    for r in &s.regions {
        for w in &r.failing_workers {
            let _ = writeln!(out, "{} worker {w}", r.region);
        }
    }
    let rows: Vec<Vec<String>> = s
        .pairs
        .iter()
        .map(|p| {
            vec![
                format!("{} -> {}", p.from, p.to),
                or_dash(p.lag_ms),
                or_dash(p.backlog_ops),
                if p.needs_anti_entropy { "yes" } else { "" }.to_owned(),
            ]
        })
        .collect();
    let headers = strings(&["replication", "lag_ms", "backlog", "needs anti-entropy"]);
    out.push('\n');
    out.push_str(&table::render(&headers, &rows));
    out.push('\n');
    if let Some(e) = &s.tables_error {
        let _ = writeln!(out, "audits and SLOs: {e}");
    } else {
        let rows: Vec<Vec<String>> = s
            .audits
            .iter()
            .map(|a| {
                vec![
                    a.class.clone(),
                    a.at.clone().unwrap_or_else(|| "none in 7 days".into()),
                    a.entities.to_string(),
                    a.differing.to_string(),
                    a.in_flight.to_string(),
                    a.divergent.to_string(),
                ]
            })
            .collect();
        let headers = strings(&[
            "last audit",
            "at",
            "entities",
            "differing",
            "in flight",
            "divergent",
        ]);
        out.push_str(&table::render(&headers, &rows));
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .slos
            .iter()
            .map(|slo| {
                vec![
                    slo.name.clone(),
                    slo.region.clone(),
                    format!("{}%", slo.objective_pct),
                    or_dash(slo.sli_pct.map(|v| format!("{v:.3}%"))),
                    or_dash(slo.budget_remaining_pct.map(|v| format!("{v:.1}%"))),
                    slo.alerting.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let headers = strings(&["slo", "region", "objective", "sli", "budget left", "alert"]);
        out.push_str(&table::render(&headers, &rows));
    }
    out.push('\n');
    if s.problems.is_empty() {
        out.push_str("all well\n");
    } else {
        let _ = writeln!(out, "{} to look at:", s.problems.len());
        for p in &s.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, failing: &[&str]) -> RegionStatus {
        RegionStatus {
            region: name.into(),
            url: format!("http://{name}"),
            state: "ready".into(),
            error: None,
            uptime_s: Some(3_720),
            queue: Some(0),
            cut_from: Vec::new(),
            failing_workers: failing.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    #[test]
    fn the_screen_names_failing_workers_under_their_region() {
        let s = Status {
            regions: vec![
                region("us-east", &[]),
                region("eu-west", &["anti-entropy: us-west unreachable"]),
            ],
            pairs: Vec::new(),
            audits: Vec::new(),
            slos: Vec::new(),
            tables_error: None,
            problems: Vec::new(),
        };
        let screen = render(&s);
        assert!(
            screen.contains("eu-west worker anti-entropy: us-west unreachable\n"),
            "{screen}"
        );
        assert!(!screen.contains("us-east worker"), "{screen}");
        assert!(
            screen.contains("1h02m") && screen.ends_with("all well\n"),
            "{screen}"
        );
    }
}
