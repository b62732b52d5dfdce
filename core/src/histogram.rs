//! A log-bucketed histogram: the state behind the web app's
//! `approx_quantile` and the collector's rollups' latency and lag columns.
//!
//! A value falls in the bucket named by its float's sign, exponent and top
//! [`SUB_BITS`] mantissa bits: 64 buckets per power of two, each 1/64 of its
//! lower bound wide (the layout of HdrHistogram and of Prometheus' native
//! histograms, at a finer schema). A quantile is the middle of the bucket
//! that holds the value of rank `floor(q * (n - 1))`, kept within the least
//! and greatest values seen, so it is within 1/128 (0.8%) of that value;
//! `q = 0` and `q = 1` give the exact least and greatest value. Histograms
//! add exactly: a histogram merged from parts, in any grouping, answers
//! every quantile exactly as the histogram of all the values, which is what
//! lets a 5-minute rollup stand in for its raw rows.

use std::collections::BTreeMap;

/// Mantissa bits that name a bucket within its power of two.
pub const SUB_BITS: u32 = 6;
/// Right shift from a value's ordered bits to its bucket key.
const SHIFT: u32 = 52 - SUB_BITS;
/// Widest span of keys a histogram counts in a dense array (8 KiB buckets,
/// 64 KiB): wider — values of both signs, or spread over more than 128
/// powers of two — and it counts in an ordered map instead.
const DENSE_SPAN: usize = 8 << 10;
/// Version byte at the start of a serialised histogram.
const STATE_VERSION: u8 = 1;

/// A serialised histogram that is not one (wrong version or length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a serialised histogram is malformed: it must start with version byte 1 and hold 25 + 12k bytes"
)]
pub struct Malformed;

