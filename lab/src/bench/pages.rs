//! The whole-page half of `parallax bench query`: every dashboard page the
//! rollups serve, over 24 hours, 7 days and 30 days, timed as the web app
//! draws it (the figures behind the page and its JSON twin), and the
//! rollups checked against the raw rows on the same 100M rows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
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

/// Times the overview, replication and latency pages over 24 h, 7 days and
/// 30 days ending at `now_us`, and the SLOs page (its windows are the
/// SLOs' own) for the example config's SLOs.
pub(super) async fn time_pages(
    e: &SqlEngine,
    regions: &[String],
    now_us: i64,
    runs: u32,
) -> Result<Vec<PageTime>> {
    let config = Config::from_toml(crate::demo::EXAMPLE_CONFIG, "three-regions.toml")?;
    let mut out = Vec::new();
    for (range, days) in [("24 h", 1), ("7 days", 7), ("30 days", 30)] {
        let f = filters(now_us - days * 86_400_000_000, now_us);
        let err = |page: &str| format!("the {page} page over {range}");
        let ms = best(runs, || async {
            parallax_web::dash::overview(e, &f, regions)
                .await
                .with_context(|| err("overview"))
                .map(drop)
        })
        .await?;
        out.push(PageTime {
            page: "overview",
            range,
            ms,
        });
        let ms = best(runs, || async {
            parallax_web::dash::replication(e, &f, regions)
                .await
                .with_context(|| err("replication"))
                .map(drop)
        })
        .await?;
        out.push(PageTime {
            page: "replication",
            range,
            ms,
        });
        let ms = best(runs, || async {
            parallax_web::dash::latency(e, &f, regions)
                .await
                .with_context(|| err("latency"))
                .map(drop)
        })
        .await?;
        out.push(PageTime {
            page: "latency",
            range,
            ms,
        });
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

/// Each region's requests, 5xx, requests over 250 ms and p50/p99 over 30
/// days ending at `now_us`, from the rollups and from the raw rows: they
/// must be equal. Returns (rollups ms, raw ms).
pub(super) async fn check_rollups(
    e: &SqlEngine,
    regions: &[String],
    now_us: i64,
) -> Result<(f64, f64)> {
    let from = now_us - 30 * 86_400_000_000;
    let plan = Plan::totals(from, now_us);
    let rolled = parallax_web::dash::per_region_from(
        regions,
        "sum(requests), coalesce(sum(requests) FILTER (WHERE status >= 500), 0), \
         coalesce(sum(requests) FILTER (WHERE latency_over_ms >= 250), 0), \
         approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99)",
        |r| rollup::requests(&plan, r, "TRUE", &[250]),
        "",
    );
    let raw = parallax_web::dash::per_region(
        regions,
        "count(*), count(*) FILTER (WHERE status >= 500), \
         count(*) FILTER (WHERE latency_us > 250000), \
         approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99)",
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
