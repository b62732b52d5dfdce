//! Route decisions, pure: where a client at some place is sent, given the
//! regions' health as this router sees it and the ownership delegations in
//! force.

use std::collections::BTreeMap;

use parallax_core::config::{Config, Location, OpKind, estimate_latency_ms};
use parallax_core::rollout::RolloutView;
use parallax_core::routing::{self, OwnershipView, Route};
use serde::{Deserialize, Serialize};

use crate::health::State;

/// Where a client is.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// A named location: a region's, or a router's.
    Named(String),
    /// A point on the globe.
    Point(Location),
}

/// A request the router refuses, with the reason (HTTP 400 or 404).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The input is malformed or names nothing (400).
    Bad(String),
    /// The class or key has no route (404).
    NotFound(String),
    /// No region can be named (503).
    NoRegion(String),
}

impl Refusal {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Refusal::Bad(m) | Refusal::NotFound(m) | Refusal::NoRegion(m) => m,
        }
    }
}

/// Reads `from`: a location name or `<lat>,<lon>` in degrees.
pub fn parse_origin(config: &Config, from: &str) -> Result<Origin, Refusal> {
    let from = from.trim();
    if let Some((lat, lon)) = from.split_once(',') {
        let parse = |s: &str, what: &str| {
            s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                Refusal::Bad(format!(
                    "`{from}` is not a position: {what} `{}` is not a number. Fix: from=<lat>,<lon> in degrees, e.g. from=48.85,2.35",
                    s.trim()
                ))
            })
        };
        let (lat, lon) = (parse(lat, "latitude")?, parse(lon, "longitude")?);
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(Refusal::Bad(format!(
                "`{from}` is off the globe. Fix: latitude within -90..90 and longitude within -180..180"
            )));
        }
        return Ok(Origin::Point(Location { lat, lon }));
    }
    if config.location_of(from).is_some() {
        return Ok(Origin::Named(from.to_owned()));
    }
    Err(Refusal::Bad(format!(
        "`{from}` is not a known location (known: {}). Fix: name one of those, or give from=<lat>,<lon>",
        config.location_names().join(", ")
    )))
}

/// A region as a candidate for a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The region.
    pub region: String,
    /// Its base URL (clients move to the next candidate that is up when
    /// theirs does not answer).
    pub url: String,
    /// One-way latency from the client (ms): the latency table's figure,
    /// or estimated from great-circle distance.
    pub latency_ms: u32,
    /// Its state as this router sees it.
    pub state: State,
}

/// Every region, nearest first, with its state.
pub fn ranked(
    config: &Config,
    origin: &Origin,
    health: &BTreeMap<String, State>,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = config
        .regions
        .iter()
        .map(|(name, region)| Candidate {
            region: name.clone(),
            url: config.region_url(name).unwrap_or_default(),
            latency_ms: match origin {
                Origin::Named(from) => config.latency_between(from, name),
                Origin::Point(at) => estimate_latency_ms(*at, region.location),
            },
            state: health.get(name).copied().unwrap_or(State::Unknown),
        })
        .collect();
    out.sort_by(|a, b| {
        a.latency_ms
            .cmp(&b.latency_ms)
            .then_with(|| a.region.cmp(&b.region))
    });
    out
}

/// The nearest region to send a client to: the nearest up; while none is
/// up, the nearest not known to be down; never a region declared down.
pub fn nearest(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .find(|c| c.state == State::Up)
        .or_else(|| candidates.iter().find(|c| c.state == State::Unknown))
}

/// What a request for one key must reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRoute {
    /// The region that must take the request (owner or primary), if any.
    pub must: Option<String>,
    /// Why.
    pub why: String,
}

/// Parses `op`: `read` (or `get`), `write` (or `put`), `delete`, `incr`,
/// `add`, `remove`, `resolve`.
pub fn parse_op(op: &str) -> Result<OpKind, Refusal> {
    Ok(match op {
        "read" | "get" => OpKind::Get,
        "write" | "put" => OpKind::Put,
        "delete" => OpKind::Delete,
        "incr" | "decr" => OpKind::Incr,
        "add" => OpKind::Add,
        "remove" => OpKind::Remove,
        "resolve" => OpKind::Resolve,
        other => {
            return Err(Refusal::Bad(format!(
                "`{other}` is not an operation. Fix: op=read, write, delete, incr, add, remove or resolve"
            )));
        }
    })
}

