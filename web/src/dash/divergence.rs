//! The divergence page: audit runs and the keys they found differing.

use serde::Serialize;

use super::common::{i64_of, rows, series_of, str_of};
use crate::charts::Series;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// One audit of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditRun {
    /// When it finished (RFC 3339).
    pub ts: String,
    /// The audit.
    pub audit_id: String,
    /// Class.
    pub class: String,
    /// Entities compared.
    pub entities: i64,
    /// Keys whose copies differed.
    pub differing: i64,
    /// ... of which replication was still delivering.
    pub in_flight: i64,
    /// ... of which truly diverged.
    pub divergent: i64,
    /// Duration (ms).
    pub duration_ms: i64,
}

/// The latest state of one key an audit found differing.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DivergentKey {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The latest state: `divergent`, `in_flight` or `repaired` as the
    /// latest audit record says, or `cleared` when a later audit of the
    /// class no longer found the key.
    pub state: String,
    /// Why (what the auditor saw, or what the repair did).
    pub reason: String,
    /// Regions whose copies differ.
    pub regions: String,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Last seen (RFC 3339).
    pub last_seen: String,
    /// Age when last seen (ms).
    pub age_ms: i64,
}

/// The divergence page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Divergence {
    /// The latest audits, newest first.
    pub audits: Vec<AuditRun>,
    /// Keys found differing in the range, latest state, divergent first.
    pub keys: Vec<DivergentKey>,
    /// Divergent keys per audit bucket, by class.
    pub series: Vec<Series>,
}

/// A key's current state, from its latest `divergence` row `d` and the
/// latest audit of its class `a.audited`: an audit after the row that no
/// longer found the key (a clean audit writes no row for it) cleared it.
pub const CURRENT_STATE: &str = "CASE WHEN a.audited > d.ts THEN 'cleared' ELSE d.state END";

/// The divergence page.
pub async fn divergence(e: &SqlEngine, f: &Filters) -> Result<Divergence, SqlError> {
    let wa = f.source("audits", None, Some("class"));
    let wd = f.source("divergence", None, Some("class"));
    let audits = rows(
        e,
        &format!(
            "SELECT ts, audit_id, class, entities, differing, in_flight, divergent, duration_ms \
             FROM {wa} ORDER BY ts DESC, class LIMIT 200"
        ),
    )
    .await?
    .into_iter()
    .map(|r| AuditRun {
        ts: str_of(&r[0]),
        audit_id: str_of(&r[1]),
        class: str_of(&r[2]),
        entities: i64_of(&r[3]),
        differing: i64_of(&r[4]),
        in_flight: i64_of(&r[5]),
        divergent: i64_of(&r[6]),
        duration_ms: i64_of(&r[7]),
    })
    .collect();
    let keys = rows(
        e,
        &format!(
            "WITH d AS (SELECT class, key, state, reason, array_to_string(regions, ', ') AS regions, first_seen, ts, age_ms, \
             row_number() OVER (PARTITION BY class, key ORDER BY ts DESC) AS n FROM {wd}), \
             a AS (SELECT class, max(ts) AS audited FROM {wa} GROUP BY class), \
             k AS (SELECT d.class, d.key, {CURRENT_STATE} AS state, d.reason, d.regions, d.first_seen, d.ts, d.age_ms \
             FROM d LEFT JOIN a ON a.class = d.class WHERE d.n = 1) \
             SELECT class, key, state, reason, regions, first_seen, ts, age_ms FROM k \
             ORDER BY CASE state WHEN 'divergent' THEN 0 WHEN 'in_flight' THEN 1 ELSE 2 END, first_seen LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| DivergentKey {
        class: str_of(&r[0]),
        key: str_of(&r[1]),
        state: str_of(&r[2]),
        reason: str_of(&r[3]),
        regions: str_of(&r[4]),
        first_seen: str_of(&r[5]),
        last_seen: str_of(&r[6]),
        age_ms: i64_of(&r[7]),
    })
    .collect();
    let b = f.bucket_sql();
    let series = series_of(
        rows(
            e,
            &format!(
                "WITH a AS (SELECT class, {b} AS t, audit_id, max(divergent) AS d FROM {wa} GROUP BY 1, 2, 3) \
                 SELECT class, t, max(d) FROM a GROUP BY 1, 2"
            ),
        )
        .await?
        .into_iter()
        .map(|r| (str_of(&r[0]), i64_of(&r[1]), i64_of(&r[2]) as f64)),
    );
    Ok(Divergence {
        audits,
        keys,
        series,
    })
}
