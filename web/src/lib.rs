//! The parallax web app: SLO dashboards, SQL over the collector's Parquet
//! files and alert rules.
//!
//! Not built yet (issue 5); the crate exists so the workspace layering is fixed.
