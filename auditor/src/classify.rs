//! Classifying one differing key: replication still in flight, or true
//! divergence. A pure function of the regions' versions, what each region
//! has applied of each other's logs, the time and the lag bound.
//!
//! - *in flight*: every write a region lacks is younger than the lag bound,
//!   or still waits in its origin's replication log for that region;
//! - *divergent*: versions with equal version vectors and different content
//!   (corruption); a write a region lacks that is older than the lag bound
//!   and no longer in any log for it (lost replication); concurrent versions
//!   left unresolved past the bound; an entity a region lacks altogether
//!   (missing).

use std::collections::BTreeMap;

use parallax_core::entity::Entity;
use parallax_core::protocol::ReplicationState;
use parallax_core::version::Causality;
use serde::{Deserialize, Serialize};

/// What an audit concluded about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every region holds the same version.
    Agree,
    /// Replication explains the difference.
    InFlight {
        /// Regions still to receive a write.
        regions: Vec<String>,
        /// Why it is in flight.
        reason: String,
    },
    /// The regions disagree and replication will not fix it.
    Divergent {
        /// Regions whose copy is not the merged one (or, for corruption, every region involved).
        regions: Vec<String>,
        /// Why.
        reason: String,
    },
}

/// A key's version in each region (`None`: the region does not hold it).
pub type Versions = BTreeMap<String, Option<Entity>>;

/// Per region, what it has applied of each origin's log, and which peers
/// its own log is no longer kept for.
pub type Applied = BTreeMap<String, ReplicationState>;

/// The merged version of everything the regions hold.
pub fn merged(versions: &Versions) -> Option<Entity> {
    let mut out: Option<Entity> = None;
    for e in versions.values().flatten() {
        out = Some(match out {
            None => e.clone(),
            Some(m) => m.join(e).unwrap_or(m),
        });
    }
    out
}

/// Classifies one key.
pub fn classify(versions: &Versions, applied: &Applied, now_ms: u64, lag_bound_ms: u64) -> Verdict {
    let present: Vec<(&String, &Entity)> = versions
        .iter()
        .filter_map(|(r, e)| Some((r, e.as_ref()?)))
        .collect();
    let first = versions.values().next();
    if versions.values().all(|v| Some(v) == first) {
        return Verdict::Agree;
    }
    // Equal version vectors, different content: a copy was damaged.
    let mut corrupt: Vec<String> = Vec::new();
    for (i, (ra, a)) in present.iter().enumerate() {
        for (rb, b) in &present[i + 1..] {
            if a.version.compare(&b.version) == Causality::Equal && a != b {
                for r in [*ra, *rb] {
                    if !corrupt.contains(r) {
                        corrupt.push(r.clone());
                    }
                }
            }
        }
    }
    if !corrupt.is_empty() {
        // Name the copies that differ from the one most regions hold, when
        // most regions hold one.
        let holders = |e: &Entity| present.iter().filter(|(_, o)| *o == e).count();
        if let Some((_, common)) = present.iter().max_by_key(|(_, e)| holders(e))
            && holders(common) * 2 > present.len()
        {
            corrupt.retain(|r| versions.get(r).and_then(Option::as_ref) != Some(*common));
        }
        corrupt.sort();
        return Verdict::Divergent {
            regions: corrupt,
            reason: "corruption: equal version vectors with different content".into(),
        };
    }
    let Some(all) = merged(versions) else {
        return Verdict::Agree;
    };
    let mut in_flight = Vec::new();
    let mut divergent: Vec<(String, &'static str)> = Vec::new();
    for (region, mine) in versions {
        if mine.as_ref() == Some(&all) {
            continue;
        }
        // The writes this region lacks: the latest write of every version it
        // has not seen.
        let lacking: Vec<&Entity> = present
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| {
                mine.as_ref()
                    .is_none_or(|m| !m.version.dominates_or_equals(&e.version))
            })
            .collect();
        let concurrent = mine.as_ref().is_some_and(|m| {
            present
                .iter()
                .any(|(_, e)| m.version.compare(&e.version) == Causality::Concurrent)
        });
        let explained = lacking.iter().all(|e| {
            let origin = &e.hlc.region;
            let young = now_ms.saturating_sub(e.hlc.wall_ms) < lag_bound_ms;
            let not_applied = applied
                .get(region)
                .and_then(|a| a.applied.get(origin))
                .copied()
                .unwrap_or(0)
                < e.origin_seq;
            let dropped = applied
                .get(origin)
                .is_some_and(|o| o.log_dropped_for.contains(region));
            let in_log = origin != region && not_applied && !dropped;
            young || in_log
        });
        if explained {
            in_flight.push(region.clone());
        } else if mine.is_none() {
            divergent.push((
                region.clone(),
                "missing: the entity is gone from this region",
            ));
        } else if concurrent {
            divergent.push((region.clone(), "concurrent versions left unresolved"));
        } else {
            divergent.push((
                region.clone(),
                "lost replication: an older version outlived the lag bound",
            ));
        }
    }
    if !divergent.is_empty() {
        let reason = divergent[0].1.to_owned();
        return Verdict::Divergent {
            regions: divergent.into_iter().map(|(r, _)| r).collect(),
            reason,
        };
    }
    if in_flight.is_empty() {
        return Verdict::Agree;
    }
    Verdict::InFlight {
        regions: in_flight,
        reason: "replication in flight".into(),
    }
}

