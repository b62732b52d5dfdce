//! Who serves a request: ownership (home, hash, global) and the rollout
//! stage, as pure functions of the config, the key and the ownership view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ClassConfig, Config, OpKind, Ownership, Rollout};
use crate::error::{Error, Result};

/// Ownership moved away from a region (by a failover): its keys are owned by
/// `delegate` from `epoch` on. Writes carry the epoch they were made under,
/// and an LWW write under a newer epoch beats one under an older epoch, so a
/// region that lost ownership cannot overwrite the new owner's writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// Region now owning the keys.
    pub delegate: String,
    /// Epoch of this delegation; higher replaces lower.
    pub epoch: u64,
}

/// The cluster's current ownership delegations, by original owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipView {
    /// Original owner -> delegation.
    pub delegations: BTreeMap<String, Delegation>,
}

impl OwnershipView {
    /// The region that owns what `region` owns by config, and the epoch.
    pub fn effective(&self, region: &str) -> (String, u64) {
        match self.delegations.get(region) {
            Some(d) if d.delegate != region => (d.delegate.clone(), d.epoch),
            Some(d) => (region.to_owned(), d.epoch),
            None => (region.to_owned(), 0),
        }
    }

    /// The view stored as `_ownership` entities: key = original owner,
    /// value = `{"delegate": region, "epoch": n}`.
    pub fn from_values<'a>(
        values: impl Iterator<Item = (&'a str, serde_json::Value)>,
    ) -> OwnershipView {
        let delegations = values
            .filter_map(|(region, v)| {
                let delegate = v.get("delegate")?.as_str()?.to_owned();
                let epoch = v.get("epoch")?.as_u64()?;
                Some((region.to_owned(), Delegation { delegate, epoch }))
            })
            .collect();
        OwnershipView { delegations }
    }

    /// The highest epoch in the view.
    pub fn max_epoch(&self) -> u64 {
        self.delegations
            .values()
            .map(|d| d.epoch)
            .max()
            .unwrap_or(0)
    }

    /// Joins another view: per region, the higher epoch wins.
    pub fn join(&mut self, other: &OwnershipView) {
        for (region, d) in &other.delegations {
            match self.delegations.get(region) {
                Some(mine) if mine.epoch >= d.epoch => {}
                _ => {
                    self.delegations.insert(region.clone(), d.clone());
                }
            }
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This region serves it.
    Local {
        /// Ownership epoch to stamp on a write.
        epoch: u64,
        /// The region whose delegation this region serves it under (the
        /// key's owner by config, or the class's primary); `None` when any
        /// region serves it. A write is taken only if that delegation
        /// still names this region when it commits.
        under: Option<String>,
    },
    /// Another region must.
    Remote {
        /// The region.
        to: String,
        /// Why, for errors and logs.
        why: String,
    },
}

/// The primary region of a class.
pub fn primary<'a>(config: &'a Config, class: &'a ClassConfig) -> &'a str {
    class.primary.as_deref().unwrap_or_else(|| config.primary())
}

/// The home region a key of a `home` class has by config (explicit home first).
pub fn home_of(
    class_name: &str,
    class: &ClassConfig,
    key: &str,
    explicit: Option<&str>,
) -> Result<String> {
    if let Some(h) = explicit {
        return Ok(h.to_owned());
    }
    if let Some((tenant, _)) = key.split_once(class.tenant_separator.as_str())
        && let Some(h) = class.home_tenants.get(tenant)
    {
        return Ok(h.clone());
    }
    let by_prefix = class
        .home_prefixes
        .iter()
        .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len());
    if let Some((_, h)) = by_prefix {
        return Ok(h.clone());
    }
    class.default_home.clone().ok_or_else(|| {
        Error::BadRequest(format!(
            "key `{key}` of class `{class_name}` has no home region: no tenant, prefix or default_home \
             places it. Fix: create it with ?home=<region>, or set classes.{class_name}.default_home"
        ))
    })
}

/// The region consistent hashing gives a key (rendezvous hashing: the
/// region with the highest BLAKE3 score; adding a region moves only ~1/n keys).
pub fn hash_owner<'a>(regions: impl IntoIterator<Item = &'a String>, key: &str) -> String {
    regions
        .into_iter()
        .max_by_key(|region| {
            let mut h = blake3::Hasher::new();
            h.update(region.as_bytes());
            h.update(&[0]);
            h.update(key.as_bytes());
            *h.finalize().as_bytes()
        })
        .cloned()
        .unwrap_or_default()
}