/// A value's bits, reordered so that unsigned order is numeric order.
fn ordered(v: f64) -> u64 {
    // -0.0 and 0.0 are one value.
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

fn from_ordered(o: u64) -> f64 {
    f64::from_bits(if o >> 63 == 1 { o & !(1 << 63) } else { !o })
}

/// The bucket of a value (not NaN).
pub fn key_of(v: f64) -> u32 {
    (ordered(v) >> SHIFT) as u32
}

/// The value a bucket stands for: its middle (its finite end for the
/// buckets of the infinities; 0 for the bucket of zero and the subnormals
/// above it).
pub fn value_of(key: u32) -> f64 {
    let lo = from_ordered(u64::from(key) << SHIFT);
    let hi = from_ordered(u64::from(key) << SHIFT | ((1 << SHIFT) - 1));
    if lo == 0.0 {
        0.0
    } else if lo.is_nan() {
        hi
    } else if hi.is_nan() {
        lo
    } else {
        lo / 2.0 + hi / 2.0
    }
}

/// Counts per bucket: a dense array over the span of keys seen while it is
/// narrow, an ordered map past [`DENSE_SPAN`].
#[derive(Clone, Debug, Default)]
enum Buckets {
    #[default]
    Empty,
    Dense {
        base: u32,
        counts: Vec<u64>,
    },
    Sparse(BTreeMap<u32, u64>),
}

/// Counts of values by bucket, with how many there are and the least and
/// greatest of them.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Buckets,
    n: u64,
    min: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Buckets::Empty,
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Histogram {
    /// Values counted.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Counts a value (NaN is not counted); returns the bytes it grew by.
    #[inline]
    pub fn add(&mut self, v: f64) -> usize {
        if v.is_nan() {
            return 0;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.n += 1;
        let key = key_of(v);
        if let Buckets::Dense { base, counts } = &mut self.buckets
            && let Some(c) = key
                .checked_sub(*base)
                .and_then(|i| counts.get_mut(i as usize))
        {
            *c += 1;
            return 0;
        }
        self.add_slow(key, 1)
    }

    /// Counts every value of a slice (NaN is not counted); returns the
    /// bytes it grew by. The loop over values that fall in the dense
    /// array's span keeps its state in registers; any other value takes
    /// [`Histogram::add`].
    pub fn add_slice(&mut self, values: &[f64]) -> usize {
        let mut grew = 0;
        let mut i = 0;
        while i < values.len() {
            if let Buckets::Dense { base, counts } = &mut self.buckets {
                let (base, len) = (*base, counts.len() as u32);
                let (mut min, mut max, start) = (self.min, self.max, i);
                while let Some(&v) = values.get(i) {
                    let at = key_of(v).wrapping_sub(base);
                    if at >= len || v.is_nan() {
                        break;
                    }
                    counts[at as usize] += 1;
                    min = min.min(v);
                    max = max.max(v);
                    i += 1;
                }
                (self.min, self.max) = (min, max);
                self.n += (i - start) as u64;
            }
            if let Some(&v) = values.get(i) {
                grew += self.add(v);
                i += 1;
            }
        }
        grew
    }

    /// Adds `count` to a bucket outside the dense array's span.
    fn add_slow(&mut self, key: u32, count: u64) -> usize {
        let before = self.bytes();
        match &mut self.buckets {
            Buckets::Empty => {
                self.buckets = Buckets::Dense {
                    base: key,
                    counts: vec![count],
                };
            }
            Buckets::Dense { base, counts } => {
                let lo = key.min(*base);
                let hi = key.max(*base + counts.len() as u32 - 1);
                let span = (hi - lo) as usize + 1;
                if span > DENSE_SPAN {
                    let mut map: BTreeMap<u32, u64> = counts
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| **c > 0)
                        .map(|(i, c)| (*base + i as u32, *c))
                        .collect();
                    *map.entry(key).or_default() += count;
                    self.buckets = Buckets::Sparse(map);
                } else {
                    if key < *base {
                        // Grow downwards with room to spare: values that
                        // keep falling should not move the array each time.
                        let room = ((*base - key) as usize)
                            .max(counts.len() / 2)
                            .min(DENSE_SPAN - counts.len())
                            .min(*base as usize);
                        let new_base = *base - room as u32;
                        counts.splice(0..0, std::iter::repeat_n(0, room));
                        *base = new_base;
                    } else {
                        counts.resize((key - *base) as usize + 1, 0);
                    }
                    counts[(key - *base) as usize] += count;
                }
            }
            Buckets::Sparse(map) => *map.entry(key).or_default() += count,
        }
        self.bytes().saturating_sub(before)
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        match &self.buckets {
            Buckets::Empty => 0,
            Buckets::Dense { counts, .. } => counts.capacity() * 8,
            Buckets::Sparse(map) => map.len() * 24,
        }
    }

    /// Non-empty buckets in key order.
    pub fn pairs(&self) -> Box<dyn Iterator<Item = (u32, u64)> + '_> {
        match &self.buckets {
            Buckets::Empty => Box::new(std::iter::empty()),
            Buckets::Dense { base, counts } => Box::new(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(move |(i, c)| (base + i as u32, *c)),
            ),
            Buckets::Sparse(map) => Box::new(map.iter().map(|(k, c)| (*k, *c))),
        }
    }

    /// The `q` quantile, None when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        if q <= 0.0 {
            return Some(self.min);
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.n - 1) as f64).floor() as u64;
        let mut seen = 0;
        for (key, count) in self.pairs() {
            seen += count;
            if seen > rank {
                return Some(value_of(key).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The histogram as bytes: a version, n, min, max, then (key, count)
    /// pairs, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for (key, count) in self.pairs() {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// Adds a histogram serialised by [`Histogram::to_bytes`]; returns the bytes
    /// it grew by.
    pub fn merge_bytes(&mut self, b: &[u8]) -> Result<usize, Malformed> {
        let bad = || Malformed;
        if b.first() != Some(&STATE_VERSION) || b.len() < 25 || !(b.len() - 25).is_multiple_of(12) {
            return Err(bad());
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let n = u64_at(1);
        if n == 0 {
            return Ok(0);
        }
        self.n += n;
        self.min = self.min.min(f64::from_bits(u64_at(9)));
        self.max = self.max.max(f64::from_bits(u64_at(17)));
        let mut grew = 0;
        for pair in b[25..].chunks_exact(12) {
            let key = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes"));
            let count = u64::from_le_bytes(pair[4..].try_into().expect("8 bytes"));
            if let Buckets::Dense { base, counts } = &mut self.buckets
                && let Some(c) = key
                    .checked_sub(*base)
                    .and_then(|i| counts.get_mut(i as usize))
            {
                *c += count;
            } else {
                grew += self.add_slow(key, count);
            }
        }
        Ok(grew)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The value of rank floor(q * (n - 1)), computed by sorting.
    fn exact(values: &[f64], q: f64) -> f64 {
        let mut s = values.to_vec();
        s.sort_by(f64::total_cmp);
        s[(q * (s.len() - 1) as f64).floor() as usize]
    }

    fn hist_of(values: &[f64]) -> Histogram {
        let mut h = Histogram::default();
        for v in values {
            h.add(*v);
        }
        h
    }

    #[test]
    fn keys_follow_numeric_order_across_signs_zero_and_infinities() {
        let vs = [
            f64::NEG_INFINITY,
            -1e300,
            -2.0,
            -1.0,
            -1e-300,
            0.0,
            1e-300,
            1.0,
            1.02,
            2.0,
            1e300,
            f64::INFINITY,
        ];
        for w in vs.windows(2) {
            assert!(key_of(w[0]) <= key_of(w[1]), "{} then {}", w[0], w[1]);
        }
        assert_eq!(key_of(-0.0), key_of(0.0));
        assert_eq!(value_of(key_of(0.0)), 0.0);
        assert_eq!(value_of(key_of(f64::INFINITY)), f64::INFINITY);
        assert_eq!(value_of(key_of(f64::NEG_INFINITY)), f64::NEG_INFINITY);
        // 64 buckets per power of two: 1.0 and 1.0 + 1/64 differ.
        assert_ne!(key_of(1.0), key_of(1.0 + 1.0 / 64.0));
        assert_eq!(key_of(1.0), key_of(1.0 + 1.0 / 128.0));
    }

    #[test]
    fn quantiles_of_a_known_set() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        let h = hist_of(&values);
        assert_eq!(h.quantile(0.0), Some(1.0));
        assert_eq!(h.quantile(1.0), Some(1000.0));
        for q in [0.5, 0.9, 0.99, 0.999] {
            let got = h.quantile(q).unwrap();
            let want = exact(&values, q);
            assert!((got - want).abs() <= want / 128.0, "q={q}: {got} vs {want}");
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
        // NaN is not counted; zeros are exact.
        let h = hist_of(&[0.0, 0.0, 0.0, f64::NAN, 5.0]);
        assert_eq!(h.quantile(0.5), Some(0.0));
        assert_eq!(h.n, 4);
    }

    #[test]
    fn values_of_both_signs_far_apart_switch_to_the_map() {
        let values = [-1e6, -3.0, 0.0, 1e-9, 7.5, 1e12];
        let h = hist_of(&values);
        assert!(matches!(h.buckets, Buckets::Sparse(_)));
        for q in [0.2, 0.4, 0.6, 0.8] {
            let (got, want) = (h.quantile(q).unwrap(), exact(&values, q));
            assert!((got - want).abs() <= want.abs() / 128.0, "{got} vs {want}");
        }
    }

    #[test]
    fn a_malformed_state_is_an_error_not_a_panic() {
        let mut h = Histogram::default();
        assert!(h.merge_bytes(&[]).is_err());
        assert!(h.merge_bytes(&[9; 25]).is_err());
        let mut ok = hist_of(&[1.0]).to_bytes();
        ok.push(0);
        assert!(h.merge_bytes(&ok).is_err());
    }

    proptest! {
        /// Within 1/128 of the value of that rank, for any values and q.
        #[test]
        fn within_one_in_128_of_the_exact_rank(
            values in prop::collection::vec(
                prop_oneof![-1e9f64..1e9, 0.0f64..1000.0, Just(0.0), 1e-6f64..1e-3],
                1..400,
            ),
            q in 0.0f64..=1.0,
        ) {
            let got = hist_of(&values).quantile(q).unwrap();
            let want = exact(&values, q);
            prop_assert!((got - want).abs() <= want.abs() / 128.0, "{} vs {}", got, want);
        }

        /// Counting a slice at once is counting its values one by one.
        #[test]
        fn a_slice_counts_as_its_values_one_by_one(
            values in prop::collection::vec(
                prop_oneof![-1e9f64..1e9, 1.0f64..2.0, Just(f64::NAN), Just(0.0)],
                0..400,
            ),
            q in 0.0f64..=1.0,
        ) {
            let mut at_once = Histogram::default();
            at_once.add_slice(&values);
            let one_by_one = hist_of(&values);
            prop_assert_eq!(at_once.n, one_by_one.n);
            prop_assert_eq!(at_once.quantile(q), one_by_one.quantile(q));
            prop_assert_eq!(at_once.to_bytes(), one_by_one.to_bytes());
        }

        /// Partial histograms merged answer exactly as one histogram.
        #[test]
        fn merging_parts_equals_counting_all(
            values in prop::collection::vec(-1e6f64..1e6, 1..300),
            cut in 0usize..300,
            q in 0.0f64..=1.0,
        ) {
            let cut = cut.min(values.len());
            let mut merged = Histogram::default();
            merged.merge_bytes(&hist_of(&values[..cut]).to_bytes()).unwrap();
            merged.merge_bytes(&hist_of(&values[cut..]).to_bytes()).unwrap();
            prop_assert_eq!(merged.quantile(q), hist_of(&values).quantile(q));
        }
    }
}
