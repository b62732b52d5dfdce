//! Unit tests of [`crate::rollup`].

use super::*;

#[test]
fn a_value_is_keyed_by_the_greatest_bound_it_exceeds() {
    let b = [100, 250, 1_000];
    assert_eq!(over(&b, 50_000, 1_000), 0);
    assert_eq!(over(&b, 100_000, 1_000), 0, "at the bound is not over it");
    assert_eq!(over(&b, 100_001, 1_000), 100);
    assert_eq!(over(&b, 999_999, 1_000), 250);
    assert_eq!(over(&b, 5_000_000, 1_000), 1_000);
    assert_eq!(over(&[], 5_000_000, 1_000), 0);
    // "Over T" is exactly "keyed by a bound >= T", for every T in b.
    for v in [0, 99_999, 100_000, 100_001, 250_000, 250_001, 2_000_000] {
        for t in b {
            assert_eq!(v > t as i64 * 1_000, over(&b, v, 1_000) >= t as i64);
        }
    }
}

#[test]
fn rollups_and_raw_tables_pair_up() {
    for r in ROLLUPS {
        let raw = raw_of(r).unwrap();
        assert!(rollups_of(raw).contains(&r));
        assert_eq!(schema_of(r).unwrap().field(0).name(), "ts");
        // Each rollup comes after the one it is summed from, in both
        // lists, and is no finer.
        if let Some(f) = finer_of(r) {
            let at = |x| ROLLUPS.iter().position(|y| *y == x);
            assert!(at(f) < at(r), "{f} before {r}");
            let of_raw = |x| rollups_of(raw).iter().position(|y| *y == x);
            assert!(of_raw(f) < of_raw(r), "{f} before {r}");
            assert!(grain_of(f) <= grain_of(r));
        }
    }
    assert_eq!(finer_of("requests_1h"), Some("requests_5m"));
    assert_eq!(finer_of("latency_1h"), Some("latency_5m"));
    assert_eq!(finer_of("requests_5m"), None);
    assert_eq!(raw_of("requests"), None);
    assert!(rollups_of("audits").is_empty());
}
