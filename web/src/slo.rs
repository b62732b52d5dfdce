//! Service level objectives: the SLI over the SLO's window, the error budget
//! left, and burn rates over the windows of the SRE workbook's
//! multi-window, multi-burn-rate alerts.
//!
//! For a 30-day SLO: page when the 1 h and 5 m burn rates both exceed 14.4
//! (2% of the budget in an hour), or the 6 h and 30 m rates both exceed 6
//! (5% in six hours); open a ticket when the 3 d and 6 h rates are both
//! above one. Other SLO windows scale these windows by `window_days / 30`.
//! A burn rate is the error rate over a window divided by the error rate
//! the objective allows (`1 - objective`): at one, the budget lasts exactly
//! the window.

use std::collections::BTreeMap;

use parallax_core::config::{Config, SloConfig, SloKind};
use serde::Serialize;
use serde_json::Value;

use crate::filters::time_scan;
use crate::rollup::{self, Plan};
use crate::sql::{SqlEngine, SqlError};
use parallax_collector::rollup::Bounds;

/// The burn-rate windows (name, seconds for a 30-day SLO).
pub const WINDOWS: [(&str, i64); 5] = [
    ("5m", 300),
    ("30m", 1_800),
    ("1h", 3_600),
    ("6h", 21_600),
    ("3d", 259_200),
];

/// The alerting pairs: (long window, short window, burn rate, severity).
pub const ALERTS: [(&str, &str, f64, &str); 3] = [
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6.0, "page"),
    ("3d", "6h", 1.0, "ticket"),
];

/// The first workbook condition that holds — both its windows burn faster
/// than its rate (strictly: a burn of exactly 14.4x does not page) — given
/// each window's burn rate by name.
fn fired(
    rate: impl Fn(&str) -> f64,
) -> Option<&'static (&'static str, &'static str, f64, &'static str)> {
    ALERTS
        .iter()
        .find(|(long, short, over, _)| rate(long) > *over && rate(short) > *over)
}

/// A burn rate over one window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BurnRate {
    /// The window's name for a 30-day SLO (`5m` ... `3d`).
    pub window: String,
    /// Its length for this SLO (s).
    pub seconds: i64,
    /// Events in it.
    pub total: i64,
    /// Bad events in it.
    pub bad: i64,
    /// The burn rate; `None` without events.
    pub rate: Option<f64>,
}

/// One SLO in one region.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SloStatus {
    /// The SLO's name.
    pub name: String,
    /// What it measures.
    pub kind: String,
    /// The region.
    pub region: String,
    /// The objective (percent good).
    pub objective_pct: f64,
    /// The window (days).
    pub window_days: u32,
    /// Good events over the window.
    pub good: i64,
    /// Events over the window.
    pub total: i64,
    /// The SLI over the window (percent good); `None` without events.
    pub sli_pct: Option<f64>,
    /// Error budget left (percent of the budget; negative when overspent).
    pub budget_remaining_pct: Option<f64>,
    /// Burn rates per window.
    pub burn_rates: Vec<BurnRate>,
    /// `page` or `ticket` when a workbook alert condition holds, with the
    /// pair of windows that fired (e.g. `page: 1h and 5m over 14.4x`).
    pub alerting: Option<String>,
    /// The severity alone (`page`, `ticket`).
    pub severity: Option<String>,
}

/// The SLOs page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Slos {
    /// Every SLO in every region it applies to.
    pub slos: Vec<SloStatus>,
}