/// Which region a request on `class`/`key` must reach, by rollout stage
/// (`stages`: those set at runtime) and ownership under the delegations in `view`; `must: None` when any
/// region serves it (the nearest healthy one is then chosen).
pub fn key_route(
    config: &Config,
    class_name: &str,
    key: &str,
    op: OpKind,
    view: &OwnershipView,
    stages: &RolloutView,
) -> Result<KeyRoute, Refusal> {
    let class = config
        .classes
        .get(class_name)
        .filter(|_| !class_name.starts_with(parallax_core::config::SYSTEM_CLASS_PREFIX))
        .ok_or_else(|| {
            Refusal::NotFound(format!(
                "class `{class_name}` is not declared in the config (declared: {}). Fix: use a declared class",
                config.class_names()
            ))
        })?;
    if key.is_empty() {
        return Err(Refusal::Bad(
            "the key is empty. Fix: key=<the entity's key>".into(),
        ));
    }
    // The regions' own rules, asked for a region that is none of them: a
    // request only one region may take comes back as `Remote`.
    let stage = stages.stage(class_name, class);
    let route = if op == OpKind::Get {
        routing::route_read(config, "", class, view, stage)
    } else {
        routing::route_write(config, "", class_name, class, key, op, None, view, stage)
            .map_err(|e| Refusal::Bad(e.to_string()))?
    };
    Ok(match route {
        Route::Local { .. } => KeyRoute {
            must: None,
            why: if op == OpKind::Get {
                "reads are served by every region"
            } else {
                "every region takes writes of this class"
            }
            .into(),
        },
        Route::Remote { to, why } => {
            // Name the epoch when the key's owner is the region named.
            let epoch = routing::owner(config, class_name, class, key, None, view)
                .ok()
                .flatten()
                .filter(|(owner, _)| *owner == to)
                .map(|(_, epoch)| epoch);
            KeyRoute {
                must: Some(to),
                why: match epoch {
                    Some(e) => format!("{why}, epoch {e}"),
                    None => why,
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"
primary = "us-east"

[regions.us-east]
listen = "127.0.0.1:7101"
location = { lat = 38.9, lon = -77.4 }

[regions.us-west]
listen = "127.0.0.1:7102"
location = { lat = 45.6, lon = -121.2 }

[regions.eu-west]
listen = "127.0.0.1:7103"
location = { lat = 53.3, lon = -6.3 }

[latency_ms.us-east]
us-west = 32
eu-west = 38

[latency_ms.paris]
eu-west = 9
us-east = 41

[routers.paris]
listen = "127.0.0.1:7201"
location = { lat = 48.9, lon = 2.4 }

[routers.us-east]
listen = "127.0.0.1:7202"

[classes.balances]
conflict = "manual"
ownership = "home"
home_prefixes = { "eu-" = "eu-west", "us-" = "us-east" }

[classes.likes]
conflict = "gcounter"

[classes.settings]
conflict = "lww"
rollout = "read-local"
"#;

    fn config() -> Config {
        Config::from_toml(CONFIG, "test.toml").unwrap()
    }

    fn all(state: State) -> BTreeMap<String, State> {
        ["us-east", "us-west", "eu-west"]
            .into_iter()
            .map(|r| (r.to_owned(), state))
            .collect()
    }

    #[test]
    fn the_nearest_region_by_the_latency_table_then_by_distance() {
        let c = config();
        let up = all(State::Up);
        let from = |s: &str| parse_origin(&c, s).unwrap();
        let first = |o: &Origin| nearest(&ranked(&c, o, &up)).unwrap().region.clone();
        // A router location with a row uses the row.
        assert_eq!(first(&from("paris")), "eu-west");
        let r = ranked(&c, &from("paris"), &up);
        assert_eq!((r[0].latency_ms, r[1].latency_ms), (9, 41));
        // A region's own location: itself first.
        assert_eq!(first(&from("us-west")), "us-west");
        assert_eq!(first(&from("us-east")), "us-east");
        // A point: by great-circle distance (Tokyo is nearer Oregon).
        assert_eq!(first(&from("35.7,139.7")), "us-west");
        assert_eq!(first(&from(" 40.4 , -3.7 ")), "eu-west");
    }

    #[test]
    fn a_region_declared_down_is_never_named() {
        let c = config();
        let mut h = all(State::Up);
        h.insert("eu-west".into(), State::Down);
        let o = parse_origin(&c, "paris").unwrap();
        assert_eq!(nearest(&ranked(&c, &o, &h)).unwrap().region, "us-east");
        // Unknown regions are a fallback only while none is up.
        h.insert("us-east".into(), State::Unknown);
        assert_eq!(nearest(&ranked(&c, &o, &h)).unwrap().region, "us-west");
        h.insert("us-west".into(), State::Unknown);
        assert_eq!(nearest(&ranked(&c, &o, &h)).unwrap().region, "us-east");
        let down = all(State::Down);
        assert!(nearest(&ranked(&c, &o, &down)).is_none());
    }

    #[test]
    fn writes_of_owned_keys_go_to_the_owner_and_follow_delegations() {
        let c = config();
        let none = RolloutView::default();
        let mut view = OwnershipView::default();
        let r = key_route(&c, "balances", "eu-42", OpKind::Put, &view, &none).unwrap();
        assert_eq!(r.must.as_deref(), Some("eu-west"));
        // Reads of the same key go anywhere.
        let r = key_route(&c, "balances", "eu-42", OpKind::Get, &view, &none).unwrap();
        assert_eq!(r.must, None);
        // After a failover, the delegate owns it.
        view.delegations.insert(
            "eu-west".into(),
            parallax_core::routing::Delegation {
                delegate: "us-east".into(),
                epoch: 3,
            },
        );
        let r = key_route(&c, "balances", "eu-42", OpKind::Put, &view, &none).unwrap();
        assert_eq!(r.must.as_deref(), Some("us-east"));
        assert!(r.why.contains("epoch 3"), "{}", r.why);
        // A global class: anywhere. A read-local class: writes to the primary.
        assert_eq!(
            key_route(&c, "likes", "k", OpKind::Incr, &view, &none)
                .unwrap()
                .must,
            None
        );
        assert_eq!(
            key_route(&c, "settings", "k", OpKind::Put, &view, &none)
                .unwrap()
                .must
                .as_deref(),
            Some("us-east")
        );
    }

    #[test]
    fn a_stage_set_at_runtime_routes_in_place_of_the_configured_one() {
        let c = config();
        let view = OwnershipView::default();
        let mut stages = RolloutView::default();
        // `likes` is active-active by config: an increment goes anywhere.
        let incr = |stages: &RolloutView| {
            key_route(&c, "likes", "k", OpKind::Incr, &view, stages)
                .unwrap()
                .must
        };
        assert_eq!(incr(&stages), None);
        stages.stages.insert(
            "likes".into(),
            parallax_core::rollout::StageSet {
                stage: parallax_core::config::Rollout::ReadLocal,
                from: parallax_core::config::Rollout::LimitedWrites,
                forced: false,
                at_us: 1,
                by: "us-west".into(),
            },
        );
        assert_eq!(incr(&stages).as_deref(), Some("us-east"));
        // Reads still go anywhere in read-local.
        let read = key_route(&c, "likes", "k", OpKind::Get, &view, &stages).unwrap();
        assert_eq!(read.must, None);
    }

    #[test]
    fn bad_input_names_the_input_and_the_fix() {
        let c = config();
        for (from, says) in [
            ("tokyo", "not a known location"),
            ("91,0", "off the globe"),
            ("10,abc", "longitude `abc`"),
            ("NaN,3", "latitude `NaN`"),
        ] {
            let e = parse_origin(&c, from).unwrap_err();
            assert!(matches!(e, Refusal::Bad(_)), "{from}: {e:?}");
            assert!(
                e.message().contains(says) && e.message().contains("Fix"),
                "{from}: {e:?}"
            );
        }
        let v = OwnershipView::default();
        let none = RolloutView::default();
        let e = key_route(&c, "nope", "k", OpKind::Put, &v, &none).unwrap_err();
        assert!(
            matches!(e, Refusal::NotFound(_)) && e.message().contains("balances"),
            "{e:?}"
        );
        let e = key_route(&c, "_ownership", "k", OpKind::Put, &v, &none).unwrap_err();
        assert!(matches!(e, Refusal::NotFound(_)), "{e:?}");
        let e = key_route(&c, "balances", "zz-1", OpKind::Put, &v, &none).unwrap_err();
        assert!(e.message().contains("no home region"), "{e:?}");
        assert!(
            parse_op("frobnicate")
                .unwrap_err()
                .message()
                .contains("op=read")
        );
    }
}
