//! The cost page's figures: what crossed between regions in the range (the
//! `traffic` table, and the auditor's reads from the `audits` table),
//! priced by `[cost]`, projected over a month, and for each class what
//! another ownership or rollout stage would move across regions, from the
//! class's measured write and read mix ([`what_ifs`]).

use std::collections::BTreeMap;

use parallax_core::config::{Config, CostConfig, Ownership, Rollout};
use serde::Serialize;

use super::common::{i64_of, rows, series_of, str_of};
use crate::charts::Series;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// Bytes in a GB, as clouds bill them.
const GB: f64 = 1e9;
/// A month, as the projection counts it (30 days).
const MONTH_S: f64 = 30.0 * 86_400.0;

/// Bytes from one region to another.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PairCost {
    /// The region the bytes left (it pays the egress).
    pub src: String,
    /// The region they reached.
    pub dst: String,
    /// Bytes in the range.
    pub bytes: i64,
    /// The price of a GB on this pair.
    pub gb_price: f64,
    /// What the bytes cost.
    pub spend: f64,
    /// At the range's rate, over 30 days.
    pub month: f64,
}

/// Bytes of one kind of call (`replicate`, `heartbeat`, `tree`, ...).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KindCost {
    /// The kind; `audit` for the auditor's reads of the regions.
    pub kind: String,
    /// Calls.
    pub calls: i64,
    /// Bytes both ways.
    pub bytes: i64,
    /// What they cost.
    pub spend: f64,
}

/// What a class would cost under another ownership or stage.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WhatIf {
    /// The change, e.g. `active-active, global ownership`.
    pub change: String,
    /// Bytes over 30 days at the range's rate.
    pub month_bytes: f64,
    /// Their price over 30 days.
    pub month: f64,
    /// Against the class's measured 30 days (negative: a saving).
    pub delta: f64,
    /// Whether a forwarded request's size is estimated from the class's
    /// replicated entries (none was forwarded in the range).
    pub estimated: bool,
}

/// One class's share.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassCost {
    /// The class (`(none)` for calls of no class: heartbeats, lease and
    /// watermark questions).
    pub class: String,
    /// Its rollout stage (the latest move, else the config's).
    pub stage: String,
    /// Its ownership.
    pub ownership: String,
    /// Writes answered in the range (status below 400).
    pub writes: i64,
    /// Of them, passed on to another region.
    pub forwarded_writes: i64,
    /// Reads answered in the range.
    pub reads: i64,
    /// Conflicts recorded in the range (every region's).
    pub conflicts: i64,
    /// Of them, queued for a person (manual policy): the on-call side of
    /// active-active.
    pub queued: i64,
    /// Bytes both ways of every call carrying the class.
    pub bytes: i64,
    /// What they cost.
    pub spend: f64,
    /// At the range's rate, over 30 days.
    pub month: f64,
    /// The alternatives (none for `(none)`).
    pub what_if: Vec<WhatIf>,
}

/// The cost page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cost {
    /// The prices' currency.
    pub currency: String,
    /// Seconds of the range with traffic reported: the projection's base.
    pub observed_s: f64,
    /// Bytes in the range, every pair, class and kind.
    pub bytes: i64,
    /// What they cost.
    pub spend: f64,
    /// Transfer over 30 days at the range's rate.
    pub month_transfer: f64,
    /// The regions' own 30 days (`cost.region_hour` × regions × 720 h).
    pub month_regions: f64,
    /// Both.
    pub month_total: f64,
    /// By region pair.
    pub pairs: Vec<PairCost>,
    /// By kind of call.
    pub kinds: Vec<KindCost>,
    /// By class.
    pub classes: Vec<ClassCost>,
    /// Bytes per second by pair over time.
    pub series: Vec<Series>,
}

/// The `traffic` table's counts of one region, peer, kind and class,
/// summed over the range.
#[derive(Clone, Debug, Default)]
struct Row {
    calls: i64,
    items: i64,
    sent: i64,
    received: i64,
}

/// A class's measured mix: requests by the region that took them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mix {
    /// Writes by region.
    pub writes: BTreeMap<String, i64>,
    /// Reads by region.
    pub reads: BTreeMap<String, i64>,
    /// Writes passed on to another region.
    pub forwarded_writes: i64,
    /// Reads passed on.
    pub forwarded_reads: i64,
}

