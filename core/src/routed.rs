//! A client of the whole cluster that follows a router.
//!
//! It asks a router (`GET /v1/route`) where each request goes and caches
//! the answer for the answer's TTL, as a DNS resolver would. When the
//! region does not answer, it moves to the next region of the answer that
//! is up, and keeps away from the silent one for a TTL:
//!
//! - a read, a `PUT` of a value, a delete and a set add or remove are
//!   idempotent, and are sent again to the next region;
//! - an increment is not: when its region took it and did not answer, the
//!   client does not send it again and reports it as
//!   [`ClientError::Indeterminate`]. Only an increment that surely never
//!   reached its region (no connection) moves on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::api::EntityOp;
use crate::client::{ClientError, ReadOptions, RegionClient, WriteOptions};
use crate::protocol::{ReadOutcome, WriteOutcome};

/// What the client reads of a router's answer.
#[derive(Clone, Debug, Deserialize)]
struct Route {
    region: String,
    url: String,
    ttl_s: u32,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Deserialize)]
struct Candidate {
    region: String,
    url: String,
    state: String,
}

/// A client that sends each request where a router says.
#[derive(Debug)]
pub struct RoutedClient {
    routers: Vec<String>,
    from: Option<String>,
    http: reqwest::Client,
    client_token: String,
    admin_token: String,
    timeout: Duration,
    cache: Mutex<HashMap<String, (Route, Instant)>>,
    avoid: Mutex<HashMap<String, Instant>>,
}

