//! A typed client of the region API ([`crate::api`]): one method per call,
//! used by the `parallax` CLI, the web app and the auditor, so that every
//! caller builds URLs, authenticates and reads errors the same way.
//!
//! Class and key travel as path segments: every byte outside RFC 3986's
//! unreserved characters is percent-encoded (a `/` in a key becomes `%2F`),
//! and the region's router decodes each segment back to the same text.
//! Query values are encoded the same way. A segment `.` or `..` cannot
//! travel at all (URL parsers remove it, percent-encoded or not), so regions
//! refuse such keys and this client does not send them.
//!
//! Client calls carry the cluster's client token, administration calls and
//! the auditor's `POST /v1/audit` the admin token. Answers are the types
//! the region serialises; a failed call is a [`ClientError`] naming the
//! region and the URL, with the region's own JSON error when it answered.

use std::time::Duration;

use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{
    CLIENT_GEO_HEADER, ConflictList, ConflictLog, EntityOp, Health, Resolution, TOKEN_HEADER,
};
use crate::config::Config;
use crate::error::{ApiError, Error, WireError};
use crate::protocol::{
    AuditRequest, AuditResponse, ReadOutcome, TreeRequest, TreeResponse, WriteOutcome, decode,
    encode,
};
use crate::secrets::{SecretCell, Secrets};
use crate::stats::NodeStats;
use crate::sync::TreeSource;
use crate::transport::error_chain;

pub use feed::{ChangeStream, FeedItem, STREAM_SILENCE};

/// Every byte but RFC 3986's unreserved `A-Z a-z 0-9 - . _ ~`.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `text` as a URL path segment or query value: every byte
/// outside RFC 3986's unreserved characters becomes `%XX`.
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

/// How long a call may take unless [`RegionClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to a region failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The call cannot be made as asked (a key no URL can carry).
    #[error("{0}")]
    Invalid(String),
    /// No connection, or no answer in time.
    #[error(
        "{region} could not be reached at {url}: {cause}. Fix: is the region running? (parallax region --config ...)"
    )]
    Unreachable {
        /// The region asked.
        region: String,
        /// The URL asked.
        url: String,
        /// What went wrong, with its causes.
        cause: String,
        /// The request may have reached the region (it connected, then got
        /// no answer): a write may have been applied.
        maybe_applied: bool,
    },
    /// A write that is not safe to repeat (an increment) may or may not
    /// have been applied: its region took the request and did not answer.
    /// It was not sent again.
    #[error(
        "{region} took the request at {url} but did not answer ({cause}): it may or may not have been applied, \
         and it is not safe to repeat. Fix: read the entity to see whether it was"
    )]
    Indeterminate {
        /// The region asked.
        region: String,
        /// The URL asked.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The region answered with an error.
    #[error("{region} answered HTTP {} to {method} {url}: {}", .error.status, .error.detail)]
    Refused {
        /// The region that answered.
        region: String,
        /// The method of the call.
        method: String,
        /// The URL asked.
        url: String,
        /// The region's answer (its status in `status`).
        error: Box<ApiError>,
    },
    /// The answer could not be read.
    #[error("{region} answered {url} with something this client cannot read: {cause}")]
    BadAnswer {
        /// The region that answered.
        region: String,
        /// The URL asked.
        url: String,
        /// Why it could not be read.
        cause: String,
    },
}

impl ClientError {
    /// The region's error answer, when it answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Refused { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }

    /// The HTTP status the region answered, when it answered with an error.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|e| e.status)
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::Invalid(m) => Error::BadRequest(m),
            ClientError::Unreachable { .. } | ClientError::Indeterminate { .. } => {
                Error::Unavailable(e.to_string())
            }
            ClientError::Refused { ref error, .. } => Error::Remote(ApiError {
                detail: e.to_string(),
                ..error.as_ref().clone()
            }),
            ClientError::BadAnswer { .. } => Error::Internal(e.to_string()),
        }
    }
}

/// How a read is served.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// `local` (the region's default), `session`, `bounded`, `quorum` or `strong`.
    pub consistency: Option<String>,
    /// Staleness bound of a `bounded` read (ms).
    pub max_staleness_ms: Option<u64>,
    /// Session token from an earlier write.
    pub session: Option<String>,
}