/// What a class's calls carried in the range, by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Carried {
    /// Bytes of forwarded writes, both ways.
    pub forwarded_write_bytes: i64,
    /// Bytes of forwarded reads, both ways.
    pub forwarded_read_bytes: i64,
    /// Forwarded writes, as the traffic table counted them.
    pub forwarded_write_items: i64,
    /// Forwarded reads, as the traffic table counted them.
    pub forwarded_read_items: i64,
    /// Replicated entries (one per entry per peer).
    pub replicated_items: i64,
    /// Their bytes, both ways.
    pub replicated_bytes: i64,
    /// Every call carrying the class, priced at its pair.
    pub spend: f64,
    /// Their bytes, both ways.
    pub bytes: i64,
}

/// The cost page's figures.
pub async fn cost(e: &SqlEngine, f: &Filters, config: &Config) -> Result<Cost, SqlError> {
    let prices = &config.cost;
    // One scan: the rows by chart bucket, summed here into the range's
    // totals and the bytes-per-second series.
    let w = f.source("traffic", Some("region"), Some("class"));
    let b = f.bucket_sql();
    let step = f.step_s as f64;
    let mut traffic: BTreeMap<(String, String, String, String), Row> = BTreeMap::new();
    let mut points: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut first_us = i64::MAX;
    for r in rows(
        e,
        &format!(
            "SELECT region, peer, kind, class, {b} AS t, sum(calls), sum(items), \
             sum(sent_bytes), sum(received_bytes), CAST(min(ts) AS BIGINT) \
             FROM {w} GROUP BY 1, 2, 3, 4, 5"
        ),
    )
    .await?
    {
        let (region, peer) = (str_of(&r[0]), str_of(&r[1]));
        let (t, sent, received) = (i64_of(&r[4]), i64_of(&r[7]), i64_of(&r[8]));
        first_us = first_us.min(i64_of(&r[9]));
        *points.entry((format!("{region} → {peer}"), t)).or_default() += sent as f64 / step;
        *points.entry((format!("{peer} → {region}"), t)).or_default() += received as f64 / step;
        let row = traffic
            .entry((region, peer, str_of(&r[2]), str_of(&r[3])))
            .or_default();
        row.calls += i64_of(&r[5]);
        row.items += i64_of(&r[6]);
        row.sent += sent;
        row.received += received;
    }
    let series = series_of(points.into_iter().map(|((label, t), v)| (label, t, v)));
    // A report covers the interval before its `ts`: the traffic began one
    // interval before the first row (or at the range's start).
    let interval_us = config.collector.traffic_interval_ms as i64 * 1_000;
    let end_us = f.to_us;
    let start_us = f.from_us.max(first_us.saturating_sub(interval_us));
    let observed_s = if traffic.is_empty() {
        0.0
    } else {
        ((end_us - start_us) as f64 / 1e6).max(interval_us as f64 / 1e6)
    };
    let per_month = |v: f64| {
        if observed_s > 0.0 {
            v * MONTH_S / observed_s
        } else {
            0.0
        }
    };

    let mut pairs: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut kinds: BTreeMap<String, KindCost> = BTreeMap::new();
    let mut carried: BTreeMap<String, Carried> = BTreeMap::new();
    for ((region, peer, kind, class), r) in &traffic {
        *pairs.entry((region.clone(), peer.clone())).or_default() += r.sent;
        *pairs.entry((peer.clone(), region.clone())).or_default() += r.received;
        let spend = (r.sent as f64 * prices.gb_price(region, peer)
            + r.received as f64 * prices.gb_price(peer, region))
            / GB;
        let k = kinds.entry(kind.clone()).or_insert_with(|| KindCost {
            kind: kind.clone(),
            calls: 0,
            bytes: 0,
            spend: 0.0,
        });
        k.calls += r.calls;
        k.bytes += r.sent + r.received;
        k.spend += spend;
        let c = carried.entry(class.clone()).or_default();
        c.bytes += r.sent + r.received;
        c.spend += spend;
        match kind.as_str() {
            "write" => {
                c.forwarded_write_bytes += r.sent + r.received;
                c.forwarded_write_items += r.items;
            }
            "read" => {
                c.forwarded_read_bytes += r.sent + r.received;
                c.forwarded_read_items += r.items;
            }
            "replicate" => {
                c.replicated_bytes += r.sent + r.received;
                c.replicated_items += r.items;
            }
            _ => {}
        }
    }
    // The auditor reads every region's trees from where it runs: priced
    // at the default GB price (its location is not a region).
    let audits = rows(
        e,
        &format!(
            "SELECT count(*), sum(bytes) FROM {}",
            f.source("audits", None, Some("class"))
        ),
    )
    .await?;
    if let Some(a) = audits.first().filter(|a| i64_of(&a[1]) > 0) {
        let bytes = i64_of(&a[1]);
        kinds.insert(
            "audit".into(),
            KindCost {
                kind: "audit".into(),
                calls: i64_of(&a[0]),
                bytes,
                spend: bytes as f64 * prices.gb / GB,
            },
        );
    }

    let mixes = mixes(e, f).await?;
    let mut conflicts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in rows(
        e,
        &format!(
            "SELECT class, outcome = 'queued', count(*) FROM {} GROUP BY 1, 2",
            f.source("conflicts", Some("region"), Some("class"))
        ),
    )
    .await?
    {
        let c = conflicts.entry(str_of(&r[0])).or_default();
        c.0 += i64_of(&r[2]);
        if r[1].as_bool() == Some(true) {
            c.1 += i64_of(&r[2]);
        }
    }
    let stages = stages(e).await?;
    let regions = config.region_names();
    let classes = carried
        .iter()
        .map(|(class, c)| {
            let mix = mixes.get(class).cloned().unwrap_or_default();
            let (stage, ownership, what_if) = match config.classes.get(class) {
                Some(cc) => (
                    stages
                        .get(class)
                        .cloned()
                        .unwrap_or(cc.rollout.as_str().to_owned()),
                    cc.ownership.as_str().to_owned(),
                    what_ifs(&regions, cc.primary.as_deref(), &mix, c, prices)
                        .into_iter()
                        .map(|(change, bytes, spend, estimated)| WhatIf {
                            change,
                            month_bytes: per_month(bytes),
                            month: per_month(spend),
                            delta: per_month(spend - c.spend),
                            estimated,
                        })
                        .collect(),
                ),
                // `""` (calls of no class) is no class of the config.
                None => ("–".to_owned(), "–".to_owned(), Vec::new()),
            };
            ClassCost {
                class: if class.is_empty() {
                    "(none)".to_owned()
                } else {
                    class.clone()
                },
                stage,
                ownership,
                writes: mix.writes.values().sum(),
                forwarded_writes: mix.forwarded_writes,
                reads: mix.reads.values().sum(),
                conflicts: conflicts.get(class).map_or(0, |c| c.0),
                queued: conflicts.get(class).map_or(0, |c| c.1),
                bytes: c.bytes,
                spend: c.spend,
                month: per_month(c.spend),
                what_if,
            }
        })
        .collect();

    let pairs: Vec<PairCost> = pairs
        .into_iter()
        .map(|((src, dst), bytes)| {
            let gb_price = prices.gb_price(&src, &dst);
            let spend = bytes as f64 * gb_price / GB;
            PairCost {
                src,
                dst,
                bytes,
                gb_price,
                spend,
                month: per_month(spend),
            }
        })
        .collect();
    let kinds: Vec<KindCost> = kinds.into_values().collect();
    let bytes = kinds.iter().map(|k| k.bytes).sum();
    let spend = kinds.iter().map(|k| k.spend).sum();
    let month_transfer = per_month(spend);
    let month_regions = prices.region_hour * regions.len() as f64 * MONTH_S / 3_600.0;
    Ok(Cost {
        currency: prices.currency.clone(),
        observed_s,
        bytes,
        spend,
        month_transfer,
        month_regions,
        month_total: month_transfer + month_regions,
        pairs,
        kinds,
        classes,
        series,
    })
}

