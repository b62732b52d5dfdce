use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::clock::HlcClock;
use crate::config::{ClassConfig, FieldRule, Ownership, Policy, Rollout};

fn class(policy: Policy) -> ClassConfig {
    let mut fields = BTreeMap::new();
    if policy == Policy::Merge {
        fields.insert("name".to_owned(), FieldRule::Lww);
        fields.insert("high".to_owned(), FieldRule::Max);
        fields.insert("low".to_owned(), FieldRule::Min);
        fields.insert("tags".to_owned(), FieldRule::Union);
        fields.insert("views".to_owned(), FieldRule::Sum);
    }
    ClassConfig {
        conflict: policy,
        ownership: Ownership::Global,
        rollout: Rollout::ActiveActive,
        critical: false,
        primary: None,
        limited_ops: vec![],
        foreign_writes: Default::default(),
        home_prefixes: BTreeMap::new(),
        home_tenants: BTreeMap::new(),
        tenant_separator: ":".into(),
        default_home: None,
        fields,
        default_field_rule: FieldRule::Lww,
        bounded_staleness_ms: 1000,
    }
}

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

struct Replica {
    region: &'static str,
    entity: Option<Entity>,
    clock: HlcClock,
    seq: u64,
}

#[derive(Clone, Debug)]
enum Step {
    Local { replica: usize, op: Op, wall: u64 },
    Sync { from: usize, to: usize },
}

fn op_for(policy: Policy) -> BoxedStrategy<Op> {
    let member = prop_oneof![Just(json!("a")), Just(json!("b")), Just(json!(3))];
    match policy {
        Policy::Lww => prop_oneof![
            4 => (0u32..50).prop_map(|v| Op::Put(json!({ "v": v }))),
            1 => Just(Op::Delete),
        ]
        .boxed(),
        Policy::Gcounter => prop_oneof![
            5 => (0i64..10).prop_map(Op::Incr),
            1 => Just(Op::Delete),
        ]
        .boxed(),
        Policy::Pncounter => prop_oneof![
            5 => (-10i64..10).prop_map(Op::Incr),
            1 => Just(Op::Delete),
        ]
        .boxed(),
        Policy::Orset => prop_oneof![
            3 => member.clone().prop_map(Op::Add),
            2 => member.prop_map(Op::Remove),
            1 => Just(Op::Delete),
        ]
        .boxed(),
        Policy::Merge => prop_oneof![
            5 => (0u32..4, -5i64..20, prop::collection::vec("[xyz]", 0..3))
                .prop_map(|(name, n, tags)| Op::Put(json!({
                    "name": format!("n{name}"), "high": n, "low": n, "tags": tags, "views": n,
                }))),
            1 => Just(Op::Delete),
        ]
        .boxed(),
        Policy::Manual => prop_oneof![
            4 => (0u32..50).prop_map(|v| Op::Put(json!(v))),
            1 => Just(Op::Delete),
            2 => (0u32..50).prop_map(|v| Op::Resolve(Some(json!(v)))),
        ]
        .boxed(),
    }
}

fn steps(policy: Policy) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0usize..3, op_for(policy), 0u64..40).prop_map(|(replica, op, wall)| Step::Local { replica, op, wall }),
        2 => (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    prop::collection::vec(step, 1..40)
}

/// Runs a history; returns every version produced and the sum of the
/// increments that were accepted.
fn run(policy: Policy, steps: &[Step]) -> (Vec<Entity>, i64, Vec<Replica>) {
    let class = class(policy);
    let mut replicas: Vec<Replica> = REGIONS
        .iter()
        .map(|r| Replica {
            region: r,
            entity: None,
            clock: HlcClock::new(*r, 1_000_000),
            seq: 0,
        })
        .collect();
    let mut seen = Vec::new();
    let mut increments = 0i64;
    let mut wall = 1_000u64;
    for step in steps {
        match step {
            Step::Local {
                replica,
                op,
                wall: dt,
            } => {
                wall += dt;
                let r = &mut replicas[*replica];
                let stamp = r.clock.now(wall);
                let ctx = WriteContext {
                    region: r.region,
                    class_name: "c",
                    key: "k",
                    class: &class,
                    stamp,
                    seq: r.seq + 1,
                    owner_epoch: 0,
                    home: None,
                };
                if let Ok(e) = Entity::apply_local(r.entity.as_ref(), op, &ctx) {
                    r.seq += 1;
                    if let Op::Incr(by) = op {
                        increments += by;
                    }
                    seen.push(e.clone());
                    r.entity = Some(e);
                }
            }
            Step::Sync { from, to } => {
                let Some(remote) = replicas[*from].entity.clone() else {
                    continue;
                };
                let r = &mut replicas[*to];
                r.clock.observe(&remote.hlc, wall).unwrap();
                let merged = match &r.entity {
                    Some(local) => local.merge(&remote).unwrap().entity,
                    None => remote,
                };
                seen.push(merged.clone());
                r.entity = Some(merged);
            }
        }
    }
    (seen, increments, replicas)
}

