//! `[router]` and `[routers.<location>]`: traffic management.
//!
//! One `parallax router` runs per client location (a vantage point). Each
//! checks every region's `/readyz` from where it stands, declares a region
//! down after `down_after` failed checks in a row and up again after
//! `up_after` good ones, and sends the clients of its location to the
//! nearest healthy region.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

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
    /// How long a region stays declared down before its keys move to the
    /// healthy region nearest to it (ms). The region taking them must not
    /// have reached the failed one for as long either.
    #[serde(default = "default_failover_grace_ms")]
    pub failover_grace_ms: u64,
    /// Move keys at all (`false`: routers only route around a failed region).
    #[serde(default = "default_true")]
    pub automatic_failover: bool,
    /// The DNS zone routers answer for (e.g. `"db.example.test."`), on each
    /// router's `dns_listen`; none: no DNS.
    #[serde(default)]
    pub zone: Option<String>,
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
            failover_grace_ms: default_failover_grace_ms(),
            automatic_failover: true,
            zone: None,
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
    /// Address (UDP and TCP) the router answers DNS queries for `[router]
    /// zone` on, e.g. `"127.0.0.1:5301"`; none: no DNS.
    #[serde(default)]
    pub dns_listen: Option<SocketAddr>,
    /// Client subnets at this location: a DNS query whose EDNS Client
    /// Subnet falls in one is answered for this location, whichever router
    /// receives it.
    #[serde(default)]
    pub client_subnets: Vec<Subnet>,
}

/// A subnet of client addresses, written `<address>/<prefix length>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Subnet {
    type Error = String;

    fn try_from(s: String) -> Result<Subnet, String> {
        let bad = || {
            format!(
                "`{s}` is not a subnet. Fix: write it as <address>/<prefix length>, e.g. \"192.0.2.0/24\""
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Subnet { addr, prefix })
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        format!("{}/{}", s.addr, s.prefix)
    }
}

impl Subnet {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the addresses `ip/ip_prefix` all fall in the subnet.
    pub fn contains(&self, ip: IpAddr, ip_prefix: u8) -> bool {
        if ip_prefix < self.prefix || ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        bits(ip) & mask == bits(self.addr) & mask
    }
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
fn default_failover_grace_ms() -> u64 {
    1_000
}
fn default_true() -> bool {
    true
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
    if let Some(zone) = &router.zone {
        let labels: Vec<&str> = zone.trim_end_matches('.').split('.').collect();
        let ok = !zone.trim_end_matches('.').is_empty()
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return fail(
                "router.zone",
                &format!("`{zone}` is not a DNS name. Fix: e.g. zone = \"db.example.test.\""),
            );
        }
    }
    for (name, site) in routers {
        if site.dns_listen.is_some() && router.zone.is_none() {
            return fail(
                &format!("routers.{name}.dns_listen"),
                "is set but [router] has no `zone` to answer for. Fix: set router.zone, e.g. \"db.example.test.\"",
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Result<Subnet, String> {
        Subnet::try_from(s.to_owned())
    }

    #[test]
    fn subnets_hold_the_addresses_of_their_prefix() {
        let s = subnet("192.0.2.0/24").unwrap();
        assert!(s.contains("192.0.2.77".parse().unwrap(), 32));
        assert!(s.contains("192.0.2.0".parse().unwrap(), 24));
        assert!(
            !s.contains("192.0.2.0".parse().unwrap(), 16),
            "a wider client prefix is not inside"
        );
        assert!(!s.contains("192.0.3.1".parse().unwrap(), 32));
        assert!(!s.contains("2001:db8::1".parse().unwrap(), 128));
        let v6 = subnet("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap(), 56));
        assert!(!v6.contains("2001:db9::5".parse().unwrap(), 56));
        assert!(
            subnet("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap(), 24)
        );
        for bad in ["192.0.2.0", "192.0.2.0/33", "x/8", "::/129"] {
            assert!(subnet(bad).unwrap_err().contains("Fix"), "{bad}");
        }
        assert_eq!(String::from(s), "192.0.2.0/24");
    }
}