/// How a write is acknowledged.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `async` (the region's default) or `quorum`.
    pub consistency: Option<String>,
    /// Home region of a new entity of a home-owned class.
    pub home: Option<String>,
    /// Session token from an earlier write.
    pub session: Option<String>,
}

/// Which token a call carries.
#[derive(Clone, Copy, Debug)]
enum Auth {
    None,
    Client,
    Admin,
}

/// One region's API. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct RegionClient {
    region: String,
    base: String,
    /// The tokens sent: the first client and admin token in force.
    secrets: SecretCell,
    timeout: Duration,
    client_geo: Option<String>,
    http: reqwest::Client,
}

impl RegionClient {
    /// Region `region` at base URL `url` (e.g. `http://127.0.0.1:7101`),
    /// without tokens until [`RegionClient::with_tokens`].
    pub fn new(region: &str, url: &str) -> RegionClient {
        RegionClient::over(
            region,
            url,
            reqwest::Client::builder()
                .build()
                .expect("HTTP client builds"),
        )
    }

    /// Like [`RegionClient::new`], over an HTTP client (and its pool of
    /// connections) shared with other callers.
    pub fn over(region: &str, url: &str, http: reqwest::Client) -> RegionClient {
        RegionClient {
            region: region.to_owned(),
            base: url.trim_end_matches('/').to_owned(),
            secrets: SecretCell::tokens(&[]),
            timeout: DEFAULT_TIMEOUT,
            client_geo: None,
            http,
        }
    }

    /// Region `region` of the cluster `config`, at its advertised URL, with
    /// the cluster's tokens; `None` when the config does not declare it.
    pub fn from_config(config: &Config, region: &str) -> Option<RegionClient> {
        let url = config.region_url(region)?;
        let http = config
            .tls
            .client_builder()
            .build()
            .expect("HTTP client builds");
        Some(
            RegionClient::over(region, &url, http)
                .with_tokens(&config.cluster.client_token, &config.cluster.admin_token),
        )
    }

    /// Sends `client_token` with client calls and `admin_token` with
    /// administration calls.
    pub fn with_tokens(mut self, client_token: &str, admin_token: &str) -> RegionClient {
        self.secrets = SecretCell::new(Secrets {
            client: vec![client_token.into()],
            admin: vec![admin_token.into()],
            peer: Vec::new(),
        });
        self
    }

    /// Sends the client and admin tokens in force in `secrets` at each
    /// call (a process that reloads its secrets shares its cell).
    pub fn with_secrets(mut self, secrets: SecretCell) -> RegionClient {
        self.secrets = secrets;
        self
    }

    /// The admin token sent now.
    pub(crate) fn admin_token(&self) -> std::sync::Arc<str> {
        self.secrets
            .get()
            .admin
            .first()
            .cloned()
            .unwrap_or_else(|| "".into())
    }

    fn client_token(&self) -> std::sync::Arc<str> {
        self.secrets
            .get()
            .client
            .first()
            .cloned()
            .unwrap_or_else(|| "".into())
    }

    /// Gives each call at most `timeout`, connecting included.
    pub fn with_timeout(mut self, timeout: Duration) -> RegionClient {
        self.timeout = timeout;
        self
    }

    /// Names where the client is on every client call
    /// ([`CLIENT_GEO_HEADER`]): the region records it with the request.
    pub fn with_client_geo(mut self, location: &str) -> RegionClient {
        self.client_geo = Some(location.to_owned());
        self
    }

