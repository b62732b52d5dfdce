//! The parallax web app: SLO dashboards, SQL over the collector's Parquet
//! files, and alert rules that call webhooks.
//!
//! The data comes from the collector's tables under `<data-dir>/tables/`,
//! read through DataFusion ([`sql`]); nothing here writes them. Every page
//! (`/replication`) has a JSON twin (`/api/v1/replication`) serialising the
//! struct the page is drawn from ([`dash`]), so the two never disagree.
//! State-changing actions (resolve a conflict, run anti-entropy) need the
//! cluster's admin token and are carried out by a region.

pub mod alerts;
mod app;
pub mod charts;
pub mod dash;
mod error;
pub mod filters;
mod handlers;
pub mod notify;
pub mod pages;
mod pool;
mod quantile;
mod regions;
mod router;
pub mod slo;
pub mod sql;
mod stop;
pub mod time;

pub use app::{App, sql_limits};
pub use error::WebError;
pub use regions::RegionError;
pub use router::router;
pub use sql::{QueryResult, SqlEngine, SqlError, SqlLimits};
