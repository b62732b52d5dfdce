//! parallax's error type and its wire form.
//!
//! Every variant says what failed, on which input, and what to do; the HTTP
//! layer maps each one to a status code and a JSON body
//! `{"error": <code>, "detail": <sentence>}`.

use serde::{Deserialize, Serialize};

/// Result with the replicator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a region node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is wrong; the message names file, field and fix.
    #[error("{0}")]
    Config(String),
    /// A request named a class the config does not declare.
    #[error(
        "class `{class}` is not declared in the config (declared: {declared}). Fix: use a declared class or add [classes.{class}]"
    )]
    UnknownClass {
        /// The class asked for.
        class: String,
        /// The declared classes, comma-separated.
        declared: String,
    },
    /// The entity does not exist (or is deleted) in the region that answered.
    #[error("no entity `{key}` in class `{class}` (in region {region})")]
    NotFound {
        /// Class of the entity.
        class: String,
        /// Key of the entity.
        key: String,
        /// Region that answered.
        region: String,
    },
    /// The request is malformed; the message names the input and the fix.
    #[error("{0}")]
    BadRequest(String),
    /// The operation does not apply to the class's conflict policy.
    #[error(
        "operation `{op}` does not apply to class `{class}` (conflict policy {policy}). Fix: {hint}"
    )]
    WrongOp {
        /// Class of the entity.
        class: String,
        /// Its conflict policy.
        policy: String,
        /// The operation asked for.
        op: String,
        /// What the class takes instead.
        hint: String,
    },
    /// A manual-policy entity has unresolved siblings.
    #[error(
        "`{class}/{key}` has {siblings} conflicting versions waiting in the reconciliation queue. Fix: read them with GET /v1/entities/{class}/{key} and resolve with POST /v1/conflicts/{class}/{key}/resolve"
    )]
    Conflicted {
        /// Class of the entity.
        class: String,
        /// Key of the entity.
        key: String,
        /// Number of siblings.
        siblings: usize,
    },
    /// The entity is not in conflict, so there is nothing to resolve.
    #[error(
        "`{class}/{key}` is not in conflict in region {region}; nothing to resolve. Fix: write it with PUT instead"
    )]
    NotConflicted {
        /// Class of the entity.
        class: String,
        /// Key of the entity.
        key: String,
        /// Region that answered.
        region: String,
    },
    /// This region may not serve the request; another region must.
    #[error("region {} does not take this request for `{}/{}`: {}. Send it to {} ({})", .0.region, .0.class, .0.key, .0.why, .0.owner, .0.owner_url)]
    Misdirected(Box<Misdirected>),
    /// The region owns the key but has not heard from a majority of regions
    /// within its owner lease: its keys may have moved meanwhile, so it
    /// takes none of their writes until it hears from a majority again.
    #[error(
        "region {} does not take this write to `{}/{}`: it owns the key, but only {} of the {} other regions it needs answered it within cluster.lease_ms = {} ms{}, so a failover may have moved its keys (fenced: nothing is taken by two owners). Fix: send the write where the router now names (ask it again; a cached answer may be stale), or restore {}'s links to the other regions",
        .0.region, .0.class, .0.key, .0.answered, .0.needed, .0.lease_ms, .0.last, .0.region
    )]
    LeaseLapsed(Box<LeaseLapsed>),
    /// A conditional change whose condition no longer holds (the ownership
    /// epoch moved on, the region to fail over still answers); the message
    /// says what changed and what to do.
    #[error("{0}")]
    Precondition(String),
    /// A change-feed cursor the feed can no longer serve from (the changes
    /// after it were trimmed, or it is ahead of the feed); the message says
    /// where to resume.
    #[error("{0}")]
    CursorExpired(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A region the request needs cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A quorum write was committed locally but not confirmed by a majority in time.
    #[error(
        "the write to `{class}/{key}` is durable in {region} (session token {token}) but only {confirmed} of {needed} regions needed confirmed it within {timeout_ms} ms; it keeps replicating"
    )]
    QuorumTimeout {
        /// Class of the entity.
        class: String,
        /// Key of the entity.
        key: String,
        /// Region that took the write.
        region: String,
        /// Session token of the write.
        token: String,
        /// Regions that confirmed, counting this one.
        confirmed: usize,
        /// Regions needed.
        needed: usize,
        /// How long it waited.
        timeout_ms: u64,
    },
    /// A remote clock stamp is too far ahead of local time.
    #[error(
        "a stamp from region {peer} is {ahead_ms} ms ahead of region {region}'s clock, beyond max_clock_offset_ms = {max_ms}. Fix: repair clock synchronisation (NTP/chrony) on the region whose clock is wrong"
    )]
    ClockSkew {
        /// Region that sent the stamp.
        peer: String,
        /// Region that refused it.
        region: String,
        /// How far ahead it was.
        ahead_ms: u64,
        /// The configured guard.
        max_ms: u64,
    },
    /// The embedded store failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// No route matches the path.
    #[error(
        "no such endpoint. Fix: see the API reference in README.md; entities live at /v1/entities/{{class}}/{{key}}"
    )]
    NotFoundRoute,
    /// The route exists but not with this method.
    #[error(
        "this endpoint does not take that HTTP method. Fix: see the API reference in README.md"
    )]
    MethodNotAllowed,
    /// The request body is larger than the configured limit.
    #[error(
        "the request body is larger than limits.max_body_bytes = {0} bytes. Fix: send a smaller value, or raise the limit in the config"
    )]
    PayloadTooLarge(usize),
    /// The node is stopping.
    #[error("region {0} is shutting down; retry on another region")]
    ShuttingDown(String),
    /// An error answered by another region, passed on as it came.
    #[error("{}", .0.detail)]
    Remote(ApiError),
    /// A bug: something that should not happen did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::Config(_) | Error::BadRequest(_) | Error::WrongOp { .. } => 400,
            Error::Unauthorized(_) => 401,
            Error::UnknownClass { .. } | Error::NotFound { .. } | Error::NotFoundRoute => 404,
            Error::MethodNotAllowed => 405,
            Error::Conflicted { .. } | Error::NotConflicted { .. } | Error::Precondition(_) => 409,
            Error::Misdirected(_) | Error::LeaseLapsed(_) => 421,
            Error::CursorExpired(_) => 410,
            Error::PayloadTooLarge(_) => 413,
            Error::Storage(_) | Error::Internal(_) => 500,
            Error::Unavailable(_) | Error::ShuttingDown(_) | Error::ClockSkew { .. } => 503,
            Error::QuorumTimeout { .. } => 504,
            Error::Remote(e) => e.status,
        }
    }

    /// Short machine-readable code for this error.
    pub fn code(&self) -> &str {
        match self {
            Error::Config(_) => "config",
            Error::UnknownClass { .. } => "unknown_class",
            Error::NotFound { .. } => "not_found",
            Error::NotFoundRoute => "no_route",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::BadRequest(_) => "bad_request",
            Error::WrongOp { .. } => "wrong_op",
            Error::Conflicted { .. } => "conflicted",
            Error::NotConflicted { .. } => "not_conflicted",
            Error::Precondition(_) => "precondition_failed",
            Error::Misdirected(_) => "misdirected",
            Error::CursorExpired(_) => "cursor_expired",
            Error::LeaseLapsed(_) => "lease_lapsed",
            Error::Unauthorized(_) => "unauthorized",
            Error::Unavailable(_) => "unavailable",
            Error::QuorumTimeout { .. } => "quorum_timeout",
            Error::ClockSkew { .. } => "clock_skew",
            Error::Storage(_) => "storage",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::ShuttingDown(_) => "shutting_down",
            Error::Remote(e) => &e.error,
            Error::Internal(_) => "internal",
        }
    }

    /// The wire form of this error.
    pub fn to_api(&self) -> ApiError {
        if let Error::Remote(e) = self {
            return e.clone();
        }
        let (owner, owner_url) = match self {
            Error::Misdirected(m) => (Some(m.owner.clone()), Some(m.owner_url.clone())),
            _ => (None, None),
        };
        ApiError {
            status: self.status(),
            error: self.code().to_owned(),
            detail: self.to_string(),
            owner,
            owner_url,
        }
    }
}

