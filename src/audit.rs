//! `parallax audit`: compare the regions' copies of the critical classes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use parallax_auditor::{AuditOptions, AuditReport, Target};
use parallax_core::RegionClient;
use parallax_core::api::AuditRecords;
use parallax_core::clock::SystemClock;
use parallax_core::config::Config;

/// Arguments of `parallax audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The cluster config file: the regions to compare and the admin token.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// Audit only this class (default: every critical class).
    #[arg(long)]
    pub(crate) class: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Repair what diverges (merged version; for corruption, the majority's
    /// copy), then audit again.
    #[arg(long)]
    pub(crate) repair: bool,
    /// A difference younger than this may be replication in flight; such
    /// keys are checked again once it has passed (ms).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) lag_bound_ms: u64,
}

/// `parallax audit`: exit 0 when nothing diverges, 1 when something does, 2 on error.
pub(crate) async fn run(a: AuditArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let classes: Vec<String> = match &a.class {
        Some(c) if config.classes.contains_key(c) && !c.starts_with('_') => vec![c.clone()],
        Some(c) => bail!(
            "class `{c}` is not declared in {} (declared: {}). Fix: pass --class with one of those",
            a.config.display(),
            config.class_names()
        ),
        None => config
            .classes
            .iter()
            .filter(|(n, c)| c.critical && !n.starts_with('_'))
            .map(|(n, _)| n.clone())
            .collect(),
    };
    if classes.is_empty() {
        bail!(
            "no class in {} is critical. Fix: set `critical = true` on the classes to audit, or pass --class",
            a.config.display()
        );
    }
    let targets: Vec<Box<dyn Target>> = config
        .regions
        .keys()
        .filter_map(|r| RegionClient::from_config(&config, r))
        .map(|c| Box::new(c.with_timeout(Duration::from_secs(60))) as Box<dyn Target>)
        .collect();
    let opts = AuditOptions {
        classes,
        lag_bound_ms: a.lag_bound_ms,
        recheck: true,
        progress: !a.json,
    };
    let clock = SystemClock;
    let mut report = parallax_auditor::audit(&targets, &opts, &clock).await?;
    let mut repaired = None;
    let mut before = None;
    // What the collector keeps: with --repair, the audit that found the
    // divergence, what the repair did and the audit after it, in that order.
    let mut audits = Vec::new();
    let mut records = Vec::new();
    if a.repair && !report.divergent.is_empty() {
        let done = parallax_auditor::repair(&targets, &report, &clock).await?;
        repaired = Some(done.len());
        before = Some(report.divergent.clone());
        audits.append(&mut report.audits.clone());
        records.append(&mut report.records.clone());
        records.extend(done);
        report = parallax_auditor::audit(&targets, &opts, &clock).await?;
    }
    audits.extend(report.audits.iter().cloned());
    records.extend(report.records.iter().cloned());
    let recorded_in = record(&config, &audits, &records).await;
    if a.json {
        let mut out = serde_json::to_value(&report)?;
        out["recorded_in"] = serde_json::json!(recorded_in);
        if let Some(n) = repaired {
            out["repaired"] = serde_json::json!(n);
            out["divergent_before_repair"] = serde_json::to_value(&before)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&report, repaired);
    }
    Ok(if report.divergent.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Hands the audit's records to a region (the primary first) so its
/// collector writes them to the `audits` and `divergence` tables.
async fn record(
    config: &Config,
    audits: &[parallax_auditor::AuditRecord],
    records: &[parallax_auditor::DivergenceRecord],
) -> Option<String> {
    let body = AuditRecords {
        audits: audits.to_vec(),
        records: records.to_vec(),
    };
    let mut regions: Vec<String> = vec![config.primary().to_owned()];
    regions.extend(
        config
            .regions
            .keys()
            .filter(|r| *r != config.primary())
            .cloned(),
    );
    for region in regions {
        let Some(client) = RegionClient::from_config(config, &region) else {
            continue;
        };
        match client.audit_records(&body).await {
            Ok(_) => return Some(region),
            Err(e) => eprintln!("warning: {region} did not take the audit records: {e}"),
        }
    }
    None
}

fn print_table(report: &AuditReport, repaired: Option<usize>) {
    if let Some(n) = repaired {
        println!("repaired {n} divergent keys; audited again:\n");
    }
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "class", "entities", "differing", "in flight", "divergent", "round trips", "bytes", "ms"
    );
    for a in &report.audits {
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
            a.class,
            a.entities,
            a.differing,
            a.in_flight,
            a.divergent,
            a.round_trips,
            a.bytes,
            a.duration_ms
        );
    }
    for (title, list) in [
        ("divergent", &report.divergent),
        ("in flight", &report.in_flight),
    ] {
        if list.is_empty() {
            continue;
        }
        println!("\n{title}:");
        for f in list.iter().take(100) {
            println!(
                "  {}/{}  regions {}  {}",
                f.class,
                f.key,
                f.regions.join(","),
                f.reason
            );
        }
        if list.len() > 100 {
            println!("  ... and {} more (use --json for all)", list.len() - 100);
        }
    }
    if report.divergent.is_empty() {
        println!("\nno divergence");
    }
}