/// The owner of a key and the epoch it owns it under; `None` for a global class.
pub fn owner(
    config: &Config,
    class_name: &str,
    class: &ClassConfig,
    key: &str,
    explicit_home: Option<&str>,
    view: &OwnershipView,
) -> Result<Option<(String, u64)>> {
    Ok(owned_under(config, class_name, class, key, explicit_home)?.map(|r| view.effective(&r)))
}

/// The region that owns a key by config (before delegations); `None` for
/// a global class.
fn owned_under(
    config: &Config,
    class_name: &str,
    class: &ClassConfig,
    key: &str,
    explicit_home: Option<&str>,
) -> Result<Option<String>> {
    Ok(match class.ownership {
        Ownership::Global => None,
        Ownership::Home => Some(home_of(class_name, class, key, explicit_home)?),
        Ownership::Hash => Some(hash_owner(config.regions.keys(), key)),
    })
}

/// Where a write goes, by rollout stage (the class's stage now, see
/// [`crate::rollout::RolloutView::stage`]) and then ownership.
pub fn route_write(
    config: &Config,
    me: &str,
    class_name: &str,
    class: &ClassConfig,
    key: &str,
    op: OpKind,
    explicit_home: Option<&str>,
    view: &OwnershipView,
    stage: Rollout,
) -> Result<Route> {
    let to_primary = match stage {
        Rollout::ActivePassive | Rollout::ReadLocal => {
            Some("the class is in the `{}` rollout stage: only the primary writes")
        }
        Rollout::LimitedWrites if !class.limited_ops.contains(&op) => Some(
            "the class is in the `{}` rollout stage and `limited_ops` does not list this operation: the primary writes it",
        ),
        _ => None,
    };
    if let Some(why) = to_primary {
        let under = primary(config, class);
        let (p, epoch) = view.effective(under);
        let why = why.replace("{}", stage.as_str());
        return Ok(if p == me {
            Route::Local {
                epoch,
                under: Some(under.to_owned()),
            }
        } else {
            Route::Remote { to: p, why }
        });
    }
    let Some(under) = owned_under(config, class_name, class, key, explicit_home)? else {
        return Ok(Route::Local {
            epoch: 0,
            under: None,
        });
    };
    match view.effective(&under) {
        (o, epoch) if o == me => Ok(Route::Local {
            epoch,
            under: Some(under),
        }),
        (o, _) => Ok(Route::Remote {
            to: o,
            why: format!(
                "the key is owned by another region (ownership = \"{}\")",
                class.ownership.as_str()
            ),
        }),
    }
}

