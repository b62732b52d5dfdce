//! Entities and their conflict policies: local operations, the merge of two
//! versions, and conflict detection. Pure functions, no I/O.
//!
//! Every policy's state forms a join-semilattice: [`Entity::join`] is
//! commutative, associative and idempotent, so regions that have received the
//! same versions, in any order and with any duplicates, hold the same entity.
//! Replication ships whole entity versions and applies them with `join`.
//!
//! Delete semantics, per policy:
//! - `lww`: a delete is a tombstone stamped like a write; the higher stamp wins.
//! - `gcounter`/`pncounter`: a delete resets the counts it has observed;
//!   increments made concurrently in other regions survive it (add-wins reset).
//! - `orset`: a delete removes every member it has observed; concurrent adds
//!   survive (add-wins). An empty set reads as absent.
//! - `merge`: delete wins over concurrent writes; a write that has seen the
//!   delete starts a new object.
//! - `manual`: a delete is a version like any other; concurrent with a write,
//!   both become siblings for a person to resolve.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Hlc;
use crate::config::{ClassConfig, OpKind, Policy};
use crate::error::{Error, Result};
use crate::version::{Causality, VersionVector};

mod joins;

pub use joins::canonical;
use joins::*;

/// Format marker of encoded entities; bump and migrate when the layout changes.
pub const ENTITY_FORMAT: u8 = 1;

/// One version of an entity, with everything every region must agree on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Writes seen, per region.
    pub version: VersionVector,
    /// Stamp of the latest write.
    pub hlc: Hlc,
    /// Log sequence of that write in its origin region (`hlc.region`).
    pub origin_seq: u64,
    /// Ownership epoch under which the latest owned write was made.
    pub owner_epoch: u64,
    /// Home region given when the entity was created, if any.
    pub home: Option<String>,
    /// The policy's state.
    pub state: State,
}

/// Policy-specific state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum State {
    /// `lww`.
    Lww(LwwState),
    /// `gcounter` and `pncounter`.
    Counter(CounterState),
    /// `orset`.
    OrSet(OrSetState),
    /// `merge`.
    Merge(MergeState),
    /// `manual`.
    Manual(ManualState),
}

/// Last-writer-wins register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LwwState {
    /// Ownership epoch of the write: a write under a newer epoch beats one
    /// under an older epoch (fencing a region that lost ownership).
    pub epoch: u64,
    /// Stamp of the winning write.
    pub stamp: Hlc,
    /// The value; `None` is a tombstone.
    pub value: Option<Value>,
}

/// Per-region counts. `gcounter` uses only `p`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    /// Increments per region.
    pub p: BTreeMap<String, u64>,
    /// Decrements per region.
    pub n: BTreeMap<String, u64>,
    /// Increments observed by deletes.
    pub base_p: BTreeMap<String, u64>,
    /// Decrements observed by deletes.
    pub base_n: BTreeMap<String, u64>,
    /// Whether a delete ever happened.
    pub cleared: bool,
}

/// Add-wins observed-remove set without tombstones (ORSWOT): each member
/// carries the dots `(region, counter)` of the adds that are still live; the
/// entity's version vector is the set's causal context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrSetState {
    /// Canonical JSON of a member -> live dots.
    pub members: BTreeMap<String, BTreeSet<(String, u64)>>,
}

/// JSON object merged field by field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeState {
    /// Stamp of the latest delete (zero if never deleted). The higher
    /// incarnation wins outright: delete beats concurrent writes.
    pub incarnation: Hlc,
    /// Whether the object is deleted in this incarnation.
    pub deleted: bool,
    /// Field states.
    pub fields: BTreeMap<String, Field>,
}

/// State of one field of a `merge` object, by rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Field {
    /// Higher stamp wins.
    Lww {
        /// Stamp of the write.
        stamp: Hlc,
        /// The value.
        value: Value,
    },
    /// Largest number.
    Max(Value),
    /// Smallest number.
    Min(Value),
    /// Grow-only set of canonical JSON elements.
    Union(BTreeSet<String>),
    /// Per-region additions and subtractions.
    Sum {
        /// Additions per region.
        p: BTreeMap<String, u64>,
        /// Subtractions per region.
        n: BTreeMap<String, u64>,
    },
}

/// Multi-value register for manual reconciliation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManualState {
    /// Concurrent versions; more than one means the entity is conflicted.
    pub siblings: Vec<Sibling>,
}