#[cfg(test)]
mod tests {
    use parallax_core::clock::Hlc;
    use parallax_core::config::{ClassConfig, Policy};
    use parallax_core::entity::{Op, WriteContext};
    use serde_json::json;

    use super::*;

    fn class() -> ClassConfig {
        let mut c = ClassConfig::system_lww();
        c.conflict = Policy::Lww;
        c
    }

    fn write(prior: Option<&Entity>, region: &str, wall: u64, seq: u64, v: i64) -> Entity {
        let c = class();
        let ctx = WriteContext {
            region,
            class_name: "c",
            key: "k",
            class: &c,
            stamp: Hlc {
                wall_ms: wall,
                logical: 0,
                region: region.into(),
            },
            seq,
            owner_epoch: 0,
            home: None,
        };
        Entity::apply_local(prior, &Op::Put(json!(v)), &ctx).unwrap()
    }

    fn versions(list: &[(&str, Option<&Entity>)]) -> Versions {
        list.iter()
            .map(|(r, e)| ((*r).to_owned(), e.cloned()))
            .collect()
    }

    fn applied(list: &[(&str, &str, u64)]) -> Applied {
        let mut a = Applied::new();
        for (r, o, s) in list {
            a.entry((*r).to_owned())
                .or_default()
                .applied
                .insert((*o).to_owned(), *s);
        }
        a
    }

    #[test]
    fn equal_copies_agree() {
        let e = write(None, "a", 1_000, 1, 1);
        assert_eq!(
            classify(
                &versions(&[("a", Some(&e)), ("b", Some(&e))]),
                &Applied::new(),
                100_000,
                5_000
            ),
            Verdict::Agree
        );
    }

    #[test]
    fn a_young_write_not_yet_applied_is_in_flight() {
        let old = write(None, "a", 1_000, 1, 1);
        let new = write(Some(&old), "a", 99_000, 2, 2);
        let v = versions(&[("a", Some(&new)), ("b", Some(&old))]);
        let got = classify(&v, &applied(&[("b", "a", 2)]), 100_000, 5_000);
        assert!(
            matches!(got, Verdict::InFlight { ref regions, .. } if regions == &["b".to_owned()]),
            "{got:?}"
        );
    }

    #[test]
    fn an_old_write_still_in_the_log_is_in_flight() {
        let old = write(None, "a", 1_000, 1, 1);
        let new = write(Some(&old), "a", 2_000, 2, 2);
        let v = versions(&[("a", Some(&new)), ("b", Some(&old))]);
        assert!(matches!(
            classify(&v, &applied(&[("b", "a", 1)]), 100_000, 5_000),
            Verdict::InFlight { .. }
        ));
    }

    #[test]
    fn an_old_write_applied_but_absent_is_lost_replication() {
        let old = write(None, "a", 1_000, 1, 1);
        let new = write(Some(&old), "a", 2_000, 2, 2);
        let v = versions(&[("a", Some(&new)), ("b", Some(&old)), ("c", Some(&new))]);
        let got = classify(&v, &applied(&[("b", "a", 50)]), 100_000, 5_000);
        match got {
            Verdict::Divergent { regions, reason } => {
                assert_eq!(regions, vec!["b".to_owned()]);
                assert!(reason.starts_with("lost replication"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_write_the_origin_dropped_from_its_log_is_lost() {
        let old = write(None, "a", 1_000, 1, 1);
        let new = write(Some(&old), "a", 2_000, 2, 2);
        let v = versions(&[("a", Some(&new)), ("b", Some(&old))]);
        let mut state = applied(&[("b", "a", 1)]);
        state
            .entry("a".into())
            .or_default()
            .log_dropped_for
            .push("b".into());
        assert!(matches!(
            classify(&v, &state, 100_000, 5_000),
            Verdict::Divergent { .. }
        ));
    }

    #[test]
    fn a_dropped_entity_is_missing() {
        let e = write(None, "a", 1_000, 1, 1);
        let v = versions(&[("a", Some(&e)), ("b", None)]);
        assert!(
            matches!(classify(&v, &applied(&[("b", "a", 9)]), 100_000, 5_000),
            Verdict::Divergent { ref reason, .. } if reason.starts_with("missing"))
        );
    }

    #[test]
    fn equal_versions_with_different_content_are_corruption() {
        let e = write(None, "a", 1_000, 1, 1);
        let bad = e.corrupted();
        let v = versions(&[("a", Some(&e)), ("b", Some(&bad)), ("c", Some(&e))]);
        match classify(&v, &Applied::new(), 1_001, 5_000) {
            Verdict::Divergent { regions, reason } => {
                assert_eq!(
                    regions,
                    vec!["b".to_owned()],
                    "the copy that differs from the majority's"
                );
                assert!(reason.starts_with("corruption"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_concurrent_versions_are_unresolved() {
        let a = write(None, "a", 1_000, 1, 1);
        let b = write(None, "b", 1_100, 1, 2);
        let v = versions(&[("a", Some(&a)), ("b", Some(&b))]);
        let fresh = applied(&[("a", "b", 5), ("b", "a", 5)]);
        assert!(matches!(classify(&v, &fresh, 100_000, 5_000),
            Verdict::Divergent { ref reason, .. } if reason.starts_with("concurrent")));
        // The same, young: replication will merge them.
        assert!(matches!(
            classify(&v, &fresh, 2_000, 5_000),
            Verdict::InFlight { .. }
        ));
    }
}