    /// The region's name.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The region's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/entities/{class}/{key}`.
    pub async fn get(
        &self,
        class: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> Result<ReadOutcome, ClientError> {
        let staleness = opts.max_staleness_ms.map(|ms| ms.to_string());
        let path = format!(
            "{}{}",
            entity_path(class, key)?,
            query(&[
                ("consistency", opts.consistency.as_deref()),
                ("max_staleness_ms", staleness.as_deref()),
            ])
        );
        self.call(
            Method::GET,
            &path,
            Auth::Client,
            opts.session.as_deref(),
            None,
        )
        .await
    }

    /// `PUT /v1/entities/{class}/{key}`: writes `value`.
    pub async fn put(
        &self,
        class: &str,
        key: &str,
        value: &Value,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        let path = format!("{}{}", entity_path(class, key)?, write_query(opts));
        self.call(
            Method::PUT,
            &path,
            Auth::Client,
            opts.session.as_deref(),
            Some(json_body(value)?),
        )
        .await
    }

    /// `DELETE /v1/entities/{class}/{key}`.
    pub async fn delete(
        &self,
        class: &str,
        key: &str,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        let path = format!("{}{}", entity_path(class, key)?, write_query(opts));
        self.call(
            Method::DELETE,
            &path,
            Auth::Client,
            opts.session.as_deref(),
            None,
        )
        .await
    }

    /// `POST /v1/entities/{class}/{key}/ops`: a counter or set operation.
    pub async fn op(
        &self,
        class: &str,
        key: &str,
        op: &EntityOp,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ClientError> {
        let path = format!("{}/ops{}", entity_path(class, key)?, write_query(opts));
        self.call(
            Method::POST,
            &path,
            Auth::Client,
            opts.session.as_deref(),
            Some(json_body(op)?),
        )
        .await
    }

    /// `GET /v1/conflicts`: the reconciliation queue, of one class or all.
    pub async fn conflicts(
        &self,
        class: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ConflictList, ClientError> {
        let limit = limit.map(|n| n.to_string());
        let path = format!(
            "/v1/conflicts{}",
            query(&[("class", class), ("limit", limit.as_deref())])
        );
        self.call(Method::GET, &path, Auth::Client, None, None)
            .await
    }

    /// `GET /v1/conflicts/log`: recorded outcomes after record `after`.
    pub async fn conflict_log(
        &self,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<ConflictLog, ClientError> {
        let after = after.map(|n| n.to_string());
        let limit = limit.map(|n| n.to_string());
        let path = format!(
            "/v1/conflicts/log{}",
            query(&[("after", after.as_deref()), ("limit", limit.as_deref())])
        );
        self.call(Method::GET, &path, Auth::Client, None, None)
            .await
    }

    /// `POST /v1/conflicts/{class}/{key}/resolve`.
    pub async fn resolve(
        &self,
        class: &str,
        key: &str,
        resolution: &Resolution,
        session: Option<&str>,
    ) -> Result<WriteOutcome, ClientError> {
        let path = format!(
            "/v1/conflicts/{}/{}/resolve",
            segment("class", class)?,
            segment("key", key)?
        );
        self.call(
            Method::POST,
            &path,
            Auth::Client,
            session,
            Some(json_body(resolution)?),
        )
        .await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        self.call(Method::GET, "/v1/stats", Auth::Client, None, None)
            .await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/healthz", Auth::None, None, None)
            .await
    }

    /// `GET /readyz`: an error (503) while the region starts or stops.
    pub async fn readyz(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/readyz", Auth::None, None, None)
            .await
    }

    /// `POST /v1/audit` (MessagePack): the auditor's question, answered
    /// with the bytes that crossed the network both ways.
    pub async fn audit(&self, req: &AuditRequest) -> Result<(AuditResponse, u64), ClientError> {
        let body = encode(req);
        let sent = body.len() as u64;
        let url = format!("{}/v1/audit", self.base);
        let request = self
            .request(&Method::POST, &url, Auth::Admin, None)
            .header(header::CONTENT_TYPE, "application/msgpack")
            .body(body);
        let bytes = self.send(&Method::POST, &url, request).await?;
        let answer: Result<AuditResponse, WireError> =
            decode(&bytes).map_err(|e| self.bad_answer(&url, e.to_string()))?;
        match answer {
            Ok(a) => Ok((a, sent + bytes.len() as u64)),
            Err(w) => Err(ClientError::Refused {
                region: self.region.clone(),
                method: Method::POST.to_string(),
                url,
                error: Box::new(ApiError {
                    status: w.status,
                    ..w.error
                }),
            }),
        }
    }

    fn request(
        &self,
        method: &Method,
        url: &str,
        auth: Auth,
        session: Option<&str>,
    ) -> RequestBuilder {
        let mut req = self.http.request(method.clone(), url).timeout(self.timeout);
        match auth {
            Auth::None => {}
            Auth::Client => {
                req = req.bearer_auth(self.client_token());
                if let Some(geo) = &self.client_geo {
                    req = req.header(CLIENT_GEO_HEADER, geo);
                }
            }
            Auth::Admin => req = req.bearer_auth(self.admin_token()),
        }
        if let Some(s) = session {
            req = req.header(TOKEN_HEADER, s);
        }
        req
    }

    /// A JSON call: `path` is already encoded, `body` already JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        session: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.request(&method, &url, auth, session);
        if let Some(b) = body {
            req = req.header(header::CONTENT_TYPE, "application/json").body(b);
        }
        let bytes = self.send(&method, &url, req).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.bad_answer(&url, e.to_string()))
    }

    /// Sends; the answer's body on success, the region's error otherwise.
    async fn send(
        &self,
        method: &Method,
        url: &str,
        req: RequestBuilder,
    ) -> Result<bytes::Bytes, ClientError> {
        let unreachable = |e| self.unreachable(url, e);
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(self.refused(method, url, status, &bytes))
    }

    fn unreachable(&self, url: &str, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            region: self.region.clone(),
            url: url.to_owned(),
            cause: if e.is_timeout() {
                format!("no answer within {} ms", self.timeout.as_millis())
            } else {
                error_chain(&e)
            },
            maybe_applied: !e.is_connect(),
        }
    }

    fn refused(&self, method: &Method, url: &str, status: StatusCode, body: &[u8]) -> ClientError {
        ClientError::Refused {
            region: self.region.clone(),
            method: method.to_string(),
            url: url.to_owned(),
            error: Box::new(api_error(status, body)),
        }
    }

    fn bad_answer(&self, url: &str, cause: String) -> ClientError {
        ClientError::BadAnswer {
            region: self.region.clone(),
            url: url.to_owned(),
            cause,
        }
    }
}

/// The region's error answer, or one made of the status and the text when
/// something else answered (a proxy, a timeout layer).
fn api_error(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => ApiError {
            status: status.as_u16(),
            ..e
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(300).collect();
            ApiError {
                status: status.as_u16(),
                error: status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                detail: if text.is_empty() {
                    format!("HTTP {status} with an empty body")
                } else {
                    text
                },
                owner: None,
                owner_url: None,
            }
        }
    }
}