/// How an SLO counts its events and its bad ones.
enum Measure {
    /// From a table with rollups, through [`crate::rollup`]: the source
    /// (`requests` or `lag`), the count column and the bad events'
    /// predicate over the rollup's columns.
    Rolled {
        source: fn(&Plan, &str, &str, &[u64]) -> String,
        bounds: Vec<u64>,
        count: &'static str,
        bad: String,
    },
    /// From the raw rows of a table: the bad events' predicate.
    Raw { table: &'static str, bad: String },
}

/// How `slo` is measured. Every table is partitioned by region;
/// `replication_lag` by the destination, so a freshness SLO in a region
/// measures replication into it. A latency or freshness threshold is read
/// from the rollups, whose rows the collectors key by every SLO threshold
/// in the config; a threshold of 0, which no key tells apart, and the
/// integrity SLO from the raw rows.
fn measure(slo: &SloConfig, config: &Config) -> Measure {
    let threshold = slo.threshold_ms.unwrap_or(0);
    let bounds = Bounds::of(config);
    let banded = |bounds: &[u64]| bounds.contains(&threshold);
    let requests = |bad: String| Measure::Rolled {
        source: rollup::request_counts,
        bounds: bounds.latency_ms.clone(),
        count: "requests",
        bad,
    };
    match slo.kind {
        SloKind::Availability => requests("status >= 500".into()),
        SloKind::Latency if banded(&bounds.latency_ms) => {
            requests(format!("latency_over_ms >= {threshold}"))
        }
        SloKind::Latency => Measure::Raw {
            table: "requests",
            bad: format!("latency_us > {}", threshold * 1_000),
        },
        SloKind::Freshness if banded(&bounds.lag_ms) => Measure::Rolled {
            source: rollup::lag,
            bounds: bounds.lag_ms,
            count: "samples",
            bad: format!("lag_over_ms >= {threshold}"),
        },
        SloKind::Freshness => Measure::Raw {
            table: "replication_lag",
            bad: format!("lag_ms > {threshold}"),
        },
        SloKind::Integrity => {
            let critical: Vec<String> = config
                .classes
                .iter()
                .filter(|(_, c)| c.critical)
                .map(|(n, _)| format!("'{}'", n.replace('\'', "''")))
                .collect();
            let class = if critical.is_empty() {
                "FALSE".to_owned()
            } else {
                format!("class IN ({})", critical.join(", "))
            };
            Measure::Raw {
                table: "audits",
                bad: format!("({class}) AND divergent > 0"),
            }
        }
    }
}

impl Measure {
    /// Per region: the events and bad events over `[from_us, to_us)`, then
    /// over each window from `cuts[i]` to `to_us`.
    async fn count(
        &self,
        engine: &SqlEngine,
        regions: &[String],
        from_us: i64,
        to_us: i64,
        cuts: &[i64],
    ) -> Result<BTreeMap<String, Vec<Value>>, SqlError> {
        let (n, bad, ts) = match self {
            Measure::Rolled { count, bad, .. } => (format!("sum({count})"), bad, "ts".to_owned()),
            Measure::Raw { bad, .. } => ("count(*)".to_owned(), bad, "CAST(ts AS BIGINT)".into()),
        };
        let mut cols = vec![n.clone(), format!("{n} FILTER (WHERE {bad})")];
        for cut in cuts {
            cols.push(format!("{n} FILTER (WHERE {ts} >= {cut})"));
            cols.push(format!("{n} FILTER (WHERE {ts} >= {cut} AND ({bad}))"));
        }
        let cols = cols.join(", ");
        let sql = match self {
            // Rollups for the whole 5-minute buckets; the raw rows one by one
            // in the buckets a window starts inside and at the ends.
            Measure::Rolled { source, bounds, .. } => {
                let plan = Plan::windows(from_us, to_us, cuts);
                crate::dash::per_region_from(
                    regions,
                    &cols,
                    |r| source(&plan, r, "TRUE", bounds),
                    "",
                )
            }
            Measure::Raw { table, .. } => crate::dash::per_region(
                regions,
                &cols,
                &format!("{} WHERE TRUE", time_scan(table, from_us, to_us)),
                "",
            ),
        };
        Ok(engine
            .query(&sql)
            .await?
            .json_rows()
            .into_iter()
            .map(|row| {
                (
                    row[0].as_str().unwrap_or_default().to_owned(),
                    row[1..].to_vec(),
                )
            })
            .collect())
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_f64().map(|f| f as i64))
        .unwrap_or(0)
}

/// Evaluates every SLO at `now_us`, for the regions `wanted` (all if empty).
pub async fn evaluate(
    engine: &SqlEngine,
    config: &Config,
    now_us: i64,
    wanted: &[String],
) -> Result<Slos, SqlError> {
    evaluate_some(engine, config, now_us, wanted, None).await
}

/// Evaluates the SLO `name` at `now_us` in all its regions.
pub async fn evaluate_one(
    engine: &SqlEngine,
    config: &Config,
    now_us: i64,
    name: &str,
) -> Result<Slos, SqlError> {
    evaluate_some(engine, config, now_us, &[], Some(name)).await
}

async fn evaluate_some(
    engine: &SqlEngine,
    config: &Config,
    now_us: i64,
    wanted: &[String],
    only: Option<&str>,
) -> Result<Slos, SqlError> {
    // What each SLO counts, then all of it asked at once (see the overview).
    struct Ask<'a> {
        name: &'a String,
        slo: &'a SloConfig,
        regions: Vec<String>,
        measure: Measure,
        windows: Vec<(String, i64)>,
        start: i64,
        burns_from: i64,
        cuts: Vec<i64>,
    }
    let mut asks = Vec::new();
    for (name, slo) in config
        .slos
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
    {
        let regions: Vec<String> = if slo.regions.is_empty() {
            config.region_names()
        } else {
            slo.regions.clone()
        };
        let regions: Vec<String> = regions
            .into_iter()
            .filter(|r| wanted.is_empty() || wanted.contains(r))
            .collect();
        if regions.is_empty() {
            continue;
        }
        let scale = f64::from(slo.window_days) / 30.0;
        let long_s = i64::from(slo.window_days) * 86_400;
        let windows: Vec<(String, i64)> = WINDOWS
            .iter()
            .map(|(n, s)| ((*n).to_owned(), ((*s as f64) * scale).round() as i64))
            .collect();
        // The window's totals need no `ts` for the whole hours (chosen by
        // their partitions) or the whole 5-minute buckets (from rollups).
        // The integrity SLO counts audits of every class, bad when a
        // critical one diverged; its region is the one that recorded it.
        let start = now_us - long_s * 1_000_000;
        // The burn windows count by `ts`, over the longest of them only.
        let longest = windows.iter().map(|w| w.1).max().unwrap_or(0);
        let cuts: Vec<i64> = windows
            .iter()
            .map(|(_, secs)| now_us - secs * 1_000_000)
            .collect();
        asks.push(Ask {
            name,
            slo,
            regions,
            measure: measure(slo, config),
            windows,
            start,
            burns_from: (now_us - longest * 1_000_000).max(start),
            cuts,
        });
    }
    let counted = futures::future::try_join_all(asks.iter().map(|a| async move {
        futures::try_join!(
            a.measure.count(engine, &a.regions, a.start, now_us, &[]),
            a.measure
                .count(engine, &a.regions, a.burns_from, now_us, &a.cuts),
        )
    }))
    .await?;
    let mut out = Vec::new();
    for (ask, (totals, burns)) in asks.into_iter().zip(counted) {
        let Ask {
            name,
            slo,
            regions,
            windows,
            ..
        } = ask;
        let allowed = 1.0 - slo.objective / 100.0;
        for region in regions {
            let total_at = |i: usize| totals.get(&region).map_or(0, |r| int(&r[i]));
            // Each window's two counts follow the whole range's two.
            let burn_at = |i: usize| burns.get(&region).map_or(0, |r| int(&r[i + 2]));
            let (total, bad) = (total_at(0), total_at(1));
            let burn_rates: Vec<BurnRate> = windows
                .iter()
                .enumerate()
                .map(|(i, (name, secs))| {
                    let (t, b) = (burn_at(2 * i), burn_at(2 * i + 1));
                    BurnRate {
                        window: name.clone(),
                        seconds: *secs,
                        total: t,
                        bad: b,
                        rate: (t > 0).then(|| (b as f64 / t as f64) / allowed),
                    }
                })
                .collect();
            let rate = |w: &str| {
                burn_rates
                    .iter()
                    .find(|b| b.window == w)
                    .and_then(|b| b.rate)
                    .unwrap_or(0.0)
            };
            let fired = fired(rate);
            out.push(SloStatus {
                name: name.clone(),
                kind: slo.kind.name().into(),
                region,
                objective_pct: slo.objective,
                window_days: slo.window_days,
                good: total - bad,
                total,
                sli_pct: (total > 0).then(|| 100.0 * (total - bad) as f64 / total as f64),
                budget_remaining_pct: (total > 0)
                    .then(|| 100.0 * (1.0 - (bad as f64 / total as f64) / allowed)),
                burn_rates,
                alerting: fired.map(|(long, short, over, sev)| {
                    format!("{sev}: {long} and {short} over {over}x")
                }),
                severity: fired.map(|f| f.3.to_owned()),
            });
        }
    }
    Ok(Slos { slos: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The severity and windows `fired` picks for burn rates by window.
    fn pick(rates: &[(&str, f64)]) -> Option<(&'static str, &'static str, &'static str)> {
        let rate = |w: &str| rates.iter().find(|(n, _)| *n == w).map_or(0.0, |r| r.1);
        fired(rate).map(|(long, short, _, sev)| (*sev, *long, *short))
    }

    #[test]
    fn workbook_conditions_need_both_windows_strictly_over_their_rate() {
        assert_eq!(pick(&[("1h", 14.4), ("5m", 14.4)]), None);
        assert_eq!(
            pick(&[("1h", 14.5), ("5m", 14.5)]),
            Some(("page", "1h", "5m"))
        );
        // A long window alone, or a short one alone, does not fire.
        assert_eq!(pick(&[("1h", 50.0), ("5m", 1.0)]), None);
        assert_eq!(pick(&[("1h", 1.0), ("5m", 50.0)]), None);
        assert_eq!(pick(&[("6h", 6.0), ("30m", 6.0)]), None);
        assert_eq!(
            pick(&[("6h", 6.1), ("30m", 6.1)]),
            Some(("page", "6h", "30m"))
        );
        assert_eq!(pick(&[("3d", 1.0), ("6h", 1.0)]), None);
        assert_eq!(
            pick(&[("3d", 1.1), ("6h", 1.1)]),
            Some(("ticket", "3d", "6h"))
        );
        // Page wins over ticket when both hold.
        assert_eq!(
            pick(&[("3d", 7.0), ("6h", 7.0), ("30m", 7.0)]),
            Some(("page", "6h", "30m"))
        );
        assert_eq!(pick(&[]), None);
    }
}