/// One of the concurrent versions of a manual entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sibling {
    /// Version vector of the write that made it.
    pub version: VersionVector,
    /// Its stamp.
    pub stamp: Hlc,
    /// Its value; `None` for a delete.
    pub value: Option<Value>,
}

/// A local operation on an entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Write a value (lww, merge, manual).
    Put(Value),
    /// Delete.
    Delete,
    /// Add to a counter (negative decrements a pncounter).
    Incr(i64),
    /// Add a member to a set.
    Add(Value),
    /// Remove a member from a set.
    Remove(Value),
    /// Resolve a manual conflict with a value (`None` resolves to deleted).
    Resolve(Option<Value>),
}

impl Op {
    /// The kind of operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Put(_) => OpKind::Put,
            Op::Delete => OpKind::Delete,
            Op::Incr(_) => OpKind::Incr,
            Op::Add(_) => OpKind::Add,
            Op::Remove(_) => OpKind::Remove,
            Op::Resolve(_) => OpKind::Resolve,
        }
    }
}

/// What a local write needs to know.
#[derive(Clone, Debug)]
pub struct WriteContext<'a> {
    /// The writing region.
    pub region: &'a str,
    /// Class name, for errors.
    pub class_name: &'a str,
    /// Key, for errors.
    pub key: &'a str,
    /// The class's policies.
    pub class: &'a ClassConfig,
    /// Stamp of this write.
    pub stamp: Hlc,
    /// Its log sequence in this region.
    pub seq: u64,
    /// Current ownership epoch of the key's owner.
    pub owner_epoch: u64,
    /// Home region given with the request, for a new entity.
    pub home: Option<String>,
}

/// How a detected conflict was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictOutcome {
    /// LWW: the higher stamp won; the loser is recorded.
    LwwWinner,
    /// LWW: the write under the newer ownership epoch won.
    Fenced,
    /// A CRDT or field merge combined both versions; nothing lost.
    Merged,
    /// Manual: the versions became siblings in the reconciliation queue.
    Queued,
    /// Manual: a person resolved the siblings.
    Resolved,
}

impl ConflictOutcome {
    /// The name used in telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictOutcome::LwwWinner => "lww_winner",
            ConflictOutcome::Fenced => "fenced",
            ConflictOutcome::Merged => "merged",
            ConflictOutcome::Queued => "queued",
            ConflictOutcome::Resolved => "resolved",
        }
    }
}

/// A conflict found while merging two versions.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// How it was settled.
    pub outcome: ConflictOutcome,
    /// Stamp of the version that won (LWW).
    pub winner: Option<Hlc>,
    /// Stamp of the version that lost (LWW).
    pub loser: Option<Hlc>,
    /// The value that lost (LWW), kept so nothing disappears silently.
    pub loser_value: Option<Value>,
    /// Wall time (ms) at which both versions existed: the later of the two writes.
    pub began_ms: u64,
}

/// Result of merging a remote version into a local one.
#[derive(Clone, Debug)]
pub struct Merged {
    /// The joined entity.
    pub entity: Entity,
    /// How the versions related.
    pub causality: Causality,
    /// Set when they were concurrent.
    pub conflict: Option<Conflict>,
}

