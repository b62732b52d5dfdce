//! `collector.tables` and `[collector.s3]`: where the telemetry tables
//! live, a folder or a bucket of an S3-compatible object store (AWS S3,
//! MinIO, Ceph, R2...), and how to reach the bucket.

use serde::{Deserialize, Serialize};

/// `[collector.s3]`. Every field left out is taken from the usual AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`)
/// or the instance's role.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The store's URL when it is not AWS S3 (`http://minio:9000`).
    pub endpoint: Option<String>,
    /// The bucket's region (`us-east-1`).
    pub region: Option<String>,
    /// Whether `endpoint` may be plain `http://`.
    #[serde(default)]
    pub allow_http: bool,
    /// The access key's id.
    pub access_key_id: Option<String>,
    /// The access key's secret.
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where the tables are, as `collector.tables` names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TablesAt {
    /// A folder (`<data-dir>/tables` when `collector.tables` is not set).
    Dir(std::path::PathBuf),
    /// `s3://<bucket>/<prefix>`: the bucket, and the prefix without slashes
    /// at its ends (empty for the bucket's root).
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// The key prefix the tables are under.
        prefix: String,
    },
}

impl TablesAt {
    /// Reads a `collector.tables` value; `data_dir` gives the default.
    pub fn parse(tables: Option<&str>, data_dir: &std::path::Path) -> Result<TablesAt, String> {
        let Some(t) = tables else {
            return Ok(TablesAt::Dir(data_dir.join("tables")));
        };
        if let Some(rest) = t.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let valid =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
                return Err(format!(
                    "is `{t}`, whose bucket name `{bucket}` is not one S3 allows (3 to 63 characters: lowercase letters, digits, `-` and `.`). Fix: write s3://<bucket>/<prefix>, e.g. s3://parallax-telemetry/prod"
                ));
            }
            if prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
                && !prefix.is_empty()
            {
                return Err(format!(
                    "is `{t}`, whose prefix has an empty, `.` or `..` part. Fix: write s3://<bucket>/<prefix> with plain path parts, e.g. s3://{bucket}/prod"
                ));
            }
            return Ok(TablesAt::Bucket {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if let Some((scheme, _)) = t.split_once("://") {
            return Err(format!(
                "is `{t}`: `{scheme}://` is not a store parallax writes to. Fix: use a folder (an absolute path) or s3://<bucket>/<prefix> (AWS S3 or any S3-compatible store, with [collector.s3])"
            ));
        }
        if t.is_empty() {
            return Err("is empty. Fix: leave it out for <data-dir>/tables, or name a folder or s3://<bucket>/<prefix>".into());
        }
        Ok(TablesAt::Dir(std::path::PathBuf::from(t)))
    }
}
