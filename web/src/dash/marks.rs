//! Marks on the time charts: the moments something changed how the
//! cluster serves (a class moved to another rollout stage, a region
//! declared down or back, ownership moved by hand), so a chart's step can
//! be read against its cause.

use super::common::{i64_of, rows, str_of};
use crate::charts::Mark;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// Marks drawn at most (the newest); a busier range shows them in the tables.
const MAX_MARKS: usize = 200;

/// The marks in the filters' range: rollout moves of the classes shown,
/// and failover steps (declared down, back) and moves by hand.
pub async fn marks(e: &SqlEngine, f: &Filters) -> Result<Vec<Mark>, SqlError> {
    let secs = "CAST(ts AS BIGINT) / 1000000";
    let rollouts = rows(
        e,
        &format!(
            "SELECT {secs}, class, from_stage, to_stage, forced, region FROM {} \
             ORDER BY ts DESC LIMIT {MAX_MARKS}",
            f.source("rollouts", None, Some("class"))
        ),
    )
    .await?
    .into_iter()
    .map(|r| Mark {
        t: i64_of(&r[0]),
        kind: "rollout".into(),
        label: format!(
            "rollout {}: {} → {}{} (moved in {})",
            str_of(&r[1]),
            str_of(&r[2]),
            str_of(&r[3]),
            if r[4].as_bool() == Some(true) {
                ", forced"
            } else {
                ""
            },
            str_of(&r[5])
        ),
    });
    let failovers = rows(
        e,
        &format!(
            "SELECT {secs}, event, region FROM {} \
             AND (phase IS NULL OR phase IN ('down', 'back')) ORDER BY ts DESC LIMIT {MAX_MARKS}",
            f.source("failovers", None, None)
        ),
    )
    .await?
    .into_iter()
    .map(|r| Mark {
        t: i64_of(&r[0]),
        kind: "failover".into(),
        label: format!("{} (recorded in {})", str_of(&r[1]), str_of(&r[2])),
    });
    let mut all: Vec<Mark> = rollouts.chain(failovers).collect();
    all.sort_by_key(|m| std::cmp::Reverse(m.t));
    all.truncate(MAX_MARKS);
    all.reverse();
    Ok(all)
}
