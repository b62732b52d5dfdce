//! Ownership: the delegations in force, moving them (a failover), and the
//! owner of a key.

use parallax_core::api::MoveOwnership;
use parallax_core::config::{ClassConfig, OWNERSHIP_CLASS, Ownership};
use parallax_core::entity::Op;
use parallax_core::error::{Error, Result};
use parallax_core::protocol::{ReadConsistency, ReadRequest};
use parallax_core::routing::{self, OwnershipView};
use parallax_core::telemetry::Event;

use super::Node;
use crate::command::{Command, LocalWrite};

impl Node {
    /// The ownership delegations in force, as this region knows them.
    pub fn ownership(&self) -> OwnershipView {
        self.inner.repl.ownership()
    }

    /// Moves ownership of what `region` owns by config to `delegate` (a
    /// failover; `delegate == region` moves it back), under a new epoch
    /// higher than any before. The change replicates like any write.
    pub async fn move_ownership(&self, region: &str, delegate: &str) -> Result<OwnershipView> {
        let _one_at_a_time = self.inner.ownership_lock.lock().await;
        self.move_locked(region, delegate).await
    }

    /// [`Node::move_ownership`] on conditions, checked and acted on with no
    /// other move in between on this region: the region's delegation is
    /// still at `expect_epoch` after a quorum read (so a move another
    /// region took is seen), this region has not reached `region` for
    /// `unreachable_for_ms`, and a majority of the other regions has not
    /// heard from it for that long and at least `cluster.lease_ms` plus
    /// `max_clock_offset_ms` (so its owner lease has lapsed: it takes no
    /// write once the keys move). A condition that fails is a 409.
    pub async fn move_ownership_if(&self, m: &MoveOwnership) -> Result<OwnershipView> {
        let _one_at_a_time = self.inner.ownership_lock.lock().await;
        if let Some(expect) = m.expect_epoch {
            self.read_control(
                OWNERSHIP_CLASS,
                &m.region,
                "a conditional ownership move reads the delegation",
            )
            .await?;
            let view = self.inner.repl.ownership();
            let (owner, now) = view.effective(&m.region);
            if now != expect {
                return Err(Error::Precondition(format!(
                    "the keys of `{}` are at epoch {now} (owned by `{owner}`), not {expect}: another move came first. \
                     Fix: read GET /v1/admin/ownership and decide again",
                    m.region
                )));
            }
        }
        if let Some(min_ms) = m.unreachable_for_ms
            && m.delegate != m.region
        {
            if m.region == self.inner.region {
                return Err(Error::Precondition(format!(
                    "this is `{}` itself, which is answering: its keys stay. Fix: ask another region",
                    m.region
                )));
            }
            let stats = self.stats();
            let ago = stats
                .replication
                .peers
                .get(&m.region)
                .and_then(|p| p.last_ok_ms_ago);
            if let Some(ago) = ago
                && ago < min_ms
            {
                return Err(Error::Precondition(format!(
                    "`{}` reached `{}` {ago} ms ago (unreachable_for_ms = {min_ms}): it is not down from here. \
                     Fix: wait, or move by hand with `parallax failover` if it must",
                    self.inner.region, m.region
                )));
            }
            self.confirm_silence(&m.region, self.move_silence_ms(min_ms))
                .await?;
        }
        self.move_locked(&m.region, &m.delegate).await
    }

