//! The parallax collector: turns the replicator's telemetry events into
//! Parquet tables and Prometheus metrics.
//!
//! Not built yet (issue 4); the crate exists so the workspace layering is fixed.
