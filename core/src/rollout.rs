//! Rollout stages moved at runtime: the stage a class is in now, the rule
//! for moving it, and the view every region and router keeps (pure).
//!
//! A class starts in the stage its config names (`classes.<name>.rollout`).
//! An operator moves it with `POST /v1/admin/rollout`; the move is stored as
//! an entity of the system class `_rollout` (key: the class, LWW), so it
//! replicates like any write, survives restarts and wins over the config
//! until it is moved again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ClassConfig, Rollout};
use crate::error::{Error, Result};

/// The stages in the order a class moves through them.
pub const STAGES: [Rollout; 4] = [
    Rollout::ActivePassive,
    Rollout::ReadLocal,
    Rollout::LimitedWrites,
    Rollout::ActiveActive,
];

/// A stage's place in [`STAGES`].
fn rank(stage: Rollout) -> usize {
    STAGES
        .iter()
        .position(|s| *s == stage)
        .expect("every stage is in STAGES")
}

/// Reads a stage by its config name (`read-local`, ...).
pub fn parse_stage(text: &str) -> Result<Rollout> {
    STAGES
        .iter()
        .copied()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "`{text}` is not a rollout stage. Fix: use one of {}",
                STAGES.map(Rollout::as_str).join(", ")
            ))
        })
}

/// How many stages a move from `from` to `to` skips.
pub fn skipped(from: Rollout, to: Rollout) -> usize {
    rank(from).abs_diff(rank(to)).saturating_sub(1)
}

/// Whether a class may move from `from` to `to`: one stage at a time,
/// forward or back, unless `force`d.
pub fn check_move(class: &str, from: Rollout, to: Rollout, force: bool) -> Result<()> {
    if force || skipped(from, to) == 0 {
        return Ok(());
    }
    let (a, b) = (rank(from), rank(to));
    let next = if b > a { STAGES[a + 1] } else { STAGES[a - 1] };
    Err(Error::Precondition(format!(
        "class `{class}` is in the `{}` stage; `{}` skips {} stage(s). Fix: move it to `{}` first, \
         or pass force to skip",
        from.as_str(),
        to.as_str(),
        skipped(from, to),
        next.as_str()
    )))
}

/// A stage set at runtime, as stored in `_rollout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSet {
    /// The stage.
    pub stage: Rollout,
    /// The stage it moved from.
    pub from: Rollout,
    /// Whether a skipped stage was forced.
    pub forced: bool,
    /// When (µs since epoch, the hybrid clock of the region that moved it).
    pub at_us: u64,
    /// The region that took the move.
    pub by: String,
}

/// The stages set at runtime, by class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Class -> the stage set for it.
    pub stages: BTreeMap<String, StageSet>,
}

impl RolloutView {
    /// The stage `class` is in now: the one set at runtime, else its config's.
    pub fn stage(&self, class_name: &str, class: &ClassConfig) -> Rollout {
        self.stages
            .get(class_name)
            .map_or(class.rollout, |s| s.stage)
    }

    /// The view stored as `_rollout` entities (key = class, value = a
    /// [`StageSet`]); values that are not one are skipped.
    pub fn from_values<'a>(
        values: impl Iterator<Item = (&'a str, serde_json::Value)>,
    ) -> RolloutView {
        let stages = values
            .filter_map(|(class, v)| Some((class.to_owned(), serde_json::from_value(v).ok()?)))
            .collect();
        RolloutView { stages }
    }

    /// Joins another view: per class, the later move wins.
    pub fn join(&mut self, other: &RolloutView) {
        for (class, s) in &other.stages {
            match self.stages.get(class) {
                Some(mine) if mine.at_us >= s.at_us => {}
                _ => {
                    self.stages.insert(class.clone(), s.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_move_one_at_a_time_unless_forced() {
        use Rollout::*;
        for (from, to) in [
            (ActivePassive, ReadLocal),
            (ReadLocal, LimitedWrites),
            (LimitedWrites, ActiveActive),
            (ActiveActive, LimitedWrites),
            (ReadLocal, ActivePassive),
            (ReadLocal, ReadLocal),
        ] {
            check_move("c", from, to, false).unwrap();
        }
        let e = check_move("carts", ReadLocal, ActiveActive, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`limited-writes` first") && e.contains("skips 1"),
            "{e}"
        );
        let e = check_move("carts", ActiveActive, ActivePassive, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`limited-writes` first"), "{e}");
        check_move("carts", ActiveActive, ActivePassive, true).unwrap();
    }

    #[test]
    fn stages_parse_by_their_config_names() {
        for s in STAGES {
            assert_eq!(parse_stage(s.as_str()).unwrap(), s);
        }
        let e = parse_stage("active_active").unwrap_err().to_string();
        assert!(e.contains("active-passive, read-local"), "{e}");
    }

    #[test]
    fn the_runtime_stage_wins_over_the_config_and_the_later_move_wins() {
        let class = ClassConfig::system_lww();
        let mut view = RolloutView::default();
        assert_eq!(view.stage("carts", &class), Rollout::ActiveActive);
        let set = |stage, at_us| StageSet {
            stage,
            from: Rollout::ActiveActive,
            forced: false,
            at_us,
            by: "us-east".into(),
        };
        let stored = serde_json::to_value(set(Rollout::LimitedWrites, 10)).unwrap();
        view.join(&RolloutView::from_values(
            [("carts", stored), ("junk", serde_json::json!({"stage": 1}))].into_iter(),
        ));
        assert_eq!(view.stage("carts", &class), Rollout::LimitedWrites);
        assert!(!view.stages.contains_key("junk"));
        let older = RolloutView {
            stages: BTreeMap::from([("carts".to_owned(), set(Rollout::ReadLocal, 9))]),
        };
        view.join(&older);
        assert_eq!(view.stage("carts", &class), Rollout::LimitedWrites);
        let newer = RolloutView {
            stages: BTreeMap::from([("carts".to_owned(), set(Rollout::ReadLocal, 11))]),
        };
        view.join(&newer);
        assert_eq!(view.stage("carts", &class), Rollout::ReadLocal);
    }
}
