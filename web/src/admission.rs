//! How many requests the app serves at once: two lanes, each with its own
//! bound, and a request past its lane's bound is answered 503 with
//! `Retry-After` at once, before its body is read, rather than queued.
//!
//! - pages: `GET`/`HEAD` of the dashboards, their JSON twins, the alerts
//!   page and its twin, static files. Each runs the app's own queries on
//!   the server's runtime, so the bound also keeps a flood of page views
//!   from starving the alert evaluator, which shares that runtime.
//! - work: user SQL (the console and `POST /api/v1/sql`) and the admin
//!   actions (resolve, anti-entropy, silences), which can each hold their
//!   request for seconds (a query up to `web.sql_timeout_ms`, a region call
//!   up to a minute).
//!
//! Neither lane can take the other's slots: SQL clients hammering the API
//! leave every page slot free. `/healthz` and `/metrics` are in no lane:
//! a flood of page views cannot keep Prometheus from scraping. User
//! queries have their own, narrower bound beyond this one
//! (`web.sql_max_concurrent`, see the SQL engine's pool).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use crate::error::WebError;

/// The bound of each lane: requests served at once at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Page and JSON-twin requests.
    pub pages: usize,
    /// User SQL and admin actions.
    pub work: usize,
}

impl Default for RequestLimits {
    /// 64 page requests and 32 others: far more than people at a dashboard
    /// ask for, few enough that a runaway client cannot pile up work.
    fn default() -> Self {
        RequestLimits {
            pages: 64,
            work: 32,
        }
    }
}

/// Which bound a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Pages,
    Work,
}

impl Lane {
    /// The lane of a request; `None` for the health check.
    fn of(method: &Method, path: &str) -> Option<Lane> {
        if path == "/healthz" || path == "/metrics" {
            return None;
        }
        let reads = *method == Method::GET || *method == Method::HEAD;
        // `GET /sql?sql=...` runs a user query: work, like the API.
        Some(if reads && path != "/sql" {
            Lane::Pages
        } else {
            Lane::Work
        })
    }
}

/// The slots of both lanes.
#[derive(Debug)]
pub(crate) struct InFlight {
    limits: RequestLimits,
    pages: Arc<Semaphore>,
    work: Arc<Semaphore>,
}

impl InFlight {
    pub(crate) fn new(limits: RequestLimits) -> InFlight {
        InFlight {
            limits,
            pages: Arc::new(Semaphore::new(limits.pages)),
            work: Arc::new(Semaphore::new(limits.work)),
        }
    }
}

/// Serves a request if its lane has a free slot (held until the answer is
/// made), else answers [`WebError::Overloaded`].
pub(crate) async fn admit(
    State(slots): State<Arc<InFlight>>,
    req: Request,
    next: Next,
) -> Result<Response, WebError> {
    let Some(lane) = Lane::of(req.method(), req.uri().path()) else {
        return Ok(next.run(req).await);
    };
    let (slots, limit, what) = match lane {
        Lane::Pages => (&slots.pages, slots.limits.pages, "page and JSON requests"),
        Lane::Work => (
            &slots.work,
            slots.limits.work,
            "SQL queries and admin actions",
        ),
    };
    let Ok(_slot) = Arc::clone(slots).try_acquire_owned() else {
        return Err(WebError::Overloaded { what, limit });
    };
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_work_are_told_apart() {
        for (method, path, lane) in [
            (Method::GET, "/", Some(Lane::Pages)),
            (Method::GET, "/api/v1/overview", Some(Lane::Pages)),
            (Method::HEAD, "/replication", Some(Lane::Pages)),
            (Method::GET, "/api/v1/alerts", Some(Lane::Pages)),
            (Method::GET, "/static/app.js", Some(Lane::Pages)),
            (Method::GET, "/sql", Some(Lane::Work)),
            (Method::POST, "/sql", Some(Lane::Work)),
            (Method::POST, "/api/v1/sql", Some(Lane::Work)),
            (Method::POST, "/conflicts/resolve", Some(Lane::Work)),
            (
                Method::DELETE,
                "/api/v1/alerts/silences/3",
                Some(Lane::Work),
            ),
            (Method::GET, "/healthz", None),
            (Method::GET, "/metrics", None),
        ] {
            assert_eq!(Lane::of(&method, path), lane, "{method} {path}");
        }
    }
}
