//! The parallax auditor: compares every region's Merkle trees of the
//! critical classes and tells replication still in flight from true
//! divergence.
//!
//! An audit asks every region for its trees' roots; where they differ it
//! descends, level by level, to the keys that differ (see
//! [`parallax_core::sync`]), fetches those keys' versions and each
//! region's replication watermarks, and [`classify`]s each key. Keys found
//! in flight are checked again once the lag bound has passed, so a
//! difference replication explains is never reported as divergence. With
//! `repair`, divergent keys get the merged version (or, for corruption, the
//! majority's copy) and the audit runs again.
//!
//! Regions are reached through [`Target`]s: over HTTP (a
//! [`RegionClient`], `POST /v1/audit` with the admin token) or in the same
//! process ([`NodeRegion`], for simulations).

pub mod classify;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use futures::future::BoxFuture;
use parallax_core::clock::Clock;
use parallax_core::entity::Entity;
use parallax_core::protocol::{AuditRequest, RepairItem, TreeRequest, TreeResponse};
use parallax_core::sync::{DiffOptions, TreeSource, diff_classes};
use parallax_core::{Error, RegionClient, Result};
use parallax_replicator::Node;
use serde::{Deserialize, Serialize};

pub use classify::{Verdict, classify};

/// A region as the auditor sees it.
pub trait Target: TreeSource {
    /// Merges versions into the region's store.
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>>;
    /// Overwrites the region's stored versions.
    fn replace(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>>;
}

/// A region reached over HTTP: tree questions, repairs and replacements
/// through `POST /v1/audit` with the admin token.
impl Target for RegionClient {
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.audit(&AuditRequest::Repair(items)).await?;
            Ok(())
        })
    }

    fn replace(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.audit(&AuditRequest::Replace(items)).await?;
            Ok(())
        })
    }
}

/// A region node in the same process (simulations and tests).
#[derive(Debug, Clone)]
pub struct NodeRegion(pub Node);

impl TreeSource for NodeRegion {
    fn name(&self) -> &str {
        self.0.region()
    }

    fn ask(&self, req: TreeRequest) -> BoxFuture<'_, Result<(TreeResponse, u64)>> {
        Box::pin(async move { self.0.handle_tree(req).map(|r| (r, 0)) })
    }
}

impl Target for NodeRegion {
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.0.repair(items))
    }

    fn replace(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.0.replace(items))
    }
}

/// How to audit.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Classes to audit.
    pub classes: Vec<String>,
    /// A difference younger than this (ms) may be replication in flight.
    pub lag_bound_ms: u64,
    /// Check keys found in flight again after the lag bound.
    pub recheck: bool,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
}

/// One differing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// Regions involved.
    pub regions: Vec<String>,
    /// Why.
    pub reason: String,
    /// Age of the newest version involved when classified (ms).
    #[serde(default)]
    pub age_ms: u64,
}

fn newest_age(v: &BTreeMap<String, Option<Entity>>, now_ms: u64) -> u64 {
    v.values()
        .flatten()
        .map(|e| now_ms.saturating_sub(e.hlc.wall_ms))
        .min()
        .unwrap_or(0)
}

/// The audit of one class: a row of the `audits` table.
pub use parallax_core::telemetry::AuditEvent as AuditRecord;
/// One divergent or in-flight key: a row of the `divergence` table.
pub use parallax_core::telemetry::DivergenceEvent as DivergenceRecord;

/// The result of an audit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Identifies the run.
    pub audit_id: String,
    /// One record per class.
    pub audits: Vec<AuditRecord>,
    /// Keys that diverge.
    pub divergent: Vec<Finding>,
    /// Keys replication is still bringing together.
    pub in_flight: Vec<Finding>,
    /// One record per key found.
    pub records: Vec<DivergenceRecord>,
}

struct Progress {
    on: bool,
}

