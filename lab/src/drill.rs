//! Drills the demo plays on a running cluster: a divergence (corrupt,
//! audit, repair, audit) and a failover (move ownership and back).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use parallax_core::clock::Clock;
use parallax_core::config::Config;
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use serde_json::json;

use crate::process::RunningRegion;

/// The critical classes of `config` (system classes aside).
fn critical(config: &Config) -> Vec<String> {
    config
        .classes
        .iter()
        .filter(|(n, c)| c.critical && !n.starts_with('_'))
        .map(|(n, _)| n.clone())
        .collect()
}

fn targets(regions: &[(String, RunningRegion)]) -> Vec<Box<dyn parallax_auditor::Target>> {
    regions
        .iter()
        .map(|(_, r)| {
            Box::new(parallax_auditor::NodeRegion(r.node.clone()))
                as Box<dyn parallax_auditor::Target>
        })
        .collect()
}

fn audit_options(classes: Vec<String>) -> parallax_auditor::AuditOptions {
    parallax_auditor::AuditOptions {
        classes,
        lag_bound_ms: 500,
        recheck: true,
        progress: false,
    }
}

/// Corrupts one critical entity in the second region and audits the
/// critical classes, recording the audit (so the dashboards and the
/// `divergence` alert see it); `None` when there is nothing to corrupt.
/// The entity is one of its own, written and replicated first: a key the
/// users write could be mended by their next write before the audit, and
/// the auditor's recheck would rightly call it replication in flight.
pub async fn corrupt_and_audit(
    config: &Config,
    regions: &[(String, RunningRegion)],
) -> Result<Option<parallax_auditor::AuditReport>> {
    let critical = critical(config);
    let Some(class) = critical.first().cloned() else {
        return Ok(None);
    };
    let clock = parallax_core::clock::SystemClock;
    let key = format!("drill-{}", clock.now_us());
    let client = |region: &str| {
        RegionClient::from_config(config, region)
            .map(|c| c.with_tokens(&config.cluster.client_token, &config.cluster.admin_token))
            .with_context(|| format!("no address for region {region}"))
    };
    client(&regions[0].0)?
        .put(
            &class,
            &key,
            &json!({"drill": "corruption"}),
            &WriteOptions::default(),
        )
        .await
        .with_context(|| format!("writing {class}/{key} to corrupt"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, _) in regions {
        let c = client(name)?;
        while c.get(&class, &key, &ReadOptions::default()).await.is_err() {
            if Instant::now() > deadline {
                bail!("{class}/{key} did not reach {name} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let node = &regions[1].1.node;
    node.inject_fault(&class, &key, parallax_core::api::Fault::Corrupt)
        .await?;
    let found =
        parallax_auditor::audit(&targets(regions), &audit_options(critical), &clock).await?;
    regions[0]
        .1
        .node
        .record_audit(found.audits.clone(), found.records.clone());
    Ok(Some(found))
}

/// Repairs what `found` names from the majority's copy and audits again,
/// recording both; true when the audit afterwards finds nothing divergent.
pub async fn repair_and_audit(
    regions: &[(String, RunningRegion)],
    found: &parallax_auditor::AuditReport,
) -> Result<bool> {
    let clock = parallax_core::clock::SystemClock;
    let targets = targets(regions);
    let recorder = &regions[0].1.node;
    let done = parallax_auditor::repair(&targets, found, &clock).await?;
    recorder.record_audit(Vec::new(), done);
    let classes: Vec<String> = found.audits.iter().map(|a| a.class.clone()).collect();
    let after = parallax_auditor::audit(&targets, &audit_options(classes), &clock).await?;
    recorder.record_audit(after.audits.clone(), after.records.clone());
    Ok(after.divergent.is_empty())
}

/// Corrupts one critical entity in one region, audits, repairs, audits again.
pub async fn divergence_drill(
    config: &Config,
    regions: &[(String, RunningRegion)],
) -> Result<bool> {
    let Some(found) = corrupt_and_audit(config, regions).await? else {
        return Ok(true);
    };
    let victim = &regions[1].0;
    if let Some(f) = found.divergent.first() {
        println!(
            "\nDivergence drill: corrupted {}/{} in {victim} without replicating it.",
            f.class, f.key
        );
    }
    for f in &found.divergent {
        println!(
            "  auditor: {}/{} divergent in {} ({})",
            f.class,
            f.key,
            f.regions.join(","),
            f.reason
        );
    }
    let clean = repair_and_audit(regions, &found).await?;
    println!(
        "  repaired {} key(s) from the majority's copy; audit afterwards: {}",
        found.divergent.len(),
        if clean {
            "no divergence"
        } else {
            "STILL DIVERGENT"
        }
    );
    Ok(found.divergent.len() == 1 && clean)
}

/// Moves the last region's keys to the first region and back, as an
/// operator would around a regional outage.
pub async fn failover_drill(config: &Config, regions: &[(String, RunningRegion)]) -> Result<()> {
    let (Some((lost, _)), Some((survivor, node))) = (regions.last(), regions.first()) else {
        return Ok(());
    };
    if config.regions.len() < 2 {
        return Ok(());
    }
    let moved = node.node.move_ownership(lost, survivor).await?;
    let (owner, epoch) = moved.effective(lost);
    let back = node.node.move_ownership(lost, lost).await?;
    println!(
        "\nFailover drill: {lost}'s keys moved to {owner} (epoch {epoch}) and back (epoch {}).",
        back.effective(lost).1
    );
    Ok(())
}
