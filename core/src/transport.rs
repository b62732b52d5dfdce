//! How regions reach each other.
//!
//! [`HttpTransport`] is what regions use in production: MessagePack over
//! `POST /v1/peer/rpc` with the shared peer secret. [`SimNet`] connects
//! nodes inside one process with injected faults (partitions, one-way
//! partitions, latency, loss, crashed regions), driven by a seeded RNG so a
//! simulation replays from its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::links::Links;
use crate::protocol::{PeerReply, PeerRequest, decode, encode};
use crate::secrets::{SecretCell, Secrets};
use crate::traffic::{PeerTraffic, Traffic, kind_of, shares_of};

/// Header naming the calling region.
pub const FROM_HEADER: &str = "x-parallax-from";
/// Path of the region-to-region endpoint.
pub const PEER_PATH: &str = "/v1/peer/rpc";

/// Why a call to another region failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Could not connect, or the connection broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("no answer within the timeout")]
    Timeout,
    /// The other region refused the request (bad secret, unknown region).
    #[error("refused: {0}")]
    Refused(String),
    /// The answer could not be understood.
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// Sends requests from one region to the others.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `req` to region `to` and waits for its answer.
    fn call(
        &self,
        to: &str,
        req: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerReply, TransportError>>;

    /// The bytes of the calls answered so far, by peer and kind (empty
    /// for a transport that does not count them).
    fn traffic(&self) -> Vec<PeerTraffic> {
        Vec::new()
    }
}

/// The client of region-to-region calls: `base` with time limits, a pool
/// deep enough for pipelined batches, and no Nagle delay.
fn peer_client(base: reqwest::ClientBuilder, timeout: Duration) -> reqwest::Client {
    base.timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client builds")
}

/// The HTTP client a transport calls its peers with, replaced while it
/// runs when the region reloads its certificates (a renewed client
/// certificate for mutual TLS). Calls already made finish on the old one.
#[derive(Debug, Clone)]
pub struct PeerClient {
    cell: Arc<std::sync::RwLock<reqwest::Client>>,
    timeout: Duration,
}

impl PeerClient {
    fn new(base: reqwest::ClientBuilder, timeout: Duration) -> PeerClient {
        PeerClient {
            cell: Arc::new(std::sync::RwLock::new(peer_client(base, timeout))),
            timeout,
        }
    }

    /// Calls from now on go through a client built from `base`, with the
    /// transport's time limits.
    pub fn rebuild(&self, base: reqwest::ClientBuilder) {
        let client = peer_client(base, self.timeout);
        *self.cell.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn get(&self) -> reqwest::Client {
        self.cell.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Region-to-region calls over HTTP.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    from: String,
    urls: BTreeMap<String, String>,
    secrets: SecretCell,
    client: PeerClient,
    delays: BTreeMap<String, Duration>,
    timeout: Duration,
    links: Option<Arc<Links>>,
    traffic: Arc<Traffic>,
}

impl HttpTransport {
    /// A transport for region `from`, reaching regions at `urls` (base URLs).
    pub fn new(
        from: impl Into<String>,
        urls: BTreeMap<String, String>,
        secret: impl Into<String>,
        timeout: Duration,
    ) -> HttpTransport {
        let client = PeerClient::new(reqwest::Client::builder(), timeout);
        HttpTransport {
            from: from.into(),
            urls,
            secrets: SecretCell::new(Secrets {
                client: Vec::new(),
                admin: Vec::new(),
                peer: vec![secret.into().into()],
            }),
            client,
            delays: BTreeMap::new(),
            timeout,
            links: None,
            traffic: Arc::default(),
        }
    }

    /// Calls the peers through a client built from `base` (say, one that
    /// trusts the cluster's CA and presents a client certificate: see
    /// [`crate::config::TlsConfig`]), with this transport's time limits.
    pub fn with_client(mut self, base: reqwest::ClientBuilder) -> HttpTransport {
        self.client = PeerClient::new(base, self.timeout);
        self
    }

    /// Its client, to replace while it runs ([`PeerClient::rebuild`]).
    pub fn peer_client(&self) -> PeerClient {
        self.client.clone()
    }

    /// Sends the peer secret in force in `secrets` (swapped when the
    /// region reloads its secrets) instead of the one given to `new`.
    pub fn with_secrets(mut self, secrets: SecretCell) -> HttpTransport {
        self.secrets = secrets;
        self
    }

    /// Drops calls over the links a drill cuts in `links` (`demo --chaos`).
    pub fn with_links(mut self, links: Arc<Links>) -> HttpTransport {
        self.links = Some(links);
        self
    }

    /// Adds a one-way delay before each request to a region, and the same
    /// before its answer is returned: simulated WAN latency for the demo.
    pub fn with_delays(mut self, delays: BTreeMap<String, Duration>) -> HttpTransport {
        self.delays = delays;
        self
    }
}

impl Transport for HttpTransport {
    fn call(
        &self,
        to: &str,
        req: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerReply, TransportError>> {
        let url = self.urls.get(to).map(|u| format!("{u}{PEER_PATH}"));
        let client = self.client.get();
        let secret = self.secrets.get().peer_secret().to_owned();
        let from = self.from.clone();
        let delay = self.delays.get(to).copied().unwrap_or_default();
        let to = to.to_owned();
        let (links, timeout) = (self.links.clone(), self.timeout);
        let traffic = Arc::clone(&self.traffic);
        let kind = kind_of(&req);
        let shares = shares_of(&req);
        Box::pin(async move {
            let url = url.ok_or_else(|| {
                TransportError::Refused(format!("region {to} is not in the config"))
            })?;
            if let Some(links) = links {
                links
                    .cross(&from, &to, timeout)
                    .await
                    .map_err(|_| TransportError::Timeout)?;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let body = encode(&req);
            let sent = body.len() as u64;
            let resp = client
                .post(&url)
                .bearer_auth(&secret)
                .header(FROM_HEADER, &from)
                .header(reqwest::header::CONTENT_TYPE, "application/msgpack")
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        TransportError::Timeout
                    } else {
                        TransportError::Unreachable(format!("{url}: {}", error_chain(&e)))
                    }
                })?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| TransportError::Unreachable(format!("{url}: {e}")))?;
            traffic.count(&to, kind, &shares, sent, bytes.len() as u64);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(TransportError::Refused(format!(
                    "region {to} refused the peer secret; every region must have the same cluster.peer_secret"
                )));
            }
            if !status.is_success() {
                return Err(TransportError::Protocol(format!(
                    "{url} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                )));
            }
            let reply: PeerReply =
                decode(&bytes).map_err(|e| TransportError::Protocol(e.to_string()))?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(reply)
        })
    }

    fn traffic(&self) -> Vec<PeerTraffic> {
        self.traffic.snapshot()
    }
}

/// An error and its causes, e.g. "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Something that answers region-to-region requests: a node.
pub trait PeerHandler: Send + Sync + 'static {
    /// Handles a request from region `from`.
    fn handle(&self, from: &str, req: PeerRequest) -> BoxFuture<'static, PeerReply>;
}

/// An in-process network of nodes with fault injection, for simulations.
pub struct SimNet {
    inner: Mutex<SimInner>,
}

struct SimInner {
    nodes: BTreeMap<String, Weak<dyn PeerHandler>>,
    cut: BTreeSet<(String, String)>,
    min_latency_ms: u64,
    max_latency_ms: u64,
    loss: f64,
    rng: SmallRng,
    delivered: u64,
    failed: u64,
}

impl fmt::Debug for SimNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().expect("simnet lock");
        f.debug_struct("SimNet")
            .field("nodes", &inner.nodes.keys().collect::<Vec<_>>())
            .field("cut", &inner.cut)
            .finish()
    }
}

