//! `parallax sql`: SQL over the collector's Parquet files from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use parallax_web::{SqlEngine, SqlLimits};
use serde_json::Value;

/// Arguments of `parallax sql`.
#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// The data directory whose `tables/` to query (where regions run with --data-dir).
    #[arg(long, env = "PARALLAX_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// The cluster's config: its `collector.tables` (a folder or an
    /// `s3://` bucket) is queried instead of `<data-dir>/tables`.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Output: an aligned table, JSON (`{"columns", "rows"}`) or CSV.
    #[arg(long, default_value = "table")]
    pub(crate) format: String,
    /// Most rows printed.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) max_rows: usize,
    /// The query: SELECT, WITH or EXPLAIN over requests, replication_lag,
    /// conflicts, divergence, audits, failovers, probes, clock.
    pub(crate) sql: String,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `parallax sql`: exit 0 with the rows, 1 when the query is refused or fails.
pub(crate) async fn run(a: SqlArgs) -> Result<ExitCode> {
    if !matches!(a.format.as_str(), "table" | "json" | "csv") {
        bail!("--format `{}` is not one of table, json, csv", a.format);
    }
    let collector = match &a.config {
        Some(path) => parallax_core::config::Config::load(path)?.collector,
        None => Default::default(),
    };
    let (root, bucket) = parallax_collector::bucket::locate(&collector, &a.data_dir)?;
    let limits = SqlLimits {
        max_rows: a.max_rows,
        ..SqlLimits::default()
    };
    let engine = SqlEngine::open_at(&root, bucket.as_deref(), limits).await?;
    let result = match engine.user_query(&a.sql).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error ({}): {e}", e.code());
            return Ok(ExitCode::from(1));
        }
    };
    match a.format.as_str() {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "columns": result.columns(),
                "rows": result.json_rows(),
                "truncated": result.truncated,
            }))?
        ),
        "csv" => print!("{}", String::from_utf8_lossy(&result.csv()?)),
        _ => {
            let columns = result.columns();
            let rows: Vec<Vec<String>> = result
                .json_rows()
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect();
            print!("{}", crate::table::render(&columns, &rows));
            println!(
                "({} row{}{}, {:.1} ms)",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" },
                if result.truncated {
                    ", cut at --max-rows"
                } else {
                    ""
                },
                result.elapsed.as_secs_f64() * 1e3
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
