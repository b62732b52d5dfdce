//! `parallax bench ingest`: telemetry events into Parquet per core, and
//! bytes per event on disk, beside the same events as JSON lines.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use parallax_collector::tables::TABLES;
use parallax_collector::{Collector, CollectorOptions};
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::config::CollectorConfig;
use parallax_core::telemetry::{ClockEvent, ConflictEvent, Event, ReplicationEvent, RequestEvent};

/// Arguments of `parallax bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Events to write.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
}

fn events(n: u64, start_us: u64) -> Vec<Event> {
    const OPS: [&str; 5] = ["get", "put", "incr", "add", "delete"];
    const CLASSES: [&str; 6] = [
        "likes", "carts", "profiles", "settings", "balances", "tickets",
    ];
    const REGIONS: [&str; 3] = ["us-east", "us-west", "eu-west"];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ts_us = start_us + i * 10 + x % 7;
        let kind = x % 20;
        out.push(if kind < 12 {
            Event::Request(RequestEvent {
                ts_us,
                region: "us-east".into(),
                op: OPS[(x >> 8) as usize % OPS.len()].into(),
                class: CLASSES[(x >> 16) as usize % CLASSES.len()].into(),
                status: if x.is_multiple_of(97) {
                    503
                } else if x.is_multiple_of(13) {
                    404
                } else {
                    200
                },
                latency_us: 150 + (x >> 24) % 4_000,
                consistency: if x.is_multiple_of(11) {
                    "quorum".into()
                } else {
                    "local".into()
                },
                served_by: "us-east".into(),
                client_geo: REGIONS[(x >> 40) as usize % 3].into(),
            })
        } else if kind < 17 {
            Event::Replication(ReplicationEvent {
                ts_us,
                src: REGIONS[1 + (x >> 8) as usize % 2].into(),
                dst: "us-east".into(),
                lag_ms: 30 + (x >> 20) % 90,
                backlog_ops: (x >> 30) % 50,
                backlog_bytes: (x >> 30) % 50 * 180,
                applied_ops: 1 + (x >> 36) % 200,
                batches: 1,
                heartbeats: 0,
                ..Default::default()
            })
        } else if kind < 19 {
            Event::Conflict(ConflictEvent {
                ts_us,
                region: "us-east".into(),
                class: CLASSES[(x >> 16) as usize % CLASSES.len()].into(),
                key: format!("key-{}", (x >> 20) % 100_000),
                policy: "lww".into(),
                outcome: "lww_winner".into(),
                resolution_ms: 40 + (x >> 28) % 200,
            })
        } else {
            Event::Clock(ClockEvent {
                ts_us,
                region: "us-east".into(),
                peer: REGIONS[1 + (x >> 8) as usize % 2].into(),
                offset_ms: ((x >> 20) % 11) as i64 - 5,
                rtt_ms: 60 + (x >> 28) % 20,
            })
        });
    }
    out
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// `parallax bench ingest`.
pub(super) async fn run(a: IngestArgs) -> Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench ingest` for real figures"
        );
    }
    let temp = tempfile::tempdir()?;
    let start_us = SystemClock.now_us();
    let generated = events(a.events, start_us);
    println!(
        "parallax bench ingest: {} events (60% requests, 25% replication, 10% conflicts, 5% clock), one thread",
        a.events
    );

    // Each path runs three times and keeps its best (the machine is shared).
    let mut parquet_s = f64::MAX;
    let mut flushing_s = 0.0;
    let mut parquet_bytes = 0;
    for run in 0..3 {
        // Parquet through the collector: buffers, metrics, sorting, ZSTD files.
        let root = temp.path().join(format!("tables-{run}"));
        let collector = Collector::new(
            CollectorOptions {
                root: root.clone(),
                bucket: None,
                region: "us-east".into(),
                config: CollectorConfig {
                    flush_rows: usize::MAX,
                    ..CollectorConfig::default()
                },
                probe_urls: BTreeMap::new(),
                secrets: parallax_core::secrets::SecretCell::tokens(&[]),
                bounds: parallax_collector::rollup::Bounds::default(),
                clock: Arc::new(SystemClock),
                links: None,
                tls: Default::default(),
            },
            None,
        )?;
        let input = generated.clone();
        let t = Instant::now();
        let mut it = input.into_iter().peekable();
        let mut flushing = 0.0;
        while it.peek().is_some() {
            for e in it.by_ref().take(500_000) {
                collector.ingest(e);
            }
            let f = Instant::now();
            collector.flush()?;
            flushing += f.elapsed().as_secs_f64();
        }
        let took = t.elapsed().as_secs_f64();
        // Every event is one row of a raw table; the rollups a flush
        // writes beside them are rows of their own, not events.
        let rows: u64 = collector
            .written()
            .rows
            .iter()
            .filter(|(table, _)| TABLES.contains(&table.as_str()))
            .map(|(_, n)| n)
            .sum();
        anyhow::ensure!(rows == a.events, "wrote {rows} rows of {} events", a.events);
        if took < parquet_s {
            parquet_s = took;
            flushing_s = flushing;
        }
        parquet_bytes = dir_bytes(&root);
    }
    println!(
        "  parquet: taking events in {:.2} s; sorting, encoding and writing files {flushing_s:.2} s",
        parquet_s - flushing_s
    );

    // The same events as JSON lines.
    let mut json_s = f64::MAX;
    let mut json_bytes = 0;
    for run in 0..3 {
        let json_path = temp.path().join(format!("events-{run}.jsonl"));
        let t = Instant::now();
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&json_path)?);
        for e in &generated {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        w.into_inner()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .sync_all()?;
        json_s = json_s.min(t.elapsed().as_secs_f64());
        json_bytes = std::fs::metadata(&json_path)?.len();
    }

    let n = a.events as f64;
    println!(
        "\n  {:<12} {:>14} {:>14} {:>12}",
        "format", "events/s/core", "bytes/event", "total"
    );
    println!(
        "  {:<12} {:>14.0} {:>14.1} {:>9.1} MiB",
        "parquet",
        n / parquet_s,
        parquet_bytes as f64 / n,
        parquet_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  {:<12} {:>14.0} {:>14.1} {:>9.1} MiB",
        "json lines",
        n / json_s,
        json_bytes as f64 / n,
        json_bytes as f64 / (1 << 20) as f64
    );
    let ratio = json_bytes as f64 / parquet_bytes.max(1) as f64;
    println!(
        "\n  Parquet is {ratio:.1}x smaller than JSON lines, and {:.2}x its write rate",
        json_s / parquet_s
    );
    println!(
        "Aims (>= 1,000,000 events/s per core; >= 10x fewer bytes than JSON lines): {}",
        if n / parquet_s >= 1e6 && ratio >= 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(ExitCode::SUCCESS)
}