fn join_all(order: &[&Entity]) -> Entity {
    let mut acc = order[0].clone();
    for e in &order[1..] {
        acc = acc.join(e).unwrap();
    }
    acc
}

fn policies() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// join is commutative, associative and idempotent on every version a
    /// history can produce, for every policy.
    #[test]
    fn merge_is_commutative_associative_idempotent(
        (policy, steps) in policies().prop_flat_map(|p| (Just(p), steps(p))),
        picks in prop::collection::vec((0usize..1000, 0usize..1000, 0usize..1000), 1..8),
    ) {
        let (seen, _, _) = run(policy, &steps);
        prop_assume!(!seen.is_empty());
        for (i, j, k) in picks {
            let (a, b, c) = (&seen[i % seen.len()], &seen[j % seen.len()], &seen[k % seen.len()]);
            prop_assert_eq!(a.join(a).unwrap(), a.clone(), "idempotent ({})", policy);
            prop_assert_eq!(a.join(b).unwrap(), b.join(a).unwrap(), "commutative ({})", policy);
            prop_assert_eq!(
                a.join(b).unwrap().join(c).unwrap(),
                a.join(&b.join(c).unwrap()).unwrap(),
                "associative ({})", policy
            );
        }
    }

    /// Any delivery order of the same versions, with duplicates, gives the
    /// same state; and for counters with no deletes the value is exactly
    /// the sum of the accepted increments.
    #[test]
    fn any_delivery_order_converges(
        (policy, steps) in policies().prop_flat_map(|p| (Just(p), steps(p))),
        orders in prop::collection::vec(prop::collection::vec(0usize..1000, 1..60), 2..5),
    ) {
        let (seen, increments, replicas) = run(policy, &steps);
        prop_assume!(!seen.is_empty());
        let everything = join_all(&seen.iter().collect::<Vec<_>>());
        for order in orders {
            // Every version at least once, then random duplicates, in a shuffled order.
            let mut idx: Vec<usize> = (0..seen.len()).collect();
            idx.extend(order.iter().map(|i| i % seen.len()));
            let mut keyed: Vec<(usize, usize)> = idx.iter().enumerate()
                .map(|(n, i)| (order[n % order.len()].wrapping_mul(2654435761) ^ n, *i)).collect();
            keyed.sort();
            let delivered: Vec<&Entity> = keyed.iter().map(|(_, i)| &seen[*i]).collect();
            prop_assert_eq!(join_all(&delivered), everything.clone(), "{}", policy);
        }
        let deletes = steps.iter().any(|s| matches!(s, Step::Local { op: Op::Delete, .. }));
        if matches!(policy, Policy::Gcounter | Policy::Pncounter) && !deletes {
            prop_assert_eq!(everything.value(), Some(Value::from(increments)));
        }
        // Replicas that exchanged everything agree.
        let finals: Vec<&Entity> = replicas.iter().filter_map(|r| r.entity.as_ref()).collect();
        if !finals.is_empty() {
            let full = join_all(&finals);
            prop_assert_eq!(full, everything);
        }
    }
}

fn ctx<'a>(class: &'a ClassConfig, region: &'a str, wall: u64, seq: u64) -> WriteContext<'a> {
    WriteContext {
        region,
        class_name: "c",
        key: "k",
        class,
        stamp: Hlc {
            wall_ms: wall,
            logical: 0,
            region: region.to_owned(),
        },
        seq,
        owner_epoch: 0,
        home: None,
    }
}