/// `text` as one path segment.
fn segment(what: &str, text: &str) -> Result<String, ClientError> {
    // A URL parser drops `.` and `..` segments, and an empty one names
    // another route: refused here rather than sent somewhere else.
    if text.is_empty() || text == "." || text == ".." {
        return Err(ClientError::Invalid(format!(
            "the {what} `{text}` cannot be a URL path segment. Fix: use another {what}"
        )));
    }
    Ok(percent_encode(text))
}

fn entity_path(class: &str, key: &str) -> Result<String, ClientError> {
    Ok(format!(
        "/v1/entities/{}/{}",
        segment("class", class)?,
        segment("key", key)?
    ))
}

/// `?name=value&...` of the pairs that have a value; empty if none has.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", percent_encode((*value)?))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn write_query(opts: &WriteOptions) -> String {
    query(&[
        ("consistency", opts.consistency.as_deref()),
        ("home", opts.home.as_deref()),
    ])
}

fn json_body<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| {
        ClientError::Invalid(format!("the request body cannot be written as JSON: {e}"))
    })
}

/// A region reached over HTTP answers tree questions through `POST /v1/audit`.
impl TreeSource for RegionClient {
    fn name(&self) -> &str {
        &self.region
    }

    fn ask(&self, req: TreeRequest) -> BoxFuture<'_, crate::Result<(TreeResponse, u64)>> {
        Box::pin(async move {
            match self.audit(&AuditRequest::Tree(req)).await? {
                (AuditResponse::Tree(t), n) => Ok((t, n)),
                (other, _) => Err(Error::Internal(format!(
                    "region {}: unexpected answer {other:?} to a tree question",
                    self.region
                ))),
            }
        })
    }
}

mod admin;
mod feed;
#[cfg(test)]
mod tests;
