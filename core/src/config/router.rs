//! `[router]` and `[routers.<location>]`: traffic management.
//!
//! One `parallax router` runs per client location (a vantage point). Each
//! checks every region's `/readyz` from where it stands, declares a region
//! down after `down_after` failed checks in a row and up again after
//! `up_after` good ones, and sends the clients of its location to the
//! nearest healthy region.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Location, RegionConfig};

/// `[router]`: what every router of the cluster shares.
///
/// The defaults detect a dead region within about a second (a check every
/// 250 ms that fails after 300 ms, three in a row) and let clients cache an
/// answer for 1 s, so every client has left a dead region within ~2.5 s.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// A health check of every region starts this often (ms).
    #[serde(default = "default_check_interval_ms")]
    pub check_interval_ms: u64,
    /// A check that has not answered after this long failed (ms).
    #[serde(default = "default_check_timeout_ms")]
    pub check_timeout_ms: u64,
    /// A region is declared down after this many failed checks in a row.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// A down region is declared up again after this many good checks in a row.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// How long clients may cache an answer (seconds; also the DNS TTL).
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u32,
    /// How often the router re-reads the ownership delegations in force (ms).
    #[serde(default = "default_ownership_refresh_ms")]
    pub ownership_refresh_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            check_interval_ms: default_check_interval_ms(),
            check_timeout_ms: default_check_timeout_ms(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            ttl_s: default_ttl_s(),
            ownership_refresh_ms: default_ownership_refresh_ms(),
        }
    }
}

/// `[routers.<location>]`: the router that serves one client location.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterSite {
    /// Address the router's HTTP API binds, e.g. `"127.0.0.1:7201"`.
    pub listen: SocketAddr,
    /// Where the location is. Needed unless the location is named after a
    /// region, whose location it then shares.
    #[serde(default)]
    pub location: Option<Location>,
}

fn default_check_interval_ms() -> u64 {
    250
}
fn default_check_timeout_ms() -> u64 {
    300
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_ttl_s() -> u32 {
    1
}
fn default_ownership_refresh_ms() -> u64 {
    1_000
}

/// Checks `[router]` and `[routers]`; an error is `(field, message)`.
pub(super) fn validate(
    router: &RouterConfig,
    routers: &BTreeMap<String, RouterSite>,
    regions: &BTreeMap<String, RegionConfig>,
) -> Result<(), (String, String)> {
    let fail = |field: &str, msg: &str| Err((field.to_owned(), msg.to_owned()));
    if router.check_interval_ms == 0 || router.check_timeout_ms == 0 {
        return fail(
            "router",
            "check_interval_ms and check_timeout_ms must be at least 1. Fix: use the defaults (250 and 300)",
        );
    }
    if router.down_after == 0 || router.up_after == 0 {
        return fail(
            "router",
            "down_after and up_after must be at least 1. Fix: use the defaults (3 and 2)",
        );
    }
    if router.ttl_s > 86_400 {
        return fail(
            "router.ttl_s",
            "is over a day. Fix: keep answers short-lived so clients follow failovers, e.g. 1",
        );
    }
    if router.ownership_refresh_ms == 0 {
        return fail("router.ownership_refresh_ms", "is 0. Fix: use e.g. 1000");
    }
    for (name, site) in routers {
        if !super::load::valid_region_name(name) {
            return fail(
                &format!("routers.{name}"),
                "is not a valid location name. Fix: use lowercase letters, digits and '-' (e.g. paris)",
            );
        }
        if site.location.is_none() && !regions.contains_key(name) {
            return fail(
                &format!("routers.{name}.location"),
                "is missing, and no region shares the name to lend its location. Fix: add location = { lat = .., lon = .. }",
            );
        }
        if let Some(loc) = site.location {
            super::load::check_location(loc)
                .or_else(|m| fail(&format!("routers.{name}.location"), &m))?;
        }
        if let Some((region, _)) = regions.iter().find(|(_, r)| r.listen == site.listen) {
            return fail(
                &format!("routers.{name}.listen"),
                &format!(
                    "{} is also the address of region `{region}`. Fix: give the router its own port",
                    site.listen
                ),
            );
        }
    }
    Ok(())
}