/// Each class's requests in the range by the region that took them.
async fn mixes(e: &SqlEngine, f: &Filters) -> Result<BTreeMap<String, Mix>, SqlError> {
    let w = f.source("requests", Some("region"), Some("class"));
    let mut out: BTreeMap<String, Mix> = BTreeMap::new();
    for r in rows(
        e,
        &format!(
            "SELECT class, region, op = 'get', served_by <> region AND served_by <> '', count(*) \
             FROM {w} AND status < 400 GROUP BY 1, 2, 3, 4"
        ),
    )
    .await?
    {
        let m = out.entry(str_of(&r[0])).or_default();
        let (read, forwarded, n) = (
            r[2].as_bool() == Some(true),
            r[3].as_bool() == Some(true),
            i64_of(&r[4]),
        );
        let by = if read { &mut m.reads } else { &mut m.writes };
        *by.entry(str_of(&r[1])).or_default() += n;
        match (read, forwarded) {
            (true, true) => m.forwarded_reads += n,
            (false, true) => m.forwarded_writes += n,
            _ => {}
        }
    }
    Ok(out)
}

/// Each class's latest rollout move (its stage now, when moved at runtime).
async fn stages(e: &SqlEngine) -> Result<BTreeMap<String, String>, SqlError> {
    let mut out = BTreeMap::new();
    for r in rows(e, "SELECT class, to_stage FROM rollouts ORDER BY ts").await? {
        out.insert(str_of(&r[0]), str_of(&r[1]));
    }
    Ok(out)
}

