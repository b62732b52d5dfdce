//! The failovers page: failovers and ownership moves, with their measured times.

use serde::Serialize;

use super::common::{rows, str_of};
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// One failover or ownership move.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailoverEvent {
    /// When (RFC 3339).
    pub ts: String,
    /// Region that recorded it.
    pub region: String,
    /// What happened.
    pub event: String,
    /// Time from the failure to its detection (ms), when measured.
    pub detected_ms: Option<i64>,
    /// Time from the failure until traffic was rerouted (ms), when measured.
    pub rerouted_ms: Option<i64>,
}

/// The failovers page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failovers {
    /// Events, newest first.
    pub events: Vec<FailoverEvent>,
    /// Longest detection (ms).
    pub max_detected_ms: Option<i64>,
    /// Longest reroute (ms).
    pub max_rerouted_ms: Option<i64>,
}

/// The failovers page.
pub async fn failovers(e: &SqlEngine, f: &Filters) -> Result<Failovers, SqlError> {
    let w = f.source("failovers", Some("region"), None);
    let events: Vec<FailoverEvent> = rows(
        e,
        &format!(
            "SELECT ts, region, event, detected_ms, rerouted_ms FROM {w} \
             ORDER BY ts DESC LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| FailoverEvent {
        ts: str_of(&r[0]),
        region: str_of(&r[1]),
        event: str_of(&r[2]),
        detected_ms: r[3].as_i64(),
        rerouted_ms: r[4].as_i64(),
    })
    .collect();
    Ok(Failovers {
        max_detected_ms: events.iter().filter_map(|e| e.detected_ms).max(),
        max_rerouted_ms: events.iter().filter_map(|e| e.rerouted_ms).max(),
        events,
    })
}