impl SimNet {
    /// A network whose messages take `min..=max` ms each way, with loss
    /// probability `loss` per message, decided by an RNG seeded with `seed`.
    pub fn new(seed: u64, min_latency_ms: u64, max_latency_ms: u64, loss: f64) -> Arc<SimNet> {
        Arc::new(SimNet {
            inner: Mutex::new(SimInner {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                min_latency_ms,
                max_latency_ms: max_latency_ms.max(min_latency_ms),
                loss,
                rng: SmallRng::seed_from_u64(seed),
                delivered: 0,
                failed: 0,
            }),
        })
    }

    /// The transport region `from` uses.
    pub fn transport(self: &Arc<Self>, from: &str) -> Arc<SimTransport> {
        Arc::new(SimTransport {
            net: Arc::clone(self),
            from: from.to_owned(),
        })
    }

    /// Connects a running node.
    pub fn register(&self, region: &str, handler: Weak<dyn PeerHandler>) {
        self.lock().nodes.insert(region.to_owned(), handler);
    }

    /// Disconnects a node (it crashed or stopped).
    pub fn unregister(&self, region: &str) {
        self.lock().nodes.remove(region);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: &str, b: &str) {
        self.partition_oneway(a, b);
        self.partition_oneway(b, a);
    }

    /// Cuts messages from `from` to `to` only (answers from `to` to `from`
    /// still pass, requests from `to` arrive but their answers are lost).
    pub fn partition_oneway(&self, from: &str, to: &str) {
        self.lock().cut.insert((from.to_owned(), to.to_owned()));
    }

    /// Heals every cut.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Sets the per-message loss probability.
    pub fn set_loss(&self, loss: f64) {
        self.lock().loss = loss;
    }

    /// Messages delivered and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.delivered, inner.failed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimInner> {
        self.inner.lock().expect("simnet lock")
    }

    /// Decides one hop: its latency, and whether it is lost.
    fn hop(&self, from: &str, to: &str) -> (Duration, bool) {
        let mut inner = self.lock();
        let (lo, hi) = (inner.min_latency_ms, inner.max_latency_ms);
        let ms = if hi > lo {
            inner.rng.random_range(lo..=hi)
        } else {
            lo
        };
        let loss = inner.loss;
        let lost = inner.cut.contains(&(from.to_owned(), to.to_owned()))
            || (loss > 0.0 && inner.rng.random_bool(loss));
        if lost {
            inner.failed += 1;
        } else {
            inner.delivered += 1;
        }
        (Duration::from_millis(ms), lost)
    }
}

/// One region's handle on a [`SimNet`].
#[derive(Debug)]
pub struct SimTransport {
    net: Arc<SimNet>,
    from: String,
}

impl Transport for SimTransport {
    fn call(
        &self,
        to: &str,
        req: PeerRequest,
    ) -> BoxFuture<'static, Result<PeerReply, TransportError>> {
        let net = Arc::clone(&self.net);
        let from = self.from.clone();
        let to = to.to_owned();
        Box::pin(async move {
            let (latency, lost) = net.hop(&from, &to);
            tokio::time::sleep(latency).await;
            let handler = net.lock().nodes.get(&to).and_then(Weak::upgrade);
            let Some(handler) = handler.filter(|_| !lost) else {
                return Err(TransportError::Unreachable(format!("{to} (simulated)")));
            };
            let reply = handler.handle(&from, req).await;
            drop(handler);
            let (latency, lost) = net.hop(&to, &from);
            tokio::time::sleep(latency).await;
            if lost {
                return Err(TransportError::Timeout);
            }
            Ok(reply)
        })
    }
}