/// Where a read goes by rollout stage: in `active-passive` only the primary serves.
pub fn route_read(
    config: &Config,
    me: &str,
    class: &ClassConfig,
    view: &OwnershipView,
    stage: Rollout,
) -> Route {
    if stage == Rollout::ActivePassive {
        let under = primary(config, class);
        let (p, epoch) = view.effective(under);
        if p != me {
            return Route::Remote {
                to: p,
                why: "the class is in the `active-passive` rollout stage: only the primary serves"
                    .into(),
            };
        }
        return Route::Local {
            epoch,
            under: Some(under.to_owned()),
        };
    }
    Route::Local {
        epoch: 0,
        under: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"
primary = "us-east"
[regions.us-east]
listen = "127.0.0.1:1"
location = { lat = 0.0, lon = 0.0 }
[regions.us-west]
listen = "127.0.0.1:2"
location = { lat = 0.0, lon = 0.0 }
[regions.eu-west]
listen = "127.0.0.1:3"
location = { lat = 0.0, lon = 0.0 }
[classes.balances]
conflict = "manual"
ownership = "home"
home_prefixes = { "eu-" = "eu-west", "eu-ire-" = "us-west" }
home_tenants = { acme = "us-west" }
[classes.carts]
conflict = "orset"
ownership = "hash"
[classes.likes]
conflict = "gcounter"
rollout = "limited-writes"
limited_ops = ["incr"]
[classes.profiles]
conflict = "lww"
rollout = "read-local"
"#,
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn home_resolution_order() {
        let c = config();
        let b = &c.classes["balances"];
        assert_eq!(
            home_of("balances", b, "acme:eu-1", None).unwrap(),
            "us-west"
        );
        assert_eq!(home_of("balances", b, "eu-123", None).unwrap(), "eu-west");
        assert_eq!(
            home_of("balances", b, "eu-ire-9", None).unwrap(),
            "us-west",
            "longest prefix"
        );
        assert_eq!(
            home_of("balances", b, "x", Some("us-east")).unwrap(),
            "us-east"
        );
        let err = home_of("balances", b, "nowhere", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("?home=") && err.contains("default_home"),
            "{err}"
        );
    }

    #[test]
    fn writes_route_by_stage_then_owner() {
        let c = config();
        let view = OwnershipView::default();
        let r = |class: &str, key: &str, op, me: &str| {
            let cc = &c.classes[class];
            route_write(&c, me, class, cc, key, op, None, &view, cc.rollout).unwrap()
        };
        assert_eq!(
            r("balances", "eu-1", OpKind::Put, "eu-west"),
            Route::Local {
                epoch: 0,
                under: Some("eu-west".into())
            }
        );
        assert!(
            matches!(r("balances", "eu-1", OpKind::Put, "us-east"), Route::Remote { to, .. } if to == "eu-west")
        );
        assert_eq!(
            r("likes", "k", OpKind::Incr, "eu-west"),
            Route::Local {
                epoch: 0,
                under: None
            }
        );
        assert!(
            matches!(r("likes", "k", OpKind::Delete, "eu-west"), Route::Remote { to, .. } if to == "us-east")
        );
        assert!(
            matches!(r("profiles", "k", OpKind::Put, "us-west"), Route::Remote { to, .. } if to == "us-east")
        );
        let owner = hash_owner(c.regions.keys(), "cart-1");
        assert_eq!(
            r("carts", "cart-1", OpKind::Add, &owner),
            Route::Local {
                epoch: 0,
                under: Some(owner.clone())
            }
        );
    }

    #[test]
    fn delegation_moves_ownership_with_a_new_epoch() {
        let c = config();
        let mut view = OwnershipView::default();
        view.join(&OwnershipView {
            delegations: BTreeMap::from([(
                "eu-west".to_owned(),
                Delegation {
                    delegate: "us-east".into(),
                    epoch: 3,
                },
            )]),
        });
        let route = route_write(
            &c,
            "us-east",
            "balances",
            &c.classes["balances"],
            "eu-1",
            OpKind::Put,
            None,
            &view,
            Rollout::ActiveActive,
        )
        .unwrap();
        assert_eq!(
            route,
            Route::Local {
                epoch: 3,
                under: Some("eu-west".into())
            }
        );
        // An older delegation does not replace a newer one.
        view.join(&OwnershipView {
            delegations: BTreeMap::from([(
                "eu-west".to_owned(),
                Delegation {
                    delegate: "eu-west".into(),
                    epoch: 2,
                },
            )]),
        });
        assert_eq!(view.effective("eu-west"), ("us-east".to_owned(), 3));
    }

    #[test]
    fn hash_ownership_spreads_keys() {
        let c = config();
        let mut counts = BTreeMap::new();
        for i in 0..3000 {
            *counts
                .entry(hash_owner(c.regions.keys(), &format!("k{i}")))
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n > 800), "{counts:?}");
    }
}