impl RoutedClient {
    /// A client asking the routers at `routers` (base URLs, tried in order)
    /// for clients at `from` (`None`: each router's own location).
    pub fn new(routers: Vec<String>, from: Option<String>) -> RoutedClient {
        RoutedClient {
            routers: routers
                .into_iter()
                .map(|r| r.trim_end_matches('/').to_owned())
                .collect(),
            from,
            http: reqwest::Client::new(),
            client_token: String::new(),
            admin_token: String::new(),
            timeout: Duration::from_secs(2),
            cache: Mutex::new(HashMap::new()),
            avoid: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the routers and regions through `http` (say, one trusting the
    /// cluster's CA: [`crate::config::TlsConfig::client_builder`]).
    pub fn with_http(mut self, http: reqwest::Client) -> RoutedClient {
        self.http = http;
        self
    }

    /// Sets the tokens sent to regions.
    pub fn with_tokens(mut self, client_token: &str, admin_token: &str) -> RoutedClient {
        self.client_token = client_token.to_owned();
        self.admin_token = admin_token.to_owned();
        self
    }

    /// Gives each attempt at a region (and each router call) at most `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> RoutedClient {
        self.timeout = timeout;
        self
    }

    /// `GET` an entity; sent again to the next region if its region is silent.
    pub async fn get(
        &self,
        class: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<ReadOutcome, ClientError> {
        self.run(class, key, "read", true, |c| async move {
            c.get(class, key, opts).await
        })
        .await
    }

    /// `PUT` a value; sent again to the next region if its region is silent.
    pub async fn put(
        &self,
        class: &str,
        key: &str,
        value: &Value,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        self.run(class, key, "write", true, |c| async move {
            c.put(class, key, value, opts).await
        })
        .await
    }

    /// `DELETE`; sent again to the next region if its region is silent.
    pub async fn delete(
        &self,
        class: &str,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        self.run(class, key, "delete", true, |c| async move {
            c.delete(class, key, opts).await
        })
        .await
    }

    /// An operation: a set add or remove is sent again to the next region
    /// if its region is silent; an increment is reported indeterminate.
    pub async fn op(
        &self,
        class: &str,
        key: &str,
        op: &EntityOp,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        let (name, idempotent) = match op {
            EntityOp::Incr { .. } | EntityOp::Decr { .. } => ("incr", false),
            EntityOp::Add { .. } => ("add", true),
            EntityOp::Remove { .. } => ("remove", true),
        };
        self.run(class, key, name, idempotent, |c| async move {
            c.op(class, key, op, opts).await
        })
        .await
    }

    /// The region a request on `class`/`key` (`op`: read, write, incr, ...)
    /// would be sent to first now: the cached route's, unless that region
    /// was silent lately.
    pub async fn region_for(
        &self,
        class: &str,
        key: &str,
        op: &str,
    ) -> Result<String, ClientError> {
        let route = self.route(&self.query(class, key, op)).await?;
        Ok(self
            .attempts(&route)
            .into_iter()
            .next()
            .map_or(route.region, |(region, _)| region))
    }

    /// The regions a request on `route` tries, in turn: the route's region,
    /// then (unless only it may take the request, an owned key) the other
    /// regions up; those silent lately last.
    fn attempts(&self, route: &Route) -> Vec<(String, String)> {
        let mut order = vec![(route.region.clone(), route.url.clone())];
        if route.owner.is_none() {
            order.extend(
                route
                    .candidates
                    .iter()
                    .filter(|c| c.state == "up" && c.region != route.region)
                    .map(|c| (c.region.clone(), c.url.clone())),
            );
        }
        let avoided = self.avoided();
        let (fresh, silent): (Vec<_>, Vec<_>) =
            order.into_iter().partition(|(r, _)| !avoided.contains(r));
        fresh.into_iter().chain(silent).collect()
    }

    async fn run<T, F, Fut>(
        &self,
        class: &str,
        key: &str,
        op: &str,
        idempotent: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(RegionClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let query = self.query(class, key, op);
        let route = self.route(&query).await?;
        let mut last = None;
        for (region, url) in self.attempts(&route) {
            // One HTTP client for every region: its connections are kept
            // and reused, not opened anew for each request.
            let mut client = RegionClient::over(&region, &url, self.http.clone())
                .with_tokens(&self.client_token, &self.admin_token)
                .with_timeout(self.timeout);
            if let Some(from) = &self.from {
                // The region records where its writes come from: a stale
                // route shows on the Failovers page by client location.
                client = client.with_client_geo(from);
            }
            match call(client).await {
                Err(ClientError::Unreachable {
                    region,
                    url,
                    cause,
                    maybe_applied,
                }) => {
                    self.avoid(&region, route.ttl_s);
                    self.cache.lock().expect("route cache").remove(&query);
                    if maybe_applied && !idempotent {
                        return Err(ClientError::Indeterminate { region, url, cause });
                    }
                    last = Some(ClientError::Unreachable {
                        region,
                        url,
                        cause,
                        maybe_applied,
                    });
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Invalid("no region to send the request to".into())))
    }

    fn query(&self, class: &str, key: &str, op: &str) -> String {
        let enc = |s: &str| crate::client::percent_encode(s);
        let mut q = format!("class={}&key={}&op={op}", enc(class), enc(key));
        if let Some(from) = &self.from {
            q.push_str(&format!("&from={}", enc(from)));
        }
        q
    }

    /// The route for `query`: cached while its TTL lasts, else asked of
    /// the routers in turn.
    async fn route(&self, query: &str) -> Result<Route, ClientError> {
        if let Some((r, until)) = self.cache.lock().expect("route cache").get(query)
            && Instant::now() < *until
        {
            return Ok(r.clone());
        }
        let mut last = None;
        for router in &self.routers {
            let url = format!("{router}/v1/route?{query}");
            let unreachable = |cause: String, maybe_applied| ClientError::Unreachable {
                region: "the router".into(),
                url: url.clone(),
                cause,
                maybe_applied,
            };
            let resp = match self.http.get(&url).timeout(self.timeout).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(unreachable(crate::transport::error_chain(&e), false));
                    continue;
                }
            };
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| unreachable(crate::transport::error_chain(&e), false))?;
            if !status.is_success() {
                let error = serde_json::from_slice::<Value>(&body).unwrap_or_default();
                return Err(ClientError::Refused {
                    region: "the router".into(),
                    method: "GET".into(),
                    url,
                    error: Box::new(crate::error::ApiError {
                        status: status.as_u16(),
                        error: error["error"].as_str().unwrap_or("router").to_owned(),
                        detail: error["detail"].as_str().map_or_else(
                            || String::from_utf8_lossy(&body).into_owned(),
                            str::to_owned,
                        ),
                        owner: None,
                        owner_url: None,
                    }),
                });
            }
            let route: Route =
                serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer {
                    region: "the router".into(),
                    url: url.clone(),
                    cause: e.to_string(),
                })?;
            let until = Instant::now() + Duration::from_secs(u64::from(route.ttl_s));
            self.cache
                .lock()
                .expect("route cache")
                .insert(query.to_owned(), (route.clone(), until));
            return Ok(route);
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Invalid("no router to ask. Fix: give at least one router URL".into())
        }))
    }

    fn avoid(&self, region: &str, ttl_s: u32) {
        let until = Instant::now() + Duration::from_secs(u64::from(ttl_s.max(1)));
        self.avoid
            .lock()
            .expect("avoid list")
            .insert(region.to_owned(), until);
    }

    fn avoided(&self) -> Vec<String> {
        let now = Instant::now();
        let mut avoid = self.avoid.lock().expect("avoid list");
        avoid.retain(|_, until| *until > now);
        avoid.keys().cloned().collect()
    }
}
