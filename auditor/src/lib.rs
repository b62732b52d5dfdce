//! The parallax auditor: compares the regions' Merkle trees of every critical
//! entity class and tells replication still in flight from true divergence.
//!
//! Not built yet (issue 3); the crate exists so the workspace layering is fixed.
