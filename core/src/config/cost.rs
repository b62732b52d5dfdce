//! `[cost]`: what moving data between regions and running a region cost,
//! for the Cost page. Prices are list prices the operator states; parallax
//! only multiplies them by what it measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[cost]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The currency the prices are in (shown beside every figure, never
    /// converted).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// The price of a GB (10⁹ bytes) leaving a region for another, for
    /// pairs `gb_by_pair` does not list. The default, 0.02, is AWS's list
    /// price for transfer between most of its US and European regions
    /// (other pairs and clouds charge 0.02–0.08).
    #[serde(default = "default_gb")]
    pub gb: f64,
    /// Per source region, per destination region: the price of a GB from
    /// the one to the other (the source pays its egress).
    #[serde(default)]
    pub gb_by_pair: BTreeMap<String, BTreeMap<String, f64>>,
    /// The price of one region's hour (its machines and storage), counted
    /// for every configured region; 0 leaves the regions out of the
    /// figures.
    #[serde(default)]
    pub region_hour: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            currency: default_currency(),
            gb: default_gb(),
            gb_by_pair: BTreeMap::new(),
            region_hour: 0.0,
        }
    }
}

impl CostConfig {
    /// The price of a GB from `src` to `dst`.
    pub fn gb_price(&self, src: &str, dst: &str) -> f64 {
        self.gb_by_pair
            .get(src)
            .and_then(|row| row.get(dst))
            .copied()
            .unwrap_or(self.gb)
    }

    /// Every price with its field name, for validation.
    pub(super) fn prices(&self) -> Vec<(String, f64)> {
        let mut all = vec![
            ("gb".to_owned(), self.gb),
            ("region_hour".to_owned(), self.region_hour),
        ];
        for (src, row) in &self.gb_by_pair {
            for (dst, &price) in row {
                all.push((format!("gb_by_pair.{src}.{dst}"), price));
            }
        }
        all
    }
}

fn default_currency() -> String {
    "USD".to_owned()
}

fn default_gb() -> f64 {
    0.02
}
