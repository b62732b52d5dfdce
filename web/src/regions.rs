//! Every call the web app makes to the regions, through the typed client
//! of the region API ([`RegionClient`]): readiness for the overview, the
//! reconciliation queue and its siblings for the conflicts page, resolves
//! and anti-entropy runs for the admin actions. Each call has its own time
//! limit, so a region that does not answer slows a page by that much at
//! most.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parallax_core::api::Resolution;
use parallax_core::config::Config;
use parallax_core::secrets::SecretCell;
use parallax_core::sync::AntiEntropyReport;
use parallax_core::{ClientError, ReadOptions, RegionClient};
use serde_json::Value;

use crate::filters::Filters;
use crate::pages::{Queue, QueueItem};
use crate::time;

/// How long the overview waits for each region's `GET /readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the conflicts page waits for each region's queue and siblings.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an anti-entropy run may take.
const ANTI_ENTROPY_TIMEOUT: Duration = Duration::from_secs(60);

/// Queued entities whose siblings are read for the conflicts page.
const SIBLINGS_SHOWN: usize = 50;

/// Why a call to a region did not happen or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The config declares no such region.
    #[error("region `{region}` is not in the config. Fix: pick one of {known}")]
    Unknown {
        /// The region asked for.
        region: String,
        /// The regions there are, comma-separated.
        known: String,
    },
    /// The call failed: unreachable, refused or unreadable.
    #[error(transparent)]
    Call(#[from] ClientError),
    /// The entity has fewer siblings than the form named (1-based).
    #[error("{class}/{key} has no sibling {number} any more (it may be resolved already)")]
    NoSibling {
        /// Class.
        class: String,
        /// Key.
        key: String,
        /// The sibling's number, from 1.
        number: usize,
    },
    /// A resolve was redirected to a new owner twice.
    #[error("the owner moved twice while resolving; try again")]
    OwnerMoved,
}

/// One client per region of the config, built once (each holds its
/// connection pool).
#[derive(Clone, Debug)]
pub(crate) struct Regions {
    clients: BTreeMap<String, RegionClient>,
}

impl Regions {
    /// The clients of every region `config` declares, sending the tokens
    /// in force in `secrets`.
    pub(crate) fn new(config: &Config, secrets: &SecretCell) -> Regions {
        Regions {
            clients: config
                .region_names()
                .into_iter()
                .filter_map(|r| {
                    let client = RegionClient::from_config(config, &r)?;
                    Some((r, client.with_secrets(secrets.clone())))
                })
                .collect(),
        }
    }

    /// The client of `region`, or an error naming the regions there are.
    fn client(&self, region: &str) -> Result<&RegionClient, RegionError> {
        self.clients
            .get(region)
            .ok_or_else(|| RegionError::Unknown {
                region: region.to_owned(),
                known: self.clients.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Asks each region's `GET /readyz`, all at once: `ready`, `not
    /// ready` or `unreachable`, and how long the answer took (ms).
    pub(crate) async fn readiness(
        &self,
        regions: impl Iterator<Item = String>,
    ) -> BTreeMap<String, (String, Option<f64>)> {
        let asks = regions.map(|region| async move {
            let Ok(client) = self.client(&region) else {
                return (region, ("unreachable".to_owned(), None));
            };
            let started = Instant::now();
            let answer = client.clone().with_timeout(READY_TIMEOUT).readyz().await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let state = match answer {
                Ok(_) => "ready",
                Err(ClientError::Unreachable { .. }) => "unreachable",
                Err(_) => "not ready",
            };
            (region, (state.to_owned(), Some(ms)))
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// Asks every (filtered) region for its reconciliation queue and the
    /// siblings of each queued entity.
    pub(crate) async fn queue(&self, f: &Filters) -> Queue {
        let mut items: BTreeMap<(String, String), QueueItem> = BTreeMap::new();
        let mut errors = Vec::new();
        let class = (f.classes.len() == 1).then(|| f.classes[0].as_str());
        for (region, client) in self.clients.iter().filter(|(r, _)| f.wants_region(r)) {
            let list = match client
                .clone()
                .with_timeout(QUEUE_TIMEOUT)
                .conflicts(class, Some(200))
                .await
            {
                Ok(list) => list,
                Err(ClientError::Unreachable { url, cause, .. }) => {
                    errors.push(format!(
                        "{region} could not be asked for its queue at {url}: {cause}"
                    ));
                    continue;
                }
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            for c in list.conflicts {
                if !f.classes.is_empty() && !f.classes.contains(&c.class) {
                    continue;
                }
                let item = items
                    .entry((c.class.clone(), c.key.clone()))
                    .or_insert_with(|| QueueItem {
                        class: c.class,
                        key: c.key,
                        regions: Vec::new(),
                        first_seen: time::human(c.first_seen_us as i64),
                        siblings: Vec::new(),
                    });
                item.regions.push(region.clone());
            }
        }
        for item in items.values_mut().take(SIBLINGS_SHOWN) {
            let Ok(client) = self.client(&item.regions[0]) else {
                continue;
            };
            if let Ok(read) = client
                .clone()
                .with_timeout(QUEUE_TIMEOUT)
                .get(&item.class, &item.key, &ReadOptions::default())
                .await
            {
                item.siblings = read
                    .siblings
                    .iter()
                    .map(|s| {
                        if s.deleted {
                            "deleted".to_owned()
                        } else {
                            s.value.to_string()
                        }
                    })
                    .collect();
            }
        }
        Queue {
            items: items.into_values().collect(),
            errors,
        }
    }

    /// Sends a resolve to `region`, following a 421 to the owner once.
    pub(crate) async fn resolve(
        &self,
        region: &str,
        class: &str,
        key: &str,
        r: Resolution,
    ) -> Result<String, RegionError> {
        let mut target = region.to_owned();
        for _ in 0..2 {
            match self.client(&target)?.resolve(class, key, &r, None).await {
                Ok(_) => {
                    return Ok(format!(
                        "Resolved {class}/{key} in {target}; it replicates to every region."
                    ));
                }
                Err(ClientError::Refused { error, .. })
                    if error.status == 421 && error.owner.is_some() =>
                {
                    target = error.owner.unwrap_or_default();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegionError::OwnerMoved)
    }

    /// The `i`th sibling's value (`None` for a tombstone), read again so the
    /// form never carries values.
    pub(crate) async fn sibling(
        &self,
        region: &str,
        class: &str,
        key: &str,
        i: usize,
    ) -> Result<Option<Value>, RegionError> {
        let read = self
            .client(region)?
            .get(class, key, &ReadOptions::default())
            .await?;
        let s = read.siblings.get(i).ok_or_else(|| RegionError::NoSibling {
            class: class.to_owned(),
            key: key.to_owned(),
            number: i + 1,
        })?;
        Ok((!s.deleted).then(|| s.value.clone()))
    }

    /// Runs anti-entropy in `region` with every peer.
    pub(crate) async fn anti_entropy(
        &self,
        region: &str,
    ) -> Result<Vec<AntiEntropyReport>, RegionError> {
        let answer = self
            .client(region)?
            .clone()
            .with_timeout(ANTI_ENTROPY_TIMEOUT)
            .anti_entropy(None)
            .await?;
        Ok(answer.reports)
    }
}
