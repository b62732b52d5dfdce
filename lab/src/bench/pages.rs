//! The whole-page half of `parallax bench query`: every dashboard page the
//! rollups serve, and the conflicts page (one row per conflict, no rollup),
//! over 24 hours, 7 days and 30 days, timed as the web app
//! draws it (the figures behind the page and its JSON twin), and the
//! rollups checked against the raw rows on the same 100M rows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use parallax_collector::rollup::Bounds;
use parallax_core::config::Config;
use parallax_web::SqlEngine;
use parallax_web::filters::{Filters, step_for, time_scan};
use parallax_web::rollup::{self, Plan};
use serde_json::Value;

/// A page over a range must answer within this (ms).
pub(super) const PAGE_AIM_MS: f64 = 300.0;

/// One page over one range: its best time of `runs` (ms).
pub(super) struct PageTime {
    pub page: &'static str,
    pub range: &'static str,
    pub ms: f64,
}

fn filters(from_us: i64, to_us: i64) -> Filters {
    Filters {
        range: "custom".into(),
        from_us,
        to_us,
        regions: Vec::new(),
        classes: Vec::new(),
        step_s: step_for((to_us - from_us) / 1_000_000),
    }
}

async fn best<F, Fut>(runs: u32, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut best = f64::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        f().await?;
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Times the overview, replication, latency and conflicts pages over 24 h,
/// 7 days and 30 days ending at `now_us`, and the SLOs page (its windows
/// are the SLOs' own) for the example config's SLOs.
pub(super) async fn time_pages(
    e: &SqlEngine,
    regions: &[String],
    now_us: i64,
    runs: u32,
) -> Result<Vec<PageTime>> {
    let config = example_config()?;
    let mut out = Vec::new();
    for (range, days) in [("24 h", 1), ("7 days", 7), ("30 days", 30)] {
        let f = filters(now_us - days * 86_400_000_000, now_us);
        for page in ["overview", "replication", "latency", "conflicts"] {
            let ms = best(runs, || async {
                match page {
                    "overview" => parallax_web::dash::overview(e, &f, regions).await.map(drop),
                    "replication" => parallax_web::dash::replication(e, &f, regions)
                        .await
                        .map(drop),
                    "conflicts" => parallax_web::dash::conflicts(e, &f, regions)
                        .await
                        .map(drop),
                    _ => parallax_web::dash::latency(e, &f, regions).await.map(drop),
                }
                .with_context(|| format!("the {page} page over {range}"))
            })
            .await?;
            out.push(PageTime { page, range, ms });
        }
    }
    let ms = best(runs, || async {
        parallax_web::slo::evaluate(e, &config, now_us, &[])
            .await
            .context("the SLOs page")
            .map(drop)
    })
    .await?;
    out.push(PageTime {
        page: "SLOs (4, 30-day windows)",
        range: "30 days",
        ms,
    });
    Ok(out)
}

/// The config the benchmark's pages are drawn for: the example's.
fn example_config() -> Result<Config> {
    Ok(Config::from_toml(
        crate::demo::EXAMPLE_CONFIG,
        "three-regions.toml",
    )?)
}

/// The example config's SLO thresholds, which the rollups are keyed by.
pub(super) fn example_bounds() -> Result<Bounds> {
    Ok(Bounds::of(&example_config()?))
}

/// Each region's requests, 5xx, requests over the example's latency SLO
/// threshold and p50/p99 over 30 days ending at `now_us`, from the rollups
/// and from the raw rows: they must be equal. Returns (rollups ms, raw ms).
pub(super) async fn check_rollups(
    e: &SqlEngine,
    regions: &[String],
    now_us: i64,
) -> Result<(f64, f64)> {
    let bounds = example_bounds()?.latency_ms;
    let t = *bounds
        .first()
        .context("the example config has a latency SLO")?;
    let from = now_us - 30 * 86_400_000_000;
    let plan = Plan::totals(from, now_us);
    let rolled = parallax_web::dash::per_region_from(
        regions,
        &format!(
            "sum(requests), coalesce(sum(requests) FILTER (WHERE status >= 500), 0), \
         coalesce(sum(requests) FILTER (WHERE latency_over_ms >= {t}), 0), \
         approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99)"
        ),
        |r| rollup::requests(&plan, r, "TRUE", &bounds),
        "",
    );
    let raw = parallax_web::dash::per_region(
        regions,
        &format!(
            "count(*), count(*) FILTER (WHERE status >= 500), \
             count(*) FILTER (WHERE latency_us > {}), \
             approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99)",
            t * 1_000
        ),
        &format!("{} WHERE TRUE", time_scan("requests", from, now_us)),
        "",
    );
    let run = |sql: String| async move {
        let started = Instant::now();
        let mut rows: Vec<Vec<Value>> = e.query(&sql).await?.json_rows();
        rows.sort_by_key(|r| r[0].to_string());
        anyhow::Ok((rows, started.elapsed().as_secs_f64() * 1e3))
    };
    let (a, rolled_ms) = run(rolled).await?;
    let (b, raw_ms) = run(raw).await?;
    if a != b || a.is_empty() {
        bail!("the rollups answer {a:?} where the raw rows answer {b:?}");
    }
    Ok((rolled_ms, raw_ms))
}