#[test]
fn lww_concurrent_writes_record_the_loser() {
    let c = class(Policy::Lww);
    let a = Entity::apply_local(None, &Op::Put(json!("from-eu")), &ctx(&c, "eu", 10, 1)).unwrap();
    let b = Entity::apply_local(None, &Op::Put(json!("from-us")), &ctx(&c, "us", 11, 1)).unwrap();
    let m = a.merge(&b).unwrap();
    assert_eq!(m.causality, Causality::Concurrent);
    let conflict = m.conflict.unwrap();
    assert_eq!(conflict.outcome, ConflictOutcome::LwwWinner);
    assert_eq!(conflict.loser_value, Some(json!("from-eu")));
    assert_eq!(m.entity.value(), Some(json!("from-us")));
    // A causal successor is not a conflict.
    let c2 = Entity::apply_local(
        Some(&m.entity),
        &Op::Put(json!("later")),
        &ctx(&c, "eu", 12, 2),
    )
    .unwrap();
    assert!(m.entity.merge(&c2).unwrap().conflict.is_none());
}

#[test]
fn lww_newer_owner_epoch_fences_a_higher_stamp() {
    let c = class(Policy::Lww);
    let mut old = ctx(&c, "eu", 50, 1);
    old.owner_epoch = 1;
    let mut new = ctx(&c, "us", 20, 1);
    new.owner_epoch = 2;
    let a = Entity::apply_local(None, &Op::Put(json!("stale owner")), &old).unwrap();
    let b = Entity::apply_local(None, &Op::Put(json!("new owner")), &new).unwrap();
    let m = a.merge(&b).unwrap();
    assert_eq!(m.entity.value(), Some(json!("new owner")));
    assert_eq!(m.conflict.unwrap().outcome, ConflictOutcome::Fenced);
}

#[test]
fn manual_conflict_keeps_siblings_until_resolved() {
    let c = class(Policy::Manual);
    let a = Entity::apply_local(None, &Op::Put(json!(100)), &ctx(&c, "eu", 10, 1)).unwrap();
    let b = Entity::apply_local(None, &Op::Put(json!(70)), &ctx(&c, "us", 11, 1)).unwrap();
    let m = a.merge(&b).unwrap();
    assert_eq!(
        m.conflict.as_ref().unwrap().outcome,
        ConflictOutcome::Queued
    );
    assert!(m.entity.is_conflicted());
    assert_eq!(m.entity.siblings().len(), 2);
    assert_eq!(m.entity.value(), Some(Value::Null));
    let put = Entity::apply_local(Some(&m.entity), &Op::Put(json!(1)), &ctx(&c, "eu", 12, 2));
    assert!(matches!(put, Err(Error::Conflicted { siblings: 2, .. })));
    let resolved = Entity::apply_local(
        Some(&m.entity),
        &Op::Resolve(Some(json!(170))),
        &ctx(&c, "eu", 12, 2),
    )
    .unwrap();
    assert!(!resolved.is_conflicted());
    // The resolution dominates both siblings wherever it lands.
    let elsewhere = b.merge(&a).unwrap().entity.merge(&resolved).unwrap().entity;
    assert_eq!(elsewhere.value(), Some(json!(170)));
    assert!(!elsewhere.is_conflicted());
}

#[test]
fn orset_add_wins_over_concurrent_remove() {
    let c = class(Policy::Orset);
    let base = Entity::apply_local(None, &Op::Add(json!("x")), &ctx(&c, "eu", 10, 1)).unwrap();
    let removed =
        Entity::apply_local(Some(&base), &Op::Remove(json!("x")), &ctx(&c, "eu", 11, 2)).unwrap();
    let us = base;
    let readded =
        Entity::apply_local(Some(&us), &Op::Add(json!("x")), &ctx(&c, "us", 12, 1)).unwrap();
    let m = removed.merge(&readded).unwrap().entity;
    assert_eq!(m.value(), Some(json!(["x"])));
    // A remove that saw the add does remove it.
    let gone =
        Entity::apply_local(Some(&m), &Op::Remove(json!("x")), &ctx(&c, "eu", 13, 3)).unwrap();
    assert!(!gone.exists());
    assert!(!readded.merge(&gone).unwrap().entity.exists());
}

