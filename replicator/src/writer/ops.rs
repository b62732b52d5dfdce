//! What each command does to the group under way: local writes, applied
//! log entries, repairs, replacements and drill faults, and the conflict
//! records they leave.

use super::*;

impl Writer {
    pub(super) fn local(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        req: LocalWrite,
        now_us: u64,
    ) -> Result<LocalApplied> {
        let class = self
            .config
            .classes
            .get(&req.class)
            .ok_or_else(|| Error::UnknownClass {
                class: req.class.clone(),
                declared: self.config.class_names(),
            })?;
        let owner_epoch = match &req.under {
            Some(under) => self.still_owned(txn, &req, under)?,
            None => req.owner_epoch,
        };
        let existing_raw = txn.get_raw(&req.class, &req.key)?;
        let existing = existing_raw.as_deref().map(Entity::decode).transpose()?;
        let stamp = self.hlc.now(now_us / 1_000);
        let seq = g.head + 1;
        let ctx = WriteContext {
            region: &self.region,
            class_name: &req.class,
            key: &req.key,
            class,
            stamp: stamp.clone(),
            seq,
            owner_epoch,
            home: req.home.clone(),
        };
        let entity = Entity::apply_local(existing.as_ref(), &req.op, &ctx)?;
        let bytes = entity.encode();
        txn.put_entity(&req.class, &req.key, &bytes)?;
        g.changed(
            txn,
            (&req.class, &req.key),
            existing_raw.as_deref(),
            Some(&bytes),
        )?;
        g.log.push(LogEntry {
            seq,
            class: req.class.clone(),
            key: req.key.clone(),
            wall_ms: stamp.wall_ms,
            entity: bytes,
        });
        g.head = seq;
        g.changed = true;
        g.control_changed |= is_control(&req.class);
        if matches!(req.op, Op::Resolve(_)) {
            let first_seen = txn.dequeue(&req.class, &req.key)?;
            let resolution_ms = first_seen.map_or(0, |f| now_us.saturating_sub(f) / 1_000);
            self.conflict(
                txn,
                g,
                &req.class,
                &req.key,
                ConflictOutcome::Resolved,
                resolution_ms,
                None,
                now_us,
            )?;
        }
        Ok(LocalApplied { entity, seq })
    }

    /// The fence of a write taken under `under`'s delegation: the
    /// delegation as committed now (a move applied after the write was
    /// routed included, even one earlier in this group) must still name
    /// this region, or the write is refused as misdirected and routed
    /// again, so no key has two owners. Its epoch is the one to stamp.
    fn still_owned(&self, txn: &StoreTxn, req: &LocalWrite, under: &str) -> Result<u64> {
        let value = txn
            .get_raw(OWNERSHIP_CLASS, under)?
            .map(|raw| Entity::decode(&raw))
            .transpose()?
            .and_then(|e| e.value());
        let view = OwnershipView::from_values(value.map(|v| (under, v)).into_iter());
        let (owner, epoch) = view.effective(under);
        if owner == self.region {
            return Ok(epoch.max(req.owner_epoch));
        }
        Err(Error::Misdirected(Box::new(
            parallax_core::error::Misdirected {
                region: self.region.clone(),
                class: req.class.clone(),
                key: req.key.clone(),
                owner_url: self.config.region_url(&owner).unwrap_or_default(),
                owner,
                why: format!("its owner's keys moved (epoch {epoch}) after this write was routed"),
            },
        )))
    }

    pub(super) fn apply(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        origin: &str,
        entries: Vec<LogEntry>,
        gap_acknowledged: bool,
        now_us: u64,
    ) -> Result<()> {
        let mut wm = g
            .applied
            .get(origin)
            .or_else(|| self.applied.get(origin))
            .copied()
            .unwrap_or(0);
        let fresh = match replication::fresh(wm, entries, gap_acknowledged) {
            Fresh::Apply(fresh) => fresh,
            // Nothing new, or something between our watermark and this
            // batch is missing: the answer (our watermark) asks the origin
            // to resend from there.
            Fresh::AlreadyApplied | Fresh::Missing => return Ok(()),
        };
        // Decode and check everything before changing anything, so a bad
        // batch changes nothing.
        let now_ms = now_us / 1_000;
        let mut decoded = Vec::with_capacity(fresh.len());
        for e in &fresh {
            let entity = Entity::decode(&e.entity).map_err(|err| {
                Error::BadRequest(format!("entry {} from {origin}: {err}", e.seq))
            })?;
            if let Err(ahead) = self.hlc.check(&entity.hlc, now_ms) {
                return Err(Error::ClockSkew {
                    peer: origin.to_owned(),
                    region: self.region.clone(),
                    ahead_ms: ahead.ahead_ms,
                    max_ms: self.config.cluster.max_clock_offset_ms,
                });
            }
            decoded.push(entity);
        }
        let offset = self.repl.offset_ms(origin);
        let lags = g.lags.entry(origin.to_owned()).or_default();
        for (e, remote) in fresh.iter().zip(&decoded) {
            let _ = self.hlc.observe(&remote.hlc, now_ms);
            lags.push(parallax_core::clock::lag_ms(now_ms, e.wall_ms, offset));
            wm = e.seq;
        }
        for (e, remote) in fresh.iter().zip(decoded) {
            self.merge_in(txn, g, &e.class, &e.key, &remote, now_us)?;
        }
        g.applied.insert(origin.to_owned(), wm);
        g.changed = true;
        Ok(())
    }