    /// Reads `class`/`key` of a system class from a majority of regions:
    /// read repair stores the newest value here, so a move another region
    /// took first is seen before this one is decided. `doing` starts the
    /// error when no majority answers.
    pub(super) async fn read_control(&self, class: &str, key: &str, doing: &str) -> Result<()> {
        let probe = ReadRequest {
            class: class.to_owned(),
            key: key.to_owned(),
            consistency: ReadConsistency::Quorum,
            session: None,
        };
        match self.read_merged(&probe, false).await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Unavailable(format!(
                "{doing} of `{key}` from a majority of regions first: {e}"
            ))),
        }
    }

    async fn move_locked(&self, region: &str, delegate: &str) -> Result<OwnershipView> {
        for (what, r) in [("region", region), ("delegate", delegate)] {
            if !self.inner.config.regions.contains_key(r) {
                return Err(Error::BadRequest(format!(
                    "{what} `{r}` is not a declared region (declared: {}). Fix: name one of those",
                    self.inner.config.region_names().join(", ")
                )));
            }
        }
        let epoch = self.inner.repl.ownership().max_epoch() + 1;
        let value = serde_json::json!({ "delegate": delegate, "epoch": epoch });
        self.submit(|tx| {
            Command::Local(
                LocalWrite {
                    class: OWNERSHIP_CLASS.to_owned(),
                    key: region.to_owned(),
                    op: Op::Put(value),
                    owner_epoch: epoch,
                    under: None,
                    home: None,
                },
                tx,
            )
        })
        .await?;
        tracing::warn!(region = %self.inner.region, from = region, to = delegate, epoch, "Ownership moved.");
        self.inner
            .telemetry
            .emit(Event::Failover(parallax_core::telemetry::FailoverEvent {
                ts_us: self.inner.clock.now_us(),
                region: self.inner.region.clone(),
                event: format!("ownership {region} -> {delegate} (epoch {epoch})"),
                ..Default::default()
            }));
        Ok(self.inner.repl.ownership())
    }

    /// Where a read's key belongs, worked out once per request: the
    /// entity's explicit home (read from the store for home-owned classes)
    /// and its owner under the delegations in `view`.
    pub(super) fn placement(
        &self,
        req: &ReadRequest,
        class: &ClassConfig,
        view: &OwnershipView,
    ) -> Result<Placement> {
        let explicit_home = self.explicit_home(&req.class, class, &req.key)?;
        let owner = self.owner_under(req, class, explicit_home.as_deref(), view)?;
        Ok(Placement {
            explicit_home,
            owner,
        })
    }

    /// The home recorded in a home-owned entity (`None` for other classes,
    /// or when it has none).
    pub(super) fn explicit_home(
        &self,
        class_name: &str,
        class: &ClassConfig,
        key: &str,
    ) -> Result<Option<String>> {
        Ok(match class.ownership {
            Ownership::Home => self
                .inner
                .store
                .read_entity(class_name, key)?
                .and_then(|e| e.home),
            _ => None,
        })
    }

    fn owner_under(
        &self,
        req: &ReadRequest,
        class: &ClassConfig,
        explicit_home: Option<&str>,
        view: &OwnershipView,
    ) -> Result<Option<String>> {
        Ok(routing::owner(
            &self.inner.config,
            &req.class,
            class,
            &req.key,
            explicit_home,
            view,
        )?
        .map(|(o, _)| o))
    }

    /// For a strong read: checks with a majority of regions that no newer
    /// delegation moved the key away from `owner`; returns the owner after
    /// that check.
    pub(super) async fn confirm_owner(
        &self,
        req: &ReadRequest,
        class: &ClassConfig,
        explicit_home: Option<&str>,
        owner: String,
    ) -> Result<String> {
        let by_config = match class.ownership {
            Ownership::Home => routing::home_of(&req.class, class, &req.key, explicit_home)?,
            Ownership::Hash => routing::hash_owner(self.inner.config.regions.keys(), &req.key),
            Ownership::Global => return Ok(owner),
        };
        let probe = ReadRequest {
            class: parallax_core::config::OWNERSHIP_CLASS.to_owned(),
            key: by_config,
            consistency: ReadConsistency::Quorum,
            session: None,
        };
        match self.read_merged(&probe, false).await {
            // Read repair has stored the merged delegation here; recompute.
            Ok(_) | Err(Error::NotFound { .. }) => {
                let view = self.inner.repl.ownership();
                Ok(self
                    .owner_under(req, class, explicit_home, &view)?
                    .unwrap_or(owner))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "a strong read must confirm ownership with a majority of regions: {e}"
            ))),
        }
    }
}

/// Where a key belongs, as one request sees it.
pub(super) struct Placement {
    /// The home recorded in the entity (home-owned classes).
    pub(super) explicit_home: Option<String>,
    /// The region that owns the key now; `None` for classes without one.
    pub(super) owner: Option<String>,
}