/// For one class, the cross-region bytes and spend of the range had it
/// been under each alternative, as `(change, bytes, spend, estimated)`.
///
/// Every write reaches every region by replication whoever takes it, so
/// the replicated bytes stay; what changes is which requests are passed on
/// to another region. The measured forwarding is taken out, then each
/// alternative's forwarding put in: a write taken by region `r` and owned
/// by `o` costs one forwarded write on the pair `r ↔ o`.
/// - all local (active-active, global ownership): nothing passed on;
/// - hash ownership: a write goes to its key's owner, one of the N regions
///   alike, so (N−1)/N of writes are passed on, to each other region alike;
/// - read-local at a primary (the class's, else the region taking most
///   writes): writes away from the primary are passed on;
/// - active-passive there: reads away from it too.
///
/// A forwarded request's size is the class's measured average; when none
/// was forwarded it is estimated from a replicated entry (a write carries
/// the change and brings back the version: two entries; a read brings
/// back one).
pub fn what_ifs(
    regions: &[String],
    primary: Option<&str>,
    mix: &Mix,
    carried: &Carried,
    prices: &CostConfig,
) -> Vec<(String, f64, f64, bool)> {
    let entry = if carried.replicated_items > 0 {
        carried.replicated_bytes as f64 / carried.replicated_items as f64
    } else {
        0.0
    };
    let average = |bytes: i64, items: i64, entries: f64| {
        if items > 0 {
            (bytes as f64 / items as f64, false)
        } else {
            (entries * entry, true)
        }
    };
    let (write_bytes, write_est) = average(
        carried.forwarded_write_bytes,
        carried.forwarded_write_items,
        2.0,
    );
    let (read_bytes, read_est) = average(
        carried.forwarded_read_bytes,
        carried.forwarded_read_items,
        1.0,
    );
    // A forwarded request's bytes go one way and its answer's the other:
    // priced at the pair's two prices' mean.
    let round = |a: &str, b: &str| (prices.gb_price(a, b) + prices.gb_price(b, a)) / 2.0 / GB;
    let measured_fwd = carried.forwarded_write_bytes + carried.forwarded_read_bytes;
    let measured_fwd_spend = if carried.bytes > 0 {
        carried.spend * measured_fwd as f64 / carried.bytes as f64
    } else {
        0.0
    };
    let base_bytes = (carried.bytes - measured_fwd) as f64;
    let base_spend = carried.spend - measured_fwd_spend;
    let busiest = mix
        .writes
        .iter()
        .max_by_key(|(r, n)| (**n, std::cmp::Reverse((*r).clone())))
        .map(|(r, _)| r.as_str());
    let primary = primary.or(busiest).or(regions.first().map(String::as_str));
    let n = regions.len().max(1) as f64;
    let active_active = |o: Ownership| {
        format!(
            "{}, {} ownership",
            Rollout::ActiveActive.as_str(),
            o.as_str()
        )
    };
    let mut out = vec![(
        active_active(Ownership::Global),
        base_bytes,
        base_spend,
        false,
    )];
    // Hash: each region's writes spread over the others alike.
    let (mut bytes, mut spend) = (base_bytes, base_spend);
    for (r, &w) in &mix.writes {
        for o in regions.iter().filter(|o| *o != r) {
            let moved = w as f64 / n;
            bytes += moved * write_bytes;
            spend += moved * write_bytes * round(r, o);
        }
    }
    out.push((active_active(Ownership::Hash), bytes, spend, write_est));
    if let Some(p) = primary {
        let away = |by: &BTreeMap<String, i64>, size: f64| -> (f64, f64) {
            by.iter()
                .filter(|(r, _)| r.as_str() != p)
                .fold((0.0, 0.0), |(b, s), (r, &k)| {
                    let moved = k as f64 * size;
                    (b + moved, s + moved * round(r, p))
                })
        };
        let (wb, ws) = away(&mix.writes, write_bytes);
        out.push((
            format!("{} at {p}", Rollout::ReadLocal.as_str()),
            base_bytes + wb,
            base_spend + ws,
            write_est,
        ));
        let (rb, rs) = away(&mix.reads, read_bytes);
        out.push((
            format!("{} at {p}", Rollout::ActivePassive.as_str()),
            base_bytes + wb + rb,
            base_spend + ws + rs,
            write_est || read_est,
        ));
    }
    out
}
