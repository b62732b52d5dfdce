//! `parallax`: multi-region active-active replication, divergence auditing and
//! SLO observability, in one binary.
//!
//! A thin CLI: this file parses arguments and hands them to the crates
//! (the demo and the benchmarks live in `parallax-lab`); see `parallax
//! --help`.

mod audit;
mod backup;
mod client;
mod region;
mod reload;
mod router;
mod sql;
mod status;
mod table;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps critical entities in sync between regions that all take writes,
/// and shows how far replication lags, how often writes conflict and where
/// regions disagree.
#[derive(Debug, Parser)]
#[command(name = "parallax", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one region node: serves the HTTP API on the region's `listen`
    /// address and replicates to every other region. Stops cleanly on
    /// SIGTERM or ctrl-c.
    Region(region::RegionArgs),
    /// Run three regions on loopback (from deploy/examples/three-regions.toml)
    /// with simulated WAN latency and a small write load, then print what
    /// happened and check that the regions converged.
    Demo(parallax_lab::demo::DemoArgs),
    /// Read an entity.
    Get(client::GetArgs),
    /// Write an entity (lww, merge and manual classes).
    Put(client::PutArgs),
    /// Delete an entity.
    Delete(client::KeyArgs),
    /// Add to a counter (gcounter, pncounter classes); a negative amount decrements a pncounter.
    Incr(client::IncrArgs),
    /// Add a member to a set (orset classes).
    Add(client::MemberArgs),
    /// Remove a member from a set (orset classes).
    Remove(client::MemberArgs),
    /// List the reconciliation queue: manual-policy entities with conflicting versions.
    Conflicts(client::ConflictsArgs),
    /// Resolve a conflicted manual-policy entity with the reconciled value.
    Resolve(client::PutArgs),
    /// Read a region's change feed: every version it applied (local or
    /// replicated) after a position, or follow it as it applies them.
    Changes(client::ChangesArgs),
    /// Show a region's live counters (replication, conflicts, requests).
    Stats(client::RegionTarget),
    /// The cluster on one screen: every region's health, replication lag
    /// and backlog by pair, the last audit of each critical class and every
    /// SLO. Exits 0 when all is well, 1 when something needs a person.
    Status(status::StatusArgs),
    /// Write a region's store to a file while it serves: a consistent
    /// snapshot (entities, queue, conflict log, replication bookkeeping).
    Backup(backup::BackupArgs),
    /// Build a stopped region's store from a backup (its own, or another
    /// region's to seed a new one); at start it runs anti-entropy with
    /// every peer to bring back what the backup missed.
    Restore(backup::RestoreArgs),
    /// Move ownership of a region's keys to another region (after that region
    /// failed), under a new epoch that fences writes the old owner still takes.
    Failover(client::FailoverArgs),
    /// Show the ownership delegations in force and who owns each region's keys.
    Ownership(client::RegionTarget),
    /// Move a class to another rollout stage in every region (active-passive
    /// → read-local → limited-writes → active-active, one stage at a time,
    /// back as well), or, without --stage, show every class's stage.
    Rollout(client::RolloutArgs),
    /// Compare every region's copy of the critical classes: which keys
    /// differ, and whether replication explains it. Exits 0 when nothing
    /// diverges, 1 when something does, 2 on error.
    Audit(audit::AuditArgs),
    /// Run anti-entropy now: compare this region's Merkle trees with the
    /// others' and exchange what differs.
    AntiEntropy(client::AntiEntropyArgs),
    /// Change a stored entity without replicating it, on a region started
    /// with --allow-fault-injection (divergence drills).
    Fault(client::FaultArgs),
    /// Run a read-only SQL query over the collector's Parquet tables.
    Sql(sql::SqlArgs),
    /// Serve the dashboards, the SQL console and the alerts (http://127.0.0.1:8080).
    Web(web::WebArgs),
    /// Route the clients of one location: check every region's health from
    /// here and answer `GET /v1/route` with the nearest healthy region.
    Router(router::RouterArgs),
    /// Benchmarks (run them with --release).
    #[command(subcommand)]
    Bench(parallax_lab::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    parallax_lab::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Region(a) => region::run(a).await,
            Command::Demo(a) => parallax_lab::demo::run(a).await,
            Command::Get(a) => client::get(a).await,
            Command::Put(a) => client::put(a, false).await,
            Command::Delete(a) => client::delete(a).await,
            Command::Incr(a) => client::incr(a).await,
            Command::Add(a) => client::add(a).await,
            Command::Remove(a) => client::remove(a).await,
            Command::Conflicts(a) => client::conflicts(a).await,
            Command::Resolve(a) => client::put(a, true).await,
            Command::Stats(a) => client::stats(a).await,
            Command::Status(a) => status::run(a).await,
            Command::Backup(a) => backup::backup(a).await,
            Command::Restore(a) => backup::restore(a).await,
            Command::Changes(a) => client::changes(a).await,
            Command::Failover(a) => client::failover(a).await,
            Command::Ownership(a) => client::ownership(a).await,
            Command::Rollout(a) => client::rollout(a).await,
            Command::Audit(a) => audit::run(a).await,
            Command::Sql(a) => sql::run(a).await,
            Command::Web(a) => web::run(a).await,
            Command::Router(a) => router::run(a).await,
            Command::AntiEntropy(a) => client::anti_entropy(a).await,
            Command::Fault(a) => client::fault(a).await,
            Command::Bench(b) => parallax_lab::bench::run(b).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(command: &Command) {
    let default = match command {
        Command::Region(_) | Command::Web(_) | Command::Router(_) => "info",
        Command::Demo(_) => "error",
        Command::Bench(_) => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARALLAX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Where a region keeps its files unless told otherwise.
fn default_data_dir() -> PathBuf {
    PathBuf::from("parallax-data")
}
