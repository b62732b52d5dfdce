//! The read consistency ladder: local, session, bounded staleness, quorum
//! and strong reads, forwarding, merging and read repair.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use parallax_core::config::ClassConfig;
use parallax_core::entity::Entity;
use parallax_core::error::{Error, Result};
use parallax_core::protocol::{
    PeerRequest, PeerResponse, ReadConsistency, ReadOutcome, ReadRequest, RepairItem, SessionToken,
    SiblingView,
};
use parallax_core::routing::{self, Route};
use serde_json::Value;

use super::Node;
use super::ownership::Placement;
use crate::command::Command;

impl Node {
    /// Serves a client read at the consistency it asks for.
    pub async fn read(
        &self,
        req: ReadRequest,
        forwarded_from: Option<&str>,
    ) -> Result<ReadOutcome> {
        let class = self.class(&req.class)?;
        self.check_key(&req.key)?;
        let view = self.inner.repl.ownership();
        let stage = self.inner.repl.stage(&req.class, class);
        if let Route::Remote { to, why } =
            routing::route_read(&self.inner.config, &self.inner.region, class, &view, stage)
        {
            return self
                .read_elsewhere(req, class, to, why, forwarded_from)
                .await;
        }
        match req.consistency.clone() {
            ReadConsistency::Local => self.read_local(&req),
            ReadConsistency::Session => {
                let token = req.session.clone().unwrap_or_default();
                if self.session_satisfied(&token) {
                    return self.read_local(&req);
                }
                if forwarded_from.is_some() {
                    // We were picked as having the writes; wait briefly for
                    // replication in flight before giving up.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_000);
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if self.session_satisfied(&token) {
                            return self.read_local(&req);
                        }
                    }
                    return Err(Error::Unavailable(format!(
                        "region {} has not yet applied the writes of session token {token}",
                        self.inner.region
                    )));
                }
                let target = self.session_target(&token);
                self.read_elsewhere(
                    req,
                    class,
                    target,
                    "the session's writes are not applied here yet".into(),
                    None,
                )
                .await
            }
            ReadConsistency::Bounded(bound_ms) => {
                let lag = self.max_lag_ms();
                if lag.is_some_and(|l| l <= bound_ms) {
                    return self.read_local(&req);
                }
                let lag_text = lag.map_or("unknown".to_owned(), |l| format!("{l} ms"));
                let why = format!("lag here is {lag_text}, over the bound of {bound_ms} ms");
                match self.placement(&req, class, &view)?.owner {
                    Some(owner) if owner != self.inner.region && forwarded_from.is_none() => {
                        let mut fwd = req.clone();
                        fwd.consistency = ReadConsistency::Strong;
                        self.read_elsewhere(fwd, class, owner, why, None).await
                    }
                    Some(_) => self.read_local(&req),
                    None => {
                        let mut q = req.clone();
                        q.consistency = ReadConsistency::Quorum;
                        self.read_merged(&q, false).await
                    }
                }
            }
            ReadConsistency::Quorum => self.read_merged(&req, false).await,
            ReadConsistency::Strong => match self.placement(&req, class, &view)? {
                Placement { owner: None, .. } => self.read_merged(&req, true).await,
                Placement {
                    owner: Some(owner),
                    explicit_home,
                } if owner == self.inner.region => {
                    let confirmed = self
                        .confirm_owner(&req, class, explicit_home.as_deref(), owner)
                        .await?;
                    if confirmed == self.inner.region {
                        return self.read_local(&req);
                    }
                    if forwarded_from.is_some() {
                        return Err(Error::Unavailable(format!(
                            "ownership of `{}/{}` moved to {confirmed} while the read was being forwarded; retry",
                            req.class, req.key
                        )));
                    }
                    self.read_elsewhere(req, class, confirmed, "ownership moved".into(), None)
                        .await
                }
                Placement {
                    owner: Some(owner), ..
                } => {
                    if forwarded_from.is_some() {
                        return Err(Error::Misdirected(Box::new(
                            parallax_core::error::Misdirected {
                                region: self.inner.region.clone(),
                                class: req.class.clone(),
                                key: req.key.clone(),
                                owner_url: self.region_url(&owner),
                                owner,
                                why: "strong reads are served by the owner".into(),
                            },
                        )));
                    }
                    self.read_elsewhere(
                        req,
                        class,
                        owner,
                        "strong reads are served by the owner".into(),
                        None,
                    )
                    .await
                }
            },
        }
    }

    async fn read_elsewhere(
        &self,
        req: ReadRequest,
        class: &ClassConfig,
        to: String,
        why: String,
        forwarded_from: Option<&str>,
    ) -> Result<ReadOutcome> {
        if forwarded_from.is_some()
            || class.foreign_writes == parallax_core::config::ForeignWrites::Refuse
        {
            return Err(Error::Misdirected(Box::new(
                parallax_core::error::Misdirected {
                    region: self.inner.region.clone(),
                    class: req.class,
                    key: req.key,
                    owner_url: self.region_url(&to),
                    owner: to,
                    why,
                },
            )));
        }
        match self.call(&to, PeerRequest::Read(req)).await? {
            PeerResponse::Read(r) => Ok(r),
            other => Err(Error::Internal(format!(
                "region {to} answered a read with {other:?}"
            ))),
        }
    }

    fn read_local(&self, req: &ReadRequest) -> Result<ReadOutcome> {
        let entity = self.inner.store.read_entity(&req.class, &req.key)?;
        self.outcome(req, entity, &self.inner.region, req.consistency.name())
    }

    fn outcome(
        &self,
        req: &ReadRequest,
        entity: Option<Entity>,
        served_by: &str,
        consistency: &str,
    ) -> Result<ReadOutcome> {
        let not_found = || Error::NotFound {
            class: req.class.clone(),
            key: req.key.clone(),
            region: served_by.to_owned(),
        };
        let entity = entity.filter(Entity::exists).ok_or_else(not_found)?;
        let conflicted = entity.is_conflicted();
        let siblings = if conflicted {
            entity
                .siblings()
                .iter()
                .map(|s| SiblingView {
                    value: s.value.clone().unwrap_or(Value::Null),
                    deleted: s.value.is_none(),
                    hlc: s.stamp.clone(),
                    version: s.version.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(ReadOutcome {
            class: req.class.clone(),
            key: req.key.clone(),
            value: entity.value().unwrap_or(Value::Null),
            siblings,
            conflicted,
            applied_in: self.applied_in(&entity),
            hlc: entity.hlc.clone(),
            version: entity.version.clone(),
            served_by: served_by.to_owned(),
            consistency: consistency.to_owned(),
            home: entity.home.clone(),
        })
    }

    /// Regions known to have applied the latest write of an entity.
    fn applied_in(&self, entity: &Entity) -> Vec<String> {
        let origin = &entity.hlc.region;
        let seq = entity.origin_seq;
        let repl = &self.inner.repl;
        let mut regions: Vec<String> = self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| {
                *r == &self.inner.region
                    || *r == origin
                    || (origin == &self.inner.region
                        && repl.peer(r).is_some_and(|p| p.acked() >= seq))
                    || repl.known_applied(r, origin) >= seq
            })
            .cloned()
            .collect();
        regions.sort();
        regions
    }

    fn session_satisfied(&self, token: &SessionToken) -> bool {
        token.0.iter().all(|(origin, seq)| {
            if *origin == self.inner.region {
                self.inner.repl.head().seq >= *seq
            } else {
                self.inner.repl.applied_from(origin) >= *seq
            }
        })
    }

    /// A region that (as far as gossip tells) has every write of the token;
    /// otherwise the origin of its newest unapplied write.
    fn session_target(&self, token: &SessionToken) -> String {
        let repl = &self.inner.repl;
        for region in self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| **r != self.inner.region)
        {
            if token
                .0
                .iter()
                .all(|(o, s)| o == region || repl.known_applied(region, o) >= *s)
            {
                return region.clone();
            }
        }
        token
            .0
            .iter()
            .filter(|(o, s)| **o != self.inner.region && repl.applied_from(o) < **s)
            .max_by_key(|(_, s)| **s)
            .map(|(o, _)| o.clone())
            .unwrap_or_else(|| self.inner.region.clone())
    }

    /// The largest lag from any other region (ms), if all have been heard from.
    fn max_lag_ms(&self) -> Option<u64> {
        let now = self.inner.clock.now_ms();
        let mut worst = 0;
        for (peer, _) in self.inner.repl.peers() {
            worst = worst.max(self.inner.repl.lag_from(peer, now)?);
        }
        Some(worst)
    }

    /// Reads from a majority (or, with `all`, every region), merges, and
    /// repairs the regions that were behind.
    pub(super) async fn read_merged(&self, req: &ReadRequest, all: bool) -> Result<ReadOutcome> {
        let total = self.inner.config.regions.len();
        let needed = if all { total } else { total / 2 + 1 };
        let local = self.inner.store.read_entity(&req.class, &req.key)?;
        let mut answers: Vec<(String, Option<Entity>)> = vec![(self.inner.region.clone(), local)];
        let mut failures = Vec::new();
        let mut pending: FuturesUnordered<BoxFuture<'_, (String, Result<PeerResponse>)>> = self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| **r != self.inner.region)
            .map(|r| {
                let r = r.clone();
                let req = PeerRequest::Fetch {
                    class: req.class.clone(),
                    key: req.key.clone(),
                };
                Box::pin(async move { (r.clone(), self.call(&r, req).await) }) as BoxFuture<'_, _>
            })
            .collect();
        while answers.len() < needed {
            let Some((region, result)) = pending.next().await else {
                break;
            };
            match result {
                Ok(PeerResponse::Fetched(e)) => answers.push((region, e)),
                Ok(other) => failures.push(format!("{region}: unexpected answer {other:?}")),
                Err(e) => failures.push(format!("{region}: {e}")),
            }
        }
        drop(pending);
        if answers.len() < needed {
            return Err(Error::Unavailable(format!(
                "a {} read of `{}/{}` needs {needed} of {total} regions; reached {} ({})",
                req.consistency.name(),
                req.class,
                req.key,
                answers.len(),
                failures.join("; ")
            )));
        }
        let mut merged: Option<Entity> = None;
        for (_, e) in &answers {
            if let Some(e) = e {
                merged = Some(match merged {
                    None => e.clone(),
                    Some(m) => m.join(e)?,
                });
            }
        }
        if let Some(m) = &merged {
            for (region, e) in &answers {
                if e.as_ref() == Some(m) {
                    continue;
                }
                let item = RepairItem {
                    class: req.class.clone(),
                    key: req.key.clone(),
                    entity: m.clone(),
                };
                if *region == self.inner.region {
                    self.submit(|tx| Command::Repair(vec![item], tx)).await?;
                } else {
                    let node = self.clone();
                    let region = region.clone();
                    tokio::spawn(async move {
                        if let Err(e) = node.call(&region, PeerRequest::Repair(vec![item])).await {
                            tracing::debug!(peer = %region, error = %e, "Read repair not delivered; anti-entropy will catch up.");
                        }
                    });
                }
            }
        }
        let names: Vec<&str> = answers.iter().map(|(r, _)| r.as_str()).collect();
        let mut out = self.outcome(req, merged, &names.join("+"), req.consistency.name())?;
        out.served_by = self.inner.region.clone();
        Ok(out)
    }
}
