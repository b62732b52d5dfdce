//! A write load over every conflict policy, spread over the regions: what
//! the demo (and the drills) run while they watch the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parallax_core::config::Config;
use serde_json::{Value, json};

use crate::process::RunningRegion;
use rand_like::Rng;

/// A tiny RNG so the load is reproducible from its seed (xorshift*).
mod rand_like {
    #[derive(Debug)]
    pub(super) struct Rng(u64);
    impl Rng {
        pub(super) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
        }
    }
}

/// The load's clients, its seeded choices and what it counted.
#[derive(Debug)]
pub struct Load {
    client: reqwest::Client,
    urls: Vec<String>,
    token: String,
    classes: Vec<String>,
    rng: std::sync::Mutex<Rng>,
    /// Requests answered 2xx.
    pub ok: AtomicU64,
    /// Requests answered 404 or 409, as the load expects some to be.
    pub refused: AtomicU64,
    /// Requests that failed otherwise.
    pub failed: AtomicU64,
    /// Increments of `likes` acknowledged.
    pub likes: AtomicI64,
}

impl Load {
    /// A load on `regions` of `config`, its choices drawn from `seed`.
    pub fn new(config: &Config, regions: &[(String, RunningRegion)], seed: u64) -> Arc<Load> {
        Arc::new(Load {
            client: reqwest::Client::new(),
            urls: regions
                .iter()
                .map(|(_, r)| format!("http://{}", r.addr))
                .collect(),
            token: config.cluster.client_token.clone(),
            classes: config.classes.keys().cloned().collect(),
            rng: std::sync::Mutex::new(Rng::new(seed)),
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            likes: AtomicI64::new(0),
        })
    }

    fn pick(&self, n: u64) -> u64 {
        self.rng.lock().expect("rng lock").below(n)
    }

    async fn send(
        &self,
        region: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.urls[region]))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                r.json().await.ok()
            }
            // Reading a profile before its first write (404) and writing a
            // ticket that waits in the reconciliation queue (409) are
            // answers the load expects.
            Ok(r) if matches!(r.status().as_u16(), 404 | 409) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("  request failed: HTTP {status}: {body}");
                }
                None
            }
            Err(e) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("  request failed: {e}");
                }
                None
            }
        }
    }

    /// One client operation on a random class, from a random region.
    pub async fn one(&self) {
        let region = self.pick(self.urls.len() as u64) as usize;
        let class = self.classes[self.pick(self.classes.len() as u64) as usize].clone();
        let post = reqwest::Method::POST;
        let put = reqwest::Method::PUT;
        match class.as_str() {
            "likes" => {
                let key = format!("post-{}", self.pick(20));
                if self
                    .send(
                        region,
                        post,
                        &format!("/v1/entities/likes/{key}/ops"),
                        Some(json!({"op": "incr", "by": 1})),
                    )
                    .await
                    .is_some()
                {
                    self.likes.fetch_add(1, Ordering::Relaxed);
                }
            }
            "stock" => {
                let by = self.pick(11) as i64 - 5;
                let key = format!("sku-{}", self.pick(10));
                self.send(
                    region,
                    post,
                    &format!("/v1/entities/stock/{key}/ops"),
                    Some(json!({"op": "incr", "by": by})),
                )
                .await;
            }
            "carts" => {
                let key = format!("cart-{}", self.pick(30));
                let op = if self.pick(3) == 0 { "remove" } else { "add" };
                let item = format!("item-{}", self.pick(8));
                self.send(
                    region,
                    post,
                    &format!("/v1/entities/carts/{key}/ops"),
                    Some(json!({"op": op, "member": item})),
                )
                .await;
            }
            "profiles" => {
                let key = format!("user-{}", self.pick(25));
                let path = format!("/v1/entities/profiles/{key}");
                let logins = self
                    .send(region, reqwest::Method::GET, &path, None)
                    .await
                    .and_then(|v| v["value"]["logins"].as_i64())
                    .unwrap_or(0);
                let now = parallax_core::clock::Clock::now_ms(&parallax_core::clock::SystemClock);
                let body = json!({
                    "name": format!("user {} v{}", key, self.pick(100)),
                    "last_seen": now, "first_seen": now,
                    "tags": [format!("t{}", self.pick(6))],
                    "logins": logins + 1,
                });
                self.send(region, put, &path, Some(body)).await;
            }
            "settings" => {
                let key = format!("flag-{}", self.pick(5));
                self.send(
                    region,
                    put,
                    &format!("/v1/entities/settings/{key}"),
                    Some(json!({"enabled": self.pick(2) == 1})),
                )
                .await;
            }
            "balances" => {
                let prefix = ["us-", "usw-", "eu-"][self.pick(3) as usize];
                let key = format!("{prefix}{}", self.pick(10));
                self.send(
                    region,
                    put,
                    &format!("/v1/entities/balances/{key}"),
                    Some(json!({"cents": self.pick(100_000)})),
                )
                .await;
            }
            "tickets" => {
                // Two regions edit the same ticket at once: a conflict for the queue.
                let key = format!("ticket-{}", self.pick(6));
                let path = format!("/v1/entities/tickets/{key}");
                let other = (region + 1) % self.urls.len();
                let a = self.send(
                    region,
                    put.clone(),
                    &path,
                    Some(json!({"status": "open", "by": region})),
                );
                let b = self.send(
                    other,
                    put,
                    &path,
                    Some(json!({"status": "closed", "by": other})),
                );
                let (ra, _) = tokio::join!(a, b);
                if ra.is_none() && self.pick(2) == 0 {
                    // Conflicted already: an operator resolves it.
                    let resolve = format!("/v1/conflicts/tickets/{key}/resolve");
                    self.send(
                        region,
                        post,
                        &resolve,
                        Some(json!({"value": {"status": "reviewed"}})),
                    )
                    .await;
                }
            }
            other => {
                let key = format!("k-{}", self.pick(10));
                self.send(
                    region,
                    reqwest::Method::GET,
                    &format!("/v1/entities/{other}/{key}"),
                    None,
                )
                .await;
            }
        }
    }
}