impl Progress {
    fn show(&self, text: &str) {
        if self.on {
            eprint!("\r\x1b[2K{text}");
        }
    }
    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

async fn versions_of(
    targets: &[Box<dyn Target>],
    class: &str,
    keys: &[String],
) -> Result<Vec<BTreeMap<String, Option<Entity>>>> {
    let mut out: Vec<BTreeMap<String, Option<Entity>>> = vec![BTreeMap::new(); keys.len()];
    for chunk_start in (0..keys.len()).step_by(1_000) {
        let chunk = &keys[chunk_start..(chunk_start + 1_000).min(keys.len())];
        let asks = targets.iter().map(|t| {
            t.ask(TreeRequest::Versions {
                class: class.to_owned(),
                keys: chunk.to_vec(),
            })
        });
        for (t, answer) in targets.iter().zip(futures::future::join_all(asks).await) {
            let TreeResponse::Versions(vs) = answer?.0 else {
                return Err(Error::Internal(format!(
                    "region {} did not answer with versions",
                    t.name()
                )));
            };
            for (i, v) in vs.into_iter().enumerate() {
                out[chunk_start + i].insert(t.name().to_owned(), v);
            }
        }
    }
    Ok(out)
}

async fn applied_of(targets: &[Box<dyn Target>]) -> Result<classify::Applied> {
    let mut out = classify::Applied::new();
    let answers =
        futures::future::join_all(targets.iter().map(|t| t.ask(TreeRequest::Applied))).await;
    for (t, a) in targets.iter().zip(answers) {
        let TreeResponse::Applied(v) = a?.0 else {
            return Err(Error::Internal(format!(
                "region {} did not answer with its watermarks",
                t.name()
            )));
        };
        out.insert(t.name().to_owned(), v);
    }
    Ok(out)
}

/// Audits `opts.classes` across `targets` (at least two regions).
pub async fn audit(
    targets: &[Box<dyn Target>],
    opts: &AuditOptions,
    clock: &dyn Clock,
) -> Result<AuditReport> {
    if targets.len() < 2 {
        return Err(Error::BadRequest(
            "an audit compares at least two regions".into(),
        ));
    }
    let progress = Progress {
        on: opts.progress && std::io::stderr().is_terminal(),
    };
    let audit_id = format!("audit-{}", clock.now_us());
    let regions: Vec<String> = targets.iter().map(|t| t.name().to_owned()).collect();
    let mut report = AuditReport {
        audit_id: audit_id.clone(),
        ..AuditReport::default()
    };
    let mut pending: Vec<(String, String)> = Vec::new();
    for class in &opts.classes {
        let started = clock.now_us();
        progress.show(&format!(
            "auditing {class}: comparing trees of {} regions",
            regions.len()
        ));
        let mut keys = BTreeSet::new();
        let mut record = AuditRecord {
            audit_id: audit_id.clone(),
            class: class.clone(),
            regions: regions.clone(),
            ..Default::default()
        };
        for (i, other) in targets.iter().enumerate().skip(1) {
            progress.show(&format!(
                "auditing {class}: {} vs {} ({i}/{})",
                targets[0].name(),
                other.name(),
                targets.len() - 1
            ));
            let diff = diff_classes(
                targets[0].as_ref(),
                other.as_ref(),
                std::slice::from_ref(class),
                DiffOptions::default(),
            )
            .await?;
            let d = &diff[0];
            record.entities = record.entities.max(d.entries.0).max(d.entries.1);
            record.round_trips = record.round_trips.max(d.round_trips);
            record.bytes += d.bytes;
            keys.extend(d.keys.iter().cloned());
        }
        let keys: Vec<String> = keys.into_iter().collect();
        record.differing = keys.len() as u64;
        if !keys.is_empty() {
            progress.show(&format!(
                "auditing {class}: classifying {} differing keys",
                keys.len()
            ));
            let versions = versions_of(targets, class, &keys).await?;
            let applied = applied_of(targets).await?;
            let now = clock.now_ms();
            for (key, v) in keys.iter().zip(&versions) {
                match classify(v, &applied, now, opts.lag_bound_ms) {
                    Verdict::Agree => {}
                    Verdict::InFlight { .. } => pending.push((class.clone(), key.clone())),
                    Verdict::Divergent { regions, reason } => report.divergent.push(Finding {
                        class: class.clone(),
                        key: key.clone(),
                        regions,
                        reason,
                        age_ms: newest_age(v, now),
                    }),
                }
            }
        }
        record.duration_ms = clock.now_us().saturating_sub(started) / 1_000;
        report.audits.push(record);
    }
    if opts.recheck && !pending.is_empty() {
        progress.show(&format!(
            "{} keys in flight: checking again after the lag bound ({} ms)",
            pending.len(),
            opts.lag_bound_ms
        ));
        tokio::time::sleep(Duration::from_millis(opts.lag_bound_ms + 100)).await;
    }
    let mut by_class: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (class, key) in pending {
        by_class.entry(class).or_default().push(key);
    }
    for (class, keys) in by_class {
        let versions = versions_of(targets, &class, &keys).await?;
        let applied = applied_of(targets).await?;
        let now = clock.now_ms();
        for (key, v) in keys.iter().zip(&versions) {
            match classify(
                v,
                &applied,
                now,
                if opts.recheck {
                    opts.lag_bound_ms
                } else {
                    u64::MAX
                },
            ) {
                Verdict::Agree => {}
                Verdict::InFlight { regions, reason } => report.in_flight.push(Finding {
                    class: class.clone(),
                    key: key.clone(),
                    regions,
                    reason,
                    age_ms: newest_age(v, now),
                }),
                Verdict::Divergent { regions, reason } => report.divergent.push(Finding {
                    class: class.clone(),
                    key: key.clone(),
                    regions,
                    reason,
                    age_ms: newest_age(v, now),
                }),
            }
        }
    }
    progress.done();
    let ts_us = clock.now_us();
    for a in &mut report.audits {
        a.ts_us = ts_us;
        a.divergent = report
            .divergent
            .iter()
            .filter(|f| f.class == a.class)
            .count() as u64;
        a.in_flight = report
            .in_flight
            .iter()
            .filter(|f| f.class == a.class)
            .count() as u64;
    }
    for (state, list) in [
        ("divergent", &report.divergent),
        ("in_flight", &report.in_flight),
    ] {
        for f in list {
            report.records.push(DivergenceRecord {
                ts_us,
                audit_id: audit_id.clone(),
                class: f.class.clone(),
                key: f.key.clone(),
                regions: f.regions.clone(),
                state: state.to_owned(),
                reason: f.reason.clone(),
                first_seen_us: ts_us.saturating_sub(f.age_ms * 1_000),
                age_ms: f.age_ms,
            });
        }
    }
    report
        .divergent
        .sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));
    report
        .in_flight
        .sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));
    Ok(report)
}

