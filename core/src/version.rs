//! Version vectors: one counter per region, telling whether one version of an
//! entity has seen another (it dominates) or neither has seen the other (they
//! are concurrent, which is a conflict).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Same counters.
    Equal,
    /// The left one is older: the right has seen everything it has and more.
    Before,
    /// The left one is newer.
    After,
    /// Neither has seen the other: a conflict.
    Concurrent,
}

/// A version vector: region -> number of writes from that region seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(pub BTreeMap<String, u64>);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> VersionVector {
        VersionVector(BTreeMap::new())
    }

    /// The counter of `region`.
    pub fn get(&self, region: &str) -> u64 {
        self.0.get(region).copied().unwrap_or(0)
    }

    /// Counts one more write from `region`; returns the new counter.
    pub fn increment(&mut self, region: &str) -> u64 {
        let c = self.0.entry(region.to_owned()).or_insert(0);
        *c += 1;
        *c
    }

    /// Whether the write `(region, counter)` is included.
    pub fn contains(&self, region: &str, counter: u64) -> bool {
        self.get(region) >= counter
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (region, &c) in &other.0 {
            let mine = self.0.entry(region.clone()).or_insert(0);
            *mine = (*mine).max(c);
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        for (region, &c) in &self.0 {
            match c.cmp(&other.get(region)) {
                std::cmp::Ordering::Less => less = true,
                std::cmp::Ordering::Greater => greater = true,
                std::cmp::Ordering::Equal => {}
            }
        }
        for (region, &c) in &other.0 {
            if !self.0.contains_key(region) && c > 0 {
                less = true;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether `self` has seen everything `other` has.
    pub fn dominates_or_equals(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::After | Causality::Equal)
    }

    /// Total writes counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl<const N: usize> From<[(&str, u64); N]> for VersionVector {
    fn from(pairs: [(&str, u64); N]) -> Self {
        VersionVector(pairs.into_iter().map(|(r, c)| (r.to_owned(), c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_cases() {
        let a = VersionVector::from([("a", 1)]);
        let ab = VersionVector::from([("a", 1), ("b", 1)]);
        let b = VersionVector::from([("b", 1)]);
        assert_eq!(a.compare(&ab), Causality::Before);
        assert_eq!(ab.compare(&a), Causality::After);
        assert_eq!(a.compare(&b), Causality::Concurrent);
        assert_eq!(
            a.compare(&VersionVector::from([("a", 1), ("b", 0)])),
            Causality::Equal
        );
        let mut j = a;
        j.join(&b);
        assert_eq!(j, ab);
    }
}