impl Entity {
    /// Encodes with a format marker.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTITY_FORMAT];
        // Serialising plain data into a Vec cannot fail.
        rmp_serde::encode::write(&mut out, self).expect("entity encodes");
        out
    }

    /// Decodes bytes written by [`Entity::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Entity> {
        match bytes.split_first() {
            Some((&ENTITY_FORMAT, rest)) => rmp_serde::from_slice(rest)
                .map_err(|e| Error::Storage(format!("undecodable entity: {e}"))),
            Some((v, _)) => Err(Error::Storage(format!(
                "entity format {v} is newer than this build understands ({ENTITY_FORMAT}); upgrade parallax"
            ))),
            None => Err(Error::Storage("empty entity record".into())),
        }
    }

    /// Whether the entity exists (is not deleted or empty).
    pub fn exists(&self) -> bool {
        match &self.state {
            State::Lww(s) => s.value.is_some(),
            State::Counter(c) => !c.is_deleted(),
            State::OrSet(s) => !s.members.is_empty(),
            State::Merge(m) => !m.deleted,
            State::Manual(m) => m.siblings.iter().any(|s| s.value.is_some()),
        }
    }

    /// Whether a manual entity has unresolved siblings.
    pub fn is_conflicted(&self) -> bool {
        matches!(&self.state, State::Manual(m) if m.siblings.len() > 1)
    }

    /// The merged value a read returns; `None` when deleted or absent, and
    /// `Value::Null` for a conflicted manual entity (read its siblings).
    pub fn value(&self) -> Option<Value> {
        if !self.exists() {
            return None;
        }
        Some(match &self.state {
            State::Lww(s) => s.value.clone().unwrap_or(Value::Null),
            State::Counter(c) => c.value_json(),
            State::OrSet(s) => Value::Array(s.members.keys().map(|m| parse_canonical(m)).collect()),
            State::Merge(m) => Value::Object(
                m.fields
                    .iter()
                    .map(|(name, field)| (name.clone(), field.value()))
                    .collect(),
            ),
            State::Manual(m) => match m.siblings.as_slice() {
                [only] => only.value.clone().unwrap_or(Value::Null),
                _ => Value::Null,
            },
        })
    }

    /// The siblings of a manual entity (empty for other policies).
    pub fn siblings(&self) -> &[Sibling] {
        match &self.state {
            State::Manual(m) => &m.siblings,
            _ => &[],
        }
    }

    /// The lattice join of two versions of the same entity.
    pub fn join(&self, other: &Entity) -> Result<Entity> {
        let mut version = self.version.clone();
        version.join(&other.version);
        let (hlc, origin_seq) = if self.hlc >= other.hlc {
            (self.hlc.clone(), self.origin_seq)
        } else {
            (other.hlc.clone(), other.origin_seq)
        };
        let home = match (&self.home, &other.home) {
            (Some(a), Some(b)) => Some(a.min(b).clone()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let state = match (&self.state, &other.state) {
            (State::Lww(a), State::Lww(b)) => State::Lww(lww_winner(a, b).clone()),
            (State::Counter(a), State::Counter(b)) => State::Counter(a.join(b)),
            (State::OrSet(a), State::OrSet(b)) => {
                State::OrSet(a.join(&self.version, b, &other.version))
            }
            (State::Merge(a), State::Merge(b)) => State::Merge(a.join(b)),
            (State::Manual(a), State::Manual(b)) => State::Manual(a.join(b)),
            (a, b) => {
                return Err(Error::Internal(format!(
                    "cannot merge a {} version with a {} version of the same entity: was the class's \
                     conflict policy changed in the config? Policies are fixed once a class holds data",
                    a.kind(),
                    b.kind()
                )));
            }
        };
        Ok(Entity {
            version,
            hlc,
            origin_seq,
            owner_epoch: self.owner_epoch.max(other.owner_epoch),
            home,
            state,
        })
    }

    /// Merges a remote version into this (local) one, detecting conflicts.
    pub fn merge(&self, remote: &Entity) -> Result<Merged> {
        let causality = self.version.compare(&remote.version);
        let entity = self.join(remote)?;
        let conflict = (causality == Causality::Concurrent).then(|| {
            let began_ms = self.hlc.wall_ms.max(remote.hlc.wall_ms);
            match (&self.state, &remote.state) {
                (State::Lww(a), State::Lww(b)) => {
                    let winner = lww_winner(a, b);
                    let loser = if std::ptr::eq(winner, a) { b } else { a };
                    Conflict {
                        outcome: if a.epoch != b.epoch {
                            ConflictOutcome::Fenced
                        } else {
                            ConflictOutcome::LwwWinner
                        },
                        winner: Some(winner.stamp.clone()),
                        loser: Some(loser.stamp.clone()),
                        loser_value: loser.value.clone(),
                        began_ms,
                    }
                }
                (State::Manual(_), _) if entity.is_conflicted() => Conflict {
                    outcome: ConflictOutcome::Queued,
                    winner: None,
                    loser: None,
                    loser_value: None,
                    began_ms,
                },
                _ => Conflict {
                    outcome: ConflictOutcome::Merged,
                    winner: None,
                    loser: None,
                    loser_value: None,
                    began_ms,
                },
            }
        });
        Ok(Merged {
            entity,
            causality,
            conflict,
        })
    }

    /// Applies a local operation to `existing` (or to nothing, creating the entity).
    pub fn apply_local(
        existing: Option<&Entity>,
        op: &Op,
        ctx: &WriteContext<'_>,
    ) -> Result<Entity> {
        let policy = ctx.class.conflict;
        if !policy.accepts(op.kind()) {
            return Err(wrong_op(ctx, op.kind()));
        }
        let exists = existing.is_some_and(Entity::exists);
        let not_found = || Error::NotFound {
            class: ctx.class_name.to_owned(),
            key: ctx.key.to_owned(),
            region: ctx.region.to_owned(),
        };
        let mut version = existing.map(|e| e.version.clone()).unwrap_or_default();
        let counter = version.increment(ctx.region);
        let state = match (policy, existing.map(|e| &e.state)) {
            (Policy::Lww, prior) => {
                let prior_epoch = match prior {
                    Some(State::Lww(s)) => s.epoch,
                    _ => 0,
                };
                let value = match op {
                    Op::Put(v) => Some(v.clone()),
                    Op::Delete if exists => None,
                    Op::Delete => return Err(not_found()),
                    _ => return Err(wrong_op(ctx, op.kind())),
                };
                State::Lww(LwwState {
                    epoch: prior_epoch.max(ctx.owner_epoch),
                    stamp: ctx.stamp.clone(),
                    value,
                })
            }
            (Policy::Gcounter | Policy::Pncounter, prior) => {
                let mut c = match prior {
                    Some(State::Counter(c)) => c.clone(),
                    _ => CounterState::default(),
                };
                match op {
                    Op::Incr(by) if *by < 0 && policy == Policy::Gcounter => {
                        return Err(Error::BadRequest(format!(
                            "class `{}` is a gcounter and cannot go down (by = {by}). Fix: use a \
                             non-negative `by`, or make the class a pncounter",
                            ctx.class_name
                        )));
                    }
                    Op::Incr(by) => {
                        let side = if *by >= 0 { &mut c.p } else { &mut c.n };
                        let slot = side.entry(ctx.region.to_owned()).or_insert(0);
                        *slot = slot.checked_add(by.unsigned_abs()).ok_or_else(|| {
                            Error::BadRequest(format!(
                                "incrementing `{}/{}` by {by} overflows the counter",
                                ctx.class_name, ctx.key
                            ))
                        })?;
                        if i64::try_from(c.value_i128()).is_err() {
                            return Err(Error::BadRequest(format!(
                                "incrementing `{}/{}` by {by} takes the counter out of the 64-bit range",
                                ctx.class_name, ctx.key
                            )));
                        }
                    }
                    Op::Delete if exists => {
                        c.base_p = c.p.clone();
                        c.base_n = c.n.clone();
                        c.cleared = true;
                    }
                    Op::Delete => return Err(not_found()),
                    _ => return Err(wrong_op(ctx, op.kind())),
                }
                State::Counter(c)
            }
            (Policy::Orset, prior) => {
                let mut s = match prior {
                    Some(State::OrSet(s)) => s.clone(),
                    _ => OrSetState::default(),
                };
                match op {
                    Op::Add(m) => {
                        let dots = BTreeSet::from([(ctx.region.to_owned(), counter)]);
                        s.members.insert(canonical(m), dots);
                    }
                    Op::Remove(m) => {
                        s.members.remove(&canonical(m));
                    }
                    Op::Delete if exists => s.members.clear(),
                    Op::Delete => return Err(not_found()),
                    _ => return Err(wrong_op(ctx, op.kind())),
                }
                State::OrSet(s)
            }
            (Policy::Merge, prior) => {
                let mut m = match prior {
                    Some(State::Merge(m)) => m.clone(),
                    _ => MergeState {
                        incarnation: Hlc::zero(),
                        deleted: false,
                        fields: BTreeMap::new(),
                    },
                };
                match op {
                    Op::Put(Value::Object(obj)) => {
                        if m.deleted {
                            m.deleted = false;
                            m.fields.clear();
                        }
                        for (name, v) in obj {
                            let rule = ctx
                                .class
                                .fields
                                .get(name)
                                .copied()
                                .unwrap_or(ctx.class.default_field_rule);
                            let field =
                                Field::write(m.fields.get(name), rule, v, ctx).map_err(|why| {
                                    Error::BadRequest(format!(
                                        "field `{name}` of class `{}` uses the `{}` rule and {why}",
                                        ctx.class_name,
                                        rule_name(rule)
                                    ))
                                })?;
                            m.fields.insert(name.clone(), field);
                        }
                    }
                    Op::Put(other) => {
                        return Err(Error::BadRequest(format!(
                            "class `{}` merges JSON objects field by field, but the body is {}. Fix: send an object like {{\"field\": value}}",
                            ctx.class_name,
                            json_kind(other)
                        )));
                    }
                    Op::Delete if exists => {
                        m.incarnation = ctx.stamp.clone();
                        m.deleted = true;
                        m.fields.clear();
                    }
                    Op::Delete => return Err(not_found()),
                    _ => return Err(wrong_op(ctx, op.kind())),
                }
                State::Merge(m)
            }
            (Policy::Manual, prior) => {
                let siblings = match prior {
                    Some(State::Manual(m)) => m.siblings.len(),
                    _ => 0,
                };
                let value = match op {
                    Op::Put(_) | Op::Delete if siblings > 1 => {
                        return Err(Error::Conflicted {
                            class: ctx.class_name.to_owned(),
                            key: ctx.key.to_owned(),
                            siblings,
                        });
                    }
                    Op::Put(v) => Some(v.clone()),
                    Op::Delete if exists => None,
                    Op::Delete => return Err(not_found()),
                    Op::Resolve(_) if siblings <= 1 && !exists => return Err(not_found()),
                    Op::Resolve(_) if siblings <= 1 => {
                        return Err(Error::NotConflicted {
                            class: ctx.class_name.to_owned(),
                            key: ctx.key.to_owned(),
                            region: ctx.region.to_owned(),
                        });
                    }
                    Op::Resolve(v) => v.clone(),
                    _ => return Err(wrong_op(ctx, op.kind())),
                };
                State::Manual(ManualState {
                    siblings: vec![Sibling {
                        version: version.clone(),
                        stamp: ctx.stamp.clone(),
                        value,
                    }],
                })
            }
        };
        Ok(Entity {
            version,
            hlc: ctx.stamp.clone(),
            origin_seq: ctx.seq,
            owner_epoch: existing.map_or(0, |e| e.owner_epoch).max(ctx.owner_epoch),
            home: existing
                .and_then(|e| e.home.clone())
                .or_else(|| ctx.home.clone()),
            state,
        })
    }
}

impl Entity {
    /// The same version (version vector and stamp) with different content:
    /// what a flipped bit on disk looks like. For fault-injection drills.
    pub fn corrupted(&self) -> Entity {
        let mut e = self.clone();
        match &mut e.state {
            State::Lww(s) => s.value = Some(serde_json::json!({ "corrupted": s.value.take() })),
            State::Counter(c) => *c.p.entry(self.hlc.region.clone()).or_insert(0) += 1_000,
            State::OrSet(s) => {
                s.members.insert(
                    canonical(&Value::from("corrupted")),
                    BTreeSet::from([(self.hlc.region.clone(), 0)]),
                );
            }
            State::Merge(m) => {
                m.fields.insert(
                    "corrupted".into(),
                    Field::Lww {
                        stamp: self.hlc.clone(),
                        value: Value::Bool(true),
                    },
                );
            }
            State::Manual(m) => {
                for s in &mut m.siblings {
                    s.value = Some(serde_json::json!({ "corrupted": s.value.take() }));
                }
            }
        }
        e
    }

    /// An older version this one dominates (its latest write undone, an hour
    /// earlier): what a restore from an old backup looks like. For drills.
    pub fn rolled_back(&self) -> Entity {
        let mut e = self.clone();
        let origin = self.hlc.region.clone();
        if let Some(c) = e.version.0.get_mut(&origin) {
            *c = c.saturating_sub(1);
        }
        e.hlc.wall_ms = e.hlc.wall_ms.saturating_sub(3_600_000);
        e.origin_seq = e.origin_seq.saturating_sub(1);
        match &mut e.state {
            State::Lww(s) => s.stamp = e.hlc.clone(),
            State::Counter(c) => {
                if let Some(p) = c.p.get_mut(&origin) {
                    *p = p.saturating_sub(1);
                }
            }
            State::Manual(m) => {
                for s in &mut m.siblings {
                    s.version = e.version.clone();
                    s.stamp = e.hlc.clone();
                }
            }
            State::OrSet(_) | State::Merge(_) => {}
        }
        e
    }
}

impl State {
    /// Name of the state's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            State::Lww(_) => "lww",
            State::Counter(_) => "counter",
            State::OrSet(_) => "orset",
            State::Merge(_) => "merge",
            State::Manual(_) => "manual",
        }
    }
}

#[cfg(test)]
mod tests;
