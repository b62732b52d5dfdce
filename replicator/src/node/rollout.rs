//! Rollout stages: the stage every class is in, and moving one at runtime.

use parallax_core::api::{ClassStage, MoveRollout, RolloutMoved, Rollouts};
use parallax_core::config::{ROLLOUT_CLASS, Rollout, SYSTEM_CLASS_PREFIX};
use parallax_core::entity::Op;
use parallax_core::error::{Error, Result};
use parallax_core::protocol::SessionToken;
use parallax_core::rollout::{self, RolloutView, StageSet};
use parallax_core::routing;
use parallax_core::telemetry::{Event, RolloutEvent};

use super::Node;
use crate::command::{Command, LocalWrite};

impl Node {
    /// The rollout stages set at runtime, as this region knows them.
    pub fn rollout(&self) -> RolloutView {
        self.inner.repl.rollout()
    }

    /// Every class's stage now, where it comes from and what it means.
    pub fn rollouts(&self) -> Rollouts {
        let view = self.inner.repl.rollout();
        let config = &self.inner.config;
        let classes = config
            .classes
            .iter()
            .filter(|(name, _)| !name.starts_with(SYSTEM_CLASS_PREFIX))
            .map(|(name, class)| {
                let stage = view.stage(name, class);
                let answer = ClassStage {
                    stage,
                    configured: class.rollout,
                    source: if view.stages.contains_key(name) {
                        "runtime"
                    } else {
                        "config"
                    }
                    .to_owned(),
                    limited_ops: class
                        .limited_ops
                        .iter()
                        .map(|op| op.as_str().to_owned())
                        .collect(),
                    primary: routing::primary(config, class).to_owned(),
                };
                (name.clone(), answer)
            })
            .collect();
        Rollouts {
            region: self.inner.region.clone(),
            classes,
            view,
        }
    }

    /// Moves a class to another rollout stage in every region: one stage
    /// at a time unless forced, decided after a quorum read (so a move
    /// another region took first is seen), written to `_rollout` and
    /// confirmed by a majority. Every region routes by it from its next
    /// request after the move reaches it; a restart keeps it.
    pub async fn move_rollout(&self, m: &MoveRollout) -> Result<RolloutMoved> {
        let class = self.class(&m.class)?;
        let to = rollout::parse_stage(&m.stage)?;
        // One control move at a time on this region (ownership or stage).
        let _one_at_a_time = self.inner.ownership_lock.lock().await;
        self.read_control(ROLLOUT_CLASS, &m.class, "a rollout move reads the stage")
            .await?;
        let from = self.inner.repl.stage(&m.class, class);
        rollout::check_move(&m.class, from, to, m.force)?;
        let note = (to == Rollout::LimitedWrites && class.limited_ops.is_empty()).then(|| {
            format!(
                "classes.{}.limited_ops is empty: in `limited-writes` every write goes to the primary, as in \
                 `read-local`. Fix: list the operations any region may take in limited_ops",
                m.class
            )
        });
        let mut answer = RolloutMoved {
            region: self.inner.region.clone(),
            class: m.class.clone(),
            from,
            stage: to,
            forced: rollout::skipped(from, to) > 0,
            changed: from != to,
            applied_in: vec![self.inner.region.clone()],
            note,
        };
        if !answer.changed {
            return Ok(answer);
        }
        let set = StageSet {
            stage: to,
            from,
            forced: answer.forced,
            at_us: self.inner.clock.now_us(),
            by: self.inner.region.clone(),
        };
        let value = serde_json::to_value(&set)
            .map_err(|e| Error::Internal(format!("a stage does not serialise: {e}")))?;
        let applied = self
            .submit(|tx| {
                Command::Local(
                    LocalWrite {
                        class: ROLLOUT_CLASS.to_owned(),
                        key: m.class.clone(),
                        op: Op::Put(value),
                        owner_epoch: 0,
                        under: None,
                        home: None,
                    },
                    tx,
                )
            })
            .await?;
        let mut token = SessionToken::default();
        token.include(&self.inner.region, applied.seq);
        self.await_quorum((ROLLOUT_CLASS, &m.class), applied.seq, &token)
            .await?;
        answer.applied_in = self.acked_by(applied.seq);
        tracing::warn!(
            region = %self.inner.region, class = %m.class, from = from.as_str(), to = to.as_str(),
            forced = answer.forced, "Rollout stage moved."
        );
        self.inner.telemetry.emit(Event::Rollout(RolloutEvent {
            ts_us: self.inner.clock.now_us(),
            region: self.inner.region.clone(),
            class: m.class.clone(),
            from_stage: from.as_str().to_owned(),
            to_stage: to.as_str().to_owned(),
            forced: answer.forced,
        }));
        Ok(answer)
    }
}