/// Repairs the divergent keys of a report: every region gets the merged
/// version, except for corruption, where the copy most regions hold
/// replaces the others (a merge cannot tell the good copy from the bad).
/// Returns one `repaired` record per key repaired, stamped `clock`'s now
/// once the regions have taken the repair.
pub async fn repair(
    targets: &[Box<dyn Target>],
    report: &AuditReport,
    clock: &dyn Clock,
) -> Result<Vec<DivergenceRecord>> {
    let mut by_class: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for f in &report.divergent {
        by_class.entry(&f.class).or_default().push(f);
    }
    let mut repaired: Vec<(&Finding, &'static str)> = Vec::new();
    for (class, findings) in by_class {
        let keys: Vec<String> = findings.iter().map(|f| f.key.clone()).collect();
        let versions = versions_of(targets, class, &keys).await?;
        let mut merges: BTreeMap<String, Vec<RepairItem>> = BTreeMap::new();
        let mut replaces: BTreeMap<String, Vec<RepairItem>> = BTreeMap::new();
        for ((finding, key), v) in findings.iter().zip(&keys).zip(&versions) {
            let corruption = finding.reason.starts_with("corruption");
            let good = if corruption {
                majority(v)
            } else {
                classify::merged(v)
            };
            let Some(good) = good else { continue };
            for (region, mine) in v {
                if mine.as_ref() == Some(&good) {
                    continue;
                }
                let item = RepairItem {
                    class: class.to_owned(),
                    key: key.clone(),
                    entity: good.clone(),
                };
                if corruption {
                    &mut replaces
                } else {
                    &mut merges
                }
                .entry(region.clone())
                .or_default()
                .push(item);
            }
            repaired.push((
                finding,
                if corruption {
                    "replaced by the copy most regions hold"
                } else {
                    "merged through the class's conflict policy"
                },
            ));
        }
        for t in targets {
            if let Some(items) = merges.remove(t.name()) {
                t.repair(items).await?;
            }
            if let Some(items) = replaces.remove(t.name()) {
                t.replace(items).await?;
            }
        }
    }
    let ts_us = clock.now_us();
    Ok(repaired
        .into_iter()
        .map(|(f, how)| DivergenceRecord {
            ts_us,
            audit_id: report.audit_id.clone(),
            class: f.class.clone(),
            key: f.key.clone(),
            regions: f.regions.clone(),
            state: "repaired".to_owned(),
            reason: format!("{} ({how})", f.reason),
            first_seen_us: ts_us.saturating_sub(f.age_ms * 1_000),
            age_ms: f.age_ms,
        })
        .collect())
}

/// The version most regions hold (ties broken by the merged version).
fn majority(versions: &BTreeMap<String, Option<Entity>>) -> Option<Entity> {
    let present: Vec<&Entity> = versions.values().flatten().collect();
    let mut best: Option<(&Entity, usize)> = None;
    for e in &present {
        let n = present.iter().filter(|o| **o == *e).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((e, n));
        }
    }
    match best {
        Some((e, n)) if n * 2 > present.len() => Some(e.clone()),
        _ => classify::merged(versions),
    }
}
