//! The join of each policy's state, and the helpers of local operations:
//! what makes every state a join-semilattice (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;
use crate::config::{FieldRule, OpKind};
use crate::error::Error;

pub(super) fn wrong_op(ctx: &WriteContext<'_>, op: OpKind) -> Error {
    Error::WrongOp {
        class: ctx.class_name.to_owned(),
        policy: ctx.class.conflict.as_str().to_owned(),
        op: op.as_str().to_owned(),
        hint: ctx.class.conflict.ops_hint().to_owned(),
    }
}

pub(super) fn lww_winner<'a>(a: &'a LwwState, b: &'a LwwState) -> &'a LwwState {
    let key = |s: &LwwState| (s.epoch, s.stamp.clone());
    match key(a).cmp(&key(b)) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        // Equal stamps mean the same write unless a copy was corrupted; pick
        // by content so every region picks the same one.
        std::cmp::Ordering::Equal => {
            if canonical_opt(&a.value) >= canonical_opt(&b.value) {
                a
            } else {
                b
            }
        }
    }
}

impl CounterState {
    pub(super) fn is_deleted(&self) -> bool {
        self.cleared && maps_equal(&self.p, &self.base_p) && maps_equal(&self.n, &self.base_n)
    }

    pub(super) fn value_i128(&self) -> i128 {
        let sum = |m: &BTreeMap<String, u64>| m.values().map(|&v| v as i128).sum::<i128>();
        sum(&self.p) - sum(&self.base_p) - (sum(&self.n) - sum(&self.base_n))
    }

    pub(super) fn value_json(&self) -> Value {
        let v = self.value_i128();
        if v >= 0 {
            Value::from(v as u64)
        } else {
            Value::from(v as i64)
        }
    }

    pub(super) fn join(&self, other: &CounterState) -> CounterState {
        CounterState {
            p: max_join(&self.p, &other.p),
            n: max_join(&self.n, &other.n),
            base_p: max_join(&self.base_p, &other.base_p),
            base_n: max_join(&self.base_n, &other.base_n),
            cleared: self.cleared || other.cleared,
        }
    }
}

pub(super) fn maps_equal(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> bool {
    a.iter().all(|(k, v)| b.get(k).copied().unwrap_or(0) == *v)
        && b.iter().all(|(k, v)| a.get(k).copied().unwrap_or(0) == *v)
}

pub(super) fn max_join(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, &v) in b {
        let slot = out.entry(k.clone()).or_insert(0);
        *slot = (*slot).max(v);
    }
    out
}

impl OrSetState {
    pub(super) fn join(
        &self,
        self_ctx: &VersionVector,
        other: &OrSetState,
        other_ctx: &VersionVector,
    ) -> OrSetState {
        let mut members = BTreeMap::new();
        let names: BTreeSet<&String> = self.members.keys().chain(other.members.keys()).collect();
        let empty = BTreeSet::new();
        for name in names {
            let mine = self.members.get(name).unwrap_or(&empty);
            let theirs = other.members.get(name).unwrap_or(&empty);
            let keep: BTreeSet<(String, u64)> = mine
                .iter()
                .filter(|d| theirs.contains(*d) || !other_ctx.contains(&d.0, d.1))
                .chain(
                    theirs
                        .iter()
                        .filter(|d| !mine.contains(*d) && !self_ctx.contains(&d.0, d.1)),
                )
                .cloned()
                .collect();
            if !keep.is_empty() {
                members.insert(name.clone(), keep);
            }
        }
        OrSetState { members }
    }
}

impl MergeState {
    pub(super) fn join(&self, other: &MergeState) -> MergeState {
        match self.incarnation.cmp(&other.incarnation) {
            std::cmp::Ordering::Greater => self.clone(),
            std::cmp::Ordering::Less => other.clone(),
            std::cmp::Ordering::Equal => {
                let mut fields = self.fields.clone();
                for (name, theirs) in &other.fields {
                    let joined = match fields.get(name) {
                        Some(mine) => mine.join(theirs),
                        None => theirs.clone(),
                    };
                    fields.insert(name.clone(), joined);
                }
                MergeState {
                    incarnation: self.incarnation.clone(),
                    deleted: self.deleted && other.deleted,
                    fields,
                }
            }
        }
    }
}