#[test]
fn counter_delete_keeps_concurrent_increments() {
    let c = class(Policy::Pncounter);
    let a = Entity::apply_local(None, &Op::Incr(5), &ctx(&c, "eu", 10, 1)).unwrap();
    let deleted = Entity::apply_local(Some(&a), &Op::Delete, &ctx(&c, "eu", 11, 2)).unwrap();
    assert!(!deleted.exists());
    let b = Entity::apply_local(Some(&a), &Op::Incr(-2), &ctx(&c, "us", 12, 1)).unwrap();
    let m = deleted.merge(&b).unwrap().entity;
    assert_eq!(m.value(), Some(json!(-2)));
    let g = class(Policy::Gcounter);
    assert!(matches!(
        Entity::apply_local(None, &Op::Incr(-1), &ctx(&g, "eu", 10, 1)),
        Err(Error::BadRequest(_))
    ));
}

#[test]
fn merge_fields_follow_their_rules() {
    let c = class(Policy::Merge);
    let a = Entity::apply_local(
        None,
        &Op::Put(json!({"name": "ann", "high": 5, "low": 5, "tags": ["a"], "views": 10})),
        &ctx(&c, "eu", 10, 1),
    )
    .unwrap();
    let mut b = Entity::apply_local(
        Some(&a),
        &Op::Put(json!({"views": 13, "high": 9})),
        &ctx(&c, "us", 12, 1),
    )
    .unwrap();
    b = Entity::apply_local(
        Some(&b),
        &Op::Put(json!({"tags": ["b"], "low": 1})),
        &ctx(&c, "us", 13, 2),
    )
    .unwrap();
    let a2 = Entity::apply_local(
        Some(&a),
        &Op::Put(json!({"views": 12, "name": "anne"})),
        &ctx(&c, "eu", 11, 2),
    )
    .unwrap();
    let m = a2.merge(&b).unwrap();
    assert_eq!(
        m.conflict.as_ref().unwrap().outcome,
        ConflictOutcome::Merged
    );
    assert_eq!(
        m.entity.value(),
        Some(json!({"name": "anne", "high": 9, "low": 1, "tags": ["a", "b"], "views": 15}))
    );
    let bad = Entity::apply_local(
        Some(&a),
        &Op::Put(json!({"high": "tall"})),
        &ctx(&c, "eu", 14, 3),
    );
    let msg = bad.unwrap_err().to_string();
    assert!(
        msg.contains("`high`") && msg.contains("max") && msg.contains("number"),
        "{msg}"
    );
}

#[test]
fn merge_delete_wins_over_concurrent_write() {
    let c = class(Policy::Merge);
    let a =
        Entity::apply_local(None, &Op::Put(json!({"name": "x"})), &ctx(&c, "eu", 10, 1)).unwrap();
    let deleted = Entity::apply_local(Some(&a), &Op::Delete, &ctx(&c, "eu", 11, 2)).unwrap();
    let concurrent = Entity::apply_local(
        Some(&a),
        &Op::Put(json!({"name": "y"})),
        &ctx(&c, "us", 20, 1),
    )
    .unwrap();
    let m = concurrent.merge(&deleted).unwrap().entity;
    assert!(!m.exists());
    let reborn = Entity::apply_local(
        Some(&m),
        &Op::Put(json!({"name": "z"})),
        &ctx(&c, "us", 21, 2),
    )
    .unwrap();
    assert_eq!(reborn.value(), Some(json!({"name": "z"})));
}

#[test]
fn wrong_op_names_the_policy_and_the_fix() {
    let c = class(Policy::Gcounter);
    let err = Entity::apply_local(None, &Op::Add(json!("x")), &ctx(&c, "eu", 1, 1)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`add`") && msg.contains("gcounter") && msg.contains("incr"),
        "{msg}"
    );
}

#[test]
fn encoding_round_trips_and_refuses_unknown_format() {
    let c = class(Policy::Merge);
    let a = Entity::apply_local(
        None,
        &Op::Put(json!({"name": "x", "tags": [1, "a"]})),
        &ctx(&c, "eu", 10, 1),
    )
    .unwrap();
    let bytes = a.encode();
    assert_eq!(Entity::decode(&bytes).unwrap(), a);
    let mut future = bytes;
    future[0] = 99;
    assert!(
        Entity::decode(&future)
            .unwrap_err()
            .to_string()
            .contains("upgrade parallax")
    );
}
