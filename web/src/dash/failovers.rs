//! The failovers page: each failover a router ran, with the times it
//! measured, and the ownership moves.

use std::collections::BTreeSet;

use serde::Serialize;

use super::common::{rows, str_of};
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// A failover a router ran: its last row, so every time measured so far.
/// Durations are ms from the first failed check.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failover {
    /// When its last row was written (RFC 3339).
    pub ts: String,
    /// `<router>/<region>/<first failed check>`.
    pub id: String,
    /// The router's location.
    pub router: String,
    /// The region that failed.
    pub failed: String,
    /// `down`, `moved`, `back` or `done`.
    pub phase: String,
    /// What the last row says.
    pub event: String,
    /// Where its keys went, and under which epoch.
    pub delegate: Option<String>,
    /// The ownership epoch of the move.
    pub epoch: Option<i64>,
    /// Who moved them, or why not yet.
    pub moved_by: Option<String>,
    /// The last good check came this long before the first failed one.
    pub last_ok_before_ms: Option<i64>,
    /// Declared down after.
    pub detected_ms: Option<i64>,
    /// No cached answer named the region after.
    pub rerouted_ms: Option<i64>,
    /// Its keys moved after.
    pub moved_ms: Option<i64>,
    /// Declared up again after.
    pub back_ms: Option<i64>,
    /// Its keys were handed back after.
    pub handed_back_ms: Option<i64>,
}

/// An ownership move made by hand (or the region's own record of one).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailoverEvent {
    /// When (RFC 3339).
    pub ts: String,
    /// Region that recorded it.
    pub region: String,
    /// What happened.
    pub event: String,
}

/// Writes that reached a region that could not take them itself: it does
/// not own the key (or, in an early rollout stage, is not the primary).
/// A stale route (a router answer cached from before a failover) or a
/// client that does not follow the router sends them there.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Misdirected {
    /// The region they reached.
    pub region: String,
    /// Their class.
    pub class: String,
    /// Where their clients are (`x-parallax-client-geo`; empty if unsaid).
    pub client_geo: String,
    /// Passed on to the region that takes them, and answered from there.
    pub forwarded: i64,
    /// Refused with 421 (`foreign_writes = "refuse"`, or already forwarded once).
    pub refused: i64,
}

/// The failovers page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failovers {
    /// Failovers routers ran, newest first.
    pub failovers: Vec<Failover>,
    /// Ownership moves, newest first.
    pub events: Vec<FailoverEvent>,
    /// Longest detection (ms).
    pub max_detected_ms: Option<i64>,
    /// Longest reroute (ms).
    pub max_rerouted_ms: Option<i64>,
    /// Longest time until keys moved (ms).
    pub max_moved_ms: Option<i64>,
    /// Writes regions could not take themselves, by region, class and
    /// client location.
    pub misdirected: Vec<Misdirected>,
}

/// The failovers page.
pub async fn failovers(e: &SqlEngine, f: &Filters) -> Result<Failovers, SqlError> {
    let w = f.source("failovers", Some("failed"), None);
    let since = |col: &str| format!("({col} - first_failed_us) / 1000");
    let measured = rows(
        e,
        &format!(
            "SELECT ts, failover_id, router, failed, phase, event, delegate, epoch, moved_by, \
             (first_failed_us - last_ok_us) / 1000, detected_ms, rerouted_ms, {}, {}, {} \
             FROM {w} AND failover_id IS NOT NULL ORDER BY ts DESC LIMIT 5000",
            since("moved_us"),
            since("up_us"),
            since("handed_back_us"),
        ),
    )
    .await?;
    // Rows come newest first: the first of each id is its latest.
    let mut seen = BTreeSet::new();
    let failovers: Vec<Failover> = measured
        .into_iter()
        .filter(|r| seen.insert(str_of(&r[1])))
        .take(500)
        .map(|r| Failover {
            ts: str_of(&r[0]),
            id: str_of(&r[1]),
            router: str_of(&r[2]),
            failed: str_of(&r[3]),
            phase: str_of(&r[4]),
            event: str_of(&r[5]),
            delegate: r[6].as_str().map(str::to_owned),
            epoch: r[7].as_i64(),
            moved_by: r[8].as_str().map(str::to_owned),
            last_ok_before_ms: r[9].as_i64(),
            detected_ms: r[10].as_i64(),
            rerouted_ms: r[11].as_i64(),
            moved_ms: r[12].as_i64(),
            back_ms: r[13].as_i64(),
            handed_back_ms: r[14].as_i64(),
        })
        .collect();
    let w = f.source("failovers", Some("region"), None);
    let events: Vec<FailoverEvent> = rows(
        e,
        &format!(
            "SELECT ts, region, event FROM {w} AND failover_id IS NULL ORDER BY ts DESC LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| FailoverEvent {
        ts: str_of(&r[0]),
        region: str_of(&r[1]),
        event: str_of(&r[2]),
    })
    .collect();
    let w = f.source("requests", Some("region"), Some("class"));
    let forwarded = "status < 400 AND served_by <> '' AND served_by <> region";
    let misdirected = rows(
        e,
        &format!(
            "SELECT region, class, client_geo, count(*) FILTER (WHERE {forwarded}), \
             count(*) FILTER (WHERE status = 421) FROM {w} AND op <> 'get' \
             AND ({forwarded} OR status = 421) \
             GROUP BY region, class, client_geo ORDER BY region, class, client_geo LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| Misdirected {
        region: str_of(&r[0]),
        class: str_of(&r[1]),
        client_geo: str_of(&r[2]),
        forwarded: r[3].as_i64().unwrap_or(0),
        refused: r[4].as_i64().unwrap_or(0),
    })
    .collect();
    Ok(Failovers {
        misdirected,
        max_detected_ms: failovers.iter().filter_map(|e| e.detected_ms).max(),
        max_rerouted_ms: failovers.iter().filter_map(|e| e.rerouted_ms).max(),
        max_moved_ms: failovers.iter().filter_map(|e| e.moved_ms).max(),
        failovers,
        events,
    })
}