impl Field {
    pub(super) fn write(
        prior: Option<&Field>,
        rule: FieldRule,
        v: &Value,
        ctx: &WriteContext<'_>,
    ) -> Result<Field, String> {
        Ok(match rule {
            FieldRule::Lww => Field::Lww {
                stamp: ctx.stamp.clone(),
                value: v.clone(),
            },
            FieldRule::Max | FieldRule::Min => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| format!("takes a number, not {}", json_kind(v)))?;
                let keep_prior = match (rule, prior) {
                    (FieldRule::Max, Some(Field::Max(p))) => p.as_f64().is_some_and(|p| p >= x),
                    (FieldRule::Min, Some(Field::Min(p))) => p.as_f64().is_some_and(|p| p <= x),
                    _ => false,
                };
                let value = if keep_prior {
                    prior.map(Field::value).unwrap_or_default()
                } else {
                    v.clone()
                };
                if rule == FieldRule::Max {
                    Field::Max(value)
                } else {
                    Field::Min(value)
                }
            }
            FieldRule::Union => {
                let Value::Array(items) = v else {
                    return Err(format!("takes an array, not {}", json_kind(v)));
                };
                let mut set = match prior {
                    Some(Field::Union(s)) => s.clone(),
                    _ => BTreeSet::new(),
                };
                set.extend(items.iter().map(canonical));
                Field::Union(set)
            }
            FieldRule::Sum => {
                let target = v
                    .as_i64()
                    .ok_or_else(|| format!("takes an integer, not {}", json_kind(v)))?;
                let (mut p, mut n) = match prior {
                    Some(Field::Sum { p, n }) => (p.clone(), n.clone()),
                    _ => (BTreeMap::new(), BTreeMap::new()),
                };
                let current = sum_value(&p, &n);
                let delta = target as i128 - current;
                let side = if delta >= 0 { &mut p } else { &mut n };
                let slot = side.entry(ctx.region.to_owned()).or_insert(0);
                *slot = u64::try_from(*slot as i128 + delta.abs())
                    .map_err(|_| "overflows".to_owned())?;
                Field::Sum { p, n }
            }
        })
    }

    pub(super) fn value(&self) -> Value {
        match self {
            Field::Lww { value, .. } | Field::Max(value) | Field::Min(value) => value.clone(),
            Field::Union(set) => Value::Array(set.iter().map(|m| parse_canonical(m)).collect()),
            Field::Sum { p, n } => Value::from(sum_value(p, n) as i64),
        }
    }

    pub(super) fn tag(&self) -> u8 {
        match self {
            Field::Lww { .. } => 0,
            Field::Max(_) => 1,
            Field::Min(_) => 2,
            Field::Union(_) => 3,
            Field::Sum { .. } => 4,
        }
    }

    pub(super) fn join(&self, other: &Field) -> Field {
        match (self, other) {
            (
                Field::Lww {
                    stamp: a,
                    value: va,
                },
                Field::Lww {
                    stamp: b,
                    value: vb,
                },
            ) => {
                if (a, canonical(va)) >= (b, canonical(vb)) {
                    self.clone()
                } else {
                    other.clone()
                }
            }
            (Field::Max(a), Field::Max(b)) => {
                if num_key(a) >= num_key(b) {
                    self.clone()
                } else {
                    other.clone()
                }
            }
            (Field::Min(a), Field::Min(b)) => {
                if num_key(a) <= num_key(b) {
                    self.clone()
                } else {
                    other.clone()
                }
            }
            (Field::Union(a), Field::Union(b)) => Field::Union(a.union(b).cloned().collect()),
            (Field::Sum { p: pa, n: na }, Field::Sum { p: pb, n: nb }) => Field::Sum {
                p: max_join(pa, pb),
                n: max_join(na, nb),
            },
            // The field's rule changed in the config: keep the state of the
            // later rule in declaration order, the same choice everywhere.
            _ => {
                if self.tag() >= other.tag() {
                    self.clone()
                } else {
                    other.clone()
                }
            }
        }
    }
}

pub(super) fn num_key(v: &Value) -> (OrderedF64, String) {
    (OrderedF64(v.as_f64().unwrap_or(f64::NAN)), canonical(v))
}

#[derive(PartialEq, PartialOrd)]
pub(super) struct OrderedF64(f64);

pub(super) fn sum_value(p: &BTreeMap<String, u64>, n: &BTreeMap<String, u64>) -> i128 {
    p.values().map(|&v| v as i128).sum::<i128>() - n.values().map(|&v| v as i128).sum::<i128>()
}

impl ManualState {
    pub(super) fn join(&self, other: &ManualState) -> ManualState {
        let mut all: Vec<&Sibling> = self.siblings.iter().chain(other.siblings.iter()).collect();
        // Order by version then by content so duplicates sit together and the
        // result is the same whichever side came first.
        all.sort_by(|a, b| {
            (
                a.version.0.iter().collect::<Vec<_>>(),
                &a.stamp,
                canonical_opt(&a.value),
            )
                .cmp(&(
                    b.version.0.iter().collect::<Vec<_>>(),
                    &b.stamp,
                    canonical_opt(&b.value),
                ))
        });
        let mut siblings: Vec<Sibling> = Vec::new();
        for s in &all {
            let dominated = all
                .iter()
                .any(|t| t.version.compare(&s.version) == Causality::After);
            let duplicate = siblings
                .iter()
                .any(|kept| kept.version.compare(&s.version) == Causality::Equal);
            if !dominated && !duplicate {
                siblings.push((*s).clone());
            }
        }
        ManualState { siblings }
    }
}

/// Canonical JSON text of a value (object keys sorted).
pub fn canonical(v: &Value) -> String {
    v.to_string()
}

pub(super) fn canonical_opt(v: &Option<Value>) -> String {
    v.as_ref().map(canonical).unwrap_or_default()
}

pub(super) fn parse_canonical(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn rule_name(rule: FieldRule) -> &'static str {
    match rule {
        FieldRule::Lww => "lww",
        FieldRule::Max => "max",
        FieldRule::Min => "min",
        FieldRule::Union => "union",
        FieldRule::Sum => "sum",
    }
}
