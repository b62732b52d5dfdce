//! Drills the demo plays on a running cluster: a divergence (corrupt,
//! audit, repair, audit) and a failover (move ownership and back).

use anyhow::Result;
use parallax_core::config::Config;

use crate::process::RunningRegion;

/// Corrupts one critical entity in one region, audits, repairs, audits again.
pub async fn divergence_drill(
    config: &Config,
    regions: &[(String, RunningRegion)],
) -> Result<bool> {
    let critical: Vec<String> = config
        .classes
        .iter()
        .filter(|(n, c)| c.critical && !n.starts_with('_'))
        .map(|(n, _)| n.clone())
        .collect();
    let Some((class, key)) = critical.iter().find_map(|c| {
        let first = regions[0]
            .1
            .node
            .scan(c, None, 1)
            .ok()?
            .into_iter()
            .next()?;
        Some((c.clone(), first.0))
    }) else {
        return Ok(true);
    };
    let (victim, node) = (&regions[1].0, &regions[1].1.node);
    node.inject_fault(&class, &key, parallax_core::api::Fault::Corrupt)
        .await?;
    let targets: Vec<Box<dyn parallax_auditor::Target>> = regions
        .iter()
        .map(|(_, r)| {
            Box::new(parallax_auditor::NodeRegion(r.node.clone()))
                as Box<dyn parallax_auditor::Target>
        })
        .collect();
    let opts = parallax_auditor::AuditOptions {
        classes: critical,
        lag_bound_ms: 500,
        recheck: true,
        progress: false,
    };
    let clock = parallax_core::clock::SystemClock;
    let found = parallax_auditor::audit(&targets, &opts, &clock).await?;
    println!(
        "
Divergence drill: corrupted {class}/{key} in {victim} without replicating it."
    );
    for f in &found.divergent {
        println!(
            "  auditor: {}/{} divergent in {} ({})",
            f.class,
            f.key,
            f.regions.join(","),
            f.reason
        );
    }
    let recorder = &regions[0].1.node;
    recorder.record_audit(found.audits.clone(), found.records.clone());
    let done = parallax_auditor::repair(&targets, &found, &clock).await?;
    let repaired = done.len();
    recorder.record_audit(Vec::new(), done);
    let after = parallax_auditor::audit(&targets, &opts, &clock).await?;
    recorder.record_audit(after.audits.clone(), after.records.clone());
    let ok = found.divergent.len() == 1 && after.divergent.is_empty();
    println!(
        "  repaired {repaired} key(s) from the majority's copy; audit afterwards: {}",
        if after.divergent.is_empty() {
            "no divergence"
        } else {
            "STILL DIVERGENT"
        }
    );
    Ok(ok)
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