    /// Overwrites (or with `None` removes) a stored entity, without a log entry.
    pub(super) fn replace(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        entity: Option<&Entity>,
    ) -> Result<()> {
        let old = txn.get_raw(class, key)?;
        match entity {
            Some(e) => {
                let bytes = e.encode();
                txn.put_entity(class, key, &bytes)?;
                g.changed(txn, (class, key), old.as_deref(), Some(&bytes))?;
            }
            None => {
                txn.remove_entity(class, key)?;
                g.changed(txn, (class, key), old.as_deref(), None)?;
            }
        }
        g.changed = true;
        g.control_changed |= is_control(class);
        Ok(())
    }

    pub(super) fn fault(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        fault: Fault,
    ) -> Result<()> {
        let Some(raw) = txn.get_raw(class, key)? else {
            return Err(Error::NotFound {
                class: class.to_owned(),
                key: key.to_owned(),
                region: self.region.clone(),
            });
        };
        let entity = Entity::decode(&raw)?;
        let changed = match fault {
            Fault::Corrupt => Some(entity.corrupted()),
            Fault::Drop => None,
            Fault::Rollback => Some(entity.rolled_back()),
        };
        tracing::warn!(region = %self.region, class, key, ?fault, "Fault injected: a stored entity was changed without replicating.");
        self.replace(txn, g, class, key, changed.as_ref())
    }

    /// Merges a remote version into the stored one, handling conflicts.
    pub(super) fn merge_in(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        remote: &Entity,
        now_us: u64,
    ) -> Result<()> {
        let local_raw = txn.get_raw(class, key)?;
        let local = local_raw.as_deref().map(Entity::decode).transpose()?;
        let merged = match &local {
            None => Merged {
                entity: remote.clone(),
                causality: parallax_core::version::Causality::Before,
                conflict: None,
            },
            Some(l) => match l.merge(remote) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(region = %self.region, class, key, error = %e, "Cannot merge a replicated version; kept the local one.");
                    return Ok(());
                }
            },
        };
        if local.as_ref() != Some(&merged.entity) {
            let bytes = merged.entity.encode();
            txn.put_entity(class, key, &bytes)?;
            g.changed(txn, (class, key), local_raw.as_deref(), Some(&bytes))?;
            g.changed = true;
            g.control_changed |= is_control(class);
        }
        let manual = matches!(merged.entity.state, parallax_core::entity::State::Manual(_));
        if manual {
            if merged.entity.is_conflicted() {
                let (_, new) = txn.enqueue(class, key, now_us)?;
                if new || merged.conflict.is_some() {
                    self.conflict(txn, g, class, key, ConflictOutcome::Queued, 0, None, now_us)?;
                }
            } else if let Some(first) = txn.dequeue(class, key)? {
                let resolution_ms = now_us.saturating_sub(first) / 1_000;
                self.conflict(
                    txn,
                    g,
                    class,
                    key,
                    ConflictOutcome::Resolved,
                    resolution_ms,
                    None,
                    now_us,
                )?;
            }
        } else if let Some(c) = &merged.conflict {
            let resolution_ms = (now_us / 1_000).saturating_sub(c.began_ms);
            self.conflict(
                txn,
                g,
                class,
                key,
                c.outcome,
                resolution_ms,
                Some(c),
                now_us,
            )?;
        }
        Ok(())
    }

    pub(super) fn conflict(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        outcome: ConflictOutcome,
        resolution_ms: u64,
        detail: Option<&parallax_core::entity::Conflict>,
        now_us: u64,
    ) -> Result<()> {
        let policy = self
            .config
            .classes
            .get(class)
            .map_or("unknown", |c| c.conflict.as_str());
        if outcome != ConflictOutcome::Merged {
            let record = ConflictRecord {
                id: g.next_conflict_id,
                ts_us: now_us,
                class: class.to_owned(),
                key: key.to_owned(),
                policy: policy.to_owned(),
                outcome: outcome.as_str().to_owned(),
                winner: detail.and_then(|c| c.winner.clone()),
                loser: detail.and_then(|c| c.loser.clone()),
                loser_value: detail
                    .and_then(|c| c.loser_value.as_ref())
                    .map(Value::to_string),
                resolution_ms,
            };
            g.next_conflict_id += 1;
            txn.record_conflict(&record, self.config.replication.conflict_log_max)?;
            g.changed = true;
        }
        g.events.push(Event::Conflict(ConflictEvent {
            ts_us: now_us,
            region: self.region.clone(),
            class: class.to_owned(),
            key: key.to_owned(),
            policy: policy.to_owned(),
            outcome: outcome.as_str().to_owned(),
            resolution_ms,
        }));
        Ok(())
    }
}
