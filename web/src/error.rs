//! Why a request failed, as one type: [`WebError`] knows its HTTP status,
//! a short machine-readable code and a sentence for people, and answers as
//! `{"error": <code>, "detail": <sentence>}`. A page (not an API) that
//! fails answers with [`ErrorPage`]: the page's frame with the sentence in
//! its banner, under the same status.

use askama::Template;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::pages::{Chrome, Page};
use crate::regions::RegionError;
use crate::sql::SqlError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The request is not what the route takes; the text says what to send.
    #[error("{0}")]
    BadRequest(String),
    /// A filter of the query string is wrong; the text names it and the fix.
    #[error("{0}")]
    BadFilter(String),
    /// An admin action without the cluster's admin token.
    #[error("send Authorization: Bearer <cluster.admin_token>")]
    Unauthorized,
    /// No silence has this id.
    #[error("no silence {0}")]
    NoSilence(u64),
    /// The request body is over the limit (MiB); a SQL text's own limit (KiB).
    #[error(
        "the request body is over the {body_mib} MiB limit. Fix: send a smaller body; a SQL query \
         may be at most {sql_kib} KiB, sent as {{\"sql\": \"SELECT ...\"}}"
    )]
    TooLarge {
        /// The body limit (MiB).
        body_mib: usize,
        /// The SQL text limit (KiB).
        sql_kib: usize,
    },
    /// The request body could not be read.
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// A user query failed (its own status and code).
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A dashboard's figures could not be computed (the query's status and code).
    #[error("The figures could not be computed: {0}")]
    Figures(SqlError),
    /// The region did not carry out a resolve.
    #[error("{0}")]
    ResolveFailed(RegionError),
    /// The region did not run anti-entropy.
    #[error("{0}")]
    AntiEntropyFailed(RegionError),
    /// A page could not be drawn.
    #[error("{0}")]
    Render(#[from] askama::Error),
    /// As many requests of its kind as the app serves at once were being
    /// served (what they were, the bound); this one was not started.
    #[error(
        "{limit} {what} were being served already, the most the web app serves at once, so this \
         one was not started. Fix: retry after Retry-After seconds; if it keeps happening, fewer \
         clients should poll the app or they should poll it less often"
    )]
    Overloaded {
        /// The kind of request, in words.
        what: &'static str,
        /// The bound of that kind.
        limit: usize,
    },
}

impl WebError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            WebError::BadRequest(_) | WebError::BadFilter(_) | WebError::BodyUnreadable => 400,
            WebError::Unauthorized => 401,
            WebError::NoSilence(_) => 404,
            WebError::TooLarge { .. } => 413,
            WebError::Sql(e) | WebError::Figures(e) => e.status(),
            WebError::ResolveFailed(_) | WebError::AntiEntropyFailed(_) => 502,
            WebError::Render(_) => 500,
            WebError::Overloaded { .. } => 503,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The short machine-readable code (`error` in the JSON body).
    pub fn code(&self) -> &'static str {
        match self {
            WebError::BadRequest(_) | WebError::BodyUnreadable => "bad_request",
            WebError::BadFilter(_) => "bad_filter",
            WebError::Unauthorized => "unauthorized",
            WebError::NoSilence(_) => "not_found",
            WebError::TooLarge { .. } => "payload_too_large",
            WebError::Sql(e) | WebError::Figures(e) => e.code(),
            WebError::ResolveFailed(_) => "resolve_failed",
            WebError::AntiEntropyFailed(_) => "anti_entropy_failed",
            WebError::Render(_) => "render_failed",
            WebError::Overloaded { .. } => "overloaded",
        }
    }

    /// The same failure on a page: `chrome` (the page that failed) with
    /// this error in its banner.
    pub(crate) fn on_page(self, chrome: Chrome) -> ErrorPage {
        ErrorPage {
            chrome: Box::new(chrome),
            error: self,
        }
    }
}

/// Seconds a client told 503 is asked to wait before it tries again.
const RETRY_AFTER_S: &str = "1";

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(json!({ "error": self.code(), "detail": self.to_string() }));
        let mut resp = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        resp
    }
}

/// A page answered with its status; one that cannot be drawn answers
/// [`WebError::Render`].
#[derive(Debug)]
pub(crate) struct PageAnswer {
    status: StatusCode,
    page: Box<Page>,
}

impl PageAnswer {
    /// `page`, answered 200.
    pub(crate) fn ok(page: Page) -> PageAnswer {
        PageAnswer::with_status(page, StatusCode::OK)
    }

    /// `page`, answered with `status`.
    pub(crate) fn with_status(page: Page, status: StatusCode) -> PageAnswer {
        PageAnswer {
            status,
            page: Box::new(page),
        }
    }
}

impl IntoResponse for PageAnswer {
    fn into_response(self) -> Response {
        match self.page.render() {
            Ok(body) => (self.status, Html(body)).into_response(),
            Err(e) => WebError::from(e).into_response(),
        }
    }
}

/// A page that failed: its frame, the error in its banner, the error's status.
#[derive(Debug)]
pub(crate) struct ErrorPage {
    chrome: Box<Chrome>,
    error: WebError,
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let mut chrome = *self.chrome;
        chrome.error = Some(self.error.to_string());
        PageAnswer::with_status(Page::new(chrome, Vec::new()), self.error.status()).into_response()
    }
}