/// Details of [`Error::LeaseLapsed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLapsed {
    /// Region that refused.
    pub region: String,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// Other regions whose answer counts toward the lease.
    pub answered: usize,
    /// Other regions needed.
    pub needed: usize,
    /// The lease (ms).
    pub lease_ms: u64,
    /// When the last answer came, as a clause (` (the last answer ...)`), or empty.
    pub last: String,
}

/// Details of [`Error::Misdirected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misdirected {
    /// Region that refused.
    pub region: String,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// The region that should take it.
    pub owner: String,
    /// Its base URL.
    pub owner_url: String,
    /// Why (ownership, rollout stage, ...).
    pub why: String,
}

/// An error as sent over HTTP, to clients and between regions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    #[serde(skip)]
    pub status: u16,
    /// Short machine-readable code, e.g. `unknown_class`.
    pub error: String,
    /// A sentence saying what failed, on what input, and what to do.
    pub detail: String,
    /// For HTTP 421: the region that takes the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// For HTTP 421: that region's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_url: Option<String>,
}

/// [`ApiError`] with its status, for region-to-region messages (where the
/// status does not travel as an HTTP status line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    /// HTTP status code.
    pub status: u16,
    /// The error.
    pub error: ApiError,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        WireError {
            status: e.status(),
            error: e.to_api(),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        let mut error = w.error;
        error.status = w.status;
        Error::Remote(error)
    }
}
