//! The parallax web app: SLO dashboards, SQL over the collector's Parquet
//! files, and alert rules that call webhooks.
//!
//! The data comes from the collector's tables under `<data-dir>/tables/`,
//! read through DataFusion ([`sql`]); nothing here writes them. Every page
//! (`/replication`) has a JSON twin (`/api/v1/replication`) serialising the
//! struct the page is drawn from ([`dash`]), so the two never disagree.
//! State-changing actions (resolve a conflict, run anti-entropy) need the
//! cluster's admin token and are carried out by a region.
//!
//! Where things are: [`App`] (`app`) is the shared state and [`router()`]
//! (`router`) the routes under one layer stack (tracing, the bounds on
//! requests in flight of `admission`, a time limit, the body limit). The
//! handlers live in `handlers`, one module per area (dashboards, SQL,
//! repair actions, alerts), and fail with a [`WebError`]. Every call to a
//! region goes through `regions`, every time is written by [`time`].

mod admission;
pub mod alerts;
mod app;
mod body_limit;
pub mod charts;
pub mod dash;
mod error;
pub mod filters;
pub mod flight;
mod handlers;
pub mod metrics;
pub mod notify;
pub mod pages;
mod quantile;
mod regions;
pub mod rollup;
mod router;
pub mod slo;
pub mod sql;
mod stop;
pub mod time;

pub use admission::RequestLimits;
pub use app::{App, sql_limits};
pub use error::WebError;
pub use metrics::WebMetrics;
pub use regions::RegionError;
pub use router::{router, router_with_limits};
pub use sql::{QueryResult, SqlEngine, SqlError, SqlLimits};
