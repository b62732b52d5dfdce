//! Client writes: validation, routing to the owner, the commit and the
//! quorum wait.

use std::time::Duration;

use parallax_core::config::{ClassConfig, Ownership};
use parallax_core::error::{Error, Result};
use parallax_core::protocol::{
    PeerRequest, PeerResponse, SessionToken, WriteConsistency, WriteOutcome, WriteRequest,
};
use parallax_core::routing::{self, Route};
use serde_json::Value;

use super::Node;
use crate::command::{Command, LocalApplied, LocalWrite};

impl Node {
    /// Takes a client write: routes it (rollout stage, ownership), commits
    /// it, and for `quorum` waits for a majority.
    pub async fn write(
        &self,
        req: WriteRequest,
        forwarded_from: Option<&str>,
    ) -> Result<WriteOutcome> {
        let class = self.class(&req.class)?;
        self.check_key(&req.key)?;
        if !class.conflict.accepts(req.op.kind()) {
            return Err(Error::WrongOp {
                class: req.class.clone(),
                policy: class.conflict.as_str().to_owned(),
                op: req.op.kind().as_str().to_owned(),
                hint: class.conflict.ops_hint().to_owned(),
            });
        }
        if let Some(h) = &req.home
            && !self.inner.config.regions.contains_key(h)
        {
            return Err(Error::BadRequest(format!(
                "home `{h}` is not a declared region (declared: {}). Fix: pass ?home= with one of those",
                self.inner.config.region_names().join(", ")
            )));
        }
        let explicit_home = match &req.home {
            Some(h) => Some(h.clone()),
            None => self.explicit_home(&req.class, class, &req.key)?,
        };
        let mut route = self.route(&req, class, explicit_home.as_deref())?;
        // A key this region owns: only under its owner lease, so an owner cut
        // off from the majority stops before a failover can move its keys.
        // After a lapse the delegations were read again: route again.
        if matches!(route, Route::Local { .. })
            && class.ownership != Ownership::Global
            && self.check_lease(&req.class, &req.key).await?
        {
            route = self.route(&req, class, explicit_home.as_deref())?;
        }
        // The writer takes it only if the delegation it was routed under
        // still names this region when it commits; a move that came in
        // between (replicated, read, or a hand-back made here) sends it
        // where the key went.
        let mut moved_since = 0;
        let applied: LocalApplied = loop {
            let (epoch, under) = match route {
                Route::Local { epoch, under } => (epoch, under),
                Route::Remote { to, why } => {
                    return self
                        .write_elsewhere(req, class, to, why, forwarded_from)
                        .await;
                }
            };
            let committed = self
                .submit(|tx| {
                    Command::Local(
                        LocalWrite {
                            class: req.class.clone(),
                            key: req.key.clone(),
                            op: req.op.clone(),
                            owner_epoch: epoch,
                            under,
                            home: if class.ownership == Ownership::Home {
                                explicit_home.clone()
                            } else {
                                None
                            },
                        },
                        tx,
                    )
                })
                .await;
            match committed {
                Err(Error::Misdirected(_)) if moved_since < 3 => {
                    moved_since += 1;
                    route = self.route(&req, class, explicit_home.as_deref())?;
                }
                other => break other?,
            }
        };
        let mut token = req.session.clone().unwrap_or_default();
        token.include(&self.inner.region, applied.seq);
        if req.consistency == WriteConsistency::Quorum {
            self.await_quorum((&req.class, &req.key), applied.seq, &token)
                .await?;
        }
        Ok(WriteOutcome {
            class: req.class,
            key: req.key,
            value: applied.entity.value().unwrap_or(Value::Null),
            hlc: applied.entity.hlc.clone(),
            version: applied.entity.version.clone(),
            token: token.to_string(),
            applied_in: self.acked_by(applied.seq),
            served_by: self.inner.region.clone(),
            seq: applied.seq,
            consistency: req.consistency.name().to_owned(),
        })
    }

    fn route(
        &self,
        req: &WriteRequest,
        class: &ClassConfig,
        explicit_home: Option<&str>,
    ) -> Result<Route> {
        routing::route_write(
            &self.inner.config,
            &self.inner.region,
            &req.class,
            class,
            &req.key,
            req.op.kind(),
            explicit_home,
            &self.inner.repl.ownership(),
            self.inner.repl.stage(&req.class, class),
        )
    }

    async fn write_elsewhere(
        &self,
        req: WriteRequest,
        class: &ClassConfig,
        to: String,
        why: String,
        forwarded_from: Option<&str>,
    ) -> Result<WriteOutcome> {
        let misdirected = |why: String| {
            Error::Misdirected(Box::new(parallax_core::error::Misdirected {
                region: self.inner.region.clone(),
                class: req.class.clone(),
                key: req.key.clone(),
                owner: to.clone(),
                owner_url: self.region_url(&to),
                why,
            }))
        };
        if let Some(from) = forwarded_from {
            return Err(misdirected(format!(
                "{why}; it was already forwarded once, from {from}"
            )));
        }
        if class.foreign_writes == parallax_core::config::ForeignWrites::Refuse {
            return Err(misdirected(format!("{why} (foreign_writes = \"refuse\")")));
        }
        match self.call(&to, PeerRequest::Write(req)).await? {
            PeerResponse::Written(w) => Ok(w),
            other => Err(Error::Internal(format!(
                "region {to} answered a write with {other:?}"
            ))),
        }
    }

    /// Regions known to have applied this region's write `seq`.
    pub(super) fn acked_by(&self, seq: u64) -> Vec<String> {
        let mut regions = vec![self.inner.region.clone()];
        for (name, p) in self.inner.repl.peers() {
            if p.acked() >= seq {
                regions.push(name.clone());
            }
        }
        regions.sort();
        regions
    }

    /// Regions holding this region's write `seq` durably (this one always does).
    fn durable_in(&self, seq: u64) -> usize {
        1 + self
            .inner
            .repl
            .peers()
            .filter(|(_, p)| p.durable() >= seq)
            .count()
    }

    pub(super) async fn await_quorum(
        &self,
        (class, key): (&str, &str),
        seq: u64,
        token: &SessionToken,
    ) -> Result<()> {
        let total = self.inner.config.regions.len();
        let needed = total / 2 + 1;
        let timeout_ms = self.inner.config.replication.quorum_timeout_ms;
        let mut acks = self.inner.repl.subscribe_acks();
        self.inner.repl.want_durable(seq);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let confirmed = self.durable_in(seq);
            if confirmed >= needed {
                return Ok(());
            }
            tokio::select! {
                changed = acks.changed() => { if changed.is_err() { break } }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::QuorumTimeout {
                        class: class.to_owned(),
                        key: key.to_owned(),
                        region: self.inner.region.clone(),
                        token: token.to_string(),
                        confirmed,
                        needed,
                        timeout_ms,
                    });
                }
            }
        }
        Err(Error::ShuttingDown(self.inner.region.clone()))
    }
}
